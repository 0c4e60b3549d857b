package bundles

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
)

// Clock is the time source of Apply's and the waits' polling; tests inject
// one that needs no sleeping.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Option tunes Apply and the waits.
type Option func(*options)

type options struct {
	log              *slog.Logger
	clock            Clock
	poll             time.Duration
	maxPoll          time.Duration
	establishTimeout time.Duration
	progress         func(ObjectResult)
}

func newOptions(opts []Option) options {
	o := options{
		log:              slog.New(slog.DiscardHandler),
		clock:            realClock{},
		poll:             time.Second,
		maxPoll:          10 * time.Second,
		establishTimeout: 2 * time.Minute,
	}
	for _, opt := range opts {
		opt(&o)
	}
	o.maxPoll = max(o.maxPoll, o.poll)
	return o
}

// WithLogger sets the logger for progress and server warnings (default:
// discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithClock sets the clock of timeouts and polling (default: the real one).
func WithClock(c Clock) Option { return func(o *options) { o.clock = c } }

// WithPollInterval sets the first polling interval of the waits (default
// 1 s); WaitAPIServer backs off from it up to the maximum interval.
func WithPollInterval(d time.Duration) Option { return func(o *options) { o.poll = d } }

// WithMaxPollInterval caps WaitAPIServer's backoff (default 10 s).
func WithMaxPollInterval(d time.Duration) Option { return func(o *options) { o.maxPoll = d } }

// WithEstablishTimeout bounds how long Apply waits for each applied
// CustomResourceDefinition to be Established (default 2 min).
func WithEstablishTimeout(d time.Duration) Option {
	return func(o *options) { o.establishTimeout = d }
}

// WithProgress calls f after each object Apply handled, in order.
func WithProgress(f func(ObjectResult)) Option { return func(o *options) { o.progress = f } }

// Ref names an object the way an operator would look for it.
type Ref struct {
	APIVersion string
	Kind       string
	Namespace  string
	Name       string
}

// RefOf returns the Ref of obj.
func RefOf(obj *unstructured.Unstructured) Ref {
	return Ref{APIVersion: obj.GetAPIVersion(), Kind: obj.GetKind(), Namespace: obj.GetNamespace(), Name: obj.GetName()}
}

// String is "Kind namespace/name", or "Kind name" for cluster-scoped objects.
func (r Ref) String() string {
	if r.Namespace == "" {
		return r.Kind + " " + r.Name
	}
	return r.Kind + " " + r.Namespace + "/" + r.Name
}

// Action is what applying an object did.
type Action string

// The outcomes of applying one object, told apart by comparing the
// resourceVersion before and after.
const (
	Created    Action = "created"
	Configured Action = "configured"
	Unchanged  Action = "unchanged"
	Failed     Action = "failed"
)

// ObjectResult is the outcome for one object.
type ObjectResult struct {
	Ref    Ref
	Action Action
	Err    error // set when Action is Failed
}

// Result counts what Apply did; Objects lists each object in apply order.
type Result struct {
	Created, Configured, Unchanged, Failed int
	Objects                                []ObjectResult
}

// ObjectError is the failure of one object: the server's rejection (its
// message is in Err) or a problem found before sending it.
type ObjectError struct {
	Ref Ref
	Err error
}

func (e *ObjectError) Error() string { return "apply " + e.Ref.String() + ": " + e.Err.Error() }

// Unwrap returns the underlying error (an *apierrors.StatusError for
// rejections by the server).
func (e *ObjectError) Unwrap() error { return e.Err }

// phase is the apply order: namespaces, CRDs (then Established), the rest,
// custom resources of the applied CRDs.
type phase int

const (
	phaseNamespace phase = iota
	phaseCRD
	phaseRest
	phaseCustom
)

