package bringup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/dotfile/rackboot/bundles"
)

// journal records what the fakes were asked to do, in order.
type journal struct {
	mu  sync.Mutex
	ops []string
}

func (j *journal) add(op string) {
	j.mu.Lock()
	j.ops = append(j.ops, op)
	j.mu.Unlock()
}

func (j *journal) list() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.ops)
}

// fakeStages is an inventory whose first control plane is installed once
// the test says so.
type fakeStages struct {
	j          *journal
	mu         sync.Mutex
	stage      string
	detail     string
	installed  bool
	ch         chan struct{}
	subscribed chan struct{}
}

func newFakeStages(j *journal, stage string, installed bool) *fakeStages {
	return &fakeStages{j: j, stage: stage, installed: installed, ch: make(chan struct{}, 1), subscribed: make(chan struct{})}
}

func (f *fakeStages) Stage(name string) (string, string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.j.add("stage " + name)
	return f.stage, f.detail, f.installed
}

func (f *fakeStages) Subscribe() (<-chan struct{}, func()) {
	close(f.subscribed)
	return f.ch, func() {}
}

func (f *fakeStages) set(stage string, installed bool) {
	f.mu.Lock()
	f.stage, f.installed = stage, installed
	f.mu.Unlock()
	f.ch <- struct{}{}
}

type fakeBootstrap struct {
	j   *journal
	rec *Record
	err error
}

func (f *fakeBootstrap) Done() (*Record, error) { return f.rec, nil }

func (f *fakeBootstrap) Bootstrap(context.Context) (BootstrapResult, error) {
	f.j.add("bootstrap")
	if f.err != nil {
		return BootstrapResult{}, f.err
	}
	if f.rec != nil {
		return BootstrapResult{Record: *f.rec, Outcome: Recorded}, nil
	}
	return BootstrapResult{Record: Record{Node: "192.168.1.11", Time: testNow}, Outcome: Bootstrapped, Attempts: 1}, nil
}

// fakeCluster fails the operation named in fail; "block:<op>" waits for the
// step's context to end instead, as a wait that never succeeds does.
type fakeCluster struct {
	j    *journal
	fail map[string]error
}

func (f *fakeCluster) do(ctx context.Context, op string) error {
	f.j.add(op)
	err := f.fail[op]
	if errors.Is(err, errBlock) {
		<-ctx.Done()
		return fmt.Errorf("%s: still not healthy: %w", op, ctx.Err())
	}
	return err
}

var errBlock = errors.New("block until the step ends")

func (f *fakeCluster) WaitAPIServer(ctx context.Context) error { return f.do(ctx, "vip") }
func (f *fakeCluster) WaitNodesReady(ctx context.Context, names []string) error {
	return f.do(ctx, "nodes "+strings.Join(names, ","))
}
func (f *fakeCluster) Apply(ctx context.Context, b bundles.Bundle) error {
	return f.do(ctx, "apply "+b.Name)
}
func (f *fakeCluster) WaitGates(ctx context.Context, b bundles.Bundle) error {
	return f.do(ctx, "gates "+b.Name)
}

// fakeDisks answers each machine's Ceph candidates from a table; a
// machine in errs cannot be read; one missing from both has none.
type fakeDisks struct {
	j     *journal
	disks map[string][]CephDisk
	errs  map[string]error
}

func (f *fakeDisks) CephDisks(_ context.Context, m string) ([]CephDisk, error) {
	f.j.add("disks " + m)
	if err := f.errs[m]; err != nil {
		return nil, err
	}
	return f.disks[m], nil
}

// cleanDisks: every machine has one clean candidate.
func cleanDisks(j *journal) *fakeDisks {
	d := &fakeDisks{j: j, disks: map[string][]CephDisk{}}
	for _, m := range []string{"w1", "cp1", "cp2"} {
		d.disks[m] = []CephDisk{{Name: "sdb", Serial: "S-" + m, Size: "8.0 TB", Clean: true, What: "nothing Talos's blkid recognises"}}
	}
	return d
}

