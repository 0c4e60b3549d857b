package pxe

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
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

// blockingWrites replaces l's file writer: each write reports its
// snapshot's MACs on started, then waits for a value on release (nil:
// write for real; an error: fail).
type blockingWrites struct {
	started chan []string
	release chan error
}

func blockWrites(t *testing.T, l *Leases) *blockingWrites {
	t.Helper()
	w := &blockingWrites{started: make(chan []string), release: make(chan error)}
	real := l.writeFile
	l.writeFile = func(path string, data []byte) error {
		var f leaseFile
		if err := json.Unmarshal(data, &f); err != nil {
			t.Errorf("written table does not parse: %v", err)
		}
		var macs []string
		for _, le := range f.Leases {
			macs = append(macs, le.MAC)
		}
		w.started <- macs
		if err := <-w.release; err != nil {
			return err
		}
		return real(path, data)
	}
	return w
}

// await returns the value ch delivers, failing the test if it takes
// longer than a minute (a deadlock, not a timing assumption).
func await[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(time.Minute):
		t.Fatalf("no %s after a minute", what)
		panic("unreachable")
	}
}

func testMACn(i int) net.HardwareAddr {
	return net.HardwareAddr{0x52, 0x54, 2, 0, byte(i >> 8), byte(i)}
}

// TestLeasesGroupCommit: changes made while a write is in flight share the
// next write; nobody's commit returns before its lease is on disk; and
// lookups, holds and picks go on while the write is blocked.
func TestLeasesGroupCommit(t *testing.T) {
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), "leases.json")
	l, err := OpenLeases(path, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	w := blockWrites(t, l)
	first := netip.MustParseAddr("10.99.0.100")
	_, b1, err := l.bind(testMACn(0), first, time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	done1 := make(chan error, 1)
	go func() { done1 <- l.commit(b1) }()
	if got := await(t, w.started, "first write"); len(got) != 1 {
		t.Fatalf("first write holds %v", got)
	}
	// The first write is in flight: the table is still usable.
	if !l.InUse(first, macB) {
		t.Error("lease being written not in use")
	}
	if a, ok := l.Pick(first, netip.MustParseAddr("10.99.0.200"), macB, func(netip.Addr) bool { return true }); !ok || a == first {
		t.Errorf("pick during a write = %v %v", a, ok)
	}
	const n = 10
	var batches []*batch
	for i := 1; i <= n; i++ {
		a := netip.AddrFrom4([4]byte{10, 99, 0, byte(100 + i)})
		l.Hold(testMACn(i), a, time.Minute)
		_, b, err := l.bind(testMACn(i), a, time.Hour, "")
		if err != nil {
			t.Fatal(err)
		}
		batches = append(batches, b)
	}
	for _, b := range batches[1:] {
		if b != batches[0] || b == b1 {
			t.Fatal("changes made during a write are not grouped into one next write")
		}
	}
	done := make(chan error, n)
	for _, b := range batches {
		go func() { done <- l.commit(b) }()
	}
	select {
	case err := <-done1:
		t.Fatalf("commit returned (%v) while its write was in flight", err)
	case err := <-done:
		t.Fatalf("commit returned (%v) before its write began", err)
	default:
	}
	w.release <- nil
	if err := await(t, done1, "first commit"); err != nil {
		t.Fatal(err)
	}
	if got := await(t, w.started, "second write"); len(got) != n+1 {
		t.Fatalf("second write holds %d leases, want %d", len(got), n+1)
	}
	w.release <- nil
	for range n {
		if err := await(t, done, "grouped commit"); err != nil {
			t.Fatal(err)
		}
	}
	// Exactly two writes: a third would block on started.
	select {
	case got := <-w.started:
		t.Fatalf("a third write %v", got)
	default:
	}
	l2, err := OpenLeases(path, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	if len(l2.All()) != n+1 {
		t.Fatalf("on disk: %d leases, want %d", len(l2.All()), n+1)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("leases file: %v %v", fi, err)
	}
}

// TestLeasesGroupCommitFailure: a failed write undoes its changes and the
// ones made while it was in flight; memory goes back to the file's table.
func TestLeasesGroupCommitFailure(t *testing.T) {
	clk := newFakeClock()
	path := filepath.Join(t.TempDir(), "leases.json")
	l, err := OpenLeases(path, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	kept := netip.MustParseAddr("10.99.0.100")
	if _, err := l.Bind(macA, kept, time.Hour, "kept"); err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	w := blockWrites(t, l)
	// macA moves to .101 (its .100 record goes), macB binds .102.
	_, b1, err := l.bind(macA, netip.MustParseAddr("10.99.0.101"), time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	done1 := make(chan error, 1)
	go func() { done1 <- l.commit(b1) }()
	await(t, w.started, "write")
	_, b2, err := l.bind(macB, netip.MustParseAddr("10.99.0.102"), time.Hour, "")
	if err != nil {
		t.Fatal(err)
	}
	done2 := make(chan error, 1)
	go func() { done2 <- l.commit(b2) }()
	w.release <- errors.New("disk on fire")
	for _, ch := range []chan error{done1, done2} {
		if err := await(t, ch, "failed commit"); err == nil || !strings.Contains(err.Error(), "disk on fire") {
			t.Fatalf("commit after a failed write: %v", err)
		}
	}
	if le, ok := l.Get(macA); !ok || le.Addr != kept || le.Hostname != "kept" {
		t.Errorf("macA after the failed write: %+v %v, want its lease on disk", le, ok)
	}
	if _, ok := l.Get(macB); ok || l.InUse(netip.MustParseAddr("10.99.0.102"), macA) {
		t.Error("a change made during the failed write survived it")
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Error("the file changed after a failed write")
	}
	// The next write works and carries only what was made after.
	go func() { w.release <- nil }()
	go func() { <-w.started }()
	if _, err := l.Bind(macB, netip.MustParseAddr("10.99.0.103"), time.Hour, ""); err != nil {
		t.Fatal(err)
	}
	l2, err := OpenLeases(path, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	if all := l2.All(); len(all) != 2 || all[0].Addr != kept || all[1].Addr != netip.MustParseAddr("10.99.0.103") {
		t.Fatalf("on disk %+v", all)
	}
}

// refPick is the allocator Pick replaced, a scan of the whole range: the
// lowest never-leased free address, else the free one expired first.
func refPick(l *Leases, start, end netip.Addr, mac net.HardwareAddr, usable func(netip.Addr) bool) (netip.Addr, bool) {
	var oldest netip.Addr
	var oldestExp time.Time
	for a := start; a.IsValid() && !end.Less(a); a = a.Next() {
		if !usable(a) || l.InUse(a, mac) {
			continue
		}
		exp, known := l.Known(a)
		if !known {
			return a, true
		}
		if !oldest.IsValid() || exp.Before(oldestExp) {
			oldest, oldestExp = a, exp
		}
	}
	return oldest, oldest.IsValid()
}

// TestLeasesPickMatchesScan drives the table with random offers, binds,
// releases, declines, dropped offers and clock steps, and checks after
// every step that Pick answers what a full scan of the range answers.
func TestLeasesPickMatchesScan(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 1))
			clk := newFakeClock()
			l, err := OpenLeases("", clk.Now)
			if err != nil {
				t.Fatal(err)
			}
			start, end := netip.MustParseAddr("10.99.0.10"), netip.MustParseAddr("10.99.0.41")
			reserved := netip.MustParseAddr("10.99.0.20")
			usable := func(a netip.Addr) bool { return a != reserved }
			for step := range 3000 {
				mac := testMACn(rng.IntN(48))
				want, wantOK := refPick(l, start, end, mac, usable)
				got, gotOK := l.Pick(start, end, mac, usable)
				if got != want || gotOK != wantOK {
					t.Fatalf("step %d: Pick = %v %v, scan = %v %v", step, got, gotOK, want, wantOK)
				}
				switch op := rng.IntN(10); {
				case op < 4 && gotOK: // offer, sometimes taken
					l.Hold(mac, got, time.Duration(1+rng.IntN(60))*time.Second)
					if rng.IntN(2) == 0 {
						if _, err := l.Bind(mac, got, time.Duration(1+rng.IntN(300))*time.Second, ""); err != nil {
							t.Fatal(err)
						}
					}
				case op == 4:
					l.DropHold(mac)
				case op == 5:
					if le, ok := l.Get(mac); ok {
						if err := l.Release(mac, le.Addr); err != nil {
							t.Fatal(err)
						}
					}
				case op == 6:
					a := netip.AddrFrom4([4]byte{10, 99, 0, byte(10 + rng.IntN(32))})
					if err := l.Decline(a, time.Duration(1+rng.IntN(120))*time.Second); err != nil {
						t.Fatal(err)
					}
				default:
					clk.Advance(time.Duration(rng.IntN(20)) * time.Second)
				}
			}
		})
	}
}

