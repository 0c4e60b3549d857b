package lab

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/profiles"
)

// exampleRack is the example rack without its bmc: sections (plans with
// virtual BMCs need passwords: TestNewPlanExampleBMCs).
func exampleRack(t *testing.T) *profiles.Rack {
	t.Helper()
	r, err := profiles.Load("example", profiles.ExampleRack)
	if err != nil {
		t.Fatalf("load example rack: %v", err)
	}
	for i := range r.Machines {
		r.Machines[i].BMC = nil
	}
	return r
}

// The example rack's BMCs become the demo's virtual BMCs: Redfish for the
// iLO and the auto one, IPMI for the ThinkServer, at their addresses.
func TestNewPlanExampleBMCs(t *testing.T) {
	r, err := profiles.Load("example", profiles.ExampleRack)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewPlan("demo", Spec{Rack: r}); err == nil || !strings.Contains(err.Error(), "formula") {
		t.Errorf("plan without passwords: %v, want an error naming formula", err)
	}
	pw := map[string]string{}
	for _, m := range r.Machines {
		if m.BMC != nil {
			pw[m.Name] = "pw-" + m.Name
		}
	}
	p, err := NewPlan("demo", Spec{Rack: r, BMCPasswords: pw})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"formula": "redfish https://192.168.1.31:443", "urban": "redfish https://192.168.1.32:443", "lailah": "ipmi 192.168.1.33:623"}
	for _, vm := range p.VMs {
		if vm.BMC == nil {
			t.Errorf("%s has no virtual BMC", vm.Name)
			continue
		}
		got := vm.BMC.Protocol + " " + vm.BMC.URL()
		if vm.BMC.Protocol == BMCIPMI {
			got = vm.BMC.Protocol + " " + vm.BMC.AddrPort().String()
		}
		if got != want[vm.Name] {
			t.Errorf("%s's BMC %s, want %s", vm.Name, got, want[vm.Name])
		}
	}
}

func TestNewPlanExample(t *testing.T) {
	p, err := NewPlan("demo", Spec{Rack: exampleRack(t)})
	if err != nil {
		t.Fatal(err)
	}
	if p.Namespace != "rb-demo" || p.RouterNamespace != "" {
		t.Errorf("namespaces %q %q", p.Namespace, p.RouterNamespace)
	}
	// .1 gateway and nameserver, .10 VIP, .11-.16 machines: .2 is free.
	if got := p.ServerAddr.String(); got != "192.168.1.2/24" {
		t.Errorf("server address %s, want 192.168.1.2/24", got)
	}
	if len(p.VMs) != 3 { // lab.machines: 3
		t.Fatalf("%d VMs, want 3", len(p.VMs))
	}
	want := []struct{ name, mac, tap string }{
		{"formula", "52:54:00:b0:00:01", "tap0"},
		{"urban", "52:54:00:b0:00:02", "tap1"},
		{"lailah", "52:54:00:b0:00:03", "tap2"},
	}
	for i, w := range want {
		vm := p.VMs[i]
		if vm.Name != w.name || vm.MAC != w.mac || vm.Tap != w.tap {
			t.Errorf("vm %d: %s %s %s, want %v", i, vm.Name, vm.MAC, vm.Tap, w)
		}
		if vm.MemoryMiB != 512 || vm.NVMe.Size != "2G" || vm.NVMe.Bytes != 2<<30 || len(vm.SATA) != 2 || vm.SATA[1].Bytes != 1<<30 {
			t.Errorf("vm %s sizes: %+v", vm.Name, vm)
		}
		if vm.UUID != StableUUID("dotfile", vm.Name) {
			t.Errorf("vm %s uuid %s", vm.Name, vm.UUID)
		}
		if vm.Serial != "LAB-"+strings.ToUpper(vm.Name) {
			t.Errorf("vm %s serial %s", vm.Name, vm.Serial)
		}
	}
	if p.VMs[0].Firmware != FirmwareBIOS || p.VMs[1].Firmware != FirmwareUEFI {
		t.Errorf("firmware %s %s, want bios uefi (lab.firmware.urban)", p.VMs[0].Firmware, p.VMs[1].Firmware)
	}
	if p.VMs[0].NVMe.Serial != "formula-nvme0" || p.VMs[0].SATA[0].Serial != "formula-sata0" {
		t.Errorf("disk serials %s %s", p.VMs[0].NVMe.Serial, p.VMs[0].SATA[0].Serial)
	}
}

