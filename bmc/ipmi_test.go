package bmc

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func ipmiConfig(t *testing.T, s *ipmiSim) (Config, *syncBuffer) {
	log, buf := testLog(t)
	return Config{Address: s.Addr, Protocol: ProtocolIPMI, User: s.User, Password: s.Password,
		PowerTimeout: 10 * time.Second, SoftTimeout: 5 * time.Second, Log: log}, buf
}

// Power status, on, off and cycle through ipmi_sim; after each step
// ipmitool (an independent client) and the chassis agree with the driver.
func TestIPMIPower(t *testing.T) {
	s := startIPMISim(t, "0")
	cfg, logs := ipmiConfig(t, s)
	d := openT(t, cfg)
	ctx := context.Background()
	check := func(want State) {
		t.Helper()
		st, err := d.PowerState(ctx)
		if err != nil || st != want {
			t.Fatalf("driver: %s, %v; want %s", st, err, want)
		}
		out := s.IPMITool(t, "chassis", "status")
		if !strings.Contains(out, "System Power         : "+string(want)) {
			t.Fatalf("ipmitool chassis status disagrees with %s:\n%s", want, out)
		}
		chassis := map[State]string{StateOn: "1", StateOff: "0"}[want]
		if got := s.ChassisFile(t, "power"); got != chassis {
			t.Fatalf("the chassis power is %s, want %s", got, chassis)
		}
	}
	check(StateOff)
	if err := d.PowerOn(ctx); err != nil {
		t.Fatal(err)
	}
	check(StateOn)
	if err := d.PowerOff(ctx); err != nil {
		t.Fatal(err)
	}
	check(StateOff)
	if err := d.PowerOff(ctx); err != nil { // already off: nothing sent
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), `action="power off"`); n != 1 {
		t.Errorf("%d power-off controls sent, want 1", n)
	}
	if err := d.PowerOn(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.PowerCycle(ctx); err != nil {
		t.Fatal(err)
	}
	check(StateOn)
	l := logs.String()
	if i, j := strings.LastIndex(l, `action="graceful shutdown"`), strings.LastIndex(l, `action="power on"`); i < 0 || j < i {
		t.Errorf("the cycle was not soft-off then on:\n%s", l)
	}
	noSecret(t, s.Password, logs.String())
}

// One-time PXE boot: the driver sets the flags and reads them back.
// ipmi_sim passes the device to its chassis but answers the read-back with
// byte 1 zeroed (no valid bit, no EFI bit): the driver reports exactly
// that, and ipmitool reads the same.
func TestIPMINetbootOnce(t *testing.T) {
	s := startIPMISim(t, "0")
	cfg, _ := ipmiConfig(t, s)
	d := openT(t, cfg)
	got, err := d.SetNetbootOnce(context.Background(), BootModeUEFI)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("read back: %s", got)
	if got.Target != "Pxe" || s.ChassisFile(t, "boot") != "pxe" {
		t.Errorf("driver read back %s, chassis boot %q; want Pxe/pxe", got, s.ChassisFile(t, "boot"))
	}
	out := s.IPMITool(t, "chassis", "bootparam", "get", "5")
	if !strings.Contains(out, "Force PXE") {
		t.Errorf("ipmitool does not read PXE back:\n%s", out)
	}
	// What ipmitool says of the valid and EFI bits, the driver says too.
	valid := !strings.Contains(out, "Boot Flag Invalid")
	efi := strings.Contains(out, "BIOS EFI boot")
	if valid != (got.Enabled != EnabledDisabled) || efi != (got.Mode == BootModeUEFI) {
		t.Errorf("ipmitool (valid %t, efi %t) and driver (%s) disagree:\n%s", valid, efi, got, out)
	}
	if !valid && !strings.Contains(strings.Join(got.Differences, ";"), "Disabled") {
		t.Errorf("the lost valid bit is not reported: %s", got)
	}
	if !efi && !strings.Contains(strings.Join(got.Differences, ";"), "boot mode is bios, not uefi") {
		t.Errorf("the lost EFI bit is not reported: %s", got)
	}
}

func TestIPMIAutoProbe(t *testing.T) {
	s := startIPMISim(t, "1")
	cfg, _ := ipmiConfig(t, s)
	cfg.Protocol = ProtocolAuto // nothing answers Redfish on 127.0.0.1:<udp port>
	d := openT(t, cfg)
	if info := d.Info(); info.Protocol != ProtocolIPMI || !info.Probed || info.Endpoint != s.Addr {
		t.Errorf("info %+v", info)
	}
	if st, err := d.PowerState(context.Background()); err != nil || st != StateOn {
		t.Errorf("state %s, %v", st, err)
	}
}

func TestIPMIWrongPassword(t *testing.T) {
	s := startIPMISim(t, "0")
	cfg, logs := ipmiConfig(t, s)
	cfg.Password = "wrong-" + s.Password
	cfg.Retries = -1
	_, err := Open(context.Background(), cfg)
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("err = %v, want ErrAuth", err)
	}
	if !strings.HasPrefix(err.Error(), "bmc "+s.Addr+" (ipmi): ") || !strings.Contains(err.Error(), "check the BMC user and password") {
		t.Errorf("error %q", err)
	}
	noSecret(t, cfg.Password, err.Error(), logs.String())
	t.Log(err)
}

// Close ends the RMCP+ session: ipmi_sim counts active sessions, ipmitool
// (its own session included) reads the count.
func TestIPMICloseEndsSession(t *testing.T) {
	s := startIPMISim(t, "0")
	cfg, _ := ipmiConfig(t, s)
	active := func() string {
		out := s.IPMITool(t, "session", "info", "active")
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "active sessions") {
				return strings.TrimSpace(l[strings.Index(l, ":")+1:])
			}
		}
		t.Fatalf("no session count in:\n%s", out)
		return ""
	}
	d, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.PowerState(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := active(); n != "2" {
		t.Errorf("with the driver open: %s active sessions, want 2", n)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if n := active(); n != "1" {
		t.Errorf("after Close: %s active sessions, want 1 (ipmitool's)", n)
	}
}