// kindRank orders the "rest" phase so that what a workload needs exists
// before it (accounts, secrets, config, RBAC before pods) and admission
// webhooks come last, so they cannot block objects applied after them.
// Kinds not listed go after the workloads, before the webhooks.
func kindRank(gk schema.GroupKind) int {
	if gk.Group != "" && !strings.HasSuffix(gk.Group, ".k8s.io") && strings.Contains(gk.Group, ".") {
		return 26 // a kind of some other API group
	}
	switch gk.Kind {
	case "PriorityClass":
		return 1
	case "ResourceQuota", "LimitRange":
		return 2
	case "StorageClass":
		return 3
	case "ServiceAccount":
		return 4
	case "Secret":
		return 5
	case "ConfigMap":
		return 6
	case "ClusterRole":
		return 7
	case "ClusterRoleBinding":
		return 8
	case "Role":
		return 9
	case "RoleBinding":
		return 10
	case "NetworkPolicy":
		return 11
	case "PersistentVolume":
		return 12
	case "PersistentVolumeClaim":
		return 13
	case "Service":
		return 14
	case "PodDisruptionBudget":
		return 15
	case "DaemonSet":
		return 16
	case "Pod":
		return 17
	case "ReplicaSet":
		return 18
	case "Deployment":
		return 19
	case "StatefulSet":
		return 20
	case "Job":
		return 21
	case "CronJob":
		return 22
	case "HorizontalPodAutoscaler":
		return 23
	case "Ingress":
		return 24
	case "APIService":
		return 30
	case "MutatingWebhookConfiguration":
		return 31
	case "ValidatingWebhookConfiguration":
		return 32
	}
	return 26
}

func crdResource() schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
}

type applier struct {
	o      options
	dyn    dynamic.Interface
	mapper *restmapper.DeferredDiscoveryRESTMapper
}

// Apply sends objs to the cluster with server-side apply (field manager
// "rackboot"), in this order: Namespaces, CustomResourceDefinitions (then it
// waits until each is Established), everything else (RBAC, accounts,
// config, Services, workloads... see kindOrder), and last the custom
// resources whose kinds the applied CRDs define. Within a phase the input
// order is kept.
//
// Apply is idempotent: applying the same objects again changes nothing on
// the server (Result counts them as Unchanged). It never deletes anything.
// An object that cannot be applied does not stop the others: every failure
// is collected as an *ObjectError, naming the object and carrying the
// server's message, and returned joined after the rest was applied.
func Apply(ctx context.Context, cfg *rest.Config, objs []*unstructured.Unstructured, opts ...Option) (Result, error) {
	o := newOptions(opts)
	a, err := newApplier(cfg, o)
	if err != nil {
		return Result{}, err
	}

	var res Result
	var errs []error
	record := func(r ObjectResult) {
		res.Objects = append(res.Objects, r)
		switch r.Action {
		case Created:
			res.Created++
		case Configured:
			res.Configured++
		case Unchanged:
			res.Unchanged++
		case Failed:
			res.Failed++
			errs = append(errs, r.Err)
		}
		if r.Err != nil {
			o.log.Warn("apply failed", "object", r.Ref.String(), "err", r.Err)
		} else {
			o.log.Info("applied", "object", r.Ref.String(), "action", string(r.Action))
		}
		if o.progress != nil {
			o.progress(r)
		}
	}
	fail := func(ref Ref, err error) { record(failure(ref, err)) }

	steps, bad := plan(objs)
	for _, b := range bad {
		record(b)
	}
	notEstablished := map[string]error{} // CRD name -> why
	var crds []*unstructured.Unstructured
	established := false
	for _, it := range steps {
		if err := ctx.Err(); err != nil {
			errs = append(errs, fmt.Errorf("apply interrupted: %w", err))
			break
		}
		if it.phase > phaseCRD && !established {
			established = true
			failed := a.waitEstablished(ctx, crds)
			for _, name := range slices.Sorted(maps.Keys(failed)) {
				notEstablished[name] = failed[name]
				errs = append(errs, crdError(name, failed[name]))
			}
			// Discovery now knows the new kinds.
			a.mapper.Reset()
		}
		ref := RefOf(it.obj)
		if it.phase == phaseCustom {
			if why, ok := notEstablished[it.crd]; ok {
				fail(ref, fmt.Errorf("not applied: its CustomResourceDefinition %s is not established: %w", it.crd, why))
				continue
			}
		}
		action, err := a.applyOne(ctx, it.obj, it.phase == phaseCustom)
		if err != nil {
			fail(ref, err)
			if it.phase == phaseCRD {
				notEstablished[it.obj.GetName()] = errors.New("it was not applied")
			}
			continue
		}
		record(ObjectResult{Ref: ref, Action: action})
		if it.phase == phaseCRD {
			crds = append(crds, it.obj)
		}
	}
	if !established && len(crds) > 0 {
		failed := a.waitEstablished(ctx, crds)
		for _, name := range slices.Sorted(maps.Keys(failed)) {
			errs = append(errs, crdError(name, failed[name]))
		}
	}
	o.log.Info("apply done", "created", res.Created, "configured", res.Configured, "unchanged", res.Unchanged, "failed", res.Failed)
	return res, errors.Join(errs...)
}