func TestNewPlanOptions(t *testing.T) {
	r := exampleRack(t)
	r.Machines[1].Select.UUID = "4C4C4544-0000-1000-8000-000000000002"
	r.Machines[1].Select.Serial = "CZ123"
	r.Machines[2].Select.MAC = nil
	p, err := NewPlan("x1", Spec{Rack: r, Machines: 6, DHCP: DHCPProxy, Firmware: FirmwareUEFI, ServerAddr: netip.MustParsePrefix("192.168.1.250/24")})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.VMs) != 6 || p.RouterNamespace != "rb-x1-router" || p.RouterAddr.String() != "192.168.1.1/24" {
		t.Fatalf("plan %+v", p)
	}
	for _, vm := range p.VMs {
		if vm.Firmware != FirmwareUEFI {
			t.Errorf("%s firmware %s, want the override uefi", vm.Name, vm.Firmware)
		}
	}
	if p.VMs[1].UUID != "4c4c4544-0000-1000-8000-000000000002" || p.VMs[1].Serial != "CZ123" {
		t.Errorf("selectors not used: %s %s", p.VMs[1].UUID, p.VMs[1].Serial)
	}
	if mac := p.VMs[2].MAC; !strings.HasPrefix(mac, "52:54:00:") || mac == p.VMs[1].MAC {
		t.Errorf("derived MAC %s", mac)
	}
	again, _ := NewPlan("x1", Spec{Rack: r, Machines: 6, DHCP: DHCPProxy})
	if again.VMs[2].MAC != p.VMs[2].MAC {
		t.Error("derived MAC is not stable")
	}
	// The pool must not hold the server's address (.250).
	if p.DHCPRange[0].String() != "192.168.1.251" || p.DHCPRange[1].String() != "192.168.1.254" {
		t.Errorf("pool %v", p.DHCPRange)
	}
}

