package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// End is one end of the link: a TAP device created in a network namespace.
type End struct {
	NetNS string // the namespace's file, e.g. /run/netns/bench-tftp-srv
	Name  string // the TAP device's name in it
}

// frame is one Ethernet frame and when it was read.
type frame struct {
	data []byte
	at   time.Time
}

// Link relays Ethernet frames between two TAP devices, each frame delayed
// by a fixed time: a point-to-point cable with latency, for kernels without
// the netem qdisc. Frames keep their order; nothing is dropped unless a
// queue of QueueLen frames overflows (counted in Dropped).
type Link struct {
	Delay    time.Duration
	QueueLen int
	Now      func() time.Time

	mu      sync.Mutex
	dropped int64
	frames  int64
}

// Dropped and Frames report the link's counters.
func (l *Link) Dropped() int64 { l.mu.Lock(); defer l.mu.Unlock(); return l.dropped }

// Frames is how many frames were relayed.
func (l *Link) Frames() int64 { l.mu.Lock(); defer l.mu.Unlock(); return l.frames }

// OpenTAP creates the TAP device end.Name in end's namespace and returns
// it open. The device lives as long as the file is open.
func OpenTAP(end End) (*os.File, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// Switch one locked OS thread into the namespace: TUNSETIFF creates
		// the device in the caller's namespace. The thread is thrown away
		// afterwards (never unlocked), so no other goroutine runs in it.
		runtime.LockOSThread()
		target, err := os.Open(end.NetNS)
		if err != nil {
			ch <- result{err: fmt.Errorf("open namespace %s: %w", end.NetNS, err)}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("enter namespace %s: %w", end.NetNS, err)}
			return
		}
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			ch <- result{err: fmt.Errorf("open /dev/net/tun: %w", err)}
			return
		}
		ifr, err := unix.NewIfreq(end.Name)
		if err != nil {
			unix.Close(fd)
			ch <- result{err: fmt.Errorf("TAP name %q: %w", end.Name, err)}
			return
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			ch <- result{err: fmt.Errorf("create TAP %s in %s: %w", end.Name, end.NetNS, err)}
			return
		}
		ch <- result{f: os.NewFile(uintptr(fd), end.Name)}
	}()
	r := <-ch
	return r.f, r.err
}

// Run relays between a and b in both directions until ctx ends.
func (l *Link) Run(ctx context.Context, a, b *os.File) error {
	if l.Now == nil {
		l.Now = time.Now
	}
	if l.QueueLen <= 0 {
		l.QueueLen = 1 << 16
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 4)
	for _, dir := range [][2]*os.File{{a, b}, {b, a}} {
		q := make(chan frame, l.QueueLen)
		go func() { errc <- l.read(ctx, dir[0], q) }()
		go func() { errc <- l.write(ctx, dir[1], q) }()
	}
	go func() {
		<-ctx.Done()
		// Unblock the readers.
		_ = a.SetReadDeadline(time.Now())
		_ = b.SetReadDeadline(time.Now())
	}()
	var first error
	for range 4 {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

func (l *Link) read(ctx context.Context, from *os.File, q chan<- frame) error {
	for {
		buf := make([]byte, 65536)
		n, err := from.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read %s: %w", from.Name(), err)
		}
		select {
		case q <- frame{data: buf[:n:n], at: l.Now()}:
		default:
			l.mu.Lock()
			l.dropped++
			l.mu.Unlock()
		}
	}
}

func (l *Link) write(ctx context.Context, to *os.File, q <-chan frame) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var f frame
		select {
		case <-ctx.Done():
			return nil
		case f = <-q:
		}
		if wait := f.at.Add(l.Delay).Sub(l.Now()); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return nil
			case <-timer.C:
			}
		}
		if _, err := to.Write(f.data); err != nil {
			// A frame the device refuses (device down, bad size) is lost,
			// as on a cable; the link goes on.
			if ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
				return nil
			}
			l.mu.Lock()
			l.dropped++
			l.mu.Unlock()
			continue
		}
		l.mu.Lock()
		l.frames++
		l.mu.Unlock()
	}
}
