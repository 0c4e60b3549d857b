package apid

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/siderolabs/talos/pkg/machinery/nethelpers"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/resources/hardware"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
)

// Inventory is what the machine has, as Talos's resources: the answers to
// `talosctl get disks`, `get links` and `get systeminformation`.
type Inventory struct {
	Disks  []block.DiskSpec
	Links  []Link
	System hardware.SystemInformationSpec
}

// Link is one network link: Talos's LinkStatus ID is the link's name.
type Link struct {
	Name string
	Spec network.LinkStatusSpec
}

// ReadInventory reads disks, links and system information from the
// sysfs tree under root ("/" on the machine, a testdata tree in tests).
func ReadInventory(root string) (Inventory, error) {
	var inv Inventory
	var err error
	if inv.Disks, err = ReadDisks(root); err != nil {
		return inv, err
	}
	if inv.Links, err = ReadLinks(root); err != nil {
		return inv, err
	}
	inv.System = ReadSystemInformation(root)
	return inv, nil
}

// sectorUnit is the unit of /sys/block/<dev>/size, whatever the device's
// logical block size (the kernel's SECTOR_SIZE).
const sectorUnit = 512

// ReadDisks lists the whole disks under root/sys/block with the properties
// Talos's DisksController records (go-blockdevice v2 block.Device
// GetProperties, getTransport), from sysfs files rather than ioctls: size
// from the size attribute, the same skips as Talos (ram*, dm-*, zero
// sizes), sorted by device path.
func ReadDisks(root string) ([]block.DiskSpec, error) {
	sysBlock := filepath.Join(root, "sys", "block")
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	var out []block.DiskSpec
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "ram") || strings.HasPrefix(name, "dm-") {
			continue
		}
		dir := filepath.Join(sysBlock, name)
		sectors, err := parseUint(readAttr(dir, "size"))
		if err != nil || sectors == 0 {
			continue
		}
		var s block.DiskSpec
		s.SetSize(sectors * sectorUnit)
		s.DevPath = "/dev/" + name
		s.SectorSize = uint(parseUintOr(readAttr(dir, "queue/logical_block_size"), sectorUnit))
		s.IOSize = uint(parseUintOr(readAttr(dir, "queue/optimal_io_size"), 0))
		if s.IOSize == 0 || !isPowerOf2(s.IOSize) {
			s.IOSize = uint(parseUintOr(readAttr(dir, "queue/minimum_io_size"), sectorUnit))
		}
		s.Readonly = readAttr(dir, "ro") == "1"
		s.CDROM = strings.HasPrefix(name, "sr")
		s.Model = readAttr(dir, "device/model")
		s.Serial = firstOf(readAttr(dir, "serial"), readAttr(dir, "device/serial"))
		s.Modalias = readAttr(dir, "device/modalias")
		s.WWID = firstOf(readAttr(dir, "wwid"), readAttr(dir, "device/wwid"))
		s.UUID = firstOf(readAttr(dir, "uuid"), readAttr(dir, "device/uuid"))
		s.Rotational = readAttr(dir, "queue/rotational") == "1"
		if link, err := os.Readlink(dir); err == nil {
			s.BusPath = busPath(link)
		}
		if sub, err := os.Readlink(filepath.Join(dir, "subsystem")); err == nil {
			s.SubSystem = "/sys/class/" + filepath.Base(sub)
		}
		s.Transport = transport(root, name, dir)
		if s.Serial == "" {
			s.Serial = udevHelperSerial(dir, s.Transport)
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b block.DiskSpec) int { return strings.Compare(a.DevPath, b.DevPath) })
	return out, nil
}

// busPath is go-blockdevice's BusPath from a /sys/block/<dev> link
// ("../devices/pci0000:00/0000:00:1f.2/ata1/.../block/sda"): the path
// below /devices, without the trailing block/<dev>.
func busPath(link string) string {
	i := strings.Index(link, "/devices/")
	if i < 0 {
		return ""
	}
	return filepath.Dir(filepath.Dir(link[i+len("/devices"):]))
}

