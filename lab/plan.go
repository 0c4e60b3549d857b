package lab

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/dotfile/rackboot/profiles"
)

// Firmware is how a VM boots: SeaBIOS or OVMF (UEFI).
type Firmware string

// The two firmwares.
const (
	FirmwareBIOS Firmware = "bios"
	FirmwareUEFI Firmware = "uefi"
)

// ParseFirmware reads "bios" or "uefi" ("" is bios).
func ParseFirmware(s string) (Firmware, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "bios":
		return FirmwareBIOS, nil
	case "uefi", "efi":
		return FirmwareUEFI, nil
	}
	return "", fmt.Errorf("firmware %q: write bios or uefi", s)
}

// The CPU architectures of lab VMs (a rack machine's arch).
const (
	ArchAMD64 = "amd64" // qemu-system-x86_64, q35, SeaBIOS or OVMF
	// ArchARM64: qemu-system-aarch64, the virt machine, always TCG with
	// -cpu max, Debian's AAVMF (UEFI only), netbooted by AAVMF's own PXE
	// client on a virtio-net NIC (QEMU has no iPXE ROM for arm64).
	ArchARM64 = "arm64"
)

// DHCPMode is who gives the VMs their addresses.
type DHCPMode string

// The two DHCP modes.
const (
	// DHCPFull: rackboot serve is the only DHCP server on the bridge.
	DHCPFull DHCPMode = "full"
	// DHCPProxy: dnsmasq in the router namespace hands out addresses,
	// rackboot serve answers PXE clients only (proxy DHCP).
	DHCPProxy DHCPMode = "proxy"
)

// ParseDHCPMode reads "full" or "proxy" ("" is full).
func ParseDHCPMode(s string) (DHCPMode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "full":
		return DHCPFull, nil
	case "proxy":
		return DHCPProxy, nil
	}
	return "", fmt.Errorf("dhcp mode %q: write full or proxy", s)
}

// Spec is what Up is asked to build.
type Spec struct {
	Rack *profiles.Rack
	// Machines is how many machines (the first N of the rack file); 0 means
	// the rack's lab.machines, and when that is 0 too, all of them.
	Machines int
	// DHCP is full (default) or proxy (adds the router namespace + dnsmasq).
	DHCP DHCPMode
	// Firmware, when set, overrides lab.firmware for every VM.
	Firmware Firmware
	// ServerAddr is the bridge's address; zero: the first free host of the
	// rack subnet (see ServerAddress).
	ServerAddr netip.Prefix
	// NIC is the QEMU NIC model (default e1000, whose ROM is iPXE).
	NIC string
	// Serve, when set, is started inside the lab namespace after the network
	// and before the VMs (rackboot serve), recorded and stopped like a VM.
	Serve *ProcessSpec
	// ExtraNICs gives a machine (by name) more NICs on the lab's bridge
	// after its first: each with its own tap and a MAC derived from the
	// machine's name (ExtraMAC), and no boot ROM, so only the first NIC
	// netboots. A multi-NIC server, as Talos sees one: it runs DHCP on
	// every link.
	ExtraNICs map[string]int
	// BootNICs sets, per machine (by name), the model of its first NIC
	// and who netboots it: QEMU's iPXE option ROM (the default), or the
	// firmware's own network stack with no ROM on the NIC (OVMF's PXE or
	// UEFI HTTP boot client, as on a real server). See BootNIC.
	BootNICs map[string]BootNIC
	// BMCPasswords are the passwords the virtual BMCs accept (machine
	// name → password): required for every machine that gets one (its
	// bmc: address is an IPv4 address in the lab subnet). Never in the
	// Plan or lab.json: Up writes them only into the emulators' 0600
	// files, which Down removes.
	BMCPasswords map[string]string `json:"-"`
}

// Netboot is who netboots a VM's first NIC.
type Netboot string

