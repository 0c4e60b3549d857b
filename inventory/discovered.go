package inventory

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
)

// Discovered machines in a shared store (OpenBackend): a machine outside
// the rack file, keyed by its MAC, is a record too, so that every process
// sharing the backend knows it (rackboot machines --kube, machine adopt
// --kube). It is not written per packet: its record is written when the
// machine first appears, when its summary changes (WithDiscoveredSummary:
// what adopting it needs, e.g. its address, arch, identity, whether it
// waits in the discovery boot), and at most once per DiscoveredRefresh to
// move its last-seen time on. A write merges this process's copy into the
// stored record (mergeSeen), so two processes seeing one machine both get
// their part in. Evicting it (WithMaxUnknown), adopting it under a name
// and Forget delete its record; ObserveDeleted takes another process's
// deletion in.

// DiscoveredRefresh is how often a discovered machine that keeps netbooting
// with nothing new has its record written anyway (its last-seen time).
const DiscoveredRefresh = time.Hour

// DiscoveredTimelineLen bounds a discovered machine's stored timeline (its
// copy in memory keeps the usual length).
const DiscoveredTimelineLen = 32

// WithDiscoveredSummary sets what of a discovered machine is worth a write
// of its record (shared stores only): when summary's answer changes, the
// record is written. Default: its address and MACs.
func WithDiscoveredSummary(summary func(Machine) string) Option {
	return func(s *Store) { s.summary = summary }
}

// defaultSummary is a discovered machine's address and MACs.
func defaultSummary(m Machine) string {
	return m.Addr.String() + " " + strings.Join(m.MACs, ",")
}

// seenMark is what a discovered machine's stored record said, to decide
// whether the copy in memory is worth a write.
type seenMark struct {
	summary  string
	lastSeen time.Time
}

// IsDiscoveredKey reports whether key is a discovered machine's (a MAC in
// net.HardwareAddr's form) rather than a rack machine's name.
func IsDiscoveredKey(key string) bool {
	hw, err := net.ParseMAC(key)
	return err == nil && hw.String() == key
}

// markLocked notes rec as the stored record of a discovered machine.
func (s *Store) markLocked(rec Machine) {
	s.seenStored[rec.Key] = seenMark{summary: s.summarize(rec), lastSeen: rec.LastSeen}
}

func (s *Store) summarize(m Machine) string {
	if s.summary != nil {
		return s.summary(m)
	}
	return defaultSummary(m)
}

// seenDueLocked reports whether the discovered machine m differs enough
// from its stored record to be written: never stored, a new summary, or
// last seen DiscoveredRefresh after the stored time.
func (s *Store) seenDueLocked(m *Machine) bool {
	st, ok := s.seenStored[m.Key]
	if !ok {
		return true
	}
	return st.summary != s.summarize(*m) || m.LastSeen.Sub(st.lastSeen) >= DiscoveredRefresh
}

// seenChangedLocked marks the discovered machine key for the next write
// when it is due (or gone: its record is then deleted), and reports
// whether the caller must write now.
func (s *Store) seenChangedLocked(m *Machine) bool {
	if s.backend == nil || !s.seenDueLocked(m) {
		return false
	}
	s.seenDirty[m.Key] = true
	return s.scheduleLocked()
}

// seenGoneLocked marks the record of a discovered machine that left the
// store (evicted, adopted under a name) for deletion at the next write.
func (s *Store) seenGoneLocked(key string) bool {
	if s.backend == nil {
		return false
	}
	if _, ok := s.seenStored[key]; !ok && !s.seenDirty[key] {
		return false
	}
	s.seenDirty[key] = true
	return s.scheduleLocked()
}

// scheduleLocked starts the flush timer, or reports that the caller must
// write now (no flush delay).
func (s *Store) scheduleLocked() bool {
	if s.closed {
		return false
	}
	if s.delay <= 0 {
		return true
	}
	if s.timer == nil {
		s.timer = time.AfterFunc(s.delay, func() { s.saveNow(true) })
	}
	return false
}

// syncSeen writes the discovered machine key's record from the copy in
// memory, or deletes it when the machine is no longer here as discovered.
func (s *Store) syncSeen(key string) error {
	s.mu.Lock()
	m := s.machines[key]
	present := m != nil && m.Name == ""
	var mine Machine
	if present {
		mine = m.clone()
	}
	_, stored := s.seenStored[key]
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), backendTimeout)
	defer cancel()
	if !present {
		if !stored {
			return nil
		}
		return s.deleteSeen(ctx, key)
	}
	rec, err := s.backend.Update(ctx, key, func(r *Machine) bool {
		if !mergeSeen(r, mine, DiscoveredTimelineLen) {
			return false
		}
		r.Revision++
		return true
	})
	if err != nil {
		return fmt.Errorf("save discovered machine %s: %w", key, err)
	}
	s.mu.Lock()
	if cur := s.machines[key]; cur == nil || cur.Name != "" {
		// Adopted or forgotten while the write was on its way.
		s.seenStored[key] = seenMark{}
		s.mu.Unlock()
		return s.deleteSeen(ctx, key)
	}
	s.observeLocked(rec)
	s.mu.Unlock()
	return nil
}

