package bundles

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/dotfile/rackboot/internal/kubetest"
)

// stepClock is a Clock whose After fires at once and moves time forward by
// the duration asked: waits run through their whole timeout without
// sleeping.
type stepClock struct {
	mu  sync.Mutex
	now time.Time
}

func newStepClock() *stepClock { return &stepClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *stepClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

// objects parses a multi-document YAML string.
func objects(t testing.TB, docs string) []*unstructured.Unstructured {
	t.Helper()
	var out []*unstructured.Unstructured
	for doc := range strings.SplitSeq(docs, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		m := map[string]any{}
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatalf("test fixture: %v\n%s", err, doc)
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
	return out
}

// widgetCRD defines Widget (namespaced, with a status subresource) in the
// group test.rackboot.io.
const widgetCRD = `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.test.rackboot.io}
spec:
  group: test.rackboot.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
`

// demoSet is a small platform: every phase, RBAC, a workload that needs
// its account, and a Job (immutable template).
const demoSet = `
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {pod-security.kubernetes.io/enforce: privileged}}
---
` + widgetCRD + `
---
apiVersion: test.rackboot.io/v1
kind: Widget
metadata: {name: w1, namespace: demo}
spec: {size: 3, color: blue}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: demo}
data: {a: "1"}
---
apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: demo}
type: Opaque
data: {password: c2VjcmV0}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: demo}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: web, namespace: demo}
rules: [{apiGroups: [""], resources: [configmaps], verbs: [get, list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: web, namespace: demo}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: web}
subjects: [{kind: ServiceAccount, name: web, namespace: demo}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      containers: [{name: web, image: "registry.invalid/web:1.0", ports: [{containerPort: 8080}]}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: db, namespace: demo}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: db}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: demo}
spec:
  serviceName: web
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: db
        image: "registry.invalid/db:1.0"
        resources: {requests: {cpu: 100m, memory: 128Mi}}
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: ceph-block
      resources: {requests: {storage: 1Gi}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: init, namespace: demo}
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: init, image: "registry.invalid/init:1.0", args: [init]}]
`

func shuffled(objs []*unstructured.Unstructured, seed uint64) []*unstructured.Unstructured {
	out := slices.Clone(objs)
	r := rand.New(rand.NewPCG(seed, 1))
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func TestPlanOrder(t *testing.T) {
	objs := objects(t, demoSet)
	for seed := range uint64(20) {
		steps, bad := plan(shuffled(objs, seed))
		if len(bad) != 0 || len(steps) != len(objs) {
			t.Fatalf("seed %d: %d steps, %d bad, want %d steps", seed, len(steps), len(bad), len(objs))
		}
		var kinds []string
		for _, s := range steps {
			kinds = append(kinds, s.obj.GetKind())
		}
		// Fully determined by the phases and kindRank, whatever the input order.
		if want := []string{"Namespace", "CustomResourceDefinition", "ServiceAccount", "Secret", "ConfigMap", "Role", "RoleBinding", "Service", "PodDisruptionBudget", "Deployment", "StatefulSet", "Job", "Widget"}; !slices.Equal(kinds, want) {
			t.Errorf("seed %d: order %v, want %v", seed, kinds, want)
		}
		if steps[len(steps)-1].crd != "widgets.test.rackboot.io" {
			t.Errorf("seed %d: Widget's CRD = %q", seed, steps[len(steps)-1].crd)
		}
	}
}

func TestPlanKeepsInputOrderWithinAKind(t *testing.T) {
	objs := objects(t, `
apiVersion: v1
kind: ConfigMap
metadata: {name: b, namespace: x}
---
apiVersion: ceph.rook.io/v1
kind: CephCluster
metadata: {name: c, namespace: x}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: a, namespace: x}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata: {name: hook}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: x}
`)
	steps, _ := plan(objs)
	var got []string
	for _, s := range steps {
		got = append(got, RefOf(s.obj).String())
	}
	// CephCluster's CRD is not in the set: it is an "other" kind of the rest
	// phase (its CRD is expected to exist), after workloads, before webhooks.
	want := []string{"ConfigMap x/b", "ConfigMap x/a", "Deployment x/d", "CephCluster x/c", "ValidatingWebhookConfiguration hook"}
	if !slices.Equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
}

func TestPlanRefusesBadObjects(t *testing.T) {
	good := objects(t, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok, namespace: x}\n")[0]
	tests := []struct {
		name string
		obj  *unstructured.Unstructured
		want string
	}{
		{"nil", nil, "<nil> #0: object is nil"},
		{"no name", objects(t, "apiVersion: v1\nkind: ConfigMap\nmetadata: {namespace: x}\n")[0], "ConfigMap x/: object has no metadata.name"},
		{"no kind", objects(t, "apiVersion: v1\nmetadata: {name: n}\n")[0], "object has no kind"},
		{"nothing", &unstructured.Unstructured{Object: map[string]any{}}, "object has no apiVersion, kind, metadata.name"},
		{"bad apiVersion", objects(t, "apiVersion: a/b/c\nkind: X\nmetadata: {name: n}\n")[0], "bad apiVersion"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			steps, bad := plan([]*unstructured.Unstructured{tt.obj, good})
			if len(steps) != 1 || steps[0].obj != good {
				t.Errorf("the good object is not planned: %v", steps)
			}
			if len(bad) != 1 || bad[0].Action != Failed || !strings.Contains(bad[0].Err.Error(), tt.want) {
				t.Fatalf("bad = %+v, want one failure containing %q", bad, tt.want)
			}
			var oe *ObjectError
			if !errors.As(bad[0].Err, &oe) {
				t.Errorf("%v is not an *ObjectError", bad[0].Err)
			}
		})
	}
}

func TestKindRank(t *testing.T) {
	tests := []struct {
		a, b schema.GroupKind
	}{
		{schema.GroupKind{Kind: "ServiceAccount"}, schema.GroupKind{Group: "apps", Kind: "Deployment"}},
		{schema.GroupKind{Kind: "Secret"}, schema.GroupKind{Group: "apps", Kind: "StatefulSet"}},
		{schema.GroupKind{Group: "rbac.authorization.k8s.io", Kind: "ClusterRole"}, schema.GroupKind{Group: "rbac.authorization.k8s.io", Kind: "ClusterRoleBinding"}},
		{schema.GroupKind{Group: "storage.k8s.io", Kind: "StorageClass"}, schema.GroupKind{Kind: "PersistentVolumeClaim"}},
		{schema.GroupKind{Kind: "Service"}, schema.GroupKind{Group: "apps", Kind: "StatefulSet"}},
		{schema.GroupKind{Group: "apps", Kind: "StatefulSet"}, schema.GroupKind{Group: "batch", Kind: "Job"}},
		{schema.GroupKind{Group: "apps", Kind: "Deployment"}, schema.GroupKind{Group: "ceph.rook.io", Kind: "CephCluster"}},
		// A custom "Job" kind is not a batch Job.
		{schema.GroupKind{Group: "batch", Kind: "Job"}, schema.GroupKind{Group: "example.com", Kind: "Job"}},
		{schema.GroupKind{Group: "ceph.rook.io", Kind: "CephCluster"}, schema.GroupKind{Group: "admissionregistration.k8s.io", Kind: "ValidatingWebhookConfiguration"}},
	}
	for _, tt := range tests {
		if kindRank(tt.a) >= kindRank(tt.b) {
			t.Errorf("kindRank(%v)=%d not before kindRank(%v)=%d", tt.a, kindRank(tt.a), tt.b, kindRank(tt.b))
		}
	}
}

// TestAPIServer runs everything that needs a real API server against one
// etcd + kube-apiserver (kubetest), started once for all its subtests.
func TestAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	t.Logf("measured: apiserver ready in %v", env.ReadyIn.Round(time.Millisecond))
	t.Run("Apply", func(t *testing.T) { testApply(t, env.Config) })
	t.Run("ApplyRejected", func(t *testing.T) { testApplyRejected(t, env.Config) })
	t.Run("Gates", func(t *testing.T) { testGates(t, env.Config) })
	t.Run("Nodes", func(t *testing.T) { testNodes(t, env.Config) })
}

// resourceVersions reads the live resourceVersion of every object.
func resourceVersions(t *testing.T, cfg *rest.Config, objs []*unstructured.Unstructured) map[Ref]string {
	t.Helper()
	a, err := newApplier(cfg, newOptions(nil))
	if err != nil {
		t.Fatal(err)
	}
	a.mapper.Reset()
	out := map[Ref]string{}
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("mapping for %v: %v", gvk, err)
		}
		var ri dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
		if obj.GetNamespace() != "" {
			ri = a.dyn.Resource(m.Resource).Namespace(obj.GetNamespace())
		}
		live, err := ri.Get(context.Background(), obj.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get %s: %v", RefOf(obj), err)
		}
		out[RefOf(obj)] = live.GetResourceVersion()
	}
	return out
}