// The three ways a lab VM netboots.
const (
	// NetbootROM: the NIC's option ROM, QEMU's iPXE (ipxe-qemu), does
	// DHCP and loads rackboot's boot script itself. The default.
	NetbootROM Netboot = "rom"
	// NetbootPXE: no option ROM; OVMF's own PXE client (VirtioNetDxe,
	// UefiPxeBcDxe) does DHCP and TFTP and starts the iPXE binary
	// rackboot serves (ipxe.efi), which then loads the boot script.
	NetbootPXE Netboot = "firmware-pxe"
	// NetbootHTTP: no option ROM; OVMF's UEFI HTTP boot client
	// (HttpBootDxe) sends vendor class HTTPClient and downloads ipxe.efi
	// from the URL rackboot offers. OVMF's PXE clients are switched off
	// (fw_cfg opt/org.tianocore/IPv4PXESupport and IPv6PXESupport = no),
	// so "UEFI HTTPv4" is the first network boot option it tries.
	NetbootHTTP Netboot = "firmware-http"
)

// ParseNetboot reads rom, firmware-pxe or firmware-http ("" is rom).
func ParseNetboot(s string) (Netboot, error) {
	switch n := Netboot(strings.ToLower(strings.TrimSpace(s))); n {
	case "":
		return NetbootROM, nil
	case NetbootROM, NetbootPXE, NetbootHTTP:
		return n, nil
	}
	return "", fmt.Errorf("netboot %q: write rom, firmware-pxe or firmware-http", s)
}

// Firmware reports whether the firmware's own network stack netboots (no
// option ROM on the NIC).
func (n Netboot) Firmware() bool { return n == NetbootPXE || n == NetbootHTTP }

// BootNIC is a VM's first NIC: the one that netboots.
type BootNIC struct {
	// Model is QEMU's NIC device; "" is Spec.NIC, or for a firmware
	// netboot FirmwareNIC (OVMF has a driver for virtio-net only: QEMU's
	// e1000 netboots only through its iPXE ROM).
	Model string
	// Netboot is who netboots it ("" is NetbootROM). NetbootPXE and
	// NetbootHTTP need UEFI firmware: SeaBIOS has no network stack of
	// its own.
	Netboot Netboot
}

// FirmwareNIC is the NIC model a firmware netboot gets by default: the
// only one OVMF has its own driver for (VirtioNetDxe).
const FirmwareNIC = "virtio-net-pci"

// MaxExtraNICs bounds Spec.ExtraNICs per machine.
const MaxExtraNICs = 3

// NIC is one network interface of a VM after its first.
type NIC struct {
	MAC string `json:"mac"`
	Tap string `json:"tap"`
}

// ProcessSpec is a program to run inside the lab namespace.
type ProcessSpec struct {
	Role string   // name in the state and in messages, e.g. "serve"
	Path string   // program
	Args []string // arguments, without the program
	Env  []string // extra environment (KEY=value), added to the lab's own
	// WorkDir, when set, is a directory name under the lab's directory that
	// Up creates for the process (its working directory) and Down removes
	// with everything in it. Lab.Path gives its full path in advance.
	WorkDir string
	// Files are written into WorkDir before the process starts.
	Files map[string][]byte
	// Links are symbolic links made in WorkDir (name → target).
	Links map[string]string
	// Ready, when set, is called after the start and must return nil once
	// the process serves; its context ends when the process exits.
	Ready func(ctx context.Context) error
	// ReadyTimeout bounds Ready (default 30s).
	ReadyTimeout time.Duration
}

var vmNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Disk is one virtual disk of a VM.
type Disk struct {
	ID     string // QEMU drive id and file name stem: nvme0, sata0, ...
	Serial string // what the guest sees as the disk's serial
	Size   string // qemu-img size, e.g. 2G
	Bytes  int64
}

