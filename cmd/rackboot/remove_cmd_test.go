package main

// `rackboot machine remove` against a real kube-apiserver (internal/kubetest:
// no kubelet, so the test binds pods itself; evictions are the API server's
// own) and the stand-in's Talos API (lab/standin/apid) on loopback as the
// Talos API of the machine removed and of the other control planes, with
// mutual TLS from the cluster secrets in the state dir.

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/lab/standin/apid"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/rackedit"
)

type removeLab struct {
	t                 *testing.T
	rack, state, kube string
	cs                kubernetes.Interface
	secrets           *secrets.Bundle
	trustdAt          string // trustd on loopback, once a worker asked
}

// trustd starts, once, trustd from formula's (a control plane's) config
// on loopback, where workers' stand-ins get their API certificates.
func (l *removeLab) trustd() string {
	t := l.t
	t.Helper()
	if l.trustdAt != "" {
		return l.trustdAt
	}
	r, err := profiles.LoadFile(l.rack)
	must(t, err)
	raw, err := profiles.GenerateConfig(r, "formula", l.secrets)
	must(t, err)
	cfg, err := configloader.NewFromBytes(raw)
	must(t, err)
	td, err := apid.NewTrustd(apid.TrustdConfig{Machine: cfg, Addresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Hostname: "formula"})
	must(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- td.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("trustd: %v", err)
		}
	})
	l.trustdAt = ln.Addr().String()
	return l.trustdAt
}

// talosNode is one stand-in apid.
type talosNode struct {
	srv  *apid.Server
	addr string

	mu     sync.Mutex
	resets []apid.Reset
}

func (n *talosNode) got() []apid.Reset {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.resets)
}

// newRemoveLab: the example rack (control planes formula and urban, then
// workers), plus the machines in extra, the cluster secrets, and a kube-apiserver.
func newRemoveLab(t *testing.T, extra ...profiles.Machine) *removeLab {
	t.Helper()
	rack, state := writeExampleRack(t)
	src, err := os.ReadFile(rack)
	must(t, err)
	for _, m := range extra {
		src, err = rackedit.AddMachine(src, m)
		must(t, err)
	}
	must(t, os.WriteFile(rack, src, 0o640))
	must(t, os.Chmod(rack, 0o640)) // the mode the rewrite must keep
	b, _, err := profiles.LoadOrCreateSecrets(state, time.Now)
	must(t, err)
	env := kubetest.Start(t)
	t.Setenv("KUBECONFIG", rack+".no-kubeconfig")
	return &removeLab{t: t, rack: rack, state: state, kube: env.Kubeconfig, cs: kubernetes.NewForConfigOrDie(env.Config), secrets: b}
}

// talos starts machine name's Talos API, configured with its config;
// members is the etcd member list a control plane answers.
func (l *removeLab) talos(name string, members []*machine.EtcdMember, onReset func(apid.Reset)) *talosNode {
	t := l.t
	t.Helper()
	r, err := profiles.LoadFile(l.rack)
	must(t, err)
	// A worker's config has the OS CA without its key: as on Talos, its
	// API certificate comes from trustd, here one started from formula's
	// config on loopback (apid.ConfigureWorker).
	raw, err := profiles.GenerateConfig(r, name, l.secrets)
	must(t, err)
	cfg, err := configloader.NewFromBytes(raw)
	must(t, err)
	var trustdAt []string
	worker := !cfg.Machine().Type().IsControlPlane()
	if worker {
		trustdAt = []string{l.trustd()}
	}
	n := &talosNode{}
	n.srv, err = apid.New(apid.Config{
		Version:         "v1.13.0",
		Addresses:       []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Hostname:        name,
		Installed:       true,
		SystemDisk:      "/dev/nvme0n1",
		EtcdMembers:     members,
		TrustdEndpoints: trustdAt,
		OnReset: func(_ context.Context, r apid.Reset) error {
			n.mu.Lock()
			n.resets = append(n.resets, r)
			n.mu.Unlock()
			if onReset != nil {
				onReset(r)
			}
			return nil
		},
	})
	must(t, err)
	if worker {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		must(t, n.srv.ConfigureWorker(ctx, cfg))
		cancel()
	} else {
		must(t, n.srv.Configure(cfg))
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve %s: %v", name, err)
		}
	})
	n.addr = ln.Addr().String()
	return n
}

