package lab

import (
	"bytes"
	"strconv"
	"strings"
)

// Accel is QEMU's accelerator and the CPU model that goes with it.
type Accel struct {
	Name string // kvm or tcg
	CPU  string // host (kvm) or max (tcg: has RDRAND, so a guest's crypto/rand does not block)
}

// The two accelerators the lab uses.
var (
	AccelKVM = Accel{Name: "kvm", CPU: "host"}
	AccelTCG = Accel{Name: "tcg", CPU: "max"}
)

// ChooseAccel picks KVM only when /dev/kvm is writable and the CPU flags in
// /proc/cpuinfo show hardware virtualisation (vmx or svm); a paravirtual
// /dev/kvm without them crashes firmware, so everything else gets TCG.
func ChooseAccel(kvmWritable bool, cpuinfo []byte) Accel {
	if !kvmWritable {
		return AccelTCG
	}
	for _, line := range bytes.Split(cpuinfo, []byte("\n")) {
		key, val, ok := bytes.Cut(line, []byte(":"))
		if !ok || string(bytes.TrimSpace(key)) != "flags" {
			continue
		}
		for _, f := range bytes.Fields(val) {
			if s := string(f); s == "vmx" || s == "svm" {
				return AccelKVM
			}
		}
	}
	return AccelTCG
}

// VMFiles are the files one VM uses, all inside the lab's state directory
// except the read-only OVMF code.
type VMFiles struct {
	SerialLog string
	NVMe      string
	SATA      []string // one per VMPlan.SATA
	OVMFCode  string   // UEFI only: read-only firmware
	OVMFVars  string   // UEFI only: this VM's own copy of the variable store
}

// DiskFormat is the format of the lab's disk files (qemu-img create -f).
const DiskFormat = "qcow2"

// QEMUArgs is the qemu-system-x86_64 command line (without the program) for
// one VM: no default devices (so no NAT NIC to the host), serial console to
// a file, the NIC on the VM's tap with the machine's MAC as first boot
// device (with QEMU's iPXE ROM, or none: see Netboot), the NVMe disk second, any further NICs (not bootable), then the
// SATA disks on the q35 AHCI ports.
//
// An arm64 VM (ArchARM64) runs on QEMU's virt machine under TCG with -cpu
// max whatever accel says (no host here runs arm64 KVM), with AAVMF in
// f.OVMFCode/f.OVMFVars and its SATA disks on an ich9-ahci controller.
func QEMUArgs(vm VMPlan, f VMFiles, accel Accel) []string {
	nic := vm.NIC
	if nic == "" {
		nic = DefaultNIC
	}
	machine, ahci := "q35,graphics=off", "ide"
	if vm.Arch == ArchARM64 {
		machine, ahci, accel = "virt", "ahci", AccelTCG
	}
	args := []string{
		"-name", qopt(vm.Name),
		"-machine", machine,
		"-accel", accel.Name,
		"-cpu", accel.CPU,
		"-smp", "1",
		"-m", strconv.Itoa(vm.MemoryMiB),
		"-nodefaults",
		"-display", "none",
		"-no-reboot",
		// append: a VM powered on again through its BMC keeps its
		// earlier boots' console, as a BMC's serial-over-LAN log does.
		"-chardev", "file,id=serial0,path=" + qopt(f.SerialLog) + ",append=on",
		"-serial", "chardev:serial0",
		"-smbios", "type=1,uuid=" + qopt(vm.UUID) + ",serial=" + qopt(vm.Serial),
	}
	if vm.Firmware == FirmwareUEFI {
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+qopt(f.OVMFCode),
			"-drive", "if=pflash,format=raw,unit=1,file="+qopt(f.OVMFVars),
		)
	}
	// The first NIC: QEMU gives it its iPXE option ROM, unless the
	// firmware's own network stack netboots it (romfile= empty: OVMF's
	// VirtioNetDxe drives the NIC, its PXE or HTTP boot client loads
	// iPXE from rackboot). bootindex=1 puts every boot option OVMF makes
	// for the NIC (PXEv4, PXEv6, HTTPv4, HTTPv6, in that order) first.
	first := nic + ",netdev=net0,mac=" + vm.MAC
	if vm.Netboot.Firmware() {
		first += ",romfile="
	}
	if vm.Netboot == NetbootHTTP {
		// OVMF makes PXE options only while these are yes (its default):
		// without them "UEFI HTTPv4" is the NIC's first boot option.
		args = append(args,
			"-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
			"-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=no",
		)
	}
	args = append(args,
		"-netdev", "tap,id=net0,ifname="+qopt(vm.Tap)+",script=no,downscript=no",
		"-device", first+",bootindex=1",
		"-drive", "file="+qopt(f.NVMe)+",if=none,id="+vm.NVMe.ID+",format="+DiskFormat,
		"-device", "nvme,drive="+vm.NVMe.ID+",serial="+qopt(vm.NVMe.Serial)+",bootindex=2",
	)
	// Further NICs: no option ROM (romfile= empty) and no boot index, so
	// the firmware never netboots from them; the booted system sees them.
	for i, n := range vm.Extra {
		id := "net" + strconv.Itoa(i+1)
		args = append(args,
			"-netdev", "tap,id="+id+",ifname="+qopt(n.Tap)+",script=no,downscript=no",
			"-device", nic+",netdev="+id+",mac="+n.MAC+",romfile=",
		)
	}
	if ahci == "ahci" && len(vm.SATA) > 0 && len(f.SATA) > 0 {
		args = append(args, "-device", "ich9-ahci,id=ahci")
	}
	for i, d := range vm.SATA {
		if i >= len(f.SATA) {
			break
		}
		args = append(args,
			"-drive", "file="+qopt(f.SATA[i])+",if=none,id="+d.ID+",format="+DiskFormat,
			"-device", "ide-hd,drive="+d.ID+",bus="+ahci+"."+strconv.Itoa(i)+",serial="+qopt(d.Serial),
		)
	}
	return args
}

// qopt escapes a value inside a QEMU option list (a comma is doubled).
func qopt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// DnsmasqArgs is the command line of the home router's dnsmasq: DHCP only
// (no DNS: port 0), on its veth end only, handing out the pool with itself
// as the gateway, in the foreground, logging to logFile.
func DnsmasqArgs(p *Plan, leaseFile, logFile string) []string {
	mask := netmask(p.Subnet.Bits())
	gw := p.RouterAddr.Addr().String()
	return []string{
		"--keep-in-foreground",
		"--conf-file=/dev/null",
		"--port=0",
		"--interface=" + routerIface,
		"--bind-interfaces",
		"--except-interface=lo",
		"--dhcp-authoritative",
		"--dhcp-range=" + p.DHCPRange[0].String() + "," + p.DHCPRange[1].String() + "," + mask + ",1h",
		"--dhcp-option=option:router," + gw,
		"--dhcp-option=option:dns-server," + gw,
		"--dhcp-leasefile=" + leaseFile,
		"--pid-file=",
		"--log-dhcp",
		"--log-facility=" + logFile,
	}
}

func netmask(bits int) string {
	m := ^uint32(0) << (32 - bits)
	if bits == 0 {
		m = 0
	}
	return fromU32(m).String()
}
