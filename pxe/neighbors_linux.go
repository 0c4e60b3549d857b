//go:build linux

package pxe

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// KernelNeighbors reads the kernel's neighbour (ARP) table of one interface.
type KernelNeighbors struct {
	iface string
}

// NewKernelNeighbors returns the neighbour view of the named interface.
func NewKernelNeighbors(iface string) (*KernelNeighbors, error) {
	if _, err := netlink.LinkByName(iface); err != nil {
		return nil, fmt.Errorf("neighbour table of %s: %w", iface, err)
	}
	return &KernelNeighbors{iface: iface}, nil
}

// Neighbor implements Neighbors: addr must be inside one of the interface's
// own IPv4 prefixes (else ErrNotOnLink), and the kernel must hold a usable
// entry for it (reachable, stale, delay, probe or permanent).
func (k *KernelNeighbors) Neighbor(addr netip.Addr) (net.HardwareAddr, error) {
	addr = addr.Unmap()
	link, err := netlink.LinkByName(k.iface)
	if err != nil {
		return nil, fmt.Errorf("neighbour table of %s: %w", k.iface, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", k.iface, err)
	}
	onLink := false
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && p.Contains(addr) {
			onLink = true
			break
		}
	}
	if !onLink {
		return nil, ErrNotOnLink
	}
	neighs, err := netlink.NeighList(link.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("neighbour table of %s: %w", k.iface, err)
	}
	const usable = unix.NUD_REACHABLE | unix.NUD_STALE | unix.NUD_DELAY | unix.NUD_PROBE | unix.NUD_PERMANENT
	for _, n := range neighs {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || ip.Unmap() != addr {
			continue
		}
		if n.State&usable == 0 || len(n.HardwareAddr) == 0 {
			return nil, ErrNoNeighbor
		}
		return append(net.HardwareAddr(nil), n.HardwareAddr...), nil
	}
	return nil, ErrNoNeighbor
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones).Masked(), true
}
