package bringup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/inventory"
)

// Node is one machine of the rack, as the driver sees it.
type Node struct {
	// Name is the machine's name in the rack file (and its Kubernetes node
	// name).
	Name         string
	ControlPlane bool
	// IP is the machine's static address; the zero Addr for a DHCP machine.
	IP netip.Addr
}

// FirstControlPlane is the node etcd is bootstrapped on: the first control
// plane in rack file order. It must have a static address (the driver talks
// to it before anything else is up), and that address must not be the VIP
// (the VIP comes up only after etcd is bootstrapped).
func FirstControlPlane(nodes []Node, vip netip.Addr) (Node, error) {
	for _, n := range nodes {
		if !n.ControlPlane {
			continue
		}
		switch {
		case !n.IP.IsValid():
			return Node{}, fmt.Errorf("the first control plane %s has no static address: etcd is bootstrapped through it before the VIP exists, so give it one (address: 192.168.1.11/24) or move a control plane with a static address first", n.Name)
		case n.IP == vip:
			return Node{}, fmt.Errorf("the first control plane %s has the VIP %s as its address: the VIP is shared by the control planes and comes up only after etcd is bootstrapped; give %s its own address", n.Name, vip, n.Name)
		}
		return n, nil
	}
	return Node{}, errors.New("the rack has no control plane")
}

// Stages is what the driver needs from the machine inventory.
type Stages interface {
	// Stage is the machine's last stage ("" if it was never seen), its
	// detail, and whether Talos is installed on its disk.
	Stage(name string) (stage, detail string, installed bool)
	// Subscribe returns a channel that receives a value after changes, and
	// a function to stop.
	Subscribe() (<-chan struct{}, func())
}

// Bootstrap is what the driver needs from a Bootstrapper.
type Bootstrap interface {
	// Done is the bootstrap record, nil if etcd was not bootstrapped yet.
	Done() (*Record, error)
	// Bootstrap bootstraps etcd once (see Bootstrapper.Bootstrap).
	Bootstrap(ctx context.Context) (BootstrapResult, error)
}

// Cluster is what the driver needs from the Kubernetes side (the bundles
// engine, on the admin kubeconfig for https://<vip>:6443). Each method waits
// until its condition holds or ctx ends; on timeout its error says what is
// not healthy yet.
type Cluster interface {
	// WaitAPIServer waits until /readyz on the VIP answers ok.
	WaitAPIServer(ctx context.Context) error
	// WaitNodesReady waits until the named nodes are Ready.
	WaitNodesReady(ctx context.Context, names []string) error
	// Apply applies one bundle (server-side apply, idempotent).
	Apply(ctx context.Context, b bundles.Bundle) error
	// WaitGates waits on one bundle's health gates.
	WaitGates(ctx context.Context, b bundles.Bundle) error
}

// CephDisk is one Ceph candidate of a machine (a disk its cephDisks
// matches, never the install disk) as Talos's API shows it.
type CephDisk struct {
	// Name is the kernel name (sda), Serial the disk's serial, Size its
	// size as shown to the user ("8.0 TB").
	Name, Serial, Size string
	// Clean is true when Talos sees nothing on the disk: no partition, no
	// filesystem, no Ceph label at offset 0. Label copies further in are
	// invisible to Talos (docs/DESIGN.md, "Reading and wiping disks
	// through Talos").
	Clean bool
	// What is on it, in words.
	What string
	// Wipe is the command that wipes it (rackboot disks wipe NAME
	// --serial S), or why there is none.
	Wipe string
	// Rook, when not empty, says which Rook OSD uses the disk: its content
	// is Ceph's own, not a leftover, and the check lets it be.
	Rook string
}

// CephDisks is what the driver needs to check the Ceph disks before Rook
// is applied.
type CephDisks interface {
	// CephDisks reads the machine's Ceph candidates through its Talos API;
	// an error when they cannot be read (it says why).
	CephDisks(ctx context.Context, machine string) ([]CephDisk, error)
}

// SQL is how applications reach the cluster's database, printed at the end.
type SQL struct {
	// ConnectionString is the SQL URL for the root client.
	ConnectionString string
	// CertsDir holds the CA and the client certificate and key.
	CertsDir string
}

