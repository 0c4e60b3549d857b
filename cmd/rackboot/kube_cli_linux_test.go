package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/handoff"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/kubestate"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
	"github.com/dotfile/rackboot/upgrade"
)

// kubeLab is the power lab's rack and state directory copied into a real
// kube-apiserver (kubestate.Import, as rackboot handoff does), and a
// laptop directory with neither a rack file nor a state directory that
// runs the commands with --kube.
type kubeLab struct {
	*powerLab
	env     *kubetest.Env
	state   *kubestate.Store // the handoff's view, for checks
	away    string           // the other laptop's working directory
	outputs bytes.Buffer
}

func newKubeLab(t *testing.T) *kubeLab {
	l := &kubeLab{powerLab: newPowerLab(t), env: kubetest.Start(t), away: t.TempDir()}
	for _, k := range []string{"RACKBOOT_BMC_PASSWORD", "RACKBOOT_BMC_PASSWORD_CP1", "RACKBOOT_BMC_PASSWORD_W1", kubeEnv, "POD_NAMESPACE", "KUBECONFIG"} {
		t.Setenv(k, "")
	}
	l.mustRun(t, l.sushy.Password+"\n", "bmc", "set-password", "cp1")
	l.mustRun(t, l.ipmi.Password+"\n", "bmc", "set-password", "w1")
	if _, _, err := profiles.LoadOrCreateSecrets(l.powerLab.state, time.Now); err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.Open(l.powerLab.state, inventory.WithNames(func(n string) bool { return n == "cp1" || n == "w1" || n == "w2" }))
	if err != nil {
		t.Fatal(err)
	}
	inv.Record(pxe.Event{Name: "cp1", Addr: netip.MustParseAddr("10.0.0.11"), Stage: pxe.StageConfig})
	inv.Record(pxe.Event{Name: "w1", Addr: netip.MustParseAddr("10.0.0.21"), Stage: pxe.StageConfig})
	if err := inv.MarkStage("cp1", inventory.StageInstalled, "rebooting"); err != nil {
		t.Fatal(err)
	}
	if err := inv.Close(); err != nil {
		t.Fatal(err)
	}
	cs := kubernetes.NewForConfigOrDie(l.env.Config)
	ctx := ctxT(t)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: handoff.Namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if l.state, err = kubestate.New(cs, handoff.Namespace); err != nil {
		t.Fatal(err)
	}
	if err := l.state.Import(ctx, l.powerLab.state, l.rack); err != nil {
		t.Fatal(err)
	}
	return l
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// kube runs rackboot -v in the other laptop's directory (-f and the
// state directory there do not exist) with args, then --kube and the
// cluster's kubeconfig unless noFlags.
func (l *kubeLab) kube(t *testing.T, noFlags bool, args ...string) (string, error) {
	t.Helper()
	if !noFlags {
		args = append(args, "--kube", "--kubeconfig", l.env.Kubeconfig)
	}
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(""))
	root.SetArgs(append([]string{"-v", "-f", filepath.Join(l.away, "rack.yaml")}, args...))
	err := root.ExecuteContext(context.Background())
	fmt.Fprintf(&l.outputs, "$ rackboot %s\n%s%s%v\n", strings.Join(args, " "), out.String(), errb.String(), err)
	t.Logf("rackboot %s:\n%s%s(err %v)", strings.Join(args, " "), out.String(), errb.String(), err)
	return out.String(), err
}

func (l *kubeLab) mustKube(t *testing.T, args ...string) string {
	t.Helper()
	out, err := l.kube(t, false, args...)
	if err != nil {
		t.Fatalf("rackboot %s --kube: %v", strings.Join(args, " "), err)
	}
	return out
}

