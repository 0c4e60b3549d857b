package pxe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestCheckOwner(t *testing.T) {
	mac := tMAC(t, macCP1)
	other := tMAC(t, macOther)
	addr := netip.MustParseAddr("10.99.0.50")
	ok := OwnerCheck{Claimed: mac, Addr: addr, Neighbor: mac}
	for _, tc := range []struct {
		name string
		mod  func(*OwnerCheck)
		want string // "" = allowed, else a part of the reason
	}{
		{"owner", func(*OwnerCheck) {}, ""},
		{"owner, listed MAC", func(c *OwnerCheck) { c.Allowed = []net.HardwareAddr{other, mac} }, ""},
		{"MAC not the machine's", func(c *OwnerCheck) { c.Allowed = []net.HardwareAddr{other} }, "not one of this machine's MACs"},
		{"another NIC claims it", func(c *OwnerCheck) { c.Neighbor = other }, "came from 10.99.0.50 at MAC " + macOther},
		{"routed", func(c *OwnerCheck) { c.Neighbor, c.NeighErr = nil, ErrNotOnLink }, "router or relay"},
		{"no ARP entry", func(c *OwnerCheck) { c.Neighbor, c.NeighErr = nil, ErrNoNeighbor }, "cannot tell"},
		{"lookup failed", func(c *OwnerCheck) { c.Neighbor, c.NeighErr = nil, errors.New("netlink: boom") }, "netlink: boom"},
		{"empty neighbour", func(c *OwnerCheck) { c.Neighbor = nil }, "no link-layer address"},
		{"full DHCP, own lease", func(c *OwnerCheck) { c.FullDHCP, c.Lease, c.LeaseFound = true, addr, true }, ""},
		{"full DHCP, no lease", func(c *OwnerCheck) { c.FullDHCP = true }, "no DHCP lease"},
		{"full DHCP, other lease", func(c *OwnerCheck) {
			c.FullDHCP, c.Lease, c.LeaseFound = true, netip.MustParseAddr("10.99.0.70"), true
		}, "leased 10.99.0.70"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			err := CheckOwner(c)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("denied: %v", err)
				}
				return
			}
			var de *DeniedError
			if !errors.As(err, &de) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("CheckOwner = %v, want a denial saying %q", err, tc.want)
			}
		})
	}
}

// A housemate's laptop asking for cp1's script by cp1's MAC (or by its
// UUID) gets the unknown-machine script, no token; cp1's timeline says so.
func TestHTTPScriptOnlyToTheOwner(t *testing.T) {
	f := newHTTPFixture(t)
	f.booter.specs[macCP1].MACs = []net.HardwareAddr{tMAC(t, macCP1)}
	for _, tc := range []struct{ name, target, from, reason string }{
		{"claims the MAC", scriptURL(macCP1, uuidCP1), "10.99.0.51", "at MAC " + macOther},
		{"routed", scriptURL(macCP1, uuidCP1), "192.0.2.9", "router or relay"},
		{"incomplete ARP", scriptURL(macCP1, uuidCP1), "10.99.0.61", "cannot tell"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.events.stages())
			w := f.get(tc.target, tc.from)
			body := w.Body.String()
			if w.Code != 200 || strings.Contains(body, "talos.config") || strings.Contains(body, "/assets/") {
				t.Fatalf("%d, script:\n%s", w.Code, body)
			}
			want := strings.ReplaceAll(f.get(scriptURL(macUnknown, ""), tc.from).Body.String(), macUnknown, macCP1)
			if body != want {
				t.Fatalf("denied script differs from the unknown-machine one:\n%s\n---\n%s", body, want)
			}
			got := f.events.stages()[before:]
			if len(got) < 1 || got[0] != StageDenied+":cp1" {
				t.Fatalf("events %v, want denied:cp1 first", got)
			}
			f.events.mu.Lock()
			ev := f.events.events[before]
			f.events.mu.Unlock()
			if ev.Addr.IsValid() || len(ev.MAC) != 0 || !strings.Contains(ev.Detail, tc.from) || !strings.Contains(ev.Detail, tc.reason) {
				t.Fatalf("denied event %+v: want no Addr/MAC (they are the requester's), detail naming %s and %q", ev, tc.from, tc.reason)
			}
		})
	}
	// The owner from its own address gets its script.
	if body := f.get(scriptURL(macCP1, uuidCP1), "10.99.0.50").Body.String(); !strings.Contains(body, "talos.config=") {
		t.Fatalf("owner got:\n%s", body)
	}
}

