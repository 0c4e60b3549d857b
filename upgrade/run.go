package upgrade

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Default timing of Run.
const (
	DefaultPoll          = 5 * time.Second
	DefaultGateTimeout   = 10 * time.Minute
	DefaultRebootTimeout = 20 * time.Minute
	DefaultReadyTimeout  = 10 * time.Minute
)

// Config is what Run needs.
type Config struct {
	// StateDir holds upgrade.json, unless State keeps it elsewhere.
	StateDir string
	State    StateStore
	Plan     Plan
	Talos    Talos
	Kube     kubernetes.Interface
	// Gates must hold before each node is touched (etcd, Ceph, CockroachDB,
	// nodes Ready). They are polled up to GateTimeout.
	Gates []Gate
	// After must hold after each node before the next (Ceph HEALTH_OK).
	After []Gate
	// Resume goes on from upgrade.json; without it an unfinished record is
	// refused.
	Resume bool
	// Out receives one line per step and node (nil: discarded).
	Out   io.Writer
	Log   *slog.Logger
	Clock Clock
	// Poll is the interval of every wait (default DefaultPoll).
	Poll time.Duration
	// GateTimeout bounds how long the gates may take to hold before a node
	// (and after it: Ceph recovers after a reboot) before the run stops.
	GateTimeout time.Duration
	// Drain bounds each drain (its Timeout defaults to DefaultDrainTimeout;
	// Clock and Progress are set by Run).
	Drain DrainOptions
	// RebootTimeout bounds the wait for the node's Talos API to report the
	// target version; ReadyTimeout the wait for the Node to be Ready again.
	RebootTimeout time.Duration
	ReadyTimeout  time.Duration
}

// StepError says where a run stopped: at which node, in which step, on
// which gate (when a gate failed) and why. Its message speaks to the user.
type StepError struct {
	Node string
	Step string
	Gate string // empty when a step (not a gate) failed
	Why  string
	Err  error // the underlying error, when there is one
}

func (e *StepError) Error() string {
	where := fmt.Sprintf("the upgrade stopped at node %s (step %s)", e.Node, e.Step)
	if e.Gate != "" {
		return fmt.Sprintf("%s: gate %q does not hold: %s", where, e.Gate, e.Why)
	}
	return fmt.Sprintf("%s: %s", where, e.Why)
}

func (e *StepError) Unwrap() error { return e.Err }

// ErrUnfinished is wrapped by Run's error when upgrade.json records an
// unfinished upgrade and Resume is not set, or records another target.
var ErrUnfinished = errors.New("an unfinished upgrade is recorded")

// ErrNothingToResume is returned by Run with Resume when there is no
// upgrade.json.
var ErrNothingToResume = errors.New("no upgrade to resume")

type runner struct {
	cfg   Config
	st    *State
	log   *slog.Logger
	out   io.Writer
	clk   Clock
	index map[string]int
	// afterWrite sees every state written (tests).
	afterWrite func(*State)
}

// Run rolls the upgrade through the plan's nodes, one at a time, and
// returns the final state. A failed gate or step returns a *StepError,
// recorded in upgrade.json; Run with Resume goes on from there.
func Run(ctx context.Context, cfg Config) (*State, error) {
	return run(ctx, cfg, nil)
}

func run(ctx context.Context, cfg Config, afterWrite func(*State)) (*State, error) {
	if (cfg.StateDir == "" && cfg.State == nil) || cfg.Talos == nil || cfg.Kube == nil {
		return nil, errors.New("upgrade: the config needs a state directory, a Talos API and a Kubernetes client")
	}
	if cfg.State == nil {
		cfg.State = DirStore(cfg.StateDir)
	}
	r := &runner{cfg: cfg, log: cfg.Log, out: cfg.Out, clk: cfg.Clock, afterWrite: afterWrite}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.out == nil {
		r.out = io.Discard
	}
	if r.clk == nil {
		r.clk = realClock{}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&r.cfg.Poll, DefaultPoll)
	def(&r.cfg.GateTimeout, DefaultGateTimeout)
	def(&r.cfg.RebootTimeout, DefaultRebootTimeout)
	def(&r.cfg.ReadyTimeout, DefaultReadyTimeout)

	st, err := r.load()
	if err != nil {
		return nil, err
	}
	r.st = st
	r.index = map[string]int{}
	for i, n := range cfg.Plan.Nodes {
		r.index[n.Name] = i
	}
	total := len(st.Nodes)
	for i := range st.Nodes {
		ns := &st.Nodes[i]
		if ns.Phase == Done {
			continue
		}
		m := cfg.Plan.Nodes[r.index[ns.Name]].Machine
		if err := r.node(ctx, fmt.Sprintf("[%d/%d] %s", i+1, total, ns.Name), m, ns); err != nil {
			return st, err
		}
	}
	st.Failed = nil
	if err := r.write(); err != nil {
		return st, err
	}
	fmt.Fprintf(r.out, "upgrade to %s finished: %d node(s)\n", st.Target, total)
	return st, nil
}

