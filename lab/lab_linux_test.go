//go:build linux

package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// TestMain lets the test binary play a small HTTP server in the lab
// namespace (a stand-in for rackboot serve): LAB_TEST_HTTP=addr.
func TestMain(m *testing.M) {
	if addr := os.Getenv("LAB_TEST_HTTP"); addr != "" {
		// Serves its working directory: proves WorkDir, Files and the namespace.
		fmt.Fprintln(os.Stderr, http.ListenAndServe(addr, http.FileServer(http.Dir("."))))
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// requireLabTools fails (never skips) when the machine cannot run a lab,
// naming the Debian packages to install.
func requireLabTools(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the lab tests create network namespaces and taps: run them as root")
	}
	var missing []string
	for prog, pkg := range map[string]string{"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "dnsmasq": "dnsmasq-base"} {
		if _, err := exec.LookPath(prog); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", prog, pkg))
		}
	}
	for file, pkg := range map[string]string{
		"/usr/share/OVMF/OVMF_CODE_4M.fd":  "ovmf",
		"/usr/share/OVMF/OVMF_VARS_4M.fd":  "ovmf",
		"/usr/share/seabios/bios-256k.bin": "seabios",
		"/usr/lib/ipxe/qemu/efi-e1000.rom": "ipxe-qemu",
	} {
		if _, err := os.Stat(file); err != nil {
			missing = append(missing, fmt.Sprintf("%s (apt-get install %s)", file, pkg))
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		t.Fatalf("missing: %s", strings.Join(missing, ", "))
	}
}

// testLab makes a lab with a unique name in a temp state dir. Down runs when
// the test ends, whatever happens; on failure the serial logs, QEMU logs and
// command lines are printed first.
func testLab(t *testing.T, opts ...Option) *Lab {
	t.Helper()
	requireLabTools(t)
	name := fmt.Sprintf("t%d-%d", os.Getpid()%100000, time.Now().UnixNano()%1000)
	opts = append([]Option{WithLogger(slog.New(slog.NewTextHandler(testWriter{t}, nil))), WithPollInterval(100 * time.Millisecond)}, opts...)
	l, err := New(t.TempDir(), name, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		rep, err := l.Down(context.Background())
		if err != nil {
			t.Errorf("cleanup: lab down: %v", err)
		}
		if rep != nil && !rep.NothingToDo {
			t.Logf("cleanup: lab down: stopped %v, namespaces %v", rep.Stopped, rep.Namespaces)
		}
	})
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		st, err := l.State()
		if err != nil {
			return
		}
		for _, vm := range st.VMs {
			serial, _ := os.ReadFile(vm.SerialLog)
			qlog, _ := os.ReadFile(vm.QEMULog)
			t.Logf("vm %s\ncommand: %s\nqemu log:\n%s\nserial log:\n%s", vm.Name, strings.Join(vm.Command, " "), qlog, CleanSerial(serial))
		}
		for _, p := range st.Processes {
			if !strings.HasPrefix(p.Role, "vm:") {
				out, _ := os.ReadFile(p.Log)
				t.Logf("%s log:\n%s", p.Role, out)
			}
		}
	})
	return l
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func procGone(t *testing.T, p Process) {
	t.Helper()
	if running(p) {
		t.Errorf("%s (pid %d) still runs after down", p.Role, p.PID)
	}
}

func linkIn(t *testing.T, namespace, name string) netlink.Link {
	t.Helper()
	var link netlink.Link
	err := inNamespace(namespace, func() error {
		var err error
		link, err = netlink.LinkByName(name)
		return err
	})
	if err != nil {
		t.Fatalf("%s in %s: %v", name, namespace, err)
	}
	return link
}

