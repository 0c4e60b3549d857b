package leader

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/internal/tcpproxy"
)

// Short durations keep the tests quick; the rules are client-go's.
const (
	testLease = 3 * time.Second
	testRenew = 2 * time.Second
	testRetry = 500 * time.Millisecond
	// takeoverBound is the longest a standby may need once the Lease is
	// free or expired: a lease duration from its last sight of a change,
	// plus one jittered retry (client-go: RetryPeriod × (1 + JitterFactor)),
	// plus slack for a loaded 2-core machine.
	takeoverBound = testLease + testRetry*22/10 + 2*time.Second
)

func TestCheckDurations(t *testing.T) {
	for _, tc := range []struct {
		lease, renew, retry time.Duration
		want                string // "" for valid
	}{
		{15 * time.Second, 10 * time.Second, 2 * time.Second, ""},
		{3 * time.Second, 2 * time.Second, 500 * time.Millisecond, ""},
		{10 * time.Second, 10 * time.Second, 2 * time.Second, "must be longer than the renew deadline"},
		{15 * time.Second, 2 * time.Second, 2 * time.Second, "1.2 × the retry period"},
		{2500 * time.Millisecond, 2 * time.Second, time.Second / 2, "whole seconds"},
		{0, 0, 0, "must be positive"},
	} {
		err := checkDurations(tc.lease, tc.renew, tc.retry)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v/%v/%v: %v", tc.lease, tc.renew, tc.retry, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v/%v/%v: %v, want an error with %q", tc.lease, tc.renew, tc.retry, err, tc.want)
		}
	}
}

func TestFenceOpen(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		renewed time.Time
		now     time.Duration // after t0
		want    bool
	}{
		{time.Time{}, 0, false}, // never renewed
		{t0, 0, true},
		{t0, testRenew - time.Nanosecond, true},
		{t0, testRenew, false},
		{t0, time.Hour, false},
	} {
		if got := fenceOpen(tc.renewed, t0.Add(tc.now), testRenew); got != tc.want {
			t.Errorf("renewed %v, now t0+%v: %v, want %v", tc.renewed, tc.now, got, tc.want)
		}
	}
}