// load reads upgrade.json and reconciles it with the plan.
func (r *runner) load() (*State, error) {
	target := r.cfg.Plan.Target.String()
	old, err := LoadState(r.cfg.State)
	if err != nil {
		return nil, err
	}
	unfinished := old != nil && !old.Finished()
	switch {
	case r.cfg.Resume && old == nil:
		return nil, fmt.Errorf("%w: %s does not exist; start one with `rackboot upgrade --talos %s`", ErrNothingToResume, r.cfg.State.Where(), target)
	case unfinished && old.Target != target:
		return nil, fmt.Errorf("%w: the upgrade to %s is not finished (%s); finish it first with `rackboot upgrade --talos %s --resume`, or remove %s to give it up",
			ErrUnfinished, old.Target, where(old), old.Target, r.cfg.State.Where())
	case unfinished && !r.cfg.Resume:
		return nil, fmt.Errorf("%w: the upgrade to %s is not finished (%s); go on with `rackboot upgrade --talos %s --resume`",
			ErrUnfinished, old.Target, where(old), old.Target)
	case unfinished:
		for _, ns := range old.Nodes {
			if _, ok := r.cfg.Plan.node(ns.Name); !ok {
				return nil, fmt.Errorf("%w: %s names node %s, which is no longer in the rack; remove it to plan again", ErrUnfinished, r.cfg.State.Where(), ns.Name)
			}
		}
		for _, n := range r.cfg.Plan.Nodes {
			if old.node(n.Name) == nil {
				old.Nodes = append(old.Nodes, NodeState{Name: n.Name, Installer: n.Installer, Phase: Pending})
			}
		}
		fmt.Fprintf(r.out, "resuming the upgrade to %s (%s)\n", target, where(old))
		old.Failed = nil
		return old, nil
	case r.cfg.Resume && old.Target == target:
		fmt.Fprintf(r.out, "the upgrade to %s is finished already\n", target)
	}
	now := r.clk.Now().UTC()
	st := &State{Target: target, Started: now}
	cps := 0
	for _, n := range r.cfg.Plan.Nodes {
		ns := NodeState{Name: n.Name, Installer: n.Installer, From: n.Current, Phase: Pending}
		if n.Skip {
			ns.Phase, ns.Skipped = Done, true
		}
		if n.ControlPlane {
			cps++
		}
		st.Nodes = append(st.Nodes, ns)
	}
	fmt.Fprintf(r.out, "upgrade to %s: %d node(s), %d control plane(s) first\n", target, len(st.Nodes), cps)
	return st, nil
}

// where says where an unfinished state stands.
func where(s *State) string {
	if s.Failed != nil {
		f := s.Failed
		if f.Gate != "" {
			return fmt.Sprintf("stopped at %s, step %s: %s: %s", f.Node, f.Step, f.Gate, f.Why)
		}
		return fmt.Sprintf("stopped at %s, step %s: %s", f.Node, f.Step, f.Why)
	}
	for _, n := range s.Nodes {
		if n.Phase != Done {
			w := fmt.Sprintf("node %s is %s", n.Name, n.Phase)
			if n.Step != "" {
				w += ", step " + n.Step + " started"
			}
			return w
		}
	}
	return "every node done"
}

func (p Plan) node(name string) (Node, bool) {
	for _, n := range p.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return Node{}, false
}

func (r *runner) write() error {
	r.st.Updated = r.clk.Now().UTC()
	if err := saveState(r.cfg.State, r.st); err != nil {
		return err
	}
	if r.afterWrite != nil {
		r.afterWrite(r.st)
	}
	return nil
}