// Plan is what Run brings up.
type Plan struct {
	Cluster string
	VIP     netip.Addr
	// Nodes are the rack's machines in file order.
	Nodes   []Node
	Bundles []bundles.Bundle
	// SkipBundles stops after the nodes are Ready.
	SkipBundles bool
	// CephNodes are the machines that carry Ceph disks (the rook bundle's
	// CephCluster nodes). Before the bundle named bundles.RookBundle is
	// applied, every Ceph candidate of theirs must be clean.
	CephNodes []string
	// SkipDiskCheck applies Rook without reading the Ceph disks.
	SkipDiskCheck bool
	// StepTimeout bounds each step (default DefaultStepTimeout).
	StepTimeout time.Duration
	// TalosconfigPath and KubeconfigPath are shown in hints and at the end.
	TalosconfigPath string
	KubeconfigPath  string
	// SQL is printed at the end when the bundles were applied; optional.
	SQL *SQL
}

// DefaultStepTimeout bounds each step when the plan gives none.
const DefaultStepTimeout = 20 * time.Minute

// Deps are the parts Run drives.
type Deps struct {
	// Stages is the inventory; nil skips waiting for the first control
	// plane to report installed (machines installed from USB send no
	// events to this rackboot).
	Stages    Stages
	Bootstrap Bootstrap
	Cluster   Cluster
	// Disks reads the Ceph disks; needed when a rook bundle is applied
	// without SkipDiskCheck.
	Disks CephDisks
	// Out receives the progress lines (default: discard).
	Out io.Writer
	Log *slog.Logger
	// Now is the clock for the durations shown (default time.Now).
	Now func() time.Time
}

// StepError is a step that failed; cmd/ shows it as is.
type StepError struct {
	Step, Steps int
	Title       string
	// Timeout is true when the step's time ran out, Interrupted when the
	// whole run was cancelled.
	Timeout, Interrupted bool
	After                time.Duration
	Err                  error
	// Hint says what to look at.
	Hint string
}

// Error is the step, what went wrong, what to look at, and how to go on.
func (e *StepError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%d/%d] %s: ", e.Step, e.Steps, e.Title)
	switch {
	case e.Interrupted:
		fmt.Fprintf(&b, "interrupted after %s: %v", e.After.Round(time.Second), e.Err)
	case e.Timeout:
		fmt.Fprintf(&b, "not done after %s: %v", e.After.Round(time.Second), e.Err)
	default:
		fmt.Fprintf(&b, "%v", e.Err)
	}
	if e.Hint != "" {
		fmt.Fprintf(&b, "\n  look at: %s", e.Hint)
	}
	b.WriteString("\n  every step is idempotent: run `rackboot up` again to continue where it stopped")
	return b.String()
}

// Unwrap returns the step's error.
func (e *StepError) Unwrap() error { return e.Err }

// step is one stage of the bring-up.
type step struct {
	title string
	// skip, when not empty, says why the step is not run.
	skip string
	run  func(ctx context.Context, out io.Writer) error
	hint string
}

