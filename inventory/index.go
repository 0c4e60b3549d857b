package inventory

import (
	"container/list"
	"net/netip"
)

// index keeps the lookups events need without scanning every machine: MAC to
// named machine, address to the machines last seen there, and the unknown
// machines by recency. The Store keeps it consistent under its lock.
type index struct {
	// macs maps a MAC to the key of the named machine that has it. Unknown
	// machines are keyed by their only MAC and found by key instead.
	macs map[string]string
	// addrs maps an address to the keys of the machines whose Addr it is.
	addrs map[netip.Addr]map[string]struct{}
	// unknown holds the keys of unknown machines, least recently seen first.
	unknown *list.List
	at      map[string]*list.Element
}

func newIndex() index {
	return index{
		macs:    map[string]string{},
		addrs:   map[netip.Addr]map[string]struct{}{},
		unknown: list.New(),
		at:      map[string]*list.Element{},
	}
}

// touch makes the unknown machine key the most recently seen.
func (x *index) touch(key string) {
	if e := x.at[key]; e != nil {
		x.unknown.MoveToBack(e)
	}
}

func (x *index) addAddr(a netip.Addr, key string) {
	if !a.IsValid() {
		return
	}
	keys := x.addrs[a]
	if keys == nil {
		keys = map[string]struct{}{}
		x.addrs[a] = keys
	}
	keys[key] = struct{}{}
}

func (x *index) removeAddr(a netip.Addr, key string) {
	keys := x.addrs[a]
	delete(keys, key)
	if len(keys) == 0 {
		delete(x.addrs, a)
	}
}

// addLocked adds m to the store and its indexes.
func (s *Store) addLocked(m *Machine) {
	s.machines[m.Key] = m
	s.idx.addAddr(m.Addr, m.Key)
	if m.Name == "" {
		s.idx.at[m.Key] = s.idx.unknown.PushBack(m.Key)
		return
	}
	for _, mac := range m.MACs {
		s.idx.macs[mac] = m.Key
	}
}

// removeLocked drops the unknown machine m from the store and its indexes.
// Named machines are never removed.
func (s *Store) removeLocked(m *Machine) {
	delete(s.machines, m.Key)
	s.idx.removeAddr(m.Addr, m.Key)
	if e := s.idx.at[m.Key]; e != nil {
		s.idx.unknown.Remove(e)
		delete(s.idx.at, m.Key)
	}
}

// adoptLocked moves the unknown machine m under name, with its history.
func (s *Store) adoptLocked(m *Machine, name string) {
	s.removeLocked(m)
	m.Key, m.Name = name, name
	s.addLocked(m)
}

// indexMACLocked notes that m has mac (for named machines: the last one to
// report a MAC owns it).
func (s *Store) indexMACLocked(m *Machine, mac string) {
	if m.Name != "" {
		s.idx.macs[mac] = m.Key
	}
}

// setAddrLocked moves m to addr.
func (s *Store) setAddrLocked(m *Machine, addr netip.Addr) {
	if m.Addr == addr {
		return
	}
	s.idx.removeAddr(m.Addr, m.Key)
	m.Addr = addr
	s.idx.addAddr(addr, m.Key)
}

// evictLocked drops the least recently seen unknown machines beyond the
// limit. In machines.json the change waits for the next write, like any
// unknown one; a shared store deletes their records, and writeNow reports
// that the caller must write now (no flush delay).
func (s *Store) evictLocked() (writeNow bool) {
	for s.idx.unknown.Len() > s.maxUnknown {
		key := s.idx.unknown.Front().Value.(string)
		m := s.machines[key]
		s.removeLocked(m)
		s.dirty = true
		if s.seenGoneLocked(key) {
			writeNow = true
		}
		s.log.Debug("inventory: unknown machine dropped (too many)", "mac", key)
	}
	return writeNow
}
