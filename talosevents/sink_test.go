package talosevents

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	eventsapi "github.com/siderolabs/siderolink/api/events"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/pxe"
)

func installedEvent() *machine.SequenceEvent {
	return &machine.SequenceEvent{
		Sequence: "install",
		Action:   machine.SequenceEvent_NOOP,
		Error:    &common.Error{Code: common.Code_FATAL, Message: "error running phase 3 in install sequence: task 1/1: failed, unix.Reboot: no such device"},
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name     string
		msg      proto.Message
		stage    string
		relevant bool
	}{
		{"install start", &machine.SequenceEvent{Sequence: "install", Action: machine.SequenceEvent_START}, inventory.StageInstalling, true},
		{"install stop", &machine.SequenceEvent{Sequence: "install", Action: machine.SequenceEvent_STOP}, "", false},
		{"installed", installedEvent(), inventory.StageInstalled, true},
		{"install failed", &machine.SequenceEvent{Sequence: "install", Error: &common.Error{Code: common.Code_FATAL, Message: "no disks matched the expression"}}, inventory.StageInstallFailed, true},
		{"install NOOP without error", &machine.SequenceEvent{Sequence: "install", Action: machine.SequenceEvent_NOOP}, "", false},
		{"boot error is not install", &machine.SequenceEvent{Sequence: "boot", Error: &common.Error{Message: "unix.Reboot"}}, "", false},
		{"boot start", &machine.SequenceEvent{Sequence: "boot", Action: machine.SequenceEvent_START}, inventory.StageRebooted, true},
		{"boot stop", &machine.SequenceEvent{Sequence: "boot", Action: machine.SequenceEvent_STOP}, inventory.StageRunning, true},
		{"initialize start", &machine.SequenceEvent{Sequence: "initialize", Action: machine.SequenceEvent_START}, "", false},
		{"status running", &machine.MachineStatusEvent{Stage: machine.MachineStatusEvent_RUNNING, Status: &machine.MachineStatusEvent_MachineStatus{Ready: true}}, inventory.StageRunning, true},
		{"status installing", &machine.MachineStatusEvent{Stage: machine.MachineStatusEvent_INSTALLING}, inventory.StageInstalling, true},
		{"status booting", &machine.MachineStatusEvent{Stage: machine.MachineStatusEvent_BOOTING}, "", false},
		{"config load error", &machine.ConfigLoadErrorEvent{Error: "bad yaml"}, inventory.StageConfigError, true},
		{"config validation error", &machine.ConfigValidationErrorEvent{Error: "bad"}, inventory.StageConfigError, true},
		{"phase", &machine.PhaseEvent{Phase: "install", Action: machine.PhaseEvent_START}, "", false},
		{"address", &machine.AddressEvent{Hostname: "x"}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stage, _, relevant := Classify(tt.msg)
			if stage != tt.stage || relevant != tt.relevant {
				t.Fatalf("Classify = %q %v, want %q %v", stage, relevant, tt.stage, tt.relevant)
			}
		})
	}
}

