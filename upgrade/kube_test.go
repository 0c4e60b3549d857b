package upgrade

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/internal/syncbuf"
)

// The API server here has no kubelet, no scheduler and no
// kube-controller-manager: the test binds pods by setting spec.nodeName,
// marks them Ready itself, and (the one fault that cannot be made real)
// writes each PodDisruptionBudget's status (disruptionsAllowed, healthy
// counts, observedGeneration) that the disruption controller would compute.
// Evictions are real: the API server's eviction subresource checks the
// budget and deletes the pod (grace period 0: nothing recreates it).

type kube struct {
	t   *testing.T
	cfg *rest.Config
	cs  kubernetes.Interface
	dyn dynamic.Interface
}

func startKube(t *testing.T) *kube {
	env := kubetest.Start(t)
	return &kube{t: t, cfg: env.Config, cs: kubernetes.NewForConfigOrDie(env.Config), dyn: dynamic.NewForConfigOrDie(env.Config)}
}

func (k *kube) node(name, ip, osImage string) {
	k.t.Helper()
	ctx := k.t.Context()
	n, err := k.cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	n.Status.NodeInfo.OSImage = osImage
	if _, err := k.cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		k.t.Fatal(err)
	}
}

// setOSImage is what the kubelet of a new boot reports.
func (k *kube) setOSImage(name, osImage string) error {
	ctx := context.Background()
	n, err := k.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	n.Status.NodeInfo.OSImage = osImage
	_, err = k.cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

type podOpt func(*corev1.Pod)

func ownedBy(kind string) podOpt {
	return func(p *corev1.Pod) {
		yes := true
		p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: kind, Name: "owner", UID: types.UID("uid-" + kind), Controller: &yes}}
	}
}

func mirror(p *corev1.Pod) { p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "hash"} }

func labeled(k, v string) podOpt { return func(p *corev1.Pod) { p.Labels = map[string]string{k: v} } }

// pod creates a Running, Ready pod bound to node.
func (k *kube) pod(name, node string, opts ...podOpt) {
	k.t.Helper()
	ctx := k.t.Context()
	zero := int64(0)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: &zero,
			Containers:                    []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}},
		},
	}
	for _, o := range opts {
		o(p)
	}
	p, err := k.cs.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatalf("create pod %s: %v", name, err)
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if _, err := k.cs.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		k.t.Fatalf("pod %s status: %v", name, err)
	}
}

func (k *kube) pods(node string) []string {
	k.t.Helper()
	list, err := k.cs.CoreV1().Pods("").List(k.t.Context(), metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		k.t.Fatal(err)
	}
	var out []string
	for _, p := range list.Items {
		out = append(out, p.Name)
	}
	slices.Sort(out)
	return out
}

// pdb creates a budget over app=<app> and writes the status the disruption
// controller would (see the comment at the top of this file).
func (k *kube) pdb(app string, allowed int32) {
	k.t.Helper()
	one := intstr.FromInt32(1)
	p, err := k.cs.PolicyV1().PodDisruptionBudgets("default").Create(k.t.Context(), &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: app, Namespace: "default"},
		Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &one, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}},
	}, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	if err := k.setPDB(p.Name, allowed); err != nil {
		k.t.Fatal(err)
	}
}

func (k *kube) setPDB(name string, allowed int32) error {
	ctx := context.Background()
	p, err := k.cs.PolicyV1().PodDisruptionBudgets("default").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	p.Status = policyv1.PodDisruptionBudgetStatus{
		ObservedGeneration: p.Generation,
		DisruptionsAllowed: allowed,
		CurrentHealthy:     1 + allowed,
		DesiredHealthy:     1,
		ExpectedPods:       1 + allowed,
	}
	_, err = k.cs.PolicyV1().PodDisruptionBudgets("default").UpdateStatus(ctx, p, metav1.UpdateOptions{})
	return err
}

func (k *kube) unschedulable(node string) bool {
	k.t.Helper()
	n, err := k.cs.CoreV1().Nodes().Get(k.t.Context(), node, metav1.GetOptions{})
	if err != nil {
		k.t.Fatal(err)
	}
	return n.Spec.Unschedulable
}

