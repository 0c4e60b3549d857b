//go:build linux

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/internal/tcpproxy"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/lab"
	"github.com/dotfile/rackboot/lab/standin/install"
	"github.com/dotfile/rackboot/lab/standin/installer"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/upgrade"
)

const (
	upgradeFrom = "v1.13.0"
	upgradeTo   = "v1.13.1"
)

// upgradeMachines are the lab's three machines in the rack file's order:
// the upgrade's order too (control planes first).
var upgradeMachines = []string{"cp1", "w1", "w2"}

// upgradeRack is testRack with three lab machines behind IPMI BMCs (one
// control plane, two workers), UEFI, and comments that the removal of w2
// must keep. w2's entry is the last one and carries no comment of its
// own.
func upgradeRack() string {
	r := strings.Replace(testRack, "machines:\n  - name: cp1\n", "machines:\n  # the control plane first: it is upgraded first\n  - name: cp1\n", 1)
	r = strings.Replace(r, "    address: 10.77.0.11/24\n",
		"    address: 10.77.0.11/24\n    bmc:\n      address: 10.77.0.31\n      protocol: ipmi\n      user: admin\n      firmware: uefi\n", 1)
	r = strings.Replace(r, "    address: 10.77.0.12/24\n",
		"    address: 10.77.0.12/24 # w1 stays\n    bmc:\n      address: 10.77.0.32\n      protocol: ipmi\n      user: admin\n      firmware: uefi\n"+upgradeW2, 1)
	return strings.Replace(r, "  machines: 1\n", "  machines: 3\n", 1)
}

// upgradeW2 is w2's entry, exactly what `machine remove w2` must take out.
const upgradeW2 = `  - name: w2
    role: worker
    select:
      mac: ["52:54:00:e2:e0:03"]
    address: 10.77.0.13/24
    bmc:
      address: 10.77.0.33
      protocol: ipmi
      user: admin
      firmware: uefi
`

// TestUpgradeAndRemoveUEFI: issue 15's day-two checks on one lab of three
// UEFI machines (cp1 a control plane, w1 and w2 workers) behind IPMI BMCs,
// every rackboot command run on the lab's network (`lab exec`), as a user:
//
//   - they netboot, install and boot from their disks into configured mode;
//     every Talos API (workers: with a certificate from cp1's trustd)
//     answers v1.13.0 to the rack's admin talosconfig.
//   - A real kube-apiserver (internal/kubetest) stands in for the cluster's:
//     the stand-in runs no kubelet, so the test writes the Nodes' status
//     (Ready, osImage) — after each machine's upgraded boot it reports the
//     new osImage, as the node's kubelet would (the one fake: no kubelet
//     can run here) — and Rook's CephCluster status (no Rook operator).
//   - `rackboot upgrade --talos v1.13.1` (serve mirrors a v1.13.1 installer:
//     `lab up --standin-version`): cp1 upgrades; the test turns Ceph to
//     HEALTH_WARN when w1 is cordoned; w1 upgrades and the upgrade stops
//     after it with exit code 1, the Ceph gate named and --resume advised;
//     upgrade.json records w1, the settle step and the gate.
//   - HEALTH_OK, then `--resume` finishes w1 and upgrades w2. Every Talos
//     API answers v1.13.1; each machine's console shows the image pulled
//     and the upgraded boot; each disk's ESP holds the v1.13.1 image's
//     initramfs and STATE names its image; the rack file says v1.13.1.
//   - `rackboot machine remove w2`: drained, reset through its Talos API
//     (STATE and EPHEMERAL: the stand-in wipes its system disk's first and
//     last MiB), the machine powers off, its Node is deleted, rack.yaml
//     loses exactly w2's entry (every comment kept; lab.machines 3 → 2)
//     and the lab's serve reloads it.
func TestUpgradeAndRemoveUEFI(t *testing.T) {
	s := newScenario(t, "u")
	rackText := upgradeRack()
	if err := os.WriteFile(s.rack, []byte(rackText), 0o600); err != nil {
		t.Fatal(err)
	}
	rack, err := profiles.Load(s.rack, []byte(rackText))
	if err != nil {
		t.Fatalf("%v\n%s", err, rackText)
	}
	begin := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Minute)
	defer cancel()
	env := kubetest.Start(t)
	k := newUpgradeKube(t, env)

	out := s.labUpArgs(ctx, []string{"lab", "up", "--name", s.name, "--machines", "3", "--firmware", "uefi",
		"--standin", prepared.standin, "--powered-off", "--no-wait", "--standin-version", upgradeTo})
	if !strings.Contains(out, "--standin-version "+upgradeTo) {
		t.Errorf("lab up did not pass --standin-version to serve:\n%s", out)
	}
	// The admin kubeconfig names the API server at 127.0.0.1:PORT: the
	// same address inside the lab's namespace reaches it.
	s.forwardIntoLab(t, env.URL)
	labExec := func(args ...string) (string, error) {
		return s.cli(ctx, append([]string{"lab", "exec", "--name", s.name, "--"}, args...)...)
	}
	mustExec := func(args ...string) string {
		t.Helper()
		out, err := labExec(args...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return out
	}

	installAndBoot(ctx, t, s, mustExec)
	logTiming(t, "lab up → three machines running from their disks", time.Since(begin))
	talos := newLabTalos(ctx, t, s, rack)
	for _, name := range upgradeMachines {
		if v := talos.waitVersion(ctx, t, name, upgradeFrom, 4*time.Minute); v != upgradeFrom {
			t.Fatalf("%s's Talos API: version %q, want %s", name, v, upgradeFrom)
		}
	}
	logTiming(t, "lab up → every Talos API answers", time.Since(begin))

	k.ceph(ctx, "HEALTH_OK")
	for _, name := range upgradeMachines {
		k.node(ctx, name, talos.addr[name], "Talos ("+upgradeFrom+")")
	}
	kubelet := startKubelet(ctx, t, s, k)

	if !t.Run("upgrade", func(t *testing.T) { upgradeWithResume(ctx, t, s, k, labExec) }) {
		return
	}
	kubelet.stop()
	checkUpgraded(ctx, t, s, rack, talos)
	logTiming(t, "lab up → upgraded", time.Since(begin))

	t.Run("remove-w2", func(t *testing.T) { removeWorker(ctx, t, s, k, mustExec) })
	logTiming(t, "whole test", time.Since(begin))
}

