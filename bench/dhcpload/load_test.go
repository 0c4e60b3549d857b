package main

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/dotfile/rackboot/pxe"
)

// startRackbootDHCP runs rackboot's real DHCP server (full mode) on a
// loopback socket and returns its address.
func startRackbootDHCP(t *testing.T, poolSize int) net.Addr {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	start := netip.MustParseAddr("10.20.0.10")
	end := start
	for range poolSize - 1 {
		end = end.Next()
	}
	srv, err := pxe.NewDHCP(pxe.DHCPConfig{
		Mode: pxe.DHCPFull, ServerIP: netip.MustParseAddr("10.20.0.1"), HTTPPort: 8080,
		Subnet: netip.MustParsePrefix("10.20.0.0/16"), RangeStart: start, RangeEnd: end,
		LeasesFile: filepath.Join(t.TempDir(), "leases.json"),
	}, pxe.WithDHCPConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("DHCP server: %v", err)
		}
	})
	return conn.LocalAddr()
}

func newTestLoader(t *testing.T, dst net.Addr) *Loader {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	l := NewLoader(c, dst, 1000)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Receive(ctx) }()
	t.Cleanup(func() {
		cancel()
		c.Close()
		if err := <-done; err != nil {
			t.Errorf("receive: %v", err)
		}
	})
	return l
}

