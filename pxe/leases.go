package pxe

import (
	"bytes"
	"container/heap"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
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
// (loaded at start, so a machine keeps its address across restarts), plus
// in-memory offers ("holds") and declined addresses. An expired lease stays
// on record so the same MAC gets the same address back, until the address
// is needed by another MAC.
//
// Lookups are O(1): leases are indexed by MAC and by address, holds by MAC
// and by address. Pick finds a free address in O(1) amortized (see Pick).
//
// # Durability: group commit of the whole table
//
// A change (Bind, Release, Decline) is made in memory and then committed:
// the whole table is written atomically (temp file, fsync, rename, fsync of
// the directory). Changes made while a write is in flight are put on disk
// together by the next write, so a burst of REQUESTs costs a few writes,
// not one per ACK; the caller waits for the write that covers its change
// without holding any lock, so lookups and DISCOVERs go on during fsync.
// If a write fails, memory goes back to what the file holds and every
// change not on disk fails: no ACK is ever sent for a lease that is not on
// disk, and memory and disk agree.
//
// Why not an append-only log of lease records? It writes less per commit,
// but needs record framing, a rule for a torn last record after a crash
// (corruption, or an un-ACKed lease?) and compaction; rewriting the table
// keeps the file format, its strict corruption checks and one code path,
// and with group commit the number of writes follows the number of fsync
// rounds, not the number of clients. At rackboot's scale (a few thousand
// leases, ~130 bytes each) a rewrite is well under a millisecond of CPU.
//
// Leases is safe for concurrent use. Callers must not hold their own locks
// while waiting for a commit if the same locks guard lookups they want to
// keep fast (the DHCP server waits outside its lock).
type Leases struct {
	path  string     // "" = memory only (unless store is set)
	store LeaseStore // nil: the file at path
	now   func() time.Time
	// writeFile puts the encoded table on disk (atomicfile.Write); tests
	// replace it to hold a write in flight or make it fail.
	writeFile func(path string, data []byte) error

	mu       sync.Mutex
	byMAC    map[string]Lease
	byAddr   map[netip.Addr]string
	holds    map[string]hold          // MAC → its offer
	heldBy   map[netip.Addr]string    // address → the MAC it is offered to
	declined map[netip.Addr]time.Time // address → usable again after
	expiries expiryHeap               // lease records by expiry (stale entries skipped)
	wakes    wakeHeap                 // when holds and declines end
	cur      cursor                   // where Pick's search resumes
	freed    addrHeap                 // addresses below the cursor that became free

	durable []Lease    // the table as the file holds it
	pending *batch     // changes not yet being written; nil = none
	writing bool       // a write is in flight
	written *sync.Cond // on mu: a write ended
}

// LeaseStore keeps the encoded lease table (the content of the leases
// file, EncodeLeases) somewhere other than a local file, shared by every
// rackboot that may answer DHCP: kubestate keeps it in Kubernetes. Only one
// of them answers DHCP at a time (the leader), but a leader may lose its
// place while a write is in flight, so a store refuses a write over a table
// it has not seen.
type LeaseStore interface {
	// Load returns the stored table, nil when there is none yet.
	Load() ([]byte, error)
	// Save replaces the stored table. When someone else changed it since
	// this process last loaded or saved it, Save changes nothing and
	// returns an error wrapping ErrLeasesChanged; Leases then loads the
	// table again (the change that was being saved fails).
	Save(data []byte) error
}

// ErrLeasesChanged is returned (wrapped) by a LeaseStore's Save when another
// server wrote the lease table since this one last read it.
var ErrLeasesChanged = errors.New("the DHCP lease table was changed by another rackboot")

// batch is the set of changes one write puts on disk. Guarded by Leases.mu.
type batch struct {
	done bool
	err  error
}

// OpenLeases loads the lease table from path (a missing file is an empty
// table; "" keeps leases in memory only). A file that cannot be read or
// parsed is an error naming it: leases are never silently reset.
func OpenLeases(path string, now func() time.Time) (*Leases, error) {
	l := newLeases(path, now)
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
	if err := l.loadLocked(data, path); err != nil {
		return nil, err
	}
	return l, nil
}

// OpenLeaseStore loads the lease table from store and keeps it there: every
// change is saved with store.Save before it counts (as with a file).
func OpenLeaseStore(store LeaseStore, now func() time.Time) (*Leases, error) {
	if store == nil {
		return nil, errors.New("open DHCP leases: no lease store")
	}
	l := newLeases("", now)
	l.store = store
	if err := l.Reload(); err != nil {
		return nil, err
	}
	return l, nil
}

// Reload replaces the table in memory with the stored one (a server that
// becomes the DHCP leader calls it: the previous leader may have bound
// leases since). Offers and declines in memory are kept. It does nothing
// for a table kept in memory only.
func (l *Leases) Reload() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.writing {
		l.written.Wait()
	}
	return l.reloadLocked()
}