// installAndBoot powers the three machines on with a network boot once,
// waits until each is installed and has powered itself off, then powers
// them on again (disk first) and waits until each runs from its disk.
func installAndBoot(ctx context.Context, t *testing.T, s *scenario, exec func(...string) string) {
	t.Helper()
	start := time.Now()
	out := exec(append([]string{"rackboot", "power", "on", "--netboot"}, upgradeMachines...)...)
	if n := strings.Count(out, "powered on"); n != len(upgradeMachines) {
		t.Errorf("power on --netboot: %d machines powered on, want %d:\n%s", n, len(upgradeMachines), out)
	}
	a := s.api()
	st := s.labState()
	for _, name := range upgradeMachines {
		if _, err := a.waitMachine(ctx, name, installed); err != nil {
			t.Fatal(err)
		}
	}
	logTiming(t, "power on --netboot → three installed", time.Since(start))
	for _, name := range upgradeMachines {
		vm := st.VM(name)
		if vm == nil {
			t.Fatalf("lab state has no VM %s: %+v", name, st.VMs)
		}
		s.stoppedReport(ctx, t, vm, name)
	}
	ms, err := a.machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := map[string]inventory.Machine{}
	for _, name := range upgradeMachines {
		before[name], _ = machine(ms, name)
	}
	start = time.Now()
	exec(append([]string{"rackboot", "power", "on"}, upgradeMachines...)...)
	for _, name := range upgradeMachines {
		checkBoot(t, s.lab(), name, "disk")
		waitDiskBoot(ctx, t, a, name, before[name])
	}
	logTiming(t, "power on → three running from their disks", time.Since(start))
}

