package pxe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
)

// events collects what the server records.
type events struct {
	mu  sync.Mutex
	all []Event
}

func (e *events) Record(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, ev)
}

func (e *events) stages(stage string) []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Event
	for _, ev := range e.all {
		if ev.Stage == stage {
			out = append(out, ev)
		}
	}
	return out
}

func loopbackConn(t testing.TB) net.PacketConn {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func fullConfig() DHCPConfig {
	return DHCPConfig{
		Mode:       DHCPFull,
		ServerIP:   netip.MustParseAddr("10.99.0.1"),
		HTTPPort:   8080,
		Subnet:     netip.MustParsePrefix("10.99.0.0/24"),
		RangeStart: netip.MustParseAddr("10.99.0.100"),
		RangeEnd:   netip.MustParseAddr("10.99.0.103"),
		DNS:        []netip.Addr{netip.MustParseAddr("10.99.0.1")},
		LeaseTime:  time.Hour,
	}
}

// newTestDHCP builds a server on loopback sockets (unused by handler tests).
func newTestDHCP(t testing.TB, cfg DHCPConfig, clk *fakeClock, rec Recorder) *DHCPServer {
	t.Helper()
	opts := []DHCPOption{WithDHCPConn(loopbackConn(t)), WithDHCPLogger(testLogger(t)), WithDHCPClock(clk.Now)}
	if cfg.Mode != DHCPFull {
		opts = append(opts, WithBootServerConn(loopbackConn(t)))
	}
	if rec != nil {
		opts = append(opts, WithDHCPRecorder(rec))
	}
	s, err := NewDHCP(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func pkt(t testing.TB, mac net.HardwareAddr, mt dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.NewDiscovery(mac, append([]dhcpv4.Modifier{dhcpv4.WithMessageType(mt)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	if m, err = dhcpv4.FromBytes(m.ToBytes()); err != nil {
		t.Fatal(err)
	}
	return m
}

func withRequested(a string) dhcpv4.Modifier {
	return dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP(a)))
}

var ourID = dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 99, 0, 1)))

func TestDHCPConfig(t *testing.T) {
	tests := []struct {
		name string
		edit func(*DHCPConfig)
		bad  string // part of the error, "" = valid
	}{
		{"full ok", func(*DHCPConfig) {}, ""},
		{"proxy ok", func(c *DHCPConfig) { *c = DHCPConfig{ServerIP: c.ServerIP, HTTPPort: 80} }, ""},
		{"off needs nothing", func(c *DHCPConfig) { *c = DHCPConfig{Mode: DHCPOff} }, ""},
		{"bad mode", func(c *DHCPConfig) { c.Mode = "fast" }, "want proxy, full or off"},
		{"no server ip", func(c *DHCPConfig) { c.ServerIP = netip.Addr{} }, "server IP"},
		{"bad port", func(c *DHCPConfig) { c.HTTPPort = 0 }, "HTTP port"},
		{"server outside", func(c *DHCPConfig) { c.ServerIP = netip.MustParseAddr("10.98.0.1") }, "outside subnet"},
		{"range reversed", func(c *DHCPConfig) { c.RangeStart, c.RangeEnd = c.RangeEnd, c.RangeStart }, "first not above"},
		{"range outside", func(c *DHCPConfig) { c.RangeEnd = netip.MustParseAddr("10.99.1.5") }, "not inside subnet"},
		{"range has broadcast", func(c *DHCPConfig) { c.RangeEnd = netip.MustParseAddr("10.99.0.255") }, "broadcast"},
		{"router outside", func(c *DHCPConfig) { c.Router = netip.MustParseAddr("192.168.1.1") }, "router"},
		{"no subnet", func(c *DHCPConfig) { c.Subnet = netip.Prefix{} }, "subnet"},
		{"short lease", func(c *DHCPConfig) { c.LeaseTime = time.Second }, "lease time"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fullConfig()
			tt.edit(&cfg)
			_, err := cfg.withDefaults()
			if (tt.bad == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.bad)) {
				t.Fatalf("withDefaults() = %v, want error containing %q", err, tt.bad)
			}
		})
	}
	// All problems at once.
	cfg := fullConfig()
	cfg.ServerIP, cfg.HTTPPort = netip.Addr{}, -1
	if _, err := cfg.withDefaults(); err == nil || !strings.Contains(err.Error(), "server IP") || !strings.Contains(err.Error(), "HTTP port") {
		t.Fatalf("want both problems, got %v", err)
	}
}

