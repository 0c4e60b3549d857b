//go:build linux

package main

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/dotfile/rackboot/internal/netns"
)

// TestLinkDelaysUDP joins two real namespaces with the link and sends UDP
// echoes across it: every one comes back, and none sooner than
// twice the delay (a frame is never relayed before its delay is up; a slow
// machine only makes it later). How much the relay adds on top, and the RTT
// it gives, are measured by `make bench` (row P2 prints the RTT through the
// link and over a plain veth), not asserted here.
func TestLinkDelaysUDP(t *testing.T) {
	// rtt returns the shortest echo time over a link with that delay.
	rtt := func(delay time.Duration) time.Duration {
		a := netns.New(t, "dla")
		b := netns.New(t, "dlb")
		fa, err := OpenTAP(End{NetNS: a.Path(), Name: "dl0"})
		if err != nil {
			t.Fatal(err)
		}
		defer fa.Close()
		fb, err := OpenTAP(End{NetNS: b.Path(), Name: "dl1"})
		if err != nil {
			t.Fatal(err)
		}
		defer fb.Close()
		ctx, cancel := context.WithCancel(context.Background())
		l := &Link{Delay: delay}
		done := make(chan error, 1)
		go func() { done <- l.Run(ctx, fa, fb) }()
		defer func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("link: %v", err)
			}
		}()
		for _, c := range []struct {
			ns   *netns.NS
			dev  string
			addr string
		}{{a, "dl0", "10.251.0.1/30"}, {b, "dl1", "10.251.0.2/30"}} {
			c.ns.AddAddr(c.dev, netip.MustParsePrefix(c.addr))
			if out, err := c.ns.Exec(ctx, "ip", "link", "set", c.dev, "up"); err != nil {
				t.Fatalf("link up: %v %s", err, out)
			}
		}
		var echo, cli net.PacketConn
		if err := b.Run(func() (err error) { echo, err = net.ListenPacket("udp4", "10.251.0.2:7007"); return }); err != nil {
			t.Fatal(err)
		}
		defer echo.Close()
		go func() {
			buf := make([]byte, 2000)
			for {
				n, peer, err := echo.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = echo.WriteTo(buf[:n], peer)
			}
		}()
		if err := a.Run(func() (err error) { cli, err = net.ListenPacket("udp4", "10.251.0.1:0"); return }); err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		dst := &net.UDPAddr{IP: net.IPv4(10, 251, 0, 2), Port: 7007}
		var rtts []time.Duration
		buf := make([]byte, 2000)
		for i := range 25 {
			_ = cli.SetReadDeadline(time.Now().Add(3 * time.Second))
			t0 := time.Now()
			if _, err := cli.WriteTo([]byte{byte(i)}, dst); err != nil {
				t.Fatal(err)
			}
			// The first exchange also waits for ARP (delayed too).
			for {
				n, _, err := cli.ReadFrom(buf)
				if err != nil {
					t.Fatalf("echo %d over a %s link: %v", i, delay, err)
				}
				if n == 1 && buf[0] == byte(i) {
					break
				}
			}
			if i > 0 {
				rtts = append(rtts, time.Since(t0))
			}
		}
		if l.Frames() < 48 {
			t.Errorf("link relayed %d frames, want at least 48", l.Frames())
		}
		return slices.Min(rtts)
	}
	const delay = 2 * time.Millisecond
	if fastest := rtt(delay); fastest < 2*delay {
		t.Errorf("an echo came back after %s through a link delaying %s each way: a frame was relayed early", fastest, delay)
	}
}

func TestParseEnd(t *testing.T) {
	for _, c := range []struct {
		in   string
		want End
		ok   bool
	}{
		{"/run/netns/x:dl0", End{"/run/netns/x", "dl0"}, true},
		{"/run/netns/x:", End{}, false},
		{":dl0", End{}, false},
		{"nocolon", End{}, false},
		{"/n:averyveryverylongname", End{}, false},
	} {
		got, err := ParseEnd(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseEnd(%q) = %+v, %v", c.in, got, err)
		}
	}
}