// node creates a Node and, for each pod name, a Running pod bound to it.
func (l *removeLab) node(name string, pods ...string) {
	t := l.t
	t.Helper()
	ctx := t.Context()
	_, err := l.cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	must(t, err)
	zero := int64(0)
	for _, p := range pods {
		pod, err := l.cs.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p, Namespace: "default"},
			Spec: corev1.PodSpec{NodeName: name, TerminationGracePeriodSeconds: &zero,
				Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
		}, metav1.CreateOptions{})
		must(t, err)
		pod.Status.Phase = corev1.PodRunning
		_, err = l.cs.CoreV1().Pods("default").UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		must(t, err)
	}
}

func (l *removeLab) podsOn(node string) []string {
	list, err := l.cs.CoreV1().Pods("").List(l.t.Context(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	must(l.t, err)
	var out []string
	for _, p := range list.Items {
		out = append(out, p.Name)
	}
	return out
}

func (l *removeLab) nodeExists(name string) bool {
	_, err := l.cs.CoreV1().Nodes().Get(l.t.Context(), name, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		l.t.Fatal(err)
	}
	return err == nil
}

func (l *removeLab) run(stdin string, args ...string) (string, error) {
	t := l.t
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(append([]string{"-f", l.rack, "--state", l.state, "machine", "remove", "--kubeconfig", l.kube, "--timeout", "5s"}, args...))
	err := root.ExecuteContext(context.Background())
	t.Logf("machine remove %v: %v\n%s%s", args, err, out.String(), errOut.String())
	return out.String(), err
}

func (l *removeLab) rackText() string {
	b, err := os.ReadFile(l.rack)
	must(l.t, err)
	return string(b)
}

func installedMark(t *testing.T, state, name string) bool {
	t.Helper()
	st, err := inventory.Open(state)
	must(t, err)
	defer st.Close()
	return st.Installed(name)
}

func wantOutput(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q", w)
		}
	}
}

// TestRemoveWorker: lailah (a worker) confirmed by its name: cordoned,
// drained (its pod evicted), Reset received with STATE and EPHEMERAL only
// (graceful, power off), Node deleted, the rack file lost exactly its entry
// with its comments; no serve runs, which it says. Run again: every step
// finds its work done.
func TestRemoveWorker(t *testing.T) {
	l := newRemoveLab(t)
	lailah := l.talos("lailah", nil, nil)
	l.node("lailah", "web-1")
	l.node("verus", "db-1")
	before := l.rackText()
	want, err := rackedit.RemoveMachine([]byte(before), "lailah")
	must(t, err)
	// rackboot installed lailah (its inventory in the state dir).
	st, err := inventory.Open(l.state)
	must(t, err)
	st.Declare("lailah")
	must(t, st.MarkStage("lailah", "installed", "talos installed"))
	must(t, st.Close())
	if !installedMark(t, l.state, "lailah") {
		t.Fatal("the test's installed mark did not stick")
	}

	// Not confirmed: nothing changes.
	_, err = l.run("verus\n", "lailah", "--node", "lailah="+lailah.addr)
	if err == nil || !strings.Contains(err.Error(), "not confirmed") {
		t.Errorf("wrong name typed: %v", err)
	}
	if !l.nodeExists("lailah") || len(lailah.got()) != 0 || l.rackText() != before {
		t.Fatal("an unconfirmed remove changed something")
	}

	out, err := l.run("lailah\n", "lailah", "--node", "lailah="+lailah.addr)
	if err != nil {
		t.Fatalf("remove lailah: %v", err)
	}
	wantOutput(t, out, "Type the machine's name", "[1/5] cordon and drain lailah", "evicted default/web-1", "[2/5] reset:",
		"[3/5] etcd: lailah is not a control plane", "[4/5] Node: deleted lailah", "forgot that lailah is installed", "[5/5] rack file: dropped lailah",
		"no rackboot serve is running")
	if p := l.podsOn("lailah"); len(p) != 0 {
		t.Errorf("pods left on lailah: %v", p)
	}
	if p := l.podsOn("verus"); !slices.Equal(p, []string{"db-1"}) {
		t.Errorf("verus's pods: %v, want db-1 untouched", p)
	}
	rs := lailah.got()
	if len(rs) != 1 {
		t.Fatalf("resets = %+v, want one", rs)
	}
	if r := rs[0]; !r.Graceful || r.Reboot || r.Mode != machine.ResetRequest_SYSTEM_DISK || len(r.UserDisks) != 0 ||
		!slices.Equal(r.SystemPartitions, []string{"STATE", "EPHEMERAL"}) {
		t.Errorf("reset = %+v, want graceful, no reboot, SYSTEM_DISK, STATE and EPHEMERAL only", r)
	}
	if installedMark(t, l.state, "lailah") {
		t.Error("lailah is still marked installed: a replacement named lailah would be sent to its disk")
	}
	if l.nodeExists("lailah") || !l.nodeExists("verus") {
		t.Error("lailah's Node is still there, or verus's is gone")
	}
	after := l.rackText()
	if after != string(want) {
		t.Errorf("rack file:\n%s\nwant (rackedit.RemoveMachine):\n%s", after, want)
	}
	if strings.Contains(after, "lailah") || strings.Contains(after, "ThinkServer") ||
		!strings.Contains(after, "# the iLO 4") || !strings.Contains(after, "# Dell PowerEdge R630") {
		t.Error("the rack file lost other comments or kept lailah's")
	}
	fi, err := os.Stat(l.rack)
	must(t, err)
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("rack file mode %v, want 0640 kept", fi.Mode().Perm())
	}

	// Again, the same command: the work is done.
	out, err = l.run("", "lailah", "--node", "lailah="+lailah.addr, "--yes")
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	wantOutput(t, out, "was removed already, nothing to do")
	if len(lailah.got()) != 1 || l.rackText() != after {
		t.Error("the second run reset again or changed the rack file")
	}
}

