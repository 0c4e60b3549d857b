package bmc

// Protocol decisions as pure functions, table-tested in decide_test.go.

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
)

// powerAction is what rackboot wants from a Redfish Reset.
type powerAction int

const (
	actionOn      powerAction = iota // power on
	actionHardOff                    // immediate, hard power off
	actionSoftOff                    // ACPI soft-off (the OS shuts down)
)

func (a powerAction) String() string {
	switch a {
	case actionOn:
		return "power on"
	case actionHardOff:
		return "power off"
	case actionSoftOff:
		return "graceful shutdown"
	}
	return "unknown action"
}

// resetPreference lists, best first, the Redfish ResetType values that do
// each action. PushPowerButton is a last resort for on and soft-off (on a
// running machine it is an ACPI power-button press); it is never used for a
// hard off, where it would only ask the OS.
var resetPreference = map[powerAction][]string{
	actionOn:      {"On", "ForceOn", "PushPowerButton"},
	actionHardOff: {"ForceOff"},
	actionSoftOff: {"GracefulShutdown", "PushPowerButton"},
}

// chooseResetType picks the ResetType for action among the values the system
// lists in ResetType@Redfish.AllowableValues. An empty list means the BMC did
// not say: the standard value is used (the first preference).
func chooseResetType(action powerAction, allowed []string) (string, error) {
	prefs := resetPreference[action]
	if len(allowed) == 0 {
		return prefs[0], nil
	}
	for _, p := range prefs {
		for _, a := range allowed {
			if strings.EqualFold(a, p) {
				return a, nil
			}
		}
	}
	return "", fmt.Errorf("%w: %s needs one of the reset types %s, the BMC allows only %s",
		ErrUnsupported, action, strings.Join(prefs, ", "), strings.Join(allowed, ", "))
}

// redfishPowerState maps a ComputerSystem.PowerState. A transition counts as
// the state it leaves (PoweringOn is still off).
func redfishPowerState(s string) State {
	switch strings.ToLower(s) {
	case "on", "poweringoff":
		return StateOn
	case "off", "poweringon":
		return StateOff
	}
	return StateUnknown
}

// redfishOverride reads a Redfish Boot object's override fields.
func redfishOverride(target, enabled, mode string) BootOverride {
	o := BootOverride{Target: target}
	switch strings.ToLower(enabled) {
	case "once":
		o.Enabled = EnabledOnce
	case "continuous":
		o.Enabled = EnabledContinuous
	case "disabled":
		o.Enabled = EnabledDisabled
	}
	switch strings.ToLower(mode) {
	case "uefi":
		o.Mode = BootModeUEFI
	case "legacy":
		o.Mode = BootModeBIOS
	}
	return o
}

// redfishMode is the BootSourceOverrideMode for a BootMode.
func redfishMode(m BootMode) string {
	if m == BootModeUEFI {
		return "UEFI"
	}
	return "Legacy"
}

// checkOverride compares a read-back with a requested one-time network boot
// in mode: it returns got with its Differences filled, and an error wrapping
// ErrOverrideIgnored when got is no network boot at all. Differences that
// still netboot (Continuous instead of Once, another firmware mode, a mode
// the BMC does not report) are no error: rackboot's netboot server answers
// BIOS and UEFI clients, and tells installed machines to boot their disk.
func checkOverride(mode BootMode, got BootOverride) (BootOverride, error) {
	got.Differences = nil
	if got.Target != TargetPxe {
		t := got.Target
		if t == "" {
			t = "none"
		}
		got.Differences = append(got.Differences, fmt.Sprintf("boot target is %s, not Pxe", t))
	}
	switch got.Enabled {
	case EnabledOnce:
	case EnabledContinuous:
		got.Differences = append(got.Differences, "override is Continuous, not Once: the machine will netboot on every boot until the override is cleared")
	case EnabledDisabled:
		got.Differences = append(got.Differences, "override is Disabled: the BMC reports no valid boot override")
	default:
		got.Differences = append(got.Differences, "the BMC does not report whether the override is enabled")
	}
	switch got.Mode {
	case mode:
	case "":
		got.Differences = append(got.Differences, fmt.Sprintf("the BMC does not report the boot mode (asked %s)", mode))
	default:
		got.Differences = append(got.Differences, fmt.Sprintf("boot mode is %s, not %s", got.Mode, mode))
	}
	if got.Target != TargetPxe {
		return got, fmt.Errorf("%w: read back %s", ErrOverrideIgnored, got)
	}
	return got, nil
}

