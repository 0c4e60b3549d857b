// Package events sends Talos machine events to a talos.events.sink the way
// Talos does: gRPC /events.EventSinkService/Publish (siderolink api/events),
// plain text, one EventRequest per event with the payload as an Any.
package events

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"time"

	eventsapi "github.com/siderolabs/siderolink/api/events"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Publisher publishes events to one sink.
type Publisher struct {
	conn   *grpc.ClientConn
	client eventsapi.EventSinkServiceClient
	log    *slog.Logger
	rand   io.Reader
	after  func(time.Duration) <-chan time.Time
	// MaxDelay caps the retry backoff.
	maxDelay time.Duration
	sent     int
}

// Option configures a Publisher.
type Option func(*Publisher)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(p *Publisher) { p.log = l } }

// WithRand sets the randomness used for event IDs (default crypto/rand).
func WithRand(r io.Reader) Option { return func(p *Publisher) { p.rand = r } }

// WithAfter sets the timer used between retries (default time.After).
func WithAfter(f func(time.Duration) <-chan time.Time) Option {
	return func(p *Publisher) { p.after = f }
}

// WithMaxDelay caps the retry backoff (default 2 s: a lab, not a rack).
func WithMaxDelay(d time.Duration) Option { return func(p *Publisher) { p.maxDelay = d } }

// New prepares a publisher for the sink at addr (host:port, IPv6 as
// [addr]:port). The connection is made on the first Publish.
func New(addr string, opts ...Option) (*Publisher, error) {
	p := &Publisher{
		log:      slog.New(slog.DiscardHandler),
		rand:     rand.Reader,
		after:    time.After,
		maxDelay: 2 * time.Second,
	}
	for _, o := range opts {
		o(p)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("events sink %s: %w", addr, err)
	}
	p.conn = conn
	p.client = eventsapi.NewEventSinkServiceClient(conn)
	return p, nil
}

// Close closes the connection.
func (p *Publisher) Close() error { return p.conn.Close() }

// Sent is the number of events the sink acknowledged.
func (p *Publisher) Sent() int { return p.sent }

// Publish sends one event, retrying with a capped exponential backoff
// until the sink acknowledges it or ctx ends (Talos retries forever).
func (p *Publisher) Publish(ctx context.Context, msg proto.Message) error {
	data, err := anypb.New(msg)
	if err != nil {
		return fmt.Errorf("wrap event %T: %w", msg, err)
	}
	id, err := p.newID()
	if err != nil {
		return err
	}
	req := &eventsapi.EventRequest{Id: id, Data: data}
	for attempt := 0; ; attempt++ {
		_, err := p.client.Publish(ctx, req)
		if err == nil {
			p.sent++
			p.log.Debug("event published", "id", id, "type", data.TypeUrl)
			return nil
		}
		delay := Backoff(attempt, p.maxDelay)
		p.log.Warn("publish event failed, retrying", "id", id, "type", data.TypeUrl, "attempt", attempt+1, "delay", delay, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("publish event %s (%s): %w (last error: %w)", id, data.TypeUrl, ctx.Err(), err)
		case <-p.after(delay):
		}
	}
}

// newID makes a 20-character event ID (Talos uses 20-character xids).
func (p *Publisher) newID() (string, error) {
	var b [10]byte
	if _, err := io.ReadFull(p.rand, b[:]); err != nil {
		return "", fmt.Errorf("event id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// Backoff is Talos's retry delay for attempt n (0-based): 1, 3, 7, 15 s...
// ((2^(n+1)-1) s, go-retry's exponential with 1 s units, without jitter),
// capped at max.
func Backoff(n int, max time.Duration) time.Duration {
	if n < 0 {
		n = 0
	}
	if n > 30 {
		return max
	}
	d := time.Duration(1<<(n+1)-1) * time.Second
	if d > max {
		return max
	}
	return d
}

// The sequence events the stand-in sends (machined's v1alpha1 controller
// emits the same: START when a sequence begins, STOP when it ends, NOOP with
// an error when it fails).

// SequenceStart is a sequence's START event.
func SequenceStart(seq string) *machine.SequenceEvent {
	return &machine.SequenceEvent{Sequence: seq, Action: machine.SequenceEvent_START}
}

// SequenceStop is a sequence's STOP event.
func SequenceStop(seq string) *machine.SequenceEvent {
	return &machine.SequenceEvent{Sequence: seq, Action: machine.SequenceEvent_STOP}
}

// SequenceFailed is the NOOP/FATAL event of a failed sequence, with Talos's
// "sequence failed: " message prefix.
func SequenceFailed(seq string, err error) *machine.SequenceEvent {
	return &machine.SequenceEvent{
		Sequence: seq,
		Action:   machine.SequenceEvent_NOOP,
		Error:    &common.Error{Code: common.Code_FATAL, Message: "sequence failed: " + err.Error()},
	}
}

// RebootCmdRestart is LINUX_REBOOT_CMD_RESTART, which Talos formats with
// %x in its reboot "error".
const RebootCmdRestart = 0x1234567

// InstallRebooting is the event that means "installed, about to reboot":
// the install sequence ends with Talos's RebootError, which machined reports
// as a failed sequence whose message contains "unix.Reboot".
func InstallRebooting() *machine.SequenceEvent {
	return SequenceFailed("install", fmt.Errorf("error running phase 6 in install sequence: task 1/1: failed, unix.Reboot(%x)", RebootCmdRestart))
}

// ConfigLoadError is the event machined's config AcquireController
// publishes when acquiring the config fails, validation and runtime
// validation included (internal/app/machined/pkg/controllers/config/
// acquire.go). Talos v1.13 never sends ConfigValidationErrorEvent.
func ConfigLoadError(err error) *machine.ConfigLoadErrorEvent {
	return &machine.ConfigLoadErrorEvent{Error: err.Error()}
}

// MachineStatus is a MachineStatusEvent at stage (not ready: the stand-in
// runs no services).
func MachineStatus(stage machine.MachineStatusEvent_MachineStage) *machine.MachineStatusEvent {
	return &machine.MachineStatusEvent{Stage: stage, Status: &machine.MachineStatusEvent_MachineStatus{Ready: false}}
}
