// Package inventory keeps what rackboot knows about each machine of the rack:
// its addresses, the stage it reached, a bounded timeline of what it did, its
// last kernel log lines, and whether Talos is installed on its disk.
//
// The netboot side feeds it through pxe.Recorder, the Talos events sink through
// MarkStage and AddLog. The state survives restarts in <stateDir>/machines.json
// (kernel log lines are kept in memory only).
package inventory

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dotfile/rackboot/internal/atomicfile"
	"github.com/dotfile/rackboot/pxe"
)

// Stages the Talos events sink reports, after the pxe.Stage* ones.
const (
	StageInstalling    = "installing"     // the install sequence started
	StageInstalled     = "installed"      // Talos is on the disk, the machine is about to reboot
	StageInstallFailed = "install-failed" // the install sequence failed (detail says why)
	StageRebooted      = "rebooted"       // booting the installed system
	StageRunning       = "running"        // the installed system is up
	StageConfigError   = "config-error"   // Talos could not load or validate its config
)

// stageOrder lists the stages in the order a machine normally goes through them,
// followed by the side stages. The status page and metrics use this order.
var stageOrder = []string{
	pxe.StageDiscovered, pxe.StageDHCP, pxe.StageIPXE, pxe.StageScript,
	pxe.StageKernel, pxe.StageInitrd, pxe.StageConfig, StageInstalling,
	StageInstalled, StageRebooted, StageRunning,
	pxe.StageProxyIgnored, pxe.StageLocalBoot, StageInstallFailed, StageConfigError,
}

// Stages returns every known stage, in boot order then side stages.
func Stages() []string { return slices.Clone(stageOrder) }

// StageIndex is the position of stage in Stages(), or -1 for an unknown one.
func StageIndex(stage string) int { return slices.Index(stageOrder, stage) }

// marksInstalled reports whether reaching stage proves Talos is on the disk.
func marksInstalled(stage string) bool {
	return stage == StageInstalled || stage == StageRebooted || stage == StageRunning
}

// Default bounds.
const (
	DefaultTimelineLen = 100
	DefaultLogLines    = 200
	maxDetailLen       = 512
	maxLogMsgLen       = 2048
)

// FileName is the state file inside the state directory.
const FileName = "machines.json"

// ErrUnknownMachine is returned for a name or address the store has not seen.
var ErrUnknownMachine = errors.New("unknown machine")

// Entry is one step of a machine's timeline.
type Entry struct {
	Time   time.Time `json:"time"`
	Stage  string    `json:"stage"`
	Detail string    `json:"detail,omitempty"`
	// ID is the Talos event ID for entries from the events sink; it lets
	// replays be dropped even after a restart.
	ID string `json:"id,omitempty"`
}

// LogLine is one kernel log line a machine sent.
type LogLine struct {
	Time  time.Time `json:"time"`
	Level string    `json:"level,omitempty"`
	Msg   string    `json:"msg"`
}

// Machine is a snapshot of one machine.
type Machine struct {
	// Key is the machine name for known machines, the MAC for unknown ones.
	Key       string     `json:"key"`
	Name      string     `json:"name,omitempty"`
	MACs      []string   `json:"macs,omitempty"`
	Addr      netip.Addr `json:"addr,omitzero"`
	Stage     string     `json:"stage"`
	Detail    string     `json:"detail,omitempty"`
	Installed bool       `json:"installed"`
	FirstSeen time.Time  `json:"firstSeen"`
	LastSeen  time.Time  `json:"lastSeen"`
	Timeline  []Entry    `json:"timeline,omitempty"`
	// Logs are the last kernel log lines, oldest first; never persisted.
	Logs []LogLine `json:"logs,omitempty"`
}

func (m *Machine) clone() Machine {
	c := *m
	c.MACs = slices.Clone(m.MACs)
	c.Timeline = slices.Clone(m.Timeline)
	c.Logs = slices.Clone(m.Logs)
	return c
}

// Stats are counters since the store was opened.
type Stats struct {
	// Events counts recorded events by stage (duplicates included).
	Events map[string]uint64
	// LogLines counts kernel log lines received.
	LogLines uint64
}

// Option configures a Store.
type Option func(*Store)

// WithClock sets the clock used for events without a time (default time.Now).
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(s *Store) { s.log = l } }