// reloadLocked reads the table from its store or file.
func (l *Leases) reloadLocked() error {
	var data []byte
	var err error
	where := l.path
	switch {
	case l.store != nil:
		where = "the lease store"
		data, err = l.store.Load()
	case l.path != "":
		data, err = os.ReadFile(l.path)
		if errors.Is(err, fs.ErrNotExist) {
			data, err = nil, nil
		}
	default:
		return nil
	}
	if err != nil {
		return fmt.Errorf("read DHCP leases: %w", err)
	}
	if data == nil {
		l.restoreLocked(nil)
		l.durable = nil
		return nil
	}
	return l.loadLocked(data, where)
}

// loadLocked makes the table the parsed data, naming where it came from
// in an error.
func (l *Leases) loadLocked(data []byte, where string) error {
	leases, err := parseLeases(data)
	if err != nil {
		return fmt.Errorf("DHCP leases in %s are corrupt (fix or move them away; they are not reset automatically): %w", where, err)
	}
	l.restoreLocked(leases)
	l.durable = leases
	return nil
}

// newLeases is an empty table.
func newLeases(path string, now func() time.Time) *Leases {
	if now == nil {
		now = time.Now
	}
	l := &Leases{
		path:      path,
		now:       now,
		writeFile: func(path string, data []byte) error { return atomicfile.Write(path, data, 0o600) },
		byMAC:     map[string]Lease{},
		byAddr:    map[netip.Addr]string{},
		holds:     map[string]hold{},
		heldBy:    map[netip.Addr]string{},
		declined:  map[netip.Addr]time.Time{},
	}
	l.written = sync.NewCond(&l.mu)
	return l
}

// ParseLeases decodes and checks an encoded lease table (the leases file's
// content), as OpenLeases does.
func ParseLeases(data []byte) ([]Lease, error) { return parseLeases(data) }

// EncodeLeases is the leases file's content for leases (sorted by address
// in place).
func EncodeLeases(leases []Lease) ([]byte, error) { return encodeLeases(leases) }

// parseLeases decodes and checks a lease file: known fields only, version
// 1, Ethernet MACs, IPv4 addresses, no MAC or address twice. MACs come
// back in canonical form.
func parseLeases(data []byte) ([]Lease, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f leaseFile
	if err := dec.Decode(&f); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON document")
	}
	if f.Version != leaseFileVersion {
		return nil, fmt.Errorf("version %d, want %d", f.Version, leaseFileVersion)
	}
	macs := make(map[string]bool, len(f.Leases))
	addrs := make(map[netip.Addr]string, len(f.Leases))
	for i, le := range f.Leases {
		mac, err := net.ParseMAC(le.MAC)
		if err != nil || len(mac) != 6 {
			return nil, fmt.Errorf("lease %d: bad MAC %q", i, le.MAC)
		}
		if !le.Addr.Is4() {
			return nil, fmt.Errorf("lease %d (%s): address %v is not IPv4", i, le.MAC, le.Addr)
		}
		le.MAC = mac.String()
		if macs[le.MAC] {
			return nil, fmt.Errorf("lease %d: MAC %s listed twice", i, le.MAC)
		}
		if other, dup := addrs[le.Addr]; dup {
			return nil, fmt.Errorf("lease %d: address %s given to both %s and %s", i, le.Addr, other, le.MAC)
		}
		macs[le.MAC] = true
		addrs[le.Addr] = le.MAC
		f.Leases[i] = le
	}
	return f.Leases, nil
}

