package pxe

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"sort"
	"time"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

// Lease is one address given to one MAC in full DHCP mode.
type Lease struct {
	MAC      string     `json:"mac"` // lower case, colon-separated
	Addr     netip.Addr `json:"addr"`
	Expires  time.Time  `json:"expires"`
	Hostname string     `json:"hostname,omitempty"` // option 12, for humans
}

// leaseFile is the on-disk form of the lease table.
type leaseFile struct {
	Version int     `json:"version"`
	Leases  []Lease `json:"leases"`
}

const leaseFileVersion = 1

// hold is an address offered to a MAC and kept for it for a short while,
// so two clients discovering at once don't get the same offer. Holds are
// not persisted: a client whose offer is lost in a restart discovers again.
type hold struct {
	addr  netip.Addr
	until time.Time
}

// Leases is the full-mode lease table: bound leases persisted as JSON
// (written atomically on every change, loaded at start, so a machine keeps
// its address across restarts), plus in-memory offers and declined
// addresses. An expired lease stays on record so the same MAC gets the same
// address back, until the address is needed by another MAC.
//
// Leases is not safe for concurrent use; the DHCP server serializes access.
type Leases struct {
	path     string // "" = memory only
	now      func() time.Time
	byMAC    map[string]Lease
	byAddr   map[netip.Addr]string
	holds    map[string]hold
	declined map[netip.Addr]time.Time // address → usable again after
}

// OpenLeases loads the lease table from path (a missing file is an empty
// table; "" keeps leases in memory only). A file that cannot be read or
// parsed is an error naming it: leases are never silently reset.
func OpenLeases(path string, now func() time.Time) (*Leases, error) {
	if now == nil {
		now = time.Now
	}
	l := &Leases{
		path:     path,
		now:      now,
		byMAC:    map[string]Lease{},
		byAddr:   map[netip.Addr]string{},
		holds:    map[string]hold{},
		declined: map[netip.Addr]time.Time{},
	}
	if path == "" {
		return l, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return l, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read DHCP leases: %w", err)
	}
	if err := l.load(data); err != nil {
		return nil, fmt.Errorf("DHCP leases file %s is corrupt (fix or move it away; it is not reset automatically): %w", path, err)
	}
	return l, nil
}

func (l *Leases) load(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f leaseFile
	if err := dec.Decode(&f); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON document")
	}
	if f.Version != leaseFileVersion {
		return fmt.Errorf("version %d, want %d", f.Version, leaseFileVersion)
	}
	for i, le := range f.Leases {
		mac, err := net.ParseMAC(le.MAC)
		if err != nil || len(mac) != 6 {
			return fmt.Errorf("lease %d: bad MAC %q", i, le.MAC)
		}
		if !le.Addr.Is4() {
			return fmt.Errorf("lease %d (%s): address %v is not IPv4", i, le.MAC, le.Addr)
		}
		le.MAC = mac.String()
		if _, dup := l.byMAC[le.MAC]; dup {
			return fmt.Errorf("lease %d: MAC %s listed twice", i, le.MAC)
		}
		if other, dup := l.byAddr[le.Addr]; dup {
			return fmt.Errorf("lease %d: address %s given to both %s and %s", i, le.Addr, other, le.MAC)
		}
		l.byMAC[le.MAC] = le
		l.byAddr[le.Addr] = le.MAC
	}
	return nil
}

// save writes the table atomically.
func (l *Leases) save() error {
	if l.path == "" {
		return nil
	}
	f := leaseFile{Version: leaseFileVersion, Leases: l.All()}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encode DHCP leases: %w", err)
	}
	if err := atomicfile.Write(l.path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("save DHCP leases: %w", err)
	}
	return nil
}