func TestParseDHCPRange(t *testing.T) {
	s, e, err := ParseDHCPRange("10.99.0.100-10.99.0.199")
	if err != nil || s != netip.MustParseAddr("10.99.0.100") || e != netip.MustParseAddr("10.99.0.199") {
		t.Fatalf("%v %v %v", s, e, err)
	}
	for _, bad := range []string{"", "10.99.0.100", "10.99.0.9-10.99.0.1", "a-b", "fd00::1-fd00::2", "10.99.0.1-"} {
		if _, _, err := ParseDHCPRange(bad); err == nil {
			t.Errorf("ParseDHCPRange(%q) accepted", bad)
		}
	}
}

func TestProxyHandler(t *testing.T) {
	clk := newFakeClock()
	var rec events
	s := newTestDHCP(t, DHCPConfig{ServerIP: testServer, HTTPPort: 8080}, clk, &rec)
	tests := []struct {
		name       string
		mt         dhcpv4.MessageType
		bootServer bool
		mods       []dhcpv4.Modifier
		want       dhcpv4.MessageType // 0: no reply
		file       string
	}{
		{"bios discover", dhcpv4.MessageTypeDiscover, false, []dhcpv4.Modifier{vcBIOS, arch93(0)}, dhcpv4.MessageTypeOffer, "undionly.kpxe"},
		{"uefi discover", dhcpv4.MessageTypeDiscover, false, []dhcpv4.Modifier{vcEFI, arch93(7)}, dhcpv4.MessageTypeOffer, "ipxe.efi"},
		{"ipxe discover", dhcpv4.MessageTypeDiscover, false, []dhcpv4.Modifier{vcEFI, arch93(7), ucIPXE}, dhcpv4.MessageTypeOffer, "http://10.99.0.1:8080/boot.ipxe"},
		{"non-pxe discover", dhcpv4.MessageTypeDiscover, false, nil, 0, ""},
		{"32-bit uefi", dhcpv4.MessageTypeDiscover, false, []dhcpv4.Modifier{vcEFI, arch93(6)}, 0, ""},
		{"request on 67 is the router's", dhcpv4.MessageTypeRequest, false, []dhcpv4.Modifier{vcBIOS, arch93(0)}, 0, ""},
		{"request on 4011", dhcpv4.MessageTypeRequest, true, []dhcpv4.Modifier{vcBIOS, arch93(0)}, dhcpv4.MessageTypeAck, "undionly.kpxe"},
		{"discover on 4011", dhcpv4.MessageTypeDiscover, true, []dhcpv4.Modifier{vcBIOS, arch93(0)}, 0, ""},
		{"non-pxe on 4011", dhcpv4.MessageTypeRequest, true, nil, 0, ""},
		{"release", dhcpv4.MessageTypeRelease, false, []dhcpv4.Modifier{vcBIOS}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := s.handle(pkt(t, testMAC, tt.mt, tt.mods...), tt.bootServer)
			if tt.want == 0 {
				if r != nil {
					t.Fatalf("unexpected reply %s", r.Summary())
				}
				return
			}
			if r == nil {
				t.Fatal("no reply")
			}
			if r.MessageType() != tt.want || r.BootFileName != tt.file || !r.YourIPAddr.Equal(net.IPv4zero) {
				t.Fatalf("reply %s", r.Summary())
			}
		})
	}
	// A BOOTREPLY (another server's) is never answered.
	reply := pkt(t, testMAC, dhcpv4.MessageTypeDiscover, vcBIOS)
	reply.OpCode = dhcpv4.OpcodeBootReply
	if s.handle(reply, false) != nil {
		t.Error("answered a BOOTREPLY")
	}
	got := rec.stages(StageDHCP)
	if len(got) != 4 {
		t.Fatalf("recorded %d dhcp events, want 4 (3 offers + 1 ack): %+v", len(got), got)
	}
	if !strings.Contains(got[0].Detail, "arch bios") || !strings.Contains(got[0].Detail, "undionly.kpxe") || got[0].MAC.String() != testMAC.String() {
		t.Errorf("event %+v", got[0])
	}
}

