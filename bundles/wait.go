package bundles

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ErrTimeout is wrapped by the errors of the waits when their time is up.
var ErrTimeout = errors.New("timed out")

// WaitAPIServer polls the API server's /readyz until it answers 200 OK.
// Behind a Talos VIP, connection refused and timeouts are expected for
// minutes (the VIP answers only after etcd is bootstrapped); they are
// retried with backoff, from the poll interval up to the maximum one. When
// timeout passes, the error (wrapping ErrTimeout and the last error) names
// the URL, the time waited and the last answer.
func WaitAPIServer(ctx context.Context, cfg *rest.Config, timeout time.Duration, opts ...Option) error {
	o := newOptions(opts)
	if cfg == nil {
		return errors.New("wait for the API server: no rest config")
	}
	base, _, err := rest.DefaultServerUrlFor(cfg)
	if err != nil {
		return fmt.Errorf("wait for the API server: bad host %q: %w", cfg.Host, err)
	}
	url := base.JoinPath("readyz").String()
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return fmt.Errorf("wait for the API server %s: client: %w", url, err)
	}
	defer hc.CloseIdleConnections()

	t0 := o.clock.Now()
	deadline := t0.Add(timeout)
	delay := o.poll
	for attempt := 1; ; attempt++ {
		last := readyz(ctx, hc, url, min(10*time.Second, max(timeout, time.Second)))
		if last == nil {
			o.log.Info("API server ready", "url", url, "after", o.clock.Now().Sub(t0), "attempts", attempt)
			return nil
		}
		o.log.Info("API server not ready yet", "url", url, "attempt", attempt, "err", last)
		if !o.clock.Now().Before(deadline) {
			return fmt.Errorf("API server %s not ready after %v (%d attempts): %w; last error: %w", url, timeout, attempt, ErrTimeout, last)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the API server %s: %w; last error: %w", url, ctx.Err(), last)
		case <-o.clock.After(delay):
		}
		delay = min(2*delay, o.maxPoll)
	}
}

// readyz asks url once; nil means 200 OK.
func readyz(ctx context.Context, hc *http.Client, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	// /readyz lists the failing checks ("[-]etcd failed: ...").
	var failing []string
	for line := range strings.Lines(string(body)) {
		if strings.HasPrefix(line, "[-]") {
			failing = append(failing, strings.TrimSpace(line))
		}
	}
	if len(failing) == 0 {
		failing = append(failing, string(bytes.TrimSpace(body)))
	}
	return fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.Join(failing, "; "))
}

// WaitNodesReady polls the nodes until every named one is registered and
// Ready. On timeout the error (wrapping ErrTimeout) lists each node that is
// not, with why.
func WaitNodesReady(ctx context.Context, cs kubernetes.Interface, names []string, timeout time.Duration, opts ...Option) error {
	o := newOptions(opts)
	deadline := o.clock.Now().Add(timeout)
	lastReport := ""
	for {
		notReady, err := nodesNotReady(ctx, cs, names)
		if err != nil {
			notReady = []string{err.Error()}
		}
		if len(notReady) == 0 {
			o.log.Info("nodes ready", "nodes", len(names))
			return nil
		}
		if r := strings.Join(notReady, "; "); r != lastReport {
			o.log.Info("waiting for nodes", "ready", len(names)-len(notReady), "of", len(names), "not_ready", r)
			lastReport = r
		}
		if !o.clock.Now().Before(deadline) {
			return fmt.Errorf("%w: %d of %d nodes not Ready after %v:\n  %s", ErrTimeout, len(notReady), len(names), timeout, strings.Join(notReady, "\n  "))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for nodes: %w; not ready: %s", ctx.Err(), strings.Join(notReady, "; "))
		case <-o.clock.After(o.poll):
		}
	}
}