// start records that step begins on the node.
func (r *runner) start(ns *NodeState, step string) error {
	ns.Step = step
	return r.write()
}

// finish records that the node reached phase.
func (r *runner) finish(ns *NodeState, p Phase) error {
	ns.Phase, ns.Step = p, ""
	return r.write()
}

// fail records where the run stopped and returns the error.
func (r *runner) fail(ns *NodeState, e *StepError) error {
	r.st.Failed = &Failure{Node: ns.Name, Step: e.Step, Gate: e.Gate, Why: e.Why, Time: r.clk.Now().UTC()}
	if err := r.write(); err != nil {
		return errors.Join(e, err)
	}
	return e
}

// node takes one node from its recorded phase to done.
func (r *runner) node(ctx context.Context, label string, m Machine, ns *NodeState) error {
	target := r.cfg.Plan.Target
	say := func(format string, args ...any) { fmt.Fprintf(r.out, label+": "+format+"\n", args...) }
	stepErr := func(step string, err error) error {
		why := err.Error()
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			why = "interrupted (" + why + "); run `rackboot upgrade --resume` to go on"
		}
		return r.fail(ns, &StepError{Node: ns.Name, Step: step, Why: why, Err: err})
	}
	for {
		switch ns.Phase {
		case Done:
			return nil
		case Pending:
			if err := r.start(ns, StepGates); err != nil {
				return err
			}
			addr, err := r.address(ctx, m)
			if err != nil {
				return stepErr(StepGates, err)
			}
			if v, err := r.cfg.Talos.Version(ctx, addr); err == nil {
				if ns.From == "" {
					ns.From = v
				}
				if sameVersion(v, target) {
					ns.Skipped = true
					say("runs %s already: nothing to do", v)
					if err := r.finish(ns, Done); err != nil {
						return err
					}
					continue
				}
			}
			say("checking the gates before the node")
			failed, err := waitGates(ctx, r.cfg.Gates, r.cfg.GateTimeout, r.cfg.Poll, r.clk)
			if failed != nil {
				e := &StepError{Node: ns.Name, Step: StepGates, Gate: failed.Gate, Why: failed.Why, Err: err}
				say("gate %q does not hold: %s", failed.Gate, failed.Why)
				return r.fail(ns, e)
			}
			if err := r.start(ns, StepCordon); err != nil {
				return err
			}
			if err := Cordon(ctx, r.cfg.Kube, ns.Name, true); err != nil {
				return stepErr(StepCordon, err)
			}
			say("cordoned")
			if err := r.finish(ns, Cordoned); err != nil {
				return err
			}
		case Cordoned:
			if err := r.start(ns, StepDrain); err != nil {
				return err
			}
			o := r.cfg.Drain
			o.Clock = r.clk
			o.Progress = func(msg string) { r.log.Info(msg, "node", ns.Name) }
			res, err := Drain(ctx, r.cfg.Kube, ns.Name, o)
			if err != nil {
				return stepErr(StepDrain, err)
			}
			msg := fmt.Sprintf("drained: %d pod(s) evicted", len(res.Evicted))
			if res.Refused > 0 {
				msg += fmt.Sprintf(" (%d eviction(s) waited for a disruption budget)", res.Refused)
			}
			if len(res.Skipped) > 0 {
				msg += ", left alone: " + strings.Join(res.Skipped, ", ")
			}
			say("%s", msg)
			if err := r.finish(ns, Drained); err != nil {
				return err
			}
		case Drained:
			if err := r.start(ns, StepUpgrade); err != nil {
				return err
			}
			addr, err := r.address(ctx, m)
			if err != nil {
				return stepErr(StepUpgrade, err)
			}
			// A run that stopped after the request shows the target
			// already: never request it twice.
			if v, err := r.cfg.Talos.Version(ctx, addr); err == nil && sameVersion(v, target) {
				say("runs %s already: no upgrade request", v)
			} else {
				if ns.Installer == "" {
					ns.Installer = m.Installer
				}
				say("upgrade requested: %s", ns.Installer)
				if err := r.cfg.Talos.Upgrade(ctx, addr, ns.Installer); err != nil {
					return stepErr(StepUpgrade, err)
				}
				t := r.clk.Now().UTC()
				ns.Requested = &t
			}
			if err := r.finish(ns, Upgrading); err != nil {
				return err
			}
		case Upgrading:
			if err := r.start(ns, StepWait); err != nil {
				return err
			}
			if err := r.waitVersion(ctx, m, target); err != nil {
				return stepErr(StepWait, err)
			}
			if err := r.waitReady(ctx, ns.Name, target); err != nil {
				return stepErr(StepWait, err)
			}
			say("runs %s and is Ready", target)
			if err := r.finish(ns, Upgraded); err != nil {
				return err
			}
		case Upgraded:
			if err := r.start(ns, StepUncordon); err != nil {
				return err
			}
			if err := Cordon(ctx, r.cfg.Kube, ns.Name, false); err != nil {
				return stepErr(StepUncordon, err)
			}
			say("uncordoned")
			if err := r.finish(ns, Uncordoned); err != nil {
				return err
			}
		case Uncordoned:
			if err := r.start(ns, StepSettle); err != nil {
				return err
			}
			failed, err := waitGates(ctx, r.cfg.After, r.cfg.GateTimeout, r.cfg.Poll, r.clk)
			if failed != nil {
				say("gate %q does not hold after the node: %s", failed.Gate, failed.Why)
				return r.fail(ns, &StepError{Node: ns.Name, Step: StepSettle, Gate: failed.Gate, Why: failed.Why, Err: err})
			}
			say("done")
			if err := r.finish(ns, Done); err != nil {
				return err
			}
		default:
			return fmt.Errorf("node %s: unknown phase %q in %s", ns.Name, ns.Phase, StateFile)
		}
	}
}

