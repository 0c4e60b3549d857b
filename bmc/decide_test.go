package bmc

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestChooseResetType(t *testing.T) {
	sushy := []string{"On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn"}
	for _, tc := range []struct {
		action  powerAction
		allowed []string
		want    string // "" = error
	}{
		{actionOn, nil, "On"},
		{actionHardOff, nil, "ForceOff"},
		{actionSoftOff, nil, "GracefulShutdown"},
		{actionOn, sushy, "On"},
		{actionHardOff, sushy, "ForceOff"},
		{actionSoftOff, sushy, "GracefulShutdown"},
		{actionOn, []string{"ForceOn", "ForceOff"}, "ForceOn"},
		{actionOn, []string{"PushPowerButton", "ForceOff"}, "PushPowerButton"},
		{actionSoftOff, []string{"On", "ForceOff", "PushPowerButton"}, "PushPowerButton"},
		{actionSoftOff, []string{"On", "ForceOff"}, ""},
		{actionHardOff, []string{"On", "PushPowerButton", "GracefulShutdown"}, ""}, // never a soft press for a hard off
		{actionOn, []string{"on"}, "on"},                                           // the BMC's own spelling is sent back
	} {
		got, err := chooseResetType(tc.action, tc.allowed)
		if tc.want == "" {
			if !errors.Is(err, ErrUnsupported) {
				t.Errorf("%s %v: got %q, %v; want ErrUnsupported", tc.action, tc.allowed, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s %v: got %q, %v; want %q", tc.action, tc.allowed, got, err, tc.want)
		}
	}
}

func TestRedfishPowerState(t *testing.T) {
	for in, want := range map[string]State{"On": StateOn, "PoweringOff": StateOn, "Off": StateOff, "PoweringOn": StateOff, "": StateUnknown, "Paused": StateUnknown} {
		if got := redfishPowerState(in); got != want {
			t.Errorf("%q: got %s, want %s", in, got, want)
		}
	}
}

func TestCheckOverride(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    BootMode
		got     BootOverride
		diffs   []string // substrings, in order
		ignored bool
	}{
		{"exact uefi", BootModeUEFI, BootOverride{Target: "Pxe", Enabled: EnabledOnce, Mode: BootModeUEFI}, nil, false},
		{"exact bios", BootModeBIOS, BootOverride{Target: "Pxe", Enabled: EnabledOnce, Mode: BootModeBIOS}, nil, false},
		{"sushy continuous", BootModeUEFI, BootOverride{Target: "Pxe", Enabled: EnabledContinuous, Mode: BootModeUEFI}, []string{"Continuous, not Once"}, false},
		{"mode altered", BootModeUEFI, BootOverride{Target: "Pxe", Enabled: EnabledOnce, Mode: BootModeBIOS}, []string{"boot mode is bios, not uefi"}, false},
		{"mode unreported (iLO 4 without mode)", BootModeUEFI, BootOverride{Target: "Pxe", Enabled: EnabledOnce}, []string{"does not report the boot mode"}, false},
		{"ipmi_sim: valid bit and EFI lost", BootModeUEFI, BootOverride{Target: "Pxe", Enabled: EnabledDisabled, Mode: BootModeBIOS}, []string{"Disabled", "boot mode is bios"}, false},
		{"200 and ignored", BootModeUEFI, BootOverride{Target: "Hdd", Enabled: EnabledOnce, Mode: BootModeUEFI}, []string{"target is Hdd, not Pxe"}, true},
		{"supermicro reverted", BootModeUEFI, BootOverride{Target: "None", Enabled: EnabledDisabled, Mode: BootModeBIOS}, []string{"target is None", "Disabled", "bios"}, true},
		{"empty", BootModeBIOS, BootOverride{}, []string{"target is none", "does not report whether", "does not report the boot mode"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := checkOverride(tc.mode, tc.got)
			if tc.ignored != errors.Is(err, ErrOverrideIgnored) {
				t.Errorf("err = %v, want ignored=%t", err, tc.ignored)
			}
			if len(got.Differences) != len(tc.diffs) {
				t.Fatalf("differences %q, want %d matching %q", got.Differences, len(tc.diffs), tc.diffs)
			}
			for i, d := range tc.diffs {
				if !strings.Contains(got.Differences[i], d) {
					t.Errorf("difference %d = %q, want it to contain %q", i, got.Differences[i], d)
				}
			}
			if got.Netboots() != (tc.got.Target == "Pxe" && tc.got.Enabled != EnabledDisabled) {
				t.Errorf("Netboots() = %t for %s", got.Netboots(), got)
			}
		})
	}
}

func TestDropModeAndRetry(t *testing.T) {
	for _, tc := range []struct {
		status int
		msg    string
		want   bool
	}{
		{400, `{"error":{"@Message.ExtendedInfo":[{"MessageId":"Base.1.0.PropertyNotWritable","RelatedProperties":["#/Boot/BootSourceOverrideMode"]}]}}`, true},
		{400, "iLO.2.4.PropertyValueNotInList", true},
		{400, "", true},
		{400, "The value for BootSourceOverrideTarget is not allowed", false},
		{401, "", false},
		{412, "", false},
		{500, "", false},
		{405, "", true},
	} {
		if got := dropModeAndRetry(tc.status, tc.msg); got != tc.want {
			t.Errorf("%d %q: got %t, want %t", tc.status, tc.msg, got, tc.want)
		}
	}
}

func TestMatchSystem(t *testing.T) {
	systems := []systemRef{
		{ODataID: "/redfish/v1/Systems/1", ID: "1", UUID: "27946B59-9E44-4FA7-8E91-F3527A1EF094", MACs: []string{"52:54:00:b0:00:01"}},
		{ODataID: "/redfish/v1/Systems/2", ID: "2", UUID: "48295459-0000-0000-0000-000000000002", MACs: []string{"", "52-54-00-B0-00-02"}},
	}
	for _, tc := range []struct {
		want string
		idx  int
	}{
		{"1", 0}, {"2", 1},
		{"27946b59-9e44-4fa7-8e91-f3527a1ef094", 0},
		{"52:54:00:B0:00:02", 1},
		{"", -1},
		{"3", -1},
		{"52:54:00:b0:00:09", -1},
	} {
		got, err := matchSystem(systems, tc.want)
		if got != tc.idx || (tc.idx < 0) != (err != nil) {
			t.Errorf("%q: got %d, %v; want %d", tc.want, got, err, tc.idx)
		}
	}
	if i, err := matchSystem(systems[:1], ""); i != 0 || err != nil {
		t.Errorf("single system: got %d, %v", i, err)
	}
	if _, err := matchSystem(nil, ""); err == nil {
		t.Error("no systems: no error")
	}
}

func TestBootFlags(t *testing.T) {
	for _, tc := range []struct {
		data []byte
		want BootOverride
	}{
		{encodeBootFlags(BootModeUEFI), BootOverride{Target: "Pxe", Enabled: EnabledOnce, Mode: BootModeUEFI}},
		{encodeBootFlags(BootModeBIOS), BootOverride{Target: "Pxe", Enabled: EnabledOnce, Mode: BootModeBIOS}},
		{[]byte{0x00, 0x04, 0, 0, 0}, BootOverride{Target: "Pxe", Enabled: EnabledDisabled, Mode: BootModeBIOS}},         // ipmi_sim
		{[]byte{0xe0, 0x08, 0, 0, 0}, BootOverride{Target: "Hdd", Enabled: EnabledContinuous, Mode: BootModeUEFI}},       // persistent disk
		{[]byte{0x80, 0x14, 0, 0, 0}, BootOverride{Target: "Cd", Enabled: EnabledOnce, Mode: BootModeBIOS}},              // openbmc #1390
		{[]byte{0x80, 0x28}, BootOverride{Target: "Device0xa", Enabled: EnabledOnce, Mode: BootModeBIOS}},                // short, reserved selector
		{[]byte{0x80, 0xff, 0xff, 0xff, 0xff}, BootOverride{Target: "Floppy", Enabled: EnabledOnce, Mode: BootModeBIOS}}, // other bits ignored
	} {
		got, err := parseBootFlags(tc.data)
		if err != nil || !equalOverride(got, tc.want) {
			t.Errorf("% x: got %+v, %v; want %+v", tc.data, got, err, tc.want)
		}
	}
	for _, bad := range [][]byte{nil, {0x80}} {
		if _, err := parseBootFlags(bad); err == nil {
			t.Errorf("% x: no error", bad)
		}
	}
	if got := encodeBootFlags(BootModeUEFI); !slices.Equal(got, []byte{0xa0, 0x04, 0, 0, 0}) {
		t.Errorf("encode uefi = % x", got)
	}
}

func equalOverride(a, b BootOverride) bool {
	return a.Target == b.Target && a.Enabled == b.Enabled && a.Mode == b.Mode
}

func FuzzParseBootFlags(f *testing.F) {
	f.Add([]byte{0xa0, 0x04, 0, 0, 0})
	f.Add([]byte{0x00, 0x04, 0, 0, 0})
	f.Add([]byte{0x80})
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := parseBootFlags(data)
		if err != nil {
			return
		}
		if o.Target == "" || o.Enabled == "" || o.Mode == "" {
			t.Fatalf("% x: incomplete %+v", data, o)
		}
		// Whatever the bytes, the check names each difference and only a
		// non-Pxe target is an error.
		c, err := checkOverride(BootModeUEFI, o)
		if (err != nil) != (o.Target != TargetPxe) {
			t.Fatalf("% x: %+v: err %v", data, c, err)
		}
	})
}