func testApply(t *testing.T, cfg *rest.Config) {
	ctx := t.Context()
	objs := objects(t, demoSet)
	var logs bytes.Buffer
	var order []ObjectResult
	t0 := time.Now()
	res, err := Apply(ctx, cfg, shuffled(objs, 7),
		WithLogger(slog.New(slog.NewTextHandler(&logs, nil))),
		WithPollInterval(50*time.Millisecond),
		WithProgress(func(r ObjectResult) { order = append(order, r) }))
	took := time.Since(t0)
	if err != nil {
		t.Fatalf("first apply: %v\n%s", err, logs.String())
	}
	t.Logf("measured: first apply of %d objects (CRD Established included) in %v", len(objs), took.Round(time.Millisecond))
	if res.Created != len(objs) || res.Configured+res.Unchanged+res.Failed != 0 {
		t.Errorf("first apply: %+v, want %d created", res, len(objs))
	}
	if len(order) != len(objs) || order[0].Ref.Kind != "Namespace" || order[1].Ref.Kind != "CustomResourceDefinition" || order[len(order)-1].Ref.Kind != "Widget" {
		t.Errorf("progress order: %v", order)
	}
	// The CRD was Established before its custom resource was sent.
	est, wid := strings.Index(logs.String(), "CRDs established"), strings.Index(logs.String(), "object=\"Widget demo/w1\"")
	if est < 0 || wid < 0 || est > wid {
		t.Errorf("CRD Established (at %d) not logged before the Widget was applied (at %d):\n%s", est, wid, logs.String())
	}
	for _, l := range []string{"password", "c2VjcmV0"} {
		if strings.Contains(logs.String(), l) {
			t.Errorf("the log shows secret data %q", l)
		}
	}

	// A second apply, in another order, changes nothing: every
	// resourceVersion stays (the Job, whose template is immutable, too).
	before := resourceVersions(t, cfg, objs)
	t0 = time.Now()
	res, err = Apply(ctx, cfg, shuffled(objs, 8))
	took = time.Since(t0)
	if err != nil {
		t.Fatalf("second apply: %v", err)
	}
	t.Logf("measured: second (no-op) apply in %v", took.Round(time.Millisecond))
	if res.Unchanged != len(objs) || res.Created+res.Configured+res.Failed != 0 {
		t.Errorf("second apply: %+v, want all %d unchanged", res, len(objs))
	}
	after := resourceVersions(t, cfg, objs)
	for ref, rv := range before {
		if after[ref] != rv {
			t.Errorf("%s: resourceVersion %s -> %s on a second apply", ref, rv, after[ref])
		}
	}

	// A change is applied; only that object is configured. Applying a subset
	// deletes nothing.
	cm := objects(t, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg, namespace: demo}\ndata: {a: \"2\"}\n")
	res, err = Apply(ctx, cfg, cm)
	if err != nil || res.Configured != 1 || len(res.Objects) != 1 {
		t.Fatalf("changed ConfigMap: %+v, %v", res, err)
	}
	after2 := resourceVersions(t, cfg, objs)
	for ref, rv := range after {
		if changed := after2[ref] != rv; changed != (ref.Kind == "ConfigMap") {
			t.Errorf("%s: resourceVersion %s -> %s after applying only the ConfigMap", ref, rv, after2[ref])
		}
	}

	// A field changed by someone else (kubectl edit) is taken back: Force.
	dyn := dynamic.NewForConfigOrDie(cfg)
	cms := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}).Namespace("demo")
	live, err := cms.Get(ctx, "cfg", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = unstructured.SetNestedField(live.Object, "edited", "data", "a")
	if _, err := cms.Update(ctx, live, metav1.UpdateOptions{FieldManager: "kubectl-edit"}); err != nil {
		t.Fatal(err)
	}
	if res, err := Apply(ctx, cfg, cm); err != nil || res.Configured != 1 {
		t.Fatalf("apply over another manager's change: %+v, %v", res, err)
	}
	live, _ = cms.Get(ctx, "cfg", metav1.GetOptions{})
	if v, _, _ := unstructured.NestedString(live.Object, "data", "a"); v != "2" {
		t.Errorf("data.a = %q after apply, want 2", v)
	}

	// An immutable field changed: a clear error, nothing deleted.
	job := objects(t, `
apiVersion: batch/v1
kind: Job
metadata: {name: init, namespace: demo}
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: init, image: "registry.invalid/init:2.0", args: [init]}]
`)
	_, err = Apply(ctx, cfg, job)
	if err == nil || !strings.Contains(err.Error(), "Job demo/init") || !strings.Contains(err.Error(), "immutable") || !strings.Contains(err.Error(), "never deletes") {
		t.Errorf("Job with a changed template: %v, want an immutable-field error naming it", err)
	}
	if rv := resourceVersions(t, cfg, objs); rv[RefOf(job[0])] != after[RefOf(job[0])] {
		t.Error("the Job changed")
	}
}

