package bundles

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/dotfile/rackboot/internal/kubetest"
)

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestWaitAPIServerTimeoutRefused(t *testing.T) {
	addr := closedPort(t)
	clock := newStepClock()
	t0 := clock.Now()
	var logs bytes.Buffer
	err := WaitAPIServer(t.Context(), &rest.Config{Host: "http://" + addr}, 5*time.Minute,
		WithClock(clock), WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	for _, want := range []string{"http://" + addr + "/readyz", "not ready after 5m0s", "connection refused"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	// Backoff: 1 s doubling up to 10 s: attempts at 0, 1, 3, 7, 15, 25 ... 295, 305 s: 34.
	if n := strings.Count(logs.String(), "API server not ready yet"); n != 34 {
		t.Errorf("%d attempts in 5 simulated minutes, want 34", n)
	}
	if waited := clock.Now().Sub(t0); waited < 5*time.Minute || waited > 5*time.Minute+10*time.Second {
		t.Errorf("simulated wait %v, want about 5m", waited)
	}
}

func TestWaitAPIServerNotReadyThenReady(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path != "/readyz" || r.Header.Get("Authorization") != "Bearer tok" {
			http.Error(w, "wrong request "+r.URL.Path, http.StatusBadRequest)
			return
		}
		calls++
		if calls < 4 {
			http.Error(w, "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "ok")
	}))
	defer srv.Close()
	cfg := &rest.Config{Host: srv.URL, BearerToken: "tok"}

	err := WaitAPIServer(t.Context(), cfg, 2*time.Second, WithClock(newStepClock()))
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "HTTP 500: [-]etcd failed: reason withheld") {
		t.Fatalf("err = %v, want a timeout naming the failing check", err)
	}
	if err := WaitAPIServer(t.Context(), cfg, time.Minute, WithClock(newStepClock())); err != nil {
		t.Fatalf("err = %v, want ready on the 4th call", err)
	}
	if calls != 4 {
		t.Errorf("%d calls, want 4", calls)
	}
	// Cancelled: stops at once and says so.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := WaitAPIServer(ctx, &rest.Config{Host: "http://" + closedPort(t)}, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled wait: %v", err)
	}
}

// TestVIP is the bring-up case: the API server comes up late on another
// loopback address (as a Talos VIP answers only after etcd is
// bootstrapped); WaitAPIServer waits through refused connections and
// not-ready answers, then Apply succeeds.
func TestVIP(t *testing.T) {
	env := kubetest.New(t, kubetest.WithAddress("127.0.0.2"))
	if !strings.HasPrefix(env.URL, "https://127.0.0.2:") {
		t.Fatalf("env URL %s", env.URL)
	}
	// Nothing there yet.
	err := WaitAPIServer(t.Context(), env.Config, time.Second, WithClock(newStepClock()))
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), env.URL) {
		t.Fatalf("before start: %v, want a timeout with connection refused at %s", err, env.URL)
	}

	var logs bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(&lockedWriter{mu: &mu, w: &logs}, nil))
	started := make(chan error, 1)
	attempts := make(chan struct{}, 1)
	// Start the server only after WaitAPIServer has been refused twice.
	go func() {
		<-attempts
		started <- env.Start()
	}()
	t0 := time.Now()
	err = WaitAPIServer(t.Context(), env.Config, 2*time.Minute,
		WithPollInterval(20*time.Millisecond), WithMaxPollInterval(200*time.Millisecond),
		WithLogger(slog.New(&notify{Handler: logger.Handler(), after: 2, ch: attempts})))
	if err != nil {
		t.Fatalf("WaitAPIServer: %v", err)
	}
	t.Logf("measured: WaitAPIServer returned %v after the first attempt; apiserver ready in %v", time.Since(t0).Round(time.Millisecond), env.ReadyIn.Round(time.Millisecond))
	if err := <-started; err != nil {
		t.Fatalf("start: %v", err)
	}
	mu.Lock()
	out := logs.String()
	mu.Unlock()
	if n := strings.Count(out, "API server not ready yet"); n < 2 || !strings.Contains(out, "connection refused") {
		t.Errorf("%d failed attempts logged, want at least 2 with connection refused:\n%s", n, out)
	}
	res, err := Apply(t.Context(), env.Config, objects(t, demoSet), WithPollInterval(50*time.Millisecond))
	if err != nil || res.Created != len(objects(t, demoSet)) {
		t.Fatalf("apply through the late server: %+v, %v", res, err)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// notify is a slog handler that signals ch once, after the given number of
// "not ready" records.
type notify struct {
	slog.Handler
	mu    sync.Mutex
	n     int
	after int
	ch    chan struct{}
}

func (h *notify) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == "API server not ready yet" {
		h.mu.Lock()
		h.n++
		if h.n == h.after {
			close(h.ch)
		}
		h.mu.Unlock()
	}
	return h.Handler.Handle(ctx, r)
}