// WithFlushDelay sets how long changes may wait before machines.json is
// written (default 1s); 0 writes on every change. Flush and Close always write.
func WithFlushDelay(d time.Duration) Option { return func(s *Store) { s.delay = d } }

// WithLimits sets how many timeline entries and kernel log lines are kept per
// machine.
func WithLimits(timeline, logLines int) Option {
	return func(s *Store) { s.maxTimeline, s.maxLogs = timeline, logLines }
}

// Store is the machine inventory. It is safe for concurrent use.
type Store struct {
	path        string
	now         func() time.Time
	log         *slog.Logger
	delay       time.Duration
	maxTimeline int
	maxLogs     int

	mu       sync.Mutex
	machines map[string]*Machine
	dirty    bool
	timer    *time.Timer
	closed   bool
	subs     map[int]chan struct{}
	nextSub  int
	events   map[string]uint64
	logLines uint64

	writeMu sync.Mutex // serialises file writes
}

// fileFormat is the content of machines.json.
type fileFormat struct {
	Version  int       `json:"version"`
	Machines []Machine `json:"machines"`
}

// Open loads <stateDir>/machines.json (a missing file is an empty inventory)
// and returns the store. A file that cannot be read or parsed is an error:
// it is never reset silently.
func Open(stateDir string, opts ...Option) (*Store, error) {
	s := &Store{
		path:        filepath.Join(stateDir, FileName),
		now:         time.Now,
		log:         slog.New(slog.DiscardHandler),
		delay:       time.Second,
		maxTimeline: DefaultTimelineLen,
		maxLogs:     DefaultLogLines,
		machines:    map[string]*Machine{},
		subs:        map[int]chan struct{}{},
		events:      map[string]uint64{},
	}
	for _, o := range opts {
		o(s)
	}
	if s.maxTimeline < 1 || s.maxLogs < 0 {
		return nil, fmt.Errorf("open inventory: limits must be positive (timeline %d, log lines %d)", s.maxTimeline, s.maxLogs)
	}
	data, err := os.ReadFile(s.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("open inventory: %w", err)
	}
	ms, err := decode(data)
	if err != nil {
		return nil, fmt.Errorf("open inventory: parse %s: %w (fix or move the file away; it is not reset automatically)", s.path, err)
	}
	for i := range ms {
		m := ms[i]
		m.Logs = nil
		s.machines[m.Key] = &m
	}
	return s, nil
}

// decode parses and checks a machines.json document.
func decode(data []byte) ([]Machine, error) {
	var f fileFormat
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON document")
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("unsupported version %d (want 1)", f.Version)
	}
	seen := map[string]bool{}
	for i, m := range f.Machines {
		if m.Key == "" {
			return nil, fmt.Errorf("machine #%d has no key", i+1)
		}
		if seen[m.Key] {
			return nil, fmt.Errorf("machine %q appears twice", m.Key)
		}
		seen[m.Key] = true
	}
	return f.Machines, nil
}

// Path is the state file's path.
func (s *Store) Path() string { return s.path }

// Record implements pxe.Recorder. Events of known machines are keyed by
// name, others by MAC; an event with neither is dropped.
func (s *Store) Record(e pxe.Event) {
	mac := ""
	if len(e.MAC) > 0 {
		mac = e.MAC.String()
	}
	key := e.Name
	if key == "" {
		key = mac
	}
	if key == "" {
		s.log.Debug("inventory: event without name or MAC dropped", "stage", e.Stage, "addr", e.Addr)
		return
	}
	t := e.Time
	if t.IsZero() {
		t = s.now()
	}
	s.mu.Lock()
	m := s.machines[key]
	if m == nil && e.Name != "" && mac != "" {
		// A machine first seen as unknown, now known by name: adopt its history.
		if old := s.machines[mac]; old != nil {
			delete(s.machines, mac)
			old.Key, old.Name = key, e.Name
			s.machines[key] = old
			m = old
		}
	}
	if m == nil {
		m = &Machine{Key: key, Name: e.Name, FirstSeen: t}
		s.machines[key] = m
	}
	if mac != "" && !slices.Contains(m.MACs, mac) {
		m.MACs = append(m.MACs, mac)
	}
	if e.Addr.IsValid() {
		m.Addr = e.Addr.Unmap()
	}
	s.applyLocked(m, t, e.Stage, e.Detail)
	s.changedLocked()
	s.mu.Unlock()
	s.log.Debug("inventory: event", "machine", key, "stage", e.Stage, "addr", e.Addr)
}

