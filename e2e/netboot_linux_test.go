//go:build linux

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/lab"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// The timeline a netbooting machine leaves in serve's status, in order.
var netbootStages = []string{
	pxe.StageDHCP, pxe.StageScript, pxe.StageKernel, pxe.StageInitrd, pxe.StageConfig,
	inventory.StageInstalling, inventory.StageInstalled,
}

// logTiming prints a measured duration in one greppable format.
func logTiming(t *testing.T, what string, d time.Duration) {
	t.Helper()
	t.Logf("TIMING %s: %.1fs", what, d.Seconds())
}

// qemuToInstalled is the time from the VM's QEMU start to serve recording
// the machine installed.
func qemuToInstalled(t *testing.T, st *lab.State, m inventory.Machine) time.Duration {
	t.Helper()
	p, ok := process(st, "vm:"+m.Name)
	if !ok {
		t.Fatalf("no QEMU process recorded for %s", m.Name)
	}
	start, err := startWall(p)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := entry(m, inventory.StageInstalled)
	if !ok {
		t.Fatalf("%s has no installed entry: %v", m.Name, stages(m))
	}
	var b strings.Builder
	for _, e := range m.Timeline {
		fmt.Fprintf(&b, "\n  +%5.1fs %-10s %s", e.Time.Sub(start).Seconds(), e.Stage, e.Detail)
	}
	t.Logf("%s's timeline from its QEMU start:%s", m.Name, b.String())
	return e.Time.Sub(start)
}

// TestFullDHCPBIOS: (a) one BIOS machine netboots with rackboot as the only
// DHCP server (QEMU's iPXE ROM → rackboot DHCP → /boot.ipxe → kernel and
// initrd over HTTP → the stand-in fetches its config with its token and
// installs) and reaches installed; (f) the install went to the NVMe and the
// sd* disks were never written; (d) its second boot is sent to the local
// disk and gets no config.
func TestFullDHCPBIOS(t *testing.T) {
	s := newScenario(t, "a")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	begin := time.Now()
	out := s.labUpFound(ctx, "--dhcp", "full", "--firmware", "bios", "--timeout", "4m")
	if !strings.Contains(out, "all 1 machine(s) installed") {
		t.Fatalf("lab up did not report the machine installed:\n%s", out)
	}
	logTiming(t, "full/bios lab up → installed (CLI)", time.Since(begin))
	st := s.labState()
	vm := st.VM("cp1")
	if vm == nil || vm.Firmware != lab.FirmwareBIOS || st.DHCP != lab.DHCPFull {
		t.Fatalf("lab state: dhcp %s, vm %+v", st.DHCP, vm)
	}
	a := s.api()
	ms, err := a.machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := machine(ms, "cp1")
	if !ok || !m.Installed || m.Stage != inventory.StageInstalled {
		t.Fatalf("serve's status for cp1: %+v", m)
	}
	if seen := seenMachines(ms); len(seen) != 1 {
		t.Errorf("serve's status lists %d machines seen, want cp1 only: %+v", len(seen), seen)
	}
	// Its installer came from serve's registry mirror, counted on cp1.
	if p := m.Pulled; p == nil || p.ImageCount != 1 || !strings.HasPrefix(p.Images[0], "factory.talos.dev/metal-installer/") || p.Bytes < 1<<20 {
		t.Errorf("serve's status says cp1 pulled %+v from the mirror, want its installer image (MiBs)", p)
	}
	// The rack's other machine is listed by name, never seen.
	if w1, ok := machine(ms, "w1"); !ok || w1.Stage != "" || w1.Installed {
		t.Errorf("w1 (in the rack file, not started) is listed as %+v, %v; want by name with no stage", w1, ok)
	}
	if !inOrder(stages(m), netbootStages) {
		t.Errorf("cp1's timeline %v, want %v in this order", stages(m), netbootStages)
	}
	if e, _ := entry(m, pxe.StageDHCP); !strings.HasPrefix(e.Detail, "offer 10.77.0.11") || !strings.Contains(e.Detail, "arch bios") {
		t.Errorf("cp1's DHCP entry %q: want rackboot's own offer of its reserved address to a BIOS client", e.Detail)
	}
	logTiming(t, "full/bios QEMU start → installed", qemuToInstalled(t, st, m))

	rep := s.stoppedReport(ctx, t, vm, "cp1")
	if rep.IP != "10.77.0.11" {
		t.Errorf("report: address %q, want cp1's reservation 10.77.0.11 from rackboot's DHCP", rep.IP)
	}
	serial := lab.CleanSerial(readFile(t, vm.SerialLog))
	for _, want := range []string{"SeaBIOS", "rackboot: booting cp1", "/assets/standin/vmlinuz... ok", "/assets/standin/initramfs.cpio.gz... ok"} {
		if !strings.Contains(serial, want) {
			t.Errorf("cp1's console lacks %q", want)
		}
	}
	serveLog := filepath.Join(s.lab().Dir(), "serve.log")
	if n := countLines(serveLog, "config served", "name=cp1"); n != 1 {
		t.Errorf("serve served cp1's config %d times, want once", n)
	}

	if !t.Run("nvme-only", func(t *testing.T) { checkInstallDisks(t, vm) }) {
		return
	}
	t.Run("second-boot-local-disk", func(t *testing.T) { secondBoot(t, s, vm) })
}