// TestLoadAgainstRackbootDHCP runs both modes against rackboot's real DHCP
// server: every client gets its answer, and a pool too small makes the
// surplus clients fail (so failures are counted, not hidden).
func TestLoadAgainstRackbootDHCP(t *testing.T) {
	for _, mode := range []Mode{ModeDiscover, ModeDORA} {
		t.Run(string(mode), func(t *testing.T) {
			l := newTestLoader(t, startRackbootDHCP(t, 300))
			cfg := Config{Mode: mode, Clients: 200, Concurrency: 20, Timeout: time.Second, Retries: 1, MACPrefix: [2]byte{0x02, 0xb0}}
			res, err := l.Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if res.OK != 200 || res.Failed != 0 || len(res.Latencies) != 200 {
				t.Fatalf("ok %d failed %d latencies %d, want 200/0/200", res.OK, res.Failed, len(res.Latencies))
			}
			if res.Rate() <= 0 || Percentile(res.Latencies, 99) < Percentile(res.Latencies, 50) {
				t.Errorf("rate %.1f p50 %s p99 %s", res.Rate(), Percentile(res.Latencies, 50), Percentile(res.Latencies, 99))
			}
			line := res.BenchLine("DHCP/" + string(mode))
			if !strings.HasPrefix(line, "BenchmarkDHCP/"+string(mode)+" 200 ") || !strings.HasSuffix(line, " 0 failed") {
				t.Errorf("bench line %q", line)
			}
		})
	}
	t.Run("pool exhausted", func(t *testing.T) {
		l := newTestLoader(t, startRackbootDHCP(t, 5))
		cfg := Config{Mode: ModeDORA, Clients: 8, Concurrency: 1, Timeout: 100 * time.Millisecond, Retries: 0, MACPrefix: [2]byte{0x02, 0xb1}}
		res, err := l.Run(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		if res.OK != 5 || res.Failed != 3 {
			t.Fatalf("ok %d failed %d, want 5 and 3", res.OK, res.Failed)
		}
	})
}

// TestStartup times a real command that only answers after a delay: the
// figure covers the delay, and a command that never answers is an error.
func TestStartup(t *testing.T) {
	// The "server" is this test's own UDP responder, started only when the
	// command (a sleep) has run: the startup time must include the sleep.
	srvConn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srvConn.Close()
	l := newTestLoader(t, srvConn.LocalAddr())
	go func() {
		buf := make([]byte, 1500)
		for {
			n, peer, err := srvConn.ReadFrom(buf)
			if err != nil {
				return
			}
			req, err := dhcpv4.FromBytes(buf[:n])
			if err != nil {
				continue
			}
			offer, _ := dhcpv4.NewReplyFromRequest(req, dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer))
			_, _ = srvConn.WriteTo(offer.ToBytes(), peer)
		}
	}()
	d, err := l.Startup(context.Background(), exec.Command("sleep", "30"), ClientMAC([2]byte{2, 0}, 1), time.Millisecond, 5*time.Second, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if d <= 0 || d > 5*time.Second {
		t.Errorf("startup %s", d)
	}

	// A command that exits without answering.
	silent := newTestLoader(t, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
	if _, err := silent.Startup(context.Background(), exec.Command("true"), ClientMAC([2]byte{2, 0}, 2), time.Millisecond, 5*time.Second, time.Second); err == nil || !strings.Contains(err.Error(), "exited before answering") {
		t.Errorf("silent command: %v", err)
	}
}

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	for _, c := range []struct {
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{nil, 50, 0},
		{ms(7), 99, 7 * time.Millisecond},
		{ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{ms(1, 2, 3, 4), 51, 3 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
		{ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 90, 9 * time.Millisecond},
		{ms(1, 2, 3), 0, time.Millisecond},
		{ms(1, 2, 3), 100, 3 * time.Millisecond},
	} {
		if got := Percentile(c.in, c.p); got != c.want {
			t.Errorf("Percentile(%v, %v) = %s, want %s", c.in, c.p, got, c.want)
		}
	}
}

func TestConfigAndFlags(t *testing.T) {
	if err := (Config{Mode: "x", Clients: 0, Concurrency: 0, Timeout: 0, Retries: -1, MACPrefix: [2]byte{1, 0}}).Validate(); err == nil ||
		strings.Count(err.Error(), "\n") != 5 {
		t.Errorf("all six problems at once, got %v", err)
	}
	if got := ClientMAC([2]byte{2, 0xb0}, 0x01020304).String(); got != "02:b0:01:02:03:04" {
		t.Errorf("ClientMAC = %s", got)
	}
	for _, c := range []struct {
		in string
		ok bool
	}{{"02:b0", true}, {"02b0", true}, {"02:b0:01", false}, {"zz:00", false}, {"", false}} {
		if _, err := ParseMACPrefix(c.in); (err == nil) != c.ok {
			t.Errorf("ParseMACPrefix(%q): %v", c.in, err)
		}
	}
	var stderr bytes.Buffer
	for _, args := range [][]string{
		{},                                     // neither -i nor -server
		{"-i", "x", "-server", "y:1"},          // both
		{"-server", "127.0.0.1:1", "-startup"}, // no command
		{"-server", "127.0.0.1:1", "extra"},    // stray argument
	} {
		if err := run(args, &stderr, &stderr); err == nil {
			t.Errorf("run(%q) succeeded", args)
		}
	}
}

// FuzzDeliver feeds arbitrary packets to the reply demultiplexer: it must
// never panic, and a packet counts as a stray unless it answers a pending
// exchange.
func FuzzDeliver(f *testing.F) {
	disc, _ := dhcpv4.NewDiscovery(ClientMAC([2]byte{2, 0}, 1))
	offer, _ := dhcpv4.NewReplyFromRequest(disc, dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer))
	f.Add(offer.ToBytes())
	f.Add(disc.ToBytes())
	f.Add([]byte{2, 1, 6, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		l := NewLoader(nil, nil, 0)
		before := l.Strays()
		l.Deliver(b)
		if l.Strays() != before+1 {
			t.Fatalf("a packet with no pending exchange was not counted as a stray")
		}
	})
}

// TestNakRestarts: a server that NAKs each client's first REQUEST makes the
// client start over from the DISCOVER, and the run still succeeds.
func TestNakRestarts(t *testing.T) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		naked := map[string]bool{}
		buf := make([]byte, 1500)
		for {
			n, peer, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			req, err := dhcpv4.FromBytes(buf[:n])
			if err != nil {
				continue
			}
			typ := dhcpv4.MessageTypeOffer
			if req.MessageType() == dhcpv4.MessageTypeRequest {
				typ = dhcpv4.MessageTypeAck
				if !naked[req.ClientHWAddr.String()] {
					naked[req.ClientHWAddr.String()] = true
					typ = dhcpv4.MessageTypeNak
				}
			}
			reply, _ := dhcpv4.NewReplyFromRequest(req, dhcpv4.WithMessageType(typ), dhcpv4.WithYourIP(net.IPv4(10, 0, 0, 9)),
				dhcpv4.WithServerIP(net.IPv4(10, 0, 0, 1)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 0, 0, 1))))
			_, _ = srv.WriteTo(reply.ToBytes(), peer)
		}
	}()
	l := newTestLoader(t, srv.LocalAddr())
	res, err := l.Run(context.Background(), Config{Mode: ModeDORA, Clients: 5, Concurrency: 2, Timeout: time.Second, Retries: 1, MACPrefix: [2]byte{2, 0xc0}})
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 5 || l.Naks() != 5 {
		t.Errorf("ok %d naks %d, want 5 and 5", res.OK, l.Naks())
	}
	// With no retries left, a NAK is a failure.
	l2 := newTestLoader(t, srv.LocalAddr())
	res, _ = l2.Run(context.Background(), Config{Mode: ModeDORA, Clients: 3, Concurrency: 1, Timeout: time.Second, Retries: 0, MACPrefix: [2]byte{2, 0xc1}})
	if res.Failed != 3 {
		t.Errorf("failed %d, want 3", res.Failed)
	}
}