// FuzzParseLeases: any file content is either refused or parses into a
// table that encodes and parses back to the same leases.
func FuzzParseLeases(f *testing.F) {
	seed, err := os.ReadFile(filepath.Join("testdata", "dhcp", "leases-v1.json"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte(`{"version": 1, "leases": []}`))
	f.Add([]byte(`{"version": 1, "leases": [{"mac": "52:54:00:00:00:0a", "addr": "10.0.0.1", "expires": "2026-01-01T00:00:00Z"}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		leases, err := parseLeases(data)
		if err != nil {
			return
		}
		enc, err := encodeLeases(slices.Clone(leases))
		if err != nil {
			t.Fatalf("encode a parsed table: %v", err)
		}
		back, err := parseLeases(enc)
		if err != nil {
			t.Fatalf("encoded table does not parse: %v\n%s", err, enc)
		}
		if len(back) != len(leases) {
			t.Fatalf("%d leases back, want %d", len(back), len(leases))
		}
		byMAC := map[string]Lease{}
		for _, le := range leases {
			byMAC[le.MAC] = le
		}
		for _, le := range back {
			want := byMAC[le.MAC]
			if le.Addr != want.Addr || !le.Expires.Equal(want.Expires) || le.Hostname != want.Hostname {
				t.Fatalf("lease %+v came back as %+v", want, le)
			}
		}
	})
}