// TestRemoveInterruptedRerun: a run that stopped after the reset (here:
// --keep-rack, the machine then powered off) is finished by the same
// command without --keep-rack: the reset is not sent again.
func TestRemoveInterruptedRerun(t *testing.T) {
	l := newRemoveLab(t)
	verus := l.talos("verus", nil, nil)
	l.node("verus", "job-1")
	out, err := l.run("", "verus", "--node", "verus="+verus.addr, "--yes", "--keep-rack")
	if err != nil {
		t.Fatalf("remove --keep-rack: %v", err)
	}
	wantOutput(t, out, "stays in")
	if !strings.Contains(l.rackText(), "name: verus") || l.nodeExists("verus") {
		t.Fatal("--keep-rack: verus left the rack file, or its Node is still there")
	}
	// The machine is off now: its Talos API does not answer.
	out, err = l.run("", "verus", "--node", "verus=127.0.0.1:1", "--yes")
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	wantOutput(t, out, "nothing to drain", "an earlier run reset it", "nothing to delete", "dropped verus")
	if len(verus.got()) != 1 || strings.Contains(l.rackText(), "name: verus") {
		t.Errorf("resets %d (want 1); verus still in the rack file: %v", len(verus.got()), strings.Contains(l.rackText(), "name: verus"))
	}
}

var pooka = profiles.Machine{Name: "pooka", Role: profiles.RoleControlPlane,
	Select: profiles.Selector{MAC: []string{"52:54:00:b0:00:07"}}, Address: "192.168.1.17/24"}

func members(names ...string) []*machine.EtcdMember {
	var out []*machine.EtcdMember
	for i, n := range names {
		out = append(out, &machine.EtcdMember{Id: uint64(0xa0 + i), Hostname: n})
	}
	return out
}

