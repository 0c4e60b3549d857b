package lab

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./lab -run %s -update to create it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// oneArgPerLine puts each option with its value on a line: readable diffs.
func oneArgPerLine(args []string) string {
	var b strings.Builder
	for i := 0; i < len(args); i++ {
		b.WriteString(args[i])
		if strings.HasPrefix(args[i], "-") && i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			b.WriteString(" " + args[i+1])
			i++
		}
		b.WriteString("\n")
	}
	return b.String()
}

func TestQEMUArgsGolden(t *testing.T) {
	p, err := NewPlan("demo", Spec{Rack: exampleRack(t)})
	if err != nil {
		t.Fatal(err)
	}
	files := func(vm VMPlan) VMFiles {
		dir := "/state/lab/demo/" + vm.Name
		f := VMFiles{SerialLog: dir + "/serial.log", NVMe: dir + "/nvme0.qcow2"}
		for _, d := range vm.SATA {
			f.SATA = append(f.SATA, dir+"/"+d.ID+".qcow2")
		}
		if vm.Firmware == FirmwareUEFI {
			f.OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
			f.OVMFVars = dir + "/OVMF_VARS.fd"
		}
		return f
	}
	bios, uefi := p.VMs[0], p.VMs[1]
	golden(t, "qemu-bios-tcg.golden", oneArgPerLine(QEMUArgs(bios, files(bios), AccelTCG)))
	golden(t, "qemu-uefi-kvm.golden", oneArgPerLine(QEMUArgs(uefi, files(uefi), AccelKVM)))
}

func TestQEMUArgsRules(t *testing.T) {
	vm := VMPlan{
		Name: "a,b", MAC: "52:54:00:00:00:01", UUID: "u", Serial: "S,1", Firmware: FirmwareBIOS, MemoryMiB: 300, Tap: "tap3",
		NVMe: Disk{ID: "nvme0", Serial: "n"},
		SATA: []Disk{{ID: "sata0", Serial: "s0"}, {ID: "sata1", Serial: "s1"}},
	}
	args := QEMUArgs(vm, VMFiles{SerialLog: "/x,y/serial.log", NVMe: "/n", SATA: []string{"/s0", "/s1"}}, AccelTCG)
	line := strings.Join(args, " ")
	for _, want := range []string{
		"-nodefaults", "-no-reboot", "-display none", "-accel tcg -cpu max", "-m 300",
		"-name a,,b", "path=/x,,y/serial.log", "serial=S,,1",
		"ifname=tap3,script=no,downscript=no", "e1000,netdev=net0,mac=52:54:00:00:00:01,bootindex=1",
		"nvme,drive=nvme0,serial=n,bootindex=2", "ide-hd,drive=sata1,bus=ide.1,serial=s1",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("command line lacks %q:\n%s", want, line)
		}
	}
	for _, bad := range []string{"pflash", "-netdev user", "-nic", "-boot"} {
		if strings.Contains(line, bad) {
			t.Errorf("BIOS command line has %q:\n%s", bad, line)
		}
	}
	if strings.Contains(line, "net1") || strings.Count(line, "romfile") != 0 {
		t.Errorf("one NIC, yet:\n%s", line)
	}
	vm.Extra = []NIC{{MAC: "52:54:00:00:00:02", Tap: "tap3n1"}}
	args = QEMUArgs(vm, VMFiles{NVMe: "/n"}, AccelTCG)
	line = strings.Join(args, " ")
	for _, want := range []string{
		"-netdev tap,id=net1,ifname=tap3n1,script=no,downscript=no",
		"-device e1000,netdev=net1,mac=52:54:00:00:00:02,romfile=",
	} {
		if !strings.Contains(" "+line+" ", " "+want+" ") {
			t.Errorf("command line with a second NIC lacks %q:\n%s", want, line)
		}
	}
	if strings.Count(line, "bootindex=") != 2 {
		t.Errorf("the second NIC has a boot index:\n%s", line)
	}
	vm.Extra = nil
	vm.Firmware = FirmwareUEFI
	vm.NIC = "virtio-net-pci"
	line = strings.Join(QEMUArgs(vm, VMFiles{OVMFCode: "/c", OVMFVars: "/v"}, AccelTCG), " ")
	for _, want := range []string{"if=pflash,format=raw,unit=0,readonly=on,file=/c", "if=pflash,format=raw,unit=1,file=/v", "virtio-net-pci,netdev=net0"} {
		if !strings.Contains(line, want) {
			t.Errorf("UEFI command line lacks %q:\n%s", want, line)
		}
	}
	if strings.Contains(line, "ide-hd") {
		t.Error("a SATA disk without a file got a device")
	}
}

