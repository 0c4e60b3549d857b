package pxe

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// Who may have a boot script with a config token.
//
// Anyone on a shared LAN can ask /ipxe?mac=<a rack machine's MAC>: MACs are
// not secret. So a script with a token is served only when the request comes
// from the NIC that owns the MAC, as the server sees it at layer 2: the
// kernel's neighbour entry for the request's source address on the rack
// interface must hold that MAC (and, in full-DHCP mode, rackboot's own lease
// for that MAC must be that address). A request that came through a router
// (a DHCP relay: no layer-2 view) fails closed. Anything else gets the same
// script as an unknown machine.

// Neighbors tells which link-layer address holds an IP address on the
// rack's Ethernet segment.
type Neighbors interface {
	// Neighbor returns the MAC the kernel has for addr on the rack
	// interface. ErrNotOnLink: addr is not on the rack's segment (the
	// request was routed); ErrNoNeighbor: no complete entry.
	Neighbor(addr netip.Addr) (net.HardwareAddr, error)
}

// Neighbor lookup errors.
var (
	ErrNotOnLink  = errors.New("not on the rack's network segment")
	ErrNoNeighbor = errors.New("no link-layer address known for it")
)

// OwnerCheck is what CheckOwner decides from.
type OwnerCheck struct {
	Claimed  net.HardwareAddr   // the MAC the request names
	Allowed  []net.HardwareAddr // the machine's MACs in the rack file (empty: any)
	Addr     netip.Addr         // the request's source address
	Neighbor net.HardwareAddr   // what Neighbors said for Addr
	NeighErr error              // or why it could not say
	// FullDHCP: rackboot hands out the addresses, so its lease for the
	// claimed MAC must be Addr.
	FullDHCP   bool
	Lease      netip.Addr
	LeaseFound bool
}

// DeniedError says why a script request did not get a token.
type DeniedError struct{ Reason string }

func (e *DeniedError) Error() string { return "config withheld: " + e.Reason }

// CheckOwner decides whether a boot-script request comes from the NIC that
// owns the MAC it names; it returns nil or a *DeniedError.
func CheckOwner(c OwnerCheck) error {
	deny := func(format string, a ...any) error { return &DeniedError{Reason: fmt.Sprintf(format, a...)} }
	if len(c.Allowed) > 0 && !slices.ContainsFunc(c.Allowed, func(m net.HardwareAddr) bool { return sameMAC(m, c.Claimed) }) {
		return deny("MAC %s is not one of this machine's MACs in the rack file", c.Claimed)
	}
	switch {
	case errors.Is(c.NeighErr, ErrNotOnLink):
		return deny("the request from %s came through a router or relay, not from the rack's own network segment, so its MAC cannot be checked; run rackboot on the rack's segment", c.Addr)
	case c.NeighErr != nil:
		return deny("cannot tell which NIC holds %s: %v", c.Addr, c.NeighErr)
	case len(c.Neighbor) == 0:
		return deny("no link-layer address known for %s", c.Addr)
	case !sameMAC(c.Neighbor, c.Claimed):
		return deny("the request names MAC %s but came from %s at MAC %s", c.Claimed, c.Addr, c.Neighbor)
	}
	if c.FullDHCP {
		if !c.LeaseFound {
			return deny("MAC %s has no DHCP lease from rackboot", c.Claimed)
		}
		if c.Lease != c.Addr.Unmap() {
			return deny("MAC %s leased %s from rackboot but asked from %s", c.Claimed, c.Lease, c.Addr)
		}
	}
	return nil
}

func sameMAC(a, b net.HardwareAddr) bool {
	return len(a) > 0 && len(a) == len(b) && string(a) == string(b)
}

// StaticNeighbors is a fixed neighbour table (for callers without a kernel
// view, and for tests); addresses not in it are ErrNotOnLink.
type StaticNeighbors map[netip.Addr]net.HardwareAddr

// Neighbor implements Neighbors.
func (s StaticNeighbors) Neighbor(addr netip.Addr) (net.HardwareAddr, error) {
	hw, ok := s[addr.Unmap()]
	if !ok {
		return nil, ErrNotOnLink
	}
	if len(hw) == 0 {
		return nil, ErrNoNeighbor
	}
	return hw, nil
}
