package upgrade

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// talosDouble is a TEST DOUBLE of the Talos API (not Talos): it keeps a
// version per node address, records every call, and on Upgrade "reboots"
// the node: the node answers Unavailable for rebootFor, then reports the
// installer image's tag. The e2e with the lab stand-in's real Talos API
// replaces it there.
type talosDouble struct {
	mu        sync.Mutex
	versions  map[string]string // address → running version
	rebooting map[string]bool
	requests  map[string][]string // address → installer images requested
	members   []EtcdMember
	etcdErr   map[string]string // address → an etcd status error
	rebootFor time.Duration
	// manual: Upgrade does not reboot by itself; the test calls reboot.
	manual bool
	// onUpgrade runs inside Upgrade (before it returns), with the address.
	onUpgrade func(ctx context.Context, addr string) error
	// onBooted runs when a node came back with its new version.
	onBooted func(addr, version string)
	// onVersion runs on each Version call.
	onVersion func(addr string)
}

func newTalosDouble(versions map[string]string) *talosDouble {
	return &talosDouble{versions: versions, rebooting: map[string]bool{}, requests: map[string][]string{}, etcdErr: map[string]string{}, rebootFor: 50 * time.Millisecond}
}

func (d *talosDouble) Version(ctx context.Context, addr string) (string, error) {
	if d.onVersion != nil {
		d.onVersion(addr)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.versions[addr]
	switch {
	case !ok:
		return "", status.Errorf(codes.Unavailable, "no node at %s", addr)
	case d.rebooting[addr]:
		return "", status.Errorf(codes.Unavailable, "connection refused (%s is rebooting)", addr)
	}
	return v, nil
}

func (d *talosDouble) EtcdMembers(ctx context.Context, addr string) ([]EtcdMember, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rebooting[addr] {
		return nil, status.Errorf(codes.Unavailable, "%s is rebooting", addr)
	}
	return append([]EtcdMember(nil), d.members...), nil
}

func (d *talosDouble) EtcdStatus(ctx context.Context, addr string) (EtcdStatus, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rebooting[addr] {
		return EtcdStatus{}, status.Errorf(codes.Unavailable, "%s is rebooting", addr)
	}
	s := EtcdStatus{MemberID: 1, Leader: 1}
	if e := d.etcdErr[addr]; e != "" {
		s.Errors = []string{e}
	}
	return s, nil
}

func (d *talosDouble) Upgrade(ctx context.Context, addr, image string) error {
	d.mu.Lock()
	if _, ok := d.versions[addr]; !ok || d.rebooting[addr] {
		d.mu.Unlock()
		return status.Errorf(codes.Unavailable, "no node at %s", addr)
	}
	d.requests[addr] = append(d.requests[addr], image)
	manual := d.manual
	d.mu.Unlock()
	if !manual {
		d.reboot(addr, tagOf(image))
	}
	if d.onUpgrade != nil {
		return d.onUpgrade(ctx, addr)
	}
	return nil
}

// reboot takes the node down for rebootFor, then up with version.
func (d *talosDouble) reboot(addr, version string) {
	d.mu.Lock()
	d.rebooting[addr] = true
	d.mu.Unlock()
	time.AfterFunc(d.rebootFor, func() {
		d.mu.Lock()
		d.versions[addr] = version
		d.rebooting[addr] = false
		d.mu.Unlock()
		if d.onBooted != nil {
			d.onBooted(addr, version)
		}
	})
}

func (d *talosDouble) requestCount(addr string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.requests[addr])
}

func tagOf(image string) string {
	for i := len(image) - 1; i >= 0; i-- {
		if image[i] == ':' {
			return image[i+1:]
		}
	}
	panic(fmt.Sprintf("image %q has no tag", image))
}