// upgradeWithResume runs the upgrade, which stops after w1 on the Ceph
// gate, then resumes it once Ceph is HEALTH_OK again.
func upgradeWithResume(ctx context.Context, t *testing.T, s *scenario, k *upgradeKube, labExec func(...string) (string, error)) {
	args := []string{"rackboot", "upgrade", "--talos", upgradeTo, "--kubeconfig", k.env.Kubeconfig,
		"--gate-timeout", "40s", "--reboot-timeout", "6m", "--drain-timeout", "1m"}
	warned := make(chan struct{})
	wctx, stopWatch := context.WithCancel(ctx)
	go func() {
		defer close(warned)
		// Ceph degrades while w1 upgrades: from its cordon on.
		if err := k.waitCordoned(wctx, "w1"); err != nil {
			t.Errorf("w1 was never cordoned: %v", err)
			return
		}
		k.setCeph(ctx, t, "HEALTH_WARN")
	}()
	start := time.Now()
	out, err := labExec(args...)
	logTiming(t, "upgrade → stopped on the Ceph gate", time.Since(start))
	stopWatch() // an upgrade that ended before w1's cordon
	<-warned
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("upgrade with Ceph HEALTH_WARN: %v, want exit code 1\n%s", err, out)
	}
	t.Logf("the upgrade stopped (exit code 1):\n%s", lastLines(out, 4))
	for _, want := range []string{"Ceph is HEALTH_OK (CephCluster rook-ceph/rook-ceph)", "HEALTH_WARN", "w1",
		"rackboot upgrade --talos " + upgradeTo + " --resume"} {
		if !strings.Contains(out, want) {
			t.Errorf("the stopped upgrade's output lacks %q:\n%s", want, out)
		}
	}
	st, err := upgrade.ReadState(s.lab().Path("serve"))
	if err != nil || st == nil {
		t.Fatalf("upgrade.json: %v", err)
	}
	if f := st.Failed; f == nil || f.Node != "w1" || f.Step != upgrade.StepSettle || !strings.HasPrefix(f.Gate, "Ceph is HEALTH_OK") || !strings.Contains(f.Why, "HEALTH_WARN") {
		t.Errorf("upgrade.json records the failure %+v, want w1's settle step on the Ceph gate", st.Failed)
	}
	phases := map[string]upgrade.Phase{}
	for _, n := range st.Nodes {
		phases[n.Name] = n.Phase
	}
	if phases["cp1"] != upgrade.Done || phases["w1"] != upgrade.Uncordoned || phases["w2"] != upgrade.Pending {
		t.Errorf("upgrade.json phases %v, want cp1 done, w1 uncordoned, w2 pending", phases)
	}
	if st.Target != upgradeTo {
		t.Errorf("upgrade.json target %q", st.Target)
	}

	k.setCeph(ctx, t, "HEALTH_OK")
	start = time.Now()
	out, err = labExec(append(args, "--resume")...)
	if err != nil {
		t.Fatalf("upgrade --resume: %v\n%s", err, out)
	}
	logTiming(t, "upgrade --resume → done", time.Since(start))
	if !strings.Contains(out, "talosVersion "+upgradeFrom+" → "+upgradeTo) {
		t.Errorf("upgrade --resume did not say the rack file now says %s:\n%s", upgradeTo, out)
	}
	if !strings.Contains(out, "the running rackboot serve reloaded the rack") {
		t.Errorf("the lab's serve did not take the rack with the new talosVersion:\n%s", out)
	}
	st, err = upgrade.ReadState(s.lab().Path("serve"))
	if err != nil || st == nil || !st.Finished() || st.Failed != nil {
		t.Errorf("upgrade.json after --resume: %+v, %v; want finished", st, err)
	}
}

// checkUpgraded: every Talos API says v1.13.1; each console shows the pull
// and the upgraded boot; each ESP holds the v1.13.1 image's initramfs
// (read from the running VM's disk image) and STATE names the image; the
// rack file says v1.13.1.
func checkUpgraded(ctx context.Context, t *testing.T, s *scenario, rack *profiles.Rack, talos *labTalos) {
	t.Helper()
	for _, name := range upgradeMachines {
		if v := talos.waitVersion(ctx, t, name, upgradeTo, time.Minute); v != upgradeTo {
			t.Errorf("%s's Talos API: version %q after the upgrade, want %s", name, v, upgradeTo)
		}
	}
	wantInitrd := versionInitramfs(t, upgradeTo)
	st := s.labState()
	tmp := t.TempDir()
	for _, name := range upgradeMachines {
		id, err := profiles.SchematicID(rack.Schematic(rack.Machine(name)))
		if err != nil {
			t.Fatal(err)
		}
		ref := profiles.InstallerImage(id, upgradeTo)
		vm := st.VM(name)
		log := lab.CleanSerial(readFile(t, vm.SerialLog))
		for _, want := range []string{
			`msg="image pulled" image=` + ref,
			`msg="running an upgraded installation" image=` + ref + ` version=` + upgradeTo,
		} {
			if !strings.Contains(log, want) {
				t.Errorf("%s's console lacks %s", name, want)
			}
		}
		raw := rawCopy(t, vm.Disks[0], filepath.Join(tmp, name+"-nvme.raw"))
		esp, err := install.FindESPPath(raw)
		if err != nil {
			t.Errorf("%s's disk: %v", name, err)
			continue
		}
		if got := espFileBytes(t, raw, esp, "::/initrd.img"); !bytes.Equal(got, wantInitrd) {
			t.Errorf("%s's ESP: initrd.img (%d bytes) is not the %s image's (%d bytes)", name, len(got), upgradeTo, len(wantInitrd))
		}
		if im, err := install.ReadUpgradedImagePath(raw); err != nil || im != ref {
			t.Errorf("%s's STATE names %q (%v), want %s", name, im, err, ref)
		}
		os.Remove(raw)
	}
	if b := readFile(t, s.rack); !strings.Contains(string(b), "talosVersion: "+upgradeTo+"\n") {
		t.Errorf("the rack file after the upgrade:\n%s", b)
	}
}

