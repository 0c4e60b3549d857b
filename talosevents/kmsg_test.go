package talosevents

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/inventory"
)

func TestParseKmsg(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		msgs    []string
		wantErr bool
	}{
		{"talos datagram", `{"clock":6252819,"facility":"kern","msg":"[talos] installing to /dev/nvme0n1\n","priority":"info","seq":711,"talos-level":"info","talos-time":"2026-01-02T03:04:05.123456789Z"}`, []string{"[talos] installing to /dev/nvme0n1"}, false},
		{"newline delimited", "{\"msg\":\"a\"}\n{\"msg\":\"b\"}\n", []string{"a", "b"}, false},
		{"crlf and blank lines", "\r\n{\"msg\":\"a\"}\r\n\r\n", []string{"a"}, false},
		{"one bad of two", "{\"msg\":\"a\"}\n{oops\n", []string{"a"}, true},
		{"no msg", `{"talos-level":"info"}`, nil, true},
		{"not an object", `"msg"`, nil, true},
		{"bad time", `{"msg":"a","talos-time":"yesterday"}`, nil, true},
		{"empty", "", nil, true},
		{"only newlines", "\n\n", nil, true},
		{"empty msg is fine", `{"msg":""}`, []string{""}, false},
		{"too long", `{"msg":"` + strings.Repeat("x", kmsgMaxLine) + `"}`, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseKmsg([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			var msgs []string
			for _, l := range got {
				msgs = append(msgs, l.Msg)
			}
			if strings.Join(msgs, "|") != strings.Join(tt.msgs, "|") || len(msgs) != len(tt.msgs) {
				t.Fatalf("msgs = %q, want %q", msgs, tt.msgs)
			}
		})
	}
	l, err := ParseKmsg([]byte(tests[0].in))
	if err != nil {
		t.Fatal(err)
	}
	want := KmsgLine{Msg: "[talos] installing to /dev/nvme0n1", Level: "info", Facility: "kern", Priority: "info", Seq: 711, Clock: 6252819,
		TalosTime: time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)}
	if l[0] != want {
		t.Fatalf("parsed %+v, want %+v", l[0], want)
	}
}

func FuzzKmsg(f *testing.F) {
	f.Add([]byte(`{"clock":1,"facility":"kern","msg":"x","priority":"info","seq":1,"talos-level":"info","talos-time":"2026-01-02T03:04:05Z"}`))
	f.Add([]byte("{\"msg\":\"a\"}\n{\"msg\":\"b\"}"))
	f.Add([]byte(`{"msg":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		lines, err := ParseKmsg(b)
		if err == nil && len(lines) == 0 {
			t.Fatal("no lines and no error")
		}
		for _, l := range lines {
			if strings.HasSuffix(l.Msg, "\n") {
				t.Fatalf("trailing newline kept in %q", l.Msg)
			}
		}
	})
}

func TestKmsgReceiverOverUDP(t *testing.T) {
	st := rack(t)
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fixed := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	r, err := NewKmsgReceiver(KmsgConfig{Resolver: st.ByAddr, Recorder: st, Now: func() time.Time { return fixed }}, WithPacketConn(pc))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	changes, stop := st.Subscribe()
	defer stop()

	send := func(src, payload string) {
		t.Helper()
		c, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(src)}, pc.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(payload)); err != nil {
			t.Fatal(err)
		}
	}
	// waitLogs waits (bounded) until the machine has n log lines.
	waitLogs := func(name string, n int) inventory.Machine {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			if m, _ := st.Machine(name); len(m.Logs) >= n {
				return m
			}
			select {
			case <-changes:
			case <-timeout:
				m, _ := st.Machine(name)
				t.Fatalf("%s has %d log lines, want %d", name, len(m.Logs), n)
			}
		}
	}

	send("127.0.0.1", `{"msg":"garbage`)       // dropped
	send("127.0.0.3", `{"msg":"from nobody"}`) // unknown address: dropped
	send("127.0.0.1", `{"msg":"Linux version 6.18","talos-level":"info","talos-time":"2026-01-02T03:04:05Z"}`)
	m := waitLogs("cp1", 1)
	if len(m.Logs) != 1 || m.Logs[0].Msg != "Linux version 6.18" || m.Logs[0].Level != "info" || !m.Logs[0].Time.Equal(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Fatalf("cp1 logs = %+v", m.Logs)
	}
	send("127.0.0.2", "{\"msg\":\"w1 line 1\"}\n{\"msg\":\"w1 line 2\"}\n")
	m = waitLogs("w1", 2)
	if m.Logs[0].Msg != "w1 line 1" || m.Logs[1].Msg != "w1 line 2" || !m.Logs[0].Time.Equal(fixed) {
		t.Fatalf("w1 logs = %+v", m.Logs)
	}
	if m, _ := st.Machine("cp1"); len(m.Logs) != 1 {
		t.Fatalf("cp1 got lines it should not: %+v", m.Logs)
	}
	if got := st.Stats().LogLines; got != 3 {
		t.Fatalf("LogLines = %d, want 3", got)
	}
}

func TestKmsgReceiverErrors(t *testing.T) {
	st := rack(t)
	if _, err := NewKmsgReceiver(KmsgConfig{Recorder: st, Addr: "127.0.0.1:0"}); err == nil {
		t.Fatal("no Resolver accepted")
	}
	if _, err := NewKmsgReceiver(KmsgConfig{Resolver: st.ByAddr, Recorder: st}); err == nil {
		t.Fatal("no address accepted")
	}
	busy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	r, err := NewKmsgReceiver(KmsgConfig{Resolver: st.ByAddr, Recorder: st, Addr: busy.LocalAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Serve(context.Background()); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("Serve on a busy port = %v", err)
	}
}
