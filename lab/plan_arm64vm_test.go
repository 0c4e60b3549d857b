package lab

import (
	"strings"
	"testing"

	"github.com/dotfile/rackboot/profiles"
)

// arm64Rack is the example rack with its second machine (urban) arm64.
func arm64Rack(t *testing.T) *profiles.Rack {
	t.Helper()
	r := exampleRack(t)
	r.Machines[1].Arch = "arm64"
	return r
}

// TestNewPlanArm64: an arm64 machine is a UEFI VM netbooted by AAVMF's own
// PXE client on a virtio-net NIC, whatever the lab's defaults; the amd64
// machines beside it are unchanged.
func TestNewPlanArm64(t *testing.T) {
	p, err := NewPlan("demo", Spec{Rack: arm64Rack(t)})
	if err != nil {
		t.Fatal(err)
	}
	urban := p.VMs[1]
	if urban.Arch != ArchARM64 || urban.Firmware != FirmwareUEFI || urban.Netboot != NetbootPXE || urban.NIC != FirmwareNIC {
		t.Errorf("urban (arm64): arch %q firmware %q netboot %q NIC %q", urban.Arch, urban.Firmware, urban.Netboot, urban.NIC)
	}
	if other := p.VMs[0]; other.Arch != ArchAMD64 || other.Netboot != NetbootROM || other.NIC != DefaultNIC {
		t.Errorf("the amd64 machine: arch %q netboot %q NIC %q", other.Arch, other.Netboot, other.NIC)
	}
	p, err = NewPlan("demo", Spec{Rack: arm64Rack(t), BootNICs: map[string]BootNIC{"urban": {Netboot: NetbootHTTP}}})
	if err != nil {
		t.Fatal(err)
	}
	if urban := p.VMs[1]; urban.Netboot != NetbootHTTP {
		t.Errorf("urban with firmware-http: netboot %q", urban.Netboot)
	}
}

func TestNewPlanArm64Errors(t *testing.T) {
	tests := []struct {
		name string
		spec func(*Spec)
		want string
	}{
		{"bios for every VM", func(s *Spec) { s.Firmware = FirmwareBIOS }, "arch arm64 boots UEFI only"},
		{"bios in the rack", func(s *Spec) { s.Rack.Lab.Firmware = map[string]string{"urban": "bios"} }, "arch arm64 boots UEFI only"},
		{"an iPXE ROM", func(s *Spec) { s.BootNICs = map[string]BootNIC{"urban": {Netboot: NetbootROM}} }, "QEMU has no iPXE ROM for arm64"},
		{"e1000", func(s *Spec) { s.BootNICs = map[string]BootNIC{"urban": {Model: "e1000", Netboot: NetbootPXE}} }, "has no driver for it"},
		{"another arch", func(s *Spec) { s.Rack.Machines[1].Arch = "riscv64" }, `arch "riscv64"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Spec{Rack: arm64Rack(t)}
			tt.spec(&s)
			_, err := NewPlan("demo", s)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one with %q", err, tt.want)
			}
		})
	}
}

// TestQEMUArgsArm64: the virt machine, TCG with -cpu max even when the
// host has KVM, AAVMF in pflash, the NIC with no ROM, NVMe, and the SATA
// disks on an ich9-ahci controller (virt has no built-in AHCI).
func TestQEMUArgsArm64(t *testing.T) {
	vm := VMPlan{
		Name: "a", Arch: ArchARM64, MAC: "52:54:00:00:00:01", UUID: "u", Serial: "S", Firmware: FirmwareUEFI, MemoryMiB: 512, Tap: "tap0",
		NIC: FirmwareNIC, Netboot: NetbootPXE,
		NVMe: Disk{ID: "nvme0", Serial: "n"},
		SATA: []Disk{{ID: "sata0", Serial: "s0"}, {ID: "sata1", Serial: "s1"}},
	}
	f := VMFiles{SerialLog: "/s.log", NVMe: "/n", SATA: []string{"/s0", "/s1"}, OVMFCode: "/usr/share/AAVMF/AAVMF_CODE.fd", OVMFVars: "/v"}
	line := strings.Join(QEMUArgs(vm, f, AccelKVM), " ")
	for _, want := range []string{
		"-machine virt ", "-accel tcg -cpu max ",
		"if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd", "if=pflash,format=raw,unit=1,file=/v",
		"virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,romfile=,bootindex=1",
		"nvme,drive=nvme0,serial=n,bootindex=2",
		"-device ich9-ahci,id=ahci -drive file=/s0", "ide-hd,drive=sata0,bus=ahci.0,serial=s0", "ide-hd,drive=sata1,bus=ahci.1,serial=s1",
	} {
		if !strings.Contains(line, want) {
			t.Errorf("arm64 command line lacks %q:\n%s", want, line)
		}
	}
	for _, bad := range []string{"q35", "kvm", "bus=ide."} {
		if strings.Contains(line, bad) {
			t.Errorf("arm64 command line has %q:\n%s", bad, line)
		}
	}
	if strings.Count(line, "ich9-ahci") != 1 {
		t.Errorf("want one AHCI controller:\n%s", line)
	}
}
