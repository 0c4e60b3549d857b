package inventory

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Backend keeps the records of the rack's machines somewhere shared by
// several rackboot processes (kubestate keeps them in Kubernetes), instead
// of machines.json. Each record is changed on its own, by re-applying the
// change to the record as stored now: two processes changing one machine at
// once both get their change in, and neither overwrites the other's.
type Backend interface {
	// Load returns every machine on record.
	Load(ctx context.Context) ([]Machine, error)
	// Update calls change on the record of key as stored now (a Machine
	// with only Key set when there is none) and stores the result; when
	// another writer stored the record in between, it calls change again
	// on the newer record. change reports whether it changed anything:
	// when it returns false nothing is written. Update returns the record
	// as stored.
	Update(ctx context.Context, key string, change func(*Machine) bool) (Machine, error)
	// Delete removes the record of key; none is no error.
	Delete(ctx context.Context, key string) error
}

// backendTimeout bounds one call into the Backend; backendRetry is when
// changes that failed to save are tried again without waiting for another.
const (
	backendTimeout = 30 * time.Second
	backendRetry   = 5 * time.Second
)

// change is a change to one machine's record, applied to the copy in
// memory at once and to the stored record when it is saved. It must change
// nothing but the record (the Store's counters and indexes follow the
// record, not the change).
type change func(*Machine) bool

// OpenBackend loads every machine from b and returns a store that saves
// to b: machines of the rack (known by name) get their changes saved within
// the flush delay (MarkEvent, Reset and Forget: before they return), each
// as a change to that machine's record alone. Unknown (discovered)
// machines get records too, written only when they first appear or their
// summary changes (discovered.go). Changes other processes make reach
// this store through Observe and ObserveDeleted (a watch) or Refresh.
func OpenBackend(ctx context.Context, b Backend, opts ...Option) (*Store, error) {
	if b == nil {
		return nil, errors.New("open inventory: no backend")
	}
	s, err := newStore("", opts...)
	if err != nil {
		return nil, err
	}
	s.backend = b
	ms, err := b.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("open inventory: %w", err)
	}
	s.loadLocked(ms)
	return s, nil
}

// Shared reports whether the store saves to a Backend.
func (s *Store) Shared() bool { return s.backend != nil }

// Observe takes in a record as another process stored it (kubestate's
// watch calls it): it replaces the copy in memory unless that one is newer,
// with this process's changes not yet saved applied on top. Kernel log
// lines and mirror counts in memory are kept.
func (s *Store) Observe(m Machine) {
	if m.Key == "" {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.observeLocked(m)
}

// Refresh reads every record from the backend and takes each in as
// Observe does. It does nothing for a store kept in machines.json.
func (s *Store) Refresh(ctx context.Context) error {
	if s.backend == nil {
		return nil
	}
	ms, err := s.backend.Load(ctx)
	if err != nil {
		return fmt.Errorf("refresh inventory: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range ms {
		s.observeLocked(m)
	}
	return nil
}

func (s *Store) observeLocked(rec Machine) {
	if s.backend != nil && rec.Name == "" && IsDiscoveredKey(rec.Key) {
		s.observeSeenLocked(rec)
		return
	}
	old := s.machines[rec.Key]
	if old != nil && rec.Revision < old.Revision {
		return // an older record than the one in memory (a late watch event)
	}
	n := rec.clone()
	n.Logs, n.Pulled = nil, nil
	n.redact()
	if old != nil {
		n.Logs, n.Pulled = old.Logs, old.Pulled
		s.dropLocked(old)
	}
	for _, c := range s.ops[n.Key] {
		c(&n)
	}
	s.addLocked(&n)
	s.notifyLocked()
}

// dropLocked removes m from the store and every index (named or not).
func (s *Store) dropLocked(m *Machine) {
	for _, mac := range m.MACs {
		if s.idx.macs[mac] == m.Key {
			delete(s.idx.macs, mac)
		}
	}
	s.removeLocked(m)
}

// queueLocked notes a change of the named machine key to save.
func (s *Store) queueLocked(key string, c change) {
	if s.backend == nil {
		return
	}
	s.ops[key] = append(s.ops[key], c)
}

// combine applies changes in order, counting a revision when any changed
// the record.
func combine(cs []change) func(*Machine) bool {
	return func(m *Machine) bool {
		changed := false
		for _, c := range cs {
			if c(m) {
				changed = true
			}
		}
		if changed {
			m.Revision++
		}
		return changed
	}
}

// saveKey stores the changes waiting for key, then c, in one update, and
// takes in the record as stored. On an error the waiting changes wait again
// (c does not: its caller reports the error).
func (s *Store) saveKey(key string, c change) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	pending := s.ops[key]
	delete(s.ops, key)
	s.mu.Unlock()
	all := slices.Clone(pending)
	if c != nil {
		all = append(all, c)
	}
	return s.update(key, pending, all)
}

// update stores cs for key; pending are the changes to wait again on an
// error.
func (s *Store) update(key string, pending, cs []change) error {
	ctx, cancel := context.WithTimeout(context.Background(), backendTimeout)
	defer cancel()
	rec, err := s.backend.Update(ctx, key, combine(cs))
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.ops[key] = append(slices.Clone(pending), s.ops[key]...)
		s.dirty = true
		return fmt.Errorf("save machine %s: %w", key, err)
	}
	s.observeLocked(rec)
	return nil
}