// removeWorker: `machine remove w2` resets it through its Talos API; its
// disk's partition table is gone, the Node too, and rack.yaml lost w2's
// entry only.
func removeWorker(ctx context.Context, t *testing.T, s *scenario, k *upgradeKube, exec func(...string) string) {
	before := string(readFile(t, s.rack))
	if !strings.Contains(before, upgradeW2) {
		t.Fatalf("the rack file has no w2 entry as written:\n%s", before)
	}
	start := time.Now()
	out := exec("rackboot", "machine", "remove", "w2", "--yes", "--kubeconfig", k.env.Kubeconfig)
	logTiming(t, "machine remove w2", time.Since(start))
	t.Logf("machine remove w2:\n%s", out)
	for _, want := range []string{"reset", "w2", "the running rackboot serve reloaded the rack (", "removed w2): it no longer serves w2"} {
		if !strings.Contains(out, want) {
			t.Errorf("machine remove output lacks %q:\n%s", want, out)
		}
	}
	if _, err := k.cs.CoreV1().Nodes().Get(ctx, "w2", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("Node w2 after the removal: %v, want NotFound", err)
	}
	for _, name := range []string{"cp1", "w1"} {
		if _, err := k.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("Node %s after w2's removal: %v", name, err)
		}
	}
	// Its entry goes, and lab.machines follows the two machines left (else
	// the rack would not validate and serve would refuse to reload it).
	want := strings.Replace(strings.Replace(before, upgradeW2, "", 1), "  machines: 3\n", "  machines: 2\n", 1)
	if after := string(readFile(t, s.rack)); after != want {
		t.Errorf("rack.yaml after the removal:\n%s\nwant:\n%s", after, want)
	}
	// The reset powers the machine off (no reboot asked).
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := s.waitStopped(wctx, "w2"); err != nil {
		t.Fatal(err)
	}
	vm := s.labState().VM("w2")
	if _, err := waitFile(wctx, vm.SerialLog, regexp.MustCompile(`msg="reset: system disk wiped"`)); err != nil {
		t.Error(err)
	}
	raw := rawCopy(t, vm.Disks[0], filepath.Join(t.TempDir(), "w2-nvme.raw"))
	if out, err := osexec("sfdisk", "--json", raw); err == nil {
		t.Errorf("w2's disk still has a partition table after the reset:\n%s", out)
	}
	if _, err := install.FindESPPath(raw); err == nil {
		t.Error("w2's disk still has its ESP after the reset")
	}
	for what, b := range firstLastMiB(t, raw) {
		if i := slices.IndexFunc(b, func(c byte) bool { return c != 0 }); i >= 0 {
			t.Errorf("w2's disk: byte %d of the %s MiB is %#x after the reset, want zeros", i, what, b[i])
		}
	}
	// w1 and cp1 still run.
	for _, name := range []string{"cp1", "w1"} {
		if p, err := s.lab().VMPower(ctx, name); err != nil || !p.On {
			t.Errorf("%s after w2's removal: %+v, %v; want on", name, p, err)
		}
	}
}