// restoreLocked makes the table exactly leases (at start, and after a
// failed write) and rebuilds the indexes that depend on it.
func (l *Leases) restoreLocked(leases []Lease) {
	clear(l.byMAC)
	clear(l.byAddr)
	l.expiries = l.expiries[:0]
	for _, le := range leases {
		l.byMAC[le.MAC] = le
		l.byAddr[le.Addr] = le.MAC
		l.expiries = append(l.expiries, expiry{at: le.Expires, addr: le.Addr})
	}
	heap.Init(&l.expiries)
	l.cur = cursor{}
	l.freed = l.freed[:0]
}

// encodeLeases is the file content for leases, sorted by address.
func encodeLeases(leases []Lease) ([]byte, error) {
	slices.SortFunc(leases, func(a, b Lease) int { return a.Addr.Compare(b.Addr) })
	data, err := json.MarshalIndent(leaseFile{Version: leaseFileVersion, Leases: leases}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(data, '\n'), nil
}

// changedLocked returns the batch a change just made belongs to, nil when
// nothing is persisted.
func (l *Leases) changedLocked() *batch {
	if l.path == "" && l.store == nil {
		return nil
	}
	if l.pending == nil {
		l.pending = &batch{}
	}
	return l.pending
}

// commit waits until b is on disk, writing it itself when no write is in
// flight (the waiter that finds the disk idle writes for everyone who
// changed the table since the last write). It returns the write's error;
// then b's changes have been undone.
func (l *Leases) commit(b *batch) error {
	if b == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for !b.done {
		if l.writing {
			l.written.Wait()
			continue
		}
		l.writeLocked()
	}
	return b.err
}

// writeLocked writes the table as it is now, with l.mu released during
// encoding and I/O.
func (l *Leases) writeLocked() {
	b := l.pending
	l.pending = nil
	snap := make([]Lease, 0, len(l.byMAC))
	for _, le := range l.byMAC {
		snap = append(snap, le)
	}
	l.writing = true
	l.mu.Unlock()
	data, err := encodeLeases(snap)
	switch {
	case err != nil:
		err = fmt.Errorf("encode DHCP leases: %w", err)
	case l.store != nil:
		if err = l.store.Save(data); err != nil {
			err = fmt.Errorf("save DHCP leases: %w", err)
		}
	default:
		if err = l.writeFile(l.path, data); err != nil {
			err = fmt.Errorf("save DHCP leases: %w", err)
		}
	}
	l.mu.Lock()
	l.writing = false
	if err == nil {
		l.durable = snap
	} else {
		// Back to what the file holds. Changes made while this write was
		// in flight were built on the lost ones and are undone with them.
		l.restoreLocked(l.durable)
		if errors.Is(err, ErrLeasesChanged) {
			// Another server wrote the table: take its version.
			if rerr := l.reloadLocked(); rerr != nil {
				err = fmt.Errorf("%w; then: %w", err, rerr)
			}
		}
		if l.pending != nil {
			l.pending.done, l.pending.err = true, err
			l.pending = nil
		}
	}
	if b != nil {
		b.done, b.err = true, err
	}
	l.written.Broadcast()
}

// All returns the leases on record (active and expired), by address.
func (l *Leases) All() []Lease {
	l.mu.Lock()
	out := make([]Lease, 0, len(l.byMAC))
	for _, le := range l.byMAC {
		out = append(out, le)
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b Lease) int { return a.Addr.Compare(b.Addr) })
	return out
}

// Get returns the lease on record for mac, active or expired.
func (l *Leases) Get(mac net.HardwareAddr) (Lease, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	le, ok := l.byMAC[mac.String()]
	return le, ok
}

// Lookup returns the lease on record for addr, active or expired.
func (l *Leases) Lookup(addr netip.Addr) (Lease, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	owner, ok := l.byAddr[addr]
	if !ok {
		return Lease{}, false
	}
	return l.byMAC[owner], true
}

// Active reports whether the lease has not expired.
func (l *Leases) Active(le Lease) bool { return l.now().Before(le.Expires) }

