package inventory

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestMergeSeen(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	ip1, ip2 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	stored := Machine{Key: "52:54:00:00:00:01", MACs: []string{"52:54:00:00:00:01"}, Addr: ip1, Stage: "dhcp",
		FirstSeen: at(0), LastSeen: at(10), Timeline: []Entry{{Time: at(0), Stage: "dhcp"}, {Time: at(10), Stage: "dhcp", Detail: "b"}}}
	mine := Machine{Key: stored.Key, MACs: stored.MACs, Addr: ip2, Stage: "discovery-boot", FirstSeen: at(5), LastSeen: at(20),
		Timeline: []Entry{{Time: at(5), Stage: "ipxe"}, {Time: at(20), Stage: "discovery-boot"}}}

	got := stored.clone()
	if !mergeSeen(&got, mine, 3) {
		t.Fatal("merge of newer entries reported no change")
	}
	if got.Addr != ip2 || got.Stage != "discovery-boot" || !got.FirstSeen.Equal(at(0)) || !got.LastSeen.Equal(at(20)) {
		t.Errorf("merged: %+v", got)
	}
	stages := []string{}
	for _, e := range got.Timeline {
		stages = append(stages, e.Stage)
	}
	if !slices.Equal(stages, []string{"ipxe", "dhcp", "discovery-boot"}) {
		t.Errorf("timeline %v: want the last 3 in time order", stages)
	}
	// The same again changes nothing (no write), nor does an older copy's
	// entries that fell off the stored timeline.
	if again := got.clone(); mergeSeen(&again, mine, 3) || mergeSeen(&again, stored, 3) {
		t.Errorf("merging what is already there reported a change: %+v", again)
	}
	// An older copy does not move the address back.
	old := mine.clone()
	if mergeSeen(&old, stored, 10); old.Addr != ip2 || old.Stage != "discovery-boot" {
		t.Errorf("an older copy moved the machine back: %+v", old)
	}
}

func TestIsDiscoveredKey(t *testing.T) {
	for key, want := range map[string]bool{
		"52:54:00:12:34:56": true, "52-54-00-12-34-56": false, "52:54:00:12:34:5A": false,
		"formula": false, "": false, "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01": true,
	} {
		if got := IsDiscoveredKey(key); got != want {
			t.Errorf("IsDiscoveredKey(%q) = %v, want %v", key, got, want)
		}
	}
}