// The laptop's commands with --kube against a real kube-apiserver, from a
// directory with no rack file and no state directory: status and machines
// show what they show from the state directory; machine reinstall changes
// the record a replica (a second client watching, as serve --kube does)
// takes in; power status reaches the real BMC emulators with the passwords
// from the Secret; upgrade.json and talosVersion go through ConfigMaps.
// Nothing appears in the laptop's directory and no secret is printed.
func TestKubeCommands(t *testing.T) {
	l := newKubeLab(t)
	start := time.Now()

	// status: the same machines as from the state directory.
	local, _ := l.powerLab.run(t, "", "status", "--json", "--offline")
	var want, got []inventory.Machine
	if err := json.Unmarshal([]byte(local), &want); err != nil || len(want) != 2 {
		t.Fatalf("status --offline: %v %d machines\n%s", err, len(want), local)
	}
	if err := json.Unmarshal([]byte(l.mustKube(t, "status", "--json")), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("status --kube:\n%+v\nfrom the state directory:\n%+v", got, want)
	}
	if out := l.mustKube(t, "status"); !strings.Contains(out, "cp1") || !strings.Contains(out, "installed") {
		t.Errorf("status --kube table:\n%s", out)
	}
	if _, err := l.kube(t, false, "status", "--offline"); err == nil || !strings.Contains(err.Error(), "leave out --offline") {
		t.Errorf("status --kube --offline: %v", err)
	}

	// machines: the same known machines; from kubernetes.
	var wantRep, gotRep machinesReport
	local, _ = l.powerLab.run(t, "", "machines", "--json")
	if err := json.Unmarshal([]byte(local), &wantRep); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(l.mustKube(t, "machines", "--json")), &gotRep); err != nil {
		t.Fatal(err)
	}
	if gotRep.From != fromKube || !reflect.DeepEqual(gotRep.Known, wantRep.Known) || len(wantRep.Known) != 3 {
		t.Errorf("machines --kube: from %q\n%+v\nfrom the state directory:\n%+v", gotRep.From, gotRep.Known, wantRep.Known)
	}
	if out := l.mustKube(t, "machines"); !strings.Contains(out, "rackboot in Kubernetes") {
		t.Errorf("machines --kube table does not say where it read:\n%s", out)
	}

	l.checkReinstall(t)
	l.checkPower(t)
	l.checkUpgradeState(t)
	l.checkFlags(t)
	l.checkAdopt(t)
	l.checkDiscovered(t)
	l.checkReload(t)

	if ents, err := os.ReadDir(l.away); err != nil || len(ents) != 0 {
		t.Errorf("the laptop's directory holds %v (%v): --kube must create nothing locally", ents, err)
	}
	for _, secret := range []string{l.sushy.Password, l.ipmi.Password, "PRIVATE KEY"} {
		if strings.Contains(l.outputs.String(), secret) {
			t.Errorf("a secret (%.12s…) appears in rackboot's output", secret)
		}
	}
	t.Logf("measured: the --kube commands took %v", time.Since(start).Round(time.Millisecond))
}

