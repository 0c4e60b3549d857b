package lab

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/profiles"
)

// bmcRack is the example rack (192.168.1.0/24: .1 gateway, .10 VIP,
// .11-.16 machines, the lab server at .2, DHCP pool .128-.254) with BMCs
// on its first three machines.
func bmcRack(t *testing.T) (*profiles.Rack, map[string]string) {
	r := exampleRack(t)
	r.Machines[0].BMC = &profiles.BMC{Address: "192.168.1.31", Protocol: "ipmi", User: "root"}
	r.Machines[1].BMC = &profiles.BMC{Address: "192.168.1.32", Protocol: "redfish", User: "admin"}
	r.Machines[2].BMC = &profiles.BMC{Address: "10.0.1.33", User: "admin"} // outside: none
	return r, map[string]string{"formula": "ipmi-pw", "urban": "redfish-pw"}
}

func TestNewPlanBMCs(t *testing.T) {
	r, pw := bmcRack(t)
	p, err := NewPlan("demo", Spec{Rack: r, BMCPasswords: pw})
	if err != nil {
		t.Fatal(err)
	}
	want := []*BMCPlan{
		{Protocol: BMCIPMI, Addr: netip.MustParseAddr("192.168.1.31"), Port: 623, User: "root"},
		{Protocol: BMCRedfish, Addr: netip.MustParseAddr("192.168.1.32"), Port: 443, User: "admin", TLS: true},
		nil,
	}
	for i, w := range want {
		if got := p.VMs[i].BMC; !reflect.DeepEqual(got, w) {
			t.Errorf("%s: BMC %+v, want %+v", p.VMs[i].Name, got, w)
		}
	}
	if !p.HasBMCs() {
		t.Error("HasBMCs false")
	}
	if got := p.VMs[1].BMC.URL(); got != "https://192.168.1.32:443" {
		t.Errorf("URL %s", got)
	}
	if p.VMs[0].BMC.URL() != "" {
		t.Error("an IPMI BMC has a URL")
	}
	// The plan's printed form never holds a password.
	if s := fmt.Sprintf("%+v %#v", p, p.VMs); strings.Contains(s, "ipmi-pw") || strings.Contains(s, "redfish-pw") {
		t.Errorf("a password in the plan's printed form: %s", s)
	}
	// Without any in-subnet BMC, nothing changes and no password is needed.
	r2 := exampleRack(t)
	p2, err := NewPlan("demo", Spec{Rack: r2})
	if err != nil || p2.HasBMCs() {
		t.Fatalf("plan without BMCs: %v %v", err, p2)
	}
}

// TestNewPlanBMCServerAddress: an automatically chosen server address
// skips the BMC addresses.
func TestNewPlanBMCServerAddress(t *testing.T) {
	r, _ := bmcRack(t)
	r.Cluster.Network.Rackboot = "" // else the server takes that address
	r.Machines[0].BMC.Address = "192.168.1.2"
	p, err := NewPlan("demo", Spec{Rack: r, BMCPasswords: map[string]string{"formula": "a", "urban": "b"}})
	if err != nil {
		t.Fatal(err)
	}
	if p.ServerAddr.Addr().String() != "192.168.1.3" || p.VMs[0].BMC.Addr.String() != "192.168.1.2" {
		t.Errorf("server %s, BMC %s", p.ServerAddr, p.VMs[0].BMC.Addr)
	}
}