func testApplyRejected(t *testing.T, cfg *rest.Config) {
	ctx := t.Context()
	objs := objects(t, `
apiVersion: v1
kind: Namespace
metadata: {name: rejects}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: no-selector, namespace: rejects}
spec:
  template:
    metadata: {labels: {app: x}}
    spec: {containers: [{name: x, image: "registry.invalid/x:1"}]}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: Bad_Name, namespace: rejects}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: good, namespace: rejects}
data: {k: v}
---
apiVersion: nothere.rackboot.io/v1
kind: Gadget
metadata: {name: g, namespace: rejects}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: no-namespace}
`)
	res, err := Apply(ctx, cfg, objs, WithPollInterval(10*time.Millisecond))
	if err == nil {
		t.Fatal("no error for invalid objects")
	}
	t.Logf("the error:\n%v", err)
	var oes []*ObjectError
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var oe *ObjectError
		if !errors.As(e, &oe) {
			t.Errorf("%v is not an *ObjectError", e)
			continue
		}
		oes = append(oes, oe)
	}
	want := map[string]string{
		"Deployment rejects/no-selector": "spec.selector: Required value",
		"ConfigMap rejects/Bad_Name":     "a lowercase RFC 1123 subdomain",
		"Gadget rejects/g":               "no resource for nothere.rackboot.io/v1, Kind=Gadget",
		"ConfigMap no-namespace":         "namespaced but the object has no metadata.namespace",
	}
	if len(oes) != len(want) || res.Failed != len(want) {
		t.Errorf("%d object errors, %d failed, want %d", len(oes), res.Failed, len(want))
	}
	for _, oe := range oes {
		if w, ok := want[oe.Ref.String()]; !ok || !strings.Contains(oe.Error(), w) {
			t.Errorf("error %q, want one for %s containing %q", oe, oe.Ref, w)
		}
		if oe.Ref.Kind == "Deployment" && !apierrors.IsInvalid(oe) {
			t.Errorf("the Deployment's error does not carry the server's status: %v", oe)
		}
	}
	// The valid ones were applied anyway.
	if res.Created != 2 {
		t.Errorf("%d created, want the namespace and the good ConfigMap", res.Created)
	}
	dyn := dynamic.NewForConfigOrDie(cfg)
	if _, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}).Namespace("rejects").Get(ctx, "good", metav1.GetOptions{}); err != nil {
		t.Errorf("the valid ConfigMap was not applied: %v", err)
	}
}