// transport mirrors go-blockdevice's getTransport: by name for nvme,
// virtio, xen and mmc; else from the SCSI host of the device link
// ("H:C:T:L"), its class and proc_name.
func transport(root, name, dir string) string {
	switch {
	case strings.HasPrefix(name, "nvme"):
		return "nvme"
	case strings.HasPrefix(name, "vd"):
		return "virtio"
	case strings.HasPrefix(name, "xvd"):
		return "xenblk"
	case strings.HasPrefix(name, "mmcblk"):
		return "mmc"
	}
	dev, err := os.Readlink(filepath.Join(dir, "device"))
	if err != nil {
		return ""
	}
	dev = filepath.Base(dev)
	host, ok := scsiHost(dev)
	if !ok {
		return ""
	}
	class := func(typ string) bool {
		st, err := os.Stat(filepath.Join(root, "sys", "class", typ+"_host", "host"+strconv.Itoa(host)))
		return err == nil && st.IsDir()
	}
	scsiDev := filepath.Join(root, "sys", "bus", "scsi", "devices", dev)
	has := func(attr string) bool {
		_, err := os.Stat(filepath.Join(scsiDev, attr))
		return err == nil
	}
	switch {
	case class("spi"):
		return "spi"
	case class("fc"):
		return "fc"
	case class("sas") || has("sas_device"):
		return "sas"
	case has("ieee1394_id"):
		return "ibp"
	case class("iscsi"):
		return "iscsi"
	}
	if dest, _ := os.Readlink(scsiDev); strings.Contains(dest, "usb") {
		return "usb"
	}
	if class("scsi") {
		proc := readAttr(filepath.Join(root, "sys", "class", "scsi_host", "host"+strconv.Itoa(host)), "proc_name")
		switch {
		case proc == "ahci", proc == "sata":
			return "sata"
		case strings.Contains(proc, "ata"):
			return "ata"
		case proc == "virtio_scsi":
			return "virtio"
		default:
			return proc
		}
	}
	return ""
}

// scsiHost is the host number of a SCSI address "H:C:T:L".
func scsiHost(addr string) (int, bool) {
	parts := strings.Split(addr, ":")
	if len(parts) != 4 {
		return 0, false
	}
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 10, 32); err != nil {
			return 0, false
		}
	}
	h, _ := strconv.Atoi(parts[0])
	return h, true
}

