package talosevents

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/dotfile/rackboot/inventory"
)

// KmsgLine is one kernel log record as Talos sends it with
// talos.logging.kernel: one JSON object per UDP datagram (newline-delimited
// over TCP).
type KmsgLine struct {
	Msg       string    `json:"msg"`
	TalosTime time.Time `json:"talos-time"`
	Level     string    `json:"talos-level"`
	Facility  string    `json:"facility"`
	Priority  string    `json:"priority"`
	Seq       int64     `json:"seq"`
	Clock     int64     `json:"clock"`
}

// kmsgMaxLine bounds one record; kernel lines are far shorter.
const kmsgMaxLine = 16 << 10

// ParseKmsg parses one datagram: a JSON object, or several separated by
// newlines. It returns the records it could parse and an error describing the
// first one it could not; a record without "msg" is an error.
func ParseKmsg(b []byte) ([]KmsgLine, error) {
	out, _, err := parseKmsg(b)
	return out, err
}

// parseKmsg is ParseKmsg that also counts the records it could not parse (an
// empty datagram is one).
func parseKmsg(b []byte) (out []KmsgLine, bad int, firstErr error) {
	for n := 1; len(b) > 0; n++ {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		l, err := parseKmsgLine(line)
		if err != nil {
			bad++
			if firstErr == nil {
				firstErr = fmt.Errorf("kernel log record %d: %w", n, err)
			}
			continue
		}
		out = append(out, l)
	}
	if out == nil && firstErr == nil {
		bad, firstErr = 1, errors.New("empty kernel log datagram")
	}
	return out, bad, firstErr
}

func parseKmsgLine(line []byte) (KmsgLine, error) {
	if len(line) > kmsgMaxLine {
		return KmsgLine{}, fmt.Errorf("record of %d bytes is longer than %d", len(line), kmsgMaxLine)
	}
	var raw struct {
		KmsgLine
		Msg *string `json:"msg"`
	}
	if err := json.Unmarshal(line, &raw); err != nil {
		return KmsgLine{}, fmt.Errorf("parse JSON: %w", err)
	}
	if raw.Msg == nil {
		return KmsgLine{}, errors.New(`no "msg" field`)
	}
	l := raw.KmsgLine
	l.Msg = strings.TrimRight(*raw.Msg, "\r\n")
	return l, nil
}

// KmsgConfig configures the kernel log receiver.
type KmsgConfig struct {
	// Addr is the UDP address to listen on when no PacketConn is given.
	Addr     string
	Resolver Resolver
	Recorder Recorder
	// Now stamps records that carry no talos-time (default time.Now).
	Now func() time.Time
}

// KmsgReceiver receives kernel logs over UDP and attaches them to machines by
// source address.
type KmsgReceiver struct {
	cfg     KmsgConfig
	log     *slog.Logger
	conn    net.PacketConn
	dropped *drops
}

// NewKmsgReceiver checks cfg and returns a receiver; it listens only when
// Serve runs.
func NewKmsgReceiver(cfg KmsgConfig, opts ...Option) (*KmsgReceiver, error) {
	o := buildOptions(opts)
	if cfg.Resolver == nil || cfg.Recorder == nil {
		return nil, errors.New("new kernel log receiver: Resolver and Recorder are required")
	}
	if o.conn == nil && cfg.Addr == "" {
		return nil, errors.New("new kernel log receiver: neither a packet conn nor an address")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &KmsgReceiver{cfg: cfg, log: o.log, conn: o.conn, dropped: newDrops()}, nil
}

// Dropped returns how many kernel log records were dropped, by reason
// (DropUnattributed, DropMalformed, DropUnknownMachine; every reason is
// present). Each unparseable record (or empty datagram) counts one as
// malformed, whatever its source; the parsed records of a datagram from an
// address no machine is known at count as unattributed.
func (r *KmsgReceiver) Dropped() map[string]uint64 { return r.dropped.snapshot() }

// Serve reads datagrams until ctx is cancelled.
func (r *KmsgReceiver) Serve(ctx context.Context) error {
	conn := r.conn
	if conn == nil {
		var err error
		conn, err = (&net.ListenConfig{}).ListenPacket(ctx, "udp", r.cfg.Addr)
		if err != nil {
			return fmt.Errorf("kernel log receiver: listen on %s: %w", r.cfg.Addr, err)
		}
	}
	r.log.Info("kernel log receiver listening", "addr", conn.LocalAddr().String())
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("kernel log receiver: read on %s: %w", conn.LocalAddr(), err)
		}
		r.handle(buf[:n], from)
	}
}

func (r *KmsgReceiver) handle(b []byte, from net.Addr) {
	lines, bad, err := parseKmsg(b)
	if err != nil {
		r.dropped.add(DropMalformed, bad)
		r.log.Debug("kernel log: malformed records dropped", "from", from, "records", bad, "err", err)
	}
	if len(lines) == 0 {
		return
	}
	name, ok := r.attribute(from)
	if !ok {
		r.dropped.add(DropUnattributed, len(lines))
		r.log.Debug("kernel log: lines from an address no machine is known at dropped", "from", from, "lines", len(lines))
		return
	}
	for i, l := range lines {
		t := l.TalosTime
		if t.IsZero() {
			t = r.cfg.Now()
		}
		if err := r.cfg.Recorder.AddLog(name, inventory.LogLine{Time: t, Level: l.Level, Msg: l.Msg}); err != nil {
			r.dropped.add(DropUnknownMachine, len(lines)-i)
			r.log.Debug("kernel log: lines dropped", "machine", name, "err", err)
			return
		}
	}
}

// attribute names the machine a datagram comes from.
func (r *KmsgReceiver) attribute(from net.Addr) (string, bool) {
	addr, err := peerAddr(from)
	if err != nil {
		return "", false
	}
	return r.cfg.Resolver(addr)
}
