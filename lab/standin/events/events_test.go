package events

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	eventsapi "github.com/siderolabs/siderolink/api/events"
	sinkpkg "github.com/siderolabs/siderolink/pkg/events"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

type collector struct {
	mu     sync.Mutex
	events []sinkpkg.Event
}

func (c *collector) HandleEvent(_ context.Context, e sinkpkg.Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.events = append(c.events, e)
	return nil
}

// installed is how Sidero/Omni read an install result (TALOS.md "Meaning").
func installed(ev *machine.SequenceEvent) bool {
	return ev.GetSequence() == "install" && ev.GetAction() == machine.SequenceEvent_NOOP &&
		ev.GetError() != nil && ev.GetError().GetCode() == common.Code_FATAL &&
		strings.Contains(ev.GetError().GetMessage(), "unix.Reboot")
}

func TestPublishToSiderolinkSink(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	col := &collector{}
	srv := grpc.NewServer()
	eventsapi.RegisterEventSinkServiceServer(srv, sinkpkg.NewSink(col, []proto.Message{&machine.SequenceEvent{}}))
	go srv.Serve(lis) //nolint:errcheck
	t.Cleanup(srv.Stop)

	p, err := New(lis.Addr().String(), WithRand(bytes.NewReader(bytes.Repeat([]byte{7}, 100))))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, ev := range []*machine.SequenceEvent{SequenceStart("install"), InstallRebooting()} {
		if err := p.Publish(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if p.Sent() != 2 {
		t.Fatalf("Sent = %d", p.Sent())
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.events) != 2 {
		t.Fatalf("sink got %d events", len(col.events))
	}
	first := col.events[0].Payload.(*machine.SequenceEvent)
	last := col.events[1].Payload.(*machine.SequenceEvent)
	if first.Sequence != "install" || first.Action != machine.SequenceEvent_START || installed(first) {
		t.Errorf("first event %v", first)
	}
	if !installed(last) {
		t.Errorf("last event %v does not read as installed", last)
	}
	if col.events[0].ID != strings.Repeat("07", 10) || !strings.HasPrefix(col.events[0].Node, "127.0.0.1:") {
		t.Errorf("id %q node %q", col.events[0].ID, col.events[0].Node)
	}
	if installed(SequenceFailed("install", errors.New("no disks matched the expression"))) {
		t.Error("an install failure reads as installed")
	}
}

func TestPublishRetriesUntilContextEnds(t *testing.T) {
	// A port nobody listens on: reserve one, then close it.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var delays []time.Duration
	after := func(d time.Duration) <-chan time.Time {
		delays = append(delays, d)
		if len(delays) == 4 {
			cancel()
		}
		ch := make(chan time.Time, 1)
		ch <- time.Time{}
		return ch
	}
	p, err := New(addr, WithAfter(after), WithMaxDelay(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	err = p.Publish(ctx, SequenceStart("boot"))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish = %v, want context.Canceled", err)
	}
	if len(delays) < 4 || delays[0] != time.Second || delays[1] != 3*time.Second || delays[2] != 5*time.Second {
		t.Fatalf("delays %v, want 1s 3s 5s(capped)...", delays)
	}
}

func TestBackoff(t *testing.T) {
	for n, want := range []time.Duration{1, 3, 7, 15, 31} {
		if got := Backoff(n, time.Hour); got != want*time.Second {
			t.Errorf("Backoff(%d) = %v, want %v", n, got, want*time.Second)
		}
	}
	if got := Backoff(100, 10*time.Second); got != 10*time.Second {
		t.Errorf("Backoff(100) = %v", got)
	}
}