// step is one object in apply order.
type step struct {
	obj   *unstructured.Unstructured
	phase phase
	rank  int    // within phaseRest, see kindRank
	index int    // in the input
	crd   string // for phaseCustom: the name of the CRD that defines the kind
}

// plan puts objs in apply order: Namespaces, CRDs, the rest (by kindRank),
// custom resources of kinds the CRDs among objs define; the input order is
// kept within each. Objects that cannot be applied at all (nil, no kind,
// no name) are returned as failures.
func plan(objs []*unstructured.Unstructured) ([]step, []ObjectResult) {
	defined := map[schema.GroupKind]string{} // kind -> CRD name
	for _, obj := range objs {
		if obj != nil && isCRD(obj) {
			g, _, _ := unstructured.NestedString(obj.Object, "spec", "group")
			k, _, _ := unstructured.NestedString(obj.Object, "spec", "names", "kind")
			if g != "" && k != "" {
				defined[schema.GroupKind{Group: g, Kind: k}] = obj.GetName()
			}
		}
	}
	var steps []step
	var bad []ObjectResult
	for i, obj := range objs {
		if obj == nil {
			bad = append(bad, failure(Ref{Kind: "<nil>", Name: fmt.Sprintf("#%d", i)}, errors.New("object is nil")))
			continue
		}
		if err := checkObject(obj); err != nil {
			bad = append(bad, failure(RefOf(obj), err))
			continue
		}
		s := step{obj: obj, index: i}
		gk := obj.GroupVersionKind().GroupKind()
		switch crd, custom := defined[gk]; {
		case gk == schema.GroupKind{Kind: "Namespace"}:
			s.phase = phaseNamespace
		case isCRD(obj):
			s.phase = phaseCRD
		case custom:
			s.phase, s.crd = phaseCustom, crd
		default:
			s.phase, s.rank = phaseRest, kindRank(gk)
		}
		steps = append(steps, s)
	}
	slices.SortStableFunc(steps, func(x, y step) int {
		return cmp.Or(cmp.Compare(x.phase, y.phase), cmp.Compare(x.rank, y.rank), cmp.Compare(x.index, y.index))
	})
	return steps, bad
}

func failure(ref Ref, err error) ObjectResult {
	return ObjectResult{Ref: ref, Action: Failed, Err: &ObjectError{Ref: ref, Err: err}}
}

func crdError(name string, err error) error {
	return &ObjectError{Ref: Ref{APIVersion: "apiextensions.k8s.io/v1", Kind: "CustomResourceDefinition", Name: name}, Err: err}
}

func newApplier(cfg *rest.Config, o options) (*applier, error) {
	if cfg == nil {
		return nil, errors.New("apply: no rest config")
	}
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 && cfg.Burst == 0 {
		// client-go's default of 5 requests/s would make the ~100 objects of
		// the Rook bundle (two requests each) take 40 s.
		cfg.QPS, cfg.Burst = 50, 100
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = FieldManager
	}
	cfg.WarningHandler = warningLogger{o.log}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("apply: dynamic client for %s: %w", cfg.Host, err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("apply: discovery client for %s: %w", cfg.Host, err)
	}
	return &applier{o: o, dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}, nil
}

