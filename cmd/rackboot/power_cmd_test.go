package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/dotfile/rackboot/bmc"
	"github.com/dotfile/rackboot/profiles"
)

func powerTestRack() *profiles.Rack {
	return &profiles.Rack{Machines: []profiles.Machine{
		{Name: "cp1", BMC: &profiles.BMC{Address: "10.0.1.11", User: "admin"}},
		{Name: "w1"},
		{Name: "w2", BMC: &profiles.BMC{Address: "https://10.0.1.13", User: "admin"}},
	}}
}

func TestSelectTargets(t *testing.T) {
	r := powerTestRack()
	for _, tc := range []struct {
		args          []string
		all           bool
		want, skipped string
		err           string
	}{
		{nil, true, "cp1,w2", "w1", ""},
		{[]string{"w2", "cp1", "w2"}, false, "w2,cp1", "", ""},
		{nil, false, "", "", "name the machines (one of cp1, w1, w2) or use --all"},
		{[]string{"cp1"}, true, "", "", "not both"},
		{[]string{"nope"}, false, "", "", `no machine named "nope" in the rack file: write one of cp1, w1, w2`},
		{[]string{"w1"}, false, "", "", "w1 has no bmc: in the rack file: add bmc: {address"},
	} {
		ms, skipped, err := selectTargets(r, tc.args, tc.all)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v %t: %v, want %q", tc.args, tc.all, err, tc.err)
			}
			continue
		}
		if err != nil || strings.Join(machineNames(ms), ",") != tc.want || strings.Join(skipped, ",") != tc.skipped {
			t.Errorf("%v %t: %v skipped %v %v; want %s skipped %s", tc.args, tc.all, machineNames(ms), skipped, err, tc.want, tc.skipped)
		}
	}
	if _, _, err := selectTargets(&profiles.Rack{Machines: []profiles.Machine{{Name: "a"}}}, nil, true); err == nil || !strings.Contains(err.Error(), "no machine in the rack file has a bmc") {
		t.Errorf("--all without any bmc: %v", err)
	}
}

func TestPowerNeedsConfirm(t *testing.T) {
	for _, tc := range []struct {
		action    string
		n         int
		all, yes  bool
		ask, fail bool
	}{
		{"status", 5, true, false, false, false},
		{"on", 5, true, false, false, false},
		{"off", 1, false, false, false, false},
		{"off", 2, false, false, true, false},
		{"off", 2, false, true, false, false},
		{"off", 1, true, false, false, true},
		{"off", 3, true, true, false, false},
		{"cycle", 1, false, false, false, false},
		{"cycle", 3, false, false, true, false},
		{"cycle", 3, true, false, true, false},
		{"cycle", 3, true, true, false, false},
	} {
		ask, err := powerNeedsConfirm(tc.action, tc.n, tc.all, tc.yes)
		if ask != tc.ask || (err != nil) != tc.fail {
			t.Errorf("%+v: ask %t, err %v", tc, ask, err)
		}
	}
}

func TestPowerPlan(t *testing.T) {
	for _, tc := range []struct {
		action string
		before bmc.State
		say    string
		acts   bool
	}{
		{"status", bmc.StateOn, "on", false},
		{"status", bmc.StateUnknown, "unknown", false},
		{"on", bmc.StateOn, "already on", false},
		{"on", bmc.StateOff, "powered on", true},
		{"on", bmc.StateUnknown, "powered on", true},
		{"off", bmc.StateOff, "already off", false},
		{"off", bmc.StateOn, "powered off", true},
		{"cycle", bmc.StateOff, "was off: powered on", true},
		{"cycle", bmc.StateOn, "power-cycled", true},
	} {
		say, act := powerPlan(tc.action, tc.before)
		if say != tc.say || (act != nil) != tc.acts {
			t.Errorf("%s from %s: %q, acts %t", tc.action, tc.before, say, act != nil)
		}
	}
	for st, want := range map[bmc.State]string{bmc.StateOff: "powered on", bmc.StateOn: "power-cycled", bmc.StateUnknown: "power-cycled"} {
		if say, _ := powerUpPlan(st); say != want {
			t.Errorf("powerUpPlan(%s) = %q, want %q", st, say, want)
		}
	}
}