// In full-DHCP mode the request must also come from the MAC's own lease.
func TestHTTPScriptFullDHCPLease(t *testing.T) {
	f := newHTTPFixture(t)
	leases := map[string]netip.Addr{macCP1: netip.MustParseAddr("10.99.0.70")}
	h, err := NewHTTP(HTTPConfig{Server: "10.99.0.1:8080", Booter: f.booter, Assets: dirAssets(f.assets),
		Tokens: f.tokens, Neighbors: f.neigh, Recorder: f.events, Now: f.clock.Now,
		LeaseOf: func(mac net.HardwareAddr) (netip.Addr, bool) { a, ok := leases[mac.String()]; return a, ok }})
	if err != nil {
		t.Fatal(err)
	}
	f.h = h
	if body := f.get(scriptURL(macCP1, ""), "10.99.0.50").Body.String(); strings.Contains(body, "talos.config=") {
		t.Fatalf("script served to an address that is not the lease:\n%s", body)
	}
	leases[macCP1] = netip.MustParseAddr("10.99.0.50")
	if body := f.get(scriptURL(macCP1, ""), "10.99.0.50").Body.String(); !strings.Contains(body, "talos.config=") {
		t.Fatalf("owner with its lease got:\n%s", body)
	}
	if got := f.events.stages(); !slices.Equal(got, []string{"denied:cp1", "script:cp1"}) {
		t.Fatalf("events %v", got)
	}
}

func FuzzCheckOwner(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4, 5, 6}, []byte{1, 2, 3, 4, 5, 6}, byte(0))
	f.Add([]byte{1, 2, 3, 4, 5, 6}, []byte{1, 2, 3, 4, 5, 7}, byte(1))
	f.Fuzz(func(t *testing.T, claimed, neigh []byte, mode byte) {
		c := OwnerCheck{Claimed: claimed, Neighbor: neigh, Addr: netip.MustParseAddr("10.0.0.1")}
		if mode&1 != 0 {
			c.NeighErr = ErrNotOnLink
		}
		err := CheckOwner(c)
		allowed := err == nil
		if allowed && (c.NeighErr != nil || len(claimed) == 0 || string(claimed) != string(neigh)) {
			t.Fatalf("allowed %s from %s (err %v)", net.HardwareAddr(claimed), net.HardwareAddr(neigh), c.NeighErr)
		}
		if !allowed && c.NeighErr == nil && len(claimed) > 0 && string(claimed) == string(neigh) {
			t.Fatalf("denied the owner: %v", fmt.Sprint(err))
		}
	})
}

// blockedBooter knows cp1 but cannot boot it.
type blockedBooter struct{ msg string }

func (b blockedBooter) BootSpec(context.Context, Client) (*BootSpec, error) {
	return nil, &BootError{Name: "cp1", Msg: b.msg}
}
func (blockedBooter) Config(context.Context, string) ([]byte, error) { return nil, ErrUnknownMachine }

// A known machine that cannot boot yet gets a script that says why and asks
// again, and its timeline shows cannot-boot with the fix.
func TestHTTPCannotBoot(t *testing.T) {
	f := newHTTPFixture(t)
	msg := "no Talos v1.13.0 in the asset cache: run `rackboot assets pull`"
	h, err := NewHTTP(HTTPConfig{Server: "10.99.0.1:8080", Booter: blockedBooter{msg}, Assets: dirAssets(f.assets),
		Tokens: f.tokens, Neighbors: f.neigh, Recorder: f.events, Now: f.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	f.h = h
	w := f.get(scriptURL(macCP1, ""), "10.99.0.50")
	body := w.Body.String()
	if w.Code != 200 || !strings.Contains(body, "cp1 cannot boot: "+msg) || !strings.Contains(body, "sleep 30") || strings.Contains(body, "talos.config") {
		t.Fatalf("%d:\n%s", w.Code, body)
	}
	if got := f.events.stages(); !slices.Equal(got, []string{StageCannotBoot + ":cp1"}) {
		t.Fatalf("events %v", got)
	}
	// A message that would break the script is not put in it.
	h2, _ := NewHTTP(HTTPConfig{Server: "10.99.0.1:8080", Booter: blockedBooter{"a\nshell"}, Assets: dirAssets(f.assets),
		Tokens: f.tokens, Neighbors: f.neigh, Recorder: f.events, Now: f.clock.Now})
	f.h = h2
	if w := f.get(scriptURL(macCP1, ""), "10.99.0.50"); w.Code != 500 {
		t.Fatalf("multi-line message: %d\n%s", w.Code, w.Body)
	}
}
