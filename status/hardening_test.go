package status

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/pxe"
	"github.com/dotfile/rackboot/talosevents"
)

// TestNoTokenShown: a kernel log line quoting the config URL is shown
// without its token.
func TestNoTokenShown(t *testing.T) {
	const secret = "SECRETTOKEN"
	line := "Kernel command line: talos.config=http://10.0.0.1:8080/config?mac=02-00-00-00-00-01&t=" + secret
	st := store(t)
	st.Record(pxe.Event{Name: "cp1", Stage: pxe.StageConfig, Detail: "fetched /config?mac=x&t=" + secret})
	if err := st.AddLog("cp1", inventory.LogLine{Msg: line}); err != nil {
		t.Fatal(err)
	}
	h, err := Handler(st)
	if err != nil {
		t.Fatal(err)
	}
	_, body := get(t, serve(t, h).URL+"/api/machines")
	if strings.Contains(body, secret) || !strings.Contains(body, "t="+pxe.Redacted) {
		t.Fatalf("/api/machines: %s", body)
	}
	var out strings.Builder
	if err := WriteTable(&out, st.Machines(), t0); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), secret) {
		t.Fatalf("table: %s", out.String())
	}
}

func TestDropCounters(t *testing.T) {
	events := map[string]uint64{"unattributed": 3, "malformed": 0}
	kernel := map[string]uint64{"unattributed": 12, "malformed": 2}
	h, err := Handler(store(t), WithDropCounters(
		func() map[string]uint64 { return events },
		func() map[string]uint64 { return kernel }))
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, h)
	_, body := get(t, srv.URL+"/metrics")
	for _, want := range []string{
		`rackboot_events_dropped_total{reason="unattributed"} 3`,
		`rackboot_events_dropped_total{reason="malformed"} 0`,
		`rackboot_kernel_log_dropped_total{reason="unattributed"} 12`,
		`rackboot_kernel_log_dropped_total{reason="malformed"} 2`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	// Read at scrape time.
	events["unattributed"] = 4
	if _, body := get(t, srv.URL+"/metrics"); !strings.Contains(body, `rackboot_events_dropped_total{reason="unattributed"} 4`+"\n") {
		t.Error("counter not read again at scrape time")
	}
	// Without a kernel log receiver: only the events series.
	h, err = Handler(store(t), WithDropCounters(func() map[string]uint64 { return events }, nil))
	if err != nil {
		t.Fatal(err)
	}
	if _, body := get(t, serve(t, h).URL+"/metrics"); strings.Contains(body, "rackboot_kernel_log_dropped_total") || !strings.Contains(body, "rackboot_events_dropped_total") {
		t.Errorf("metrics with events only:\n%s", body)
	}
}

// TestDropCountersFromReceiver: a real kernel log receiver's drops reach
// /metrics.
func TestDropCountersFromReceiver(t *testing.T) {
	st := store(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r, err := talosevents.NewKmsgReceiver(talosevents.KmsgConfig{Resolver: st.ByAddr, Recorder: st}, talosevents.WithPacketConn(pc))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	h, err := Handler(st, WithDropCounters(nil, r.Dropped))
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, h)
	c, err := net.Dial("udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, d := range []string{`{"msg":"from nobody"}`, `not json`} {
		if _, err := c.Write([]byte(d)); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		`rackboot_kernel_log_dropped_total{reason="unattributed"} 1`,
		`rackboot_kernel_log_dropped_total{reason="malformed"} 1`,
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, body := get(t, srv.URL+"/metrics")
		if strings.Contains(body, want[0]+"\n") && strings.Contains(body, want[1]+"\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics lack %q:\n%s", want, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
