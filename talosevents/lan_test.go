package talosevents

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	eventsapi "github.com/siderolabs/siderolink/api/events"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/dotfile/rackboot/internal/syncbuf"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/pxe"
)

// TestSinkAcknowledgesOnlySavedEvents: while machines.json cannot be
// written, Publish answers Unavailable (Talos sends the event again); once
// it can, the event is on disk when Publish answers OK, without Flush or
// Close, and OnInstalled runs once.
func TestSinkAcknowledgesOnlySavedEvents(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	st, err := inventory.Open(dir, inventory.WithFlushDelay(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	st.Record(pxe.Event{Name: "cp1", Addr: netip.MustParseAddr("127.0.0.1"), Stage: pxe.StageConfig})
	var installed atomic.Int32
	addr := startSink(t, Config{Resolver: st.ByAddr, Recorder: st, OnInstalled: func(string) { installed.Add(1) }})
	c := dialFrom(t, addr, "127.0.0.1")
	data, err := anypb.New(installedEvent())
	if err != nil {
		t.Fatal(err)
	}
	send := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.Publish(ctx, &eventsapi.EventRequest{Id: "ev-1", Data: data})
		return err
	}

	// The state dir becomes a regular file: writes fail, even as root.
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := send(); status.Code(err) != codes.Unavailable {
			t.Fatalf("attempt %d with an unwritable state dir: %v, want Unavailable", i, err)
		}
	}
	if installed.Load() != 0 {
		t.Fatal("OnInstalled ran for an event not saved")
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := send(); err != nil {
		t.Fatalf("retry once the dir is back: %v", err)
	}
	saved, err := os.ReadFile(filepath.Join(dir, inventory.FileName))
	if err != nil || !strings.Contains(string(saved), `"stage": "installed"`) || !strings.Contains(string(saved), `"id": "ev-1"`) {
		t.Fatalf("acknowledged event not on disk: %v\n%s", err, saved)
	}
	if err := send(); err != nil {
		t.Fatalf("replay: %v", err)
	}
	if n := installed.Load(); n != 1 {
		t.Fatalf("OnInstalled ran %d times, want 1", n)
	}
}

func TestSinkCountsDrops(t *testing.T) {
	st := rack(t)
	// 127.0.0.4 is attributed to a machine the inventory has never seen.
	resolver := func(a netip.Addr) (string, bool) {
		if a == netip.MustParseAddr("127.0.0.4") {
			return "ghost", true
		}
		return st.ByAddr(a)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Resolver: resolver, Recorder: st}, WithListener(lis))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{DropUnattributed: 0, DropMalformed: 0, DropUnknownMachine: 0}
	if got := s.Dropped(); !maps.Equal(got, want) {
		t.Fatalf("Dropped before any event = %v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	known := dialFrom(t, lis.Addr().String(), "127.0.0.1")
	stranger := dialFrom(t, lis.Addr().String(), "127.0.0.3")
	ghost := dialFrom(t, lis.Addr().String(), "127.0.0.4")
	publish(t, stranger, "a1", installedEvent())
	publish(t, stranger, "a2", &machine.PhaseEvent{Phase: "x"})
	publishAny(t, known, "b1", &anypb.Any{TypeUrl: "type.googleapis.com/machine.SequenceEvent", Value: []byte{0xff, 0xff}})
	publishAny(t, known, "b2", nil)
	publish(t, known, "b3", &machine.PhaseEvent{Phase: "x"}) // ignored, not dropped
	publish(t, ghost, "c1", installedEvent())
	want = map[string]uint64{DropUnattributed: 2, DropMalformed: 2, DropUnknownMachine: 1}
	if got := s.Dropped(); !maps.Equal(got, want) {
		t.Fatalf("Dropped = %v, want %v", got, want)
	}
}

func TestKmsgCountsDrops(t *testing.T) {
	st := rack(t)
	resolver := func(a netip.Addr) (string, bool) {
		if a == netip.MustParseAddr("127.0.0.4") {
			return "ghost", true
		}
		return st.ByAddr(a)
	}
	r, err := NewKmsgReceiver(KmsgConfig{Resolver: resolver, Recorder: st, Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	from := func(ip string) net.Addr { return &net.UDPAddr{IP: net.ParseIP(ip), Port: 5000} }
	r.handle([]byte(`{"msg":"garbage`), from("127.0.0.1"))
	r.handle(nil, from("127.0.0.1"))
	r.handle([]byte("{\"msg\":\"ok\"}\nnot json\n{\"nomsg\":1}\n"), from("127.0.0.1"))
	r.handle([]byte("{\"msg\":\"a\"}\n{\"msg\":\"b\"}\n"), from("127.0.0.3"))
	r.handle([]byte(`{"msg":"c"}`), from("127.0.0.4"))
	r.handle([]byte(`{"msg":"d"}`), &net.UnixAddr{Name: "@x", Net: "unixgram"})
	want := map[string]uint64{DropMalformed: 4, DropUnattributed: 3, DropUnknownMachine: 1}
	if got := r.Dropped(); !maps.Equal(got, want) {
		t.Fatalf("Dropped = %v, want %v", got, want)
	}
	if m, _ := st.Machine("cp1"); len(m.Logs) != 1 || m.Logs[0].Msg != "ok" {
		t.Fatalf("cp1 logs = %+v", m.Logs)
	}
}

// TestSinkRedactsTokens: a config error quoting the config URL is stored
// and logged without its token.
func TestSinkRedactsTokens(t *testing.T) {
	const secret = "SECRETTOKEN"
	st := rack(t)
	var logs syncbuf.Buffer
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Resolver: st.ByAddr, Recorder: st}, WithListener(lis),
		WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	c := dialFrom(t, lis.Addr().String(), "127.0.0.1")
	publish(t, c, "e1", &machine.ConfigLoadErrorEvent{Error: "fetch http://10.0.0.1:8080/config?mac=02-00-00-00-00-01&t=" + secret + ": 403"})
	cancel()
	<-done
	m, _ := st.Machine("cp1")
	if m.Stage != inventory.StageConfigError || strings.Contains(m.Detail, secret) || !strings.Contains(m.Detail, "t="+pxe.Redacted) {
		t.Fatalf("cp1 = %+v", m)
	}
	if strings.Contains(logs.String(), secret) || !strings.Contains(logs.String(), "talos event") {
		t.Fatalf("logs:\n%s", logs.String())
	}
}
