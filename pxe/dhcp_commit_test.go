//go:build linux

package pxe

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// orderLog records, in order, when leases reached the disk and when ACKs
// came out of the handler.
type orderLog struct {
	mu  sync.Mutex
	all []string
}

func (o *orderLog) add(s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.all = append(o.all, s)
}

// ackedBeforeDisk returns the ACKed MACs whose lease no earlier write held.
func (o *orderLog) ackedBeforeDisk() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	onDisk := map[string]bool{}
	var bad []string
	for _, e := range o.all {
		kind, macs, _ := strings.Cut(e, " ")
		for _, m := range strings.Fields(macs) {
			if kind == "disk" {
				onDisk[m] = true
			} else if !onDisk[m] {
				bad = append(bad, m)
			}
		}
	}
	return bad
}

// TestFullACKWaitsForDisk: while a lease write is in flight, DISCOVERs are
// answered and other REQUESTs queue for the next write; no ACK leaves the
// handler before its lease is on disk; two writes cover three REQUESTs.
func TestFullACKWaitsForDisk(t *testing.T) {
	clk := newFakeClock()
	cfg := fullConfig()
	cfg.LeasesFile = filepath.Join(t.TempDir(), "dhcp-leases.json")
	s := newTestDHCP(t, cfg, clk, nil)
	var order orderLog
	w := &blockingWrites{started: make(chan []string), release: make(chan error)}
	real := s.leases.writeFile
	s.leases.writeFile = func(path string, data []byte) error {
		macs, err := parseLeases(data)
		if err != nil {
			t.Errorf("written table: %v", err)
		}
		var names []string
		for _, le := range macs {
			names = append(names, le.MAC)
		}
		w.started <- names
		if err := <-w.release; err != nil {
			return err
		}
		if err := real(path, data); err != nil {
			return err
		}
		order.add("disk " + strings.Join(names, " "))
		return nil
	}
	request := func(mac net.HardwareAddr) <-chan *dhcpv4.DHCPv4 {
		offer := s.handle(pkt(t, mac, dhcpv4.MessageTypeDiscover), false)
		if offer == nil {
			t.Fatalf("no offer for %s", mac)
		}
		ch := make(chan *dhcpv4.DHCPv4, 1)
		req := pkt(t, mac, dhcpv4.MessageTypeRequest, ourID, withRequested(offer.YourIPAddr.String()))
		go func() {
			r := s.handle(req, false)
			if r != nil && r.MessageType() == dhcpv4.MessageTypeAck {
				order.add("ack " + mac.String())
			}
			ch <- r
		}()
		return ch
	}
	ackA := request(macA)
	if got := await(t, w.started, "first write"); len(got) != 1 || got[0] != macA.String() {
		t.Fatalf("first write %v", got)
	}
	// The write is blocked: DISCOVERs must still be answered (request
	// does one, in this goroutine), and REQUESTs queue behind it.
	ackB := request(macB)
	macC := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0xc}
	ackC := request(macC)
	w.release <- nil
	if r := await(t, ackA, "ACK for A"); r == nil || !r.YourIPAddr.Equal(net.IPv4(10, 99, 0, 100)) {
		t.Fatalf("A: %v", r)
	}
	if got := await(t, w.started, "second write"); len(got) != 3 {
		t.Fatalf("second write holds %v, want A, B and C", got)
	}
	w.release <- nil
	for _, ch := range []<-chan *dhcpv4.DHCPv4{ackB, ackC} {
		if r := await(t, ch, "ACK"); r == nil || r.MessageType() != dhcpv4.MessageTypeAck {
			t.Fatalf("grouped REQUEST: %v", r)
		}
	}
	if bad := order.ackedBeforeDisk(); len(bad) > 0 {
		t.Fatalf("ACKed before the lease was on disk: %v (order %v)", bad, order.all)
	}
	l, err := OpenLeases(cfg.LeasesFile, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(l.All()); n != 3 {
		t.Fatalf("%d leases on disk, want 3", n)
	}

	// A failed write: no ACK, and the address is free again.
	go func() { <-w.started; w.release <- fmt.Errorf("disk full") }()
	macD := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0xd}
	if r := await(t, request(macD), "reply to D"); r != nil {
		t.Fatalf("a lease that was not saved was answered: %s", r.Summary())
	}
	if _, ok := s.leases.Get(macD); ok {
		t.Error("unsaved lease kept in memory")
	}
}