// authCapsAnswer builds an answer to authCapsRequest as ipmi_sim sends it.
func authCapsAnswer(authType byte, cc byte, data []byte) []byte {
	msg := []byte{0x81, 0x1c, 0x63, 0x20, 0x00, 0x38, cc}
	msg = append(msg, data...)
	msg = append(msg, 0x00) // checksum (not checked)
	p := []byte{0x06, 0x00, 0xff, 0x07, authType, 0, 0, 0, 0, 0, 0, 0, 0}
	if authType != 0 {
		p = append(p, make([]byte, 16)...)
	}
	p = append(p, byte(len(msg)))
	return append(p, msg...)
}

func TestParseAuthCapsResponse(t *testing.T) {
	v2 := []byte{0x01, 0x97, 0x04, 0x03, 0, 0, 0, 0}
	for _, tc := range []struct {
		name string
		p    []byte
		plus bool
		ok   bool
	}{
		{"v2.0", authCapsAnswer(0, 0, v2), true, true},
		{"v1.5 only", authCapsAnswer(0, 0, []byte{0x01, 0x17, 0x04, 0x00, 0, 0, 0, 0}), false, true},
		{"with auth code", authCapsAnswer(2, 0, v2), true, true},
		{"completion code", authCapsAnswer(0, 0xcc, nil), false, false},
		{"not rmcp", []byte("HTTP/1.1 400 Bad Request"), false, false},
		{"truncated", authCapsAnswer(0, 0, v2)[:20], false, false},
		{"wrong command", func() []byte { p := authCapsAnswer(0, 0, v2); p[19] = 0x01; return p }(), false, false},
	} {
		plus, err := parseAuthCapsResponse(tc.p)
		if (err == nil) != tc.ok || plus != tc.plus {
			t.Errorf("%s: got %t, %v; want %t ok=%t", tc.name, plus, err, tc.plus, tc.ok)
		}
	}
	// The request's checksums are right (a BMC drops a bad one silently).
	sum := func(b []byte) (s byte) {
		for _, x := range b {
			s += x
		}
		return s
	}
	if m := authCapsRequest[14:]; sum(m[:3]) != 0 || sum(m[3:]) != 0 {
		t.Errorf("bad checksums in % x", m)
	}
}

