package handoff

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/kubestate"
)

// TestAPIServer runs the objects against a real etcd + kube-apiserver
// (kubetest; RBAC authorization, Pod Security admission at its defaults).
func TestAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	t.Logf("measured: apiserver ready in %v", env.ReadyIn.Round(time.Millisecond))
	t.Run("ApplyTwice", func(t *testing.T) { testApplyTwice(t, env.Config) })
	t.Run("ServiceAccountRights", func(t *testing.T) { testServiceAccountRights(t, env.Config) })
	t.Run("WaitAnswer", func(t *testing.T) { testWaitAnswer(t, env.Config) })
	t.Run("PodSecurity", func(t *testing.T) { testPodSecurity(t, env.Config) })
}

// testPodSecurity: the Deployment's pod, sent as a server-side dry run,
// is refused by Pod Security admission in a namespace at Talos's default
// level (enforce=baseline: host network and host ports are not baseline)
// and admitted in rackboot's namespace (enforce=privileged).
func testPodSecurity(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	cs := kubernetes.NewForConfigOrDie(cfg)
	o, err := Build(Params{Image: testImage, AssetsImage: testAssets})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bundles.Apply(ctx, cfg, mustRender(t, Params{Image: testImage, AssetsImage: testAssets})); err != nil {
		t.Fatal(err)
	}
	const baseline = "talos-default"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: baseline,
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "baseline"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := func(ns string) error {
		spec := o.Deployment.Spec.Template.Spec
		spec.ServiceAccountName = "" // the SA exists in rackboot's namespace only
		_, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "rackboot-x", Labels: podLabels()}, Spec: spec},
			metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err
	}
	err = pod(baseline)
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "hostNetwork") {
		t.Errorf("the pod at enforce=baseline: %v; want forbidden for hostNetwork", err)
	}
	if err := pod(Namespace); err != nil {
		t.Errorf("the pod in %s (enforce=privileged): %v", Namespace, err)
	}
	t.Logf("measured: at baseline the apiserver says: %v", err)
}

func mustRender(t *testing.T, p Params) []*unstructured.Unstructured {
	t.Helper()
	objs, err := Render(p)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// testApplyTwice: every object is accepted by server-side apply (the
// apiserver's validation and admission, Pod Security included), and a
// second apply changes nothing: every resourceVersion stays.
func testApplyTwice(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	objs, err := Render(Params{Image: testImage, AssetsImage: testAssets})
	if err != nil {
		t.Fatal(err)
	}
	res, err := bundles.Apply(ctx, cfg, objs)
	if err != nil {
		t.Fatalf("first apply: %v", err)
	}
	if res.Created != len(objs) {
		t.Fatalf("first apply: %+v, want %d created", res, len(objs))
	}
	// The assets image volume is kept: with the ImageVolume feature off
	// the apiserver drops the field (and the volume would have no source).
	d, err := kubernetes.NewForConfigOrDie(cfg).AppsV1().Deployments(Namespace).Get(ctx, Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if vs := d.Spec.Template.Spec.Volumes; len(vs) != 3 || vs[2].Image == nil || vs[2].Image.Reference != testAssets {
		t.Errorf("stored volumes %+v: want the assets image volume of %s", vs, testAssets)
	}
	before := versions(t, ctx, cfg, objs)
	res, err = bundles.Apply(ctx, cfg, objs)
	if err != nil {
		t.Fatalf("second apply: %v", err)
	}
	if res.Unchanged != len(objs) {
		t.Errorf("second apply: %+v, want all %d unchanged", res, len(objs))
	}
	after := versions(t, ctx, cfg, objs)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s: resourceVersion %s after the second apply, was %s", k, after[k], v)
		}
	}
	t.Logf("measured: %d objects, second apply changed none (%v)", len(objs), after)
}

// versions reads each object's resourceVersion.
func versions(t *testing.T, ctx context.Context, cfg *rest.Config, objs []*unstructured.Unstructured) map[string]string {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(cfg)
	out := map[string]string{}
	for _, o := range objs {
		var m metav1.Object
		var err error
		ns, name := o.GetNamespace(), o.GetName()
		switch o.GetKind() {
		case "Namespace":
			m, err = cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		case "ServiceAccount":
			m, err = cs.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{})
		case "Role":
			m, err = cs.RbacV1().Roles(ns).Get(ctx, name, metav1.GetOptions{})
		case "RoleBinding":
			m, err = cs.RbacV1().RoleBindings(ns).Get(ctx, name, metav1.GetOptions{})
		case "Deployment":
			m, err = cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		case "PodDisruptionBudget":
			m, err = cs.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, name, metav1.GetOptions{})
		default:
			t.Fatalf("unexpected kind %s", o.GetKind())
		}
		if err != nil {
			t.Fatalf("get %s %s: %v", o.GetKind(), name, err)
		}
		out[o.GetKind()+"/"+name] = m.GetResourceVersion()
	}
	return out
}

