//go:build linux

package lab

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dotfile/rackboot/profiles"
)

// TestLabVirtualBMCs brings up a lab of two UEFI VMs, formula with an IPMI
// BMC (ipmi_sim) and urban with a Redfish one (sushy-tools over https),
// and drives them with independent clients from inside the lab namespace:
// Debian's ipmitool, and plain HTTP requests to sushy. Both start off with
// no QEMU; a network-boot override then power-on starts QEMU in the lab
// namespace with the NIC at boot index 1; off ends that QEMU; on without
// an override boots the disk first. Down leaves no process, namespace or
// BMC file.
func TestLabVirtualBMCs(t *testing.T) {
	for prog, pkg := range map[string]string{"ipmi_sim": "openipmi", "ipmitool": "ipmitool"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Fatalf("%s not found: apt-get install %s", prog, pkg)
		}
	}
	l := testLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	r := exampleRack(t)
	r.Lab.MemoryMiB = 256
	r.Machines[0].BMC = &profiles.BMC{Address: "192.168.1.31", Protocol: "ipmi", User: "root"}
	r.Machines[1].BMC = &profiles.BMC{Address: "https://192.168.1.32", Protocol: "redfish", User: "admin"}
	ipmiPW := fmt.Sprintf("ipmi-%d", os.Getpid())
	redfishPW := fmt.Sprintf("redfish-pw-%d", time.Now().UnixNano())
	st, err := l.Up(ctx, Spec{Rack: r, Machines: 2, Firmware: FirmwareUEFI,
		BMCPasswords: map[string]string{"formula": ipmiPW, "urban": redfishPW}})
	if err != nil {
		t.Fatal(err)
	}
	ns := Namespace(l.Name())

	// The state: BMCs recorded without passwords; the agent and one
	// emulator per VM run in the namespace; no QEMU.
	labJSON, _ := os.ReadFile(l.StatePath())
	if bytes.Contains(labJSON, []byte(ipmiPW)) || bytes.Contains(labJSON, []byte(redfishPW)) {
		t.Fatal("a BMC password is in lab.json")
	}
	if b := st.VM("formula").BMC; b == nil || b.Protocol != BMCIPMI || b.Address != "192.168.1.31:623" || b.URL != "" {
		t.Errorf("formula BMC state %+v", b)
	}
	if b := st.VM("urban").BMC; b == nil || b.Protocol != BMCRedfish || b.Address != "192.168.1.32:443" || b.URL != "https://192.168.1.32:443" {
		t.Errorf("urban BMC state %+v", b)
	}
	for _, role := range []string{"power", "bmc:formula", "bmc:urban"} {
		p, ok := process(st, role)
		if !ok {
			t.Fatalf("no %s process in %+v", role, st.Processes)
		}
		if in, err := l.InNamespace(p.PID); err != nil || !in {
			t.Errorf("%s (pid %d) not in %s: %v", role, p.PID, ns, err)
		}
	}
	for _, p := range st.Processes {
		if strings.HasPrefix(p.Role, "vm:") {
			t.Errorf("QEMU %s started by Up for a VM with a BMC", p.Role)
		}
	}
	for _, vm := range []string{"formula", "urban"} {
		if err := filepath.WalkDir(l.bmcDir(vm), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			fi, err := d.Info()
			if err == nil && fi.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s has mode %v", path, fi.Mode().Perm())
			}
			return err
		}); err != nil {
			t.Error(err)
		}
	}

	ipmitool := func(args ...string) string {
		t.Helper()
		base := []string{"netns", "exec", ns, "ipmitool", "-I", "lanplus", "-H", "192.168.1.31", "-U", "root", "-E", "-C", "3", "-N", "2", "-R", "3"}
		cmd := exec.CommandContext(ctx, "ip", append(base, args...)...)
		cmd.Env = append(os.Environ(), "IPMI_PASSWORD="+ipmiPW) // -E: never on the command line
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("ipmitool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	power := func(vm string) VMPower {
		t.Helper()
		p, err := l.VMPower(ctx, vm)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// waitPower waits until the agent says on (or off) and returns that.
	waitPower := func(vm string, on bool) VMPower {
		t.Helper()
		for ctx.Err() == nil {
			if p := power(vm); p.On == on {
				return p
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("vm %s: never on=%v: %+v", vm, on, power(vm))
		return VMPower{}
	}
	// checkOn checks a running VM: its QEMU is in the namespace, boots
	// first what the power-on chose, and its firmware writes to the
	// serial console.
	checkOn := func(p VMPower, first string) {
		t.Helper()
		if in, err := l.InNamespace(p.PID); err != nil || !in {
			t.Fatalf("vm %s QEMU pid %d not in %s: %v", p.Name, p.PID, ns, err)
		}
		if got := BootOrderOf(p.Args); got != first {
			t.Errorf("vm %s: QEMU boots %q first, want %q:\n%s", p.Name, got, first, strings.Join(p.Args, " "))
		}
		want := "bootindex=1"
		for i, a := range p.Args {
			if i > 0 && p.Args[i-1] == "-device" && strings.Contains(a, want) {
				t.Logf("vm %s boot index 1: %s", p.Name, a)
			}
		}
		serial := st.VM(p.Name).SerialLog
		for ctx.Err() == nil {
			if fi, err := os.Stat(serial); err == nil && fi.Size() > 0 {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("vm %s: nothing on the serial console", p.Name)
	}
	gone := func(p VMPower) {
		t.Helper()
		for ctx.Err() == nil && running(p.process()) {
			time.Sleep(50 * time.Millisecond)
		}
		if running(p.process()) {
			t.Fatalf("vm %s QEMU pid %d still runs", p.Name, p.PID)
		}
	}

	// IPMI.
	if p := power("formula"); p.On || p.Boots != 0 || p.NextBoot != BootDisk {
		t.Fatalf("formula at first: %+v", p)
	}
	if out := ipmitool("chassis", "power", "status"); !strings.Contains(out, "Chassis Power is off") {
		t.Fatalf("ipmitool power status at first: %s", out)
	}
	ipmitool("chassis", "bootdev", "pxe")
	if p := power("formula"); p.NextBoot != BootNetwork || p.BootDevice != "pxe" || p.On {
		t.Fatalf("after bootdev pxe: %+v", p)
	}
	ipmitool("chassis", "power", "on")
	on1 := waitPower("formula", true)
	checkOn(on1, BootNetwork)
	if out := ipmitool("chassis", "power", "status"); !strings.Contains(out, "Chassis Power is on") {
		t.Errorf("ipmitool power status after on: %s", out)
	}
	if on1.Boots != 1 || on1.NextBoot != BootDisk || on1.BootDevice != "default" {
		t.Errorf("the one-time override was not consumed: %+v", on1)
	}
	ipmitool("chassis", "power", "off")
	gone(on1)
	if p := power("formula"); p.On || p.LastExit == "" {
		t.Errorf("after power off: %+v", p)
	}
	if out := ipmitool("chassis", "power", "status"); !strings.Contains(out, "Chassis Power is off") {
		t.Errorf("ipmitool power status after off: %s", out)
	}
	ipmitool("chassis", "power", "on")
	on2 := waitPower("formula", true)
	checkOn(on2, BootDisk)
	if on2.Boots != 2 || on2.PID == on1.PID {
		t.Errorf("second power-on: %+v", on2)
	}
	ipmitool("chassis", "power", "off")
	gone(on2)

	// Redfish, through the lab namespace, trusting the lab's certificate.
	certPEM, err := os.ReadFile(filepath.Join(l.bmcDir("urban"), "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: l.DialContext, TLSClientConfig: &tls.Config{RootCAs: poolOf(t, certPEM)}}}
	defer hc.CloseIdleConnections()
	sysURL := "https://192.168.1.32/redfish/v1/Systems/" + st.VM("urban").UUID
	redfish := func(method, url string, body any) map[string]any {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequestWithContext(ctx, method, url, rd)
		req.SetBasicAuth("admin", redfishPW)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 300 {
			t.Fatalf("%s %s: HTTP %d: %s", method, url, resp.StatusCode, b)
		}
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return m
	}
	// A wrong password is refused.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, sysURL, nil)
	req.SetBasicAuth("admin", "wrong")
	if resp, err := hc.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("wrong password: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if s := redfish(http.MethodGet, sysURL, nil); s["PowerState"] != "Off" {
		t.Fatalf("urban at first: PowerState %v", s["PowerState"])
	}
	if p := power("urban"); p.On || p.Boots != 0 {
		t.Fatalf("urban at first: %+v", p)
	}
	redfish(http.MethodPatch, sysURL, map[string]any{"Boot": map[string]string{"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}})
	redfish(http.MethodPost, sysURL+"/Actions/ComputerSystem.Reset", map[string]string{"ResetType": "On"})
	on3 := waitPower("urban", true)
	checkOn(on3, BootNetwork)
	// sushy applies the change on a later read: poll until it says On.
	for ctx.Err() == nil && redfish(http.MethodGet, sysURL, nil)["PowerState"] != "On" {
		time.Sleep(500 * time.Millisecond)
	}
	if p := power("urban"); !p.On || p.PID != on3.PID || p.Boots != 1 {
		t.Errorf("urban after sushy applied On: %+v (a second start?)", p)
	}
	// QEMU ends by itself (killed here: no guest OS to power off): the
	// agent tells sushy, which then says Off, and the next Reset On starts
	// the VM again, network first (sushy keeps boot_device Pxe).
	if err := syscall.Kill(on3.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	gone(on3)
	for ctx.Err() == nil && redfish(http.MethodGet, sysURL, nil)["PowerState"] != "Off" {
		time.Sleep(500 * time.Millisecond)
	}
	if p := power("urban"); p.On || !strings.Contains(p.LastExit, "killed") {
		t.Errorf("urban after its QEMU was killed: %+v", p)
	}
	redfish(http.MethodPost, sysURL+"/Actions/ComputerSystem.Reset", map[string]string{"ResetType": "On"})
	on4 := waitPower("urban", true)
	checkOn(on4, BootNetwork)
	if on4.Boots != 2 {
		t.Errorf("urban's second power-on: %+v", on4)
	}
	for ctx.Err() == nil && redfish(http.MethodGet, sysURL, nil)["PowerState"] != "On" {
		time.Sleep(500 * time.Millisecond)
	}
	redfish(http.MethodPost, sysURL+"/Actions/ComputerSystem.Reset", map[string]string{"ResetType": "ForceOff"})
	gone(on4)
	for ctx.Err() == nil && redfish(http.MethodGet, sysURL, nil)["PowerState"] != "Off" {
		time.Sleep(500 * time.Millisecond)
	}
	if p := power("urban"); p.On {
		t.Errorf("urban after ForceOff: %+v", p)
	}
	// The agent and the BMCs agree with Status.
	s, err := l.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range s.VMs {
		if vm.Power != "off" || vm.Running {
			t.Errorf("status of %s: power %s running %v", vm.Name, vm.Power, vm.Running)
		}
	}

	// A killed agent (kill -9) leaves no QEMU behind (Pdeathsig).
	ipmitool("chassis", "power", "on")
	on5 := waitPower("formula", true)
	agent, _ := process(st, "power")
	if err := syscall.Kill(agent.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	gone(on5)

	// Down: nothing left.
	rep, err := l.Down(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("down: stopped %v", rep.Stopped)
	for _, p := range st.Processes {
		procGone(t, p)
	}
	if namespaceExists(ns) {
		t.Errorf("namespace %s still exists", ns)
	}
	for _, vm := range []string{"formula", "urban"} {
		if _, err := os.Stat(l.bmcDir(vm)); err == nil {
			t.Errorf("%s still exists", l.bmcDir(vm))
		}
	}
	if _, err := os.Stat(l.Dir()); err == nil {
		var left []string
		_ = filepath.WalkDir(l.Dir(), func(path string, _ fs.DirEntry, _ error) error { left = append(left, path); return nil })
		t.Errorf("the lab directory is left after down: %v", left)
	}
}

func poolOf(t *testing.T, certPEM []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(certPEM) {
		t.Fatal("the BMC's cert.pem holds no certificate")
	}
	return p
}