func FuzzParseAuthCapsResponse(f *testing.F) {
	f.Add(authCapsAnswer(0, 0, []byte{0x01, 0x97, 0x04, 0x03, 0, 0, 0, 0}))
	f.Add(authCapsAnswer(2, 0, []byte{0x01, 0x97, 0x04, 0x03}))
	f.Add([]byte{0x06, 0x00, 0xff, 0x07})
	f.Fuzz(func(t *testing.T, p []byte) {
		plus, err := parseAuthCapsResponse(p)
		if err != nil && plus {
			t.Fatalf("% x: rmcp+ with an error", p)
		}
	})
}

func TestConfigNeverPrintsPassword(t *testing.T) {
	cfg := Config{Address: "10.0.0.31", Protocol: ProtocolRedfish, User: "admin", Password: "hunter2-secret"}
	//lint:ignore S1025 each formatting verb is what is under test
	for _, s := range []string{fmt.Sprint(cfg), fmt.Sprintf("%v", cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg), fmt.Sprintf("%s", cfg), fmt.Sprint(&cfg)} {
		if strings.Contains(s, "hunter2") {
			t.Errorf("password printed: %s", s)
		}
		if !strings.Contains(s, "10.0.0.31") {
			t.Errorf("address missing: %s", s)
		}
	}
	err := cfg.errorf(ProtocolRedfish, "power on", errors.New("echoed hunter2-secret back"))
	if strings.Contains(err.Error(), "hunter2") || !strings.HasPrefix(err.Error(), "bmc 10.0.0.31 (redfish): power on: ") {
		t.Errorf("error = %q", err)
	}
}

func TestParseProtocol(t *testing.T) {
	for in, want := range map[string]Protocol{"": ProtocolAuto, "IPMI": ProtocolIPMI, " redfish ": ProtocolRedfish, "auto": ProtocolAuto} {
		if got, err := ParseProtocol(in); err != nil || got != want {
			t.Errorf("%q: %s, %v", in, got, err)
		}
	}
	if _, err := ParseProtocol("snmp"); err == nil {
		t.Error("snmp accepted")
	}
}