// Run brings the cluster up, one step after the other, each bounded by the
// plan's step timeout and printed as progress: wait for the first control
// plane, bootstrap etcd on it once, wait for the Kubernetes API on the VIP,
// wait for the nodes, apply the bundles, wait on their gates. Nothing is
// applied unless everything before it succeeded. Every step is idempotent,
// so running it again after a failure continues where it stopped.
func Run(ctx context.Context, plan Plan, deps Deps) error {
	if deps.Bootstrap == nil || deps.Cluster == nil {
		return errors.New("bring-up: no bootstrapper or cluster")
	}
	out := deps.Out
	if out == nil {
		out = io.Discard
	}
	log := deps.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := deps.Now
	if now == nil {
		now = time.Now
	}
	timeout := plan.StepTimeout
	if timeout <= 0 {
		timeout = DefaultStepTimeout
	}
	first, err := FirstControlPlane(plan.Nodes, plan.VIP)
	if err != nil {
		return fmt.Errorf("bring-up: %w", err)
	}
	rec, err := deps.Bootstrap.Done()
	if err != nil {
		return fmt.Errorf("bring-up: %w", err)
	}
	// Hints name the client configs once, then show short commands.
	talosctl, kubectl := "talosctl", "kubectl"
	talosEnv, kubeEnv := "", ""
	if plan.TalosconfigPath != "" {
		talosEnv = "with TALOSCONFIG=" + plan.TalosconfigPath + ": "
	}
	if plan.KubeconfigPath != "" {
		kubeEnv = "with KUBECONFIG=" + plan.KubeconfigPath + ": "
	}
	names := make([]string, len(plan.Nodes))
	for i, n := range plan.Nodes {
		names[i] = n.Name
	}
	vip := net.JoinHostPort(plan.VIP.String(), "6443")
	firstIP := first.IP.String()

	waitSkip := ""
	switch {
	case rec != nil:
		waitSkip = fmt.Sprintf("etcd already bootstrapped on %s at %s", rec.Node, rec.Time.Format(time.RFC3339))
	case deps.Stages == nil:
		waitSkip = "no inventory to watch"
	}

	steps := []step{
		{
			title: fmt.Sprintf("waiting for the first control plane %s (%s) to be installed", first.Name, firstIP),
			skip:  waitSkip,
			run: func(ctx context.Context, _ io.Writer) error {
				return waitInstalled(ctx, deps.Stages, first.Name)
			},
			hint: fmt.Sprintf("`rackboot status` and %s's console: it must netboot, install Talos and report it to the events sink", first.Name),
		},
		{
			title: fmt.Sprintf("bootstrapping etcd on %s (%s)", first.Name, firstIP),
			run: func(ctx context.Context, out io.Writer) error {
				res, err := deps.Bootstrap.Bootstrap(ctx)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "      %s on %s\n", res.Outcome, res.Record.Node)
				return nil
			},
			hint: fmt.Sprintf("%s`%s -n %s service etcd`, `%s -n %s dmesg`", talosEnv, talosctl, firstIP, talosctl, firstIP),
		},
		{
			title: fmt.Sprintf("waiting for the VIP %s", vip),
			run:   func(ctx context.Context, _ io.Writer) error { return deps.Cluster.WaitAPIServer(ctx) },
			hint: fmt.Sprintf("a control plane takes the VIP once etcd is healthy; %s`%s -n %s service etcd`, `%s -n %s service kube-apiserver`, `%s -n %s get addresses`; make sure nothing else on the network uses %s",
				talosEnv, talosctl, firstIP, talosctl, firstIP, talosctl, firstIP, plan.VIP),
		},
		{
			title: fmt.Sprintf("waiting for %d node(s) to be Ready", len(names)),
			run:   func(ctx context.Context, _ io.Writer) error { return deps.Cluster.WaitNodesReady(ctx, names) },
			hint:  fmt.Sprintf("%s`%s get nodes -o wide`; for a NotReady node (%s) `%s -n <node> service kubelet`; a missing node has not joined: `rackboot status`", kubeEnv, kubectl, strings.TrimSuffix(talosEnv, ": "), talosctl),
		},
	}
	// Each bundle is applied, then its gates awaited, before the next one:
	// CockroachDB's volumes need Ceph healthy.
	if plan.SkipBundles {
		steps = append(steps, step{title: "applying " + bundleNames(plan.Bundles), skip: "--skip-bundles"})
		plan.Bundles = nil
	}
	for _, b := range plan.Bundles {
		if b.Name == bundles.RookBundle {
			s := step{
				title: fmt.Sprintf("checking the Ceph disks of %d machine(s) before Rook", len(plan.CephNodes)),
				run: func(ctx context.Context, out io.Writer) error {
					return checkCephDisks(ctx, deps.Disks, plan.CephNodes, out)
				},
				hint: "`rackboot disks` shows every machine's disks; `rackboot disks wipe --help` says what each wipe method leaves",
			}
			switch {
			case plan.SkipDiskCheck:
				s.skip = "--skip-disk-check"
			case deps.Disks == nil:
				return errors.New("bring-up: no disk reader for the Ceph disk check")
			}
			steps = append(steps, s)
		}
		steps = append(steps,
			step{
				title: fmt.Sprintf("applying bundle %s (%d objects)", b.Name, len(b.Objects)),
				run:   func(ctx context.Context, _ io.Writer) error { return deps.Cluster.Apply(ctx, b) },
				hint:  "the objects the API server refused are named above; `rackboot bundles render` shows what is applied",
			},
			step{
				title: fmt.Sprintf("waiting for %s's %d health gate(s)", b.Name, len(b.Gates)),
				run:   func(ctx context.Context, _ io.Writer) error { return deps.Cluster.WaitGates(ctx, b) },
				hint:  kubeEnv + gateHint(kubectl, b),
			})
	}

	for i, s := range steps {
		n := i + 1
		if s.skip != "" {
			fmt.Fprintf(out, "[%d/%d] %s: skipped (%s)\n", n, len(steps), s.title, s.skip)
			continue
		}
		fmt.Fprintf(out, "[%d/%d] %s ...\n", n, len(steps), s.title)
		log.Debug("bring-up step", "step", n, "title", s.title, "timeout", timeout)
		start := now()
		sctx, cancel := context.WithTimeout(ctx, timeout)
		err := s.run(sctx, out)
		timedOut := ctx.Err() == nil && (sctx.Err() != nil || errors.Is(err, bundles.ErrTimeout))
		cancel()
		took := now().Sub(start)
		if err != nil {
			return &StepError{
				Step: n, Steps: len(steps), Title: s.title,
				Timeout: timedOut, Interrupted: ctx.Err() != nil,
				After: took, Err: err, Hint: s.hint,
			}
		}
		fmt.Fprintf(out, "[%d/%d] done in %s\n", n, len(steps), took.Round(time.Second))
	}

	fmt.Fprintf(out, "\ncluster %s is up\n", plan.Cluster)
	fmt.Fprintf(out, "  Kubernetes API  https://%s", vip)
	if plan.KubeconfigPath != "" {
		fmt.Fprintf(out, "  (kubeconfig: %s)", plan.KubeconfigPath)
	}
	fmt.Fprintln(out)
	fmt.Fprintf(out, "  Talos API       %s", firstIP)
	if plan.TalosconfigPath != "" {
		fmt.Fprintf(out, "  (talosconfig: %s)", plan.TalosconfigPath)
	}
	fmt.Fprintln(out)
	if !plan.SkipBundles && plan.SQL != nil {
		fmt.Fprintf(out, "  SQL             %s\n", plan.SQL.ConnectionString)
		fmt.Fprintf(out, "  client certs    %s\n", plan.SQL.CertsDir)
	}
	return nil
}

