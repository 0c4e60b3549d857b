//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/dotfile/rackboot/lab"
)

// bmcRack is testRack with two lab machines that have BMCs on the lab
// network: cp1 an IPMI one (ipmi_sim), w1 a Redfish one (sushy-tools).
func bmcRack() string {
	r := strings.Replace(testRack, "    address: 10.77.0.11/24\n",
		"    address: 10.77.0.11/24\n    bmc:\n      address: 10.77.0.31\n      protocol: ipmi\n      user: admin\n      firmware: uefi\n", 1)
	r = strings.Replace(r, "    address: 10.77.0.12/24\n",
		"    address: 10.77.0.12/24\n    bmc:\n      address: 10.77.0.32\n      protocol: redfish\n      user: root\n      firmware: uefi\n", 1)
	return strings.Replace(r, "  machines: 1\n", "  machines: 2\n", 1)
}

// TestBMCPowerUEFI: the lab's machines start powered off behind virtual
// BMCs, and rackboot brings them up through them with nothing else done,
// run on the lab's network as a user would (`rackboot lab exec`):
//
//   - w1 (Redfish): `power on --netboot` → sushy-tools holds Pxe, the VM
//     starts with its NIC first, netboots and installs.
//   - cp1 (IPMI), off: `machine reinstall cp1 --power` sets a network boot
//     once, powers it on and watches it install; ipmitool agrees with
//     rackboot on the power state before and after.
//   - cp1, installed and off: `power on` with no override → the VM starts
//     with its disk first and the installed system reports rebooted and
//     running, with no network boot and no config served; a power cycle
//     shuts it down softly (ACPI, acted on by the running system) and
//     starts it disk first again.
//   - the lab's BMC passwords appear in no output, log or API answer.
func TestBMCPowerUEFI(t *testing.T) {
	s := newScenario(t, "b")
	// sushy-tools, the Redfish BMC emulator, beside the checkout (the CLI
	// runs from the test's folder, where the lab would not find it).
	s.env = append(s.env, "RACKBOOT_SUSHY_TOOLS="+filepath.Join(prepared.root, "..", "shared", "tools", "sushy-tools"))
	if err := os.WriteFile(s.rack, []byte(bmcRack()), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	out := s.labUpArgs(ctx, []string{"lab", "up", "--name", s.name, "--machines", "2", "--firmware", "uefi",
		"--standin", prepared.standin, "--powered-off", "--no-wait"})
	for _, want := range []string{"ipmi 10.77.0.31:623", "redfish https://10.77.0.32:443", "powered off"} {
		if !strings.Contains(out, want) {
			t.Errorf("lab up output lacks %q:\n%s", want, out)
		}
	}
	l := s.lab()
	for _, name := range []string{"cp1", "w1"} {
		if p, err := l.VMPower(ctx, name); err != nil || p.On || p.Boots != 0 {
			t.Fatalf("%s after lab up: %+v, %v; want off, never started", name, p, err)
		}
	}
	passwords := labPasswords(t, l)
	exec := func(args ...string) string {
		t.Helper()
		out, err := s.cli(ctx, append([]string{"lab", "exec", "--name", s.name, "--"}, args...)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return out
	}
	ipmiPower := func() string {
		t.Helper()
		s.env = append(s.env, "IPMI_PASSWORD="+passwords["cp1"])
		defer func() { s.env = s.env[:len(s.env)-1] }()
		out := exec("ipmitool", "-I", "lanplus", "-H", "10.77.0.31", "-U", "admin", "-E", "-C", "3", "chassis", "power", "status")
		return strings.TrimSpace(out)
	}
	if got := ipmiPower(); got != "Chassis Power is off" {
		t.Errorf("ipmitool before: %q", got)
	}
	st := powerStatus(t, exec("rackboot", "power", "status", "--all", "--json"))
	if st["cp1"] != "off" || st["w1"] != "off" {
		t.Errorf("power status before: %v", st)
	}

	// w1 through Redfish, not waited for yet.
	begin := time.Now()
	out = exec("rackboot", "power", "on", "--netboot", "w1")
	if !strings.Contains(out, "powered on") || !strings.Contains(out, "target Pxe") {
		t.Errorf("power on --netboot w1:\n%s", out)
	}
	checkBoot(t, l, "w1", "network")

	// cp1 through IPMI: reinstall --power watches it install.
	out = exec("rackboot", "machine", "reinstall", "cp1", "--power", "--timeout", "8m")
	if !strings.Contains(out, "cp1 is installed") || !strings.Contains(out, "powered on") {
		t.Errorf("machine reinstall cp1 --power:\n%s", out)
	}
	logTiming(t, "cp1 reinstall --power → installed", time.Since(begin))
	checkBoot(t, l, "cp1", "network")
	if got := ipmiPower(); got != "Chassis Power is on" && got != "Chassis Power is off" {
		t.Errorf("ipmitool after the install: %q", got)
	}

	a := s.api()
	if _, err := a.waitMachine(ctx, "w1", installed); err != nil {
		t.Fatal(err)
	}
	logTiming(t, "w1 power on --netboot → installed", time.Since(begin))

	// The stand-in powers off after its install: the BMC says so.
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer wcancel()
	if err := s.waitStopped(wctx, "cp1"); err != nil {
		t.Fatal(err)
	}
	if got := ipmiPower(); got != "Chassis Power is off" {
		t.Errorf("ipmitool after cp1 powered itself off: %q", got)
	}
	t.Run("disk-boot", func(t *testing.T) { bmcDiskBoot(t, s, exec) })

	for _, f := range []string{filepath.Join(s.dir, "cli.log"), filepath.Join(l.Dir(), "serve.log"), l.StatePath()} {
		b, _ := os.ReadFile(f)
		for name, pw := range passwords {
			if strings.Contains(string(b), pw) {
				t.Errorf("%s's BMC password appears in %s", name, f)
			}
		}
	}
	ms, err := a.machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := json.Marshal(ms)
	for name, pw := range passwords {
		if strings.Contains(string(js), pw) {
			t.Errorf("%s's BMC password appears in /api/machines", name)
		}
	}
}

// bmcDiskBoot: cp1 is installed and off; `power on` with no override
// starts it disk first and it runs the installed system.
func bmcDiskBoot(t *testing.T, s *scenario, exec func(...string) string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a := s.api()
	before, err := a.machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m0, _ := machine(before, "cp1")
	serveLog := filepath.Join(s.lab().Dir(), "serve.log")
	configs := countLines(serveLog, "config served", "name=cp1")
	start := time.Now()
	out := exec("rackboot", "power", "on", "cp1")
	if !strings.Contains(out, "powered on") {
		t.Errorf("power on cp1:\n%s", out)
	}
	checkBoot(t, s.lab(), "cp1", "disk")
	waitDiskBoot(ctx, t, a, "cp1", m0)
	logTiming(t, "cp1 power on (disk) → running", time.Since(start))
	if n := countLines(serveLog, "config served", "name=cp1"); n != configs {
		t.Errorf("serve served cp1 %d config(s) during the disk boot", n-configs)
	}
	// A power cycle is soft first: the BMC's soft off is the ACPI power
	// button, which the running system acts on (as Talos does).
	p0, err := s.lab().VMPower(ctx, "cp1")
	if err != nil {
		t.Fatal(err)
	}
	out = exec("rackboot", "power", "cycle", "cp1")
	p1, err := s.lab().VMPower(ctx, "cp1")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "power-cycled") || p1.Boots != p0.Boots+1 || p1.LastExit != "guest-shutdown" || !p1.On {
		t.Errorf("power cycle cp1: boots %d → %d, last exit %q, on %v; want one more boot after the guest shut itself down:\n%s", p0.Boots, p1.Boots, p1.LastExit, p1.On, out)
	}
	checkBoot(t, s.lab(), "cp1", "disk")
	out = exec("rackboot", "power", "off", "cp1")
	if !strings.Contains(out, "powered off") {
		t.Errorf("power off cp1:\n%s", out)
	}
	if p, err := s.lab().VMPower(ctx, "cp1"); err != nil || p.On {
		t.Errorf("cp1 after power off: %+v, %v", p, err)
	}
}

// checkBoot checks how the VM's QEMU was last started: the NIC or the
// NVMe at bootindex=1.
func checkBoot(t *testing.T, l *lab.Lab, name, want string) {
	t.Helper()
	p, err := l.VMPower(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	first := ""
	for _, a := range p.Args {
		if strings.HasSuffix(a, ",bootindex=1") {
			first = a
		}
	}
	got := "network"
	if strings.HasPrefix(first, "nvme,") {
		got = "disk"
	}
	if first == "" || got != want || p.Boots == 0 {
		t.Errorf("%s started %d time(s), first boot device %q: want %s first", name, p.Boots, first, want)
	}
}

// labPasswords reads the passwords the lab made for its BMCs (kept in
// serve's state directory, where `lab exec -- rackboot` finds them).
func labPasswords(t *testing.T, l *lab.Lab) map[string]string {
	t.Helper()
	path := l.Path("serve", "bmc-passwords.yaml")
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("the lab's BMC passwords file: %v %v, want mode 0600", fi, err)
	}
	var pw map[string]string
	if err := yaml.Unmarshal(readFile(t, path), &pw); err != nil || pw["cp1"] == "" || pw["w1"] == "" {
		t.Fatalf("the lab's BMC passwords: %v (machines %d)", err, len(pw))
	}
	return pw
}

// powerStatus reads `power status --json` into name → state.
func powerStatus(t *testing.T, out string) map[string]string {
	t.Helper()
	var rs []struct{ Name, State string }
	if i := strings.Index(out, "\n["); i >= 0 { // after the log lines on stderr
		out = out[i:]
	}
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		t.Fatalf("power status --json: %v\n%s", err, out)
	}
	m := map[string]string{}
	for _, r := range rs {
		m[r.Name] = r.State
	}
	return m
}