// checkReinstall: a replica's inventory watching the records (as serve
// --kube does) sees cp1 installed, then not installed after machine
// reinstall cp1 --kube; a second client reads the record changed.
func (l *kubeLab) checkReinstall(t *testing.T) {
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	replica, err := kubestate.New(kubernetes.NewForConfigOrDie(l.env.Config), handoff.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := replica.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	watched := make(chan error, 1)
	go func() { watched <- replica.Machines().Watch(ctx, inv.Observe) }()
	defer func() { cancel(); <-watched }()
	if !inv.Installed("cp1") {
		t.Fatal("the replica does not see cp1 installed before the reinstall")
	}
	out := l.mustKube(t, "machine", "reinstall", "cp1")
	if !strings.Contains(out, "cp1 will install again at its next network boot") {
		t.Errorf("reinstall --kube:\n%s", out)
	}
	ms, err := l.state.Machines().Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := findMachine(ms, "cp1"); !ok || m.Installed || !strings.Contains(m.Timeline[len(m.Timeline)-1].Detail, "reset") {
		t.Errorf("cp1's record after reinstall --kube: %+v", m)
	}
	deadline := time.Now().Add(10 * time.Second)
	for inv.Installed("cp1") {
		if time.Now().After(deadline) {
			t.Fatal("the replica's watch did not take the reinstall in within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := l.kube(t, false, "machine", "reinstall", "nosuch"); err == nil || !strings.Contains(err.Error(), "configmap "+handoff.Namespace+"/rackboot-rack") {
		t.Errorf("reinstall of a machine not in the rack: %v", err)
	}
}

// checkPower: power status through the real emulators with the passwords
// from the Secret (the environment has none, the laptop no state dir),
// with --kube and with RACKBOOT_KUBE=1.
func (l *kubeLab) checkPower(t *testing.T) {
	var rs []powerResult
	if err := json.Unmarshal([]byte(l.mustKube(t, "power", "status", "--json", "cp1", "w1")), &rs); err != nil || len(rs) != 2 {
		t.Fatalf("power status --kube --json: %v %+v", err, rs)
	}
	for _, r := range rs {
		if r.Error != "" || r.State != "off" {
			t.Errorf("power status --kube %s: %+v", r.Name, r)
		}
	}
	if out := l.mustKube(t, "bmc", "check", "w1"); !strings.Contains(out, "password from secret "+handoff.Namespace+"/"+kubestate.BMCPasswordsName) {
		t.Errorf("bmc check --kube does not say the password came from the Secret:\n%s", out)
	}
	// reinstall --power: the network boot once and power through the BMC
	// with the Secret's password.
	out := l.mustKube(t, "machine", "reinstall", "w1", "--power", "--no-wait")
	for _, want := range []string{"w1 will install again", "read back: target Pxe", "w1: powered on", "not watching"} {
		if !strings.Contains(out, want) {
			t.Errorf("reinstall w1 --power --kube lacks %q:\n%s", want, out)
		}
	}
	if got := l.ipmi.ChassisFile(t, "boot"); got != "pxe" {
		t.Errorf("ipmi_sim's chassis boot is %q after reinstall --power --kube, want pxe", got)
	}
	if out := l.ipmi.IPMITool(t, "chassis", "power", "status"); !strings.Contains(out, "Chassis Power is on") {
		t.Errorf("ipmitool after reinstall --power --kube: %q", out)
	}
	t.Setenv(kubeEnv, "1")
	out, err := l.kube(t, true, "power", "status", "w1", "--kubeconfig", l.env.Kubeconfig)
	if err != nil || !strings.Contains(out, "ipmi") || !strings.Contains(out, "on") {
		t.Errorf("power status with %s=1: %v\n%s", kubeEnv, err, out)
	}
	t.Setenv(kubeEnv, "")
	// Without --kube the laptop has no password: the Secret was what worked.
	if _, _, err := runRoot(t, "-f", l.rack, "--state", filepath.Join(l.away, "none"), "power", "status", "w1"); err == nil || !strings.Contains(err.Error(), "1 of 1 machine(s) failed") {
		t.Errorf("power status without --kube and without a password: %v", err)
	}
}

// checkUpgradeState: upgrade.json written by one laptop is read by
// another (--resume from elsewhere); a stale write is refused; talosVersion
// is set in the rack's ConfigMap with the rest of the file kept.
func (l *kubeLab) checkUpgradeState(t *testing.T) {
	ctx := ctxT(t)
	laptop := func() upgrade.StateStore {
		a := &app{kube: l.state}
		st, err := a.upgradeState()
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	one, other := laptop(), laptop()
	if st, err := upgrade.LoadState(one); st != nil || err != nil {
		t.Fatalf("no upgrade yet: %+v %v", st, err)
	}
	if _, err := l.state.Document(upgrade.StateFile); err != nil {
		t.Fatal(err)
	}
	rec := &upgrade.State{Target: "v1.13.1", Started: time.Now().UTC().Truncate(time.Second),
		Nodes: []upgrade.NodeState{{Name: "cp1", Phase: upgrade.Done}, {Name: "w1", Phase: upgrade.Drained, Step: "upgrade"}}}
	data, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := other.ReadState(); err != nil {
		t.Fatal(err)
	}
	if err := one.WriteState(data); err != nil {
		t.Fatal(err)
	}
	got, err := upgrade.LoadState(laptop())
	if err != nil || got == nil || !reflect.DeepEqual(got, rec) {
		t.Fatalf("another laptop reads %+v (%v), want %+v", got, err, rec)
	}
	if err := other.WriteState(data); err == nil || !strings.Contains(err.Error(), "changed by someone else") {
		t.Errorf("a laptop writing over a record it has not read: %v", err)
	}
	if w := one.Where(); w != "configmap "+handoff.Namespace+"/rackboot-upgrade (upgrade.json)" {
		t.Errorf("Where: %q", w)
	}

	// The real command: a dry run reads the record another laptop left.
	out := l.mustKube(t, "upgrade", "--talos", "v1.13.1", "--dry-run", "--talos-endpoint", "127.0.0.1:1")
	for _, want := range []string{"upgrade to Talos v1.13.1:", "1. cp1", "gates now:",
		"an unfinished upgrade to v1.13.1 is recorded in configmap " + handoff.Namespace + "/rackboot-upgrade (upgrade.json): go on with --resume"} {
		if !strings.Contains(out, want) {
			t.Errorf("upgrade --kube --dry-run lacks %q", want)
		}
	}

	before, err := l.state.RackFile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := &app{kube: l.state}
	where, err := a.writeTalosVersion(ctx, "v1.13.1")
	if err != nil || !strings.Contains(where, "rollout restart") {
		t.Fatalf("writeTalosVersion: %q %v", where, err)
	}
	after, err := l.state.RackFile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if wantRack := strings.Replace(string(before), "talosVersion: v1.13.0", "talosVersion: v1.13.1", 1); string(after) != wantRack || string(after) == string(before) {
		t.Errorf("rack after writeTalosVersion:\n%s", after)
	}
}

// checkFlags: --namespace without --kube, a RACKBOOT_KUBE that is not a
// boolean, a namespace with nothing in it.
func (l *kubeLab) checkFlags(t *testing.T) {
	if _, err := l.kube(t, true, "status", "--namespace", "x"); err == nil || !strings.Contains(err.Error(), "--namespace is for --kube only") {
		t.Errorf("--namespace without --kube: %v", err)
	}
	if _, err := l.kube(t, true, "machines", "--kubeconfig", l.env.Kubeconfig); err == nil || !strings.Contains(err.Error(), "--kubeconfig is for --kube only") {
		t.Errorf("machines --kubeconfig without --kube: %v", err)
	}
	t.Setenv(kubeEnv, "maybe")
	if _, err := l.kube(t, true, "status"); err == nil || !strings.Contains(err.Error(), kubeEnv+"=1") {
		t.Errorf("%s=maybe: %v", kubeEnv, err)
	}
	t.Setenv(kubeEnv, "")
	_, err := l.kube(t, false, "machines", "--namespace", "empty")
	if err == nil || !strings.Contains(err.Error(), "rackboot handoff") || !errors.Is(err, kubestate.ErrNotFound) {
		t.Errorf("machines --kube in a namespace without rackboot: %v", err)
	}
}

// checkAdopt: machine adopt --kube writes the machine into the rack's
// ConfigMap with the rest of the file kept; an invalid adoption writes
// nothing.
func (l *kubeLab) checkAdopt(t *testing.T) {
	ctx := ctxT(t)
	before, err := l.state.RackFile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A replica's rack, as serve --kube keeps it, with its watch.
	r, err := l.state.Rack(ctx)
	if err != nil {
		t.Fatal(err)
	}
	live := newLiveRack(r, slog.New(slog.DiscardHandler))
	live.start(func(*profiles.Rack) *profiles.Booter { return nil })
	inv, err := l.state.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	watched := make(chan error, 1)
	ks := &kubeServe{state: l.state, log: slog.New(slog.DiscardHandler)}
	go func() { watched <- ks.watchRack(wctx, live, inv) }()
	defer func() { cancel(); <-watched }()

	out := l.mustKube(t, "machine", "adopt", "52:54:00:00:00:09", "--name", "w3", "--role", "worker")
	if !strings.Contains(out, "adopted w3 (52:54:00:00:00:09, worker) into configmap "+handoff.Namespace+"/rackboot-rack") {
		t.Errorf("adopt --kube:\n%s", out)
	}
	after, err := l.state.RackFile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r, err = profiles.Load("rack.yaml", after)
	if err != nil || r.Machine("w3") == nil || !strings.HasPrefix(string(after), string(before)) {
		t.Fatalf("the rack after adopt --kube (%v):\n%s", err, after)
	}
	deadline := time.Now().Add(10 * time.Second)
	for live.Rack().Machine("w3") == nil {
		if time.Now().After(deadline) {
			t.Fatal("the replica's rack watch did not take w3 in within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if name, ok := live.macName("52:54:00:00:00:09"); !ok || name != "w3" {
		t.Errorf("the replica names 52:54:00:00:00:09 %q (%v), want w3", name, ok)
	}
	if _, err := l.kube(t, false, "machine", "adopt", "52:54:00:00:00:0a", "--name", "w3", "--role", "worker"); err == nil {
		t.Error("adopting a second w3 went through")
	}
	if again, _ := l.state.RackFile(ctx); string(again) != string(after) {
		t.Errorf("a refused adoption changed the rack:\n%s", again)
	}
}