// TestLabBIOSNetboot is the basic lab: one BIOS VM (TCG here) on a tap in
// the lab namespace. With no DHCP server yet, QEMU's iPXE ROM must start on
// net0 with the machine's MAC and try DHCP; then Down removes everything.
func TestLabBIOSNetboot(t *testing.T) {
	l := testLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	st, err := l.Up(ctx, Spec{Rack: exampleRack(t), Machines: 1, Firmware: FirmwareBIOS})
	if err != nil {
		t.Fatal(err)
	}
	upTook := time.Since(start)
	ns := Namespace(l.Name())
	if !slices.Equal(st.Namespaces, []string{ns}) || st.Bridge != Bridge || !slices.Equal(st.Taps, []string{"tap0"}) || len(st.VMs) != 1 {
		t.Fatalf("state: %+v", st)
	}

	// The network: no default route; the tap is on the bridge; the bridge
	// has the server's address; nothing of it is on the host.
	routes, err := DefaultRoutes(ns)
	if err != nil || len(routes) != 0 {
		t.Fatalf("default routes in %s: %v %v", ns, routes, err)
	}
	br := linkIn(t, ns, Bridge)
	tap := linkIn(t, ns, "tap0")
	if tap.Attrs().MasterIndex != br.Attrs().Index {
		t.Errorf("tap0 is not on %s", Bridge)
	}
	var addrs []netlink.Addr
	_ = inNamespace(ns, func() (err error) { addrs, err = netlink.AddrList(br, netlink.FAMILY_V4); return err })
	if len(addrs) != 1 || addrs[0].IPNet.String() != "192.168.1.2/24" {
		t.Errorf("bridge addresses %v, want 192.168.1.2/24", addrs)
	}
	if hostBr, err := netlink.LinkByName(Bridge); err == nil && hostBr.Attrs().Index == br.Attrs().Index {
		t.Error("the lab's bridge is visible on the host")
	}

	// QEMU runs in the namespace, as the recorded process.
	qemu, ok := process(st, "vm:formula")
	if _, hasRA := process(st, "ra"); len(st.Processes) != 2 || !ok || !hasRA {
		t.Fatalf("processes %+v, want the RA responder and vm:formula", st.Processes)
	}
	if in, err := l.InNamespace(qemu.PID); err != nil || !in {
		t.Fatalf("QEMU pid %d in namespace %s: %v %v", qemu.PID, ns, in, err)
	}
	if in, _ := sameNetNamespace(os.Getpid(), ns); in {
		t.Fatal("the test itself is in the lab namespace")
	}

	// The firmware: SeaBIOS with the SMBIOS UUID, then iPXE on net0 with the MAC.
	vm := st.VMs[0]
	line, err := l.WaitSerial(ctx, "formula", regexp.MustCompile(`net0: 52:54:00:b0:00:01 using`))
	if err != nil {
		t.Fatal(err)
	}
	reached := time.Since(start)
	t.Logf("iPXE on net0 %.1fs after Up started (Up itself %.1fs, accel %s): %q", reached.Seconds(), upTook.Seconds(), st.Accel, line)
	if _, err := l.WaitSerial(ctx, "formula", regexp.MustCompile(`Configuring \(net0 52:54:00:b0:00:01\)`)); err != nil {
		t.Fatal(err)
	}
	serial, _ := os.ReadFile(vm.SerialLog)
	text := CleanSerial(serial)
	for _, want := range []string{"SeaBIOS", "Machine UUID " + vm.UUID, "iPXE"} {
		if !strings.Contains(text, want) {
			t.Errorf("serial log lacks %q", want)
		}
	}

	// Status and console.
	s, err := l.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(s.VMs) != 1 || !s.VMs[0].Running || s.VMs[0].PID != qemu.PID || s.VMs[0].LastLine == "" || s.VMs[0].Firmware != FirmwareBIOS {
		t.Errorf("status %+v", s.VMs)
	}
	var con bytes.Buffer
	if err := l.Console(ctx, "formula", &con, false); err != nil || !strings.Contains(con.String(), "SeaBIOS") {
		t.Errorf("console: %v (%d bytes)", err, con.Len())
	}
	if err := l.Console(ctx, "nope", &con, false); !errors.Is(err, ErrUnknownVM) {
		t.Errorf("console of an unknown VM: %v", err)
	}

	// A second Up of the same lab, or of another lab over its namespace, is refused.
	if _, err := l.Up(ctx, Spec{Rack: exampleRack(t), Machines: 1}); !errors.Is(err, ErrExists) {
		t.Errorf("second up: %v, want ErrExists", err)
	}
	other, _ := New(t.TempDir(), l.Name())
	if _, err := other.Up(ctx, Spec{Rack: exampleRack(t), Machines: 1}); err == nil || !strings.Contains(err.Error(), "namespace "+ns+" exists") {
		t.Errorf("up over an existing namespace: %v", err)
	}
	if !running(qemu) || !namespaceExists(ns) {
		t.Fatal("a refused up damaged the running lab")
	}

	// Down removes everything; a second Down has nothing to do.
	rep, err := l.Down(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Stopped, []string{"vm:formula", "ra"}) || !slices.Equal(rep.Namespaces, []string{ns}) || rep.Files < 4 {
		t.Errorf("down report %+v", rep)
	}
	procGone(t, qemu)
	if namespaceExists(ns) {
		t.Errorf("namespace %s left behind", ns)
	}
	for _, f := range append(vm.Disks, vm.SerialLog, vm.QEMULog, l.StatePath(), l.Dir()) {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind (%v)", f, err)
		}
	}
	rep, err = l.Down(ctx)
	if err != nil || !rep.NothingToDo {
		t.Errorf("second down: %+v %v", rep, err)
	}
	if _, err := l.Status(); !errors.Is(err, ErrNotUp) {
		t.Errorf("status after down: %v", err)
	}
}