// ExampleApply shows the bring-up sequence: wait for the API server behind
// the VIP, apply, wait for the health gates.
func ExampleApply() {
	ctx := context.Background()
	cfg := &rest.Config{Host: "https://10.0.0.10:6443"} // the VIP; from the admin kubeconfig
	var objs []*unstructured.Unstructured               // a Bundle's Objects
	if err := WaitAPIServer(ctx, cfg, 20*time.Minute); err != nil {
		fmt.Println(err)
		return
	}
	res, err := Apply(ctx, cfg, objs, WithLogger(slog.Default()))
	fmt.Println(res.Created, res.Configured, res.Unchanged, err)
}

// FuzzPlan: whatever the objects, plan puts each one either in the plan or
// among the failures, in phase order, and never panics.
func FuzzPlan(f *testing.F) {
	f.Add(demoSet)
	f.Add("apiVersion: v1\nkind: Namespace\n---\nkind: X\nmetadata: {name: 1}\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: a}\nspec: {group: 7, names: {kind: [x]}}\n")
	f.Fuzz(func(t *testing.T, docs string) {
		var objs []*unstructured.Unstructured
		for doc := range strings.SplitSeq(docs, "\n---\n") {
			m := map[string]any{}
			if yaml.Unmarshal([]byte(doc), &m) != nil {
				continue
			}
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
		steps, bad := plan(objs)
		if len(steps)+len(bad) != len(objs) {
			t.Fatalf("%d objects -> %d steps + %d failures", len(objs), len(steps), len(bad))
		}
		for i := 1; i < len(steps); i++ {
			if steps[i].phase < steps[i-1].phase {
				t.Fatalf("phase %d after %d", steps[i].phase, steps[i-1].phase)
			}
		}
		for _, b := range bad {
			if b.Err == nil || b.Action != Failed {
				t.Fatalf("failure without error: %+v", b)
			}
		}
	})
}