func testPlan() Plan {
	return Plan{
		Cluster: "dotfile",
		VIP:     netip.MustParseAddr("192.168.1.10"),
		Nodes: []Node{
			{Name: "w1", IP: netip.MustParseAddr("192.168.1.21")},
			{Name: "cp1", ControlPlane: true, IP: netip.MustParseAddr("192.168.1.11")},
			{Name: "cp2", ControlPlane: true, IP: netip.MustParseAddr("192.168.1.12")},
		},
		CephNodes: []string{"w1", "cp1", "cp2"},
		Bundles: []bundles.Bundle{
			{Name: "rook-ceph", Objects: make([]*unstructured.Unstructured, 3), Gates: []bundles.Gate{{Namespace: "rook-ceph"}}},
			{Name: "cockroachdb", Objects: make([]*unstructured.Unstructured, 2), Gates: []bundles.Gate{{Namespace: "cockroachdb"}, {Namespace: "cockroachdb"}}},
		},
		StepTimeout:     time.Minute,
		TalosconfigPath: "/state/talosconfig",
		KubeconfigPath:  "/state/kubeconfig",
		SQL:             &SQL{ConnectionString: "postgresql://root@192.168.1.10:26257/defaultdb?sslmode=verify-full", CertsDir: "/state/cockroach/certs"},
	}
}

// stepClock advances one second per reading, so durations are known.
func stepClock() func() time.Time {
	var mu sync.Mutex
	t := testNow
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t = t.Add(time.Second)
		return t
	}
}