func TestNewPlanErrors(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(*profiles.Rack, *Spec)
		substr []string
	}{
		{"too many machines", func(r *profiles.Rack, s *Spec) { s.Machines = 7 }, []string{"7 machines asked for, the rack file has 6"}},
		{"bad subnet", func(r *profiles.Rack, s *Spec) { r.Cluster.Network.Subnet = "fd00::/64" }, []string{"not an IPv4 prefix"}},
		{"dup mac", func(r *profiles.Rack, s *Spec) { r.Machines[1].Select.MAC = []string{"52:54:00:B0:00:01"} }, []string{"formula and urban have the same MAC"}},
		{"bad mac", func(r *profiles.Rack, s *Spec) { r.Machines[0].Select.MAC = []string{"nope"} }, []string{`select.mac[0] "nope"`}},
		{"multicast mac", func(r *profiles.Rack, s *Spec) { r.Machines[0].Select.MAC = []string{"01:00:5e:00:00:01"} }, []string{"multicast"}},
		{"firmware", func(r *profiles.Rack, s *Spec) { r.Lab.Firmware["formula"] = "coreboot" }, []string{"lab.firmware.formula", "write bios or uefi"}},
		{"firmware unknown machine", func(r *profiles.Rack, s *Spec) { r.Lab.Firmware["ghost"] = "uefi" }, []string{`"ghost", which is not a machine`}},
		{"sizes", func(r *profiles.Rack, s *Spec) { r.Lab.NVMeSize = "lots"; r.Lab.SATASizes = []string{"1G", "0"} }, []string{"lab.nvmeSize", "lab.sataSizes[1]"}},
		{"memory", func(r *profiles.Rack, s *Spec) { r.Lab.MemoryMiB = 64 }, []string{"at least 128"}},
		{"server taken", func(r *profiles.Rack, s *Spec) { s.ServerAddr = netip.MustParsePrefix("192.168.1.11/24") }, []string{"taken by machine formula"}},
		{"server outside", func(r *profiles.Rack, s *Spec) { s.ServerAddr = netip.MustParsePrefix("10.0.0.1/24") }, []string{"not a host address in 192.168.1.0/24"}},
		{"proxy without gateway", func(r *profiles.Rack, s *Spec) { s.DHCP = DHCPProxy; r.Cluster.Network.Gateway = "" }, []string{"proxy DHCP needs the rack's network.gateway"}},
		{"dhcp mode", func(r *profiles.Rack, s *Spec) { s.DHCP = "relay" }, []string{"write full or proxy"}},
		{"bad name", func(r *profiles.Rack, s *Spec) { r.Machines[0].Name = "../etc" }, []string{"names a directory"}},
		{"bad uuid", func(r *profiles.Rack, s *Spec) { r.Machines[0].Select.UUID = "x" }, []string{`select.uuid "x"`}},
		{"extra NICs unknown machine", func(r *profiles.Rack, s *Spec) { s.ExtraNICs = map[string]int{"ghost": 1} }, []string{`extra NICs for "ghost", which is not a machine`}},
		{"extra NICs outside the lab", func(r *profiles.Rack, s *Spec) { s.ExtraNICs = map[string]int{"amdusias-ii": 1} }, []string{"amdusias-ii, which is not one of the lab's 3 machine(s)"}},
		{"too many extra NICs", func(r *profiles.Rack, s *Spec) { s.ExtraNICs = map[string]int{"formula": 4} }, []string{"4 extra NICs, the lab gives 0 to 3"}},
		{"boot NIC unknown machine", func(r *profiles.Rack, s *Spec) { s.BootNICs = map[string]BootNIC{"ghost": {Netboot: NetbootPXE}} }, []string{`boot NIC for "ghost", which is not a machine`}},
		{"boot NIC outside the lab", func(r *profiles.Rack, s *Spec) { s.BootNICs = map[string]BootNIC{"amdusias-ii": {}} }, []string{"boot NIC for amdusias-ii, which is not one of the lab's 3 machine(s)"}},
		{"netboot spelling", func(r *profiles.Rack, s *Spec) { s.BootNICs = map[string]BootNIC{"formula": {Netboot: "pxe"}} }, []string{`machine formula: netboot "pxe": write rom, firmware-pxe or firmware-http`}},
		{"firmware PXE under SeaBIOS", func(r *profiles.Rack, s *Spec) {
			s.Firmware = FirmwareBIOS
			s.BootNICs = map[string]BootNIC{"formula": {Netboot: NetbootPXE}}
		}, []string{"machine formula: netboot firmware-pxe needs uefi firmware"}},
		{"firmware HTTP with e1000", func(r *profiles.Rack, s *Spec) {
			s.Firmware = FirmwareUEFI
			s.BootNICs = map[string]BootNIC{"urban": {Model: "e1000", Netboot: NetbootHTTP}}
		}, []string{"machine urban: netboot firmware-http with NIC e1000: OVMF has no driver for it", "use virtio-net-pci"}},
		{"extra NIC MAC taken", func(r *profiles.Rack, s *Spec) {
			r.Machines[1].Select.MAC = []string{ExtraMAC("formula", 1)}
			s.ExtraNICs = map[string]int{"formula": 1}
		}, []string{"formula (NIC 1) and urban have the same MAC " + ExtraMAC("formula", 1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := exampleRack(t)
			s := Spec{Rack: r}
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
		})
	}
	if _, err := NewPlan("Demo!", Spec{Rack: exampleRack(t)}); err == nil {
		t.Error("bad lab name accepted")
	}
}