// testServiceAccountRights impersonates the pod's ServiceAccount
// (system:serviceaccount:rackboot-system:rackboot) and sends every kind
// of request a replica makes as a server-side dry run (or a read): each is
// allowed by the Role. Requests outside it are forbidden.
func testServiceAccountRights(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	objs, err := Render(Params{Image: testImage, AssetsImage: testAssets})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bundles.Apply(ctx, cfg, objs); err != nil {
		t.Fatal(err)
	}
	admin := kubernetes.NewForConfigOrDie(cfg)
	// What handoff copies first: the secrets bundle, a record.
	if _, err := admin.CoreV1().Secrets(Namespace).Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: kubestate.SecretsName},
		Data:       map[string][]byte{kubestate.SecretsKey: []byte("cluster: {}\n")}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := admin.CoreV1().ConfigMaps(Namespace).Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "rackboot-machine-formula"},
		Data:       map[string]string{kubestate.MachineKey: "{}"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	sa := rest.CopyConfig(cfg)
	sa.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + Namespace + ":" + Name,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + Namespace, "system:authenticated"}}
	pod := kubernetes.NewForConfigOrDie(sa)
	dry := metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}
	dryU := metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}}
	cms := pod.CoreV1().ConfigMaps(Namespace)
	secs := pod.CoreV1().Secrets(Namespace)
	leases := pod.CoordinationV1().Leases(Namespace)
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: LeaseName}}

	allowed := []struct {
		what string
		do   func() error
	}{
		{"create the Lease (first replica)", func() error { _, err := leases.Create(ctx, lease, dry); return err }},
		{"get the Lease", func() error {
			// Made for real so that get and update find it.
			l, err := leases.Create(ctx, lease, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			_, err = leases.Get(ctx, l.Name, metav1.GetOptions{})
			return err
		}},
		{"update the Lease (renew)", func() error {
			l, err := leases.Get(ctx, LeaseName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			id := "rackboot-abc"
			l.Spec.HolderIdentity = &id
			_, err = leases.Update(ctx, l, dryU)
			return err
		}},
		{"get a machine record", func() error { _, err := cms.Get(ctx, "rackboot-machine-formula", metav1.GetOptions{}); return err }},
		{"list machine records", func() error { _, err := cms.List(ctx, metav1.ListOptions{}); return err }},
		{"watch machine records", func() error {
			w, err := cms.Watch(ctx, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		}},
		{"create a spent token", func() error {
			_, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "rackboot-spent-x"}}, dry)
			return err
		}},
		{"update a machine record", func() error {
			cm, err := cms.Get(ctx, "rackboot-machine-formula", metav1.GetOptions{})
			if err != nil {
				return err
			}
			cm.Data[kubestate.MachineKey] = `{"stage":"dhcp"}`
			_, err = cms.Update(ctx, cm, dryU)
			return err
		}},
		{"delete an old pin", func() error {
			return cms.Delete(ctx, "rackboot-machine-formula", metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
		}},
		{"read the secrets bundle", func() error { _, err := secs.Get(ctx, kubestate.SecretsName, metav1.GetOptions{}); return err }},
		{"create the token key (first start)", func() error {
			_, err := secs.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: kubestate.TokenKeyName},
				Data: map[string][]byte{kubestate.TokenKeyKey: make([]byte, 32)}}, dry)
			return err
		}},
	}
	for _, a := range allowed {
		if err := a.do(); err != nil {
			t.Errorf("as the pod's ServiceAccount, %s: %v; want allowed", a.what, err)
		}
	}

	forbidden := []struct {
		what string
		do   func() error
	}{
		{"list secrets in kube-system", func() error {
			_, err := pod.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"list its own namespace's secrets", func() error { _, err := secs.List(ctx, metav1.ListOptions{}); return err }},
		{"replace the secrets bundle", func() error {
			s, err := kubernetes.NewForConfigOrDie(cfg).CoreV1().Secrets(Namespace).Get(ctx, kubestate.SecretsName, metav1.GetOptions{})
			if err != nil {
				return err
			}
			s.Data[kubestate.SecretsKey] = []byte("other")
			_, err = secs.Update(ctx, s, dryU)
			return err
		}},
		{"delete the secrets bundle", func() error {
			return secs.Delete(ctx, kubestate.SecretsName, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
		}},
		{"create a pod", func() error {
			_, err := pod.CoreV1().Pods(Namespace).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "x"},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "x", Image: "x"}}}}, dry)
			return err
		}},
		{"get another Lease", func() error { _, err := leases.Get(ctx, "kube-scheduler", metav1.GetOptions{}); return err }},
		{"update its own Deployment", func() error {
			d, err := admin.AppsV1().Deployments(Namespace).Get(ctx, Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			_, err = pod.AppsV1().Deployments(Namespace).Update(ctx, d, dryU)
			return err
		}},
		{"widen its own Role", func() error {
			r, err := admin.RbacV1().Roles(Namespace).Get(ctx, Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			_, err = pod.RbacV1().Roles(Namespace).Update(ctx, r, dryU)
			return err
		}},
		{"read configmaps in kube-system", func() error {
			_, err := pod.CoreV1().ConfigMaps("kube-system").List(ctx, metav1.ListOptions{})
			return err
		}},
	}
	for _, f := range forbidden {
		if err := f.do(); !apierrors.IsForbidden(err) {
			t.Errorf("as the pod's ServiceAccount, %s: %v; want forbidden", f.what, err)
		}
	}
	t.Logf("measured: %d requests allowed, %d forbidden as %s", len(allowed), len(forbidden), sa.Impersonate.UserName)
}