// Held returns the address offered to mac, if the offer still stands.
func (l *Leases) Held(mac net.HardwareAddr) (netip.Addr, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	h, ok := l.holds[mac.String()]
	if !ok || !l.now().Before(h.until) {
		return netip.Addr{}, false
	}
	return h.addr, true
}

// Hold keeps addr for mac until the offer runs out; it replaces mac's
// earlier offer. An address is held for one MAC at a time: holding an
// address another MAC holds takes it over (the server never does that: it
// offers only addresses InUse says are free).
func (l *Leases) Hold(mac net.HardwareAddr, addr netip.Addr, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.wakeLocked(now)
	m := mac.String()
	if old, ok := l.holds[m]; ok && old.addr != addr {
		l.dropHoldLocked(m)
	}
	h := hold{addr: addr, until: now.Add(d)}
	l.holds[m] = h
	l.heldBy[addr] = m
	heap.Push(&l.wakes, wake{at: h.until, addr: addr, mac: m})
}

// DropHold forgets the offer to mac (it chose another server).
func (l *Leases) DropHold(mac net.HardwareAddr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropHoldLocked(mac.String())
}

func (l *Leases) dropHoldLocked(m string) {
	h, ok := l.holds[m]
	if !ok {
		return
	}
	delete(l.holds, m)
	if l.heldBy[h.addr] == m {
		delete(l.heldBy, h.addr)
	}
	l.freedLocked(h.addr)
}

// InUse reports whether addr is taken by a MAC other than mac: an active
// lease, a standing offer, or a recent DECLINE (someone else answers on it).
func (l *Leases) InUse(addr netip.Addr, mac net.HardwareAddr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inUseLocked(addr, mac.String(), l.now())
}

func (l *Leases) inUseLocked(addr netip.Addr, m string, now time.Time) bool {
	if until, ok := l.declined[addr]; ok && now.Before(until) {
		return true
	}
	if owner, ok := l.byAddr[addr]; ok && owner != m && now.Before(l.byMAC[owner].Expires) {
		return true
	}
	if hm, ok := l.heldBy[addr]; ok && hm != m {
		if h := l.holds[hm]; h.addr == addr && now.Before(h.until) {
			return true
		}
	}
	return false
}

// Known reports whether addr has ever been leased (expired leases count),
// and until when, so an allocator can prefer never-used addresses.
func (l *Leases) Known(addr netip.Addr) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	owner, ok := l.byAddr[addr]
	if !ok {
		return time.Time{}, false
	}
	return l.byMAC[owner].Expires, true
}

