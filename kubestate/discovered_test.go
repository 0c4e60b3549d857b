package kubestate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/pxe"
)

// watchInv runs the watch a replica runs (serve --kube) into inv until the
// test ends.
func watchInv(t *testing.T, s *Store, inv *inventory.Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Machines().WatchChanges(ctx, inv.Observe, inv.ObserveDeleted) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("watch ended with %v, want context.Canceled", err)
		}
	})
}

// waitFor polls cond for up to 20 s and returns how long it took.
func waitFor(t *testing.T, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > 20*time.Second {
			t.Fatalf("%s: not within 20 s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// probeSummary is the test's inventory.WithDiscoveredSummary: the address
// and whether the machine was given the discovery boot.
func probeSummary(m inventory.Machine) string {
	boot := slices.ContainsFunc(m.Timeline, func(e inventory.Entry) bool { return e.Stage == pxe.StageDiscoveryBoot })
	return fmt.Sprintf("%v %v", m.Addr, boot)
}

// testDiscovered: a discovered machine seen by one replica becomes a
// record (component discovered) that the other replica takes in through
// its watch; a machine that keeps probing with nothing new causes no
// further write; a new address seen by the other replica is written and
// merged with the first one's entries; machine forget from a third
// client deletes the record and both replicas drop the machine; a rack
// machine cannot be forgotten.
func testDiscovered(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	rs := replicas(t, cfg, 3)
	var invs []*inventory.Store
	for _, s := range rs[:2] {
		inv, err := s.Inventory(ctx, inventory.WithFlushDelay(50*time.Millisecond), inventory.WithDiscoveredSummary(probeSummary),
			inventory.WithNames(func(n string) bool { return n == "formula" }))
		if err != nil {
			t.Fatal(err)
		}
		watchInv(t, s, inv)
		invs = append(invs, inv)
	}
	a, b := invs[0], invs[1]
	key := mac2.String()
	start := time.Now()
	a.Record(pxe.Event{MAC: mac2, Addr: ip1, Stage: pxe.StageDHCP, Detail: "proxy offer: arch efi-x64, ipxe false"})
	seenIn := waitFor(t, "the other replica sees the discovered machine", func() bool { m, ok := b.Machine(key); return ok && m.Addr == ip1 })
	t.Logf("measured: a discovered machine seen by the other replica %v after its first packet (flush delay 50 ms)", seenIn.Round(time.Millisecond))

	cm, err := rs[2].cs.CoreV1().ConfigMaps(rs[2].ns).Get(ctx, "rackboot-discovered-525400123457", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the discovered machine's record: %v", err)
	}
	if cm.Labels[LabelComponent] != ComponentDiscovered {
		t.Errorf("record labels %v, want component %s", cm.Labels, ComponentDiscovered)
	}
	// 3 s of a device probing every 20 ms: DHCP, iPXE, told to wait.
	for range 50 {
		for _, st := range []string{pxe.StageDHCP, pxe.StageIPXE, pxe.StageDiscovered} {
			a.Record(pxe.Event{MAC: mac2, Addr: ip1, Stage: st, Detail: "again"})
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	rec := storedRecord(t, rs[2], key)
	if rec.Revision != 1 {
		t.Errorf("150 packets with nothing new: record at revision %d, want 1 (one write)", rec.Revision)
	}
	// The discovery boot and a new address, seen by the other replica.
	b.Record(pxe.Event{MAC: mac2, Addr: ip2, Stage: pxe.StageDiscoveryBoot, Detail: `uuid= serial="" arch=efi-x64 kernel=k`})
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	rec = storedRecord(t, rs[2], key)
	if rec.Addr != ip2 || !slices.ContainsFunc(rec.Timeline, func(e inventory.Entry) bool { return e.Detail == "proxy offer: arch efi-x64, ipxe false" }) ||
		rec.Timeline[len(rec.Timeline)-1].Stage != pxe.StageDiscoveryBoot {
		t.Errorf("record after the other replica's write: addr %v, timeline %+v", rec.Addr, rec.Timeline)
	}
	if len(rec.Timeline) > inventory.DiscoveredTimelineLen {
		t.Errorf("stored timeline has %d entries, want at most %d", len(rec.Timeline), inventory.DiscoveredTimelineLen)
	}
	waitFor(t, "the first replica sees the new address", func() bool { m, _ := a.Machine(key); return m.Addr == ip2 })
	t.Logf("measured: %d writes of the record for %d events from 2 replicas in %v", rec.Revision, 2+150, time.Since(start).Round(time.Millisecond))

	// Another device, an hour later still probing with nothing new: one
	// write moves its last-seen time.
	hourly := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xaa}
	a.Record(pxe.Event{MAC: hourly, Addr: ip1, Stage: pxe.StageDHCP, Detail: "again"})
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(inventory.DiscoveredRefresh + time.Minute)
	a.Record(pxe.Event{MAC: hourly, Addr: ip1, Stage: pxe.StageIPXE, Detail: "again", Time: later.Add(-time.Minute)})
	a.Record(pxe.Event{MAC: hourly, Addr: ip1, Stage: pxe.StageDHCP, Detail: "again", Time: later})
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	if h := storedRecord(t, rs[2], hourly.String()); h.Revision != 2 || !h.LastSeen.Equal(later) {
		t.Errorf("an hour later: revision %d, last seen %v; want 2, %v", h.Revision, h.LastSeen, later)
	}
	if err := a.Forget(hourly.String()); err != nil {
		t.Fatal(err)
	}
	// machine forget, as the command does it: a third client's inventory.
	cli, err := rs[2].Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := cli.Forget("52-54-00-12-34-57"); err != nil {
		t.Fatal(err)
	}
	for i, inv := range invs {
		waitFor(t, fmt.Sprintf("replica %d drops the forgotten machine", i), func() bool { _, ok := inv.Machine(key); return !ok })
	}
	t.Logf("measured: both replicas dropped the forgotten machine %v after forget began", time.Since(start).Round(time.Millisecond))
	if ms, err := rs[2].Machines().Load(ctx); err != nil || len(ms) != 0 {
		t.Errorf("records after forget: %v %v", ms, err)
	}
	if err := cli.Forget(key); !errors.Is(err, inventory.ErrUnknownMachine) {
		t.Errorf("forget again: %v, want ErrUnknownMachine", err)
	}
	// A rack machine's record is not forgotten.
	if _, err := a.MarkEvent("formula", "e1", inventory.StageInstalled, ""); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other replica sees formula", func() bool { _, ok := b.Machine("formula"); return ok })
	if err := b.Forget("formula"); !errors.Is(err, inventory.ErrNamedMachine) {
		t.Errorf("forget formula: %v, want ErrNamedMachine", err)
	}
	// It netboots again: recorded anew, on both.
	a.Record(pxe.Event{MAC: mac2, Addr: ip1, Stage: pxe.StageDHCP})
	waitFor(t, "the other replica sees it again", func() bool { _, ok := b.Machine(key); return ok })
	// Adopted under a name: its discovered record goes.
	a.Record(pxe.Event{Name: "urban", MAC: mac2, Addr: ip1, Stage: pxe.StageDHCP})
	if err := a.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the other replica drops the adopted machine's discovered record", func() bool { _, ok := b.Machine(key); return !ok })
	if _, ok := a.Machine(key); ok {
		t.Error("the adopting replica still lists the MAC as discovered")
	}
}

// storedRecord reads key's record as stored.
func storedRecord(t *testing.T, s *Store, key string) inventory.Machine {
	t.Helper()
	ms, err := s.Machines().Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(ms, func(m inventory.Machine) bool { return m.Key == key })
	if i < 0 {
		t.Fatalf("no record of %s", key)
	}
	return ms[i]
}

// testDiscoveredCap: a LAN of devices probing: with at most 5 discovered
// machines, 12 new ones leave 5 records (the latest), in the cluster and
// in the other replica's memory.
func testDiscoveredCap(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	rs := replicas(t, cfg, 2)
	a, err := rs[0].Inventory(ctx, inventory.WithFlushDelay(0), inventory.WithMaxUnknown(5))
	if err != nil {
		t.Fatal(err)
	}
	b, err := rs[1].Inventory(ctx, inventory.WithMaxUnknown(5))
	if err != nil {
		t.Fatal(err)
	}
	watchInv(t, rs[1], b)
	var want []string
	for i := range 12 {
		mac := net.HardwareAddr{0x02, 0, 0, 0, 0, byte(i)}
		a.Record(pxe.Event{MAC: mac, Stage: pxe.StageDHCP, Time: time.Now()})
		if i >= 7 {
			want = append(want, mac.String())
		}
	}
	ms, err := rs[1].Machines().Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, m.Key)
	}
	if !slices.Equal(got, want) {
		t.Errorf("records after 12 devices with a cap of 5: %v, want %v", got, want)
	}
	waitFor(t, "the other replica holds the same 5", func() bool {
		var keys []string
		for _, m := range b.Machines() {
			keys = append(keys, m.Key)
		}
		return slices.Equal(keys, want)
	})
	list, err := rs[1].cs.CoreV1().ConfigMaps(rs[1].ns).List(ctx, metav1.ListOptions{LabelSelector: selector(ComponentDiscovered)})
	if err != nil || len(list.Items) != 5 || !strings.HasPrefix(list.Items[0].Name, DiscoveredPrefix) {
		t.Errorf("discovered ConfigMaps: %d (%v)", len(list.Items), err)
	}
}