// testWaitAnswer: WaitAnswer waits while the Deployment has no available
// replica, then asks the ready pod at its address. No kubelet or
// controller runs here, so the test itself writes the Deployment's and the
// pod's status (the fake: no kubelet); the answer comes from a real HTTP
// server on 127.0.0.1, the pod's address. A server that answers 503 is
// not an answer. Then ScaleDown sets replicas 0 and returns once the pod
// is gone.
func testWaitAnswer(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	var healthy atomic.Bool
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() || r.URL.Path != "/" {
			http.Error(w, "not yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("rackboot"))
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	const ns = "wait-answer"
	objs, err := Render(Params{Namespace: ns, Image: testImage, AssetsImage: testAssets, HTTPPort: port})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bundles.Apply(ctx, cfg, objs); err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(cfg)
	var progress []string
	wc := WaitConfig{Client: cs, Namespace: ns, HTTPPort: port, Timeout: 500 * time.Millisecond, Poll: 50 * time.Millisecond,
		Progress: func(s string) { progress = append(progress, s) }}

	// No controller has seen the Deployment yet, then (the fake
	// controller's status) none is available: timeouts that say so.
	if _, err := WaitAnswer(ctx, wc); err == nil || !strings.Contains(err.Error(), "has not seen its latest spec") {
		t.Fatalf("WaitAnswer before any controller: %v, want a timeout naming the controller", err)
	}
	setStatus := func(s appsv1.DeploymentStatus) {
		t.Helper()
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.ObservedGeneration = d.Generation
		d.Status = s
		if _, err := cs.AppsV1().Deployments(ns).UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setStatus(appsv1.DeploymentStatus{Replicas: 2, UnavailableReplicas: 2})
	if _, err := WaitAnswer(ctx, wc); err == nil || !strings.Contains(err.Error(), "0 of 2 replicas available") {
		t.Fatalf("WaitAnswer with no replica: %v, want a timeout naming 0 of 2 replicas", err)
	}

	// The fake kubelet and controller: one pod ready at 127.0.0.1, the
	// Deployment's status says one available.
	p, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "rackboot-abc", Labels: podLabels()},
		Spec:       corev1.PodSpec{NodeName: "formula", HostNetwork: true, Containers: []corev1.Container{{Name: "rackboot", Image: testImage}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1", PodIPs: []corev1.PodIP{{IP: "127.0.0.1"}},
		HostIP: "127.0.0.1", Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	setStatus(appsv1.DeploymentStatus{Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1})

	// Available but answering 503: still no answer.
	if _, err := WaitAnswer(ctx, wc); err == nil || !strings.Contains(err.Error(), "HTTP 503") {
		t.Fatalf("WaitAnswer while the replica answers 503: %v, want a timeout naming HTTP 503", err)
	}
	healthy.Store(true)
	wc.Timeout = 30 * time.Second
	t0 := time.Now()
	a, err := WaitAnswer(ctx, wc)
	if err != nil {
		t.Fatal(err)
	}
	want := "http://127.0.0.1:" + strconv.Itoa(port) + "/"
	if a.Pod != "rackboot-abc" || a.Node != "formula" || a.URL != want {
		t.Errorf("answer %+v, want rackboot-abc on formula at %s", a, want)
	}
	t.Logf("measured: answered in %v; progress seen: %q", time.Since(t0).Round(time.Millisecond), progress)

	// ScaleDown: replicas 0; it waits until the pod is gone (the test
	// deletes it, as the kubelet would after the ReplicaSet controller).
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = cs.CoreV1().Pods(ns).Delete(context.Background(), "rackboot-abc", metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	}()
	t0 = time.Now()
	if err := ScaleDown(ctx, cs, ns, 30*time.Second, 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if since := time.Since(t0); since < 250*time.Millisecond {
		t.Errorf("ScaleDown returned after %v, before the pod was gone", since)
	}
	d, err := cs.AppsV1().Deployments(ns).Get(ctx, Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *d.Spec.Replicas != 0 {
		t.Errorf("replicas %d after ScaleDown", *d.Spec.Replicas)
	}
	// A handoff after --back applies replicas 2 again (Apply forces the field back).
	if _, err := bundles.Apply(ctx, cfg, objs); err != nil {
		t.Fatal(err)
	}
	d, err = cs.AppsV1().Deployments(ns).Get(ctx, Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *d.Spec.Replicas != 2 {
		t.Errorf("replicas %d after applying again, want 2", *d.Spec.Replicas)
	}
}