func TestParseBMCAddress(t *testing.T) {
	subnet := netip.MustParsePrefix("192.168.1.0/24")
	tests := []struct {
		addr, proto string
		want        BMCPlan // Addr zero: not in the lab
		err         string
	}{
		{"192.168.1.40", "ipmi", BMCPlan{Protocol: "ipmi", Port: 623, TLS: false}, ""},
		{"192.168.1.40:6230", "ipmi", BMCPlan{Protocol: "ipmi", Port: 6230}, ""},
		{"192.168.1.40", "", BMCPlan{Protocol: "redfish", Port: 443, TLS: true}, ""},
		{"192.168.1.40", "auto", BMCPlan{Protocol: "redfish", Port: 443, TLS: true}, ""},
		{"192.168.1.40:8443", "redfish", BMCPlan{Protocol: "redfish", Port: 8443, TLS: true}, ""},
		{"https://192.168.1.40", "redfish", BMCPlan{Protocol: "redfish", Port: 443, TLS: true}, ""},
		{"https://192.168.1.40:8443/", "auto", BMCPlan{Protocol: "redfish", Port: 8443, TLS: true}, ""},
		{"https://192.168.1.40/redfish/v1", "", BMCPlan{Protocol: "redfish", Port: 443, TLS: true}, ""},
		{"http://192.168.1.40", "redfish", BMCPlan{Protocol: "redfish", Port: 80}, ""},
		{"http://192.168.1.40:8000", "redfish", BMCPlan{Protocol: "redfish", Port: 8000}, ""},
		{"10.0.0.5", "ipmi", BMCPlan{}, ""},            // outside the subnet
		{"https://10.0.0.5", "redfish", BMCPlan{}, ""}, // outside
		{"[fd00::5]:623", "ipmi", BMCPlan{}, ""},       // IPv6: no virtual BMC
		{"ilo-formula.example.com", "redfish", BMCPlan{}, "not a host name"},
		{"https://ilo.example.com", "", BMCPlan{}, "not a host name"},
		{"https://192.168.1.40", "ipmi", BMCPlan{}, "not a URL"},
		{"ftp://192.168.1.40", "redfish", BMCPlan{}, "scheme ftp"},
		{"192.168.1.40:0", "ipmi", BMCPlan{}, "port"},
		{"https://192.168.1.40/other", "redfish", BMCPlan{}, "write https://IP[:PORT]"},
		{"192.168.1.40", "snmp", BMCPlan{}, "write ipmi, redfish or auto"},
	}
	for _, tt := range tests {
		t.Run(tt.addr+"/"+tt.proto, func(t *testing.T) {
			got, inLab, err := ParseBMCAddress(&profiles.BMC{Address: tt.addr, Protocol: tt.proto}, subnet)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one saying %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			wantIn := tt.want.Protocol != ""
			if inLab != wantIn {
				t.Fatalf("in lab %v, want %v", inLab, wantIn)
			}
			if !wantIn {
				return
			}
			tt.want.Addr, tt.want.User = netip.MustParseAddr("192.168.1.40"), DefaultBMCUser
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestNewPlanBMCErrors(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(*profiles.Rack, *Spec)
		substr []string
	}{
		{"missing password", func(r *profiles.Rack, s *Spec) { delete(s.BMCPasswords, "urban") }, []string{"machine urban: its virtual BMC needs a password", "Spec.BMCPasswords"}},
		{"server address", func(r *profiles.Rack, s *Spec) { s.ServerAddr = netip.MustParsePrefix("192.168.1.31/24") }, []string{"bmc.address 192.168.1.31 is the lab server's address"}},
		{"rackboot address", func(r *profiles.Rack, s *Spec) { r.Machines[0].BMC.Address = r.Cluster.Network.Rackboot }, []string{"the lab server's address"}},
		{"gateway", func(r *profiles.Rack, s *Spec) { r.Machines[0].BMC.Address = "192.168.1.1" }, []string{"bmc.address 192.168.1.1 is a nameserver's address"}},
		{"VIP", func(r *profiles.Rack, s *Spec) { r.Machines[1].BMC.Address = "https://192.168.1.10" }, []string{"machine urban: bmc.address 192.168.1.10 is the VIP's address"}},
		{"machine address", func(r *profiles.Rack, s *Spec) { r.Machines[1].BMC.Address = "192.168.1.12:8443" }, []string{"192.168.1.12 is machine urban's address"}},
		{"two BMCs", func(r *profiles.Rack, s *Spec) { r.Machines[1].BMC.Address = "192.168.1.31" }, []string{"machines formula and urban: the same BMC address 192.168.1.31"}},
		{"DHCP pool", func(r *profiles.Rack, s *Spec) { r.Machines[0].BMC.Address = "192.168.1.200" }, []string{"inside the DHCP pool 192.168.1.128-192.168.1.254"}},
		{"broadcast", func(r *profiles.Rack, s *Spec) { r.Machines[0].BMC.Address = "192.168.1.255" }, []string{"not a host address"}},
		{"host name", func(r *profiles.Rack, s *Spec) { r.Machines[0].BMC.Address = "bmc-formula" }, []string{"machine formula: bmc.address \"bmc-formula\": inside the lab a BMC address is an IP address"}},
		{"long IPMI password", func(r *profiles.Rack, s *Spec) { s.BMCPasswords["formula"] = strings.Repeat("x", 21) }, []string{"machine formula: an IPMI password is at most 20 bytes"}},
		{"quote in IPMI password", func(r *profiles.Rack, s *Spec) { s.BMCPasswords["formula"] = `a"b` }, []string{"machine formula: the virtual IPMI BMC (ipmi_sim) cannot take"}},
		{"unknown machine", func(r *profiles.Rack, s *Spec) { s.BMCPasswords["ghost"] = "x" }, []string{`a BMC password for "ghost"`}},
		{"all at once", func(r *profiles.Rack, s *Spec) {
			r.Machines[0].BMC.Address = "192.168.1.1"
			delete(s.BMCPasswords, "urban")
		}, []string{"192.168.1.1 is a nameserver's", "machine urban: its virtual BMC needs a password"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, pw := bmcRack(t)
			s := Spec{Rack: r, BMCPasswords: pw}
			tt.edit(r, &s)
			_, err := NewPlan("demo", s)
			if err == nil {
				t.Fatal("no error")
			}
			for _, sub := range tt.substr {
				if !strings.Contains(err.Error(), sub) {
					t.Errorf("error %q does not say %q", err, sub)
				}
			}
			for _, p := range s.BMCPasswords {
				if strings.Contains(err.Error(), p) {
					t.Errorf("error %q shows a password", err)
				}
			}
		})
	}
}

func TestSetBootOrder(t *testing.T) {
	r, pw := bmcRack(t)
	p, err := NewPlan("demo", Spec{Rack: r, BMCPasswords: pw, ExtraNICs: map[string]int{"formula": 1}})
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range p.VMs[:2] {
		f := VMFiles{SerialLog: "/s/serial.log", NVMe: "/s/nvme0.qcow2", SATA: []string{"/s/a", "/s/b"}, OVMFCode: "/c", OVMFVars: "/v"}
		args := QEMUArgs(vm, f, AccelTCG)
		if BootOrderOf(args) != BootNetwork {
			t.Fatalf("%s: recorded order %q, want network first", vm.Name, BootOrderOf(args))
		}
		disk := SetBootOrder(args, BootDisk)
		if BootOrderOf(disk) != BootDisk {
			t.Errorf("%s: after SetBootOrder(disk): %q", vm.Name, BootOrderOf(disk))
		}
		if BootOrderOf(args) != BootNetwork {
			t.Error("SetBootOrder changed its argument")
		}
		var changed []string
		for i := range args {
			if args[i] != disk[i] {
				changed = append(changed, disk[i])
			}
		}
		if len(changed) != 2 || !strings.HasSuffix(changed[0], ",netdev=net0,mac="+vm.MAC+",bootindex=2") || !strings.HasPrefix(changed[1], "nvme,drive=nvme0,") || !strings.HasSuffix(changed[1], ",bootindex=1") {
			t.Errorf("%s: changed %q", vm.Name, changed)
		}
		if back := SetBootOrder(disk, BootNetwork); !slices.Equal(back, args) {
			t.Errorf("%s: disk then network is not the recorded line:\n%q\n%q", vm.Name, back, args)
		}
		// The program in front is fine.
		withProg := append([]string{"qemu-system-x86_64"}, args...)
		if BootOrderOf(SetBootOrder(withProg, BootDisk)) != BootDisk {
			t.Error("with the program: not disk first")
		}
	}
}

func TestParseChassisArgs(t *testing.T) {
	tests := []struct {
		args string
		want ChassisRequest
		err  string
	}{
		{"get power", ChassisRequest{Get: []string{"power"}}, ""},
		{"get power boot", ChassisRequest{Get: []string{"power", "boot"}}, ""},
		{"set power 1", ChassisRequest{Set: [][2]string{{"power", "1"}}}, ""},
		{"set power 0", ChassisRequest{Set: [][2]string{{"power", "0"}}}, ""},
		{"set boot pxe", ChassisRequest{Set: [][2]string{{"boot", "pxe"}}}, ""},
		{"set boot default", ChassisRequest{Set: [][2]string{{"boot", "default"}}}, ""},
		{"set shutdown 1", ChassisRequest{Set: [][2]string{{"shutdown", "1"}}}, ""},
		{"set reset 1", ChassisRequest{Set: [][2]string{{"reset", "1"}}}, ""},
		{"set boot pxe power 1", ChassisRequest{Set: [][2]string{{"boot", "pxe"}, {"power", "1"}}}, ""},
		{"set identify 15 0", ChassisRequest{Set: [][2]string{{"identify", "0"}}}, ""},
		{"", ChassisRequest{}, "no operation"},
		{"get", ChassisRequest{}, "no parameter"},
		{"get temperature", ChassisRequest{}, `unknown parameter "temperature"`},
		{"set power", ChassisRequest{}, "no value"},
		{"set power 2", ChassisRequest{}, "want 0 or 1"},
		{"set boot floppy", ChassisRequest{}, "want pxe, default"},
		{"set fan 1", ChassisRequest{}, `unknown parameter "fan"`},
		{"reboot", ChassisRequest{}, `unknown operation "reboot"`},
	}
	for _, tt := range tests {
		got, err := ParseChassisArgs(strings.Fields(tt.args))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("%q: error %v, want %q", tt.args, err, tt.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q: %+v %v, want %+v", tt.args, got, err, tt.want)
		}
	}
}

func FuzzParseChassisArgs(f *testing.F) {
	for _, s := range []string{"get power boot", "set power 1", "set boot pxe", "set identify 15 0", "set", "get"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseChassisArgs(strings.Fields(s))
		if err != nil {
			return
		}
		if len(r.Get) == 0 && len(r.Set) == 0 {
			t.Errorf("%q: accepted with nothing to do", s)
		}
		for _, kv := range r.Set {
			if kv[0] == "power" && kv[1] != "0" && kv[1] != "1" {
				t.Errorf("%q: power %q accepted", s, kv[1])
			}
		}
	})
}

func TestDecideSushy(t *testing.T) {
	pending := func(s string) map[string]any { return map[string]any{"power_state": s, "apply_time": 1.7e9} }
	tests := []struct {
		name string
		sys  map[string]any
		prev string
		want SushyDecision
		err  bool
	}{
		{"Reset On from off: pending", map[string]any{"power_state": "Off", "pending_power": pending("On")}, "Off", SushyDecision{ActOn, "On", false}, false},
		{"On applied later: no second start", map[string]any{"power_state": "On", "pending_power": nil}, "On", SushyDecision{ActNone, "On", false}, false},
		{"ForceOff: pending", map[string]any{"power_state": "On", "pending_power": pending("Off")}, "On", SushyDecision{ActOff, "Off", false}, false},
		{"Off applied later", map[string]any{"power_state": "Off"}, "Off", SushyDecision{ActNone, "Off", false}, false},
		{"ForceRestart", map[string]any{"power_state": "Off", "pending_power": pending("ForceRestart")}, "On", SushyDecision{ActReset, "On", false}, false},
		{"GracefulRestart", map[string]any{"power_state": "Off", "pending_power": pending("GracefulRestart")}, "On", SushyDecision{ActReset, "On", false}, false},
		{"boot Pxe on an off machine: nothing starts", map[string]any{"power_state": "Off", "boot_device": "Pxe"}, "Off", SushyDecision{ActNone, "Off", true}, false},
		{"boot Pxe, then On", map[string]any{"power_state": "Off", "boot_device": "Pxe", "pending_power": pending("On")}, "Off", SushyDecision{ActOn, "On", true}, false},
		{"boot Hdd", map[string]any{"power_state": "On", "boot_device": "Hdd"}, "On", SushyDecision{ActNone, "On", false}, false},
		{"state changed without pending (first look)", map[string]any{"power_state": "On"}, "Off", SushyDecision{ActOn, "On", false}, false},
		{"ForceOn", map[string]any{"power_state": "Off", "pending_power": pending("ForceOn")}, "Off", SushyDecision{ActOn, "On", false}, false},
		{"no power_state", map[string]any{"boot_device": "Pxe"}, "Off", SushyDecision{}, true},
		{"odd pending", map[string]any{"power_state": "Off", "pending_power": pending("Nmi")}, "Off", SushyDecision{}, true},
	}
	for _, tt := range tests {
		got, err := DecideSushy(tt.sys, tt.prev)
		if (err != nil) != tt.err {
			t.Errorf("%s: error %v", tt.name, err)
			continue
		}
		if !tt.err && got != tt.want {
			t.Errorf("%s: %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

func TestRestartAfterExit(t *testing.T) {
	tests := []struct {
		host   bool
		reason string
		want   bool
	}{
		{false, "guest-reset", true},
		{true, "guest-reset", false},
		{false, "guest-shutdown", false},
		{false, "host-qmp-quit", false},
		{false, "host-signal", false},
		{false, "guest-panic", false},
		{false, "", false}, // crashed: no event
	}
	for _, tt := range tests {
		if got := RestartAfterExit(tt.host, tt.reason); got != tt.want {
			t.Errorf("host %v reason %q: %v", tt.host, tt.reason, got)
		}
	}
}

// TestBMCFilesGolden: ipmi_sim's lan.conf, the chassis_control wrapper and
// sushy-tools' emulator.conf, as Up writes them (a fixed test password).
func TestBMCFilesGolden(t *testing.T) {
	r, pw := bmcRack(t)
	p, err := NewPlan("demo", Spec{Rack: r, BMCPasswords: pw})
	if err != nil {
		t.Fatal(err)
	}
	ipmi, redfish := p.VMs[0], p.VMs[1]
	dir := "/state/lab/demo/"
	golden(t, "bmc-lan.conf.golden", IPMILanConf(ipmi.Name, ipmi.UUID, *ipmi.BMC, pw[ipmi.Name], dir+"formula/bmc/chassis"))
	golden(t, "bmc-chassis.golden", ChassisScript("/usr/local/bin/rack'boot", "http://127.0.0.1:6239", ipmi.Name))
	golden(t, "bmc-emulator.conf.golden", SushyConf(redfish, SushyFiles{
		StateDir: dir + "urban/bmc/state", AuthFile: dir + "urban/bmc/htpasswd",
		Cert: dir + "urban/bmc/cert.pem", Key: dir + "urban/bmc/key.pem",
	}, "http://127.0.0.1:6239/sushy/urban"))
	if strings.Contains(SushyConf(redfish, SushyFiles{}, ""), pw["urban"]) {
		t.Error("sushy's emulator.conf holds the password (it belongs in htpasswd, hashed)")
	}
	if bmcGUID(ipmi.UUID) != strings.ReplaceAll(ipmi.UUID, "-", "") {
		t.Errorf("GUID %s from UUID %s", bmcGUID(ipmi.UUID), ipmi.UUID)
	}
}