func TestIgnoreTracker(t *testing.T) {
	t0 := newFakeClock().Now()
	type step struct {
		at       time.Duration
		mac      string
		followed bool
		want     bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"four in window", []step{{0, "a", false, false}, {4 * time.Second, "a", false, false}, {12 * time.Second, "a", false, false}, {28 * time.Second, "a", false, true}, {60 * time.Second, "a", false, false}}},
		{"followed resets", []step{{0, "a", false, false}, {time.Second, "a", false, false}, {2 * time.Second, "a", false, false}, {3 * time.Second, "a", true, false}, {4 * time.Second, "a", false, false}, {5 * time.Second, "a", false, false}}},
		{"spread beyond window", []step{{0, "a", false, false}, {50 * time.Second, "a", false, false}, {100 * time.Second, "a", false, false}, {150 * time.Second, "a", false, false}}},
		{"per mac", []step{{0, "a", false, false}, {0, "b", false, false}, {time.Second, "a", false, false}, {time.Second, "b", false, false}, {2 * time.Second, "a", false, false}, {3 * time.Second, "a", false, true}, {3 * time.Second, "b", false, false}}},
		{"again after a new run", []step{{0, "a", false, false}, {1, "a", false, false}, {2, "a", false, false}, {3, "a", false, true}, {5 * time.Minute, "a", false, false}, {5*time.Minute + 1, "a", false, false}, {5*time.Minute + 2, "a", false, false}, {5*time.Minute + 3, "a", false, true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newIgnoreTracker(4, time.Minute)
			for i, st := range tt.steps {
				if st.followed {
					tr.followed(st.mac)
					continue
				}
				if got := tr.discover(st.mac, t0.Add(st.at)); got != st.want {
					t.Fatalf("step %d (%+v): discover = %v", i, st, got)
				}
			}
		})
	}
}

func TestProxyIgnoredRecorded(t *testing.T) {
	clk := newFakeClock()
	var rec events
	s := newTestDHCP(t, DHCPConfig{ServerIP: testServer, HTTPPort: 8080}, clk, &rec)
	discover := func(mac net.HardwareAddr, mods ...dhcpv4.Modifier) {
		if s.handle(pkt(t, mac, dhcpv4.MessageTypeDiscover, append([]dhcpv4.Modifier{vcBIOS, arch93(0)}, mods...)...), false) == nil {
			t.Fatal("no proxy offer")
		}
		clk.Advance(4 * time.Second)
	}
	for range 3 {
		discover(macA)
	}
	s.Followed(macA) // TFTP saw it fetch undionly.kpxe
	for range 3 {
		discover(macA)
	}
	// iPXE asking means the firmware followed our offer.
	for range 3 {
		discover(macB)
	}
	discover(macB, ucIPXE)
	discover(macB)
	if got := rec.stages(StageProxyIgnored); len(got) != 0 {
		t.Fatalf("followed clients flagged: %+v", got)
	}
	discover(macA) // fourth unfollowed DISCOVER since Followed
	got := rec.stages(StageProxyIgnored)
	if len(got) != 1 || got[0].MAC.String() != macA.String() {
		t.Fatalf("proxy-ignored events %+v", got)
	}
	if d := got[0].Detail; !strings.Contains(d, "--dhcp full") || !strings.Contains(d, "next-server to 10.99.0.1") || !strings.Contains(d, "undionly.kpxe") {
		t.Errorf("detail does not name the fix: %s", d)
	}
	discover(macA)
	if len(rec.stages(StageProxyIgnored)) != 1 {
		t.Error("reported twice in one run")
	}

	// TFTP knows only the address: the server learned it from the PXE
	// client's REQUEST to the router (broadcast, so rackboot sees it).
	macC := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0xc}
	for range 3 {
		discover(macC)
	}
	toRouter := pkt(t, macC, dhcpv4.MessageTypeRequest, vcBIOS, arch93(0), withRequested("10.99.0.77"),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 99, 0, 254))))
	if r := s.handle(toRouter, false); r != nil {
		t.Fatalf("answered a REQUEST meant for the router: %s", r.Summary())
	}
	if _, ok := s.FollowedAddr(netip.MustParseAddr("10.99.0.78")); ok {
		t.Error("unknown address resolved")
	}
	if mac, ok := s.FollowedAddr(netip.MustParseAddr("10.99.0.77")); !ok || mac.String() != macC.String() {
		t.Fatalf("FollowedAddr = %v, %v", mac, ok)
	}
	discover(macC)
	if len(rec.stages(StageProxyIgnored)) != 1 {
		t.Error("a client that came to TFTP was flagged")
	}
}