// TestLabProxyUEFI is the proxy-DHCP lab: the router namespace with dnsmasq
// behind a veth, a stand-in serve process in the lab namespace, and a UEFI
// VM whose iPXE gets its address from dnsmasq through the bridge.
func TestLabProxyUEFI(t *testing.T) {
	l := testLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rack := exampleRack(t)
	start := time.Now()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: l.DialContext}, Timeout: 2 * time.Second}
	get := func(ctx context.Context, url string) (string, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("%s: %s", url, resp.Status)
		}
		return string(b), err
	}
	serve := &ProcessSpec{
		Role: "serve", Path: self, Env: []string{"LAB_TEST_HTTP=192.168.1.2:8080"},
		WorkDir: "serve",
		Files:   map[string][]byte{"hello.txt": []byte("from the lab")},
		Links:   map[string]string{"assets": "/nonexistent/assets"},
		Ready: func(ctx context.Context) error {
			for {
				body, err := get(ctx, "http://192.168.1.2:8080/hello.txt")
				if err == nil && body == "from the lab" {
					return nil
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
				case <-time.After(50 * time.Millisecond):
				}
			}
		},
	}
	st, err := l.Up(ctx, Spec{Rack: rack, Machines: 2, DHCP: DHCPProxy, Serve: serve})
	if err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(l.Path("serve", "assets")); err != nil || target != "/nonexistent/assets" {
		t.Errorf("assets link: %q %v", target, err)
	}
	ns, rns := Namespace(l.Name()), RouterNamespace(l.Name())
	if !slices.Equal(st.Namespaces, []string{ns, rns}) || !slices.Equal(st.Veths, []string{routerVeth}) || !st.Serve {
		t.Fatalf("state %+v", st)
	}
	for _, n := range st.Namespaces {
		if routes, err := DefaultRoutes(n); err != nil || len(routes) > 0 {
			t.Errorf("default routes in %s: %v %v", n, routes, err)
		}
	}
	roles := map[string]Process{}
	for _, p := range st.Processes {
		roles[p.Role] = p
	}
	for role, want := range map[string]string{"ra": ns, "dnsmasq": rns, "serve": ns, "vm:formula": ns, "vm:urban": ns} {
		p, ok := roles[role]
		if !ok {
			t.Fatalf("no %s process recorded: %+v", role, st.Processes)
		}
		if in, err := sameNetNamespace(p.PID, want); err != nil || !in {
			t.Errorf("%s (pid %d) is not in %s: %v", role, p.PID, want, err)
		}
	}
	urban := st.VM("urban")
	if urban == nil || urban.Firmware != FirmwareUEFI || urban.OVMFVars == "" {
		t.Fatalf("urban: %+v", urban)
	}

	// OVMF runs iPXE's EFI ROM, which gets an address from the router.
	for _, vm := range []struct{ name, mac string }{{"urban", "52:54:00:b0:00:02"}, {"formula", "52:54:00:b0:00:01"}} {
		if _, err := l.WaitSerial(ctx, vm.name, regexp.MustCompile(`net0: `+vm.mac)); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: iPXE on net0 %.1fs after Up started", vm.name, time.Since(start).Seconds())
		line, err := l.WaitSerial(ctx, vm.name, regexp.MustCompile(`net0: 192\.168\.1\.\d+/255\.255\.255\.0 gw 192\.168\.1\.1`))
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: address from dnsmasq %.1fs after Up started: %q", vm.name, time.Since(start).Seconds(), line)
	}
	// iPXE's feature line tells its build: EFI under OVMF, PXE under SeaBIOS.
	for name, want := range map[string]string{"urban": " EFI", "formula": " PXE"} {
		line, err := l.WaitSerial(ctx, name, regexp.MustCompile(`^Features: `))
		if err != nil || !strings.Contains(line, want) {
			t.Errorf("%s: iPXE %q (%v), want a build with%s", name, line, err, want)
		}
	}
	dlog, _ := os.ReadFile(filepath.Join(l.Dir(), "dnsmasq.log"))
	if !bytes.Contains(dlog, []byte("DHCPACK(eth0)")) || !bytes.Contains(dlog, []byte("52:54:00:b0:00:02")) {
		t.Errorf("dnsmasq log has no DHCPACK for urban:\n%s", dlog)
	}

	rep, err := l.Down(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Stopped) != 5 || len(rep.Namespaces) != 2 {
		t.Errorf("down report %+v", rep)
	}
	for _, p := range st.Processes {
		procGone(t, p)
	}
	for _, n := range st.Namespaces {
		if namespaceExists(n) {
			t.Errorf("namespace %s left behind", n)
		}
	}
	if _, err := os.Stat(l.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lab directory left behind: %v", err)
	}
}