// flushBackend saves every waiting change, machine by machine.
func (s *Store) flushBackend() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	ops := s.ops
	s.ops = map[string][]change{}
	s.dirty = false
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.mu.Unlock()
	keys := make([]string, 0, len(ops))
	for k := range ops {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var errs []error
	for _, k := range keys {
		if err := s.update(k, ops[k], ops[k]); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.flushSeen()...)
	if len(errs) > 0 {
		s.mu.Lock()
		if !s.closed && s.timer == nil { // the backend may be back soon: try again
			s.timer = time.AfterFunc(backendRetry, func() { s.saveNow(true) })
		}
		s.mu.Unlock()
		return fmt.Errorf("save inventory: %w", errors.Join(errs...))
	}
	return nil
}

// deleteShared removes the record of an unknown machine this store forgot.
func (s *Store) deleteShared(key string) error {
	ctx, cancel := context.WithTimeout(context.Background(), backendTimeout)
	defer cancel()
	if err := s.backend.Delete(ctx, key); err != nil {
		return fmt.Errorf("forget %s: %w", key, err)
	}
	s.mu.Lock()
	delete(s.seenStored, key)
	s.mu.Unlock()
	return nil
}

// Changes as the Store makes them, for the copy in memory and the stored
// record alike.

// ensure gives a record made by Update its name and first-seen time.
func (m *Machine) ensure(name string, t time.Time) {
	if m.Name == "" && name != "" && m.Key == name {
		m.Name = name
	}
	if m.FirstSeen.IsZero() && !t.IsZero() {
		m.FirstSeen = t
	}
}

// applyStage sets the current stage and adds a timeline entry.
func (m *Machine) applyStage(t time.Time, id, stage, detail string, maxTimeline int) {
	if t.After(m.LastSeen) {
		m.LastSeen = t
	}
	if m.FirstSeen.IsZero() {
		m.FirstSeen = t
	}
	if marksInstalled(stage) {
		m.Installed = true
	}
	m.Stage, m.Detail = stage, detail
	m.appendEntry(Entry{Time: t, Stage: stage, Detail: detail, ID: id}, maxTimeline)
}

// appendEntry adds e to the timeline, collapsing a repeat of the last entry
// (a client retrying) and dropping the oldest entries beyond max.
func (m *Machine) appendEntry(e Entry, maxTimeline int) {
	if n := len(m.Timeline); n > 0 && m.Timeline[n-1].Stage == e.Stage && m.Timeline[n-1].Detail == e.Detail {
		if m.Timeline[n-1].ID == "" {
			m.Timeline[n-1].ID = e.ID
		}
		return
	}
	if len(m.Timeline) >= maxTimeline {
		m.Timeline = slices.Delete(m.Timeline, 0, len(m.Timeline)-maxTimeline+1)
	}
	m.Timeline = append(m.Timeline, e)
}

// adoptHistory gives a named record the history of the unknown machine it
// was seen as (in this process's memory only) when the record has none.
func (m *Machine) adoptHistory(old Machine) {
	for _, mac := range old.MACs {
		if !slices.Contains(m.MACs, mac) {
			m.MACs = append(m.MACs, mac)
		}
	}
	if !old.FirstSeen.IsZero() && (m.FirstSeen.IsZero() || old.FirstSeen.Before(m.FirstSeen)) {
		m.FirstSeen = old.FirstSeen
	}
	if len(m.Timeline) == 0 {
		m.Timeline = slices.Clone(old.Timeline)
	}
}

// EncodeFile is the content of machines.json for ms (sorted by key in
// place; kernel log lines and mirror counts are left out), as the Store
// writes it.
func EncodeFile(ms []Machine) ([]byte, error) {
	for i := range ms {
		ms[i].Logs, ms[i].Pulled = nil, nil
	}
	slices.SortFunc(ms, func(a, b Machine) int { return strings.Compare(a.Key, b.Key) })
	return encodeMachines(ms)
}

// DecodeFile parses and checks the content of machines.json, as Open does.
func DecodeFile(data []byte) ([]Machine, error) { return decode(data) }
