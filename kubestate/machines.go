package kubestate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/util/retry"

	"github.com/dotfile/rackboot/inventory"
)

// Machines keeps one ConfigMap per machine (rackboot-machine-<name>, the
// record as JSON under machine.json), and one per discovered machine
// (rackboot-discovered-<MAC in hex>, component discovered: discovered.go).
// It implements inventory.Backend.
type Machines struct{ s *Store }

var _ inventory.Backend = (*Machines)(nil)

// Machines returns the machine records' backend.
func (s *Store) Machines() *Machines { return &Machines{s: s} }

// MachineObjectName is the ConfigMap name of the machine record key: for
// a discovered machine's MAC DiscoveredObjectName, else the prefix and the
// key when that makes a valid name, else the prefix, "x-" and a hash of
// the key (long names).
func MachineObjectName(key string) string {
	if inventory.IsDiscoveredKey(key) {
		return DiscoveredObjectName(key)
	}
	name := MachinePrefix + key
	if !strings.HasPrefix(key, "x-") && len(validation.IsDNS1123Subdomain(name)) == 0 {
		return name
	}
	sum := sha256.Sum256([]byte(key))
	return MachinePrefix + "x-" + hex.EncodeToString(sum[:16])
}

// decodeMachine reads a machine record from its ConfigMap.
func decodeMachine(cm *corev1.ConfigMap) (inventory.Machine, error) {
	var m inventory.Machine
	data, ok := cm.Data[MachineKey]
	if !ok {
		return m, fmt.Errorf("configmap %s has no key %s", cm.Name, MachineKey)
	}
	if err := json.Unmarshal([]byte(data), &m); err != nil {
		return m, fmt.Errorf("configmap %s: machine record: %w", cm.Name, err)
	}
	if m.Key == "" || MachineObjectName(m.Key) != cm.Name {
		return m, fmt.Errorf("configmap %s: machine record's key %q does not match the object's name", cm.Name, m.Key)
	}
	return m, nil
}

// encodeMachine is a record's ConfigMap data (never logs or mirror counts).
func encodeMachine(m inventory.Machine) (map[string]string, error) {
	m.Logs, m.Pulled = nil, nil
	data, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode machine %s: %w", m.Key, err)
	}
	if err := checkSize("machine record "+m.Key, len(data)); err != nil {
		return nil, err
	}
	return map[string]string{MachineKey: string(data)}, nil
}

// Load lists every machine record, sorted by key.
func (b *Machines) Load(ctx context.Context) ([]inventory.Machine, error) {
	list, err := b.s.cs.CoreV1().ConfigMaps(b.s.ns).List(ctx, metav1.ListOptions{LabelSelector: recordSelector})
	if err != nil {
		return nil, fmt.Errorf("list machine records in %s: %w", b.s.ns, err)
	}
	out := make([]inventory.Machine, 0, len(list.Items))
	for i := range list.Items {
		m, err := decodeMachine(&list.Items[i])
		if err != nil {
			return nil, fmt.Errorf("machine records in %s: %w (fix or delete the object; it is not reset automatically)", b.s.ns, err)
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b inventory.Machine) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// Update implements inventory.Backend: Get, change, Update, and on a
// conflict (another replica updated the record in between) the same again
// on the newer record (retry.RetryOnConflict). A record not there yet is
// created; two replicas creating it at once count as a conflict too.
func (b *Machines) Update(ctx context.Context, key string, change func(*inventory.Machine) bool) (inventory.Machine, error) {
	name := MachineObjectName(key)
	var stored inventory.Machine
	err := retry.RetryOnConflict(conflictBackoff, func() error {
		cms := b.s.cs.CoreV1().ConfigMaps(b.s.ns)
		cm, err := cms.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return b.create(ctx, key, change, &stored)
		}
		if err != nil {
			return fmt.Errorf("read machine record %s: %w", key, err)
		}
		m, err := decodeMachine(cm)
		if err != nil {
			return err
		}
		if !change(&m) {
			stored = m
			return nil
		}
		m.Key = key
		if cm.Data, err = encodeMachine(m); err != nil {
			return err
		}
		if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			return err // a conflict is retried
		}
		stored = m
		return nil
	})
	if err != nil {
		return inventory.Machine{}, fmt.Errorf("update machine record %s: %w", key, err)
	}
	return stored, nil
}

