package kubestate

import (
	"context"
	"errors"
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dotfile/rackboot/pxe"
)

// LeaseStore keeps the DHCP lease table (the leases file's bytes) in the
// ConfigMap rackboot-dhcp-leases. Only the DHCP leader writes it; each write
// is an Update at the resourceVersion this process last read or wrote, so a
// leader that lost its place (another one wrote since) is refused with
// pxe.ErrLeasesChanged instead of overwriting newer leases. It implements
// pxe.LeaseStore.
//
// One object holds the whole table: at about 130 bytes a lease, 1 MiB is
// some 7,500 leases, far more than a rack's machines.
type LeaseStore struct {
	s *Store

	mu sync.Mutex
	rv string // resourceVersion last read or written; "" = no object seen
}

var _ pxe.LeaseStore = (*LeaseStore)(nil)

// Leases returns a lease store for one DHCP server.
func (s *Store) Leases() *LeaseStore { return &LeaseStore{s: s} }

// Load implements pxe.LeaseStore.
func (l *LeaseStore) Load() ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	l.mu.Lock()
	defer l.mu.Unlock()
	cm, err := l.s.getConfigMap(ctx, LeasesName)
	if errors.Is(err, ErrNotFound) {
		l.rv = ""
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	l.rv = cm.ResourceVersion
	data, ok := cm.Data[LeasesKey]
	if !ok {
		return nil, fmt.Errorf("configmap %s/%s has no key %s", l.s.ns, LeasesName, LeasesKey)
	}
	return []byte(data), nil
}

// Save implements pxe.LeaseStore.
func (l *LeaseStore) Save(data []byte) error {
	if err := checkSize("the DHCP lease table", len(data)); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	l.mu.Lock()
	defer l.mu.Unlock()
	cm := &corev1.ConfigMap{ObjectMeta: l.s.meta(LeasesName, ComponentLeases), Data: map[string]string{LeasesKey: string(data)}}
	cms := l.s.cs.CoreV1().ConfigMaps(l.s.ns)
	var out *corev1.ConfigMap
	var err error
	if l.rv == "" {
		out, err = cms.Create(ctx, cm, metav1.CreateOptions{})
	} else {
		cm.ResourceVersion = l.rv
		out, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	}
	switch {
	case apierrors.IsAlreadyExists(err), apierrors.IsConflict(err), apierrors.IsNotFound(err):
		return fmt.Errorf("configmap %s/%s: %w", l.s.ns, LeasesName, pxe.ErrLeasesChanged)
	case err != nil:
		return fmt.Errorf("write configmap %s/%s: %w", l.s.ns, LeasesName, err)
	}
	l.rv = out.ResourceVersion
	return nil
}