func TestFullHandler(t *testing.T) {
	clk := newFakeClock()
	var rec events
	reservedMAC := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0xee}
	cfg := fullConfig()
	cfg.Reservations = func(mac net.HardwareAddr) (netip.Addr, bool) {
		if bytes.Equal(mac, reservedMAC) {
			return netip.MustParseAddr("10.99.0.101"), true // inside the range
		}
		return netip.Addr{}, false
	}
	cfg.Reserved = func(a netip.Addr) bool { return a == netip.MustParseAddr("10.99.0.101") }
	s := newTestDHCP(t, cfg, clk, &rec)

	dora := func(mac net.HardwareAddr, mods ...dhcpv4.Modifier) (*dhcpv4.DHCPv4, *dhcpv4.DHCPv4) {
		t.Helper()
		offer := s.handle(pkt(t, mac, dhcpv4.MessageTypeDiscover, mods...), false)
		if offer == nil {
			return nil, nil
		}
		req := pkt(t, mac, dhcpv4.MessageTypeRequest, append([]dhcpv4.Modifier{ourID, withRequested(offer.YourIPAddr.String())}, mods...)...)
		return offer, s.handle(req, false)
	}

	// Plain client: an address from the range, no PXE options.
	offer, ack := dora(macA)
	if offer.MessageType() != dhcpv4.MessageTypeOffer || ack.MessageType() != dhcpv4.MessageTypeAck {
		t.Fatalf("DORA: %v / %v", offer.Summary(), ack.Summary())
	}
	if !ack.YourIPAddr.Equal(net.IPv4(10, 99, 0, 100)) || ack.BootFileName != "" || ack.ClassIdentifier() != "" {
		t.Fatalf("ack %s", ack.Summary())
	}
	// The reserved machine gets its address, a PXE client gets the boot file.
	_, ack = dora(reservedMAC, vcEFI, arch93(7))
	if !ack.YourIPAddr.Equal(net.IPv4(10, 99, 0, 101)) || ack.BootFileName != "ipxe.efi" || !ack.ServerIPAddr.Equal(net.IPv4(10, 99, 0, 1)) {
		t.Fatalf("reserved PXE ack %s", ack.Summary())
	}
	if ev := rec.stages(StageDHCP); len(ev) != 1 || ev[0].Addr != netip.MustParseAddr("10.99.0.101") {
		t.Fatalf("dhcp events %+v", ev)
	}
	// Another client asking for the reserved address is refused it.
	offer, _ = dora(macB, withRequested("10.99.0.101"))
	if offer.YourIPAddr.Equal(net.IPv4(10, 99, 0, 101)) || offer.YourIPAddr.Equal(net.IPv4(10, 99, 0, 100)) {
		t.Fatalf("offered a taken address: %s", offer.Summary())
	}
	nak := s.handle(pkt(t, macB, dhcpv4.MessageTypeRequest, ourID, withRequested("10.99.0.101")), false)
	if nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak || !strings.Contains(nak.Message(), "reserved") {
		t.Fatalf("request for a reserved address: %v", nak)
	}
	// INIT-REBOOT with an address of another network: NAK.
	nak = s.handle(pkt(t, macB, dhcpv4.MessageTypeRequest, withRequested("192.168.1.7")), false)
	if nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak {
		t.Fatal("foreign address not NAKed")
	}
	// Someone else's active lease: NAK.
	nak = s.handle(pkt(t, macB, dhcpv4.MessageTypeRequest, withRequested("10.99.0.100")), false)
	if nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak || !strings.Contains(nak.Message(), "in use") {
		t.Fatal("taken address not NAKed")
	}
	// A REQUEST to another server: ignored, and our offer is dropped.
	other := dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 99, 0, 254)))
	if r := s.handle(pkt(t, macB, dhcpv4.MessageTypeRequest, other, withRequested(offer.YourIPAddr.String())), false); r != nil {
		t.Fatalf("answered a request to another server: %s", r.Summary())
	}
	if _, held := s.leases.Held(macB); held {
		t.Error("offer kept after the client chose another server")
	}
	// Renewing (ciaddr set, unicast, no server id): ACK.
	renew := pkt(t, macA, dhcpv4.MessageTypeRequest, dhcpv4.WithClientIP(net.IPv4(10, 99, 0, 100)))
	if r := s.handle(renew, false); r == nil || r.MessageType() != dhcpv4.MessageTypeAck || !r.YourIPAddr.Equal(net.IPv4(10, 99, 0, 100)) {
		t.Fatalf("renew: %v", r)
	}
	// INFORM: configuration, no address.
	inf := s.handle(pkt(t, macA, dhcpv4.MessageTypeInform, dhcpv4.WithClientIP(net.IPv4(10, 99, 0, 100))), false)
	if inf == nil || inf.MessageType() != dhcpv4.MessageTypeAck || !inf.YourIPAddr.Equal(net.IPv4zero) || inf.Options.Has(dhcpv4.OptionIPAddressLeaseTime) || len(inf.DNS()) != 1 {
		t.Fatalf("inform: %v", inf)
	}

	// DECLINE: the address is not offered again until the hold passes.
	_, ack = dora(macB)
	declined := ack.YourIPAddr.String()
	s.handle(pkt(t, macB, dhcpv4.MessageTypeDecline, ourID, withRequested(declined)), false)
	if o := s.handle(pkt(t, macB, dhcpv4.MessageTypeDiscover), false); o == nil || o.YourIPAddr.String() == declined {
		t.Fatalf("declined address offered again: %v", o)
	}
	clk.Advance(cfg.DeclineHold + 10*time.Minute + offerHold)

	// RELEASE frees the address for others; the pool is 4 addresses.
	s.handle(pkt(t, macA, dhcpv4.MessageTypeRelease, ourID, dhcpv4.WithClientIP(net.IPv4(10, 99, 0, 100))), false)
	if le, _ := s.leases.Get(macA); s.leases.Active(le) {
		t.Error("lease active after RELEASE")
	}
	if mac, ok := s.FollowedAddr(netip.MustParseAddr("10.99.0.101")); !ok || mac.String() != reservedMAC.String() {
		t.Errorf("FollowedAddr in full mode = %v, %v", mac, ok)
	}
	if _, ok := s.FollowedAddr(netip.MustParseAddr("10.99.0.100")); ok {
		t.Error("FollowedAddr resolved a released address")
	}

	// Exhaustion: 100..103 minus the reserved 101 = 3 dynamic addresses;
	// never-used ones go first (102 lost its lease in the DECLINE), the
	// released 100 last.
	var got []string
	for i := range 4 {
		mac := net.HardwareAddr{0x52, 0x54, 1, 0, 0, byte(i)}
		_, ack := dora(mac)
		if ack == nil {
			got = append(got, "none")
			continue
		}
		got = append(got, ack.YourIPAddr.String())
	}
	if fmt.Sprint(got) != "[10.99.0.102 10.99.0.103 10.99.0.100 none]" {
		t.Errorf("allocations %v", got)
	}
}