// firstLastMiB reads the first and the last MiB of a raw disk image.
func firstLastMiB(t *testing.T, raw string) map[string][]byte {
	t.Helper()
	f, err := os.Open(raw)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() < 2<<20 {
		t.Fatalf("%s: %v, size %d", raw, err, fi.Size())
	}
	out := map[string][]byte{"first": make([]byte, 1<<20), "last": make([]byte, 1<<20)}
	for what, off := range map[string]int64{"first": 0, "last": fi.Size() - 1<<20} {
		if _, err := f.ReadAt(out[what], off); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// versionInitramfs is what the upgrade writes to the ESP: the initramfs of
// the lab's installer image at that version.
func versionInitramfs(t *testing.T, version string) []byte {
	t.Helper()
	img, err := installer.VersionImage(prepared.standin, "amd64", version)
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("the %s installer image: %d layers, %v", version, len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("the %s installer image has no %s: %v", version, installer.InitramfsPath("amd64"), err)
		}
		if h.Name == installer.InitramfsPath("amd64") {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

// rawCopy converts a VM's disk image to a raw file; -U reads it while the
// VM runs (the ESP and STATE were written and synced before its reboot).
func rawCopy(t *testing.T, disk, raw string) string {
	t.Helper()
	if out, err := osexec("qemu-img", "convert", "-U", "-f", lab.DiskFormat, "-O", "raw", disk, raw); err != nil {
		t.Fatalf("qemu-img convert %s: %v\n%s", disk, err, out)
	}
	return raw
}

func osexec(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}

// espFileBytes reads a file of the ESP on a raw disk image with mtools.
func espFileBytes(t *testing.T, raw string, esp install.ESP, path string) []byte {
	t.Helper()
	if _, err := exec.LookPath("mtype"); err != nil {
		t.Fatal("mtype not found: run `make deps` (Debian package mtools)")
	}
	out, err := exec.Command("mtype", "-i", fmt.Sprintf("%s@@%d", raw, esp.StartLBA*512), path).Output()
	if err != nil {
		t.Fatalf("mtype %s: %v", path, err)
	}
	return out
}

// labTalos asks the lab machines' Talos APIs from the test, through the
// lab namespace, with the rack's admin talosconfig (from serve's secrets).
type labTalos struct {
	s    *scenario
	tc   *clientconfig.Config
	addr map[string]string
}

func newLabTalos(ctx context.Context, t *testing.T, s *scenario, rack *profiles.Rack) *labTalos {
	t.Helper()
	secrets, err := profiles.LoadSecrets(s.lab().Path("serve", profiles.SecretsFile))
	if err != nil {
		t.Fatalf("serve's secrets: %v", err)
	}
	data, err := profiles.Talosconfig(rack, secrets)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := clientconfig.FromBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	lt := &labTalos{s: s, tc: tc, addr: map[string]string{}}
	for _, name := range upgradeMachines {
		m := rack.Machine(name)
		ip, _, _ := strings.Cut(m.Address, "/")
		lt.addr[name] = ip
	}
	return lt
}

// version asks one machine's Talos API for its version, directly at its
// address (dialed inside the lab's namespace).
func (lt *labTalos) version(ctx context.Context, name string) (string, error) {
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		return lt.s.lab().DialContext(ctx, "tcp", addr)
	}
	c, err := client.New(ctx, client.WithConfig(lt.tc), client.WithEndpoints(lt.addr[name]),
		client.WithGRPCDialOptions(grpc.WithContextDialer(dial)))
	if err != nil {
		return "", err
	}
	defer c.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := c.Version(cctx)
	if err != nil {
		return "", err
	}
	return resp.GetMessages()[0].GetVersion().GetTag(), nil
}

// waitVersion polls until the machine answers want (or limit passes) and
// returns the last answer.
func (lt *labTalos) waitVersion(ctx context.Context, t *testing.T, name, want string, limit time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		v, err := lt.version(ctx, name)
		if v == want || time.Now().After(deadline) || ctx.Err() != nil {
			if v != want {
				t.Logf("%s's Talos API: %q, %v", name, v, err)
			}
			return v
		}
		time.Sleep(2 * time.Second)
	}
}

// upgradeKube is the test's API server: clients and the objects the
// upgrade reads.
type upgradeKube struct {
	t   *testing.T
	env *kubetest.Env
	cs  kubernetes.Interface
	dyn dynamic.Interface
}

func newUpgradeKube(t *testing.T, env *kubetest.Env) *upgradeKube {
	t.Helper()
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	return &upgradeKube{t: t, env: env, cs: cs, dyn: dyn}
}

// ceph creates Rook's CephCluster CRD and object (kubetest.CephClusterYAML)
// and sets its health.
func (k *upgradeKube) ceph(ctx context.Context, health string) {
	t := k.t
	var objs []*unstructured.Unstructured
	for _, doc := range strings.Split(kubetest.CephClusterYAML, "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			t.Fatal(err)
		}
		if m != nil {
			objs = append(objs, &unstructured.Unstructured{Object: m})
		}
	}
	if _, err := bundles.Apply(ctx, k.env.Config, objs); err != nil {
		t.Fatalf("apply the CephCluster: %v", err)
	}
	k.setCeph(ctx, t, health)
}

// setCeph writes status.ceph.health through the status subresource, as
// Rook's operator does (no operator runs here: the one fault that cannot
// be made real).
func (k *upgradeKube) setCeph(ctx context.Context, t *testing.T, health string) {
	ri := k.dyn.Resource(upgrade.CephClusterGVR).Namespace("rook-ceph")
	obj, err := ri.Get(ctx, "rook-ceph", metav1.GetOptions{})
	if err != nil {
		t.Errorf("set Ceph %s: %v", health, err)
		return
	}
	_ = unstructured.SetNestedField(obj.Object, health, "status", "ceph", "health")
	if _, err := ri.UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
		t.Errorf("set Ceph %s: %v", health, err)
	}
}