// MarkStage records a stage for the machine named who, which is a key (name
// or MAC) or an IP address the machine was last seen at.
func (s *Store) MarkStage(who, stage, detail string) error {
	if stage == "" {
		return fmt.Errorf("mark stage of %s: empty stage", who)
	}
	s.mu.Lock()
	m := s.findLocked(who)
	if m == nil {
		s.mu.Unlock()
		return fmt.Errorf("mark stage %s of %s: %w", stage, who, ErrUnknownMachine)
	}
	s.applyLocked(m, s.now(), stage, detail)
	s.changedLocked()
	s.mu.Unlock()
	return nil
}

// MarkEvent is MarkStage for an event with an ID (a Talos event): if the
// machine's timeline already holds id, nothing changes and applied is false.
func (s *Store) MarkEvent(who, id, stage, detail string) (applied bool, err error) {
	if stage == "" {
		return false, fmt.Errorf("mark event %s of %s: empty stage", id, who)
	}
	s.mu.Lock()
	m := s.findLocked(who)
	if m == nil {
		s.mu.Unlock()
		return false, fmt.Errorf("mark event %s (%s) of %s: %w", id, stage, who, ErrUnknownMachine)
	}
	if id != "" && slices.ContainsFunc(m.Timeline, func(e Entry) bool { return e.ID == id }) {
		s.mu.Unlock()
		return false, nil
	}
	s.applyIDLocked(m, s.now(), id, stage, detail)
	s.changedLocked()
	s.mu.Unlock()
	return true, nil
}

// AddLog appends a kernel log line to the machine who (key or address); only
// the last lines are kept, in memory.
func (s *Store) AddLog(who string, l LogLine) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.findLocked(who)
	if m == nil {
		return fmt.Errorf("add log line of %s: %w", who, ErrUnknownMachine)
	}
	if l.Time.IsZero() {
		l.Time = s.now()
	}
	l.Msg = truncate(l.Msg, maxLogMsgLen)
	s.logLines++
	if s.maxLogs == 0 {
		return nil
	}
	if len(m.Logs) >= s.maxLogs {
		m.Logs = slices.Delete(m.Logs, 0, len(m.Logs)-s.maxLogs+1)
	}
	m.Logs = append(m.Logs, l)
	s.notifyLocked() // logs are not persisted: no write
	return nil
}

// ByAddr returns the key of the machine last seen at addr.
func (s *Store) ByAddr(addr netip.Addr) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if m := s.byAddrLocked(addr); m != nil {
		return m.Key, true
	}
	return "", false
}

// Installed reports whether Talos is installed on the named machine.
func (s *Store) Installed(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.machines[name]
	return m != nil && m.Installed
}

// Reset forgets that the named machine is installed, so that it netboots
// and installs again. Its history is kept.
func (s *Store) Reset(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.machines[name]
	if m == nil {
		return fmt.Errorf("reset %s: %w", name, ErrUnknownMachine)
	}
	m.Installed = false
	s.appendLocked(m, Entry{Time: s.now(), Stage: m.Stage, Detail: "reset: will install again"})
	s.changedLocked()
	return nil
}

// Machine returns a snapshot of one machine.
func (s *Store) Machine(key string) (Machine, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.machines[key]
	if m == nil {
		return Machine{}, false
	}
	return m.clone(), true
}

// Machines returns a deep copy of every machine, sorted by key.
func (s *Store) Machines() []Machine {
	s.mu.Lock()
	out := make([]Machine, 0, len(s.machines))
	for _, m := range s.machines {
		out = append(out, m.clone())
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Machine) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// Stats returns a copy of the counters.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	ev := make(map[string]uint64, len(s.events))
	for k, v := range s.events {
		ev[k] = v
	}
	return Stats{Events: ev, LogLines: s.logLines}
}

