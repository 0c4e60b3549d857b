// Package kmsglog streams the kernel log like Talos's
// KmsgLogDeliveryController (internal/app/machined/pkg/controllers/runtime/
// kmsg_log.go, runtime/logging/sender_jsonlines.go at v1.13.0): every
// /dev/kmsg record from the start of the ring, as one JSON object with msg,
// talos-time, talos-level, facility, seq, clock and priority, one per UDP
// datagram (newline-terminated over TCP), to each destination URL.
//
// Simplified: a record that cannot be sent is dropped (Talos retries it
// until one destination takes it).
package kmsglog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Record is one /dev/kmsg record.
type Record struct {
	Facility, Priority int
	Seq, Clock         int64 // sequence number, microseconds since boot
	Msg                string
}

// Parse reads one record as /dev/kmsg returns it:
// "<prefix>,<seq>,<usec>,<flags>[,...];<message>\n" and continuation lines
// (" KEY=value"), which are not part of the message.
func Parse(b string) (Record, error) {
	prefix, msg, ok := strings.Cut(b, ";")
	if !ok {
		return Record{}, errors.New("kernel message without a prefix")
	}
	msg, _, _ = strings.Cut(msg, "\n")
	f := strings.Split(prefix, ",")
	if len(f) < 3 {
		return Record{}, fmt.Errorf("kernel message prefix %q has %d fields", prefix, len(f))
	}
	var n [3]int64
	for i := range n {
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return Record{}, fmt.Errorf("kernel message prefix %q: %w", prefix, err)
		}
		n[i] = v
	}
	return Record{Facility: int(n[0] >> 3), Priority: int(n[0] & 7), Seq: n[1], Clock: n[2], Msg: msg}, nil
}

var facilities = [...]string{"kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp",
	"cron", "authpriv", "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7"}

var priorities = [...]string{"emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"}

// level is Talos's kmsgPriorityToLevel, as zap names the levels.
func level(p int) string {
	switch p {
	case 7:
		return "debug"
	case 5, 6:
		return "info"
	case 4:
		return "warn"
	default:
		return "error"
	}
}

// JSON is the record as Talos sends it; boot is when the machine booted
// (the record's time is boot + its clock).
func (r Record) JSON(boot time.Time) ([]byte, error) {
	fac := strconv.Itoa(r.Facility)
	if r.Facility >= 0 && r.Facility < len(facilities) {
		fac = facilities[r.Facility]
	}
	return json.Marshal(map[string]any{
		"msg":         r.Msg,
		"talos-time":  boot.Add(time.Duration(r.Clock) * time.Microsecond).Format(time.RFC3339Nano),
		"talos-level": level(r.Priority),
		"facility":    fac,
		"seq":         r.Seq,
		"clock":       r.Clock,
		"priority":    priorities[r.Priority&7],
	})
}

// BootTime is now minus the time since boot (CLOCK_BOOTTIME).
func BootTime() time.Time {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return time.Now()
	}
	return time.Now().Add(-time.Duration(ts.Nano()))
}

// sender is one destination.
type sender struct {
	u    *url.URL
	conn net.Conn
}

func (s *sender) send(ctx context.Context, b []byte) error {
	if s.u.Scheme == "tcp" {
		b = append(b, '\n')
	}
	if s.conn == nil {
		c, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, s.u.Scheme, s.u.Host)
		if err != nil {
			return err
		}
		s.conn = c
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := s.conn.Write(b); err != nil {
		s.conn.Close()
		s.conn = nil
		return err
	}
	return nil
}

// Stream sends every record of path (/dev/kmsg) to dests (udp:// or tcp://
// URLs) until ctx ends or path cannot be read. It returns how many records
// it read.
func Stream(ctx context.Context, log *slog.Logger, path string, dests []string) (int, error) {
	var senders []*sender
	for _, d := range dests {
		u, err := url.Parse(d)
		if err != nil || (u.Scheme != "udp" && u.Scheme != "tcp") || u.Host == "" {
			log.Warn("kernel log destination skipped", "url", d, "err", err)
			continue
		}
		senders = append(senders, &sender{u: u})
	}
	if len(senders) == 0 {
		return 0, errors.New("no kernel log destination")
	}
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	go func() {
		<-ctx.Done()
		f.Close()
	}()
	boot := BootTime()
	buf := make([]byte, 16<<10)
	n, failed := 0, 0
	for {
		k, err := f.Read(buf)
		if errors.Is(err, unix.EPIPE) {
			continue // records overwritten before they were read
		}
		if err != nil {
			if ctx.Err() != nil {
				return n, nil
			}
			return n, err
		}
		r, err := Parse(string(buf[:k]))
		if err != nil {
			continue
		}
		n++
		b, err := r.JSON(boot)
		if err != nil {
			continue
		}
		for _, s := range senders {
			if err := s.send(ctx, b); err != nil {
				failed++
				if failed == 1 || failed%100 == 0 {
					log.Warn("kernel log not sent", "to", s.u.String(), "failed", failed, "err", err)
				}
			}
		}
	}
}