// ReadLinks lists the links under root/sys/class/net as Talos's
// LinkStatus resources (LinkStatusController fills them from rtnetlink
// and ethtool; the stand-in reads the same kernel values from sysfs):
// index, type, MTU, hardware, permanent and broadcast addresses,
// operational state, carrier, bus path and driver.
func ReadLinks(root string) ([]Link, error) {
	dir := filepath.Join(root, "sys", "class", "net")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list network links: %w", err)
	}
	var out []Link
	for _, e := range entries {
		d := filepath.Join(dir, e.Name())
		var s network.LinkStatusSpec
		s.Index = uint32(parseUintOr(readAttr(d, "ifindex"), 0))
		s.LinkIndex = uint32(parseUintOr(readAttr(d, "iflink"), 0))
		s.Type = nethelpers.LinkType(parseUintOr(readAttr(d, "type"), 0))
		s.MTU = uint32(parseUintOr(readAttr(d, "mtu"), 0))
		s.Flags = nethelpers.LinkFlags(parseFlags(readAttr(d, "flags")))
		s.HardwareAddr, _ = parseMAC(readAttr(d, "address"))
		s.BroadcastAddr, _ = parseMAC(readAttr(d, "broadcast"))
		s.PermanentAddr = s.HardwareAddr
		s.OperationalState = parseOperState(readAttr(d, "operstate"))
		s.LinkState = readAttr(d, "carrier") == "1"
		s.Alias = readAttr(d, "ifalias")
		if link, err := os.Readlink(d); err == nil {
			if i := strings.Index(link, "/devices/"); i >= 0 {
				// pci0000:00/0000:00:03.0/virtio0/net/eth0 → up to the device.
				s.BusPath = filepath.Dir(filepath.Dir(link[i+len("/devices/"):]))
			}
		}
		if drv, err := os.Readlink(filepath.Join(d, "device", "driver")); err == nil {
			s.Driver = filepath.Base(drv)
		}
		if _, err := os.Stat(filepath.Join(d, "device")); errors.Is(err, os.ErrNotExist) && s.Type != nethelpers.LinkLoopbck {
			// No device: a virtual link (bridge, bond, veth...).
			s.Kind = "virtual"
		}
		out = append(out, Link{Name: e.Name(), Spec: s})
	}
	slices.SortFunc(out, func(a, b Link) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// parseOperState maps /sys/class/net/<link>/operstate (RFC 2863 names, as
// the kernel prints them) to Talos's OperationalState.
func parseOperState(s string) nethelpers.OperationalState {
	switch s {
	case "up":
		return nethelpers.OperStateUp
	case "down":
		return nethelpers.OperStateDown
	case "testing":
		return nethelpers.OperStateTesting
	case "dormant":
		return nethelpers.OperStateDormant
	case "notpresent":
		return nethelpers.OperStateNotPresent
	case "lowerlayerdown":
		return nethelpers.OperStateLowerLayerDown
	default:
		return nethelpers.OperStateUnknown
	}
}

// ReadSystemInformation is Talos's SystemInformation (SMBIOS type 1, read
// by hardware.SystemInfoController) from the kernel's copy of the same
// SMBIOS fields under root/sys/class/dmi/id.
func ReadSystemInformation(root string) hardware.SystemInformationSpec {
	d := filepath.Join(root, "sys", "class", "dmi", "id")
	return hardware.SystemInformationSpec{
		Manufacturer: readAttr(d, "sys_vendor"),
		ProductName:  readAttr(d, "product_name"),
		Version:      readAttr(d, "product_version"),
		SerialNumber: readAttr(d, "product_serial"),
		UUID:         readAttr(d, "product_uuid"),
		SKUNumber:    readAttr(d, "product_sku"),
	}
}

// readAttr is one sysfs attribute, trimmed; "" when absent.
func readAttr(dir, name string) string {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// parseUint parses a sysfs decimal attribute.
func parseUint(s string) (uint64, error) {
	return strconv.ParseUint(strings.TrimSpace(s), 10, 64)
}

// parseFlags parses a sysfs hexadecimal flags attribute ("0x1003").
func parseFlags(s string) uint64 {
	v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimSpace(s), "0x"), 16, 32)
	if err != nil {
		return 0
	}
	return v
}

func parseUintOr(s string, def uint64) uint64 {
	v, err := parseUint(s)
	if err != nil {
		return def
	}
	return v
}

// parseMAC parses a sysfs link address ("52:54:00:12:34:56"; any length
// of colon-separated hex bytes, as for InfiniBand).
func parseMAC(s string) (nethelpers.HardwareAddr, error) {
	if s == "" {
		return nil, errors.New("empty address")
	}
	parts := strings.Split(s, ":")
	out := make(nethelpers.HardwareAddr, len(parts))
	for i, p := range parts {
		if len(p) != 2 {
			return nil, fmt.Errorf("address %q: byte %d is not two hex digits", s, i)
		}
		v, err := strconv.ParseUint(p, 16, 8)
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", s, err)
		}
		out[i] = byte(v)
	}
	return out, nil
}

func firstOf(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

func isPowerOf2(n uint) bool { return n != 0 && n&(n-1) == 0 }

// String forms for logs.
func (l Link) String() string { return l.Name + " " + net.HardwareAddr(l.Spec.HardwareAddr).String() }