// DiskCheckError is the Ceph disk check's refusal: candidates that are not
// clean, and machines whose disks could not be read.
type DiskCheckError struct {
	// NotClean are the disks Rook would refuse, by machine.
	NotClean []MachineDisk
	// Unreadable maps a machine to why its disks could not be read.
	Unreadable map[string]error
	// Order is the machines in plan order (for the message).
	Order []string
}

// MachineDisk is one disk of one machine.
type MachineDisk struct {
	Machine string
	Disk    CephDisk
}

// Error is one line per disk and per unreadable machine, then what to do.
func (e *DiskCheckError) Error() string {
	var b strings.Builder
	switch {
	case len(e.NotClean) > 0 && len(e.Unreadable) > 0:
		fmt.Fprintf(&b, "%d Ceph disk(s) not clean (Rook would refuse them) and %d machine(s) whose disks could not be read:", len(e.NotClean), len(e.Unreadable))
	case len(e.NotClean) > 0:
		fmt.Fprintf(&b, "%d Ceph disk(s) not clean: Rook would refuse them:", len(e.NotClean))
	default:
		fmt.Fprintf(&b, "the disks of %d machine(s) could not be read:", len(e.Unreadable))
	}
	for _, md := range e.NotClean {
		d := md.Disk
		serial := d.Serial
		if serial == "" {
			serial = "none"
		}
		fmt.Fprintf(&b, "\n  %s: %s (serial %s, %s) holds %s; wipe it: %s", md.Machine, d.Name, serial, d.Size, d.What, d.Wipe)
	}
	for _, m := range e.Order {
		if err, ok := e.Unreadable[m]; ok {
			fmt.Fprintf(&b, "\n  %s: cannot read its disks through Talos's API: %v", m, err)
		}
	}
	if len(e.NotClean) > 0 {
		b.WriteString("\n  after the wipe, run `rackboot up` again: etcd's bootstrap is recorded and the bundles apply idempotently, so it picks up at this check")
	}
	b.WriteString("\n  to apply Rook anyway (it leaves out the disks it refuses), run `rackboot up --skip-disk-check`")
	return b.String()
}