// ceph installs the CephCluster CRD and object, as Rook's bundle would.
func (k *kube) ceph(cfgApply func([]*unstructured.Unstructured)) {
	k.t.Helper()
	var objs []*unstructured.Unstructured
	for _, doc := range strings.Split(kubetest.CephClusterYAML, "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			k.t.Fatal(err)
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
	cfgApply(objs)
}

// setCeph writes status.ceph.health through the status subresource, as
// Rook's operator does.
func (k *kube) setCeph(health string) error {
	ctx := context.Background()
	ri := k.dyn.Resource(CephClusterGVR).Namespace("rook-ceph")
	obj, err := ri.Get(ctx, "rook-ceph", metav1.GetOptions{})
	if err != nil {
		return err
	}
	_ = unstructured.SetNestedField(obj.Object, health, "status", "ceph", "health")
	_, err = ri.UpdateStatus(ctx, obj, metav1.UpdateOptions{})
	return err
}

func TestCordonDrain(t *testing.T) {
	k := startKube(t)
	ctx := t.Context()
	k.node("d1", "10.0.0.1", "")
	k.node("d2", "10.0.0.2", "")
	k.pod("plain", "d1")
	k.pod("db-0", "d1", labeled("app", "db"))
	k.pod("agent", "d1", ownedBy("DaemonSet"))
	k.pod("static", "d1", mirror)
	k.pod("elsewhere", "d2")
	k.pdb("db", 0)

	if err := Cordon(ctx, k.cs, "d1", true); err != nil {
		t.Fatal(err)
	}
	if !k.unschedulable("d1") || k.unschedulable("d2") {
		t.Fatal("cordon: d1 should be unschedulable, d2 not")
	}

	// The budget refuses db-0 (429) until the test relaxes it from the
	// progress callback, as the disruption controller would once another
	// replica is healthy elsewhere.
	var msgs []string
	relaxed := false
	res, err := Drain(ctx, k.cs, "d1", DrainOptions{Timeout: time.Minute, Retry: 20 * time.Millisecond, Progress: func(m string) {
		msgs = append(msgs, m)
		if strings.Contains(m, "refused") && !relaxed {
			relaxed = true
			if err := k.setPDB("db", 1); err != nil {
				t.Errorf("relax the budget: %v", err)
			}
		}
	}})
	if err != nil {
		t.Fatalf("drain: %v\n%s", err, strings.Join(msgs, "\n"))
	}
	t.Logf("drain: %+v\n%s", res, strings.Join(msgs, "\n"))
	slices.Sort(res.Evicted)
	if !slices.Equal(res.Evicted, []string{"default/db-0", "default/plain"}) {
		t.Errorf("evicted %v", res.Evicted)
	}
	if res.Refused < 1 {
		t.Errorf("no eviction was refused by the budget")
	}
	if !slices.Equal(res.Skipped, []string{"default/agent (DaemonSet)", "default/static (mirror pod)"}) {
		t.Errorf("skipped %v", res.Skipped)
	}
	if got := k.pods("d1"); !slices.Equal(got, []string{"agent", "static"}) {
		t.Errorf("pods left on d1: %v, want the DaemonSet and mirror pods", got)
	}
	if got := k.pods("d2"); !slices.Equal(got, []string{"elsewhere"}) {
		t.Errorf("pods on d2: %v", got)
	}
	// The eviction went through the budget: its allowance was spent.
	pdb, err := k.cs.PolicyV1().PodDisruptionBudgets("default").Get(ctx, "db", metav1.GetOptions{})
	if err != nil || pdb.Status.DisruptionsAllowed != 0 {
		t.Errorf("budget after the eviction: %+v, %v; want disruptionsAllowed 0", pdb.Status, err)
	}

	// A budget that never allows: the drain gives up naming the pod and the
	// budget's answer.
	k.pod("db-1", "d2", labeled("app", "db"))
	_, err = Drain(ctx, k.cs, "d2", DrainOptions{Timeout: 300 * time.Millisecond, Retry: 20 * time.Millisecond})
	t.Logf("drain d2: %v", err)
	if !errors.Is(err, ErrDrainTimeout) || !strings.Contains(err.Error(), "default/db-1") || !strings.Contains(err.Error(), "disruption budget") {
		t.Errorf("drain with a closed budget: %v", err)
	}
	if got := k.pods("d2"); !slices.Contains(got, "db-1") {
		t.Errorf("db-1 was evicted despite its budget: %v", got)
	}

	if err := Cordon(ctx, k.cs, "d1", false); err != nil {
		t.Fatal(err)
	}
	if k.unschedulable("d1") {
		t.Error("uncordon: d1 is still unschedulable")
	}
}

// flow is a three-node cluster (two control planes, a worker) at v1.13.0,
// with Ceph, a Talos test double and the gates Run gets from the CLI.
type flow struct {
	k     *kube
	talos *talosDouble
	cfg   Config
	out   *syncbuf.Buffer
	// states are every upgrade.json Run wrote, in order.
	states [][]byte
}

const (
	from   = "v1.13.0"
	target = "v1.13.1"
)

func newFlow(t *testing.T, k *kube, names [3]string) *flow {
	ctx := t.Context()
	ips := [3]string{"10.0.1.1", "10.0.1.2", "10.0.1.3"}
	versions := map[string]string{}
	for i, n := range names {
		k.node(n, ips[i], "Talos ("+from+")")
		k.pod("app-"+n, n)
		versions[ips[i]] = from
	}
	d := newTalosDouble(versions)
	d.members = []EtcdMember{{ID: 1, Hostname: names[0]}, {ID: 2, Hostname: names[1]}}
	byIP := map[string]string{ips[0]: names[0], ips[1]: names[1], ips[2]: names[2]}
	// The kubelet of the new boot reports the new OS image.
	d.onBooted = func(addr, version string) {
		if err := k.setOSImage(byIP[addr], "Talos ("+version+")"); err != nil {
			t.Errorf("kubelet double: %v", err)
		}
	}
	tv, _ := ParseVersion(target)
	installer := "factory.talos.dev/metal-installer/abc:" + target
	machines := []Machine{
		{Name: names[2], Installer: installer}, // worker first in the rack file: planned last
		{Name: names[0], ControlPlane: true, Address: ips[0], Installer: installer},
		{Name: names[1], ControlPlane: true, Installer: installer}, // address from the Node's InternalIP
	}
	current := map[string]string{}
	for i, n := range names {
		current[n] = versions[ips[i]]
	}
	plan, err := MakePlan(machines, current, tv)
	if err != nil {
		t.Fatal(err)
	}
	resolve := func(ctx context.Context, name string) (string, error) {
		if name == names[0] {
			return ips[0], nil
		}
		return NodeAddress(ctx, k.cs, name)
	}
	ceph := CephGate(k.dyn, "rook-ceph", "rook-ceph")
	f := &flow{k: k, talos: d, out: &syncbuf.Buffer{}}
	f.cfg = Config{
		StateDir:      t.TempDir(),
		Plan:          plan,
		Talos:         d,
		Kube:          k.cs,
		Gates:         []Gate{EtcdGate(d, plan.ControlPlanes(), resolve), ceph, NodesReadyGate(k.cs)},
		After:         []Gate{ceph},
		Out:           f.out,
		Poll:          10 * time.Millisecond,
		GateTimeout:   300 * time.Millisecond,
		RebootTimeout: time.Minute,
		ReadyTimeout:  time.Minute,
		Drain:         DrainOptions{Timeout: time.Minute, Retry: 10 * time.Millisecond},
	}
	_ = ctx
	return f
}

func (f *flow) run(ctx context.Context, resume bool) (*State, error) {
	cfg := f.cfg
	cfg.Resume = resume
	return run(ctx, cfg, func(s *State) {
		b, err := json.Marshal(s)
		if err != nil {
			panic(err)
		}
		f.states = append(f.states, b)
	})
}

func TestRollingUpgrade(t *testing.T) {
	k := startKube(t)
	k.ceph(func(objs []*unstructured.Unstructured) {
		t.Helper()
		if _, err := bundles.Apply(t.Context(), k.cfg, objs, bundles.WithPollInterval(50*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	})
	if err := k.setCeph("HEALTH_OK"); err != nil {
		t.Fatal(err)
	}
	names := [3]string{"cp1", "cp2", "w1"}
	f := newFlow(t, k, names)
	ctx := t.Context()

	// During the second node (cp2) Ceph turns HEALTH_WARN, as when its OSDs
	// go down with the reboot and do not come back.
	f.talos.onUpgrade = func(_ context.Context, addr string) error {
		if addr == "10.0.1.2" {
			return k.setCeph("HEALTH_WARN")
		}
		return nil
	}
	st, err := f.run(ctx, false)
	t.Logf("first run:\n%s", f.out)
	var se *StepError
	if !errors.As(err, &se) {
		t.Fatalf("first run: %v, want a StepError", err)
	}
	if se.Node != "cp2" || se.Step != StepSettle || !strings.Contains(se.Gate, "Ceph is HEALTH_OK") || !strings.Contains(se.Why, "HEALTH_WARN") {
		t.Errorf("stopped at %+v", se)
	}
	if !strings.Contains(err.Error(), "node cp2") || !strings.Contains(err.Error(), "HEALTH_WARN") {
		t.Errorf("message %q does not say where and why", err)
	}
	onDisk, err := ReadState(f.cfg.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	if got := phases(onDisk); !slices.Equal(got, []string{"cp1=done", "cp2=uncordoned", "w1=pending"}) {
		t.Errorf("state after the failed gate: %v", got)
	}
	if onDisk.Failed == nil || onDisk.Failed.Node != "cp2" || !strings.Contains(onDisk.Failed.Why, "HEALTH_WARN") {
		t.Errorf("state file does not record the failure: %+v", onDisk.Failed)
	}
	if !slices.Equal(phases(st), phases(onDisk)) {
		t.Errorf("returned state %v differs from the file %v", phases(st), phases(onDisk))
	}
	if k.unschedulable("w1") {
		t.Error("w1 was touched before cp2 was healthy")
	}

	// Without --resume an unfinished upgrade is refused.
	if _, err := f.run(ctx, false); !errors.Is(err, ErrUnfinished) || !strings.Contains(err.Error(), "--resume") {
		t.Errorf("second run without resume: %v", err)
	}
	// Another target is refused too.
	other := f.cfg
	other.Plan.Target, _ = ParseVersion("v1.13.2")
	other.Resume = true
	if _, err := Run(ctx, other); !errors.Is(err, ErrUnfinished) || !strings.Contains(err.Error(), "upgrade to v1.13.1 is not finished") {
		t.Errorf("resume with another target: %v", err)
	}

	// Ceph recovers; resume finishes.
	if err := k.setCeph("HEALTH_OK"); err != nil {
		t.Fatal(err)
	}
	st, err = f.run(ctx, true)
	t.Logf("resumed:\n%s", f.out)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	if got := phases(st); !slices.Equal(got, []string{"cp1=done", "cp2=done", "w1=done"}) || st.Failed != nil {
		t.Errorf("final state %v, failed %+v", got, st.Failed)
	}
	for _, ip := range []string{"10.0.1.1", "10.0.1.2", "10.0.1.3"} {
		if n := f.talos.requestCount(ip); n != 1 {
			t.Errorf("%s: %d upgrade requests, want 1", ip, n)
		}
		if v, _ := f.talos.Version(ctx, ip); v != target {
			t.Errorf("%s runs %s", ip, v)
		}
	}
	for _, n := range names {
		if k.unschedulable(n) {
			t.Errorf("%s is still cordoned", n)
		}
		if got := k.pods(n); len(got) != 0 {
			t.Errorf("%s still has pods %v (no controller recreates them here)", n, got)
		}
	}
	out := f.out.String()
	// Control planes first, then the worker; each step printed.
	for _, want := range []string{
		"[1/3] cp1: cordoned", "[1/3] cp1: drained: 1 pod(s) evicted", "[1/3] cp1: upgrade requested: factory.talos.dev/metal-installer/abc:v1.13.1",
		"[1/3] cp1: runs v1.13.1 and is Ready", "[1/3] cp1: uncordoned", "[1/3] cp1: done",
		`[2/3] cp2: gate "Ceph is HEALTH_OK (CephCluster rook-ceph/rook-ceph)" does not hold after the node: ceph health is HEALTH_WARN`,
		"resuming the upgrade to v1.13.1", "[2/3] cp2: done", "[3/3] w1: done", "upgrade to v1.13.1 finished: 3 node(s)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Index(out, "[2/3] cp2: cordoned") > strings.Index(out, "[3/3] w1: cordoned") {
		t.Error("w1 was started before cp2")
	}

	// kill -9 at any point leaves one of these files: each parses, and the
	// phases only move forward.
	last := map[string]int{}
	for i, b := range f.states {
		s, err := ParseState(b)
		if err != nil {
			t.Fatalf("state %d does not parse: %v\n%s", i, err, b)
		}
		for _, n := range s.Nodes {
			if p := n.Phase.index(); p < last[n.Name] {
				t.Errorf("state %d: %s went back to %s", i, n.Name, n.Phase)
			} else {
				last[n.Name] = p
			}
		}
	}
	t.Logf("%d state writes", len(f.states))

	// Resume once finished: nothing to do, no request.
	if _, err := f.run(ctx, true); err != nil {
		t.Errorf("resume after the end: %v", err)
	}
	if n := f.talos.requestCount("10.0.1.1"); n != 1 {
		t.Errorf("cp1 requested again after the end: %d", n)
	}
}

func phases(s *State) []string {
	var out []string
	for _, n := range s.Nodes {
		out = append(out, n.Name+"="+string(n.Phase))
	}
	return out
}

// TestCrashResume: the run is cut (context cancelled, like Ctrl-C or a kill
// between two writes) right after a node accepted its upgrade; resuming
// does not request the upgrade a second time.
func TestCrashResume(t *testing.T) {
	k := startKube(t)
	k.ceph(func(objs []*unstructured.Unstructured) {
		if _, err := bundles.Apply(t.Context(), k.cfg, objs, bundles.WithPollInterval(50*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	})
	if err := k.setCeph("HEALTH_OK"); err != nil {
		t.Fatal(err)
	}

	t.Run("cut while waiting for the new version", func(t *testing.T) {
		f := newFlow(t, k, [3]string{"a1", "a2", "a3"})
		f.talos.manual = true // the node reboots when the test says
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		f.talos.onVersion = func(addr string) {
			if addr == "10.0.1.1" && f.talos.requestCount(addr) == 1 {
				cancel()
			}
		}
		_, err := f.run(ctx, false)
		t.Logf("cut:\n%s%v", f.out, err)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want cancelled", err)
		}
		st, rerr := ReadState(f.cfg.StateDir)
		if rerr != nil {
			t.Fatal(rerr)
		}
		if n := st.Nodes[0]; n.Phase != Upgrading || n.Step != StepWait || n.Requested == nil {
			t.Fatalf("state after the cut: %+v", n)
		}
		f.talos.onVersion = nil
		f.talos.reboot("10.0.1.1", target) // the node finishes its upgrade meanwhile
		f.talos.manual = false
		if _, err := f.run(t.Context(), true); err != nil {
			t.Fatalf("resume: %v\n%s", err, f.out)
		}
		if n := f.talos.requestCount("10.0.1.1"); n != 1 {
			t.Errorf("a1: %d upgrade requests, want 1", n)
		}
	})

	t.Run("cut inside the request, after the node accepted", func(t *testing.T) {
		f := newFlow(t, k, [3]string{"b1", "b2", "b3"})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		// The node accepted (and reboots), but the run dies before it
		// could record that.
		f.talos.onUpgrade = func(context.Context, string) error {
			cancel()
			return context.Canceled
		}
		_, err := f.run(ctx, false)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want cancelled", err)
		}
		st, _ := ReadState(f.cfg.StateDir)
		if n := st.Nodes[0]; n.Phase != Drained || n.Step != StepUpgrade || n.Requested != nil {
			t.Fatalf("state after the cut: %+v", n)
		}
		f.talos.onUpgrade = nil
		// Resume once the node runs the target: Version says so, no request.
		deadline := time.Now().Add(time.Minute)
		for v, _ := f.talos.Version(t.Context(), "10.0.1.1"); v != target; v, _ = f.talos.Version(t.Context(), "10.0.1.1") {
			if time.Now().After(deadline) {
				t.Fatal("the double never rebooted")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if _, err := f.run(t.Context(), true); err != nil {
			t.Fatalf("resume: %v\n%s", err, f.out)
		}
		if n := f.talos.requestCount("10.0.1.1"); n != 1 {
			t.Errorf("b1: %d upgrade requests, want 1", n)
		}
		if !strings.Contains(f.out.String(), "[1/3] b1: runs v1.13.1 already: no upgrade request") {
			t.Errorf("output:\n%s", f.out)
		}
	})
}