// VMPlan is one VM, as decided from the rack file.
type VMPlan struct {
	Name      string
	Arch      string // ArchAMD64 or ArchARM64
	MAC       string
	UUID      string
	Serial    string
	Firmware  Firmware
	MemoryMiB int
	Tap       string
	NIC       string
	// Netboot is who netboots the first NIC (Spec.BootNICs).
	Netboot Netboot
	// Extra are the NICs after the first (Spec.ExtraNICs): model NIC (the
	// lab's, or the first NIC's when BootNICs sets one), on the same
	// bridge, no boot ROM.
	Extra []NIC
	NVMe  Disk
	SATA  []Disk
	// BMC is the VM's virtual BMC (nil: none; the VM starts powered on).
	// A VM with one starts powered off, its QEMU run by the power agent.
	BMC *BMCPlan
}

// Taps are the VM's tap names: its first NIC's, then its extra NICs'.
func (vm VMPlan) Taps() []string {
	out := []string{vm.Tap}
	for _, n := range vm.Extra {
		out = append(out, n.Tap)
	}
	return out
}

// Plan is the whole lab, as decided from the rack file: no side effects.
type Plan struct {
	Name            string
	Namespace       string
	RouterNamespace string // "" unless DHCP is proxy
	Subnet          netip.Prefix
	ServerAddr      netip.Prefix // on br0
	RouterAddr      netip.Prefix // the rack's gateway, in the router namespace
	DHCP            DHCPMode
	DHCPRange       [2]netip.Addr // the DHCP pool: dnsmasq's (proxy) or serve's (full)
	VMs             []VMPlan
}

// Defaults for the lab section of the rack file.
const (
	DefaultNVMeSize = "2G"
	DefaultNIC      = "e1000"
)

// DefaultSATASizes is used when lab.sataSizes is empty.
var defaultSATASizes = []string{"1G", "1G"}