// checkCephDisks reads every Ceph node's candidates and fails with a
// *DiskCheckError when one is not clean or a machine cannot be read. A
// disk a Rook OSD uses is Ceph's own and passes. Each machine's verdict is
// printed.
func checkCephDisks(ctx context.Context, dr CephDisks, nodes []string, out io.Writer) error {
	e := &DiskCheckError{Unreadable: map[string]error{}, Order: nodes}
	for _, m := range nodes {
		ds, err := dr.CephDisks(ctx, m)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%s: %w", m, err)
			}
			e.Unreadable[m] = err
			fmt.Fprintf(out, "      %s: cannot read its disks\n", m)
			continue
		}
		if len(ds) == 0 {
			fmt.Fprintf(out, "      %s: no disk matches its cephDisks: it carries no OSD\n", m)
			continue
		}
		var words []string
		for _, d := range ds {
			switch {
			case d.Rook != "":
				words = append(words, d.Name+" Rook's ("+d.Rook+")")
			case d.Clean:
				words = append(words, d.Name+" clean")
			default:
				words = append(words, d.Name+" NOT CLEAN")
				e.NotClean = append(e.NotClean, MachineDisk{Machine: m, Disk: d})
			}
		}
		fmt.Fprintf(out, "      %s: %s\n", m, strings.Join(words, ", "))
	}
	if len(e.NotClean) > 0 || len(e.Unreadable) > 0 {
		return e
	}
	fmt.Fprintln(out, "      clean as Talos sees them: Ceph label copies at 1, 10, 100, 1000 GiB are invisible to Talos (Rook would still refuse such a disk)")
	return nil
}

// waitInstalled waits until the inventory says Talos is installed on name.
func waitInstalled(ctx context.Context, st Stages, name string) error {
	ch, stop := st.Subscribe()
	defer stop()
	for {
		stage, detail, installed := st.Stage(name)
		if installed {
			return nil
		}
		if stage == inventory.StageInstallFailed || stage == inventory.StageConfigError {
			return fmt.Errorf("%s: %s: %s", name, stage, detail)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if stage == "" {
				return fmt.Errorf("%s was never seen (no DHCP or boot request from it): %w", name, context.Cause(ctx))
			}
			return fmt.Errorf("%s is at stage %q, not installed yet: %w", name, stage, context.Cause(ctx))
		}
	}
}

// gateHint says where to look when a bundle's gates do not pass: the
// namespaces of its gated objects.
func gateHint(kubectl string, b bundles.Bundle) string {
	var nss []string
	for _, g := range b.Gates {
		if g.Namespace != "" && !slices.Contains(nss, g.Namespace) {
			nss = append(nss, g.Namespace)
		}
	}
	if len(nss) == 0 {
		return fmt.Sprintf("`%s get pods -A`", kubectl)
	}
	var parts []string
	for _, ns := range nss {
		parts = append(parts, fmt.Sprintf("`%s -n %s get pods,pvc`, `%s -n %s get events --sort-by=.lastTimestamp`", kubectl, ns, kubectl, ns))
	}
	return strings.Join(parts, "; ")
}

// bundleNames is "the bundles rook-ceph, cockroachdb".
func bundleNames(bs []bundles.Bundle) string {
	if len(bs) == 0 {
		return "the bundles (none)"
	}
	names := make([]string, len(bs))
	for i, b := range bs {
		names[i] = b.Name
	}
	return "the bundles " + strings.Join(names, ", ")
}