// Pick returns an address of [start, end] to offer mac when it has none
// of its own: the lowest address with no lease record that is free for
// mac (see InUse) and usable, else the usable free one whose lease expired
// longest ago; false when there is none. usable holds the caller's fixed
// rules (in the subnet, not the server's, not reserved): it must not call
// into l, and must answer the same for an address every time.
//
// The search for a never-leased address costs O(1) amortized: a cursor
// remembers where it stopped (every address below it has a record or is
// taken), and an address below the cursor that becomes free again (its
// record deleted, its offer or DECLINE over) goes into a min-heap. The
// fallback to expired leases pops a heap ordered by expiry.
func (l *Leases) Pick(start, end netip.Addr, mac net.HardwareAddr, usable func(netip.Addr) bool) (netip.Addr, bool) {
	if !start.Is4() || !end.Is4() || end.Less(start) {
		return netip.Addr{}, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.wakeLocked(now)
	m := mac.String()
	s, e := addrU32(start), addrU32(end)
	if !l.cur.set || l.cur.start != s || l.cur.end != e {
		l.cur = cursor{start: s, end: e, next: uint64(s), set: true}
		l.freed = l.freed[:0]
	}
	free := func(a netip.Addr) bool {
		_, known := l.byAddr[a]
		return !known && !l.inUseLocked(a, m, now) && usable(a)
	}
	// The cursor skips addresses offered to other MACs; one offered to m
	// is free for m, wherever it is.
	own, hasOwn := netip.Addr{}, false
	if h, ok := l.holds[m]; ok && now.Before(h.until) && h.addr.Is4() {
		if u := addrU32(h.addr); u >= s && u <= e && free(h.addr) {
			own, hasOwn = h.addr, true
		}
	}
	lowest := func(a netip.Addr) netip.Addr {
		if hasOwn && own.Less(a) {
			return own
		}
		return a
	}
	// Addresses freed below the cursor come first (they are lower). An
	// entry no longer free is dropped: when it frees up again it is pushed
	// again. The one returned stays: once offered it is dropped next time.
	for len(l.freed) > 0 {
		if a := addrFromU32(l.freed[0]); free(a) {
			return lowest(a), true
		}
		heap.Pop(&l.freed)
	}
	for ; l.cur.next <= uint64(e); l.cur.next++ {
		if a := addrFromU32(uint32(l.cur.next)); free(a) {
			return lowest(a), true
		}
	}
	if hasOwn {
		return own, true
	}
	inPool := func(a netip.Addr) bool {
		u := addrU32(a)
		return a.Is4() && u >= s && u <= e && usable(a)
	}
	if a, ok := l.oldestExpiredLocked(m, now, inPool); ok {
		return a, true
	}
	// Last, m's own lease if still active (an expired one was a candidate
	// above): it expires later than any expired one.
	if le, ok := l.byMAC[m]; ok && inPool(le.Addr) && !l.inUseLocked(le.Addr, m, now) {
		return le.Addr, true
	}
	return netip.Addr{}, false
}

// oldestExpiredLocked returns the expired lease's address, free for m and
// usable, that expired first.
func (l *Leases) oldestExpiredLocked(m string, now time.Time, usable func(netip.Addr) bool) (netip.Addr, bool) {
	var aside []expiry
	defer func() {
		for _, x := range aside {
			heap.Push(&l.expiries, x)
		}
	}()
	for len(l.expiries) > 0 {
		x := l.expiries[0]
		owner, ok := l.byAddr[x.addr]
		if !ok || !l.byMAC[owner].Expires.Equal(x.at) {
			heap.Pop(&l.expiries) // stale: the record changed or went
			continue
		}
		if now.Before(x.at) {
			break // the earliest expiry is still ahead: nothing expired
		}
		heap.Pop(&l.expiries)
		aside = append(aside, x)
		if !l.inUseLocked(x.addr, m, now) && usable(x.addr) {
			return x.addr, true
		}
	}
	return netip.Addr{}, false
}

// wakeLocked ends the holds and declines that are over, and puts their
// addresses back in Pick's reach.
func (l *Leases) wakeLocked(now time.Time) {
	for len(l.wakes) > 0 && !now.Before(l.wakes[0].at) {
		w := heap.Pop(&l.wakes).(wake)
		if w.mac == "" {
			if until, ok := l.declined[w.addr]; ok && !now.Before(until) {
				delete(l.declined, w.addr)
				l.freedLocked(w.addr)
			}
			continue
		}
		if h, ok := l.holds[w.mac]; ok && h.addr == w.addr && !now.Before(h.until) {
			l.dropHoldLocked(w.mac)
		}
	}
}

// freedLocked notes that addr may have become free. Only addresses the
// cursor has passed need noting; Pick checks each before offering it.
func (l *Leases) freedLocked(addr netip.Addr) {
	if !l.cur.set || !addr.Is4() {
		return
	}
	if u := addrU32(addr); u >= l.cur.start && u <= l.cur.end && uint64(u) < l.cur.next {
		heap.Push(&l.freed, u)
	}
}

// pushExpiryLocked indexes le's expiry, compacting the heap when stale
// entries (renewed or deleted leases) outnumber live ones.
func (l *Leases) pushExpiryLocked(le Lease) {
	if len(l.expiries) > 2*len(l.byMAC)+64 {
		l.expiries = l.expiries[:0]
		for _, x := range l.byMAC {
			l.expiries = append(l.expiries, expiry{at: x.Expires, addr: x.Addr})
		}
		heap.Init(&l.expiries)
		return // le is in byMAC already
	}
	heap.Push(&l.expiries, expiry{at: le.Expires, addr: le.Addr})
}

// Bind records that mac has addr for d and saves the table. An older
// lease of the same MAC, or another MAC's expired lease on addr, is
// replaced. On a save error the table is left as it was.
func (l *Leases) Bind(mac net.HardwareAddr, addr netip.Addr, d time.Duration, hostname string) (Lease, error) {
	le, b, err := l.bind(mac, addr, d, hostname)
	if err != nil {
		return Lease{}, err
	}
	if err := l.commit(b); err != nil {
		return Lease{}, err
	}
	return le, nil
}

// bind is Bind's change in memory; commit(batch) puts it on disk.
func (l *Leases) bind(mac net.HardwareAddr, addr netip.Addr, d time.Duration, hostname string) (Lease, *batch, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := mac.String()
	now := l.now()
	if owner, ok := l.byAddr[addr]; ok && owner != m && now.Before(l.byMAC[owner].Expires) {
		return Lease{}, nil, fmt.Errorf("bind %s to %s: leased to %s", addr, m, owner)
	}
	if old, ok := l.byMAC[m]; ok && old.Addr != addr {
		delete(l.byAddr, old.Addr)
		l.freedLocked(old.Addr)
	}
	if owner, ok := l.byAddr[addr]; ok && owner != m {
		delete(l.byMAC, owner)
	}
	le := Lease{MAC: m, Addr: addr, Expires: now.Add(d), Hostname: hostname}
	l.byMAC[m] = le
	l.byAddr[addr] = m
	l.pushExpiryLocked(le)
	l.dropHoldLocked(m)
	return le, l.changedLocked(), nil
}

// Release ends mac's lease on addr now (RELEASE). The record stays, so the
// MAC gets the same address next time if it is still free.
func (l *Leases) Release(mac net.HardwareAddr, addr netip.Addr) error {
	b, err := l.release(mac, addr)
	if err != nil {
		return err
	}
	return l.commit(b)
}

func (l *Leases) release(mac net.HardwareAddr, addr netip.Addr) (*batch, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	le, ok := l.byMAC[mac.String()]
	if !ok || le.Addr != addr {
		return nil, fmt.Errorf("release %s by %s: no such lease", addr, mac)
	}
	le.Expires = l.now()
	l.byMAC[le.MAC] = le
	l.pushExpiryLocked(le)
	return l.changedLocked(), nil
}

// Decline marks addr unusable until hold has passed (a client found it in
// use: DECLINE) and drops any lease on it.
func (l *Leases) Decline(addr netip.Addr, hold time.Duration) error {
	return l.commit(l.decline(addr, hold))
}

func (l *Leases) decline(addr netip.Addr, hold time.Duration) *batch {
	l.mu.Lock()
	defer l.mu.Unlock()
	until := l.now().Add(hold)
	l.declined[addr] = until
	heap.Push(&l.wakes, wake{at: until, addr: addr})
	owner, ok := l.byAddr[addr]
	if !ok {
		return nil
	}
	delete(l.byAddr, addr)
	delete(l.byMAC, owner)
	return l.changedLocked()
}

// cursor is where Pick's search for a never-leased address resumes in
// [start, end]: every address below next has a lease record, is taken
// (held, declined, leased), is not usable, or is in Leases.freed.
type cursor struct {
	start, end uint32
	next       uint64 // up to end+1
	set        bool
}

func addrU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func addrFromU32(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// expiry is a lease record's expiry, for the oldest-expired search.
type expiry struct {
	at   time.Time
	addr netip.Addr
}

type expiryHeap []expiry

func (h expiryHeap) Len() int { return len(h) }
func (h expiryHeap) Less(i, j int) bool {
	if c := h[i].at.Compare(h[j].at); c != 0 {
		return c < 0
	}
	return h[i].addr.Less(h[j].addr)
}
func (h expiryHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)   { *h = append(*h, x.(expiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// wake is when a hold (mac set) or a DECLINE (mac "") on addr ends.
type wake struct {
	at   time.Time
	addr netip.Addr
	mac  string
}

type wakeHeap []wake

func (h wakeHeap) Len() int           { return len(h) }
func (h wakeHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h wakeHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *wakeHeap) Push(x any)        { *h = append(*h, x.(wake)) }
func (h *wakeHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// addrHeap is a min-heap of IPv4 addresses as numbers.
type addrHeap []uint32

func (h addrHeap) Len() int           { return len(h) }
func (h addrHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h addrHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *addrHeap) Push(x any)        { *h = append(*h, x.(uint32)) }
func (h *addrHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