func TestOverrideNotes(t *testing.T) {
	for _, tc := range []struct {
		ov   bmc.BootOverride
		want []string // substrings, in order; nil: no note
	}{
		{bmc.BootOverride{Target: "Pxe", Enabled: bmc.EnabledOnce, Mode: bmc.BootModeUEFI}, nil},
		{bmc.BootOverride{Target: "Pxe", Enabled: bmc.EnabledContinuous, Mode: bmc.BootModeUEFI, Differences: []string{"Continuous instead of Once"}},
			[]string{"warning: the BMC holds something else than what was asked: Continuous instead of Once", "harmless"}},
		{bmc.BootOverride{Target: "Pxe", Enabled: bmc.EnabledContinuous, Mode: bmc.BootModeUEFI},
			[]string{"netboot at every boot until", "harmless"}},
		{bmc.BootOverride{Target: "Pxe", Enabled: bmc.EnabledDisabled, Differences: []string{"override Disabled"}},
			[]string{"warning:", "may boot its disk"}},
	} {
		got := strings.Join(overrideNotes(tc.ov), "\n")
		if (tc.want == nil) != (got == "") {
			t.Errorf("%s: %q", tc.ov, got)
		}
		rest := got
		for _, w := range tc.want {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Errorf("%s: notes %q lack %q (in order)", tc.ov, got, w)
				break
			}
			rest = rest[i+len(w):]
		}
	}
}

func TestNetbootMode(t *testing.T) {
	r := powerTestRack()
	r.Machines[2].BMC.Firmware = "bios"
	if mode, note := netbootMode(r, &r.Machines[2]); mode != bmc.BootModeBIOS || note != "" {
		t.Errorf("bios: %s %q", mode, note)
	}
	if mode, note := netbootMode(r, &r.Machines[0]); mode != bmc.BootModeUEFI || !strings.Contains(note, "using UEFI") {
		t.Errorf("unknown: %s %q", mode, note)
	}
}

func TestFirstLineAndBMCKey(t *testing.T) {
	for in, want := range map[string]string{"pw\n": "pw", "pw\r\n": "pw", "pw": "pw", "a b\nrest\n": "a b", "\n": ""} {
		if got := firstLine(in); got != want {
			t.Errorf("firstLine(%q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"HTTPS://BMC.example:443/": "bmc.example:443", "10.0.1.1": "10.0.1.1", "http://10.0.1.1": "10.0.1.1"} {
		if got := bmcKey(in); got != want {
			t.Errorf("bmcKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// Machines behind one BMC address are never handled at the same time;
// the others are all started, results stay in order.
func TestRunOnBMCsOnePerAddress(t *testing.T) {
	var ms []*profiles.Machine
	for i, addr := range []string{"10.0.1.1", "https://10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.1"} {
		ms = append(ms, &profiles.Machine{Name: string(rune('a' + i)), BMC: &profiles.BMC{Address: addr}})
	}
	var mu sync.Mutex
	inFlight := map[string]int{}
	maxSame := 0
	// Three groups: all three must be in fn together before any returns,
	// which only happens if the groups run in parallel.
	var started sync.WaitGroup
	started.Add(3)
	first := map[string]bool{}
	rs := runOnBMCs(context.Background(), ms, func(_ context.Context, m *profiles.Machine) powerResult {
		k := bmcKey(m.BMC.Address)
		mu.Lock()
		inFlight[k]++
		maxSame = max(maxSame, inFlight[k])
		isFirst := !first[k]
		first[k] = true
		mu.Unlock()
		if isFirst {
			started.Done()
			started.Wait()
		}
		mu.Lock()
		inFlight[k]--
		mu.Unlock()
		return powerResult{Name: m.Name}
	})
	if maxSame != 1 {
		t.Errorf("%d requests at once to one BMC", maxSame)
	}
	if got := strings.Join(resultNames(rs), ""); got != "abcde" {
		t.Errorf("results in order %s", got)
	}
}

func TestWritePowerTable(t *testing.T) {
	var b bytes.Buffer
	err := printResults(&b, []powerResult{
		{Name: "cp1", BMC: "10.0.1.11", Protocol: "redfish", State: "on", TLS: "not verified"},
		{Name: "w1", BMC: "10.0.1.12", Error: "bmc 10.0.1.12 (ipmi): open: the BMC refused the user name or password", Note: "password from bmc-passwords.yaml"},
	}, false, true)
	want := `NAME  BMC        PROTOCOL  STATE/RESULT  TLS           NOTE
cp1   10.0.1.11  redfish   on            not verified  
w1    10.0.1.12  -         FAILED        -             bmc 10.0.1.12 (ipmi): open: the BMC refused the user name or password; password from bmc-passwords.yaml
`
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
	if err == nil || !strings.Contains(err.Error(), "1 of 2 machine(s) failed: w1") {
		t.Errorf("err = %v", err)
	}
}
