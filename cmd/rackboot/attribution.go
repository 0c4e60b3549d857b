package main

import (
	"errors"
	"net"
	"net/netip"
	"sync"

	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// attribution decides which machine sent an event or a kernel log line,
// from the packet's source address. An address is believed to be a
// machine's only when the machine was seen on it: the kernel's neighbour
// entry for the address holds one of the machine's MACs (from the rack
// file, from a boot-script request that passed the owner check, or from
// the NIC that fetched its config), or rackboot's own DHCP lease for the
// address is the machine's, or the address fetched the machine's config
// with a token and is still held by the same NIC. A static address in the
// rack file alone proves nothing: anyone can take it.
type attribution struct {
	neigh       pxe.Neighbors
	rackMAC     func(mac string) (string, bool) // from the rack file
	leaseHolder func(netip.Addr) (net.HardwareAddr, bool)
	tokens      func() *pxe.Tokens // set once the server exists

	mu       sync.Mutex
	verified map[string]string // MAC → machine, from owner-checked script requests
}

func newAttribution(r *profiles.Rack, neigh pxe.Neighbors) *attribution {
	return &attribution{neigh: neigh, rackMAC: rackMACNames(r), verified: map[string]string{},
		tokens: func() *pxe.Tokens { return nil }}
}

// saw wraps a recorder: a boot script served to a named machine (only after
// the owner check) makes its MAC the machine's.
func (a *attribution) saw(next pxe.Recorder) pxe.Recorder {
	return pxe.RecorderFunc(func(e pxe.Event) {
		if e.Stage == pxe.StageScript && e.Name != "" && len(e.MAC) > 0 {
			a.mu.Lock()
			a.verified[e.MAC.String()] = e.Name
			a.mu.Unlock()
		}
		next.Record(e)
	})
}

// byMAC names the machine that owns a NIC.
func (a *attribution) byMAC(hw net.HardwareAddr) (string, bool) {
	if n, ok := a.rackMAC(hw.String()); ok {
		return n, true
	}
	a.mu.Lock()
	n, ok := a.verified[hw.String()]
	a.mu.Unlock()
	if ok {
		return n, true
	}
	if tk := a.tokens(); tk != nil {
		return tk.PinnedMAC(hw)
	}
	return "", false
}

// resolve implements talosevents.Resolver.
func (a *attribution) resolve(addr netip.Addr) (string, bool) {
	hw, err := a.neigh.Neighbor(addr)
	if err == nil {
		if n, ok := a.byMAC(hw); ok {
			return n, true
		}
	}
	if a.leaseHolder != nil {
		if mac, ok := a.leaseHolder(addr); ok && (err != nil || sameHW(mac, hw)) {
			if n, ok := a.byMAC(mac); ok {
				return n, true
			}
		}
	}
	if tk := a.tokens(); tk != nil {
		if n, pinned, ok := tk.Pinned(addr); ok {
			switch {
			case len(pinned) > 0 && err == nil && sameHW(pinned, hw):
				return n, true // the NIC that fetched the config
			case len(pinned) == 0 && errors.Is(err, pxe.ErrNotOnLink):
				return n, true // fetched through a router, still from there
			}
		}
	}
	return "", false
}

func sameHW(a, b net.HardwareAddr) bool {
	return len(a) > 0 && a.String() == b.String()
}