// NewPlan decides the lab from the rack file. It checks everything it can
// without touching the system and reports all problems at once.
func NewPlan(name string, s Spec) (*Plan, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if s.Rack == nil {
		return nil, errors.New("plan lab: no rack")
	}
	r := s.Rack
	var errs []error
	dhcp, err := ParseDHCPMode(string(s.DHCP))
	if err != nil {
		errs = append(errs, err)
	}
	subnet, err := netip.ParsePrefix(r.Cluster.Network.Subnet)
	if err != nil || !subnet.Addr().Is4() {
		return nil, fmt.Errorf("plan lab: the rack's network.subnet %q is not an IPv4 prefix such as 192.168.1.0/24", r.Cluster.Network.Subnet)
	}
	subnet = subnet.Masked()
	n := s.Machines
	switch {
	case n < 0:
		errs = append(errs, fmt.Errorf("machines: %d is negative", n))
		n = 0
	case n > len(r.Machines):
		errs = append(errs, fmt.Errorf("%d machines asked for, the rack file has %d", n, len(r.Machines)))
		n = len(r.Machines)
	case n == 0:
		n = r.Lab.Machines
		if n <= 0 || n > len(r.Machines) {
			n = len(r.Machines)
		}
	}
	if len(r.Machines) == 0 {
		errs = append(errs, errors.New("the rack file has no machines"))
	}
	used := usedAddrs(r)
	p := &Plan{
		Name:      name,
		Namespace: Namespace(name),
		Subnet:    subnet,
		DHCP:      dhcp,
	}
	if gw, err := netip.ParseAddr(r.Cluster.Network.Gateway); err == nil && subnet.Contains(gw) {
		p.RouterAddr = netip.PrefixFrom(gw, subnet.Bits())
	} else if dhcp == DHCPProxy {
		errs = append(errs, fmt.Errorf("proxy DHCP needs the rack's network.gateway inside %s (it is the home router's address), got %q", subnet, r.Cluster.Network.Gateway))
	}
	if s.ServerAddr.IsValid() {
		if !subnet.Contains(s.ServerAddr.Addr()) || s.ServerAddr.Bits() != subnet.Bits() {
			errs = append(errs, fmt.Errorf("server address %s is not a host address in %s", s.ServerAddr, subnet))
		} else if used[s.ServerAddr.Addr()] != "" {
			errs = append(errs, fmt.Errorf("server address %s is taken by %s", s.ServerAddr.Addr(), used[s.ServerAddr.Addr()]))
		}
		p.ServerAddr = s.ServerAddr
	} else if a, err := netip.ParseAddr(r.Cluster.Network.Rackboot); err == nil && subnet.Contains(a) && used[a] == "" {
		// The rack file says where rackboot is: the configs point there.
		p.ServerAddr = netip.PrefixFrom(a, subnet.Bits())
	} else if a, err := ServerAddress(subnet, withBMCs(used, r, subnet)); err != nil {
		errs = append(errs, err)
	} else {
		p.ServerAddr = netip.PrefixFrom(a, subnet.Bits())
	}
	if dhcp == DHCPProxy {
		p.RouterNamespace = RouterNamespace(name)
	}
	if p.ServerAddr.IsValid() {
		used[p.ServerAddr.Addr()] = "the lab's server"
	}
	if lo, hi, err := DHCPRange(subnet, used); err != nil {
		errs = append(errs, err)
	} else {
		p.DHCPRange = [2]netip.Addr{lo, hi}
	}
	mem := r.Lab.MemoryMiB
	if mem == 0 {
		mem = profiles.DefaultLabMemoryMiB
	}
	if mem < 128 {
		errs = append(errs, fmt.Errorf("lab.memoryMiB %d: a VM needs at least 128", mem))
	}
	nvme := r.Lab.NVMeSize
	if nvme == "" {
		nvme = DefaultNVMeSize
	}
	nvmeBytes, err := ParseSize(nvme)
	if err != nil {
		errs = append(errs, fmt.Errorf("lab.nvmeSize: %w", err))
	}
	sataSizes := r.Lab.SATASizes
	if len(sataSizes) == 0 {
		sataSizes = defaultSATASizes
	}
	if len(sataSizes) > 6 {
		errs = append(errs, fmt.Errorf("lab.sataSizes: %d disks, the q35 AHCI controller has 6 ports", len(sataSizes)))
		sataSizes = sataSizes[:6]
	}
	sataBytes := make([]int64, len(sataSizes))
	for i, sz := range sataSizes {
		if sataBytes[i], err = ParseSize(sz); err != nil {
			errs = append(errs, fmt.Errorf("lab.sataSizes[%d]: %w", i, err))
		}
	}
	nic := s.NIC
	if nic == "" {
		nic = DefaultNIC
	}
	for name := range r.Lab.Firmware {
		if r.Machine(name) == nil {
			errs = append(errs, fmt.Errorf("lab.firmware names %q, which is not a machine of the rack file", name))
		}
	}
	for name, k := range s.ExtraNICs {
		switch i := slices.IndexFunc(r.Machines, func(m profiles.Machine) bool { return m.Name == name }); {
		case i < 0:
			errs = append(errs, fmt.Errorf("extra NICs for %q, which is not a machine of the rack file", name))
		case i >= n:
			errs = append(errs, fmt.Errorf("extra NICs for %s, which is not one of the lab's %d machine(s)", name, n))
		}
		if k < 0 || k > MaxExtraNICs {
			errs = append(errs, fmt.Errorf("machine %s: %d extra NICs, the lab gives 0 to %d", name, k, MaxExtraNICs))
		}
	}
	for name, b := range s.BootNICs {
		switch i := slices.IndexFunc(r.Machines, func(m profiles.Machine) bool { return m.Name == name }); {
		case i < 0:
			errs = append(errs, fmt.Errorf("boot NIC for %q, which is not a machine of the rack file", name))
		case i >= n:
			errs = append(errs, fmt.Errorf("boot NIC for %s, which is not one of the lab's %d machine(s)", name, n))
		}
		if _, err := ParseNetboot(string(b.Netboot)); err != nil {
			errs = append(errs, fmt.Errorf("machine %s: %w", name, err))
		}
	}
	macs := map[string]string{}
	for i := 0; i < n; i++ {
		m := &r.Machines[i]
		if !vmNameRE.MatchString(m.Name) {
			errs = append(errs, fmt.Errorf("machine name %q: a lab VM needs letters, digits, dots, dashes or underscores (it names a directory)", m.Name))
			continue
		}
		arch := m.ArchOrDefault()
		fw := s.Firmware
		if fw == "" {
			if fw, err = ParseFirmware(r.Lab.Firmware[m.Name]); err != nil {
				errs = append(errs, fmt.Errorf("lab.firmware.%s: %w", m.Name, err))
			}
			if arch == ArchARM64 && strings.TrimSpace(r.Lab.Firmware[m.Name]) == "" {
				fw = FirmwareUEFI // arm64 machines boot UEFI only
			}
		}
		bn := s.BootNICs[m.Name]
		switch arch {
		case ArchAMD64:
		case ArchARM64:
			if fw != FirmwareUEFI {
				errs = append(errs, fmt.Errorf("machine %s: arch arm64 boots UEFI only (AAVMF), not %s", m.Name, fw))
			}
			if bn.Netboot == "" {
				bn.Netboot = NetbootPXE // no iPXE ROM for arm64: AAVMF's own PXE
			} else if n, err := ParseNetboot(string(bn.Netboot)); err == nil && !n.Firmware() {
				errs = append(errs, fmt.Errorf("machine %s: arch arm64 netboots through AAVMF (firmware-pxe or firmware-http): QEMU has no iPXE ROM for arm64", m.Name))
			}
		default:
			errs = append(errs, fmt.Errorf("machine %s: arch %q: the lab runs amd64 and arm64", m.Name, arch))
		}
		mac, err := vmMAC(m)
		if err != nil {
			errs = append(errs, err)
		} else if other, dup := macs[mac]; dup {
			errs = append(errs, fmt.Errorf("machines %s and %s have the same MAC %s", other, m.Name, mac))
		}
		macs[mac] = m.Name
		id := m.Select.UUID
		if id == "" {
			id = StableUUID(r.Cluster.Name, m.Name)
		} else if u, err := uuid.Parse(id); err != nil {
			errs = append(errs, fmt.Errorf("machine %s: select.uuid %q: %w", m.Name, id, err))
		} else {
			id = u.String()
		}
		serial := m.Select.Serial
		if serial == "" {
			serial = "LAB-" + strings.ToUpper(m.Name)
		}
		if strings.ContainsAny(serial, "\x00\n") {
			errs = append(errs, fmt.Errorf("machine %s: serial %q has control characters", m.Name, serial))
		}
		vmNIC, netboot, err := bootNIC(m.Name, nic, fw, bn)
		if err != nil {
			errs = append(errs, err)
		}
		vm := VMPlan{
			Name:      m.Name,
			Arch:      arch,
			MAC:       mac,
			UUID:      id,
			Serial:    serial,
			Firmware:  fw,
			MemoryMiB: mem,
			Tap:       "tap" + strconv.Itoa(i),
			NIC:       vmNIC,
			Netboot:   netboot,
			NVMe:      Disk{ID: "nvme0", Serial: diskSerial(m.Name, "nvme0"), Size: nvme, Bytes: nvmeBytes},
		}
		for j, sz := range sataSizes {
			id := "sata" + strconv.Itoa(j)
			vm.SATA = append(vm.SATA, Disk{ID: id, Serial: diskSerial(m.Name, id), Size: sz, Bytes: sataBytes[j]})
		}
		for j := 1; j <= min(s.ExtraNICs[m.Name], MaxExtraNICs); j++ {
			extra := ExtraMAC(m.Name, j)
			who := m.Name + " (NIC " + strconv.Itoa(j) + ")"
			if other, dup := macs[extra]; dup {
				errs = append(errs, fmt.Errorf("machines %s and %s have the same MAC %s", other, who, extra))
			}
			macs[extra] = who
			vm.Extra = append(vm.Extra, NIC{MAC: extra, Tap: vm.Tap + "n" + strconv.Itoa(j)})
		}
		p.VMs = append(p.VMs, vm)
	}
	errs = append(errs, planBMCs(p, r, used, s.BMCPasswords)...)
	if len(errs) > 0 {
		return nil, fmt.Errorf("plan lab %s: %w", name, errors.Join(errs...))
	}
	return p, nil
}

