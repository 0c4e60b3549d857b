package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Mode is what each simulated client does.
type Mode string

// Modes.
const (
	// ModeDiscover sends a DISCOVER and waits for the OFFER.
	ModeDiscover Mode = "discover"
	// ModeDORA does DISCOVER, OFFER, REQUEST, ACK.
	ModeDORA Mode = "dora"
)

// Config says how much load to send.
type Config struct {
	Mode        Mode
	Clients     int           // distinct MACs, one exchange each
	Concurrency int           // exchanges in flight at once (closed loop)
	Timeout     time.Duration // wait for each reply before sending again
	Retries     int           // sends after the first one
	// MACPrefix is the first two bytes of every MAC (the rest is the
	// client's index), so runs against the same server can use fresh MACs.
	MACPrefix [2]byte
}

// Validate reports every problem of cfg at once.
func (c Config) Validate() error {
	var errs []error
	if c.Mode != ModeDiscover && c.Mode != ModeDORA {
		errs = append(errs, fmt.Errorf("mode %q: want discover or dora", c.Mode))
	}
	if c.Clients < 1 || c.Clients > 1<<24 {
		errs = append(errs, fmt.Errorf("clients %d: want 1..%d", c.Clients, 1<<24))
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("concurrency %d: want at least 1", c.Concurrency))
	}
	if c.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("timeout %s: want > 0", c.Timeout))
	}
	if c.Retries < 0 {
		errs = append(errs, fmt.Errorf("retries %d: want >= 0", c.Retries))
	}
	if c.MACPrefix[0]&1 != 0 {
		errs = append(errs, fmt.Errorf("MAC prefix %02x: a multicast MAC", c.MACPrefix[0]))
	}
	return errors.Join(errs...)
}

// ClientMAC is the MAC of client i: the prefix, then i big-endian.
func ClientMAC(prefix [2]byte, i int) net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	mac[0], mac[1] = prefix[0], prefix[1]
	binary.BigEndian.PutUint32(mac[2:], uint32(i))
	return mac
}

// Result is what a run measured.
type Result struct {
	Mode    Mode
	Clients int
	OK      int
	Failed  int
	Elapsed time.Duration
	// Latencies of the successful exchanges, sorted: first send to the
	// last reply (OFFER, or ACK for DORA), retries included.
	Latencies []time.Duration
}

// Rate is successful exchanges per second.
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.OK) / r.Elapsed.Seconds()
}

// Percentile returns the p-th percentile (0..100, nearest rank) of sorted
// durations, 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(rank, len(sorted)-1))]
}

// BenchLine formats r as one line of Go's benchmark format, so benchstat
// can compare runs of two servers (one file per server).
func (r Result) BenchLine(name string) string {
	nsPerOp := 0.0
	if r.OK > 0 {
		nsPerOp = float64(r.Elapsed.Nanoseconds()) / float64(r.OK)
	}
	return fmt.Sprintf("Benchmark%s %d %.0f ns/op %.1f exch/s %.1f p50-us %.1f p99-us %d failed",
		name, r.Clients, nsPerOp, r.Rate(),
		float64(Percentile(r.Latencies, 50).Nanoseconds())/1e3,
		float64(Percentile(r.Latencies, 99).Nanoseconds())/1e3, r.Failed)
}

// Loader sends DHCP requests on one socket and matches the replies by
// transaction ID, so one socket serves every simulated client.
type Loader struct {
	conn net.PacketConn
	dst  net.Addr
	now  func() time.Time
	log  *slog.Logger

	mu      sync.Mutex
	pending map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4
	nextXID atomic.Uint32
	strays  atomic.Int64
	naks    atomic.Int64
}

// LoaderOption changes a Loader.
type LoaderOption func(*Loader)

// WithClock sets the clock latencies are measured with.
func WithClock(now func() time.Time) LoaderOption { return func(l *Loader) { l.now = now } }

// WithLogger sets the logger.
func WithLogger(log *slog.Logger) LoaderOption { return func(l *Loader) { l.log = log } }

// NewLoader sends to dst (255.255.255.255:67 on a raw broadcast conn; a
// server's loopback address in tests) on conn. xidBase lets runs use
// distinct transaction IDs.
func NewLoader(conn net.PacketConn, dst net.Addr, xidBase uint32, opts ...LoaderOption) *Loader {
	l := &Loader{conn: conn, dst: dst, now: time.Now, log: slog.New(slog.DiscardHandler),
		pending: map[dhcpv4.TransactionID]chan *dhcpv4.DHCPv4{}}
	l.nextXID.Store(xidBase)
	for _, o := range opts {
		o(l)
	}
	return l
}

// Strays is how many packets were read that matched no pending exchange
// (late replies after a retry, other traffic).
func (l *Loader) Strays() int64 { return l.strays.Load() }

// Naks is how many times a client was refused (NAK) and started over.
func (l *Loader) Naks() int64 { return l.naks.Load() }

// Receive reads replies until the conn is closed or ctx ends.
func (l *Loader) Receive(ctx context.Context) error {
	buf := make([]byte, 1500)
	for {
		n, _, err := l.conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read DHCP replies: %w", err)
		}
		l.Deliver(buf[:n])
	}
}