func TestRunOrder(t *testing.T) {
	j := &journal{}
	var out bytes.Buffer
	err := Run(t.Context(), testPlan(), Deps{
		Stages:    newFakeStages(j, "running", true),
		Bootstrap: &fakeBootstrap{j: j},
		Cluster:   &fakeCluster{j: j},
		Disks:     cleanDisks(j),
		Out:       &out,
		Now:       stepClock(),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"stage cp1", "bootstrap", "vip", "nodes w1,cp1,cp2", "disks w1", "disks cp1", "disks cp2", "apply rook-ceph", "gates rook-ceph", "apply cockroachdb", "gates cockroachdb"}
	if got := j.list(); !slices.Equal(got, want) {
		t.Fatalf("order %q, want %q", got, want)
	}
	for _, line := range []string{
		"[1/9] waiting for the first control plane cp1 (192.168.1.11) to be installed ...",
		"[2/9] bootstrapping etcd on cp1 (192.168.1.11) ...",
		"      bootstrapped on 192.168.1.11",
		"[3/9] waiting for the VIP 192.168.1.10:6443 ...",
		"[4/9] waiting for 3 node(s) to be Ready ...",
		"[5/9] checking the Ceph disks of 3 machine(s) before Rook ...",
		"      w1: sdb clean",
		"[6/9] applying bundle rook-ceph (3 objects) ...",
		"[7/9] waiting for rook-ceph's 1 health gate(s) ...",
		"[8/9] applying bundle cockroachdb (2 objects) ...",
		"[9/9] waiting for cockroachdb's 2 health gate(s) ...",
		"[9/9] done in 1s",
		"cluster dotfile is up",
		"Kubernetes API  https://192.168.1.10:6443  (kubeconfig: /state/kubeconfig)",
		"SQL             postgresql://root@192.168.1.10:26257/defaultdb?sslmode=verify-full",
		"client certs    /state/cockroach/certs",
	} {
		if !strings.Contains(out.String(), line+"\n") {
			t.Errorf("output lacks %q:\n%s", line, out.String())
		}
	}
}

// Nothing happens to the cluster before the first control plane is
// installed; the wait ends on the inventory's change notification.
func TestRunWaitsForInstalled(t *testing.T) {
	j := &journal{}
	st := newFakeStages(j, "config", false)
	done := make(chan error, 1)
	go func() {
		done <- Run(t.Context(), testPlan(), Deps{Stages: st, Bootstrap: &fakeBootstrap{j: j}, Cluster: &fakeCluster{j: j}, Disks: cleanDisks(j)})
	}()
	<-st.subscribed
	st.set("installing", false) // not yet
	st.set("installed", true)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ops := j.list()
	b := slices.Index(ops, "bootstrap")
	if b < 0 || slices.Contains(ops[:b], "vip") {
		t.Fatalf("ops %q", ops)
	}
	if last := ops[b-1]; last != "stage cp1" {
		t.Fatalf("bootstrap came after %q, want after the stage check that saw installed", last)
	}
	if n := strings.Count(strings.Join(ops[:b], "\n"), "stage cp1"); n < 2 {
		t.Fatalf("stage read %d times before bootstrap, want at least 2 (before and after install): %q", n, ops)
	}
}

func TestRunStops(t *testing.T) {
	for _, tc := range []struct {
		name    string
		stages  *fakeStages
		boot    *fakeBootstrap
		fail    map[string]error
		skip    bool
		ops     []string
		step    int
		timeout bool
		msg     []string
	}{
		{
			name: "bootstrap refused: no VIP wait, nothing applied",
			boot: &fakeBootstrap{err: errors.New("the node refused (PermissionDenied)")},
			ops:  []string{"stage cp1", "bootstrap"}, step: 2,
			msg: []string{"[2/9] bootstrapping etcd on cp1 (192.168.1.11): the node refused", "with TALOSCONFIG=/state/talosconfig: `talosctl -n 192.168.1.11 service etcd`", "run `rackboot up` again"},
		},
		{
			name: "VIP never answers: nothing applied",
			fail: map[string]error{"vip": errBlock},
			ops:  []string{"stage cp1", "bootstrap", "vip"}, step: 3, timeout: true,
			msg: []string{"[3/9] waiting for the VIP 192.168.1.10:6443: not done after", "vip: still not healthy", "get addresses", "nothing else on the network uses 192.168.1.10"},
		},
		{
			name: "a node not Ready: nothing applied",
			fail: map[string]error{"nodes w1,cp1,cp2": errBlock},
			ops:  []string{"stage cp1", "bootstrap", "vip", "nodes w1,cp1,cp2"}, step: 4, timeout: true,
			msg: []string{"with KUBECONFIG=/state/kubeconfig: `kubectl get nodes -o wide`"},
		},
		{
			name: "apply refused: no gate wait",
			fail: map[string]error{"apply rook-ceph": errors.New(`CephCluster rook-ceph/rook-ceph: spec.mon.count: Invalid value`)},
			ops:  []string{"stage cp1", "bootstrap", "vip", "nodes w1,cp1,cp2", "disks w1", "disks cp1", "disks cp2", "apply rook-ceph"}, step: 6,
			msg: []string{"[6/9] applying bundle rook-ceph (3 objects): CephCluster rook-ceph/rook-ceph: spec.mon.count"},
		},
		{
			name: "Ceph unhealthy: CockroachDB not applied",
			fail: map[string]error{"gates rook-ceph": errBlock},
			ops:  []string{"stage cp1", "bootstrap", "vip", "nodes w1,cp1,cp2", "disks w1", "disks cp1", "disks cp2", "apply rook-ceph", "gates rook-ceph"}, step: 7, timeout: true,
			msg: []string{"with KUBECONFIG=/state/kubeconfig: `kubectl -n rook-ceph get pods,pvc`"},
		},
		{
			name: "the gates' own timeout counts as a timeout",
			fail: map[string]error{"gates cockroachdb": fmt.Errorf("%w: 1 gate not passed: 0/3 cockroachdb pods ready", bundles.ErrTimeout)},
			ops:  []string{"stage cp1", "bootstrap", "vip", "nodes w1,cp1,cp2", "disks w1", "disks cp1", "disks cp2", "apply rook-ceph", "gates rook-ceph", "apply cockroachdb", "gates cockroachdb"}, step: 9, timeout: true,
			msg: []string{"[9/9] waiting for cockroachdb's 2 health gate(s): not done after", "0/3 cockroachdb pods ready", "-n cockroachdb get events"},
		},
		{
			name:   "install failed: no waiting for the timeout",
			stages: &fakeStages{stage: "install-failed", detail: "no disks matched the expression", ch: make(chan struct{}, 1), subscribed: make(chan struct{})},
			ops:    []string{"stage cp1"}, step: 1,
			msg: []string{"cp1: install-failed: no disks matched the expression"},
		},
		{
			name:   "first control plane never installs",
			stages: newFakeStages(nil, "kernel", false),
			ops:    []string{"stage cp1"}, step: 1, timeout: true,
			msg: []string{`cp1 is at stage "kernel", not installed yet`, "rackboot status"},
		},
		{
			name:   "first control plane never seen",
			stages: newFakeStages(nil, "", false),
			ops:    []string{"stage cp1"}, step: 1, timeout: true,
			msg: []string{"cp1 was never seen"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := &journal{}
			st := tc.stages
			if st == nil {
				st = newFakeStages(j, "running", true)
			}
			st.j = j
			boot := tc.boot
			if boot == nil {
				boot = &fakeBootstrap{}
			}
			boot.j = j
			plan := testPlan()
			plan.StepTimeout = 50 * time.Millisecond
			var out bytes.Buffer
			err := Run(t.Context(), plan, Deps{Stages: st, Bootstrap: boot, Cluster: &fakeCluster{j: j, fail: tc.fail}, Disks: cleanDisks(j), Out: &out})
			var se *StepError
			if !errors.As(err, &se) {
				t.Fatalf("err = %v, want a StepError", err)
			}
			if se.Step != tc.step || se.Timeout != tc.timeout || se.Interrupted {
				t.Errorf("step %d timeout %v interrupted %v, want step %d timeout %v", se.Step, se.Timeout, se.Interrupted, tc.step, tc.timeout)
			}
			if got := j.list(); !slices.Equal(dedupe(got), tc.ops) {
				t.Errorf("ops %q, want %q", got, tc.ops)
			}
			for _, m := range tc.msg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error lacks %q:\n%v", m, err)
				}
			}
			if strings.Contains(out.String(), "is up") {
				t.Errorf("printed success after a failure:\n%s", out.String())
			}
		})
	}
}