// bootNIC decides a machine's first NIC (model, who netboots it) from the
// lab's NIC model, its firmware and its Spec.BootNICs entry.
func bootNIC(machine, labNIC string, fw Firmware, b BootNIC) (string, Netboot, error) {
	netboot, err := ParseNetboot(string(b.Netboot))
	if err != nil {
		return labNIC, NetbootROM, nil // reported with the other BootNICs problems
	}
	model := strings.TrimSpace(b.Model)
	if !netboot.Firmware() {
		if model == "" {
			model = labNIC
		}
		return model, netboot, nil
	}
	if model == "" {
		model = FirmwareNIC
	}
	var errs []error
	if fw != FirmwareUEFI {
		errs = append(errs, fmt.Errorf("machine %s: netboot %s needs uefi firmware (SeaBIOS has no network stack of its own: it netboots only through a NIC's option ROM)", machine, netboot))
	}
	if model != FirmwareNIC && model != "virtio-net" {
		errs = append(errs, fmt.Errorf("machine %s: netboot %s with NIC %s: OVMF has no driver for it (QEMU's %s netboots only through its iPXE ROM); use %s", machine, netboot, model, model, FirmwareNIC))
	}
	return model, netboot, errors.Join(errs...)
}

// usedAddrs maps every address the rack file gives out (gateway, VIP,
// nameservers, static machine addresses) to who has it.
func usedAddrs(r *profiles.Rack) map[netip.Addr]string {
	used := map[netip.Addr]string{}
	add := func(s, who string) {
		if a, err := netip.ParseAddr(s); err == nil {
			used[a] = who
		} else if p, err := netip.ParsePrefix(s); err == nil {
			used[p.Addr()] = who
		}
	}
	add(r.Cluster.Network.Gateway, "the gateway")
	add(r.Cluster.VIP, "the VIP")
	for _, ns := range r.Cluster.Network.Nameservers {
		add(ns, "a nameserver")
	}
	for _, m := range r.Machines {
		if !m.IsDHCP() {
			add(m.Address, "machine "+m.Name)
		}
	}
	return used
}