func TestListenDHCPErrors(t *testing.T) {
	busy, err := net.ListenPacket("udp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.LocalAddr().(*net.UDPAddr).Port
	_, err = ListenDHCP("", port)
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), fmt.Sprintf("port %d in use", port)) {
		t.Fatalf("busy port: %v", err)
	}
	if _, err := ListenDHCP("nosuchif0", 0); err == nil || !strings.Contains(err.Error(), "nosuchif0") {
		t.Fatalf("missing interface: %v", err)
	}
	if os.Geteuid() != 0 {
		t.Fatal("this test checks the privilege error by dropping root in a child: run as root")
	}
	// An unprivileged child binding port 67 gets the privilege hint.
	cmd := exec.Command(os.Args[0], "-test.run=^TestListenDHCPUnprivilegedChild$")
	cmd.Env = append(os.Environ(), "RACKBOOT_DHCP_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "needs root or CAP_NET_BIND_SERVICE") {
		t.Fatalf("unprivileged child: %v\n%s", err, out)
	}
}

// TestListenDHCPUnprivilegedChild runs in the child TestListenDHCPErrors
// starts as nobody; on its own it does nothing.
func TestListenDHCPUnprivilegedChild(t *testing.T) {
	if os.Getenv("RACKBOOT_DHCP_CHILD") != "1" {
		return
	}
	// Become nobody (the test binary's directory is not readable by
	// nobody, so the parent could not exec it as nobody).
	if err := syscall.Setgid(65534); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setuid(65534); err != nil {
		t.Fatal(err)
	}
	_, err := ListenDHCP("", DHCPPort)
	if err == nil {
		t.Fatal("nobody bound port 67")
	}
	fmt.Println(err)
}

