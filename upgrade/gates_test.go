package upgrade

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestEtcdGate(t *testing.T) {
	addrs := map[string]string{"cp1": "10.0.0.1", "cp2": "10.0.0.2", "cp3": "10.0.0.3"}
	resolve := func(_ context.Context, name string) (string, error) {
		if a, ok := addrs[name]; ok {
			return a, nil
		}
		return "", fmt.Errorf("node %s has no address", name)
	}
	cps := []string{"cp1", "cp2", "cp3"}
	for _, tc := range []struct {
		name   string
		change func(d *talosDouble)
		cps    []string
		why    string
	}{
		{name: "healthy", change: func(*talosDouble) {}},
		{name: "a member missing", change: func(d *talosDouble) { d.members = d.members[:2] }, why: "etcd has 2 voting member(s) (cp1, cp2), the rack has 3 control planes"},
		{name: "a learner", change: func(d *talosDouble) { d.members[2].Learner = true }, why: "etcd member cp3 is a learner"},
		{name: "a member reports an error", change: func(d *talosDouble) { d.etcdErr["10.0.0.2"] = "etcdserver: no space (alarm NOSPACE)" }, why: "cp2: etcd reports etcdserver: no space"},
		{name: "a control plane rebooting", change: func(d *talosDouble) { d.rebooting["10.0.0.3"] = true }, why: "cp3: etcd does not answer"},
		{name: "no address", change: func(*talosDouble) {}, cps: []string{"cp1", "cp2", "cp3", "cp4"}, why: "cp4: node cp4 has no address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newTalosDouble(map[string]string{"10.0.0.1": from, "10.0.0.2": from, "10.0.0.3": from})
			d.members = []EtcdMember{{ID: 1, Hostname: "cp1"}, {ID: 2, Hostname: "cp2"}, {ID: 3, Hostname: "cp3"}}
			tc.change(d)
			list := cps
			if tc.cps != nil {
				list = tc.cps
			}
			ok, why := EtcdGate(d, list, resolve).Check(t.Context())
			if ok != (tc.why == "") || !strings.Contains(why, tc.why) {
				t.Errorf("= %v, %q; want ok=%v with %q", ok, why, tc.why == "", tc.why)
			}
		})
	}
}

// metricsServer serves each pod's /_status/vars on loopback, in
// CockroachDB's Prometheus text format; the test sets their content.
type metricsServer struct {
	mu   sync.Mutex
	vars map[string]string
	srv  *httptest.Server
}

func newMetricsServer(t *testing.T) *metricsServer {
	m := &metricsServer{vars: map[string]string{}}
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pod, ok := strings.CutSuffix(strings.TrimPrefix(r.URL.Path, "/"), "/_status/vars")
		m.mu.Lock()
		body, found := m.vars[pod]
		m.mu.Unlock()
		if !ok || !found {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		fmt.Fprint(w, body)
	}))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *metricsServer) set(pod string, live, under, unavail int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.vars[pod] = fmt.Sprintf(`# HELP liveness_livenodes Number of live nodes in the cluster (will be 0 if this node is not itself live)
# TYPE liveness_livenodes gauge
liveness_livenodes %d
# HELP ranges_underreplicated Number of ranges with fewer live replicas than needed for quorum
# TYPE ranges_underreplicated gauge
ranges_underreplicated{store="1"} %d
# TYPE ranges_unavailable gauge
ranges_unavailable{store="1"} %d
`, live, under, unavail)
}

func TestCockroachGate(t *testing.T) {
	k := startKube(t)
	ctx := t.Context()
	if _, err := k.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "cockroachdb"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ms := newMetricsServer(t)
	vars := HTTPVars{URL: func(pod string) string { return ms.srv.URL + "/" + pod }}
	gate := CockroachGate(k.cs, "cockroachdb", vars)

	check := func(wantOK bool, want string) {
		t.Helper()
		ok, why := gate.Check(ctx)
		if ok != wantOK || !strings.Contains(why, want) {
			t.Errorf("gate = %v, %q; want %v with %q", ok, why, wantOK, want)
		}
	}
	check(false, "is the CockroachDB bundle applied?")

	three := int32(3)
	labels := map[string]string{"app": "cockroachdb"}
	sts, err := k.cs.AppsV1().StatefulSets("cockroachdb").Create(ctx, &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "cockroachdb", Namespace: "cockroachdb"},
		Spec: appsv1.StatefulSetSpec{
			Replicas: &three, ServiceName: "cockroachdb",
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "cockroachdb", Image: "docker.io/cockroachdb/cockroach:v25.3.2"}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setReady := func(n int32) {
		t.Helper()
		sts.Status.Replicas, sts.Status.ReadyReplicas, sts.Status.ObservedGeneration = 3, n, sts.Generation
		if sts, err = k.cs.AppsV1().StatefulSets("cockroachdb").UpdateStatus(ctx, sts, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setReady(2)
	check(false, "2/3 cockroachdb pods ready")

	setReady(3)
	check(false, "cockroachdb-0/_status/vars: HTTP 404")
	for i := range 3 {
		ms.set(fmt.Sprintf("cockroachdb-%d", i), 3, 0, 0)
	}
	check(true, "")

	ms.set("cockroachdb-1", 2, 5, 0)
	ms.set("cockroachdb-2", 2, 1, 0)
	check(false, "cockroachdb-1 sees 2 of 3 nodes live; cockroachdb-2 sees 2 of 3 nodes live; 6 range(s) under-replicated")

	// Through the API server's pod proxy (what the CLI uses): there is no
	// such pod here, and the gate says so.
	proxy := CockroachGate(k.cs, "cockroachdb", PodProxyVars{REST: k.cs.CoreV1().RESTClient(), Namespace: "cockroachdb"})
	ok, why := proxy.Check(ctx)
	t.Logf("through the pod proxy: %v %s", ok, why)
	if ok || !strings.Contains(why, "read cockroachdb/cockroachdb-0 /_status/vars through the API server") || !strings.Contains(why, "could not find the requested resource") {
		t.Errorf("pod proxy without pods: %v, %q", ok, why)
	}
}

func TestNodesReadyGate(t *testing.T) {
	k := startKube(t)
	g := NodesReadyGate(k.cs)
	if ok, why := g.Check(t.Context()); ok || why != "the cluster has no nodes" {
		t.Errorf("no nodes: %v %q", ok, why)
	}
	k.node("r1", "10.0.0.1", "")
	if ok, why := g.Check(t.Context()); !ok {
		t.Errorf("one Ready node: %q", why)
	}
	n, _ := k.cs.CoreV1().Nodes().Create(t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "r2"}}, metav1.CreateOptions{})
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "KubeletNotReady", Message: "PLEG is not healthy"}}
	if _, err := k.cs.CoreV1().Nodes().UpdateStatus(t.Context(), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if ok, why := g.Check(t.Context()); ok || !strings.Contains(why, "r2: not Ready (False KubeletNotReady: PLEG is not healthy)") || strings.Contains(why, "r1") {
		t.Errorf("r2 not Ready: %v %q", ok, why)
	}
}