// warningLogger sends the API server's warnings (deprecated APIs, unknown
// fields) to the logger instead of klog.
type warningLogger struct{ log *slog.Logger }

func (w warningLogger) HandleWarningHeader(code int, agent, text string) {
	w.log.Warn("API server warning", "warning", text)
}

func isCRD(obj *unstructured.Unstructured) bool {
	gvk := obj.GroupVersionKind()
	return gvk.Group == "apiextensions.k8s.io" && gvk.Kind == "CustomResourceDefinition"
}

// checkObject finds what the server could not even be asked about.
func checkObject(obj *unstructured.Unstructured) error {
	var missing []string
	if obj.GetAPIVersion() == "" {
		missing = append(missing, "apiVersion")
	} else if _, err := schema.ParseGroupVersion(obj.GetAPIVersion()); err != nil {
		return fmt.Errorf("bad apiVersion: %w", err)
	}
	if obj.GetKind() == "" {
		missing = append(missing, "kind")
	}
	if obj.GetName() == "" {
		missing = append(missing, "metadata.name")
	}
	if len(missing) > 0 {
		return fmt.Errorf("object has no %s", strings.Join(missing, ", "))
	}
	return nil
}

// applyOne server-side applies one object and tells what changed.
func (a *applier) applyOne(ctx context.Context, obj *unstructured.Unstructured, custom bool) (Action, error) {
	gvk := obj.GroupVersionKind()
	m, err := a.mapping(ctx, gvk, custom)
	if err != nil {
		return Failed, err
	}
	body := obj.DeepCopy()
	// Server-owned metadata must not be sent: a resourceVersion would be a
	// precondition, managedFields would replace the server's record.
	for _, f := range []string{"resourceVersion", "uid", "managedFields", "creationTimestamp", "generation", "selfLink"} {
		unstructured.RemoveNestedField(body.Object, "metadata", f)
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		if body.GetNamespace() == "" {
			return Failed, fmt.Errorf("%s is namespaced but the object has no metadata.namespace", gvk.Kind)
		}
		ri = a.dyn.Resource(m.Resource).Namespace(body.GetNamespace())
	} else {
		body.SetNamespace("") // as kubectl does: a namespace on a cluster-scoped object means nothing
	}
	name := body.GetName()

	before := ""
	cur, err := ri.Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
		before = cur.GetResourceVersion()
	case apierrors.IsNotFound(err):
	default:
		return Failed, fmt.Errorf("read current state: %w", err)
	}

	if before != "" {
		// A dry run first: when its result is the live object, nothing needs
		// writing. Without it, some kinds are written (and their
		// resourceVersion bumped) by an apply that changes nothing: a Job on
		// its first re-apply (kube-apiserver v1.35.8, see TestAPIServer),
		// StatefulSets in some versions (kubernetes#119304). Each such write
		// wakes controllers and watchers for nothing.
		dry, err := ri.Apply(ctx, name, body, metav1.ApplyOptions{FieldManager: FieldManager, Force: true, DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return Failed, explain(err, obj)
		}
		if sameObject(cur, dry) {
			return Unchanged, nil
		}
	}

	// Force: rackboot owns these objects; the rendered bundle is the source
	// of truth for every field it sets. Without force, a field once changed
	// by another manager (kubectl edit, a client-side apply from a manual
	// install, a previous tool) is a conflict and bring-up would stop on it
	// with no way forward but a human. Force only takes over the fields the
	// bundle sets; fields set by controllers and users that the bundle does
	// not mention (e.g. the operator's status, annotations) stay theirs.
	after, err := ri.Apply(ctx, name, body, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		return Failed, explain(err, obj)
	}
	switch rv := after.GetResourceVersion(); {
	case before == "":
		return Created, nil
	case rv == before:
		return Unchanged, nil
	default:
		return Configured, nil
	}
}