// BenchmarkRackbootDHCP drives rackboot's DHCP server in this process over
// loopback with the same load generator, so `go test -bench -cpuprofile`
// shows where the server spends its time (P3 in docs/BENCHMARKS.md).
// Each b.N is one client; 1000 clients at a time share one server, as in
// `make bench`.
func BenchmarkRackbootDHCP(b *testing.B) {
	for _, mode := range []Mode{ModeDiscover, ModeDORA} {
		b.Run(string(mode), func(b *testing.B) {
			done := 0
			for done < b.N {
				n := min(1000, b.N-done)
				b.StopTimer()
				l, stopAll := benchSetup(b, n)
				b.StartTimer()
				res, err := l.Run(context.Background(), Config{Mode: mode, Clients: n, Concurrency: 100,
					Timeout: 2 * time.Second, Retries: 4, MACPrefix: [2]byte{2, byte(done >> 10)}})
				b.StopTimer()
				stopAll()
				if err != nil || res.Failed > 0 {
					b.Fatalf("%d failed: %v", res.Failed, err)
				}
				done += n
				b.StartTimer()
			}
		})
	}
}

// benchSetup starts a fresh server (pool of 2048) and loader.
func benchSetup(b *testing.B, _ int) (*Loader, func()) {
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "dhcpbench")
	if err != nil {
		b.Fatal(err)
	}
	srv, err := pxe.NewDHCP(pxe.DHCPConfig{
		Mode: pxe.DHCPFull, ServerIP: netip.MustParseAddr("10.20.0.1"), HTTPPort: 8080,
		Subnet: netip.MustParsePrefix("10.20.0.0/20"), RangeStart: netip.MustParseAddr("10.20.1.0"), RangeEnd: netip.MustParseAddr("10.20.8.255"),
		LeasesFile: filepath.Join(dir, "leases.json"),
	}, pxe.WithDHCPConn(conn))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	_ = c.SetReadBuffer(8 << 20)
	l := NewLoader(c, conn.LocalAddr(), 1)
	rdone := make(chan error, 1)
	go func() { rdone <- l.Receive(ctx) }()
	return l, func() {
		cancel()
		c.Close()
		<-rdone
		<-done
		os.RemoveAll(dir)
	}
}
