package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/dotfile/rackboot/imager"
	"github.com/dotfile/rackboot/pxe"
)

// standinPrefix is the asset ID prefix of the stand-in boot image.
const standinPrefix = "standin/"

// standinArm64 is the subdirectory of the stand-in directory holding the
// arm64 stand-in (`make standin-arm64`): its asset IDs are
// standin/arm64/vmlinuz and standin/arm64/initramfs.cpio.gz.
const standinArm64 = "arm64"

// bootAssets combines the Talos asset cache with an optional stand-in boot
// image directory. The resolver prefers real Talos assets; it falls back to
// the stand-in only when the cache lacks the machine's set and a stand-in
// was given (for arm64, when the stand-in directory has an arm64
// subdirectory), and otherwise says which `rackboot assets pull` is missing.
func bootAssets(cache *imager.Cache, standinDir string) (pxe.Assets, func(version, schematic, arch string) (string, string, error), error) {
	var kernel, initrd, kernel64, initrd64 string
	if standinDir != "" {
		var err error
		if kernel, initrd, err = findStandin(standinDir); err != nil {
			return nil, nil, err
		}
		// Optional: a rack without arm64 machines needs none.
		kernel64, initrd64, _ = findStandin(filepath.Join(standinDir, standinArm64))
	}
	resolve := func(version, schematic, arch string) (string, string, error) {
		err := cache.Has(version, schematic, arch)
		if err == nil {
			return cache.Kernel(version, schematic, arch), cache.Initramfs(version, schematic, arch), nil
		}
		if standinDir != "" && arch == "amd64" {
			return standinPrefix + kernel, standinPrefix + initrd, nil
		}
		if standinDir != "" && arch == "arm64" && kernel64 != "" {
			p := standinPrefix + standinArm64 + "/"
			return p + kernel64, p + initrd64, nil
		}
		return "", "", err
	}
	return assetMux{cache: cache, standinDir: standinDir}, resolve, nil
}

// findStandin returns the kernel and initramfs file names in dir.
func findStandin(dir string) (kernel, initrd string, err error) {
	if _, err := os.Stat(filepath.Join(dir, "vmlinuz")); err != nil {
		return "", "", fmt.Errorf("stand-in boot image: no vmlinuz in %s (run `make standin`): %w", dir, err)
	}
	for _, name := range []string{"initramfs.cpio.gz", "initramfs.cpio", "initramfs.img"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return "vmlinuz", name, nil
		}
	}
	return "", "", fmt.Errorf("stand-in boot image: no initramfs.cpio[.gz] in %s (run `make standin`)", dir)
}

// assetMux serves stand-in IDs from the stand-in directory and every other
// ID from the cache.
type assetMux struct {
	cache      *imager.Cache
	standinDir string
}

func (m assetMux) Open(id string) (pxe.ReadSeekCloser, error) {
	if name, ok := strings.CutPrefix(id, standinPrefix); ok && m.standinDir != "" {
		dir := m.standinDir
		if n, ok := strings.CutPrefix(name, standinArm64+"/"); ok {
			dir, name = filepath.Join(dir, standinArm64), n
		}
		if name != "vmlinuz" && !strings.HasPrefix(name, "initramfs.") || strings.ContainsAny(name, "/\\") {
			return nil, fmt.Errorf("stand-in asset %q: %w", id, os.ErrNotExist)
		}
		return os.Open(filepath.Join(dir, name))
	}
	return m.cache.Open(id)
}

// iface is what chooseInterface knows of a network interface.
type iface struct {
	name  string
	up    bool
	loop  bool
	addrs []netip.Prefix
}

// chooseInterface picks the interface facing the rack and the address
// machines reach rackboot on.
func chooseInterface(name, serverIP string, subnet netip.Prefix) (string, netip.Addr, error) {
	sys, err := net.Interfaces()
	if err != nil {
		return "", netip.Addr{}, fmt.Errorf("list network interfaces: %w", err)
	}
	var all []iface
	for _, s := range sys {
		i := iface{name: s.Name, up: s.Flags&net.FlagUp != 0, loop: s.Flags&net.FlagLoopback != 0}
		addrs, err := s.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					ones, _ := n.Mask.Size()
					i.addrs = append(i.addrs, netip.PrefixFrom(ip.Unmap(), ones))
				}
			}
		}
		all = append(all, i)
	}
	var want netip.Addr
	if serverIP != "" {
		if want, err = netip.ParseAddr(serverIP); err != nil {
			return "", netip.Addr{}, fmt.Errorf("--server-ip: %w", err)
		}
	}
	return pickInterface(all, name, want, subnet)
}

// pickInterface is chooseInterface's decision, without the system.
func pickInterface(all []iface, name string, want netip.Addr, subnet netip.Prefix) (string, netip.Addr, error) {
	v4 := func(i iface) []netip.Addr {
		var out []netip.Addr
		for _, p := range i.addrs {
			if p.Addr().Is4() {
				out = append(out, p.Addr())
			}
		}
		return out
	}
	if name != "" {
		for _, i := range all {
			if i.name != name {
				continue
			}
			addrs := v4(i)
			if want.IsValid() {
				return name, want, nil
			}
			for _, a := range addrs {
				if subnet.Contains(a) {
					return name, a, nil
				}
			}
			if len(addrs) > 0 {
				return name, addrs[0], nil
			}
			return "", netip.Addr{}, fmt.Errorf("interface %s has no IPv4 address: give it one in %s, or pass --server-ip", name, subnet)
		}
		return "", netip.Addr{}, fmt.Errorf("no network interface named %q", name)
	}
	var inSubnet, lan []string
	addrOf := map[string]netip.Addr{}
	for _, i := range all {
		if !i.up || i.loop {
			continue
		}
		for _, a := range v4(i) {
			if want.IsValid() && a == want {
				return i.name, a, nil
			}
			if subnet.Contains(a) {
				inSubnet = append(inSubnet, i.name)
				addrOf[i.name] = a
			} else if a.IsPrivate() {
				lan = append(lan, i.name)
				if _, ok := addrOf[i.name]; !ok {
					addrOf[i.name] = a
				}
			}
		}
	}
	sort.Strings(inSubnet)
	sort.Strings(lan)
	switch {
	case len(inSubnet) == 1:
		return inSubnet[0], addrOf[inSubnet[0]], nil
	case len(inSubnet) > 1:
		return "", netip.Addr{}, fmt.Errorf("several interfaces are in the rack's subnet %s (%s): pick one with --interface", subnet, strings.Join(inSubnet, ", "))
	case want.IsValid():
		return "", netip.Addr{}, fmt.Errorf("no interface has the address %s given by --server-ip", want)
	case len(lan) == 1:
		return lan[0], addrOf[lan[0]], nil
	case len(lan) == 0:
		return "", netip.Addr{}, errors.New("no network interface is up with an IPv4 address: plug the laptop into the rack's switch")
	default:
		return "", netip.Addr{}, fmt.Errorf("no interface is in the rack's subnet %s and several could face the rack (%s): pick one with --interface", subnet, strings.Join(lan, ", "))
	}
}