// nodesNotReady returns "name: why" for each named node that is not Ready.
func nodesNotReady(ctx context.Context, cs kubernetes.Interface, names []string) ([]string, error) {
	list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	byName := map[string]*corev1.Node{}
	for i := range list.Items {
		byName[list.Items[i].Name] = &list.Items[i]
	}
	var out []string
	for _, name := range names {
		n, ok := byName[name]
		if !ok {
			out = append(out, name+": not registered")
			continue
		}
		why := "no Ready condition yet"
		for _, c := range n.Status.Conditions {
			if c.Type != corev1.NodeReady {
				continue
			}
			if c.Status == corev1.ConditionTrue {
				why = ""
			} else {
				why = fmt.Sprintf("Ready=%s %s: %s", c.Status, c.Reason, c.Message)
			}
		}
		if why != "" {
			out = append(out, name+": "+why)
		}
	}
	return out, nil
}

// GateStatus is the state of one gate, as reported to the progress
// callback of WaitGates.
type GateStatus struct {
	Gate   string
	Passed bool
	Why    string // when not passed: what is not healthy, or "object not found: ..."
}

// WaitGates polls each gate's object until every gate has passed (a gate
// that passed once is not checked again). progress, when not nil, is called
// whenever a gate's state changes. On timeout the error (wrapping
// ErrTimeout) lists every gate not passed with its why.
func WaitGates(ctx context.Context, cfg *rest.Config, gates []Gate, timeout time.Duration, progress func(GateStatus), opts ...Option) error {
	o := newOptions(opts)
	for i, g := range gates {
		if g.Ready == nil || g.Object == "" || g.GVR.Resource == "" {
			return fmt.Errorf("wait for gates: gate %d (%q) needs a resource, an object name and a Ready func", i, g.Name)
		}
	}
	if cfg == nil {
		return errors.New("wait for gates: no rest config")
	}
	cfg = rest.CopyConfig(cfg)
	cfg.WarningHandler = warningLogger{o.log}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("wait for gates: client for %s: %w", cfg.Host, err)
	}

	state := make([]GateStatus, len(gates))
	for i, g := range gates {
		state[i] = GateStatus{Gate: g.Name, Why: "not checked yet"}
	}
	t0 := o.clock.Now()
	deadline := t0.Add(timeout)
	for {
		pending := 0
		for i, g := range gates {
			if state[i].Passed {
				continue
			}
			s := GateStatus{Gate: g.Name}
			s.Passed, s.Why = checkGate(ctx, dyn, g)
			if s != state[i] {
				state[i] = s
				o.log.Info("gate", "gate", g.Name, "passed", s.Passed, "why", s.Why)
				if progress != nil {
					progress(s)
				}
			}
			if !s.Passed {
				pending++
			}
		}
		if pending == 0 {
			o.log.Info("all gates passed", "gates", len(gates), "after", o.clock.Now().Sub(t0))
			return nil
		}
		if !o.clock.Now().Before(deadline) {
			return fmt.Errorf("%w: %d of %d health gates not passed after %v:\n  %s", ErrTimeout, pending, len(gates), timeout, describePending(state))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for gates: %w; not passed:\n  %s", ctx.Err(), describePending(state))
		case <-o.clock.After(o.poll):
		}
	}
}

func describePending(state []GateStatus) string {
	var lines []string
	for _, s := range state {
		if !s.Passed {
			lines = append(lines, s.Gate+": "+s.Why)
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n  ")
}

// checkGate reads a gate's object once and asks the gate about it.
func checkGate(ctx context.Context, dyn dynamic.Interface, g Gate) (bool, string) {
	var ri dynamic.ResourceInterface = dyn.Resource(g.GVR)
	ref := g.GVR.Resource + " " + g.Object
	if g.Namespace != "" {
		ri = dyn.Resource(g.GVR).Namespace(g.Namespace)
		ref = g.GVR.Resource + " " + g.Namespace + "/" + g.Object
	}
	obj, err := ri.Get(ctx, g.Object, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return false, "object not found: " + ref
	case err != nil:
		return false, fmt.Sprintf("read %s: %v", ref, err)
	}
	ok, why := g.Ready(obj)
	if !ok && why == "" {
		why = "not ready (" + ref + ")"
	}
	return ok, why
}