// node creates a Ready Node with its address and osImage, as its kubelet
// would register it.
func (k *upgradeKube) node(ctx context.Context, name, ip, osImage string) {
	t := k.t
	n, err := k.cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}, {Type: corev1.NodeHostName, Address: name}}
	n.Status.NodeInfo.OSImage = osImage
	if _, err := k.cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (k *upgradeKube) setOSImage(ctx context.Context, name, osImage string) error {
	n, err := k.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	n.Status.NodeInfo.OSImage = osImage
	_, err = k.cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

func (k *upgradeKube) waitCordoned(ctx context.Context, name string) error {
	for {
		n, err := k.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil && n.Spec.Unschedulable {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// kubelet is the test's stand-in for the nodes' kubelets: once a machine's
// console says it runs the upgraded installation, its Node reports the new
// osImage ("Talos (v1.13.1)"), as a kubelet started by the new Talos would.
type kubelet struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startKubelet(ctx context.Context, t *testing.T, s *scenario, k *upgradeKube) *kubelet {
	ctx, cancel := context.WithCancel(ctx)
	kl := &kubelet{cancel: cancel}
	st := s.labState()
	re := regexp.MustCompile(`msg="running an upgraded installation" .*version=` + regexp.QuoteMeta(upgradeTo))
	for _, name := range upgradeMachines {
		vm := st.VM(name)
		kl.wg.Add(1)
		go func() {
			defer kl.wg.Done()
			if _, err := waitFile(ctx, vm.SerialLog, re); err != nil {
				return // the test ended first; the upgrade reports what is missing
			}
			if err := k.setOSImage(ctx, name, "Talos ("+upgradeTo+")"); err != nil && ctx.Err() == nil {
				t.Errorf("kubelet of %s: %v", name, err)
			}
		}()
	}
	t.Cleanup(kl.stop)
	return kl
}

func (kl *kubelet) stop() {
	kl.cancel()
	kl.wg.Wait()
}

// forwardIntoLab listens inside the lab's namespace on the API server's own
// address (127.0.0.1:PORT of its URL) and forwards each connection to it
// on the host, so the admin kubeconfig works unchanged for a rackboot run
// on the lab's network.
func (s *scenario) forwardIntoLab(t *testing.T, url string) {
	t.Helper()
	hostPort := strings.TrimPrefix(url, "https://")
	ln, err := listenInNamespace(lab.Namespace(s.name), hostPort)
	if err != nil {
		t.Fatalf("listen on %s in the lab's namespace: %v", hostPort, err)
	}
	p := tcpproxy.Start(ln, hostPort)
	t.Cleanup(func() { p.Cut() })
}

// listenInNamespace makes a listening socket inside the named network
// namespace: on a thread of its own that enters it and comes back (a
// thread that cannot come back is left locked, so Go ends it).
func listenInNamespace(ns, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		target, err := os.Open(filepath.Join("/run/netns", ns))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		ln, lerr := net.Listen("tcp", addr)
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			if ln != nil {
				ln.Close()
			}
			ch <- result{err: fmt.Errorf("setns back: %w", err)} // the thread stays locked and ends with this goroutine
			return
		}
		runtime.UnlockOSThread()
		ch <- result{ln: ln, err: lerr}
	}()
	r := <-ch
	return r.ln, r.err
}
