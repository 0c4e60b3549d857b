// Package talosevents receives what Talos reports about itself: machine
// events over gRPC (talos.events.sink=host:port, siderolink's
// EventSinkService) and kernel logs over UDP (talos.logging.kernel=udp://...).
// Both know a node only by its source address; a Resolver turns it into a
// machine of the inventory.
package talosevents

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"

	eventsapi "github.com/siderolabs/siderolink/api/events"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/pxe"
)

// Resolver names the machine at a source address; cmd wires it to the
// inventory (the address that fetched a machine's config is that machine).
type Resolver func(addr netip.Addr) (name string, ok bool)

// Recorder is where stages and kernel log lines go; *inventory.Store is one.
type Recorder interface {
	// MarkEvent records a stage reached by event id and returns once it is
	// saved; applied is false when the event was already recorded and saved
	// (a replay, maybe from before a restart). An error wrapping
	// inventory.ErrUnknownMachine drops the event; any other error (the
	// state could not be saved) makes Talos send it again.
	MarkEvent(name, id, stage, detail string) (applied bool, err error)
	AddLog(name string, line inventory.LogLine) error
}

// Config configures the events sink.
type Config struct {
	// Addr is the TCP address to listen on when no listener is given.
	Addr     string
	Resolver Resolver
	Recorder Recorder
	// OnInstalled is called once per installed event (not for its replays),
	// after the stage is saved: cmd flips the machine to local boot.
	OnInstalled func(name string)
	// DedupSize is how many event IDs are remembered to drop replays
	// (default 8192; Talos replays up to 1000 per machine).
	DedupSize int
}

// Option configures a server of this package.
type Option func(*options)

type options struct {
	log      *slog.Logger
	listener net.Listener
	conn     net.PacketConn
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithListener makes the events sink serve on l instead of listening on
// Config.Addr. Serve closes it.
func WithListener(l net.Listener) Option { return func(o *options) { o.listener = l } }

// WithPacketConn makes the kernel log receiver read from c instead of
// listening on its Addr. Serve closes it.
func WithPacketConn(c net.PacketConn) Option { return func(o *options) { o.conn = c } }

func buildOptions(opts []Option) options {
	o := options{log: slog.New(slog.DiscardHandler)}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Server is the events sink: a gRPC EventSinkService.
type Server struct {
	eventsapi.UnimplementedEventSinkServiceServer

	cfg Config
	log *slog.Logger
	lis net.Listener

	mu   sync.Mutex
	seen *idSet

	dropped *drops
}

// New checks cfg and returns a sink; it listens only when Serve runs.
func New(cfg Config, opts ...Option) (*Server, error) {
	o := buildOptions(opts)
	if cfg.Resolver == nil || cfg.Recorder == nil {
		return nil, errors.New("new events sink: Resolver and Recorder are required")
	}
	if o.listener == nil && cfg.Addr == "" {
		return nil, errors.New("new events sink: neither a listener nor an address")
	}
	if cfg.DedupSize <= 0 {
		cfg.DedupSize = 8192
	}
	return &Server{cfg: cfg, log: o.log, lis: o.listener, seen: newIDSet(cfg.DedupSize), dropped: newDrops()}, nil
}

// Dropped returns how many events were dropped, by reason (DropUnattributed,
// DropMalformed, DropUnknownMachine; every reason is present). Events that
// say nothing about the install are ignored, not dropped.
func (s *Server) Dropped() map[string]uint64 { return s.dropped.snapshot() }

// Serve answers Talos nodes until ctx is cancelled.
func (s *Server) Serve(ctx context.Context) error {
	lis := s.lis
	if lis == nil {
		var err error
		lis, err = (&net.ListenConfig{}).Listen(ctx, "tcp", s.cfg.Addr)
		if err != nil {
			return fmt.Errorf("events sink: listen on %s: %w", s.cfg.Addr, err)
		}
	}
	gs := grpc.NewServer()
	eventsapi.RegisterEventSinkServiceServer(gs, s)
	s.log.Info("events sink listening", "addr", lis.Addr().String())
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			gs.Stop()
		case <-done:
		}
	}()
	err := gs.Serve(lis)
	close(done)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("events sink: serve on %s: %w", lis.Addr(), err)
	}
	return nil
}