// TestRemoveControlPlane: three control planes. formula's graceful reset
// does not make it leave etcd here (the stand-in has no etcd), so after
// --etcd-leave-timeout its member is removed through urban; pooka's
// reset leaves etcd by itself (the test does what Talos's LeaveEtcd would)
// and nothing more is removed. Then urban, the last one, is refused.
func TestRemoveControlPlane(t *testing.T) {
	l := newRemoveLab(t, pooka)
	ms := members("formula", "urban", "pooka")
	formula := l.talos("formula", ms, nil)
	urban := l.talos("urban", ms, nil)
	pk := l.talos("pooka", ms, func(apid.Reset) {
		// Talos's LeaveEtcd: the member leaves through the cluster.
		go func() {
			_, _ = urban.srv.EtcdRemoveMemberByID(context.Background(), &machine.EtcdRemoveMemberByIDRequest{MemberId: 0xa2})
		}()
	})
	for _, n := range []string{"formula", "urban", "pooka"} {
		l.node(n)
	}
	nodes := []string{"--node", "formula=" + formula.addr, "--node", "urban=" + urban.addr, "--node", "pooka=" + pk.addr}

	out, err := l.run("", append([]string{"formula", "--yes", "--etcd-leave-timeout", "0s"}, nodes...)...)
	if err != nil {
		t.Fatalf("remove formula: %v", err)
	}
	wantOutput(t, out, "warning: etcd goes from 3 members to 2", "[3/5] etcd: formula's member a0 removed (asked urban)")
	if got := hostnames(urban.srv.EtcdMembers()); !slices.Equal(got, []string{"urban", "pooka"}) {
		t.Errorf("etcd members on urban: %v, want urban, pooka", got)
	}
	if rs := formula.got(); len(rs) != 1 || !rs[0].Graceful {
		t.Errorf("formula's resets: %+v, want one graceful", rs)
	}

	out, err = l.run("", append([]string{"pooka", "--yes", "--etcd-leave-timeout", "1m"}, nodes[2:]...)...)
	if err != nil {
		t.Fatalf("remove pooka: %v", err)
	}
	wantOutput(t, out, "etcd has 2 members", "member a2 left etcd (the reset's graceful leave)")
	if got := hostnames(urban.srv.EtcdMembers()); !slices.Equal(got, []string{"urban"}) {
		t.Errorf("etcd members on urban: %v, want urban", got)
	}

	// urban is the last control plane.
	before := l.rackText()
	out, err = l.run("", "urban", "--yes", "--node", "urban="+urban.addr)
	if err == nil || !strings.Contains(err.Error(), "last control plane") {
		t.Errorf("removing the last control plane: %v", err)
	}
	if len(urban.got()) != 0 || !l.nodeExists("urban") || l.rackText() != before || strings.Contains(out, "[1/5]") {
		t.Error("the refused remove changed something")
	}
}

func hostnames(ms []*machine.EtcdMember) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.GetHostname())
	}
	return out
}

// TestRemoveDead: urban does not answer (--dead): drained, no reset, its
// member removed through formula, Node deleted, dropped from the rack;
// the warnings say what two members mean. Without --dead, the unreachable
// machine stops the command at the reset.
func TestRemoveDead(t *testing.T) {
	l := newRemoveLab(t)
	ms := members("formula", "urban")
	formula := l.talos("formula", ms, nil)
	l.node("urban", "api-1")
	args := []string{"urban", "--yes", "--node", "formula=" + formula.addr, "--node", "urban=127.0.0.1:1"}

	_, err := l.run("", args...)
	if err == nil || !strings.Contains(err.Error(), "run this again with --dead") {
		t.Errorf("unreachable machine without --dead: %v", err)
	}
	if !strings.Contains(l.rackText(), "name: urban") || len(formula.srv.EtcdMembers()) != 2 {
		t.Error("the failed run went past the reset")
	}

	// A pod its dead kubelet would have to confirm: the eviction is
	// accepted, the pod stays terminating (a finalizer holds it here).
	ctx := t.Context()
	zero := int64(0)
	_, err = l.cs.CoreV1().Pods("default").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "stuck-1", Namespace: "default", Finalizers: []string{"example.com/hold"}},
		Spec: corev1.PodSpec{NodeName: "urban", TerminationGracePeriodSeconds: &zero,
			Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
	}, metav1.CreateOptions{})
	must(t, err)

	out, err := l.run("", append(args, "--dead", "--drain-timeout", "1s")...)
	if err != nil {
		t.Fatalf("remove --dead: %v", err)
	}
	wantOutput(t, out, "evicted default/stuck-1", "drain timed out", "its pods still terminating go when its Node is deleted", "etcd has 2 members", "reset: skipped (--dead)", "member a1 removed (asked formula)", "Node: deleted urban", "dropped urban")
	if got := hostnames(formula.srv.EtcdMembers()); !slices.Equal(got, []string{"formula"}) {
		t.Errorf("etcd members: %v", got)
	}
	if l.nodeExists("urban") || strings.Contains(l.rackText(), "name: urban") {
		t.Error("urban's Node or rack entry is still there")
	}
}