// TestNewPlanExtraNICs: a machine given extra NICs gets one tap and one
// stable MAC per NIC, after its first; the others get none.
func TestNewPlanExtraNICs(t *testing.T) {
	p, err := NewPlan("demo", Spec{Rack: exampleRack(t), ExtraNICs: map[string]int{"urban": 2, "lailah": 0}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.VMs[0].Extra) != 0 || len(p.VMs[2].Extra) != 0 {
		t.Errorf("extra NICs on formula %v, lailah %v: want none", p.VMs[0].Extra, p.VMs[2].Extra)
	}
	urban := p.VMs[1]
	want := []NIC{{MAC: ExtraMAC("urban", 1), Tap: "tap1n1"}, {MAC: ExtraMAC("urban", 2), Tap: "tap1n2"}}
	if len(urban.Extra) != 2 || urban.Extra[0] != want[0] || urban.Extra[1] != want[1] {
		t.Fatalf("urban's extra NICs %+v, want %+v", urban.Extra, want)
	}
	if got := urban.Taps(); strings.Join(got, " ") != "tap1 tap1n1 tap1n2" {
		t.Errorf("urban's taps %v", got)
	}
	seen := map[string]bool{urban.MAC: true}
	for _, n := range urban.Extra {
		hw, err := net.ParseMAC(n.MAC)
		if err != nil || !strings.HasPrefix(n.MAC, "52:54:00:") || hw[0]&1 != 0 || seen[n.MAC] {
			t.Errorf("extra MAC %s: want a distinct unicast 52:54:00 address", n.MAC)
		}
		seen[n.MAC] = true
	}
	if ExtraMAC("urban", 1) != "52:54:00:"+ExtraMAC("urban", 1)[9:] || ExtraMAC("urban", 1) == ExtraMAC("formula", 1) {
		t.Error("ExtraMAC is not per machine")
	}
}

// TestNewPlanBootNICs: the first NIC's model and who netboots it, per
// machine; a firmware netboot defaults to the one NIC OVMF drives itself.
func TestNewPlanBootNICs(t *testing.T) {
	tests := []struct {
		name      string
		firmware  Firmware
		nic       string // Spec.NIC
		boot      BootNIC
		wantModel string
		wantBoot  Netboot
	}{
		{"default", FirmwareBIOS, "", BootNIC{}, DefaultNIC, NetbootROM},
		{"lab model", FirmwareBIOS, "rtl8139", BootNIC{}, "rtl8139", NetbootROM},
		{"own model with its ROM", FirmwareUEFI, "", BootNIC{Model: "virtio-net-pci"}, "virtio-net-pci", NetbootROM},
		{"rom spelled out", FirmwareUEFI, "", BootNIC{Netboot: "ROM"}, DefaultNIC, NetbootROM},
		{"firmware PXE", FirmwareUEFI, "", BootNIC{Netboot: NetbootPXE}, FirmwareNIC, NetbootPXE},
		{"firmware PXE over the lab's e1000", FirmwareUEFI, "e1000", BootNIC{Netboot: NetbootPXE}, FirmwareNIC, NetbootPXE},
		{"firmware HTTP", FirmwareUEFI, "", BootNIC{Model: "virtio-net-pci", Netboot: NetbootHTTP}, FirmwareNIC, NetbootHTTP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewPlan("demo", Spec{Rack: exampleRack(t), Firmware: tt.firmware, NIC: tt.nic,
				BootNICs: map[string]BootNIC{"urban": tt.boot}, ExtraNICs: map[string]int{"urban": 1}})
			if err != nil {
				t.Fatal(err)
			}
			urban := p.VMs[1]
			if urban.NIC != tt.wantModel || urban.Netboot != tt.wantBoot {
				t.Errorf("urban: NIC %q netboot %q, want %q %q", urban.NIC, urban.Netboot, tt.wantModel, tt.wantBoot)
			}
			if other := p.VMs[0]; other.Netboot != NetbootROM || (tt.nic == "" && other.NIC != DefaultNIC) {
				t.Errorf("formula (no BootNICs entry): NIC %q netboot %q", other.NIC, other.Netboot)
			}
		})
	}
}

func TestServerAddress(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		subnet string
		used   []string
		want   string
	}{
		{"10.99.0.0/24", nil, "10.99.0.1"},
		{"10.99.0.7/24", []string{"10.99.0.1"}, "10.99.0.2"},
		{"10.99.0.0/30", []string{"10.99.0.1"}, "10.99.0.2"},
		{"10.99.0.0/30", []string{"10.99.0.1", "10.99.0.2"}, ""},
		{"10.99.0.0/31", nil, ""},
		{"fd00::/64", nil, ""},
	}
	for _, tt := range tests {
		used := map[netip.Addr]string{}
		for _, u := range tt.used {
			used[a(u)] = "x"
		}
		got, err := ServerAddress(netip.MustParsePrefix(tt.subnet), used)
		if tt.want == "" {
			if err == nil {
				t.Errorf("%s %v: got %s, want an error", tt.subnet, tt.used, got)
			}
			continue
		}
		if err != nil || got != a(tt.want) {
			t.Errorf("%s %v: got %s %v, want %s", tt.subnet, tt.used, got, err, tt.want)
		}
	}
}

