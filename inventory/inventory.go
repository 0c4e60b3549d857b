// Package inventory keeps what rackboot knows about each machine of the rack:
// its addresses, the stage it reached, a bounded timeline of what it did, its
// last kernel log lines, and whether Talos is installed on its disk.
//
// The netboot side feeds it through pxe.Recorder, the Talos events sink through
// MarkEvent and AddLog. The state survives restarts in <stateDir>/machines.json
// (kernel log lines are kept in memory only).
//
// Machines of the rack (known by name) are saved: MarkEvent, Reset and Forget
// return only once the change is on disk, other changes are written within the
// flush delay. Unknown machines (keyed by MAC: anything on the LAN that asked
// to netboot) are bounded (WithMaxUnknown, least recently seen dropped first)
// and kept in memory: they never cause a write on their own and reach the file
// only along with other changes (a store shared through a Backend writes
// their records on their own, rarely: discovered.go). Text from outside (details, kernel log lines)
// is stored with config tokens redacted (pxe.RedactTokens).
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
	// StageDenied (pxe.StageDenied): a request for the machine's boot
	// script or config was refused. It only adds a timeline entry naming the
	// requester: the machine's stage, address, MACs and last-seen time are
	// left alone, so a request from another host is never attributed to the
	// machine.
	StageDenied = pxe.StageDenied
)

// stageOrder lists the stages in the order a machine normally goes through them,
// followed by the side stages. The status page and metrics use this order.
var stageOrder = []string{
	pxe.StageDiscovered, pxe.StageDHCP, pxe.StageIPXE, pxe.StageScript,
	pxe.StageKernel, pxe.StageInitrd, pxe.StageConfig, StageInstalling,
	StageInstalled, StageRebooted, StageRunning,
	pxe.StageProxyIgnored, pxe.StageLocalBoot, StageInstallFailed, StageConfigError,
	StageDenied, pxe.StageCannotBoot, pxe.StageDiscoveryBoot,
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
	DefaultMaxUnknown  = 256
	maxDetailLen       = 512
	maxLogMsgLen       = 2048
)

// FileName is the state file inside the state directory.
const FileName = "machines.json"

// ErrUnknownMachine is returned for a name or address the store has not seen.
var ErrUnknownMachine = errors.New("unknown machine")

// ErrNamedMachine is returned by Forget for a machine known by name: its
// record holds its installed flag, and forgetting it would make it install
// again at its next netboot (Reset does that on purpose).
var ErrNamedMachine = errors.New("machine is known by name")

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
	// Pulled is what the machine pulled from rackboot's registry mirror
	// since serve started; never persisted (nil: nothing yet).
	Pulled *Pulled `json:"pulled,omitempty"`
	// Revision counts the changes saved to a shared record (OpenBackend);
	// 0 in machines.json.
	Revision uint64 `json:"revision,omitempty"`
}

// Pulled counts what one machine fetched from the registry mirror.
type Pulled struct {
	// Bytes is the body bytes sent (manifests and blobs).
	Bytes int64 `json:"bytes"`
	// Blobs counts blob responses (layers, configs), Range requests included.
	Blobs uint64 `json:"blobs"`
	// Images are the distinct images (name:tag or name@digest as asked)
	// whose manifest it fetched, oldest first, at most MaxPulledImages.
	Images []string `json:"images,omitempty"`
	// ImageCount counts them, including those beyond the list (where a
	// repeat cannot be told apart and counts again).
	ImageCount int `json:"imageCount"`
}

// MaxPulledImages bounds Pulled.Images per machine.
const MaxPulledImages = 64

