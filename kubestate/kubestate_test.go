package kubestate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/pxe"
)

// TestAPIServer runs everything that needs a real API server against one
// etcd + kube-apiserver (kubetest), each part in its own namespace. Two
// replicas are two Stores over two clients (two connections).
func TestAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	t.Logf("measured: apiserver ready in %v", env.ReadyIn.Round(time.Millisecond))
	t.Run("MachineRace", func(t *testing.T) { testMachineRace(t, env.Config) })
	t.Run("InventoryRace", func(t *testing.T) { testInventoryRace(t, env.Config) })
	t.Run("InventoryRecord", func(t *testing.T) { testInventoryRecord(t, env.Config) })
	t.Run("InventoryWatch", func(t *testing.T) { testInventoryWatch(t, env.Config) })
	t.Run("Tokens", func(t *testing.T) { testTokens(t, env.Config) })
	t.Run("TokenRace", func(t *testing.T) { testTokenRace(t, env.Config) })
	t.Run("Leases", func(t *testing.T) { testLeases(t, env.Config) })
	t.Run("ImportExport", func(t *testing.T) { testImportExport(t, env.Config) })
	t.Run("RBAC", func(t *testing.T) { testRBAC(t, env.Config) })
	t.Run("Documents", func(t *testing.T) { testDocuments(t, env.Config) })
	t.Run("ImportPartial", func(t *testing.T) { testImportPartial(t, env.Config) })
	t.Run("Discovered", func(t *testing.T) { testDiscovered(t, env.Config) })
	t.Run("DiscoveredCap", func(t *testing.T) { testDiscoveredCap(t, env.Config) })
}