// startDHCP runs s until the test ends.
func startDHCP(t testing.TB, s *DHCPServer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

// nclient is the real nclient4 client on a loopback socket, sending to addr.
func nclient(t testing.TB, mac net.HardwareAddr, addr net.Addr) *nclient4.Client {
	t.Helper()
	c, err := nclient4.NewWithConn(loopbackConn(t), mac,
		nclient4.WithServerAddr(addr.(*net.UDPAddr)), nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(2))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestFullLoopbackDORA(t *testing.T) {
	dir := t.TempDir()
	leases := filepath.Join(dir, "dhcp-leases.json")
	reserved := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0xee}
	serve := func() net.Addr {
		cfg := fullConfig()
		cfg.LeasesFile = leases
		cfg.Reservations = func(mac net.HardwareAddr) (netip.Addr, bool) {
			return netip.MustParseAddr("10.99.0.50"), bytes.Equal(mac, reserved) // outside the range
		}
		conn := loopbackConn(t)
		s, err := NewDHCP(cfg, WithDHCPConn(conn), WithDHCPLogger(testLogger(t)))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return conn.LocalAddr()
	}
	ctx := context.Background()
	addr := serve()
	lease, err := nclient(t, macA, addr).Request(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := lease.ACK.YourIPAddr
	if ip, _ := netip.AddrFromSlice(first.To4()); ip.Less(netip.MustParseAddr("10.99.0.100")) || netip.MustParseAddr("10.99.0.103").Less(ip) {
		t.Fatalf("address %v outside the range", first)
	}
	if lease.ACK.IPAddressLeaseTime(0) != time.Hour || lease.ACK.SubnetMask().String() != "ffffff00" {
		t.Fatalf("ack %s", lease.ACK.Summary())
	}
	lease, err = nclient(t, reserved, addr).Request(ctx)
	if err != nil || !lease.ACK.YourIPAddr.Equal(net.IPv4(10, 99, 0, 50)) {
		t.Fatalf("reservation: %v %v", lease, err)
	}

	// A new server on the same leases file: macA keeps its address, a new
	// MAC does not get it.
	addr = serve()
	lease, err = nclient(t, macA, addr).Request(ctx)
	if err != nil || !lease.ACK.YourIPAddr.Equal(first) {
		t.Fatalf("after restart: %v, %v; want %v", lease, err, first)
	}
	lease, err = nclient(t, macB, addr).Request(ctx)
	if err != nil || lease.ACK.YourIPAddr.Equal(first) {
		t.Fatalf("new MAC after restart: %v, %v", lease, err)
	}
}

func TestProxyLoopback(t *testing.T) {
	var rec events
	dhcpConn, bootConn := loopbackConn(t), loopbackConn(t)
	s, err := NewDHCP(DHCPConfig{ServerIP: testServer, HTTPPort: 8080},
		WithDHCPConn(dhcpConn), WithBootServerConn(bootConn), WithDHCPLogger(testLogger(t)), WithDHCPRecorder(&rec))
	if err != nil {
		t.Fatal(err)
	}
	startDHCP(t, s)
	ctx := context.Background()

	offer, err := nclient(t, macA, dhcpConn.LocalAddr()).DiscoverOffer(ctx, vcBIOS, arch93(0))
	if err != nil {
		t.Fatal(err)
	}
	if offer.BootFileName != "undionly.kpxe" || !offer.YourIPAddr.Equal(net.IPv4zero) || !offer.ServerIPAddr.Equal(testServer.AsSlice()) {
		t.Fatalf("PXE offer %s", offer.Summary())
	}
	offer, err = nclient(t, macB, dhcpConn.LocalAddr()).DiscoverOffer(ctx, vcEFI, arch93(7), ucIPXE, opt175)
	if err != nil || offer.BootFileName != "http://10.99.0.1:8080/boot.ipxe" {
		t.Fatalf("iPXE offer %v %v", offer, err)
	}
	// The PXE boot server on 4011: REQUEST from the client's (router-given)
	// address, ACK with the boot file.
	c := nclient(t, macA, bootConn.LocalAddr())
	req, err := dhcpv4.NewDiscovery(macA, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), vcEFI, arch93(7),
		dhcpv4.WithClientIP(net.IPv4(10, 99, 0, 150)), dhcpv4.WithBroadcast(false))
	if err != nil {
		t.Fatal(err)
	}
	ack, err := c.SendAndRead(ctx, bootConn.LocalAddr().(*net.UDPAddr), req, nclient4.IsMessageType(dhcpv4.MessageTypeAck))
	if err != nil || ack.BootFileName != "ipxe.efi" || !ack.YourIPAddr.Equal(net.IPv4zero) {
		t.Fatalf("4011 ack %v %v", ack, err)
	}
	// A client that is not PXE gets nothing (bounded wait: 2 tries, 0.2 s).
	plain, err := nclient4.NewWithConn(loopbackConn(t), macB, nclient4.WithServerAddr(dhcpConn.LocalAddr().(*net.UDPAddr)),
		nclient4.WithTimeout(100*time.Millisecond), nclient4.WithRetry(2))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if o, err := plain.DiscoverOffer(ctx); !errors.Is(err, nclient4.ErrNoResponse) {
		t.Fatalf("non-PXE client: %v %v", o, err)
	}
	if n := len(rec.stages(StageDHCP)); n != 3 {
		t.Errorf("%d dhcp events, want 3", n)
	}
}

func TestOffMode(t *testing.T) {
	s, err := NewDHCP(DHCPConfig{Mode: DHCPOff})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Serve(ctx); err != nil {
		t.Fatal(err)
	}
}

// FuzzDHCPHandler: any bytes that parse as DHCP go through both modes'
// handlers without panicking, and every reply is a well-formed BOOTREPLY
// for the same client.
func FuzzDHCPHandler(f *testing.F) {
	seeds := []*dhcpv4.DHCPv4{
		pkt(f, testMAC, dhcpv4.MessageTypeDiscover, vcBIOS, arch93(0)),
		pkt(f, testMAC, dhcpv4.MessageTypeDiscover, vcEFI, arch93(7), ucIPXE, opt175),
		pkt(f, testMAC, dhcpv4.MessageTypeRequest, vcEFI, arch93(7), ourID, withRequested("10.99.0.100")),
		pkt(f, testMAC, dhcpv4.MessageTypeInform, dhcpv4.WithClientIP(net.IPv4(10, 99, 0, 100))),
		pkt(f, testMAC, dhcpv4.MessageTypeDecline, ourID, withRequested("10.99.0.100")),
	}
	for _, s := range seeds {
		f.Add(s.ToBytes(), false)
	}
	clk := newFakeClock()
	proxy := newTestDHCP(f, DHCPConfig{ServerIP: testServer, HTTPPort: 8080}, clk, nil)
	full := newTestDHCP(f, fullConfig(), clk, nil)
	quiet := slog.New(slog.DiscardHandler)
	proxy.log, full.log = quiet, quiet
	f.Fuzz(func(t *testing.T, data []byte, bootServer bool) {
		req, err := dhcpv4.FromBytes(data)
		if err != nil {
			return
		}
		for _, s := range []*DHCPServer{proxy, full} {
			reply := s.handle(req, bootServer)
			if reply == nil {
				continue
			}
			back, err := dhcpv4.FromBytes(reply.ToBytes())
			if err != nil {
				t.Fatalf("reply does not parse: %v", err)
			}
			if back.OpCode != dhcpv4.OpcodeBootReply || back.TransactionID != req.TransactionID ||
				!bytes.Equal(back.ClientHWAddr, req.ClientHWAddr) || !back.ServerIdentifier().Equal(testServer.AsSlice()) {
				t.Fatalf("malformed reply %s", back.Summary())
			}
			switch back.MessageType() {
			case dhcpv4.MessageTypeOffer, dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak:
			default:
				t.Fatalf("reply of type %v", back.MessageType())
			}
			if s == proxy && !back.YourIPAddr.Equal(net.IPv4zero) {
				t.Fatalf("proxy gave an address: %s", back.Summary())
			}
		}
	})
}