func (m *Machine) clone() Machine {
	c := *m
	c.MACs = slices.Clone(m.MACs)
	c.Timeline = slices.Clone(m.Timeline)
	c.Logs = slices.Clone(m.Logs)
	if m.Pulled != nil {
		p := *m.Pulled
		p.Images = slices.Clone(m.Pulled.Images)
		c.Pulled = &p
	}
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

// WithNames tells the store which names are machines of the rack: an event
// or log line for such a name is recorded even before the machine was seen
// netbooting (it may boot from its disk, or from an image).
func WithNames(known func(name string) bool) Option { return func(s *Store) { s.known = known } }

// WithMACNames names the machines of the rack by MAC: an event that carries
// only a MAC (DHCP, TFTP) of a rack machine is recorded under its name.
func WithMACNames(byMAC func(mac string) (name string, ok bool)) Option {
	return func(s *Store) { s.macName = byMAC }
}

// WithLimits sets how many timeline entries and kernel log lines are kept per
// machine.
func WithLimits(timeline, logLines int) Option {
	return func(s *Store) { s.maxTimeline, s.maxLogs = timeline, logLines }
}

// WithMaxUnknown sets how many unknown machines (keyed by MAC) are kept
// (default DefaultMaxUnknown); beyond it the least recently seen is dropped.
func WithMaxUnknown(n int) Option { return func(s *Store) { s.maxUnknown = n } }

// Store is the machine inventory. It is safe for concurrent use.
type Store struct {
	path        string
	now         func() time.Time
	log         *slog.Logger
	delay       time.Duration
	maxTimeline int
	maxLogs     int
	maxUnknown  int
	known       func(name string) bool
	macName     func(mac string) (string, bool)
	write       func(path string, data []byte, mode fs.FileMode) error

	mu       sync.Mutex
	machines map[string]*Machine
	idx      index
	// unconfirmed holds "key\x00event id" of events MarkEvent applied whose
	// write it has not yet seen succeed: a retry confirms them.
	unconfirmed map[string]struct{}
	dirty       bool
	timer       *time.Timer
	closed      bool
	subs        map[int]chan struct{}
	nextSub     int
	events      map[string]uint64
	logLines    uint64

	writeMu sync.Mutex // serialises file writes

	backend Backend             // nil: machines.json at path
	ops     map[string][]change // named machines' changes not yet in backend

	// Discovered machines' records (shared stores, discovered.go).
	summary    func(Machine) string
	seenStored map[string]seenMark // as last stored
	seenDirty  map[string]bool     // to write or delete at the next flush
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
	s, err := newStore(filepath.Join(stateDir, FileName), opts...)
	if err != nil {
		return nil, err
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
	s.loadLocked(ms)
	return s, nil
}

// newStore is an empty store saving to path.
func newStore(path string, opts ...Option) (*Store, error) {
	s := &Store{
		path:        path,
		now:         time.Now,
		log:         slog.New(slog.DiscardHandler),
		delay:       time.Second,
		maxTimeline: DefaultTimelineLen,
		maxLogs:     DefaultLogLines,
		maxUnknown:  DefaultMaxUnknown,
		write:       atomicfile.Write,
		machines:    map[string]*Machine{},
		idx:         newIndex(),
		unconfirmed: map[string]struct{}{},
		subs:        map[int]chan struct{}{},
		events:      map[string]uint64{},
		ops:         map[string][]change{},
		seenStored:  map[string]seenMark{},
		seenDirty:   map[string]bool{},
	}
	for _, o := range opts {
		o(s)
	}
	if s.maxTimeline < 1 || s.maxLogs < 0 || s.maxUnknown < 1 {
		return nil, fmt.Errorf("open inventory: limits must be positive (timeline %d, log lines %d, unknown machines %d)", s.maxTimeline, s.maxLogs, s.maxUnknown)
	}
	return s, nil
}

// loadLocked adds the machines read at open.
func (s *Store) loadLocked(ms []Machine) {
	// Unknown machines enter the recency list oldest first.
	slices.SortStableFunc(ms, func(a, b Machine) int { return a.LastSeen.Compare(b.LastSeen) })
	for i := range ms {
		m := ms[i]
		m.Logs, m.Pulled = nil, nil
		m.redact() // files written before redaction existed
		s.addLocked(&m)
		if s.backend != nil && m.Name == "" {
			s.markLocked(m)
		}
	}
	if s.backend == nil {
		s.evictLocked() // a shared store's records are bounded by their writers
	}
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
	if e.Name == "" && mac != "" && s.macName != nil {
		if n, ok := s.macName(mac); ok {
			e.Name = n
		}
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
	if e.Stage == StageDenied {
		s.recordDenied(key, e.Name, t, deniedDetail(e, mac))
		return
	}
	s.mu.Lock()
	m := s.machines[key]
	adopted := false
	if m == nil && e.Name != "" && mac != "" {
		// A machine first seen as unknown, now known by name: adopt its history.
		if old := s.machines[mac]; old != nil && old.Name == "" {
			seen := old.clone()
			s.adoptLocked(old, e.Name)
			adopted = s.seenGoneLocked(mac)
			m = old
			s.queueLocked(m.Key, func(r *Machine) bool { r.adoptHistory(seen); return true })
		}
	}
	if m == nil {
		m = &Machine{Key: key, Name: e.Name, FirstSeen: t}
		s.addLocked(m)
	}
	if mac != "" && !slices.Contains(m.MACs, mac) {
		m.MACs = append(m.MACs, mac)
		s.indexMACLocked(m, mac)
	}
	if e.Addr.IsValid() {
		s.setAddrLocked(m, e.Addr.Unmap())
	}
	s.applyLocked(m, t, e.Stage, e.Detail)
	if m.Name != "" {
		name, addr, stage, detail, maxTL := m.Name, e.Addr.Unmap(), e.Stage, clean(e.Detail, maxDetailLen), s.maxTimeline
		s.queueLocked(m.Key, func(r *Machine) bool {
			r.ensure(name, t)
			if mac != "" && !slices.Contains(r.MACs, mac) {
				r.MACs = append(r.MACs, mac)
			}
			if addr.IsValid() {
				r.Addr = addr
			}
			r.applyStage(t, "", stage, detail, maxTL)
			return true
		})
	}
	writeNow := s.changedLocked(m)
	evicted := s.evictLocked()
	s.mu.Unlock()
	s.saveNow(writeNow || adopted || evicted)
	s.log.Debug("inventory: event", "machine", key, "stage", e.Stage, "addr", e.Addr)
}

// deniedDetail says what was refused; the requester's address and MAC, if
// the event has them, go into the text only.
func deniedDetail(e pxe.Event, mac string) string {
	var who []string
	if e.Addr.IsValid() {
		who = append(who, "from "+e.Addr.Unmap().String())
	}
	if mac != "" {
		who = append(who, "MAC "+mac)
	}
	d := e.Detail
	if len(who) > 0 {
		d = strings.TrimSuffix("request "+strings.Join(who, ", ")+": "+d, ": ")
	}
	if d == "" {
		d = "request refused"
	}
	return d
}

// recordDenied adds a denied entry to the timeline of the machine key,
// without touching its stage, address, MACs or last-seen time. A machine not
// seen before is created with the denied stage.
func (s *Store) recordDenied(key, name string, t time.Time, detail string) {
	detail = clean(detail, maxDetailLen)
	s.mu.Lock()
	s.events[StageDenied]++
	m := s.machines[key]
	if m == nil {
		m = &Machine{Key: key, Name: name, Stage: StageDenied, Detail: detail}
		s.addLocked(m)
	}
	s.appendLocked(m, Entry{Time: t, Stage: StageDenied, Detail: detail})
	if m.Name != "" {
		named, maxTL := m.Name, s.maxTimeline
		s.queueLocked(m.Key, func(r *Machine) bool {
			r.ensure(named, time.Time{})
			if r.Stage == "" {
				r.Stage, r.Detail = StageDenied, detail
			}
			r.appendEntry(Entry{Time: t, Stage: StageDenied, Detail: detail}, maxTL)
			return true
		})
	}
	writeNow := s.changedLocked(m)
	evicted := s.evictLocked()
	s.mu.Unlock()
	s.saveNow(writeNow || evicted)
	s.log.Debug("inventory: denied request", "machine", key, "detail", detail)
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
	t := s.now()
	s.applyLocked(m, t, stage, detail)
	if m.Name != "" {
		name, d, maxTL := m.Name, clean(detail, maxDetailLen), s.maxTimeline
		s.queueLocked(m.Key, func(r *Machine) bool {
			r.ensure(name, t)
			r.applyStage(t, "", stage, d, maxTL)
			return true
		})
	}
	writeNow := s.changedLocked(m)
	s.mu.Unlock()
	s.saveNow(writeNow)
	return nil
}

// MarkEvent is MarkStage for an event with an ID (a Talos event), made
// durable: for a machine known by name it returns once machines.json holds
// the event. A write error is returned (the caller should have the event
// sent again); a retry with the same id writes again and then reports
// applied. applied is true exactly once per id, for the call that saw it
// saved; it is false for an event already recorded and saved (a replay,
// maybe from before a restart), which causes no write. Events of unknown
// machines are kept in memory only.
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
	if s.backend != nil && m.Name != "" {
		s.mu.Unlock()
		return s.markEventShared(m.Key, who, id, stage, detail)
	}
	pending := m.Key + "\x00" + id
	_, retry := s.unconfirmed[pending]
	recorded := id != "" && hasID(m.Timeline, id)
	if recorded && !retry {
		s.mu.Unlock()
		return false, nil
	}
	writeNow := false
	if !recorded {
		s.applyIDLocked(m, s.now(), id, stage, detail)
		writeNow = s.changedLocked(m)
	}
	if m.Name == "" {
		s.mu.Unlock()
		s.saveNow(writeNow) // a discovered machine's record, when due
		return true, nil
	}
	if id != "" {
		s.unconfirmed[pending] = struct{}{}
	}
	s.mu.Unlock()
	if err := s.Flush(); err != nil {
		return false, fmt.Errorf("mark event %s (%s) of %s: %w", id, stage, who, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if id == "" {
		return true, nil
	}
	_, mine := s.unconfirmed[pending] // a concurrent retry may have confirmed it
	delete(s.unconfirmed, pending)
	return mine, nil
}

// markEventShared is MarkEvent for a machine whose record is in the
// backend: the event is added to the record as stored unless another
// process added it already, and is saved before it returns.
func (s *Store) markEventShared(key, who, id, stage, detail string) (bool, error) {
	t := s.now()
	d, maxTL := clean(detail, maxDetailLen), s.maxTimeline
	var added bool
	err := s.saveKey(key, func(r *Machine) bool {
		added = false
		if id != "" && hasID(r.Timeline, id) {
			return false
		}
		r.ensure(key, t)
		r.applyStage(t, id, stage, d, maxTL)
		added = true
		return true
	})
	if err != nil {
		return false, fmt.Errorf("mark event %s (%s) of %s: %w", id, stage, who, err)
	}
	if added {
		s.mu.Lock()
		s.events[stage]++
		s.mu.Unlock()
	}
	return added, nil
}

func hasID(tl []Entry, id string) bool {
	return slices.ContainsFunc(tl, func(e Entry) bool { return e.ID == id })
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
	l.Msg = clean(l.Msg, maxLogMsgLen)
	l.Level = clean(l.Level, maxDetailLen)
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

// AddPull records that the machine who (key or address) was sent bytes from
// the registry mirror: a manifest of image (then image counts once per
// distinct name) or a blob (image ""). In memory only, like kernel logs.
func (s *Store) AddPull(who, image string, manifest bool, bytes int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.findLocked(who)
	if m == nil {
		return fmt.Errorf("add pull of %s: %w", who, ErrUnknownMachine)
	}
	if m.Pulled == nil {
		m.Pulled = &Pulled{}
	}
	p := m.Pulled
	p.Bytes += max(bytes, 0)
	if !manifest {
		p.Blobs++
	} else if image = clean(image, maxDetailLen); image != "" && !slices.Contains(p.Images, image) {
		// Beyond the list a name cannot be told from a repeat: counted anyway.
		p.ImageCount++
		if len(p.Images) < MaxPulledImages {
			p.Images = append(p.Images, image)
		}
	}
	s.notifyLocked() // not persisted: no write
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

// Declare lists the rack's machines by name, so that the status shows every
// one of them before it was ever seen (with no stage). It writes nothing.
func (s *Store) Declare(names ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range names {
		if n == "" || s.machines[n] != nil {
			continue
		}
		s.addLocked(&Machine{Key: n, Name: n})
	}
	s.notifyLocked()
}

// Installed reports whether Talos is installed on the named machine.
func (s *Store) Installed(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := s.machines[name]
	return m != nil && m.Installed
}

// Reset forgets that the named machine is installed, so that it netboots
// and installs again. Its history is kept. It returns once the change is on
// disk.
func (s *Store) Reset(name string) error {
	s.mu.Lock()
	m := s.machines[name]
	if m == nil {
		s.mu.Unlock()
		return fmt.Errorf("reset %s: %w", name, ErrUnknownMachine)
	}
	if s.backend != nil {
		s.mu.Unlock()
		t, maxTL := s.now(), s.maxTimeline
		err := s.saveKey(name, func(r *Machine) bool {
			r.ensure(name, t)
			r.Installed = false
			r.appendEntry(Entry{Time: t, Stage: r.Stage, Detail: "reset: will install again"}, maxTL)
			return true
		})
		if err != nil {
			return fmt.Errorf("reset %s: %w", name, err)
		}
		return nil
	}
	m.Installed = false
	s.appendLocked(m, Entry{Time: s.now(), Stage: m.Stage, Detail: "reset: will install again"})
	s.changedLocked(m)
	s.mu.Unlock()
	if err := s.Flush(); err != nil {
		return fmt.Errorf("reset %s: %w", name, err)
	}
	return nil
}

// Forget drops an unknown machine, given by key or MAC (any spelling
// net.ParseMAC accepts), and returns once the change is on disk. A machine
// known by name is refused with ErrNamedMachine: use Reset to make it install
// again. If the machine asks to netboot again, it is recorded anew.
func (s *Store) Forget(who string) error {
	s.mu.Lock()
	m := s.machines[who]
	if hw, err := net.ParseMAC(who); m == nil && err == nil {
		m = s.machines[hw.String()]
		if m == nil {
			m = s.machines[s.idx.macs[hw.String()]]
		}
	}
	switch {
	case m == nil:
		s.mu.Unlock()
		return fmt.Errorf("forget %s: %w", who, ErrUnknownMachine)
	case m.Name != "":
		s.mu.Unlock()
		return fmt.Errorf("forget %s: %s: %w (reset it to install it again)", who, m.Name, ErrNamedMachine)
	}
	s.removeLocked(m)
	s.dirty = true
	delete(s.seenDirty, m.Key)
	s.notifyLocked()
	s.mu.Unlock()
	if s.backend != nil {
		return s.deleteShared(m.Key)
	}
	if err := s.Flush(); err != nil {
		return fmt.Errorf("forget %s: %w", who, err)
	}
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
	if s.backend != nil {
		return s.flushBackend()
	}
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
		err = s.write(s.path, data, 0o600)
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
	ms := make([]Machine, 0, len(s.machines))
	for _, m := range s.machines {
		c := m.clone()
		c.Logs = nil
		ms = append(ms, c)
	}
	slices.SortFunc(ms, func(a, b Machine) int { return strings.Compare(a.Key, b.Key) })
	return encodeMachines(ms)
}

// encodeMachines is machines.json for ms, in the order given.
func encodeMachines(ms []Machine) ([]byte, error) {
	f := fileFormat{Version: 1, Machines: ms}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode machines: %w", err)
	}
	return append(data, '\n'), nil
}

// findLocked finds a machine by key, MAC or address, through the indexes.
func (s *Store) findLocked(who string) *Machine {
	if m := s.machines[who]; m != nil {
		return m
	}
	if s.known != nil && s.known(who) {
		m := &Machine{Key: who, Name: who, FirstSeen: s.now()}
		s.addLocked(m)
		return m
	}
	if hw, err := net.ParseMAC(who); err == nil {
		if m := s.machines[hw.String()]; m != nil {
			return m
		}
		if key, ok := s.idx.macs[hw.String()]; ok {
			return s.machines[key]
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
	var best *Machine
	for key := range s.idx.addrs[addr.Unmap()] {
		m := s.machines[key]
		if best == nil || m.LastSeen.After(best.LastSeen) || (m.LastSeen.Equal(best.LastSeen) && m.Key < best.Key) {
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
	s.events[stage]++
	m.applyStage(t, id, stage, clean(detail, maxDetailLen), s.maxTimeline)
}

// appendLocked adds e to the timeline (Machine.appendEntry).
func (s *Store) appendLocked(m *Machine, e Entry) { m.appendEntry(e, s.maxTimeline) }

// changedLocked notes that m changed and notifies subscribers. A change to
// a machine known by name is saved: it schedules a write, or reports that
// the caller must write now (no flush delay), after unlocking. A change to an
// unknown machine only waits for the next write.
func (s *Store) changedLocked(m *Machine) (writeNow bool) {
	s.dirty = true
	s.notifyLocked()
	if m.Name == "" {
		s.idx.touch(m.Key)
		return s.seenChangedLocked(m) // a shared store's record, when due
	}
	return s.scheduleLocked()
}

// saveNow writes the state if now is true, logging a failure (the state
// stays dirty: the next change, Flush or Close tries again).
func (s *Store) saveNow(now bool) {
	if !now {
		return
	}
	if err := s.Flush(); err != nil {
		s.log.Error("inventory: write state", "err", err)
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

// clean makes text from outside fit to store and show: config tokens
// redacted, at most n bytes.
func clean(s string, n int) string { return truncate(pxe.RedactTokens(s), n) }

// redact cleans text loaded from a file written by an older version.
func (m *Machine) redact() {
	m.Detail = pxe.RedactTokens(m.Detail)
	for i := range m.Timeline {
		m.Timeline[i].Detail = pxe.RedactTokens(m.Timeline[i].Detail)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