// Publish implements EventSinkServiceServer. It answers OK for an event it
// saved, ignores or drops (counted by Dropped), and codes.Unavailable when
// the event could not be saved: Talos retries forever, and replays are
// dropped by event ID.
func (s *Server) Publish(ctx context.Context, req *eventsapi.EventRequest) (*eventsapi.EventResponse, error) {
	ok := &eventsapi.EventResponse{}
	name, addr, known := s.attribute(ctx)
	log := s.log.With("addr", addr.String(), "id", req.GetId())
	if !known {
		// Not remembered as seen: a replay after the address is known counts.
		s.dropped.add(DropUnattributed, 1)
		log.Debug("events sink: event from an address no machine is known at dropped")
		return ok, nil
	}
	stage, detail, relevant, err := decode(req)
	if err != nil {
		s.dropped.add(DropMalformed, 1)
		log.Debug("events sink: event payload not understood, dropped", "type", req.GetData().GetTypeUrl(), "err", err)
		return ok, nil
	}
	if !relevant {
		log.Debug("events sink: event ignored", "type", req.GetData().GetTypeUrl())
		return ok, nil
	}
	log = log.With("machine", name, "stage", stage)
	seenKey := name + "\x00" + req.GetId()
	if req.GetId() != "" && s.isSeen(seenKey) {
		log.Debug("events sink: replayed event dropped")
		return ok, nil
	}
	applied, err := s.cfg.Recorder.MarkEvent(name, req.GetId(), stage, detail)
	switch {
	case errors.Is(err, inventory.ErrUnknownMachine):
		s.dropped.add(DropUnknownMachine, 1)
		log.Warn("events sink: event of a machine the inventory does not know dropped", "err", err)
		return ok, nil
	case err != nil:
		log.Error("events sink: event not saved, Talos will send it again", "err", err)
		return nil, status.Error(codes.Unavailable, "event not saved yet, send it again")
	}
	if req.GetId() != "" {
		s.markSeen(seenKey)
	}
	if !applied {
		log.Debug("events sink: event already recorded")
		return ok, nil
	}
	log.Info("talos event", "detail", detail)
	if stage == inventory.StageInstalled && s.cfg.OnInstalled != nil {
		s.cfg.OnInstalled(name)
	}
	return ok, nil
}

// attribute names the machine the request comes from.
func (s *Server) attribute(ctx context.Context) (name string, addr netip.Addr, ok bool) {
	p, has := peer.FromContext(ctx)
	if !has {
		return "", addr, false
	}
	addr, err := peerAddr(p.Addr)
	if err != nil {
		return "", addr, false
	}
	name, ok = s.cfg.Resolver(addr)
	return name, addr, ok
}

// decode unpacks and classifies an event's payload.
func decode(req *eventsapi.EventRequest) (stage, detail string, relevant bool, err error) {
	if req.GetData() == nil {
		return "", "", false, errors.New("event without data")
	}
	msg, err := req.GetData().UnmarshalNew()
	if err != nil {
		return "", "", false, err
	}
	stage, detail, relevant = Classify(msg)
	// A config error may quote the config URL: never log its token.
	return stage, pxe.RedactTokens(detail), relevant, nil
}

func (s *Server) isSeen(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen.has(key)
}

func (s *Server) markSeen(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen.add(key)
}

func peerAddr(a net.Addr) (netip.Addr, error) {
	if a == nil {
		return netip.Addr{}, errors.New("no peer address")
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}, fmt.Errorf("parse peer address %q: %w", a.String(), err)
	}
	return ap.Addr().Unmap().WithZone(""), nil
}

// rebootMarker is how the install sequence says it finished: it ends by
// rebooting (or kexec'ing) into the installed system.
const rebootMarker = "unix.Reboot"

// Classify maps a Talos event to a stage of the inventory. relevant is false
// for events that say nothing about the install (phases, tasks, services...).
func Classify(msg proto.Message) (stage, detail string, relevant bool) {
	switch ev := msg.(type) {
	case *machine.SequenceEvent:
		seq := ev.GetSequence()
		switch {
		case ev.GetError() != nil:
			// FATAL is code 0: the presence of the error is the signal.
			if seq != "install" {
				return "", "", false
			}
			m := ev.GetError().GetMessage()
			if strings.Contains(m, rebootMarker) {
				return inventory.StageInstalled, "install done, rebooting", true
			}
			return inventory.StageInstallFailed, m, true
		case seq == "install" && ev.GetAction() == machine.SequenceEvent_START:
			return inventory.StageInstalling, "install sequence started", true
		case seq == "boot" && ev.GetAction() == machine.SequenceEvent_START:
			return inventory.StageRebooted, "boot sequence started", true
		case seq == "boot" && ev.GetAction() == machine.SequenceEvent_STOP:
			return inventory.StageRunning, "boot sequence done", true
		}
	case *machine.MachineStatusEvent:
		switch ev.GetStage() {
		case machine.MachineStatusEvent_RUNNING:
			if ev.GetStatus().GetReady() {
				return inventory.StageRunning, "machine status running, ready", true
			}
			return inventory.StageRunning, "machine status running, not ready yet", true
		case machine.MachineStatusEvent_INSTALLING:
			return inventory.StageInstalling, "machine status installing", true
		}
	case *machine.ConfigLoadErrorEvent:
		return inventory.StageConfigError, "load: " + ev.GetError(), true
	case *machine.ConfigValidationErrorEvent:
		return inventory.StageConfigError, "validate: " + ev.GetError(), true
	}
	return "", "", false
}

// idSet remembers the last n IDs, oldest forgotten first.
type idSet struct {
	ring []string
	next int
	set  map[string]struct{}
}

func newIDSet(n int) *idSet {
	return &idSet{ring: make([]string, n), set: make(map[string]struct{}, n)}
}

// has reports whether id is remembered.
func (s *idSet) has(id string) bool {
	_, ok := s.set[id]
	return ok
}

// add records id and reports whether it was new.
func (s *idSet) add(id string) bool {
	if _, ok := s.set[id]; ok {
		return false
	}
	if old := s.ring[s.next]; old != "" {
		delete(s.set, old)
	}
	s.ring[s.next] = id
	s.next = (s.next + 1) % len(s.ring)
	s.set[id] = struct{}{}
	return true
}