func TestNewChecksConfig(t *testing.T) {
	cs := kubernetes.NewForConfigOrDie(&rest.Config{Host: "https://127.0.0.1:1"})
	if _, err := New(Config{Client: cs, Name: "x"}); err == nil || !strings.Contains(err.Error(), "namespace") {
		t.Errorf("no namespace: %v", err)
	}
	if _, err := New(Config{Client: cs, Namespace: "ns", Name: "x", LeaseDuration: time.Second, RenewDeadline: 2 * time.Second}); err == nil {
		t.Error("a lease shorter than the renew deadline was accepted")
	}
	e, err := New(Config{Client: cs, Namespace: "ns", Name: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if e.cfg.LeaseDuration != 15*time.Second || e.cfg.RenewDeadline != 10*time.Second || e.cfg.RetryPeriod != 2*time.Second {
		t.Errorf("defaults %v/%v/%v, want client-go's 15s/10s/2s", e.cfg.LeaseDuration, e.cfg.RenewDeadline, e.cfg.RetryPeriod)
	}
	if e.Leading() {
		t.Error("leading before Run")
	}
}

// timeline records when each elector's terms start and end.
type timeline struct {
	mu     sync.Mutex
	starts map[string][]time.Time
	stops  map[string][]time.Time
}

func (tl *timeline) add(m *map[string][]time.Time, id string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if *m == nil {
		*m = map[string][]time.Time{}
	}
	(*m)[id] = append((*m)[id], time.Now())
}

func (tl *timeline) first(m map[string][]time.Time, id string) (time.Time, bool) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if len(m[id]) == 0 {
		return time.Time{}, false
	}
	return m[id][0], true
}

type candidate struct {
	el     *Elector
	cancel context.CancelFunc
	done   chan error
}

// campaign starts an elector for id on cfg (its own client) and stops it at
// the end of the test.
func campaign(t *testing.T, cfg *rest.Config, id string, tl *timeline) *candidate {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	el, err := New(Config{Client: cs, Namespace: "rackboot", Name: "rackboot-dhcp", Identity: id,
		LeaseDuration: testLease, RenewDeadline: testRenew, RetryPeriod: testRetry,
		OnStart: func() { tl.add(&tl.starts, id) }, OnStop: func() { tl.add(&tl.stops, id) },
		Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("who", id)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &candidate{el: el, cancel: cancel, done: make(chan error, 1)}
	go func() { c.done <- el.Run(ctx) }()
	t.Cleanup(func() { c.stop(t) })
	return c
}

func (c *candidate) stop(t *testing.T) {
	c.cancel()
	select {
	case err := <-c.done:
		if err != nil {
			t.Errorf("%s: Run: %v", c.el.Identity(), err)
		}
		c.done <- nil // stop again is a no-op
	case <-time.After(2 * testRenew):
		t.Errorf("%s: Run did not return within %v of its context ending", c.el.Identity(), 2*testRenew)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// watchLeaders samples every elector's Leading every 2 ms until ctx ends
// and reports the first moment two of them led at once.
func watchLeaders(ctx context.Context, cs ...*candidate) <-chan string {
	out := make(chan string, 1)
	go func() {
		defer close(out)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			var ids []string
			for _, c := range cs {
				if c.el.Leading() {
					ids = append(ids, c.el.Identity())
				}
			}
			if len(ids) > 1 {
				out <- strings.Join(ids, " and ") + " led at once"
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return out
}

// waitLeader waits until exactly one of cs leads and returns it.
func waitLeader(t *testing.T, within time.Duration, cs ...*candidate) *candidate {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, c := range cs {
			if c.el.Leading() {
				return c
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no leader within %v", within)
	return nil
}

func createNamespace(t *testing.T, env *kubetest.Env) {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "rackboot"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestTwoElectors, against the real kube-apiserver: of two electors exactly
// one leads; when the leader stops (its context cancelled: ReleaseOnCancel
// frees the Lease) the other leads within a retry period, and never were
// both leading.
func TestTwoElectors(t *testing.T) {
	env := kubetest.Start(t)
	createNamespace(t, env)
	var tl timeline
	a := campaign(t, env.Config, "replica-a", &tl)
	b := campaign(t, env.Config, "replica-b", &tl)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	both := watchLeaders(ctx, a, b)

	first := waitLeader(t, takeoverBound, a, b)
	other := b
	if first == b {
		other = a
	}
	// Several renewals later still one leader, and the other knows who.
	time.Sleep(3 * testRenew)
	if !first.el.Leading() || other.el.Leading() {
		t.Fatalf("after %v: %s leading %v, %s leading %v", 3*testRenew, first.el.Identity(), first.el.Leading(), other.el.Identity(), other.el.Leading())
	}
	if got := other.el.Leader(); got != first.el.Identity() {
		t.Errorf("%s sees leader %q, want %q", other.el.Identity(), got, first.el.Identity())
	}

	t0 := time.Now()
	first.stop(t)
	if first.el.Leading() {
		t.Fatal("a stopped elector still leads")
	}
	waitLeader(t, takeoverBound, other)
	took := time.Since(t0)
	t.Logf("switch-over after the leader stopped (Lease released): %v (retry period %v)", took.Round(time.Millisecond), testRetry)
	if took > testRetry*22/10+time.Second {
		t.Errorf("switch-over after a release took %v, want about one retry period (%v)", took, testRetry)
	}
	cancel()
	if msg, ok := <-both; ok {
		t.Fatal(msg)
	}
	stopped, _ := tl.first(tl.stops, first.el.Identity())
	started, ok := tl.first(tl.starts, other.el.Identity())
	if !ok || !stopped.Before(started) {
		t.Errorf("%s stopped at %v, %s started at %v: want the stop first", first.el.Identity(), stopped, other.el.Identity(), started)
	}
}

// TestLeaderCutOff: the leader reaches the API server through a proxy that
// the test then breaks (the fault is real: the leader's requests go
// unanswered or are reset, the API server keeps serving the other
// elector). The leader's fence closes within the renew deadline of its last
// renewal, before the other takes over, which happens within the lease's
// bounds.
func TestLeaderCutOff(t *testing.T) {
	env := kubetest.Start(t)
	createNamespace(t, env)
	for _, fault := range []string{"blackhole", "reset"} {
		t.Run(fault, func(t *testing.T) {
			testCutOff(t, env, fault)
		})
	}
}

func testCutOff(t *testing.T, env *kubetest.Env, fault string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	proxy := tcpproxy.Start(ln, strings.TrimPrefix(env.URL, "https://"))
	defer proxy.Cut()
	viaProxy := rest.CopyConfig(env.Config)
	viaProxy.Host = "https://" + proxy.Addr().String()

	var tl timeline
	a := campaign(t, viaProxy, "cut-"+fault, &tl)
	waitLeader(t, takeoverBound+testLease, a) // the previous subtest's Lease may still run
	b := campaign(t, env.Config, "kept-"+fault, &tl)
	time.Sleep(2 * testRetry)
	if b.el.Leading() {
		t.Fatal("the second elector leads while the first holds the Lease")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	both := watchLeaders(ctx, a, b)

	t0 := time.Now()
	if fault == "blackhole" {
		proxy.Blackhole()
	} else {
		proxy.Cut()
	}
	waitLeader(t, takeoverBound, b)
	took := time.Since(t0)
	cancel()
	if msg, ok := <-both; ok {
		t.Fatal(msg)
	}
	stopped, ok := tl.first(tl.stops, a.el.Identity())
	if !ok {
		t.Fatalf("%s never stopped leading", a.el.Identity())
	}
	started, _ := tl.first(tl.starts, b.el.Identity())
	fenced := stopped.Sub(t0)
	t.Logf("%s: the cut-off leader stopped %v after the fault (renew deadline %v); the other led %v after it (lease %v, retry %v)",
		fault, fenced.Round(time.Millisecond), testRenew, took.Round(time.Millisecond), testLease, testRetry)
	if fenced > testRenew+time.Second/2 {
		t.Errorf("the cut-off leader stopped %v after the fault, want within the renew deadline %v", fenced, testRenew)
	}
	if !stopped.Before(started) {
		t.Errorf("the cut-off leader stopped at %v, after the other started at %v", stopped, started)
	}
	if took > takeoverBound {
		t.Errorf("takeover took %v, want within %v", took, takeoverBound)
	}
	if a.el.Leading() {
		t.Error("the cut-off elector leads again")
	}
}