// Subscribe returns a channel that receives a value after changes (several
// changes may be coalesced into one value), and a function to stop.
func (s *Store) Subscribe() (<-chan struct{}, func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id := s.nextSub
	s.nextSub++
	ch := make(chan struct{}, 1)
	s.subs[id] = ch
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, id)
		s.mu.Unlock()
	}
}

// Flush writes machines.json now if anything changed since the last write.
func (s *Store) Flush() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	s.mu.Lock()
	if !s.dirty {
		s.mu.Unlock()
		return nil
	}
	data, err := s.encodeLocked()
	s.dirty = false
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	s.mu.Unlock()
	if err == nil {
		err = atomicfile.Write(s.path, data, 0o600)
	}
	if err != nil {
		s.mu.Lock()
		s.dirty = true // try again at the next change, Flush or Close
		s.mu.Unlock()
		return fmt.Errorf("save inventory: %w", err)
	}
	return nil
}

// Close writes pending changes. Later changes are still kept in memory and
// written by Flush, but no longer on a timer.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	return s.Flush()
}

func (s *Store) encodeLocked() ([]byte, error) {
	f := fileFormat{Version: 1, Machines: make([]Machine, 0, len(s.machines))}
	for _, m := range s.machines {
		c := m.clone()
		c.Logs = nil
		f.Machines = append(f.Machines, c)
	}
	slices.SortFunc(f.Machines, func(a, b Machine) int { return strings.Compare(a.Key, b.Key) })
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode machines: %w", err)
	}
	return append(data, '\n'), nil
}

func (s *Store) findLocked(who string) *Machine {
	if m := s.machines[who]; m != nil {
		return m
	}
	if hw, err := net.ParseMAC(who); err == nil {
		if m := s.machines[hw.String()]; m != nil {
			return m
		}
		for _, m := range s.machines {
			if slices.Contains(m.MACs, hw.String()) {
				return m
			}
		}
	}
	if a, err := netip.ParseAddr(who); err == nil {
		return s.byAddrLocked(a)
	}
	return nil
}

// byAddrLocked finds the machine last seen at addr; if several were (a lease
// moved), the one seen most recently wins.
func (s *Store) byAddrLocked(addr netip.Addr) *Machine {
	addr = addr.Unmap()
	var best *Machine
	for _, m := range s.machines {
		if m.Addr == addr && (best == nil || m.LastSeen.After(best.LastSeen)) {
			best = m
		}
	}
	return best
}

// applyLocked sets the current stage and adds a timeline entry.
func (s *Store) applyLocked(m *Machine, t time.Time, stage, detail string) {
	s.applyIDLocked(m, t, "", stage, detail)
}

func (s *Store) applyIDLocked(m *Machine, t time.Time, id, stage, detail string) {
	detail = truncate(detail, maxDetailLen)
	s.events[stage]++
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
	s.appendLocked(m, Entry{Time: t, Stage: stage, Detail: detail, ID: id})
}

// appendLocked adds e to the timeline, collapsing a repeat of the last entry
// (a client retrying) and dropping the oldest entries beyond the limit.
func (s *Store) appendLocked(m *Machine, e Entry) {
	if n := len(m.Timeline); n > 0 && m.Timeline[n-1].Stage == e.Stage && m.Timeline[n-1].Detail == e.Detail {
		if m.Timeline[n-1].ID == "" {
			m.Timeline[n-1].ID = e.ID
		}
		return
	}
	if len(m.Timeline) >= s.maxTimeline {
		m.Timeline = slices.Delete(m.Timeline, 0, len(m.Timeline)-s.maxTimeline+1)
	}
	m.Timeline = append(m.Timeline, e)
}

// changedLocked marks the state dirty, schedules a write and notifies.
func (s *Store) changedLocked() {
	s.dirty = true
	s.notifyLocked()
	if s.closed {
		return
	}
	if s.delay <= 0 {
		// Write synchronously, outside the lock: Flush takes it again.
		s.mu.Unlock()
		if err := s.Flush(); err != nil {
			s.log.Error("inventory: write state", "err", err)
		}
		s.mu.Lock()
		return
	}
	if s.timer == nil {
		s.timer = time.AfterFunc(s.delay, func() {
			if err := s.Flush(); err != nil {
				s.log.Error("inventory: write state", "err", err)
			}
		})
	}
}

func (s *Store) notifyLocked() {
	for _, ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