// deleteSeen deletes a discovered machine's record.
func (s *Store) deleteSeen(ctx context.Context, key string) error {
	if err := s.backend.Delete(ctx, key); err != nil {
		return fmt.Errorf("delete discovered machine %s: %w", key, err)
	}
	s.mu.Lock()
	delete(s.seenStored, key)
	s.mu.Unlock()
	return nil
}

// flushSeen writes or deletes every discovered machine's record marked
// for it; one that fails is marked again.
func (s *Store) flushSeen() []error {
	s.mu.Lock()
	keys := make([]string, 0, len(s.seenDirty))
	for k := range s.seenDirty {
		keys = append(keys, k)
	}
	clear(s.seenDirty)
	s.mu.Unlock()
	slices.Sort(keys)
	var errs []error
	for _, k := range keys {
		if err := s.syncSeen(k); err != nil {
			s.mu.Lock()
			s.seenDirty[k] = true
			s.mu.Unlock()
			errs = append(errs, err)
		}
	}
	return errs
}

// observeSeenLocked takes in a discovered machine's record as stored:
// merged with the copy in memory (which may hold what this process saw
// and did not write), in place, keeping its place among the unknown.
func (s *Store) observeSeenLocked(rec Machine) {
	s.markLocked(rec)
	n := rec.clone()
	n.Logs, n.Pulled = nil, nil
	n.redact()
	old := s.machines[rec.Key]
	if old == nil {
		s.addLocked(&n)
		s.notifyLocked()
		return
	}
	if old.Name != "" {
		return
	}
	mergeSeen(&n, *old, s.maxTimeline)
	n.Logs, n.Pulled = old.Logs, old.Pulled
	n.Revision = max(n.Revision, old.Revision)
	addr := n.Addr
	n.Addr = old.Addr
	*old = n
	s.setAddrLocked(old, addr)
	s.notifyLocked()
}

// ObserveDeleted takes in that another process deleted the record of key
// (kubestate's watch calls it): a discovered machine leaves the store, as
// Forget does; it is recorded anew if it netboots again. A rack machine
// stays as it is in memory (rackboot deletes only discovered machines'
// records).
func (s *Store) ObserveDeleted(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.seenStored, key)
	delete(s.seenDirty, key)
	m := s.machines[key]
	if m == nil || m.Name != "" {
		return
	}
	s.removeLocked(m)
	s.notifyLocked()
}

// mergeSeen merges src (one process's copy of a discovered machine) into
// dst (its record): MACs and timeline entries joined, first seen the
// earliest, the address, stage and last-seen time of whichever was seen
// last; the timeline sorted by time and cut to its last maxTimeline
// entries. It reports whether dst changed.
func mergeSeen(dst *Machine, src Machine, maxTimeline int) bool {
	changed := false
	for _, mac := range src.MACs {
		if !slices.Contains(dst.MACs, mac) {
			dst.MACs = append(dst.MACs, mac)
			changed = true
		}
	}
	if !src.FirstSeen.IsZero() && (dst.FirstSeen.IsZero() || src.FirstSeen.Before(dst.FirstSeen)) {
		dst.FirstSeen, changed = src.FirstSeen, true
	}
	newer := src.LastSeen.After(dst.LastSeen)
	if newer {
		dst.LastSeen, changed = src.LastSeen, true
	}
	if src.Addr.IsValid() && dst.Addr != src.Addr && (newer || !dst.Addr.IsValid()) {
		dst.Addr, changed = src.Addr, true
	}
	if src.Stage != "" && (dst.Stage == "" || newer) && (dst.Stage != src.Stage || dst.Detail != src.Detail) {
		dst.Stage, dst.Detail, changed = src.Stage, src.Detail, true
	}
	tl := slices.Clone(dst.Timeline)
	for _, e := range src.Timeline {
		if !slices.ContainsFunc(tl, func(d Entry) bool { return sameEntry(d, e) }) {
			tl = append(tl, e)
		}
	}
	slices.SortStableFunc(tl, func(a, b Entry) int { return a.Time.Compare(b.Time) })
	if len(tl) > maxTimeline {
		tl = slices.Delete(tl, 0, len(tl)-maxTimeline)
	}
	if !slices.EqualFunc(tl, dst.Timeline, sameEntry) {
		dst.Timeline, changed = tl, true
	}
	return changed
}

func sameEntry(a, b Entry) bool {
	return a.Time.Equal(b.Time) && a.Stage == b.Stage && a.Detail == b.Detail && a.ID == b.ID
}