func sameVersion(tag string, target Version) bool {
	v, err := ParseVersion(tag)
	return err == nil && v.Compare(target) == 0
}

// address is where the node's Talos API answers: its static address, else
// the Node's InternalIP.
func (r *runner) address(ctx context.Context, m Machine) (string, error) {
	if m.Address != "" {
		return m.Address, nil
	}
	return NodeAddress(ctx, r.cfg.Kube, m.Name)
}

// NodeAddress is the Node's first InternalIP.
func NodeAddress(ctx context.Context, cs kubernetes.Interface, name string) (string, error) {
	n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("find the address of node %s: %w", name, err)
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP && a.Address != "" {
			return a.Address, nil
		}
	}
	return "", fmt.Errorf("node %s has no InternalIP address; give it a static address in the rack file", name)
}

// waitVersion waits until the node's Talos API reports target (it is down
// while it reboots: errors are retried).
func (r *runner) waitVersion(ctx context.Context, m Machine, target Version) error {
	deadline := r.clk.Now().Add(r.cfg.RebootTimeout)
	last := "no answer yet"
	for {
		addr, err := r.address(ctx, m)
		if err == nil {
			var v string
			if v, err = r.cfg.Talos.Version(ctx, addr); err == nil {
				if sameVersion(v, target) {
					return nil
				}
				last = "it still runs " + v
			}
		}
		if err != nil {
			last = err.Error()
		}
		if !r.clk.Now().Before(deadline) {
			return fmt.Errorf("node %s does not run %s after %v (last: %s); look at its console or `talosctl -n %s dmesg`", m.Name, target, r.cfg.RebootTimeout, last, m.Name)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s to run %s: %w", m.Name, target, context.Cause(ctx))
		case <-r.clk.After(r.cfg.Poll):
		}
	}
}

// waitReady waits until the Node is Ready and, when its kubelet reports a
// Talos OS image, that image names the target (the kubelet of the new boot
// registered, not a stale Ready).
func (r *runner) waitReady(ctx context.Context, name string, target Version) error {
	deadline := r.clk.Now().Add(r.cfg.ReadyTimeout)
	for {
		why := ""
		n, err := r.cfg.Kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			why = err.Error()
		} else if ok, w := nodeReady(n); !ok {
			why = w
		} else if img := n.Status.NodeInfo.OSImage; strings.HasPrefix(img, "Talos") && !strings.Contains(img, target.String()) {
			why = "its kubelet still reports " + img
		}
		if why == "" {
			return nil
		}
		if !r.clk.Now().Before(deadline) {
			return fmt.Errorf("node %s is not Ready with %s after %v: %s; look at `kubectl describe node %s`", name, target, r.cfg.ReadyTimeout, why, name)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for node %s to be Ready: %w", name, context.Cause(ctx))
		case <-r.clk.After(r.cfg.Poll):
		}
	}
}
