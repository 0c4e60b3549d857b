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
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/internal/bmctest"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
	"github.com/dotfile/rackboot/status"
)

// powerLab is a rack file with two machines whose bmc: are real
// emulators: cp1 on sushy-tools (Redfish), w1 on ipmi_sim (IPMI); w2 has
// no bmc.
type powerLab struct {
	rack, state string
	sushy       *bmctest.Sushy
	ipmi        *bmctest.IPMISim
	outputs     bytes.Buffer // every stdout and stderr, to grep for passwords
}

func newPowerLab(t *testing.T) *powerLab { return newPowerLabWith(t, bmctest.SushyOpts{}, "") }

// newPowerLabWith: sushy started with o; cp1Extra are more lines of cp1's
// bmc: (indented by 6).
func newPowerLabWith(t *testing.T, o bmctest.SushyOpts, cp1Extra string) *powerLab {
	l := &powerLab{sushy: bmctest.StartSushy(t, o), ipmi: bmctest.StartIPMISim(t, "0")}
	dir := t.TempDir()
	l.rack, l.state = filepath.Join(dir, "rack.yaml"), filepath.Join(dir, ".rackboot")
	rack := fmt.Sprintf(`cluster:
  name: lab
  talosVersion: v1.13.0
  kubernetesVersion: 1.36.0
  vip: 10.0.0.10
  network:
    subnet: 10.0.0.0/24
    gateway: 10.0.0.1
    nameservers: [10.0.0.1]
    rackboot: 10.0.0.2
machines:
  - name: cp1
    role: controlplane
    select:
      mac: ["52:54:00:00:00:01"]
    address: 10.0.0.11/24
    bmc:
      address: %s
      protocol: redfish
      user: %s
%s  - name: w1
    role: worker
    select:
      mac: ["52:54:00:00:00:02"]
    bmc:
      address: %s
      protocol: ipmi
      user: %s
      firmware: uefi
  - name: w2
    role: worker
    select:
      mac: ["52:54:00:00:00:03"]
`, l.sushy.URL, l.sushy.User, cp1Extra, l.ipmi.Addr, l.ipmi.User)
	if err := os.WriteFile(l.rack, []byte(rack), 0o644); err != nil {
		t.Fatal(err)
	}
	return l
}

// run runs rackboot -v with stdin; its output is kept for the password grep.
func (l *powerLab) run(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(append([]string{"-v", "-f", l.rack, "--state", l.state}, args...))
	err := root.ExecuteContext(context.Background())
	fmt.Fprintf(&l.outputs, "$ rackboot %s\n%s%s%v\n", strings.Join(args, " "), out.String(), errb.String(), err)
	t.Logf("rackboot %s:\n%s%s(err %v)", strings.Join(args, " "), out.String(), errb.String(), err)
	return out.String(), err
}