// Deliver parses one packet and hands it to the exchange waiting for its
// transaction ID; anything else counts as a stray.
func (l *Loader) Deliver(b []byte) {
	m, err := dhcpv4.FromBytes(b)
	if err != nil || m.OpCode != dhcpv4.OpcodeBootReply {
		l.strays.Add(1)
		return
	}
	l.mu.Lock()
	ch, ok := l.pending[m.TransactionID]
	l.mu.Unlock()
	if !ok {
		l.strays.Add(1)
		return
	}
	select {
	case ch <- m:
	default:
		l.strays.Add(1)
	}
}

func (l *Loader) xid() dhcpv4.TransactionID {
	var x dhcpv4.TransactionID
	binary.BigEndian.PutUint32(x[:], l.nextXID.Add(1))
	return x
}

// exchange sends req (again after each timeout) until a reply of one of
// the wanted types for the same client arrives.
func (l *Loader) exchange(ctx context.Context, cfg Config, req *dhcpv4.DHCPv4, want ...dhcpv4.MessageType) (*dhcpv4.DHCPv4, error) {
	ch := make(chan *dhcpv4.DHCPv4, 4)
	l.mu.Lock()
	l.pending[req.TransactionID] = ch
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.pending, req.TransactionID)
		l.mu.Unlock()
	}()
	b := req.ToBytes()
	timer := time.NewTimer(cfg.Timeout)
	defer timer.Stop()
	for attempt := 0; attempt <= cfg.Retries; attempt++ {
		if _, err := l.conn.WriteTo(b, l.dst); err != nil {
			return nil, fmt.Errorf("send %s: %w", req.MessageType(), err)
		}
		timer.Reset(cfg.Timeout)
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-timer.C:
				break wait
			case m := <-ch:
				if !slices.Equal(m.ClientHWAddr, req.ClientHWAddr) {
					l.strays.Add(1)
					continue
				}
				switch t := m.MessageType(); {
				case slices.Contains(want, t):
					return m, nil
				case t == dhcpv4.MessageTypeNak:
					return nil, fmt.Errorf("%s: %w: %s", req.MessageType(), ErrNak, m.Message())
				default:
					// A late answer to the previous step (an OFFER
					// to a resent DISCOVER shares the REQUEST's xid).
					l.strays.Add(1)
				}
			}
		}
	}
	return nil, fmt.Errorf("no answer to %s after %d sends", req.MessageType(), cfg.Retries+1)
}

// ErrNak is a NAK to a REQUEST; the client then starts again with a
// DISCOVER, as RFC 2131 says (up to Retries times).
var ErrNak = errors.New("NAK")

// Client runs one client's exchange and returns its latency. A NAK makes
// it start over from the DISCOVER, as a real client does; the restarts
// are counted in Naks.
func (l *Loader) Client(ctx context.Context, cfg Config, mac net.HardwareAddr) (time.Duration, error) {
	start := l.now()
	for restart := 0; ; restart++ {
		err := l.dora(ctx, cfg, mac)
		if err == nil {
			return l.now().Sub(start), nil
		}
		if !errors.Is(err, ErrNak) || restart >= cfg.Retries {
			return 0, err
		}
		l.naks.Add(1)
	}
}

// dora does one DISCOVER→OFFER (and REQUEST→ACK in DORA mode).
func (l *Loader) dora(ctx context.Context, cfg Config, mac net.HardwareAddr) error {
	disc, err := dhcpv4.NewDiscovery(mac, dhcpv4.WithTransactionID(l.xid()), dhcpv4.WithBroadcast(true))
	if err != nil {
		return fmt.Errorf("build DISCOVER: %w", err)
	}
	offer, err := l.exchange(ctx, cfg, disc, dhcpv4.MessageTypeOffer)
	if err != nil || cfg.Mode == ModeDiscover {
		return err
	}
	req, err := dhcpv4.NewRequestFromOffer(offer, dhcpv4.WithBroadcast(true))
	if err != nil {
		return fmt.Errorf("build REQUEST: %w", err)
	}
	_, err = l.exchange(ctx, cfg, req, dhcpv4.MessageTypeAck)
	return err
}

// Run simulates cfg.Clients clients, cfg.Concurrency at a time. Receive
// must be running.
func (l *Loader) Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, fmt.Errorf("load config: %w", err)
	}
	res := Result{Mode: cfg.Mode, Clients: cfg.Clients}
	var mu sync.Mutex
	var firstErr error
	next := atomic.Int64{}
	var wg sync.WaitGroup
	start := l.now()
	for range min(cfg.Concurrency, cfg.Clients) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= cfg.Clients || ctx.Err() != nil {
					return
				}
				mac := ClientMAC(cfg.MACPrefix, i)
				d, err := l.Client(ctx, cfg, mac)
				mu.Lock()
				if err != nil {
					res.Failed++
					if firstErr == nil {
						firstErr = fmt.Errorf("client %s: %w", mac, err)
					}
					l.log.Debug("client failed", "mac", mac.String(), "err", err)
				} else {
					res.OK++
					res.Latencies = append(res.Latencies, d)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.Elapsed = l.now().Sub(start)
	slices.Sort(res.Latencies)
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	if firstErr != nil {
		l.log.Warn("some clients failed", "failed", res.Failed, "first", firstErr)
	}
	return res, nil
}
