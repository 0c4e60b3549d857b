package netns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// udpEcho opens a UDP echo server on addr inside ns and returns its address.
func udpEcho(t *testing.T, ns *NS, addr string) *net.UDPAddr {
	t.Helper()
	var conn net.PacketConn
	if err := ns.Run(func() (err error) {
		conn, err = net.ListenPacket("udp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = conn.WriteTo(buf[:n], from)
		}
	}()
	return conn.LocalAddr().(*net.UDPAddr)
}

// roundTrip sends one datagram from ns to dst and returns the time to the
// echo, or an error after timeout.
func roundTrip(ns *NS, dst *net.UDPAddr, timeout time.Duration) (time.Duration, error) {
	var conn net.PacketConn
	if err := ns.Run(func() (err error) {
		conn, err = net.ListenPacket("udp4", ":0")
		return err
	}); err != nil {
		return 0, err
	}
	defer conn.Close()
	start := time.Now()
	if _, err := conn.WriteTo([]byte("ping"), dst); err != nil {
		return 0, err
	}
	_ = conn.SetReadDeadline(start.Add(timeout))
	buf := make([]byte, 16)
	n, _, err := conn.ReadFrom(buf)
	if err != nil {
		return 0, err
	}
	if string(buf[:n]) != "ping" {
		return 0, errors.New("echo garbled: " + string(buf[:n]))
	}
	return time.Since(start), nil
}

func TestVethBetweenNamespaces(t *testing.T) {
	a := New(t, "a")
	b := New(t, "b")
	a.AddVeth("va", b, "vb")
	a.AddAddr("va", netip.MustParsePrefix("10.98.0.1/24"))
	b.AddAddr("vb", netip.MustParsePrefix("10.98.0.2/24"))

	echo := udpEcho(t, a, "10.98.0.1:0")
	if _, err := roundTrip(b, echo, 5*time.Second); err != nil {
		t.Fatalf("b → a over the veth: %v", err)
	}
	// A namespace not joined to a cannot reach it: there is no route.
	if _, err := roundTrip(New(t, "outside"), echo, 200*time.Millisecond); err == nil {
		t.Fatal("an unconnected namespace reached an address inside a")
	}
	for _, ns := range []*NS{a, b} {
		r, err := ns.DefaultRoute()
		if err != nil {
			t.Fatal(err)
		}
		if r != "" {
			t.Fatalf("namespace %s has a default route: %s", ns.Name(), r)
		}
	}
}

func TestBridgeJoinsThree(t *testing.T) {
	lan := New(t, "lan")
	lan.AddBridge("br0", netip.MustParsePrefix("10.97.0.1/24"))
	var peers []*NS
	for i, name := range []string{"p1", "p2"} {
		p := New(t, name)
		port := "port" + string(rune('1'+i))
		lan.AddVeth(port, p, "eth0")
		lan.SetMaster(port, "br0")
		p.AddAddr("eth0", netip.MustParsePrefix("10.97.0."+string(rune('2'+i))+"/24"))
		peers = append(peers, p)
	}
	echo := udpEcho(t, peers[0], "10.97.0.2:0")
	if _, err := roundTrip(peers[1], echo, 5*time.Second); err != nil {
		t.Fatalf("p2 → p1 across the bridge: %v", err)
	}
	echo = udpEcho(t, lan, "10.97.0.1:0")
	if _, err := roundTrip(peers[0], echo, 5*time.Second); err != nil {
		t.Fatalf("p1 → bridge address: %v", err)
	}
}

func TestRunRestoresThread(t *testing.T) {
	here, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	ns := New(t, "run")
	var inside string
	if err := ns.Run(func() (err error) {
		inside, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if inside == here {
		t.Fatalf("Run did not enter the namespace (%s)", inside)
	}
	want := errors.New("from fn")
	if err := ns.Run(func() error { return want }); !errors.Is(err, want) {
		t.Fatalf("Run returned %v, want fn's error", err)
	}
	// Many goroutines later, the process is still in its own namespace.
	for range 20 {
		if err := ns.Run(func() error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if now, _ := os.Readlink("/proc/thread-self/ns/net"); now != here {
		t.Fatalf("this thread is in %s, want %s", now, here)
	}
}

func TestExecAndStart(t *testing.T) {
	ns := New(t, "exec")
	out, err := ns.Exec(context.Background(), "ip", "-br", "link")
	if err != nil {
		t.Fatal(err)
	}
	// A fresh namespace has only its loopback, which New set up.
	if !strings.HasPrefix(string(out), "lo ") || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Fatalf("links in a fresh namespace:\n%s", out)
	}
	if _, err := ns.Exec(context.Background(), "ip", "link", "set", "nosuchdev", "up"); err == nil ||
		!strings.Contains(err.Error(), "nosuchdev") {
		t.Fatalf("a failing command gave %v, want an error with its output", err)
	}
	p := ns.Start("sleep", "600")
	select {
	case <-p.Done():
		t.Fatalf("sleep exited early: %v %s", p.Err(), p.Output())
	case <-time.After(50 * time.Millisecond):
	}
}

func TestStartKilled(t *testing.T) {
	var p *Process
	t.Run("inner", func(t *testing.T) {
		ns := New(t, "start")
		p = ns.Start("sleep", "600")
	})
	select {
	case <-p.Done():
	default:
		t.Fatal("the process outlived its test")
	}
	if _, err := os.Stat("/proc/" + strconv.Itoa(p.Cmd.Process.Pid)); err == nil {
		t.Fatal("the process is still in /proc")
	}
}