// secondBoot starts the installed VM again (its recorded QEMU command line,
// same disks; the console goes to a new file) and checks serve sends it to
// its local disk: stage local-boot, no script, kernel or config.
func secondBoot(t *testing.T, s *scenario, vm *lab.VMState) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := s.api()
	before, err := a.machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m0, _ := machine(before, "cp1")
	serveLog := filepath.Join(s.lab().Dir(), "serve.log")
	configs := countLines(serveLog, "config served")

	console := filepath.Join(s.dir, "cp1-second-boot-serial.log")
	args := append([]string(nil), vm.Command[1:]...)
	replaced := false
	for i, arg := range args {
		if strings.HasPrefix(arg, "file,id=serial0,path=") {
			args[i] = "file,id=serial0,path=" + strings.ReplaceAll(console, ",", ",,")
			replaced = true
		}
	}
	if !replaced {
		t.Fatalf("no serial chardev in the recorded QEMU command line: %s", strings.Join(vm.Command, " "))
	}
	s.extra = append(s.extra, console)
	t.Logf("second boot: %s %s", vm.Command[0], strings.Join(args, " "))
	start := time.Now()
	qemu := s.startInLab("", filepath.Join(s.dir, "cp1-second-boot-qemu.log"), vm.Command[0], args...)

	m, err := a.waitMachine(ctx, "cp1", func(m inventory.Machine) (bool, error) {
		return len(m.Timeline) > len(m0.Timeline) && m.Stage == pxe.StageLocalBoot, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e, _ := entry(m, pxe.StageLocalBoot)
	logTiming(t, "second boot QEMU start → local-boot", e.Time.Sub(start))
	line, err := waitFile(ctx, console, regexp.MustCompile(`rackboot: cp1 is installed, booting from local disk`))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("second boot console: %q", line)
	if e.Detail != string(pxe.LocalBootExit) {
		t.Errorf("local-boot method %q, want %s", e.Detail, pxe.LocalBootExit)
	}
	if !m.Installed {
		t.Error("cp1 no longer counts as installed")
	}
	newer := stages(m)[len(m0.Timeline):]
	for _, st := range newer {
		switch st {
		case pxe.StageScript, pxe.StageKernel, pxe.StageInitrd, pxe.StageConfig, inventory.StageInstalling:
			t.Errorf("second boot reached stage %s (new timeline entries %v)", st, newer)
		}
	}
	if n := countLines(serveLog, "config served"); n != configs {
		t.Errorf("serve served %d config(s) during the second boot", n-configs)
	}
	if countLines(serveLog, "sending installed machine to its local disk", "name=cp1") == 0 {
		t.Error("serve's log does not say it sent cp1 to its local disk")
	}
	// iPXE's exit hands the boot back to SeaBIOS, which goes on to the
	// next boot device: the NVMe (the stand-in writes no boot loader, so
	// it stops there). No kernel may start.
	if _, err := waitFile(ctx, console, regexp.MustCompile(`Booting from Hard Disk`)); err != nil {
		t.Error(err)
	}
	if err := qemu.stop(10 * time.Second); err != nil {
		t.Error(err)
	}
	if c := lab.CleanSerial(readFile(t, console)); strings.Contains(c, "Linux version") || strings.Contains(c, "RACKBOOT-STANDIN-REPORT") {
		t.Errorf("the second boot started a kernel:\n%s", lastLines(c, 20))
	}
}

// TestProxyDHCPUEFI: (b) dnsmasq in the router namespace is the home
// router's DHCP; rackboot answers only the PXE part (proxy DHCP). A UEFI
// (OVMF) machine gets its address from dnsmasq, its boot from rackboot, and
// reaches installed; (f) on the NVMe only.
func TestProxyDHCPUEFI(t *testing.T) {
	s := newScenario(t, "b")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	begin := time.Now()
	out := s.labUp(ctx, "--dhcp", "proxy", "--firmware", "uefi", "--timeout", "4m")
	if !strings.Contains(out, "all 1 machine(s) installed") {
		t.Fatalf("lab up did not report the machine installed:\n%s", out)
	}
	logTiming(t, "proxy/uefi lab up → installed (CLI)", time.Since(begin))
	st := s.labState()
	vm := st.VM("cp1")
	if vm == nil || vm.Firmware != lab.FirmwareUEFI || vm.OVMFVars == "" || st.DHCP != lab.DHCPProxy || len(st.Namespaces) != 2 {
		t.Fatalf("lab state: dhcp %s, namespaces %v, vm %+v", st.DHCP, st.Namespaces, vm)
	}
	if _, ok := process(st, "dnsmasq"); !ok {
		t.Fatal("no dnsmasq recorded in proxy mode")
	}
	a := s.api()
	ms, err := a.machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m, ok := machine(ms, "cp1")
	if !ok || !m.Installed || m.Stage != inventory.StageInstalled {
		t.Fatalf("serve's status for cp1: %+v", m)
	}
	if !inOrder(stages(m), netbootStages) {
		t.Errorf("cp1's timeline %v, want %v in this order", stages(m), netbootStages)
	}
	if e, _ := entry(m, pxe.StageDHCP); !strings.HasPrefix(e.Detail, "proxy") || !strings.Contains(e.Detail, "arch") {
		t.Errorf("cp1's DHCP entry %q: want a proxy offer", e.Detail)
	}
	logTiming(t, "proxy/uefi QEMU start → installed", qemuToInstalled(t, st, m))

	rep := s.stoppedReport(ctx, t, vm, "cp1")

	// The address came from dnsmasq's pool, not from rackboot.
	lo, hi, ok := strings.Cut(st.DHCPRange, "-")
	ip, err := netip.ParseAddr(rep.IP)
	if !ok || err != nil || ip.Less(netip.MustParseAddr(lo)) || netip.MustParseAddr(hi).Less(ip) {
		t.Errorf("the stand-in's address %q is not in dnsmasq's pool %s", rep.IP, st.DHCPRange)
	}
	dnsmasqLog := filepath.Join(s.lab().Dir(), "dnsmasq.log")
	if countLines(dnsmasqLog, "DHCPACK(eth0) "+rep.IP+" "+vm.MAC) == 0 {
		t.Errorf("dnsmasq's log has no DHCPACK of %s to %s:\n%s", rep.IP, vm.MAC, lastLines(string(readFile(t, dnsmasqLog)), 20))
	}
	serveLog := filepath.Join(s.lab().Dir(), "serve.log")
	if n := countLines(serveLog, "DHCP lease"); n != 0 {
		t.Errorf("serve handed out %d DHCP lease(s) in proxy mode", n)
	}
	if n := countLines(serveLog, "config served", "name=cp1"); n != 1 {
		t.Errorf("serve served cp1's config %d times, want once", n)
	}
	serial := lab.CleanSerial(readFile(t, vm.SerialLog))
	if !regexp.MustCompile(`(?m)^Features: .* EFI`).MatchString(serial) {
		t.Error("cp1's console shows no iPXE EFI build: did OVMF boot it?")
	}

	t.Run("nvme-only", func(t *testing.T) { checkInstallDisks(t, vm) })
}

// Racks for the unknown-machine scenario: the lab boots "stranger", whose
// MAC the rack serve reads (testRack: cp1, w1) does not list.
const strangerMAC = "52:54:00:e2:e0:99"

func strangerRack(t *testing.T) *profiles.Rack {
	t.Helper()
	head, _, ok := strings.Cut(testRack, "machines:\n")
	_, tail, ok2 := strings.Cut(testRack, "lab:\n")
	if !ok || !ok2 {
		t.Fatal("testRack has no machines: or lab: section")
	}
	data := head + "machines:\n  - name: stranger\n    role: worker\n    select:\n      mac: [\"" + strangerMAC + "\"]\n    address: 10.77.0.99/24\nlab:\n" + tail
	r, err := profiles.Load("stranger rack", []byte(data))
	if err != nil {
		t.Fatalf("stranger rack: %v", err)
	}
	return r
}

// TestUnknownMachine: (c) a machine whose MAC is not in serve's rack file
// netboots: it gets no config (serve never serves one), shows up as
// discovered, and its console tells the operator what to do.
func TestUnknownMachine(t *testing.T) {
	s := newScenario(t, "c")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	l := s.lab()
	spec := lab.Spec{Rack: strangerRack(t), Machines: 1, DHCP: lab.DHCPFull, Firmware: lab.FirmwareBIOS}
	plan, err := lab.NewPlan(s.name, spec)
	if err != nil {
		t.Fatal(err)
	}
	spec.ServerAddr = plan.ServerAddr
	a := s.planAPI(plan)
	// rackboot serve as `lab up` runs it, but with the rack file that does
	// not list the VM.
	spec.Serve = s.serveSpec(plan, a)
	begin := time.Now()
	st, err := l.Up(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	vm := st.VM("stranger")
	if vm == nil || vm.MAC != strangerMAC {
		t.Fatalf("lab VMs: %+v", st.VMs)
	}
	line, err := l.WaitSerial(ctx, "stranger", regexp.MustCompile(`unknown machine `+strangerMAC+`: add it to rack.yaml`))
	if err != nil {
		t.Fatal(err)
	}
	logTiming(t, "unknown machine lab up → told it is unknown", time.Since(begin))
	t.Logf("stranger's console: %q", line)
	m, err := a.waitMachine(ctx, strangerMAC, func(m inventory.Machine) (bool, error) {
		return m.Stage == pxe.StageDiscovered, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "" || m.Installed || m.Key != strangerMAC {
		t.Errorf("the unknown machine in serve's status: %+v", m)
	}
	for _, e := range m.Timeline {
		switch e.Stage {
		case pxe.StageDHCP, pxe.StageDiscovered, pxe.StageIPXE:
		default:
			t.Errorf("the unknown machine reached stage %s (%s)", e.Stage, e.Detail)
		}
	}
	ms, err := a.machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if seen := seenMachines(ms); len(seen) != 1 {
		t.Errorf("serve's status lists %d machines seen, want the stranger only: %+v", len(seen), seen)
	}
	serveLog := filepath.Join(l.Dir(), "serve.log")
	if n := countLines(serveLog, "config served"); n != 0 {
		t.Errorf("serve served %d config(s)", n)
	}
	if countLines(serveLog, "unknown machine asked to boot", "mac="+strangerMAC) == 0 {
		t.Error("serve's log does not show the unknown machine asking to boot")
	}
	serial := lab.CleanSerial(readFile(t, vm.SerialLog))
	if strings.Contains(serial, "/assets/") || strings.Contains(serial, "Linux version") {
		t.Errorf("the unknown machine was given something to boot:\n%s", lastLines(serial, 20))
	}
}

// TestServeRestartMidBoot: (e) serve is stopped (SIGTERM, by its recorded
// PID) once the machine has its kernel and initrd and runs the stand-in,
// before it fetched its config, and started again with the same flags and
// state. The machine still reaches installed with the config token it was
// given by the first serve, and the secrets file is byte-identical.
func TestServeRestartMidBoot(t *testing.T) {
	s := newScenario(t, "e")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	begin := time.Now()
	s.labUp(ctx, "--dhcp", "full", "--firmware", "bios", "--no-wait")
	st := s.labState()
	serve, ok := process(st, "serve")
	vm := st.VM("cp1")
	if !ok || vm == nil {
		t.Fatalf("lab state: processes %+v, VMs %+v", st.Processes, st.VMs)
	}
	l := s.lab()
	a := s.api()

	// iPXE has fetched both files once the kernel prints its banner.
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer wcancel()
	if _, err := l.WaitSerial(wctx, "cp1", regexp.MustCompile(`Linux version`)); err != nil {
		t.Fatal(err)
	}
	ms, err := a.machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := machine(ms, "cp1")
	if !inOrder(stages(m), []string{pxe.StageKernel, pxe.StageInitrd}) || slices.ContainsFunc(stages(m), func(s string) bool {
		return s == pxe.StageConfig || s == inventory.StageInstalling || s == inventory.StageInstalled
	}) {
		t.Fatalf("before the restart cp1's timeline is %v: want kernel and initrd fetched, no config yet (the window before the config fetch was missed)", stages(m))
	}
	serveDir := l.Path("serve")
	secretsBefore := readFile(t, filepath.Join(serveDir, "secrets.yaml"))
	keyBefore := readFile(t, filepath.Join(serveDir, pxe.TokenKeyFile))

	stopAt := time.Now()
	if err := terminate(serve, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := a.machines(ctx); err == nil {
		t.Fatal("the status API still answers after serve stopped")
	}
	// The same program, flags, state directory and working directory as
	// the lab started it with.
	restarted := s.startInLab(serveDir, filepath.Join(s.dir, "serve-restarted.log"), serve.Exe, serve.Args...)
	for {
		if _, err := a.machines(ctx); err == nil {
			break
		}
		select {
		case err := <-restarted.done:
			restarted.done <- err
			t.Fatalf("the restarted serve exited: %v\n%s", err, readFile(t, restarted.log))
		case <-ctx.Done():
			t.Fatalf("the restarted serve does not answer: %v", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	logTiming(t, "serve down (SIGTERM → restarted serve answers)", time.Since(stopAt))

	m, err = a.waitMachine(ctx, "cp1", installed)
	if err != nil {
		t.Fatal(err)
	}
	logTiming(t, "serve restart: lab up → installed", time.Since(begin))
	logTiming(t, "serve restart: QEMU start → installed", qemuToInstalled(t, st, m))
	if !inOrder(stages(m), netbootStages) {
		t.Errorf("cp1's timeline across the restart %v, want %v in this order", stages(m), netbootStages)
	}
	if e, _ := entry(m, pxe.StageInitrd); !e.Time.Before(stopAt) {
		t.Errorf("the initrd entry (%s) is not from before the restart (%s): machines.json lost it", e.Time, stopAt)
	}
	if e, _ := entry(m, pxe.StageConfig); !e.Time.After(stopAt) {
		t.Errorf("the config entry (%s) is from before the restart (%s)", e.Time, stopAt)
	}
	firstLog := filepath.Join(l.Dir(), "serve.log")
	if n := countLines(firstLog, "config served"); n != 0 {
		t.Errorf("the first serve served %d config(s): the restart came too late to prove anything", n)
	}
	if n := countLines(restarted.log, "config served", "name=cp1"); n != 1 {
		t.Errorf("the restarted serve served cp1's config %d times, want once (with the token the first serve minted)", n)
	}
	if countLines(restarted.log, "created cluster secrets") != 0 {
		t.Error("the restarted serve created new cluster secrets")
	}
	if !bytes.Equal(readFile(t, filepath.Join(serveDir, "secrets.yaml")), secretsBefore) {
		t.Error("secrets.yaml changed across the restart")
	}
	if !bytes.Equal(readFile(t, filepath.Join(serveDir, pxe.TokenKeyFile)), keyBefore) {
		t.Errorf("%s changed across the restart", pxe.TokenKeyFile)
	}
	sctx, scancel := context.WithTimeout(ctx, 30*time.Second)
	defer scancel()
	if err := s.waitStopped(sctx, "cp1"); err != nil {
		t.Fatal(err)
	}
	rep, err := standinReport(vm.SerialLog)
	if err != nil {
		t.Fatalf("cp1's console: %v", err)
	}
	checkReport(t, rep, vm, "cp1")
}
