// Package kubestate keeps rackboot's state in Kubernetes objects of one
// namespace instead of the state directory, for `rackboot serve --kube`:
// several replicas share it, and any of them may be stopped.
//
//	ConfigMap rackboot-rack             rack.yaml: the rack file
//	Secret    rackboot-secrets          secrets.yaml: the cluster's secrets bundle
//	Secret    rackboot-token-key        pxe-token.key: the config-token key
//	Secret    rackboot-bmc-passwords    bmc-passwords.yaml: the BMC passwords
//	ConfigMap rackboot-machine-<name>   machine.json: one machine's record
//	ConfigMap rackboot-discovered-<mac> machine.json: one discovered machine's record
//	ConfigMap rackboot-dhcp-leases      dhcp-leases.json: the lease table
//	ConfigMap rackboot-spent-<id>       pin.json: one spent config token
//	ConfigMap rackboot-tokens-consumed  consumed.json: used-up tokens by machine
//
// Secrets and files keep the state directory's bytes exactly (Import,
// Export). Every object carries the label app.kubernetes.io/managed-by:
// rackboot and an app.kubernetes.io/component naming its kind.
//
// Records several replicas change are changed with Get, change, Update and
// retry.RetryOnConflict: a replica that lost the race re-applies its change
// to the newer record, so nothing is lost (Machines.Update). Spent tokens
// are objects created once: Create's AlreadyExists means another replica
// spent the token first. The lease table is written by the DHCP leader only,
// and a write over a table it has not seen is refused (LeaseStore).
//
// Wiring (rackboot serve --kube):
//
//	st, err := kubestate.New(clientset, namespace, kubestate.WithLogger(log))
//	rack, err := st.Rack(ctx)                 // profiles.Rack from the ConfigMap
//	bundle, err := st.Secrets(ctx)            // never made here: handoff copies it
//	bmc, err := st.BMCPasswords(ctx, nil)
//	tokens, err := st.Tokens(ctx, pxe.TokenConfig{}) // pxe.Config.Tokens
//	inv, err := st.Inventory(ctx, inventory.WithNames(...), ...)
//	go st.Machines().WatchChanges(ctx, inv.Observe, inv.ObserveDeleted) // other replicas' changes
//	dhcpCfg.LeaseStore = st.Leases()          // one per DHCP server; the leader's
//
// The Role a replica needs is Rules().
package kubestate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// Labels on every object.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "rackboot"
	LabelComponent = "app.kubernetes.io/component"
)

// Components (LabelComponent values).
const (
	ComponentRack     = "rack"
	ComponentSecrets  = "secrets"
	ComponentMachine  = "machine"
	ComponentLeases   = "dhcp-leases"
	ComponentSpent    = "spent-token"
	ComponentConsumed = "consumed-tokens"
)

// Object names and the data key each holds its content under (the state
// directory's file name).
const (
	RackName         = "rackboot-rack"
	RackKey          = "rack.yaml"
	SecretsName      = "rackboot-secrets"
	SecretsKey       = "secrets.yaml"
	TokenKeyName     = "rackboot-token-key"
	TokenKeyKey      = "pxe-token.key"
	BMCPasswordsName = "rackboot-bmc-passwords"
	BMCPasswordsKey  = "bmc-passwords.yaml"
	LeasesName       = "rackboot-dhcp-leases"
	LeasesKey        = "dhcp-leases.json"
	ConsumedName     = "rackboot-tokens-consumed"
	ConsumedKey      = "consumed.json"
	MachinePrefix    = "rackboot-machine-"
	MachineKey       = "machine.json"
	SpentPrefix      = "rackboot-spent-"
	SpentKey         = "pin.json"
)

// MaxObjectBytes is what rackboot puts in one object at most: the API
// server refuses objects over 1 MiB (etcd's request limit is 1.5 MiB), and
// metadata needs room too.
const MaxObjectBytes = 1000 * 1024

// ErrNotFound is returned (wrapped) when an object rackboot reads is not in
// the namespace.
var ErrNotFound = errors.New("not in the cluster")

// callTimeout bounds one API call made for a caller without a context
// (pxe's SpentStore and LeaseStore).
const callTimeout = 15 * time.Second

// conflictBackoff is how Get-change-Update loops retry on a conflict: many
// tries, short waits, jitter so racing replicas spread out.
var conflictBackoff = wait.Backoff{Steps: 40, Duration: 5 * time.Millisecond, Factor: 1.3, Jitter: 1.0, Cap: 500 * time.Millisecond}

// Store is rackboot's state in one namespace.
type Store struct {
	cs  kubernetes.Interface
	ns  string
	now func() time.Time
	log *slog.Logger
}

// Option configures a Store.
type Option func(*Store)

// WithClock sets the clock (default time.Now).
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(s *Store) { s.log = l } }

// New returns the state kept in namespace through cs. It makes no call.
func New(cs kubernetes.Interface, namespace string, opts ...Option) (*Store, error) {
	if cs == nil {
		return nil, errors.New("kubernetes state: no client")
	}
	if errs := validation.IsDNS1123Label(namespace); len(errs) > 0 {
		return nil, fmt.Errorf("kubernetes state: namespace %q: %s", namespace, errs[0])
	}
	s := &Store{cs: cs, ns: namespace, now: time.Now, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// Namespace is the namespace the state is kept in.
func (s *Store) Namespace() string { return s.ns }

// meta is the metadata of a new object.
func (s *Store) meta(name, component string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: s.ns, Labels: map[string]string{
		LabelManagedBy: ManagedBy, LabelComponent: component,
	}}
}

// selector selects the objects of one component.
func selector(component string) string {
	return LabelManagedBy + "=" + ManagedBy + "," + LabelComponent + "=" + component
}

// getConfigMap reads one ConfigMap; ErrNotFound when it is not there.
func (s *Store) getConfigMap(ctx context.Context, name string) (*corev1.ConfigMap, error) {
	cm, err := s.cs.CoreV1().ConfigMaps(s.ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("configmap %s/%s: %w", s.ns, name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read configmap %s/%s: %w", s.ns, name, err)
	}
	return cm, nil
}

// getSecret reads one Secret; ErrNotFound when it is not there.
func (s *Store) getSecret(ctx context.Context, name string) (*corev1.Secret, error) {
	sec, err := s.cs.CoreV1().Secrets(s.ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("secret %s/%s: %w", s.ns, name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read secret %s/%s: %w", s.ns, name, err)
	}
	return sec, nil
}

// checkSize refuses content that would not fit in one object.
func checkSize(what string, n int) error {
	if n > MaxObjectBytes {
		return fmt.Errorf("%s is %d bytes: a Kubernetes object holds at most about 1 MiB (%d bytes for rackboot's content)", what, n, MaxObjectBytes)
	}
	return nil
}

// Rules are what a replica (rackboot serve --kube) does in its namespace,
// for its Role: ConfigMaps for machine records, leases and spent tokens
// (delete: old pins and forgotten unknown machines), Secrets read and the
// token key created on first start. Import (rackboot handoff) also updates
// Secrets and runs with the cluster admin's rights.
func Rules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch", "create", "update", "delete"}},
		{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "create"}},
	}
}
