package kmsglog

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/dotfile/rackboot/talosevents"
)

func TestParse(t *testing.T) {
	r, err := Parse("6,339,5140900,-;NET: Registered protocol family 10\n SUBSYSTEM=net\n")
	if err != nil {
		t.Fatal(err)
	}
	if r != (Record{Facility: 0, Priority: 6, Seq: 339, Clock: 5140900, Msg: "NET: Registered protocol family 10"}) {
		t.Errorf("parsed %+v", r)
	}
	r, err = Parse("30,7,12,c,more;user message")
	if err != nil || r.Facility != 3 || r.Priority != 6 || r.Msg != "user message" {
		t.Errorf("parsed %+v %v", r, err)
	}
	for _, bad := range []string{"", "no prefix", "6,1;short prefix", "x,1,2,-;bad number"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// The JSON must be what rackboot's receiver (talosevents.ParseKmsg, written
// against Talos's sender) reads.
func TestJSONReadByReceiver(t *testing.T) {
	boot := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	b, err := Record{Facility: 0, Priority: 4, Seq: 9, Clock: 1500000, Msg: "e1000: eth0 NIC Link is Up"}.JSON(boot)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := talosevents.ParseKmsg(b)
	if err != nil || len(lines) != 1 {
		t.Fatalf("ParseKmsg(%s) = %+v, %v", b, lines, err)
	}
	l := lines[0]
	if l.Msg != "e1000: eth0 NIC Link is Up" || l.Level != "warn" || l.Facility != "kern" || l.Priority != "warning" || l.Seq != 9 || l.Clock != 1500000 || !l.TalosTime.Equal(boot.Add(1500*time.Millisecond)) {
		t.Errorf("received %+v from %s", l, b)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil || len(m) != 7 {
		t.Errorf("%s: %d keys, want Talos's 7 (%v)", b, len(m), err)
	}
}

// Stream sends each record of the file as one datagram; a regular file
// ends with EOF, which ends Stream.
func TestStreamUDP(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	// A regular file returns everything in one read: one record.
	p := filepath.Join(t.TempDir(), "kmsg")
	if err := os.WriteFile(p, []byte("6,1,100,-;hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	n, err := Stream(context.Background(), slog.New(slog.DiscardHandler), p, []string{"udp://" + pc.LocalAddr().String(), "http://bad"})
	if n != 1 || err == nil {
		t.Fatalf("Stream = %d, %v; want 1 record, then EOF", n, err)
	}
	buf := make([]byte, 2048)
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	k, _, err := pc.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	lines, err := talosevents.ParseKmsg(buf[:k])
	if err != nil || len(lines) != 1 || lines[0].Msg != "hello" {
		t.Errorf("got %s: %+v %v", buf[:k], lines, err)
	}
}