// TestFullBurstLoopback: 100 real nclient4 clients at once against the
// served socket; every one is ACKed a distinct address, and every ACKed
// lease is in the file afterwards.
func TestFullBurstLoopback(t *testing.T) {
	cfg := fullConfig()
	cfg.RangeEnd = netip.MustParseAddr("10.99.0.250")
	cfg.LeasesFile = filepath.Join(t.TempDir(), "dhcp-leases.json")
	conn := loopbackConn(t)
	s, err := NewDHCP(cfg, WithDHCPConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	var writes, mu = 0, sync.Mutex{}
	real := s.leases.writeFile
	s.leases.writeFile = func(path string, data []byte) error {
		mu.Lock()
		writes++
		mu.Unlock()
		return real(path, data)
	}
	startDHCP(t, s)
	const n = 100
	type result struct {
		mac  net.HardwareAddr
		addr net.IP
		err  error
	}
	results := make(chan result, n)
	for i := range n {
		mac := testMACn(i)
		c := nclient(t, mac, conn.LocalAddr())
		go func() {
			lease, err := c.Request(context.Background())
			if err != nil {
				results <- result{mac: mac, err: err}
				return
			}
			results <- result{mac: mac, addr: lease.ACK.YourIPAddr}
		}()
	}
	got := map[string]string{}
	seen := map[string]bool{}
	for range n {
		r := await(t, results, "client")
		if r.err != nil {
			t.Fatalf("%s: %v", r.mac, r.err)
		}
		if seen[r.addr.String()] {
			t.Fatalf("%s given to two clients", r.addr)
		}
		seen[r.addr.String()] = true
		got[r.mac.String()] = r.addr.String()
	}
	l, err := OpenLeases(cfg.LeasesFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	for mac, addr := range got {
		m, _ := net.ParseMAC(mac)
		if le, ok := l.Get(m); !ok || le.Addr.String() != addr {
			t.Errorf("%s ACKed %s, on disk %+v %v", mac, addr, le, ok)
		}
	}
	mu.Lock()
	t.Logf("%d ACKs, %d lease file writes", n, writes)
	mu.Unlock()
}

// TestFullKillAfterACK runs a DHCP server in a child process, gets ACKs
// from it with real clients, kills it with SIGKILL, and reopens its file:
// every ACKed lease is there.
func TestFullKillAfterACK(t *testing.T) {
	dir := t.TempDir()
	leases := filepath.Join(dir, "dhcp-leases.json")
	cmd := exec.Command(os.Args[0], "-test.run=^TestFullKillAfterACKChild$")
	cmd.Env = append(os.Environ(), "RACKBOOT_LEASES_CHILD="+leases)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = testWriter{t}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	lines := bufio.NewScanner(out)
	var addr *net.UDPAddr
	for lines.Scan() {
		if a, ok := strings.CutPrefix(lines.Text(), "DHCP-ADDR "); ok {
			if addr, err = net.ResolveUDPAddr("udp4", a); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if addr == nil {
		t.Fatal("the child server never said where it listens")
	}
	const n = 20
	type result struct {
		mac  string
		addr netip.Addr
		err  error
	}
	results := make(chan result, n)
	for i := range n {
		c := nclient(t, testMACn(i), addr)
		go func() {
			lease, err := c.Request(context.Background())
			if err != nil {
				results <- result{err: err}
				return
			}
			a, _ := netip.AddrFromSlice(lease.ACK.YourIPAddr.To4())
			results <- result{mac: testMACn(i).String(), addr: a}
		}()
	}
	acked := map[string]netip.Addr{}
	for range n {
		r := await(t, results, "client")
		if r.err != nil {
			t.Fatal(r.err)
		}
		acked[r.mac] = r.addr
	}
	// All ACKs are in: kill the server without any chance to write more.
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	killed = true
	fi, err := os.Stat(leases)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("leases file mode %v", fi.Mode().Perm())
	}
	l, err := OpenLeases(leases, nil)
	if err != nil {
		t.Fatal(err)
	}
	for mac, a := range acked {
		m, _ := net.ParseMAC(mac)
		if le, ok := l.Get(m); !ok || le.Addr != a || !l.Active(le) {
			t.Errorf("%s was ACKed %s; after the kill: %+v %v", mac, a, le, ok)
		}
	}
}

// TestFullKillAfterACKChild is the server TestFullKillAfterACK kills; on
// its own it does nothing.
func TestFullKillAfterACKChild(t *testing.T) {
	path := os.Getenv("RACKBOOT_LEASES_CHILD")
	if path == "" {
		return
	}
	cfg := fullConfig()
	cfg.RangeEnd = netip.MustParseAddr("10.99.0.250")
	cfg.LeasesFile = path
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewDHCP(cfg, WithDHCPConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("DHCP-ADDR", conn.LocalAddr())
	if err := s.Serve(context.Background()); err != nil { // until killed
		t.Fatal(err)
	}
}