// ServerAddress is the first host address of subnet that nobody in used has:
// the address rackboot serve gets on the lab's bridge.
func ServerAddress(subnet netip.Prefix, used map[netip.Addr]string) (netip.Addr, error) {
	subnet = subnet.Masked()
	if !subnet.Addr().Is4() || subnet.Bits() > 30 {
		return netip.Addr{}, fmt.Errorf("subnet %s: the lab needs an IPv4 subnet of /30 or larger", subnet)
	}
	last := broadcast(subnet)
	for a := subnet.Addr().Next(); a.IsValid() && a.Less(last); a = a.Next() {
		if used[a] == "" {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("subnet %s has no free host address for the lab's server", subnet)
}

// DHCPRange is the home router's pool: the upper half of subnet's hosts,
// shrunk so that it starts above every address in used.
func DHCPRange(subnet netip.Prefix, used map[netip.Addr]string) (netip.Addr, netip.Addr, error) {
	subnet = subnet.Masked()
	if !subnet.Addr().Is4() || subnet.Bits() > 29 {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("subnet %s: a DHCP pool needs an IPv4 subnet of /29 or larger", subnet)
	}
	base := u32(subnet.Addr())
	size := uint32(1) << (32 - subnet.Bits())
	lo := base + size/2
	hi := base + size - 2
	for a := range used {
		if a.Is4() && subnet.Contains(a) && u32(a) >= lo {
			lo = u32(a) + 1
		}
	}
	if lo > hi {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("subnet %s: no room for a DHCP pool above the addresses the rack file uses", subnet)
	}
	return fromU32(lo), fromU32(hi), nil
}

func broadcast(p netip.Prefix) netip.Addr {
	return fromU32(u32(p.Addr()) | (1<<(32-p.Bits()) - 1))
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func fromU32(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// vmMAC is the machine's first select.mac, else a stable locally
// administered one (52:54:00, QEMU's prefix) derived from its name.
func vmMAC(m *profiles.Machine) (string, error) {
	if len(m.Select.MAC) > 0 {
		hw, err := net.ParseMAC(m.Select.MAC[0])
		if err != nil || len(hw) != 6 {
			return "", fmt.Errorf("machine %s: select.mac[0] %q is not a MAC address", m.Name, m.Select.MAC[0])
		}
		if hw[0]&1 == 1 {
			return "", fmt.Errorf("machine %s: select.mac[0] %s is a multicast address", m.Name, hw)
		}
		return hw.String(), nil
	}
	h := sha256.Sum256([]byte("rackboot-lab-mac/" + m.Name))
	return net.HardwareAddr{0x52, 0x54, 0x00, h[0], h[1], h[2]}.String(), nil
}

// ExtraMAC is the MAC of a lab VM's NIC number nic (1 is the second NIC;
// the first has vmMAC's): a stable locally administered address derived
// from the machine's name, under QEMU's prefix 52:54:00.
func ExtraMAC(machine string, nic int) string {
	h := sha256.Sum256([]byte("rackboot-lab-mac/" + machine + "/nic" + strconv.Itoa(nic)))
	return net.HardwareAddr{0x52, 0x54, 0x00, h[0], h[1], h[2]}.String()
}

// labUUIDSpace is the name space of the UUIDs StableUUID derives.
var labUUIDSpace = uuid.MustParse("7b1c3f5e-2a4d-5e6f-8a9b-0c1d2e3f4a5b")

// StableUUID is the SMBIOS UUID a lab VM gets when the rack file gives none:
// a name-based (version 5) UUID of the cluster and machine names.
func StableUUID(cluster, machine string) string {
	return uuid.NewSHA1(labUUIDSpace, []byte(cluster+"/"+machine)).String()
}

// diskSerial is the serial a VM's disk shows the guest: at most 20
// characters (the NVMe and ATA limit), from the machine's name and the disk.
func diskSerial(machine, disk string) string {
	var b strings.Builder
	for _, r := range machine {
		if r < 0x80 && (r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			b.WriteRune(r)
		}
	}
	stem := b.String()
	if max := 20 - len(disk) - 1; len(stem) > max {
		h := sha256.Sum256([]byte(machine))
		stem = stem[:max-4] + fmt.Sprintf("%02x%02x", h[0], h[1])
	}
	return stem + "-" + disk
}

// ParseSize reads a disk size the way qemu-img does: a number with an
// optional suffix K, M, G or T (powers of 1024; a trailing B or iB is
// accepted), at least 1 MiB and at most 16 TiB.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "i")
	if t == "" {
		return 0, fmt.Errorf("size %q: write a number with K, M, G or T, such as 2G", s)
	}
	mult := int64(1)
	switch t[len(t)-1] {
	case 'k', 'K':
		mult = 1 << 10
	case 'm', 'M':
		mult = 1 << 20
	case 'g', 'G':
		mult = 1 << 30
	case 't', 'T':
		mult = 1 << 40
	}
	if mult != 1 {
		t = t[:len(t)-1]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: write a positive whole number with K, M, G or T, such as 2G", s)
	}
	const lo, hi = 1 << 20, 16 << 40
	if n > hi/mult || n*mult < lo {
		return 0, fmt.Errorf("size %q: a lab disk is between 1M and 16T", s)
	}
	return n * mult, nil
}