// replicas makes a namespace and n Stores on it, each with its own client.
func replicas(t *testing.T, cfg *rest.Config, n int) []*Store {
	t.Helper()
	ns := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := kubernetes.NewForConfigOrDie(cfg)
	if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
	var out []*Store
	for range n {
		c := rest.CopyConfig(cfg)
		c.QPS, c.Burst = 500, 1000 // the race must not be throttled away
		s, err := New(kubernetes.NewForConfigOrDie(c), ns)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// testMachineRace: two replicas, each with several writers, add N timeline
// entries each to one machine's record at once; every entry is there at the
// end, and conflicts did happen (the race was real).
func testMachineRace(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	rs := replicas(t, cfg, 2)
	const perReplica, writers = 40, 4
	var calls atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 2*perReplica)
	for r, s := range rs {
		b := s.Machines()
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < perReplica; i += writers {
					id := fmt.Sprintf("r%d-%02d", r, i)
					_, err := b.Update(ctx, "formula", func(m *inventory.Machine) bool {
						calls.Add(1)
						m.Name = "formula"
						m.Timeline = append(m.Timeline, inventory.Entry{Stage: "dhcp", ID: id})
						m.Revision++
						return true
					})
					if err != nil {
						errc <- err
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	ms, err := rs[1].Machines().Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 {
		t.Fatalf("records: %d, want 1", len(ms))
	}
	got := map[string]bool{}
	for _, e := range ms[0].Timeline {
		if got[e.ID] {
			t.Errorf("entry %s twice", e.ID)
		}
		got[e.ID] = true
	}
	for r := range 2 {
		for i := range perReplica {
			if id := fmt.Sprintf("r%d-%02d", r, i); !got[id] {
				t.Errorf("entry %s lost", id)
			}
		}
	}
	if ms[0].Revision != 2*perReplica {
		t.Errorf("revision %d, want %d (one per stored change)", ms[0].Revision, 2*perReplica)
	}
	t.Logf("measured: %d updates from 2 replicas × %d writers, %d change calls (%d retried after a conflict)",
		2*perReplica, writers, calls.Load(), calls.Load()-2*perReplica)
	if calls.Load() == 2*perReplica {
		t.Errorf("no update conflicted: the race did not happen, so the test proved nothing")
	}
}

// testInventoryRace: the inventory of two replicas records events of one
// machine at once (durable Talos events and netboot events); nothing is
// lost, and after a refresh both replicas see the same record.
func testInventoryRace(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	rs := replicas(t, cfg, 2)
	known := func(n string) bool { return n == "formula" }
	var invs []*inventory.Store
	for _, s := range rs {
		inv, err := s.Inventory(ctx, inventory.WithNames(known), inventory.WithFlushDelay(0), inventory.WithLimits(1000, 10))
		if err != nil {
			t.Fatal(err)
		}
		invs = append(invs, inv)
	}
	const n = 30
	var wg sync.WaitGroup
	for r, inv := range invs {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range n {
				id := fmt.Sprintf("ev-%d-%02d", r, i)
				applied, err := inv.MarkEvent("formula", id, inventory.StageInstalling, id)
				if err != nil || !applied {
					t.Errorf("MarkEvent %s: applied %v, err %v", id, applied, err)
				}
			}
		}()
		go func() {
			defer wg.Done()
			for i := range n {
				if err := inv.MarkStage("formula", pxe.StageKernel, fmt.Sprintf("stage-%d-%02d", r, i)); err != nil {
					t.Errorf("MarkStage: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	for _, inv := range invs {
		if err := inv.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	// A replay of an event already recorded (by the other replica) is not
	// applied again.
	if applied, err := invs[1].MarkEvent("formula", "ev-0-00", inventory.StageInstalling, "ev-0-00"); err != nil || applied {
		t.Errorf("replayed event: applied %v, err %v; want false, nil", applied, err)
	}
	for r, inv := range invs {
		if err := inv.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		m, ok := inv.Machine("formula")
		if !ok {
			t.Fatalf("replica %d: no formula", r)
		}
		details := map[string]int{}
		for _, e := range m.Timeline {
			details[e.Detail]++
		}
		for w := range 2 {
			for i := range n {
				for _, d := range []string{fmt.Sprintf("ev-%d-%02d", w, i), fmt.Sprintf("stage-%d-%02d", w, i)} {
					if details[d] != 1 {
						t.Errorf("replica %d: entry %q seen %d times, want 1", r, d, details[d])
					}
				}
			}
		}
		if m.Revision == 0 {
			t.Errorf("replica %d: revision 0", r)
		}
	}
	a, _ := invs[0].Machine("formula")
	b, _ := invs[1].Machine("formula")
	if a.Revision != b.Revision || len(a.Timeline) != len(b.Timeline) {
		t.Errorf("replicas differ after refresh: revision %d/%d, timeline %d/%d", a.Revision, b.Revision, len(a.Timeline), len(b.Timeline))
	}
}

// testInventoryWatch: a machine installed through one replica is installed
// on the other within moments, through the watch.
func testInventoryWatch(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	rs := replicas(t, cfg, 2)
	known := func(n string) bool { return n == "urban" }
	a, err := rs[0].Inventory(ctx, inventory.WithNames(known), inventory.WithFlushDelay(0))
	if err != nil {
		t.Fatal(err)
	}
	b, err := rs[1].Inventory(ctx, inventory.WithNames(known), inventory.WithFlushDelay(0))
	if err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rs[1].Machines().Watch(wctx, b.Observe) }()
	defer func() {
		stop()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("watch ended with %v, want context.Canceled", err)
		}
	}()
	ch, unsub := b.Subscribe()
	defer unsub()
	start := time.Now()
	if _, err := a.MarkEvent("urban", "id-1", inventory.StageInstalled, ""); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(20 * time.Second)
	for !b.Installed("urban") {
		select {
		case <-ch:
		case <-deadline:
			t.Fatal("the other replica never saw urban installed")
		}
	}
	t.Logf("measured: installed seen by the other replica %v after the write began", time.Since(start).Round(time.Millisecond))
	// Its own later change goes on top of the record it saw.
	if err := b.Reset("urban"); err != nil {
		t.Fatal(err)
	}
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Installed("urban") {
		t.Error("reset through one replica: the other still sees urban installed")
	}
}

var (
	mac1 = net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	mac2 = net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x57}
	ip1  = netip.MustParseAddr("10.99.0.21")
	ip2  = netip.MustParseAddr("10.99.0.22")
)

// testTokens: a token minted on one replica is accepted on another, spent
// there, refused from another address on the first; a machine whose tokens
// were used up on one replica is refused on the other; pins are shared.
func testTokens(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	rs := replicas(t, cfg, 2)
	var toks []*pxe.Tokens
	for _, s := range rs {
		tk, err := s.Tokens(ctx, pxe.TokenConfig{})
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tk)
	}
	bind := pxe.TokenBinding{Name: "formula", MAC: mac1}
	tok, err := toks[0].Mint(bind)
	if err != nil {
		t.Fatal(err)
	}
	if _, retry, err := toks[1].Spend(tok, mac1, "", ip1, mac1); err != nil || retry {
		t.Fatalf("first spend on replica 2: retry %v, err %v", retry, err)
	}
	if _, _, err := toks[0].Spend(tok, mac1, "", ip2, mac2); !errors.Is(err, pxe.ErrTokenSpent) {
		t.Errorf("spend from another address on replica 1: %v, want ErrTokenSpent", err)
	}
	if _, retry, err := toks[0].Spend(tok, mac1, "", ip1, mac1); err != nil || !retry {
		t.Errorf("retry from the pinned address on replica 1: retry %v, err %v; want true, nil", retry, err)
	}
	if name, _, ok := toks[0].Pinned(ip1); !ok || name != "formula" {
		t.Errorf("replica 1 Pinned(%v) = %q, %v; want formula (pinned by replica 2)", ip1, name, ok)
	}
	if name, ok := toks[0].PinnedMAC(mac1); !ok || name != "formula" {
		t.Errorf("replica 1 PinnedMAC = %q, %v; want formula", name, ok)
	}
	older, err := toks[1].Mint(bind)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond) // Consume is later than the token's mint time
	if err := toks[0].Consume("formula"); err != nil {
		t.Fatal(err)
	}
	if _, err := toks[1].Verify(older, mac1, ""); !errors.Is(err, pxe.ErrTokenConsumed) {
		t.Errorf("token minted before Consume on the other replica: %v, want ErrTokenConsumed", err)
	}
	if _, _, err := toks[1].Spend(older, mac1, "", ip1, mac1); !errors.Is(err, pxe.ErrTokenConsumed) {
		t.Errorf("spend of a used-up token on the other replica: %v, want ErrTokenConsumed", err)
	}
	key0, _ := rs[0].TokenKey(ctx)
	key1, _ := rs[1].TokenKey(ctx)
	if string(key0) != string(key1) || len(key0) != pxe.TokenKeyLen {
		t.Errorf("replicas have different or bad token keys (%d, %d bytes)", len(key0), len(key1))
	}
}

// testTokenRace: three replicas spend one token at once from three
// addresses: exactly one wins.
func testTokenRace(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	rs := replicas(t, cfg, 3)
	var toks []*pxe.Tokens
	for _, s := range rs {
		tk, err := s.Tokens(ctx, pxe.TokenConfig{})
		if err != nil {
			t.Fatal(err)
		}
		toks = append(toks, tk)
	}
	for round := range 5 {
		tok, err := toks[0].Mint(pxe.TokenBinding{Name: "lailah", MAC: mac1})
		if err != nil {
			t.Fatal(err)
		}
		var wins, spent atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, tk := range toks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				addr := netip.AddrFrom4([4]byte{10, 99, 0, byte(100 + i)})
				_, retry, err := tk.Spend(tok, mac1, "", addr, nil)
				switch {
				case err == nil && !retry:
					wins.Add(1)
				case errors.Is(err, pxe.ErrTokenSpent):
					spent.Add(1)
				default:
					t.Errorf("round %d replica %d: retry %v, err %v", round, i, retry, err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if wins.Load() != 1 || spent.Load() != 2 {
			t.Errorf("round %d: %d spends won, %d refused; want 1 and 2", round, wins.Load(), spent.Load())
		}
	}
}

// testLeases: a lease bound by one replica is seen by the other; a replica
// writing over a table it has not seen is refused (ErrLeasesChanged) and
// takes in the newer table, and its next write goes through.
func testLeases(t *testing.T, cfg *rest.Config) {
	rs := replicas(t, cfg, 2)
	a, err := pxe.OpenLeaseStore(rs[0].Leases(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Bind(mac1, ip1, time.Hour, "formula"); err != nil {
		t.Fatal(err)
	}
	b, err := pxe.OpenLeaseStore(rs[1].Leases(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if le, ok := b.Get(mac1); !ok || le.Addr != ip1 {
		t.Fatalf("replica 2 sees lease %+v, %v; want %v", le, ok, ip1)
	}
	// Replica 1 binds again; replica 2, which has not seen that, is refused.
	if _, err := a.Bind(mac2, ip2, time.Hour, "urban"); err != nil {
		t.Fatal(err)
	}
	mac3 := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x58}
	ip3 := netip.MustParseAddr("10.99.0.23")
	if _, err := b.Bind(mac3, ip3, time.Hour, ""); !errors.Is(err, pxe.ErrLeasesChanged) {
		t.Fatalf("stale replica's bind: %v, want ErrLeasesChanged", err)
	}
	if le, ok := b.Get(mac2); !ok || le.Addr != ip2 {
		t.Errorf("after the refused write replica 2 has %+v, %v; want urban's lease (it loads the table again)", le, ok)
	}
	if _, err := b.Bind(mac3, ip3, time.Hour, ""); err != nil {
		t.Fatalf("bind after reloading: %v", err)
	}
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if got := len(a.All()); got != 3 {
		t.Errorf("replica 1 after Reload: %d leases, want 3", got)
	}
}

func TestMachineObjectName(t *testing.T) {
	for _, tt := range []struct{ key, want string }{
		{"formula", "rackboot-machine-formula"},
		{"cp-1.rack", "rackboot-machine-cp-1.rack"},
		{"52:54:00:12:34:56", "rackboot-discovered-525400123456"},
		{"52-54-00-12-34-56", "rackboot-machine-52-54-00-12-34-56"}, // a name, not a discovered MAC key
		{"Formula", "rackboot-machine-x-"},
		{"x-formula", "rackboot-machine-x-"},
		{strings.Repeat("a", 300), "rackboot-machine-x-"},
	} {
		got := MachineObjectName(tt.key)
		if !strings.HasPrefix(got, tt.want) || (strings.HasSuffix(tt.want, "x-") && len(got) != len(tt.want)+32) {
			t.Errorf("MachineObjectName(%q) = %q, want %s...", tt.key, got, tt.want)
		}
		if errs := validation.IsDNS1123Subdomain(got); len(errs) > 0 {
			t.Errorf("MachineObjectName(%q) = %q: %v", tt.key, got, errs)
		}
	}
	if MachineObjectName("52:54:00:12:34:56") == MachineObjectName("52:54:00:12:34:57") {
		t.Error("two MACs share an object name")
	}
}

// testInventoryRecord: netboot events (saved within the flush delay, not
// at once) from two replicas at once all reach the record; a machine first
// seen unknown and then by name brings its history along.
func testInventoryRecord(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	rs := replicas(t, cfg, 2)
	byMAC := func(mac string) (string, bool) { return "formula", mac == mac1.String() }
	var invs []*inventory.Store
	for _, s := range rs {
		inv, err := s.Inventory(ctx, inventory.WithMACNames(byMAC), inventory.WithFlushDelay(20*time.Millisecond), inventory.WithLimits(1000, 10))
		if err != nil {
			t.Fatal(err)
		}
		invs = append(invs, inv)
	}
	// Replica 1 sees an unknown machine, then learns its name.
	invs[0].Record(pxe.Event{MAC: mac2, Stage: pxe.StageDiscovered, Detail: "unknown first"})
	invs[0].Record(pxe.Event{Name: "urban", MAC: mac2, Stage: pxe.StageDHCP})
	const n = 25
	var wg sync.WaitGroup
	for r, inv := range invs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				inv.Record(pxe.Event{MAC: mac1, Addr: ip1, Stage: pxe.StageKernel, Detail: fmt.Sprintf("rec-%d-%02d", r, i)})
				time.Sleep(time.Millisecond)
			}
		}()
	}
	wg.Wait()
	for _, inv := range invs {
		if err := inv.Close(); err != nil {
			t.Fatal(err)
		}
	}
	ms, err := rs[1].Machines().Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]inventory.Machine{}
	for _, m := range ms {
		got[m.Key] = m
	}
	f := got["formula"]
	details := map[string]int{}
	for _, e := range f.Timeline {
		details[e.Detail]++
	}
	for r := range 2 {
		for i := range n {
			if d := fmt.Sprintf("rec-%d-%02d", r, i); details[d] != 1 {
				t.Errorf("entry %s seen %d times, want 1", d, details[d])
			}
		}
	}
	if f.Addr != ip1 || !slices.Equal(f.MACs, []string{mac1.String()}) {
		t.Errorf("formula: addr %v, MACs %v", f.Addr, f.MACs)
	}
	u := got["urban"]
	if len(u.Timeline) != 2 || u.Timeline[0].Detail != "unknown first" || !slices.Equal(u.MACs, []string{mac2.String()}) {
		t.Errorf("urban adopted from its unknown history: %+v", u)
	}
	if _, ok := got[mac2.String()]; ok {
		t.Error("the unknown machine got a record of its own")
	}
	t.Logf("measured: %d netboot events from 2 replicas saved in %d revisions", 2*n, f.Revision)
}
