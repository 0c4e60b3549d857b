package pxe

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
)

// TestDHCPActive: with WithDHCPActive, the server answers only while the
// switch is on; packets while it is off get no reply, change nothing, and
// are counted.
func TestDHCPActive(t *testing.T) {
	var rec events
	var on atomic.Bool
	conn := loopbackConn(t)
	s, err := NewDHCP(DHCPConfig{ServerIP: testServer, HTTPPort: 8080},
		WithDHCPConn(conn), WithBootServerConn(loopbackConn(t)), WithDHCPLogger(testLogger(t)),
		WithDHCPRecorder(&rec), WithDHCPActive(on.Load))
	if err != nil {
		t.Fatal(err)
	}
	startDHCP(t, s)
	ctx := context.Background()
	client := func() *nclient4.Client {
		c, err := nclient4.NewWithConn(loopbackConn(t), macA, nclient4.WithServerAddr(conn.LocalAddr().(*net.UDPAddr)),
			nclient4.WithTimeout(200*time.Millisecond), nclient4.WithRetry(3))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}

	if o, err := client().DiscoverOffer(ctx, vcBIOS, arch93(0)); !errors.Is(err, nclient4.ErrNoResponse) {
		t.Fatalf("switched off: %v %v, want no answer", o, err)
	}
	if n := s.Inactive(); n != 3 {
		t.Errorf("Inactive() = %d after 3 DISCOVERs while off, want 3", n)
	}
	if got := rec.stages(StageDHCP); len(got) != 0 {
		t.Errorf("recorded while off: %+v", got)
	}

	on.Store(true)
	offer, err := client().DiscoverOffer(ctx, vcBIOS, arch93(0))
	if err != nil || offer.BootFileName != "undionly.kpxe" {
		t.Fatalf("switched on: %v %v", offer, err)
	}
	if n := s.Inactive(); n != 3 {
		t.Errorf("Inactive() = %d after an answered DISCOVER, want still 3", n)
	}

	on.Store(false)
	if o, err := client().DiscoverOffer(ctx, vcBIOS, arch93(0)); !errors.Is(err, nclient4.ErrNoResponse) {
		t.Fatalf("switched off again: %v %v, want no answer", o, err)
	}
	if n := s.Inactive(); n != 6 {
		t.Errorf("Inactive() = %d, want 6", n)
	}
}