// TestQEMUArgsNetboot: who netboots the first NIC shows on QEMU's command
// line as the NIC's option ROM (QEMU's default, or romfile= for none) and,
// for UEFI HTTP boot, OVMF's PXE clients switched off through fw_cfg.
func TestQEMUArgsNetboot(t *testing.T) {
	const pxeOff = "-fw_cfg name=opt/org.tianocore/IPv4PXESupport,string=no -fw_cfg name=opt/org.tianocore/IPv6PXESupport,string=no"
	tests := []struct {
		netboot Netboot
		nic     string
		first   string // the first NIC's -device value
		fwcfg   bool
	}{
		{"", "e1000", "e1000,netdev=net0,mac=52:54:00:00:00:01,bootindex=1", false},
		{NetbootROM, "virtio-net-pci", "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,bootindex=1", false},
		{NetbootPXE, "virtio-net-pci", "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,romfile=,bootindex=1", false},
		{NetbootHTTP, "virtio-net-pci", "virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,romfile=,bootindex=1", true},
	}
	for _, tt := range tests {
		t.Run(string(tt.netboot), func(t *testing.T) {
			vm := VMPlan{
				Name: "a", MAC: "52:54:00:00:00:01", UUID: "u", Serial: "s", Firmware: FirmwareUEFI, MemoryMiB: 512, Tap: "tap0",
				NIC: tt.nic, Netboot: tt.netboot, NVMe: Disk{ID: "nvme0", Serial: "n"},
				Extra: []NIC{{MAC: "52:54:00:00:00:02", Tap: "tap0n1"}},
			}
			args := QEMUArgs(vm, VMFiles{OVMFCode: "/c", OVMFVars: "/v", NVMe: "/n"}, AccelTCG)
			line := " " + strings.Join(args, " ") + " "
			if !strings.Contains(line, " -device "+tt.first+" ") {
				t.Errorf("first NIC is not %q:\n%s", tt.first, line)
			}
			if !strings.Contains(line, " -device "+tt.nic+",netdev=net1,mac=52:54:00:00:00:02,romfile= ") {
				t.Errorf("the extra NIC is not a %s without ROM:\n%s", tt.nic, line)
			}
			if got := strings.Contains(line, " "+pxeOff+" "); got != tt.fwcfg {
				t.Errorf("PXE switched off in OVMF: %v, want %v:\n%s", got, tt.fwcfg, line)
			}
			if strings.Count(line, "-fw_cfg") != 2*boolInt(tt.fwcfg) || strings.Count(line, "bootindex=") != 2 {
				t.Errorf("fw_cfg or boot indexes:\n%s", line)
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestChooseAccel(t *testing.T) {
	intel := []byte("processor\t: 0\nflags\t\t: fpu vme de pse vmx sse\n")
	amd := []byte("flags\t\t: fpu svm sse\n")
	none := []byte("processor\t: 0\nflags\t\t: fpu vme de pse hypervisor sse\nbugs\t\t: vmx_fake\n")
	tests := []struct {
		name     string
		writable bool
		cpuinfo  []byte
		want     Accel
	}{
		{"vmx", true, intel, AccelKVM},
		{"svm", true, amd, AccelKVM},
		{"paravirtual kvm", true, none, AccelTCG},
		{"kvm not writable", false, intel, AccelTCG},
		{"no cpuinfo", true, nil, AccelTCG},
		{"vmx only in another field", true, []byte("model name\t: vmx svm\n"), AccelTCG},
	}
	for _, tt := range tests {
		if got := ChooseAccel(tt.writable, tt.cpuinfo); got != tt.want {
			t.Errorf("%s: got %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

func TestDnsmasqArgs(t *testing.T) {
	r := exampleRack(t)
	p, err := NewPlan("demo", Spec{Rack: r, DHCP: DHCPProxy})
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "dnsmasq.golden", oneArgPerLine(DnsmasqArgs(p, "/s/leases", "/s/log")))
	if netmask(20) != "255.255.240.0" || netmask(32) != "255.255.255.255" || netmask(0) != "0.0.0.0" {
		t.Error("netmask")
	}
}

func TestCleanSerial(t *testing.T) {
	tests := []struct{ in, want string }{
		{"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2)\r\n", "SeaBIOS (version 1.16.2)\n"},
		{"\x1b[0;1miPXE 1.0.0\x1b[0m -- x\r\n", "iPXE 1.0.0 -- x\n"},
		{"Press Ctrl-B...\b \b\b \b\b \bnet0: 52:54:00:b0:00:01 using", "Press Ctrl-Bnet0: 52:54:00:b0:00:01 using"},
		{"a\n\b\bb", "a\nb"},
		{"tab\there\x00\x7f\x07", "tab\there"},
		{"\x1b[", ""},
		{"\x1b", ""},
	}
	for _, tt := range tests {
		if got := CleanSerial([]byte(tt.in)); got != tt.want {
			t.Errorf("CleanSerial(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	if got := LastLine([]byte("one\r\ntwo\r\n\r\n  \r\n")); got != "two" {
		t.Errorf("LastLine = %q", got)
	}
}

func TestParseStatStartTime(t *testing.T) {
	stat := "1234 (qemu-system-x86) S 1 1234 1234 0 -1 4194560 5000 0 0 0 100 50 0 0 20 0 3 0 987654 123456 789\n"
	if v, err := parseStatStartTime([]byte(stat)); err != nil || v != 987654 {
		t.Errorf("got %d %v", v, err)
	}
	odd := "7 (a) b) (c) R 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0 0\n"
	if v, err := parseStatStartTime([]byte(odd)); err != nil || v != 42 {
		t.Errorf("odd name: got %d %v", v, err)
	}
	for _, bad := range []string{"", "1 (x", "1 (x) S 1 2", "1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 zz 0"} {
		if _, err := parseStatStartTime([]byte(bad)); err == nil {
			t.Errorf("parseStatStartTime(%q) accepted", bad)
		}
	}
}

func TestParseState(t *testing.T) {
	good := `{"version":1,"name":"demo","namespaces":["rb-demo"],"processes":[{"role":"vm:a","pid":42,"startTime":7,"exe":"/usr/bin/qemu-system-x86_64"}],"vms":[{"name":"a"}]}`
	s, err := ParseState([]byte(good))
	if err != nil || s.VM("a") == nil || s.VM("b") != nil || s.Processes[0].PID != 42 {
		t.Fatalf("ParseState: %+v %v", s, err)
	}
	for _, bad := range []string{
		``, `{`, `[]`,
		`{"version":2,"name":"demo"}`,
		`{"version":1,"name":"../x"}`,
		`{"version":1,"name":"demo","processes":[{"role":"x","pid":1}]}`,
		`{"version":1,"name":"demo","processes":[{"role":"x","pid":-5}]}`,
	} {
		if _, err := ParseState([]byte(bad)); err == nil {
			t.Errorf("ParseState(%q) accepted", bad)
		}
	}
}