// create makes the record of key; AlreadyExists is turned into a conflict
// so that the caller's retry reads the record the other replica made.
func (b *Machines) create(ctx context.Context, key string, change func(*inventory.Machine) bool, stored *inventory.Machine) error {
	m := inventory.Machine{Key: key}
	if !change(&m) {
		*stored = m
		return nil
	}
	m.Key = key
	data, err := encodeMachine(m)
	if err != nil {
		return err
	}
	cm := &corev1.ConfigMap{ObjectMeta: b.s.meta(MachineObjectName(key), recordComponent(key)), Data: data}
	_, err = b.s.cs.CoreV1().ConfigMaps(b.s.ns).Create(ctx, cm, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return apierrors.NewConflict(schema.GroupResource{Resource: "configmaps"}, cm.Name, err)
	}
	if err != nil {
		return fmt.Errorf("create machine record %s: %w", key, err)
	}
	*stored = m
	return nil
}

// Delete removes the record of key (none: no error).
func (b *Machines) Delete(ctx context.Context, key string) error {
	err := b.s.cs.CoreV1().ConfigMaps(b.s.ns).Delete(ctx, MachineObjectName(key), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete machine record %s: %w", key, err)
	}
	return nil
}

// watchRetry is how long Watch waits before listing again after its watch
// failed; watchResume before resuming a watch the server closed.
const (
	watchRetry  = 2 * time.Second
	watchResume = 100 * time.Millisecond
)

// Watch calls seen with every machine record, then with each record as
// other replicas (or this one) store it, until ctx ends. A watch the server
// closes is resumed from the last version seen; one that fails (the
// version is too old, the server is away) lists again. inventory.Store's
// Observe is the usual seen. It returns ctx's error. Deleted records are
// not reported: WatchChanges does that.
func (b *Machines) Watch(ctx context.Context, seen func(inventory.Machine)) error {
	return b.WatchChanges(ctx, seen, nil)
}

// WatchChanges is Watch that also calls gone (when not nil) with the key of
// each record deleted (machine forget, a discovered machine evicted or
// adopted), including those deleted while the watch was down (found by
// the next list). inventory.Store's ObserveDeleted is the usual gone.
func (b *Machines) WatchChanges(ctx context.Context, seen func(inventory.Machine), gone func(key string)) error {
	w := &recordWatch{b: b, seen: seen, gone: gone, keys: map[string]string{}}
	rv := ""
	for {
		var err error
		if rv == "" {
			rv, err = w.list(ctx)
		}
		if err == nil {
			rv, err = w.watchFrom(ctx, rv)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		wait := watchResume // closed by the server: resume
		if err != nil {
			rv, wait = "", watchRetry
			b.s.log.Warn("watch machine records: listing again", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// recordWatch is one WatchChanges: keys maps each record's object name to
// its key, for deletions.
type recordWatch struct {
	b    *Machines
	seen func(inventory.Machine)
	gone func(string)
	keys map[string]string
}

// list calls seen with every record, gone with every key known before and
// not listed now, and returns the list's version.
func (w *recordWatch) list(ctx context.Context) (string, error) {
	list, err := w.b.s.cs.CoreV1().ConfigMaps(w.b.s.ns).List(ctx, metav1.ListOptions{LabelSelector: recordSelector})
	if err != nil {
		return "", fmt.Errorf("list machine records: %w", err)
	}
	listed := map[string]bool{}
	for i := range list.Items {
		listed[list.Items[i].Name] = true
		w.observe(&list.Items[i])
	}
	for name, key := range w.keys {
		if !listed[name] {
			w.deleted(name, key)
		}
	}
	return list.ResourceVersion, nil
}

// watchFrom watches from version rv until the watch ends, and returns the
// last version seen; an error when the watch failed.
func (w *recordWatch) watchFrom(ctx context.Context, rv string) (string, error) {
	wi, err := w.b.s.cs.CoreV1().ConfigMaps(w.b.s.ns).Watch(ctx, metav1.ListOptions{LabelSelector: recordSelector,
		ResourceVersion: rv, AllowWatchBookmarks: true})
	if err != nil {
		return rv, fmt.Errorf("watch machine records: %w", err)
	}
	defer wi.Stop()
	for ev := range wi.ResultChan() {
		if ev.Type == watch.Error {
			return rv, fmt.Errorf("watch machine records: %w", apierrors.FromObject(ev.Object))
		}
		cm, ok := ev.Object.(*corev1.ConfigMap)
		if !ok {
			continue
		}
		rv = cm.ResourceVersion
		switch ev.Type {
		case watch.Added, watch.Modified:
			w.observe(cm)
		case watch.Deleted:
			w.deleted(cm.Name, w.keys[cm.Name])
		}
	}
	return rv, nil
}

func (w *recordWatch) observe(cm *corev1.ConfigMap) {
	m, err := decodeMachine(cm)
	if err != nil {
		w.b.s.log.Warn("machine record skipped", "object", cm.Name, "err", err)
		return
	}
	w.keys[cm.Name] = m.Key
	w.seen(m)
}

func (w *recordWatch) deleted(name, key string) {
	delete(w.keys, name)
	if key != "" && w.gone != nil {
		w.gone(key)
	}
}