func TestDHCPRange(t *testing.T) {
	a := netip.MustParseAddr
	tests := []struct {
		subnet string
		used   []string
		lo, hi string
	}{
		{"10.99.0.0/24", nil, "10.99.0.128", "10.99.0.254"},
		{"10.99.0.0/24", []string{"10.99.0.1", "10.99.0.200", "10.0.0.250"}, "10.99.0.201", "10.99.0.254"},
		{"10.99.0.0/29", nil, "10.99.0.4", "10.99.0.6"},
		{"10.99.0.0/24", []string{"10.99.0.254"}, "", ""},
		{"10.99.0.0/30", nil, "", ""},
	}
	for _, tt := range tests {
		used := map[netip.Addr]string{}
		for _, u := range tt.used {
			used[a(u)] = "x"
		}
		lo, hi, err := DHCPRange(netip.MustParsePrefix(tt.subnet), used)
		if tt.lo == "" {
			if err == nil {
				t.Errorf("%s %v: got %s-%s, want an error", tt.subnet, tt.used, lo, hi)
			}
			continue
		}
		if err != nil || lo != a(tt.lo) || hi != a(tt.hi) {
			t.Errorf("%s %v: got %s-%s %v, want %s-%s", tt.subnet, tt.used, lo, hi, err, tt.lo, tt.hi)
		}
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"2G", 2 << 30}, {"1g", 1 << 30}, {"512M", 512 << 20}, {"1024K", 1 << 20}, {"1T", 1 << 40},
		{"4GiB", 4 << 30}, {"4GB", 4 << 30}, {" 3G ", 3 << 30}, {"1048576", 1 << 20},
		{"", 0}, {"G", 0}, {"0", 0}, {"-1G", 0}, {"1.5G", 0}, {"1K", 0}, {"17T", 0}, {"9999999999999T", 0}, {"2X", 0},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if tt.want == 0 {
			if err == nil {
				t.Errorf("ParseSize(%q) = %d, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestDiskSerial(t *testing.T) {
	if got := diskSerial("formula", "nvme0"); got != "formula-nvme0" {
		t.Errorf("got %s", got)
	}
	long := diskSerial("a-very-long-machine-name-indeed", "sata1")
	if len(long) > 20 || !strings.HasSuffix(long, "-sata1") {
		t.Errorf("long serial %q (%d chars)", long, len(long))
	}
	if other := diskSerial("a-very-long-machine-name-other", "sata1"); other == long {
		t.Errorf("two long names give the same serial %q", other)
	}
	if got := diskSerial("wéird,name", "nvme0"); got != "wirdname-nvme0" {
		t.Errorf("got %s", got)
	}
}

func TestParseModes(t *testing.T) {
	for in, want := range map[string]Firmware{"": FirmwareBIOS, "BIOS": FirmwareBIOS, "uefi": FirmwareUEFI, "efi": FirmwareUEFI} {
		if got, err := ParseFirmware(in); err != nil || got != want {
			t.Errorf("ParseFirmware(%q) = %s, %v", in, got, err)
		}
	}
	if _, err := ParseFirmware("openfirmware"); err == nil {
		t.Error("ParseFirmware accepted openfirmware")
	}
	for in, want := range map[string]DHCPMode{"": DHCPFull, "full": DHCPFull, "Proxy": DHCPProxy} {
		if got, err := ParseDHCPMode(in); err != nil || got != want {
			t.Errorf("ParseDHCPMode(%q) = %s, %v", in, got, err)
		}
	}
	if _, err := ParseDHCPMode("relay"); err == nil {
		t.Error("ParseDHCPMode accepted relay")
	}
	for _, bad := range []string{"", "-x", "x-", "Demo", "a_b", strings.Repeat("a", 21)} {
		if ValidName(bad) == nil {
			t.Errorf("ValidName(%q) accepted", bad)
		}
	}
	for _, good := range []string{"demo", "e2e-1", "a", strings.Repeat("a", 20)} {
		if err := ValidName(good); err != nil {
			t.Errorf("ValidName(%q): %v", good, err)
		}
	}
}