func cephGate(name string) Gate {
	return Gate{
		Name:      "CephCluster rook-ceph/" + name + " is HEALTH_OK",
		GVR:       schema.GroupVersionResource{Group: "ceph.rook.io", Version: "v1", Resource: "cephclusters"},
		Namespace: "rook-ceph",
		Object:    name,
		Ready: func(obj *unstructured.Unstructured) (bool, string) {
			h, _, _ := unstructured.NestedString(obj.Object, "status", "ceph", "health")
			if h == "HEALTH_OK" {
				return true, ""
			}
			if h == "" {
				return false, "no status.ceph.health yet: is the rook-ceph-operator running?"
			}
			return false, "ceph health is " + h + ": see `ceph status` in the rook-ceph-tools pod"
		},
	}
}

func testGates(t *testing.T, cfg *rest.Config) {
	ctx := t.Context()
	if _, err := Apply(ctx, cfg, objects(t, kubetest.CephClusterYAML), WithPollInterval(50*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	clusters := dynamic.NewForConfigOrDie(cfg).Resource(cephGate("").GVR).Namespace("rook-ceph")
	setHealth := func(h string) {
		t.Helper()
		obj, err := clusters.Get(ctx, "rook-ceph", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		_ = unstructured.SetNestedField(obj.Object, h, "status", "ceph", "health")
		// As the operator does: through the status subresource.
		if _, err := clusters.UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("set health %s: %v", h, err)
		}
	}
	gates := []Gate{cephGate("rook-ceph"), cephGate("missing")}

	// No status yet, and an object that does not exist.
	err := WaitGates(ctx, cfg, gates, 10*time.Minute, nil, WithClock(newStepClock()), WithPollInterval(15*time.Second))
	t.Logf("timeout message:\n%v", err)
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	for _, want := range []string{
		"2 of 2 health gates not passed after 10m0s",
		"CephCluster rook-ceph/rook-ceph is HEALTH_OK: no status.ceph.health yet",
		"CephCluster rook-ceph/missing is HEALTH_OK: object not found: cephclusters rook-ceph/missing",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q", want)
		}
	}

	// HEALTH_ERR: times out naming the gate and the health.
	setHealth("HEALTH_ERR")
	err = WaitGates(ctx, cfg, gates[:1], 10*time.Minute, nil, WithClock(newStepClock()), WithPollInterval(15*time.Second))
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "CephCluster rook-ceph/rook-ceph is HEALTH_OK: ceph health is HEALTH_ERR") {
		t.Fatalf("with HEALTH_ERR: %v", err)
	}

	// HEALTH_ERR, then the "operator" reports HEALTH_OK while we wait: passes.
	var seen []GateStatus
	progress := func(s GateStatus) {
		seen = append(seen, s)
		if strings.Contains(s.Why, "HEALTH_ERR") {
			setHealth("HEALTH_OK")
		}
	}
	if err := WaitGates(ctx, cfg, gates[:1], time.Minute, progress, WithPollInterval(20*time.Millisecond)); err != nil {
		t.Fatalf("with HEALTH_OK: %v", err)
	}
	if len(seen) != 2 || seen[0].Passed || !seen[1].Passed {
		t.Errorf("progress: %+v, want not passed (HEALTH_ERR) then passed", seen)
	}

	// Bad gates are refused before any wait.
	if err := WaitGates(ctx, cfg, []Gate{{Name: "no ready func", GVR: gates[0].GVR, Object: "x"}}, time.Minute, nil); err == nil || !strings.Contains(err.Error(), "no ready func") {
		t.Errorf("gate without Ready: %v", err)
	}
}

func testNodes(t *testing.T, cfg *rest.Config) {
	ctx := t.Context()
	cs := kubernetes.NewForConfigOrDie(cfg)
	setNode := func(name string, ready corev1.ConditionStatus) {
		t.Helper()
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			n, err = cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
		}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: ready, Reason: "KubeletNotReady", Message: "container runtime network not ready", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
		if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setNode("n1", corev1.ConditionTrue)
	setNode("n2", corev1.ConditionFalse)
	names := []string{"n1", "n2", "n3"}
	err := WaitNodesReady(ctx, cs, names, 5*time.Minute, WithClock(newStepClock()), WithPollInterval(15*time.Second))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	for _, want := range []string{"2 of 3 nodes not Ready after 5m0s", "n2: Ready=False KubeletNotReady: container runtime network not ready", "n3: not registered"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "n1") {
		t.Errorf("error names the ready node n1: %v", err)
	}
	setNode("n2", corev1.ConditionTrue)
	setNode("n3", corev1.ConditionTrue)
	if err := WaitNodesReady(ctx, cs, names, time.Minute, WithClock(newStepClock())); err != nil {
		t.Fatalf("all ready: %v", err)
	}
}
