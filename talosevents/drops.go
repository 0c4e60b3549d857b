package talosevents

import (
	"maps"
	"sync"
)

// Reasons an event or a kernel log line is dropped: the label values of the
// dropped counters.
const (
	// DropUnattributed: the source address is no machine's (the Resolver
	// does not know it).
	DropUnattributed = "unattributed"
	// DropMalformed: the event payload or the kernel log record could not
	// be parsed.
	DropMalformed = "malformed"
	// DropUnknownMachine: the Resolver named a machine the Recorder does not
	// know.
	DropUnknownMachine = "unknown-machine"
)

// drops counts dropped items by reason.
type drops struct {
	mu sync.Mutex
	n  map[string]uint64
}

func newDrops() *drops {
	return &drops{n: map[string]uint64{DropUnattributed: 0, DropMalformed: 0, DropUnknownMachine: 0}}
}

func (d *drops) add(reason string, n int) {
	if n <= 0 {
		return
	}
	d.mu.Lock()
	d.n[reason] += uint64(n)
	d.mu.Unlock()
}

func (d *drops) snapshot() map[string]uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.n)
}