// All returns the leases on record (active and expired), by address.
func (l *Leases) All() []Lease {
	out := make([]Lease, 0, len(l.byMAC))
	for _, le := range l.byMAC {
		out = append(out, le)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out
}

// Get returns the lease on record for mac, active or expired.
func (l *Leases) Get(mac net.HardwareAddr) (Lease, bool) {
	le, ok := l.byMAC[mac.String()]
	return le, ok
}

// Active reports whether the lease has not expired.
func (l *Leases) Active(le Lease) bool { return l.now().Before(le.Expires) }

// Held returns the address offered to mac, if the offer still stands.
func (l *Leases) Held(mac net.HardwareAddr) (netip.Addr, bool) {
	h, ok := l.holds[mac.String()]
	if !ok || !l.now().Before(h.until) {
		return netip.Addr{}, false
	}
	return h.addr, true
}

// Hold keeps addr for mac until the offer runs out.
func (l *Leases) Hold(mac net.HardwareAddr, addr netip.Addr, d time.Duration) {
	l.holds[mac.String()] = hold{addr: addr, until: l.now().Add(d)}
}

// DropHold forgets the offer to mac (it chose another server).
func (l *Leases) DropHold(mac net.HardwareAddr) { delete(l.holds, mac.String()) }

// InUse reports whether addr is taken by a MAC other than mac: an active
// lease, a standing offer, or a recent DECLINE (someone else answers on it).
func (l *Leases) InUse(addr netip.Addr, mac net.HardwareAddr) bool {
	now := l.now()
	if until, ok := l.declined[addr]; ok {
		if now.Before(until) {
			return true
		}
		delete(l.declined, addr)
	}
	m := mac.String()
	if owner, ok := l.byAddr[addr]; ok && owner != m && now.Before(l.byMAC[owner].Expires) {
		return true
	}
	for hm, h := range l.holds {
		if hm != m && h.addr == addr && now.Before(h.until) {
			return true
		}
	}
	return false
}

// Known reports whether addr has ever been leased (expired leases count),
// and until when, so an allocator can prefer never-used addresses.
func (l *Leases) Known(addr netip.Addr) (time.Time, bool) {
	owner, ok := l.byAddr[addr]
	if !ok {
		return time.Time{}, false
	}
	return l.byMAC[owner].Expires, true
}

// Bind records that mac has addr for d and saves the table. An older
// lease of the same MAC, or another MAC's expired lease on addr, is
// replaced. On a save error the table is left as it was.
func (l *Leases) Bind(mac net.HardwareAddr, addr netip.Addr, d time.Duration, hostname string) (Lease, error) {
	m := mac.String()
	if owner, ok := l.byAddr[addr]; ok && owner != m && l.Active(l.byMAC[owner]) {
		return Lease{}, fmt.Errorf("bind %s to %s: leased to %s", addr, m, owner)
	}
	oldMine, hadMine := l.byMAC[m]
	oldOwner, hadOwner := l.byAddr[addr]
	var oldOther Lease
	if hadOwner && oldOwner != m {
		oldOther = l.byMAC[oldOwner]
		delete(l.byMAC, oldOwner)
	}
	if hadMine {
		delete(l.byAddr, oldMine.Addr)
	}
	le := Lease{MAC: m, Addr: addr, Expires: l.now().Add(d), Hostname: hostname}
	l.byMAC[m] = le
	l.byAddr[addr] = m
	if err := l.save(); err != nil {
		// Undo, so memory and disk agree.
		delete(l.byAddr, addr)
		delete(l.byMAC, m)
		if hadMine {
			l.byMAC[m] = oldMine
			l.byAddr[oldMine.Addr] = m
		}
		if hadOwner && oldOwner != m {
			l.byMAC[oldOwner] = oldOther
			l.byAddr[addr] = oldOwner
		}
		return Lease{}, err
	}
	delete(l.holds, m)
	return le, nil
}

// Release ends mac's lease on addr now (RELEASE). The record stays, so the
// MAC gets the same address next time if it is still free.
func (l *Leases) Release(mac net.HardwareAddr, addr netip.Addr) error {
	le, ok := l.byMAC[mac.String()]
	if !ok || le.Addr != addr {
		return fmt.Errorf("release %s by %s: no such lease", addr, mac)
	}
	prev := le.Expires
	le.Expires = l.now()
	l.byMAC[le.MAC] = le
	if err := l.save(); err != nil {
		le.Expires = prev
		l.byMAC[le.MAC] = le
		return err
	}
	return nil
}

// Decline marks addr unusable until hold has passed (a client found it in
// use: DECLINE) and drops any lease on it.
func (l *Leases) Decline(addr netip.Addr, hold time.Duration) error {
	l.declined[addr] = l.now().Add(hold)
	owner, ok := l.byAddr[addr]
	if !ok {
		return nil
	}
	le := l.byMAC[owner]
	delete(l.byAddr, addr)
	delete(l.byMAC, owner)
	if err := l.save(); err != nil {
		l.byAddr[addr] = owner
		l.byMAC[owner] = le
		return err
	}
	return nil
}