// rack is a real inventory with two machines, one per loopback address.
func rack(t *testing.T) *inventory.Store {
	t.Helper()
	st, err := inventory.Open(t.TempDir(), inventory.WithFlushDelay(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	st.Record(pxe.Event{Name: "cp1", MAC: mustMAC("02:00:00:00:00:01"), Addr: netip.MustParseAddr("127.0.0.1"), Stage: pxe.StageConfig})
	st.Record(pxe.Event{Name: "w1", MAC: mustMAC("02:00:00:00:00:02"), Addr: netip.MustParseAddr("127.0.0.2"), Stage: pxe.StageConfig})
	return st
}

func mustMAC(s string) net.HardwareAddr {
	hw, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return hw
}

// startSink runs a sink on 127.0.0.1:0 until the test ends.
func startSink(t *testing.T, cfg Config) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg, WithListener(lis))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

// dialFrom opens the generated siderolink client from a given loopback
// source address, as a Talos node would (plain gRPC, no TLS).
func dialFrom(t *testing.T, target, src string) eventsapi.EventSinkServiceClient {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	conn, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", addr)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return eventsapi.NewEventSinkServiceClient(conn)
}

// publish sends msg packed like Talos does (anypb.New) and requires OK.
func publish(t *testing.T, c eventsapi.EventSinkServiceClient, id string, msg proto.Message) {
	t.Helper()
	data, err := anypb.New(msg)
	if err != nil {
		t.Fatal(err)
	}
	publishAny(t, c, id, data)
}

func publishAny(t *testing.T, c eventsapi.EventSinkServiceClient, id string, data *anypb.Any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Publish(ctx, &eventsapi.EventRequest{Id: id, Data: data, ActorId: "actor"}); err != nil {
		t.Fatalf("Publish %s: %v (want OK)", id, err)
	}
}

func stages(m inventory.Machine) []string {
	var out []string
	for _, e := range m.Timeline {
		out = append(out, e.Stage)
	}
	return out
}

func TestSinkInstallFlow(t *testing.T) {
	st := rack(t)
	var (
		mu        sync.Mutex
		installed []string
	)
	addr := startSink(t, Config{
		Resolver: st.ByAddr,
		Recorder: st,
		OnInstalled: func(name string) {
			mu.Lock()
			installed = append(installed, name)
			mu.Unlock()
		},
	})
	cp1 := dialFrom(t, addr, "127.0.0.1")
	w1 := dialFrom(t, addr, "127.0.0.2")

	// What a Talos node sends during an install, in order, with xid-like IDs.
	flow := []struct {
		id  string
		msg proto.Message
	}{
		{"d1a0000000000000000a", &machine.SequenceEvent{Sequence: "initialize", Action: machine.SequenceEvent_START}},
		{"d1a0000000000000000b", &machine.PhaseEvent{Phase: "install", Action: machine.PhaseEvent_START}},
		{"d1a0000000000000000c", &machine.SequenceEvent{Sequence: "install", Action: machine.SequenceEvent_START}},
		{"d1a0000000000000000d", &machine.TaskEvent{Task: "install", Action: machine.TaskEvent_START}},
		{"d1a0000000000000000e", installedEvent()},
	}
	for _, ev := range flow {
		publish(t, cp1, ev.id, ev.msg)
	}
	// Talos reconnects and replays its ring: nothing changes.
	for _, ev := range flow {
		publish(t, cp1, ev.id, ev.msg)
	}
	m, _ := st.Machine("cp1")
	if want := []string{pxe.StageConfig, inventory.StageInstalling, inventory.StageInstalled}; !slices.Equal(stages(m), want) {
		t.Fatalf("timeline %v, want %v", stages(m), want)
	}
	if !st.Installed("cp1") || st.Installed("w1") {
		t.Fatal("installed flag on the wrong machine")
	}
	mu.Lock()
	if !slices.Equal(installed, []string{"cp1"}) {
		t.Fatalf("OnInstalled calls %v, want exactly [cp1]", installed)
	}
	mu.Unlock()

	// After the kexec: boot sequence and machine status.
	publish(t, cp1, "d1a0000000000000000f", &machine.SequenceEvent{Sequence: "boot", Action: machine.SequenceEvent_START})
	m, _ = st.Machine("cp1")
	if m.Stage != inventory.StageRebooted {
		t.Fatalf("stage %q after boot START", m.Stage)
	}
	publish(t, cp1, "d1a0000000000000000g", &machine.MachineStatusEvent{Stage: machine.MachineStatusEvent_RUNNING, Status: &machine.MachineStatusEvent_MachineStatus{Ready: true}})
	m, _ = st.Machine("cp1")
	if m.Stage != inventory.StageRunning || !m.Installed {
		t.Fatalf("machine %+v after RUNNING", m)
	}

	// The other machine fails its install, from its own address.
	publish(t, w1, "e000000000000000000a", &machine.SequenceEvent{Sequence: "install", Error: &common.Error{Code: common.Code_FATAL, Message: "no disks matched the expression"}})
	m, _ = st.Machine("w1")
	if m.Stage != inventory.StageInstallFailed || m.Detail != "no disks matched the expression" || m.Installed {
		t.Fatalf("w1 = %+v", m)
	}
	mu.Lock()
	if len(installed) != 1 {
		t.Fatalf("OnInstalled called for a failed install: %v", installed)
	}
	mu.Unlock()
}

func TestSinkAlwaysOK(t *testing.T) {
	st := rack(t)
	addr := startSink(t, Config{Resolver: st.ByAddr, Recorder: st})
	c := dialFrom(t, addr, "127.0.0.1")
	before, _ := st.Machine("cp1")

	// A known type with garbage bytes, an unknown type, no data at all.
	publishAny(t, c, "g1", &anypb.Any{TypeUrl: "type.googleapis.com/machine.SequenceEvent", Value: []byte{0xff, 0xff, 0xff}})
	publishAny(t, c, "g2", &anypb.Any{TypeUrl: "type.googleapis.com/acme.Unknown", Value: []byte("x")})
	publishAny(t, c, "g3", nil)
	// An event from an address no machine is at.
	other := dialFrom(t, addr, "127.0.0.3")
	publish(t, other, "g4", installedEvent())

	after, _ := st.Machine("cp1")
	if !slices.Equal(stages(before), stages(after)) || st.Installed("cp1") {
		t.Fatalf("garbage changed the inventory: %v -> %v", stages(before), stages(after))
	}
	if n := len(st.Machines()); n != 2 {
		t.Fatalf("%d machines, want 2", n)
	}
}

func TestSinkUnknownThenKnown(t *testing.T) {
	st, err := inventory.Open(t.TempDir(), inventory.WithFlushDelay(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	addr := startSink(t, Config{Resolver: st.ByAddr, Recorder: st})
	c := dialFrom(t, addr, "127.0.0.1")
	publish(t, c, "x1", &machine.SequenceEvent{Sequence: "install", Action: machine.SequenceEvent_START})
	// The machine becomes known; Talos replays the same event: it now counts.
	st.Record(pxe.Event{Name: "cp1", Addr: netip.MustParseAddr("127.0.0.1"), Stage: pxe.StageConfig})
	publish(t, c, "x1", &machine.SequenceEvent{Sequence: "install", Action: machine.SequenceEvent_START})
	if m, _ := st.Machine("cp1"); m.Stage != inventory.StageInstalling {
		t.Fatalf("stage %q, want installing", m.Stage)
	}
}

func TestNewAndServeErrors(t *testing.T) {
	st := rack(t)
	if _, err := New(Config{Recorder: st, Addr: "127.0.0.1:0"}); err == nil {
		t.Fatal("New without a Resolver succeeded")
	}
	if _, err := New(Config{Resolver: st.ByAddr, Recorder: st}); err == nil {
		t.Fatal("New without an address succeeded")
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	s, err := New(Config{Resolver: st.ByAddr, Recorder: st, Addr: busy.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(context.Background()); err == nil {
		t.Fatal("Serve on a busy port succeeded")
	}
	// Serve on its own address stops on cancel.
	s, err = New(Config{Resolver: st.ByAddr, Recorder: st, Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Serve(ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Serve after cancel: %v", err)
	}
}

func TestIDSetForgetsOldest(t *testing.T) {
	s := newIDSet(3)
	for i := range 5 {
		if !s.add(fmt.Sprint(i)) {
			t.Fatalf("%d reported as seen", i)
		}
	}
	if s.add("4") || s.add("2") {
		t.Fatal("recent id not remembered")
	}
	if !s.add("0") {
		t.Fatal("oldest id not forgotten")
	}
	if len(s.set) != 3 {
		t.Fatalf("set holds %d ids, want 3", len(s.set))
	}
}

// TestSinkReplayAfterRestart: rackboot restarts (new sink, inventory
// reloaded from disk) and Talos replays its whole ring.
func TestSinkReplayAfterRestart(t *testing.T) {
	dir := t.TempDir()
	st, err := inventory.Open(dir, inventory.WithFlushDelay(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	st.Record(pxe.Event{Name: "cp1", Addr: netip.MustParseAddr("127.0.0.1"), Stage: pxe.StageConfig})
	calls := 0
	onInstalled := func(string) { calls++ }
	flow := []struct {
		id  string
		msg proto.Message
	}{
		{"r1", &machine.SequenceEvent{Sequence: "install", Action: machine.SequenceEvent_START}},
		{"r2", installedEvent()},
		{"r3", &machine.SequenceEvent{Sequence: "boot", Action: machine.SequenceEvent_START}},
	}
	func() {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(Config{Resolver: st.ByAddr, Recorder: st, OnInstalled: onInstalled}, WithListener(lis))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx) }()
		c := dialFrom(t, lis.Addr().String(), "127.0.0.1")
		for _, ev := range flow {
			publish(t, c, ev.id, ev.msg)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st2, err := inventory.Open(dir, inventory.WithFlushDelay(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	addr := startSink(t, Config{Resolver: st2.ByAddr, Recorder: st2, OnInstalled: onInstalled})
	c := dialFrom(t, addr, "127.0.0.1")
	for _, ev := range flow {
		publish(t, c, ev.id, ev.msg)
	}
	m, _ := st2.Machine("cp1")
	if want := []string{pxe.StageConfig, inventory.StageInstalling, inventory.StageInstalled, inventory.StageRebooted}; !slices.Equal(stages(m), want) {
		t.Fatalf("timeline after restart and replay %v, want %v", stages(m), want)
	}
	if calls != 1 {
		t.Fatalf("OnInstalled called %d times, want 1", calls)
	}
}