// TestRemoveRefusesRookOSD: an OSD deployment of Rook's on the node:
// refused with Rook's steps, nothing changed; another node's OSD does
// not matter.
func TestRemoveRefusesRookOSD(t *testing.T) {
	l := newRemoveLab(t)
	mastema := l.talos("mastema", nil, nil)
	l.node("mastema", "web-1")
	ctx := t.Context()
	makeRookOSD(t, l.cs, "0", "lailah", "")
	makeRookOSD(t, l.cs, "4", "mastema", "")
	before := l.rackText()
	_, err := l.run("", "mastema", "--yes", "--node", "mastema="+mastema.addr)
	if err == nil {
		t.Fatal("remove of a node with an OSD went through")
	}
	for _, w := range []string{"nothing was changed", "mastema runs Rook OSD(s) 4 (rook-ceph-osd-4)", "ceph osd out osd.<ID>",
		"ceph osd purge <ID> --yes-i-really-mean-it", "kubectl -n rook-ceph delete deployment rook-ceph-osd-<ID>"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q", w)
		}
	}
	if strings.Contains(err.Error(), "rook-ceph-osd-0") {
		t.Error("lailah's OSD named in mastema's refusal")
	}
	if len(mastema.got()) != 0 || l.rackText() != before || len(l.podsOn("mastema")) != 1 {
		t.Error("the refused remove changed something")
	}
	n, err := l.cs.CoreV1().Nodes().Get(ctx, "mastema", metav1.GetOptions{})
	must(t, err)
	if n.Spec.Unschedulable {
		t.Error("the refused remove cordoned mastema")
	}
}

func TestEtcdWarnings(t *testing.T) {
	for _, tc := range []struct {
		n    int
		dead bool
		want []string // substrings, in order; nil: no warning
	}{
		{5, false, nil},
		{4, true, nil},
		{3, false, []string{"from 3 members to 2"}},
		{2, false, []string{"needs both up", "1 member"}},
		{2, true, []string{"needs both up", "disaster recovery", "1 member"}},
	} {
		got := etcdWarnings("urban", tc.n, tc.dead)
		if len(got) != len(tc.want) {
			t.Errorf("%d members, dead %v: %q", tc.n, tc.dead, got)
			continue
		}
		for i, w := range tc.want {
			if !strings.Contains(got[i], w) {
				t.Errorf("%d members, dead %v: warning %d = %q, want %q", tc.n, tc.dead, i, got[i], w)
			}
		}
	}
}

// TestRemoveWithServe: with a serve running (its control socket, its
// inventory and its live rack, wired as serve wires them), the installed
// mark is cleared through it and it reloads the rack without the machine.
func TestRemoveWithServe(t *testing.T) {
	l := newRemoveLab(t)
	mastema := l.talos("mastema", nil, nil)
	l.node("mastema")
	st, err := inventory.Open(l.state)
	must(t, err)
	t.Cleanup(func() { st.Close() })
	st.Declare("mastema")
	must(t, st.MarkStage("mastema", "installed", "talos installed"))
	r, err := profiles.LoadFile(l.rack)
	must(t, err)
	live := newLiveRack(r, slog.New(slog.DiscardHandler))
	live.start(func(*profiles.Rack) *profiles.Booter { return nil })
	ln, err := listenControl(l.state)
	must(t, err)
	h := controlHandler(http.NotFoundHandler(), controlActions{
		reinstall: st.Reset,
		forget:    st.Forget,
		reload:    func() (string, error) { return live.reload(l.rack, st) },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveControl(ctx, ln, h, slog.New(slog.DiscardHandler)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("control socket: %v", err)
		}
	})

	out, err := l.run("", "mastema", "--yes", "--node", "mastema="+mastema.addr)
	if err != nil {
		t.Fatalf("remove: %v", err)
	}
	wantOutput(t, out, "forgot that mastema is installed", "the running rackboot serve reloaded the rack (",
		"removed mastema): it no longer serves mastema")
	if st.Installed("mastema") {
		t.Error("serve's inventory still marks mastema installed")
	}
	if live.Rack().Machine("mastema") != nil || live.Rack().Machine("verus") == nil {
		t.Error("serve's rack after the reload: mastema still there, or verus gone")
	}
}
