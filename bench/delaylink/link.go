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

// frame is one Ethernet frame and when it is due (CLOCK_MONOTONIC, ns).
type frame struct {
	data []byte
	due  int64
}

// monotonic is CLOCK_MONOTONIC in nanoseconds: the clock clock_nanosleep
// sleeps on.
func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// Link relays Ethernet frames between two TAP devices, each frame delayed
// by a fixed time: a point-to-point cable with latency, for kernels without
// the netem qdisc. Frames keep their order; nothing is dropped unless a
// queue of QueueLen frames overflows (counted in Dropped).
//
// Go's timers sleep at least 1 ms when the process is idle (the netpoller
// waits in milliseconds), too coarse for a 0.5 ms delay; each direction's
// writer therefore runs on its own OS thread and sleeps with
// clock_nanosleep (high-resolution timers, tens of µs).
type Link struct {
	Delay    time.Duration
	QueueLen int

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
		case q <- frame{data: buf[:n:n], due: monotonic() + l.Delay.Nanoseconds()}:
		default:
			l.mu.Lock()
			l.dropped++
			l.mu.Unlock()
		}
	}
}

func (l *Link) write(ctx context.Context, to *os.File, q <-chan frame) error {
	// Never unlocked: the thread sleeps in clock_nanosleep for this
	// goroutine only and is discarded when it ends.
	runtime.LockOSThread()
	for {
		var f frame
		select {
		case <-ctx.Done():
			return nil
		case f = <-q:
		}
		if f.due > monotonic() {
			ts := unix.NsecToTimespec(f.due)
			for {
				err := unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &ts, nil)
				if err != unix.EINTR {
					break
				}
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