// dedupe drops repeated stage reads (the wait loop reads once per change).
func dedupe(ops []string) []string {
	var out []string
	for _, o := range ops {
		if len(out) > 0 && out[len(out)-1] == o {
			continue
		}
		out = append(out, o)
	}
	return out
}

// A re-run after etcd was bootstrapped does not wait for install events
// (the inventory may not see them again) and continues with the VIP.
func TestRunAfterBootstrapRecorded(t *testing.T) {
	j := &journal{}
	var out bytes.Buffer
	rec := &Record{Node: "192.168.1.11", Time: testNow}
	err := Run(t.Context(), testPlan(), Deps{
		Stages:    newFakeStages(j, "", false),
		Bootstrap: &fakeBootstrap{j: j, rec: rec},
		Cluster:   &fakeCluster{j: j},
		Disks:     cleanDisks(j),
		Out:       &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := j.list(); slices.Contains(got, "stage cp1") || got[0] != "bootstrap" {
		t.Fatalf("ops %q: want no stage wait", got)
	}
	if !strings.Contains(out.String(), "[1/9] waiting for the first control plane cp1 (192.168.1.11) to be installed: skipped (etcd already bootstrapped on 192.168.1.11 at 2026-05-04T12:00:00Z)") {
		t.Fatalf("output:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "already bootstrapped (recorded) on 192.168.1.11") {
		t.Fatalf("output:\n%s", out.String())
	}
}

func TestRunSkipBundles(t *testing.T) {
	j := &journal{}
	var out bytes.Buffer
	plan := testPlan()
	plan.SkipBundles = true
	err := Run(t.Context(), plan, Deps{Stages: newFakeStages(j, "running", true), Bootstrap: &fakeBootstrap{j: j}, Cluster: &fakeCluster{j: j}, Disks: cleanDisks(j), Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	if got := j.list(); !slices.Equal(got, []string{"stage cp1", "bootstrap", "vip", "nodes w1,cp1,cp2"}) {
		t.Fatalf("ops %q", got)
	}
	for _, s := range []string{"[5/5] applying the bundles rook-ceph, cockroachdb: skipped (--skip-bundles)", "[4/5] done in"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("output lacks %q:\n%s", s, out.String())
		}
	}
	if strings.Contains(out.String(), "SQL") {
		t.Errorf("printed the SQL string without the bundles:\n%s", out.String())
	}
}

// Ctrl-C is an interruption, not a timeout.
func TestRunInterrupted(t *testing.T) {
	j := &journal{}
	ctx, cancel := context.WithCancel(t.Context())
	st := newFakeStages(j, "dhcp", false)
	go func() {
		<-st.subscribed
		cancel()
	}()
	err := Run(ctx, testPlan(), Deps{Stages: st, Bootstrap: &fakeBootstrap{j: j}, Cluster: &fakeCluster{j: j}, Disks: cleanDisks(j)})
	var se *StepError
	if !errors.As(err, &se) || !se.Interrupted || se.Timeout || se.Step != 1 {
		t.Fatalf("err = %#v", err)
	}
	if !strings.Contains(err.Error(), "interrupted after") || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if slices.Contains(j.list(), "bootstrap") {
		t.Fatal("bootstrapped after an interrupt")
	}
}

// Without an inventory the wait is skipped, the rest runs.
func TestRunWithoutInventory(t *testing.T) {
	j := &journal{}
	var out bytes.Buffer
	if err := Run(t.Context(), testPlan(), Deps{Bootstrap: &fakeBootstrap{j: j}, Cluster: &fakeCluster{j: j}, Disks: cleanDisks(j), Out: &out}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "skipped (no inventory to watch)") || j.list()[0] != "bootstrap" {
		t.Fatalf("ops %q output:\n%s", j.list(), out.String())
	}
}

func TestRunBadPlan(t *testing.T) {
	j := &journal{}
	plan := testPlan()
	plan.Nodes[1].IP = netip.Addr{}
	err := Run(t.Context(), plan, Deps{Stages: newFakeStages(j, "running", true), Bootstrap: &fakeBootstrap{j: j}, Cluster: &fakeCluster{j: j}, Disks: cleanDisks(j)})
	if err == nil || !strings.Contains(err.Error(), "cp1 has no static address") {
		t.Fatalf("err = %v", err)
	}
	if len(j.list()) != 0 {
		t.Fatalf("did something with a bad plan: %q", j.list())
	}
}

func TestFirstControlPlane(t *testing.T) {
	vip := netip.MustParseAddr("10.0.0.10")
	ip := netip.MustParseAddr
	for _, tc := range []struct {
		name  string
		nodes []Node
		want  string
		err   string
	}{
		{"first in file order", []Node{{Name: "w1", IP: ip("10.0.0.21")}, {Name: "cp2", ControlPlane: true, IP: ip("10.0.0.12")}, {Name: "cp1", ControlPlane: true, IP: ip("10.0.0.11")}}, "cp2", ""},
		{"first is DHCP: no fallback to the next", []Node{{Name: "cp1", ControlPlane: true}, {Name: "cp2", ControlPlane: true, IP: ip("10.0.0.12")}}, "", "cp1 has no static address"},
		{"first has the VIP", []Node{{Name: "cp1", ControlPlane: true, IP: vip}}, "", "has the VIP 10.0.0.10"},
		{"no control plane", []Node{{Name: "w1", IP: ip("10.0.0.21")}}, "", "no control plane"},
		{"empty rack", nil, "", "no control plane"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := FirstControlPlane(tc.nodes, vip)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || n.Name != tc.want {
				t.Fatalf("got %+v, %v; want %s", n, err, tc.want)
			}
		})
	}
}

// The Ceph disk check before Rook: the table of verdicts. Whenever it
// stops, no bundle is applied.
func TestRunDiskCheck(t *testing.T) {
	stale := CephDisk{Name: "sda", Serial: "WD-OLD-1", Size: "8.0 TB", What: "GPT partition table with 1 partition(s); ext4 in sda1 (olddata)",
		Wipe: "rackboot disks wipe w1 --serial WD-OLD-1"}
	clean := CephDisk{Name: "sdb", Serial: "WD-NEW-2", Size: "8.0 TB", Clean: true, What: "nothing Talos's blkid recognises"}
	osd := CephDisk{Name: "sdc", Serial: "WD-OSD-3", Size: "4.0 TB", What: "Ceph bluestore label on sdc", Wipe: "rackboot disks wipe cp2 --serial WD-OSD-3",
		Rook: "OSD 2 (rook-ceph-osd-2) uses /dev/sdc"}
	noSerial := CephDisk{Name: "sdd", Size: "1.0 TB", What: "xfs on sdd", Wipe: "(sdd has no serial: ...)"}
	reads := []string{"disks w1", "disks cp1", "disks cp2"}
	upTo := []string{"stage cp1", "bootstrap", "vip", "nodes w1,cp1,cp2"}
	applied := append(slices.Clone(reads), "apply rook-ceph", "gates rook-ceph", "apply cockroachdb", "gates cockroachdb")
	for _, tc := range []struct {
		name  string
		disks map[string][]CephDisk
		errs  map[string]error
		skip  bool
		ops   []string // after the nodes
		out   []string
		msg   []string // nil: Run succeeds
		not   []string // not in the message
	}{
		{
			name:  "all clean: Rook applied",
			disks: map[string][]CephDisk{"w1": {clean}, "cp1": {clean}, "cp2": {clean}},
			ops:   applied,
			out:   []string{"      w1: sdb clean\n", "label copies at 1, 10, 100, 1000 GiB are invisible to Talos"},
		},
		{
			name:  "one disk not clean: stops, says the machine, disk, serial, size, content and the wipe command",
			disks: map[string][]CephDisk{"w1": {stale, clean}, "cp1": {clean}, "cp2": {clean}},
			ops:   reads,
			out:   []string{"      w1: sda NOT CLEAN, sdb clean\n"},
			msg: []string{
				"[5/9] checking the Ceph disks of 3 machine(s) before Rook: 1 Ceph disk(s) not clean: Rook would refuse them:",
				"\n  w1: sda (serial WD-OLD-1, 8.0 TB) holds GPT partition table with 1 partition(s); ext4 in sda1 (olddata); wipe it: rackboot disks wipe w1 --serial WD-OLD-1\n",
				"after the wipe, run `rackboot up` again: etcd's bootstrap is recorded and the bundles apply idempotently, so it picks up at this check",
				"rackboot up --skip-disk-check",
				"look at: `rackboot disks`",
			},
			not: []string{"sdb ("},
		},
		{
			name:  "a disk without serial: the line says so",
			disks: map[string][]CephDisk{"w1": {clean}, "cp1": {noSerial}, "cp2": {clean}},
			ops:   reads,
			msg:   []string{"cp1: sdd (serial none, 1.0 TB) holds xfs on sdd; wipe it: (sdd has no serial"},
		},
		{
			name:  "a machine cannot be read: stops, says which and why, names the flag",
			disks: map[string][]CephDisk{"w1": {clean}, "cp1": {clean}},
			errs:  map[string]error{"cp2": errors.New("not answering: connection refused")},
			ops:   reads,
			out:   []string{"      cp2: cannot read its disks\n"},
			msg: []string{"the disks of 1 machine(s) could not be read:\n  cp2: cannot read its disks through Talos's API: not answering: connection refused",
				"rackboot up --skip-disk-check"},
			not: []string{"after the wipe"},
		},
		{
			name:  "not clean and unreadable: both said",
			disks: map[string][]CephDisk{"w1": {stale}, "cp1": {clean}},
			errs:  map[string]error{"cp2": errors.New("no address: the machine is on DHCP; give it with --node cp2=IP")},
			ops:   reads,
			msg:   []string{"1 Ceph disk(s) not clean (Rook would refuse them) and 1 machine(s) whose disks could not be read:", "wipe w1 --serial WD-OLD-1", "cp2: cannot read", "--node cp2=IP"},
		},
		{
			name:  "a disk a Rook OSD uses is Ceph's own: a re-run after Rook goes on",
			disks: map[string][]CephDisk{"w1": {clean}, "cp1": {clean}, "cp2": {osd}},
			ops:   applied,
			out:   []string{"cp2: sdc Rook's (OSD 2 (rook-ceph-osd-2) uses /dev/sdc)"},
		},
		{
			name:  "a machine with no candidate carries no OSD: not a stop",
			disks: map[string][]CephDisk{"w1": {clean}, "cp2": {clean}},
			ops:   applied,
			out:   []string{"cp1: no disk matches its cephDisks"},
		},
		{
			name:  "--skip-disk-check: nothing read, Rook applied",
			disks: map[string][]CephDisk{"w1": {stale}},
			errs:  map[string]error{"cp2": errors.New("not answering")},
			skip:  true,
			ops:   applied[len(reads):],
			out:   []string{"[5/9] checking the Ceph disks of 3 machine(s) before Rook: skipped (--skip-disk-check)\n"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := &journal{}
			plan := testPlan()
			plan.SkipDiskCheck = tc.skip
			var out bytes.Buffer
			err := Run(t.Context(), plan, Deps{Stages: newFakeStages(j, "running", true), Bootstrap: &fakeBootstrap{j: j},
				Cluster: &fakeCluster{j: j}, Disks: &fakeDisks{j: j, disks: tc.disks, errs: tc.errs}, Out: &out})
			t.Logf("output:\n%s", out.String())
			if got, want := dedupe(j.list()), append(slices.Clone(upTo), tc.ops...); !slices.Equal(got, want) {
				t.Errorf("ops %q, want %q", got, want)
			}
			for _, s := range tc.out {
				if !strings.Contains(out.String(), s) {
					t.Errorf("output lacks %q", s)
				}
			}
			if tc.msg == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var se *StepError
			var de *DiskCheckError
			if !errors.As(err, &se) || se.Step != 5 || se.Timeout || !errors.As(err, &de) {
				t.Fatalf("err = %v, want step 5 failing with a DiskCheckError", err)
			}
			for _, m := range tc.msg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error lacks %q:\n%v", m, err)
				}
			}
			for _, m := range tc.not {
				if strings.Contains(err.Error(), m) {
					t.Errorf("error has %q:\n%v", m, err)
				}
			}
			if strings.Contains(out.String(), "is up") {
				t.Errorf("printed success after the check stopped")
			}
		})
	}
}

// After the check stopped and the disk was wiped, the next run skips what
// is done (bootstrap recorded) and goes on through Rook.
func TestRunDiskCheckResumes(t *testing.T) {
	j := &journal{}
	d := cleanDisks(j)
	d.disks["w1"] = []CephDisk{{Name: "sda", Serial: "WD-OLD-1", Size: "8.0 TB", What: "Ceph bluestore label on sda", Wipe: "rackboot disks wipe w1 --serial WD-OLD-1"}}
	boot := &fakeBootstrap{j: j}
	deps := Deps{Stages: newFakeStages(j, "running", true), Bootstrap: boot, Cluster: &fakeCluster{j: j}, Disks: d}
	if err := Run(t.Context(), testPlan(), deps); err == nil {
		t.Fatal("ran through a stale Ceph disk")
	}
	if slices.Contains(j.list(), "apply rook-ceph") {
		t.Fatal("applied Rook after the check stopped")
	}
	// The wipe; the Bootstrapper recorded etcd's bootstrap in the state dir.
	d.disks["w1"] = []CephDisk{{Name: "sda", Serial: "WD-OLD-1", Size: "8.0 TB", Clean: true, What: "nothing Talos's blkid recognises"}}
	boot.rec = &Record{Node: "192.168.1.11", Time: testNow}
	j.ops = nil
	if err := Run(t.Context(), testPlan(), deps); err != nil {
		t.Fatal(err)
	}
	want := []string{"bootstrap", "vip", "nodes w1,cp1,cp2", "disks w1", "disks cp1", "disks cp2", "apply rook-ceph", "gates rook-ceph", "apply cockroachdb", "gates cockroachdb"}
	if got := j.list(); !slices.Equal(got, want) {
		t.Fatalf("second run %q, want %q", got, want)
	}
}

// Rook without a disk reader is a wiring mistake: nothing is done.
func TestRunNoDiskReader(t *testing.T) {
	j := &journal{}
	err := Run(t.Context(), testPlan(), Deps{Stages: newFakeStages(j, "running", true), Bootstrap: &fakeBootstrap{j: j}, Cluster: &fakeCluster{j: j}})
	if err == nil || !strings.Contains(err.Error(), "no disk reader") || len(j.list()) != 0 {
		t.Fatalf("err = %v, ops %q", err, j.list())
	}
}
