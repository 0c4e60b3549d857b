package pxe

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct{ t time.Time }

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

var (
	macA = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0xa}
	macB = net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0xb}
)

func TestLeasesPersist(t *testing.T) {
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), "state", "dhcp-leases.json")
	l, err := OpenLeases(path, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	a1 := netip.MustParseAddr("10.99.0.100")
	if _, err := l.Bind(macA, a1, time.Hour, "node-1"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}

	// A restart: the same MAC's lease is still there.
	l2, err := OpenLeases(path, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	le, ok := l2.Get(macA)
	if !ok || le.Addr != a1 || le.Hostname != "node-1" || !le.Expires.Equal(clk.Now().Add(time.Hour)) {
		t.Fatalf("after reload: %+v %v", le, ok)
	}
	if !l2.InUse(a1, macB) || l2.InUse(a1, macA) {
		t.Error("an active lease is not in use for others / is for its owner")
	}

	// Expiry with the clock: free for others, still on record for affinity.
	clk.Advance(time.Hour)
	if l2.InUse(a1, macB) {
		t.Error("expired lease still in use")
	}
	if _, ok := l2.Get(macA); !ok {
		t.Error("expired lease forgotten")
	}
	// Another MAC takes the expired address: the old record goes.
	if _, err := l2.Bind(macB, a1, time.Hour, ""); err != nil {
		t.Fatal(err)
	}
	if _, ok := l2.Get(macA); ok {
		t.Error("old owner's record kept after reassignment")
	}
	if all := l2.All(); len(all) != 1 || all[0].MAC != macB.String() {
		t.Errorf("leases %+v", all)
	}
	// Binding an address actively leased to someone else fails.
	if _, err := l2.Bind(macA, a1, time.Hour, ""); err == nil {
		t.Error("double bind accepted")
	}
}

func TestLeasesReleaseDecline(t *testing.T) {
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), "leases.json")
	l, _ := OpenLeases(path, clk.Now)
	a := netip.MustParseAddr("10.99.0.100")
	if _, err := l.Bind(macA, a, time.Hour, ""); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(macB, a); err == nil {
		t.Error("release by a non-owner accepted")
	}
	if err := l.Release(macA, a); err != nil {
		t.Fatal(err)
	}
	if l.InUse(a, macB) {
		t.Error("released address in use")
	}
	l2, _ := OpenLeases(path, clk.Now)
	if le, _ := l2.Get(macA); l2.Active(le) {
		t.Error("release not persisted")
	}

	if err := l.Decline(a, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	if !l.InUse(a, macA) || !l.InUse(a, macB) {
		t.Error("declined address usable")
	}
	clk.Advance(10 * time.Minute)
	if l.InUse(a, macA) {
		t.Error("declined address still blocked after the hold")
	}
}

func TestLeasesHold(t *testing.T) {
	clk := newFakeClock()
	l, _ := OpenLeases("", clk.Now)
	a := netip.MustParseAddr("10.99.0.100")
	l.Hold(macA, a, 30*time.Second)
	if got, ok := l.Held(macA); !ok || got != a {
		t.Fatal("hold lost")
	}
	if !l.InUse(a, macB) {
		t.Error("held address offered to another")
	}
	clk.Advance(30 * time.Second)
	if _, ok := l.Held(macA); ok || l.InUse(a, macB) {
		t.Error("hold outlived its time")
	}
	l.Hold(macA, a, time.Minute)
	l.DropHold(macA)
	if l.InUse(a, macB) {
		t.Error("dropped hold still blocks")
	}
}

func TestLeasesCorrupt(t *testing.T) {
	tests := map[string]string{
		"garbage":       "{not json",
		"version":       `{"version": 9, "leases": []}`,
		"bad mac":       `{"version": 1, "leases": [{"mac": "zz", "addr": "10.0.0.1", "expires": "2026-01-01T00:00:00Z"}]}`,
		"ipv6":          `{"version": 1, "leases": [{"mac": "52:54:00:00:00:0a", "addr": "fd00::1", "expires": "2026-01-01T00:00:00Z"}]}`,
		"dup addr":      `{"version": 1, "leases": [{"mac": "52:54:00:00:00:0a", "addr": "10.0.0.1", "expires": "2026-01-01T00:00:00Z"}, {"mac": "52:54:00:00:00:0b", "addr": "10.0.0.1", "expires": "2026-01-01T00:00:00Z"}]}`,
		"dup mac":       `{"version": 1, "leases": [{"mac": "52:54:00:00:00:0a", "addr": "10.0.0.1", "expires": "2026-01-01T00:00:00Z"}, {"mac": "52:54:00:00:00:0A", "addr": "10.0.0.2", "expires": "2026-01-01T00:00:00Z"}]}`,
		"unknown field": `{"version": 1, "leases": [], "extra": 1}`,
		"trailing":      `{"version": 1, "leases": []} {}`,
	}
	for name, content := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "dhcp-leases.json")
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := OpenLeases(path, nil)
			if err == nil || !strings.Contains(err.Error(), path) {
				t.Fatalf("OpenLeases = %v, want an error naming %s", err, path)
			}
			// Nothing lost: the file is as it was.
			if got, _ := os.ReadFile(path); string(got) != content {
				t.Fatal("corrupt leases file was modified")
			}
		})
	}
}

func TestLeasesSaveFailureKeepsState(t *testing.T) {
	sub := filepath.Join(t.TempDir(), "state")
	clk := newFakeClock()
	l, err := OpenLeases(filepath.Join(sub, "leases.json"), clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	// The state directory turns into a file: every save fails (as root,
	// permissions would not stop the write).
	if err := os.WriteFile(sub, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr("10.99.0.100")
	if _, err := l.Bind(macA, a, time.Hour, ""); err == nil {
		t.Fatal("bind reported success without saving")
	}
	if _, ok := l.Get(macA); ok || l.InUse(a, macB) {
		t.Error("failed bind left a lease in memory")
	}
}

func TestLeasesFromTestdata(t *testing.T) {
	l, err := OpenLeases(filepath.Join("testdata", "dhcp", "leases-v1.json"), newFakeClock().Now)
	if err != nil {
		t.Fatal(err)
	}
	all := l.All()
	if len(all) != 2 || all[0].Addr != netip.MustParseAddr("10.99.0.100") || all[1].MAC != "52:54:00:aa:bb:02" {
		t.Fatalf("leases %+v", all)
	}
}