// TestLabFailedUpCleansUp: a QEMU that exits at once makes Up fail, and Up
// removes what it had made.
func TestLabFailedUpCleansUp(t *testing.T) {
	l := testLab(t, WithTools(Tools{QEMU: "false"}))
	_, err := l.Up(context.Background(), Spec{Rack: exampleRack(t), Machines: 1})
	if err == nil || !strings.Contains(err.Error(), "QEMU exited at once") {
		t.Fatalf("up with a failing QEMU: %v", err)
	}
	if namespaceExists(Namespace(l.Name())) {
		t.Error("namespace left behind by a failed up")
	}
	if _, err := os.Stat(l.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lab directory left behind by a failed up: %v", err)
	}
}

// TestStopProcessChecksIdentity: a recorded PID whose start time or program
// differs is never signalled.
func TestStopProcessChecksIdentity(t *testing.T) {
	sleepPath, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sleepPath, "60") // argv[0] is the full path, as startProcess does
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })
	st, err := procStartTime(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	exe := cmd.Path
	for _, p := range []Process{
		{Role: "recycled", PID: cmd.Process.Pid, StartTime: st + 1, Exe: exe},
		{Role: "other program", PID: cmd.Process.Pid, StartTime: st, Exe: "/usr/bin/qemu-system-x86_64"},
	} {
		signalled, err := stopProcess(p, time.Second)
		if err != nil || signalled {
			t.Errorf("%s: signalled=%v err=%v", p.Role, signalled, err)
		}
	}
	select {
	case <-done:
		t.Fatal("a process with another identity was killed")
	default:
	}
	p := Process{Role: "ours", PID: cmd.Process.Pid, StartTime: st, Exe: exe}
	if !running(p) {
		// Say why, so a rare failure here explains itself.
		st2, serr := procStartTime(p.PID)
		exitedAlready := false
		select {
		case <-done:
			exitedAlready = true
		default:
		}
		t.Fatalf("running() does not see our process: start time %d then %d (%v), argv0 %q want %q, exited %v",
			st, st2, serr, procArgv0(p.PID), exe, exitedAlready)
	}
	if signalled, err := stopProcess(p, 5*time.Second); err != nil || !signalled {
		t.Fatalf("stop: signalled=%v err=%v", signalled, err)
	}
	<-done
	if running(p) {
		t.Error("running() after stop")
	}
	if signalled, err := stopProcess(p, time.Second); err != nil || signalled {
		t.Errorf("second stop: signalled=%v err=%v", signalled, err)
	}
}