// explain adds what to do to a rejection for an immutable field.
func explain(err error, obj *unstructured.Unstructured) error {
	if apierrors.IsInvalid(err) && strings.Contains(err.Error(), "immutable") {
		return fmt.Errorf("%w (the live object differs in a field that cannot change in place; rackboot never deletes: delete %s by hand to have it recreated)", err, RefOf(obj))
	}
	return err
}

// sameObject tells whether two states of an object are equal but for their
// resourceVersion.
func sameObject(a, b *unstructured.Unstructured) bool {
	a, b = a.DeepCopy(), b.DeepCopy()
	unstructured.RemoveNestedField(a.Object, "metadata", "resourceVersion")
	unstructured.RemoveNestedField(b.Object, "metadata", "resourceVersion")
	return equality.Semantic.DeepEqual(a.Object, b.Object)
}

// mapping finds the resource of a kind. For the custom resources of CRDs
// just established, discovery may lag behind: it then retries until the
// establish timeout.
func (a *applier) mapping(ctx context.Context, gvk schema.GroupVersionKind, wait bool) (*meta.RESTMapping, error) {
	deadline := a.o.clock.Now().Add(a.o.establishTimeout)
	reset := false
	for {
		m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err == nil {
			return m, nil
		}
		if !meta.IsNoMatchError(err) {
			return nil, fmt.Errorf("find the API resource of %s: %w", gvk, err)
		}
		if reset && (!wait || !a.o.clock.Now().Before(deadline)) {
			return nil, fmt.Errorf("the API server has no resource for %s (is its CustomResourceDefinition applied?): %w", gvk, err)
		}
		if reset {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("find the API resource of %s: %w", gvk, ctx.Err())
			case <-a.o.clock.After(a.o.poll):
			}
		}
		a.mapper.Reset()
		reset = true
	}
}

// waitEstablished polls the CRDs until each is Established, and returns
// why for each one that is not by the timeout (or whose names the server
// refused).
func (a *applier) waitEstablished(ctx context.Context, crds []*unstructured.Unstructured) map[string]error {
	pending := map[string]string{} // name -> last state
	for _, c := range crds {
		pending[c.GetName()] = "no status yet"
	}
	failed := map[string]error{}
	if len(pending) == 0 {
		return failed
	}
	t0 := a.o.clock.Now()
	deadline := t0.Add(a.o.establishTimeout)
	ri := a.dyn.Resource(crdResource())
	for {
		for name := range pending {
			obj, err := ri.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				pending[name] = fmt.Sprintf("read it: %v", err)
				continue
			}
			est, estMsg := condition(obj, "Established")
			if est == "True" {
				delete(pending, name)
				continue
			}
			if acc, msg := condition(obj, "NamesAccepted"); acc == "False" {
				delete(pending, name)
				failed[name] = fmt.Errorf("names not accepted: %s", msg)
				continue
			}
			pending[name] = fmt.Sprintf("Established=%s %s", cmp.Or(est, "unknown"), estMsg)
		}
		if len(pending) == 0 {
			a.o.log.Info("CRDs established", "count", len(crds), "after", a.o.clock.Now().Sub(t0))
			return failed
		}
		if !a.o.clock.Now().Before(deadline) {
			for name, why := range pending {
				failed[name] = fmt.Errorf("not Established after %v: %s", a.o.establishTimeout, why)
			}
			return failed
		}
		select {
		case <-ctx.Done():
			for name := range pending {
				failed[name] = fmt.Errorf("waiting for Established: %w", ctx.Err())
			}
			return failed
		case <-a.o.clock.After(a.o.poll):
		}
	}
}

// condition returns the status and message of a status condition.
func condition(obj *unstructured.Unstructured, typ string) (status, message string) {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if !ok || m["type"] != typ {
			continue
		}
		s, _ := m["status"].(string)
		msg, _ := m["message"].(string)
		return s, msg
	}
	return "", ""
}