func (l *powerLab) mustRun(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := l.run(t, stdin, args...)
	if err != nil {
		t.Fatalf("rackboot %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// statusJSON is `power status --json` by machine name.
func (l *powerLab) statusJSON(t *testing.T, args ...string) map[string]powerResult {
	t.Helper()
	out := l.mustRun(t, "", append([]string{"power", "status", "--json"}, args...)...)
	var rs []powerResult
	if err := json.Unmarshal([]byte(out), &rs); err != nil {
		t.Fatalf("power status --json: %v\n%s", err, out)
	}
	m := map[string]powerResult{}
	for _, r := range rs {
		m[r.Name] = r
	}
	return m
}

// The emulators' own view agrees with state ("on"/"off"): sushy's JSON and
// ipmitool.
func (l *powerLab) checkPeers(t *testing.T, state string) {
	t.Helper()
	if got := l.sushy.System(t)["PowerState"]; !strings.EqualFold(fmt.Sprint(got), state) {
		t.Errorf("sushy says cp1 is %v, want %s", got, state)
	}
	if out := l.ipmi.IPMITool(t, "chassis", "power", "status"); !strings.Contains(out, "Chassis Power is "+state) {
		t.Errorf("ipmitool says %q, want %s", out, state)
	}
}

// One rack, two real BMCs: passwords from bmc set-password (stdin) and
// from the environment; power status (table, JSON), on, cycle (--yes
// needed), off --all refused, bmc check, reinstall --power --no-wait with
// the read-back; the passwords never appear in any output or log.
func TestPowerAgainstEmulators(t *testing.T) {
	l := newPowerLab(t)
	out := l.mustRun(t, l.sushy.Password+"\n", "bmc", "set-password", "cp1")
	if !strings.Contains(out, "stored the BMC password of cp1") {
		t.Errorf("set-password: %q", out)
	}
	fi, err := os.Stat(filepath.Join(l.state, profiles.BMCPasswordsFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("passwords file: %v %v, want 0600", fi, err)
	}
	t.Setenv("RACKBOOT_BMC_PASSWORD_W1", l.ipmi.Password)

	out = l.mustRun(t, "", "power", "status", "--all")
	for _, want := range []string{"NAME", "STATE/RESULT", "cp1", "redfish", "w1", "ipmi", "off"} {
		if !strings.Contains(out, want) {
			t.Errorf("power status table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "w2") {
		t.Errorf("w2 (no bmc) in the table:\n%s", out)
	}
	st := l.statusJSON(t, "--all")
	if st["cp1"].State != "off" || st["cp1"].Protocol != "redfish" || st["w1"].State != "off" || st["w1"].Protocol != "ipmi" {
		t.Fatalf("power status --json: %+v", st)
	}
	l.checkPeers(t, "off")

	out = l.mustRun(t, "", "power", "on", "cp1", "w1")
	if strings.Count(out, "powered on") != 2 {
		t.Errorf("power on:\n%s", out)
	}
	if st := l.statusJSON(t, "cp1", "w1"); st["cp1"].State != "on" || st["w1"].State != "on" {
		t.Errorf("after power on: %+v", st)
	}
	l.checkPeers(t, "on")

	if _, err := l.run(t, "", "power", "cycle", "cp1", "w1"); err == nil || !strings.Contains(err.Error(), "--yes") {
		t.Errorf("cycle of two machines without --yes: %v", err)
	}
	if _, err := l.run(t, "", "power", "off", "--all"); err == nil || !strings.Contains(err.Error(), "--yes") {
		t.Errorf("off --all without --yes: %v", err)
	}
	l.checkPeers(t, "on") // nothing was done
	out = l.mustRun(t, "", "power", "cycle", "--yes", "cp1", "w1")
	if strings.Count(out, "power-cycled") != 2 {
		t.Errorf("power cycle:\n%s", out)
	}
	l.checkPeers(t, "on")

	out = l.mustRun(t, "", "bmc", "check")
	for _, want := range []string{"TLS", "none (plain http)", "password from bmc-passwords.yaml", "password from RACKBOOT_BMC_PASSWORD_W1"} {
		if !strings.Contains(out, want) {
			t.Errorf("bmc check lacks %q:\n%s", want, out)
		}
	}

	l.checkReinstall(t)
	l.checkOnNetboot(t)
	for _, pw := range []string{l.sushy.Password, l.ipmi.Password} {
		if strings.Contains(l.outputs.String(), pw) {
			t.Errorf("a BMC password appears in rackboot's output")
		}
	}
}

// reinstall --power --no-wait with no serve running (the state-dir path):
// the read-back is shown with sushy's Continuous and ipmi_sim's lost
// bits, and the BMCs hold a PXE boot.
func (l *powerLab) checkReinstall(t *testing.T) {
	if _, err := l.run(t, "", "machine", "reinstall", "cp1", "--power"); err == nil || !strings.Contains(err.Error(), "--no-wait") {
		t.Errorf("reinstall --power without a serve and without --no-wait: %v", err)
	}
	out := l.mustRun(t, "", "machine", "reinstall", "cp1", "--power", "--no-wait")
	for _, want := range []string{"network boot once, read back: target Pxe, continuous", "netboot on every boot until", "harmless", "cp1: power-cycled", "not watching"} {
		if !strings.Contains(out, want) {
			t.Errorf("reinstall cp1 --power lacks %q:\n%s", want, out)
		}
	}
	boot, _ := l.sushy.System(t)["Boot"].(map[string]any)
	if boot["BootSourceOverrideTarget"] != "Pxe" {
		t.Errorf("sushy holds boot %v", boot)
	}
	out = l.mustRun(t, "", "machine", "reinstall", "w1", "--power", "--no-wait")
	for _, want := range []string{"read back: target Pxe", "warning: the BMC holds something else", "w1: power-cycled"} {
		if !strings.Contains(out, want) {
			t.Errorf("reinstall w1 --power lacks %q:\n%s", want, out)
		}
	}
	if got := l.ipmi.ChassisFile(t, "boot"); got != "pxe" {
		t.Errorf("ipmi_sim's chassis boot is %q, want pxe", got)
	}
	if out := l.ipmi.IPMITool(t, "chassis", "bootparam", "get", "5"); !strings.Contains(out, "Force PXE") {
		t.Errorf("ipmitool does not read PXE back:\n%s", out)
	}
}

// power on --netboot on an off machine: the override is set and read
// back (in the JSON row), then the machine is powered on, not cycled.
func (l *powerLab) checkOnNetboot(t *testing.T) {
	l.mustRun(t, "", "power", "off", "--yes", "w1")
	l.ipmi.IPMITool(t, "chassis", "bootdev", "disk")
	out := l.mustRun(t, "", "power", "on", "--netboot", "--json", "w1")
	var rs []powerResult
	if err := json.Unmarshal([]byte(out), &rs); err != nil || len(rs) != 1 {
		t.Fatalf("power on --netboot --json: %v\n%s", err, out)
	}
	if r := rs[0]; r.State != "powered on" || r.Override == nil || r.Override.Target != "Pxe" || !strings.Contains(r.Note, "network boot once (uefi)") {
		t.Errorf("power on --netboot w1: %+v", r)
	}
	if got := l.ipmi.ChassisFile(t, "boot"); got != "pxe" {
		t.Errorf("ipmi_sim's chassis boot is %q after power on --netboot, want pxe", got)
	}
	if out := l.ipmi.IPMITool(t, "chassis", "power", "status"); !strings.Contains(out, "Chassis Power is on") {
		t.Errorf("ipmitool after power on --netboot: %q", out)
	}
}

// A wrong password is a clear per-machine error, the other machine goes
// on, exit code 1; the wrong password is not printed either. A passwords
// file others can read is refused.
func TestPowerWrongPasswordAndFileMode(t *testing.T) {
	l := newPowerLab(t)
	t.Setenv("RACKBOOT_BMC_PASSWORD_CP1", l.sushy.Password)
	t.Setenv("RACKBOOT_BMC_PASSWORD_W1", "not-the-pw-4711")
	out, err := l.run(t, "", "power", "status", "cp1", "w1")
	if _, serr := os.Stat(l.state); !os.IsNotExist(serr) {
		t.Errorf("power status with passwords from the environment touched the state dir: %v", serr)
	}
	var ee *exitError
	if err == nil || !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(err.Error(), "1 of 2 machine(s) failed: w1") {
		t.Errorf("wrong password: err %v", err)
	}
	if !strings.Contains(out, "refused the user name or password") || !strings.Contains(out, "FAILED") {
		t.Errorf("no clear per-machine error:\n%s", out)
	}
	if st := strings.Split(out, "\n"); len(st) < 2 || !strings.Contains(out, "cp1") || !strings.Contains(out, " off ") {
		t.Errorf("cp1 did not go on:\n%s", out)
	}
	if strings.Contains(l.outputs.String(), "not-the-pw-4711") || strings.Contains(l.outputs.String(), l.sushy.Password) {
		t.Error("a password appears in the output")
	}

	t.Setenv("RACKBOOT_BMC_PASSWORD_W1", "")
	l.mustRun(t, l.ipmi.Password, "bmc", "set-password", "w1")
	path := filepath.Join(l.state, profiles.BMCPasswordsFile)
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := l.run(t, "", "power", "status", "w1"); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a 0644 passwords file: %v", err)
	}
	if _, err := l.run(t, "", "power", "status", "w2"); err == nil || !strings.Contains(err.Error(), "w2 has no bmc:") {
		t.Errorf("w2 without bmc: %v", err)
	}
}

// servedLab runs what serve runs on its control socket: the machine table
// of an inventory (cp1 installed, w1 booted) and the reinstall action.
func servedLab(t *testing.T, l *powerLab) *inventory.Store {
	if err := os.MkdirAll(l.state, 0o700); err != nil {
		t.Fatal(err)
	}
	st, err := inventory.Open(l.state, inventory.WithFlushDelay(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	st.Record(pxe.Event{Name: "cp1", Addr: netip.MustParseAddr("10.0.0.11"), Stage: pxe.StageConfig})
	st.Record(pxe.Event{Name: "w1", Addr: netip.MustParseAddr("10.0.0.21"), Stage: pxe.StageConfig})
	if err := st.MarkStage("cp1", inventory.StageInstalled, "rebooting"); err != nil {
		t.Fatal(err)
	}
	h, err := status.Handler(st)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := listenControl(l.state)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- serveControl(ctx, ln, controlHandler(h, controlActions{reinstall: st.Reset, forget: st.Forget}), slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() { cancel(); <-done })
	return st
}

// With a serve answering: up --power powers the machine that is not
// installed (w1) and leaves the installed one (cp1); w2 gets the hint.
// reinstall cp1 --power resets it, netboots it through the BMC and
// watches until the serve reports it installed again.
func TestPowerUpAndReinstallWatch(t *testing.T) {
	l := newPowerLab(t)
	t.Setenv("RACKBOOT_BMC_PASSWORD_CP1", l.sushy.Password)
	t.Setenv("RACKBOOT_BMC_PASSWORD_W1", l.ipmi.Password)
	st := servedLab(t, l)
	r, err := profiles.LoadFile(l.rack)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	powerUp(context.Background(), &app{rackPath: l.rack, stateDir: l.state, log: slog.New(slog.DiscardHandler)}, &out, r)
	t.Logf("up --power:\n%s", out.String())
	for _, want := range []string{"cp1: installed already: left as it is", "w1: BMC " + l.ipmi.Addr + " (ipmi): network boot once, read back: target Pxe", "w1: powered on", "w2: no bmc: in the rack file: power it on"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("up --power lacks %q", want)
		}
	}
	l.ipmi.IPMITool(t, "chassis", "power", "status") // still answers
	if got := l.ipmi.ChassisFile(t, "power"); got != "1" {
		t.Errorf("w1's chassis power is %s", got)
	}
	if got := l.sushy.System(t)["PowerState"]; got != "Off" {
		t.Errorf("cp1 (installed) was powered: %v", got)
	}

	// The "install": once cp1 was reset through the socket, it reports
	// installed again.
	installed := make(chan struct{})
	go func() {
		defer close(installed)
		for i := 0; i < 600; i++ {
			if m, ok := st.Machine("cp1"); ok && !m.Installed {
				_ = st.MarkStage("cp1", inventory.StageInstalled, "rebooting")
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	o := l.mustRun(t, "", "machine", "reinstall", "cp1", "--power", "--timeout", "2m")
	<-installed
	for _, want := range []string{"cp1 will install again", "cp1: powered on", "watching cp1", "cp1 is installed"} {
		if !strings.Contains(o, want) {
			t.Errorf("reinstall --power lacks %q:\n%s", want, o)
		}
	}
	if got := l.sushy.System(t)["PowerState"]; got != "On" {
		t.Errorf("cp1 was not powered on: %v", got)
	}
}

// A Redfish BMC over https with a self-signed certificate: accepted and
// said so by default; with caFile verified; with verifyTLS against this
// computer's roots refused, as the certificate is not theirs.
func TestBMCCheckTLS(t *testing.T) {
	for _, tc := range []struct {
		name, extra, want string
		fails             bool
	}{
		{"default", "", "not verified", false},
		{"caFile", "      caFile: ca.pem\n", "verified", false},
		{"verifyTLS", "      verifyTLS: true\n", "write caFile: <the CA's PEM file> under bmc:", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newPowerLabWith(t, bmctest.SushyOpts{TLS: true}, tc.extra)
			if tc.extra != "" {
				pem := l.sushy.CAPEM
				if err := os.WriteFile(filepath.Join(filepath.Dir(l.rack), "ca.pem"), pem, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			t.Setenv("RACKBOOT_BMC_PASSWORD_CP1", l.sushy.Password)
			out, err := l.run(t, "", "bmc", "check", "--json", "cp1")
			if tc.fails {
				if err == nil || !strings.Contains(out, tc.want) {
					t.Errorf("err %v, output:\n%s", err, out)
				}
				return
			}
			var rs []powerResult
			if err != nil || json.Unmarshal([]byte(out), &rs) != nil || len(rs) != 1 || rs[0].TLS != tc.want || rs[0].State != "off" {
				t.Errorf("bmc check: %v\n%s", err, out)
			}
			if strings.Contains(l.outputs.String(), l.sushy.Password) {
				t.Error("the password appears in the output")
			}
		})
	}
}