// dropModeAndRetry tells whether a rejected override PATCH that carried
// BootSourceOverrideMode should be sent again without it: iLO 4 and others
// answer 400 to a PATCH that writes the mode (ansible community.general#3509).
func dropModeAndRetry(status int, message string) bool {
	if status != 400 && status != 403 && status != 405 && status != 501 {
		return false
	}
	if status != 400 {
		return true
	}
	m := strings.ToLower(message)
	for _, s := range []string{"bootsourceoverridemode", "propertynotwritable", "propertyunknown", "propertyvaluenotinlist", "read-only", "readonly", "not writable", "unsupported"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	// A bare 400 without a message naming a property: the mode is the only
	// optional field we send, so try once more without it.
	return !strings.Contains(m, "bootsourceoverridetarget") && !strings.Contains(m, "bootsourceoverrideenabled")
}

// systemRef is what matchSystem needs to know of a Redfish system.
type systemRef struct {
	ODataID string
	ID      string
	UUID    string
	MACs    []string
}

// matchSystem picks the system want names (Id, UUID or a NIC's MAC), or the
// only system when want is "".
func matchSystem(systems []systemRef, want string) (int, error) {
	if len(systems) == 0 {
		return -1, errors.New("the BMC lists no computer system")
	}
	ids := make([]string, len(systems))
	for i, s := range systems {
		ids[i] = s.ID
	}
	if want == "" {
		if len(systems) == 1 {
			return 0, nil
		}
		return -1, fmt.Errorf("the BMC has %d systems (%s): set the machine's bmc system to one Id, UUID or MAC", len(systems), strings.Join(ids, ", "))
	}
	mac, macErr := net.ParseMAC(want)
	for i, s := range systems {
		if s.ID == want || (s.UUID != "" && strings.EqualFold(s.UUID, want)) {
			return i, nil
		}
		if macErr == nil && slices.ContainsFunc(s.MACs, func(m string) bool {
			hw, err := net.ParseMAC(m)
			return err == nil && hw.String() == mac.String()
		}) {
			return i, nil
		}
	}
	return -1, fmt.Errorf("no system %q on the BMC (it has %s): use an Id, a UUID or a MAC of one of them", want, strings.Join(ids, ", "))
}

// IPMI boot flags (IPMI v2.0 table 28-14, boot option parameter 5).

// ipmiDevices maps boot device selectors (byte 2, bits 5:2) to Redfish names.
var ipmiDevices = map[byte]string{
	0x0: "None",
	0x1: "Pxe",
	0x2: "Hdd",
	0x3: "Hdd", // hard drive, safe mode
	0x4: "Diags",
	0x5: "Cd",
	0x6: "BiosSetup",
	0x7: "RemoteFloppy",
	0x8: "RemoteCd",
	0x9: "RemoteMedia",
	0xb: "RemoteHdd",
	0xf: "Floppy",
}

// encodeBootFlags is the 5-byte parameter 5 data for a PXE boot that is
// valid for the next boot only, in mode.
func encodeBootFlags(mode BootMode) []byte {
	b1 := byte(0x80) // boot flags valid; bit 6 clear: next boot only
	if mode == BootModeUEFI {
		b1 |= 0x20 // EFI boot
	}
	return []byte{b1, 0x1 << 2, 0, 0, 0}
}

// parseBootFlags reads parameter 5 data as a BootOverride.
func parseBootFlags(data []byte) (BootOverride, error) {
	if len(data) < 2 {
		return BootOverride{}, fmt.Errorf("boot flags are %d bytes, want 5", len(data))
	}
	var o BootOverride
	switch {
	case data[0]&0x80 == 0:
		o.Enabled = EnabledDisabled
	case data[0]&0x40 != 0:
		o.Enabled = EnabledContinuous
	default:
		o.Enabled = EnabledOnce
	}
	o.Mode = BootModeBIOS
	if data[0]&0x20 != 0 {
		o.Mode = BootModeUEFI
	}
	sel := (data[1] >> 2) & 0xf
	if name, ok := ipmiDevices[sel]; ok {
		o.Target = name
	} else {
		o.Target = fmt.Sprintf("Device%#x", sel)
	}
	return o, nil
}

// IPMI presence probe: Get Channel Authentication Capabilities in an IPMI
// v1.5 session-less packet (what ipmitool sends first), channel 0xE (this
// one) with the "IPMI v2.0 extended data" bit, administrator privilege.
var authCapsRequest = []byte{
	0x06, 0x00, 0xff, 0x07, // RMCP: version 6, reserved, no ack, class IPMI
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // auth none, seq 0, session 0
	0x09,             // message length
	0x20, 0x18, 0xc8, // BMC address, netFn app (0x06<<2), checksum
	0x81, 0x00, 0x38, // remote console, seq 0, command 0x38
	0x8e, 0x04, // channel 0xE + v2.0 data, admin privilege
	0xb5, // checksum
}

// parseAuthCapsResponse checks an answer to authCapsRequest and reports
// whether the BMC speaks IPMI v2.0 (RMCP+).
func parseAuthCapsResponse(p []byte) (rmcpPlus bool, err error) {
	if len(p) < 4 || p[0] != 0x06 || p[3]&0x1f != 0x07 {
		return false, errors.New("not an RMCP/IPMI packet")
	}
	p = p[4:]
	// IPMI v1.5 session header: auth type, seq(4), session id(4),
	// [auth code(16) when auth type != 0], length.
	hdr := 9
	if len(p) < 1 {
		return false, errors.New("short IPMI session header")
	}
	if p[0] != 0 {
		hdr += 16
	}
	if len(p) < hdr+1 {
		return false, errors.New("short IPMI session header")
	}
	n := int(p[hdr])
	msg := p[hdr+1:]
	if n > len(msg) {
		return false, errors.New("IPMI message shorter than its length")
	}
	msg = msg[:n]
	// rqAddr, netFn/LUN, checksum, rsAddr, seq, cmd, completion code, data...
	if len(msg) < 7 {
		return false, errors.New("short IPMI message")
	}
	if msg[1]>>2 != 0x07 || msg[5] != 0x38 {
		return false, fmt.Errorf("unexpected IPMI response netFn %#x cmd %#x", msg[1]>>2, msg[5])
	}
	if cc := msg[6]; cc != 0 {
		return false, fmt.Errorf("IPMI completion code %#x", cc)
	}
	data := msg[7:]
	if len(data) < 4 {
		return false, errors.New("short authentication capabilities")
	}
	// data[1] bit 7: extended capabilities present; data[3] bit 1: IPMI
	// v2.0 connections supported.
	return data[1]&0x80 != 0 && data[3]&0x02 != 0, nil
}
