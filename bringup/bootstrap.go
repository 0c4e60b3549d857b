// Package bringup turns netbooted Talos machines into a cluster: it waits for
// the first control plane to be installed, bootstraps etcd on it exactly once
// through the Talos API, waits for the Kubernetes API on the VIP and for the
// nodes, then applies the platform bundles and waits on their health gates.
//
// It defines the small interfaces it needs (Stages, Cluster) and is wired to
// the inventory and the bundles engine in cmd/rackboot.
package bringup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

// BootstrapFile is the name, in the state directory, of the record that etcd
// has been bootstrapped.
const BootstrapFile = "bootstrap.json"

// recordMode: the record holds no secret, but the state directory is private.
const recordMode fs.FileMode = 0o600

// Record says that etcd was bootstrapped: on which node, and when rackboot
// learned it.
type Record struct {
	// Node is the address the Bootstrap call went to.
	Node string `json:"node"`
	// Time is when the node accepted the call (or said it was already done).
	Time time.Time `json:"time"`
	// Already is true when the node answered AlreadyExists: an earlier run
	// bootstrapped it but stopped before writing this record, or someone ran
	// `talosctl bootstrap` by hand.
	Already bool `json:"alreadyBootstrapped,omitempty"`
}

// recordFile is the content of bootstrap.json.
type recordFile struct {
	Bootstrapped *Record `json:"bootstrapped"`
}

// ParseRecord decodes and checks the content of a bootstrap.json file.
func ParseRecord(data []byte) (*Record, error) {
	var f recordFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("parse JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON document")
	}
	r := f.Bootstrapped
	switch {
	case r == nil:
		return nil, errors.New(`no "bootstrapped" record`)
	case r.Node == "":
		return nil, errors.New("the record names no node")
	case r.Time.IsZero():
		return nil, errors.New("the record has no time")
	}
	return r, nil
}

// ReadRecord reads <stateDir>/bootstrap.json. A missing file is (nil, nil):
// etcd has not been bootstrapped by rackboot from this state directory.
// A file that cannot be parsed is an error and is left alone.
func ReadRecord(stateDir string) (*Record, error) {
	path := filepath.Join(stateDir, BootstrapFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read bootstrap record: %w", err)
	}
	r, err := ParseRecord(data)
	if err != nil {
		// Removing the file is safe: the node answers AlreadyExists to a
		// second Bootstrap call, and rackboot then writes a new record.
		return nil, fmt.Errorf("bootstrap record %s is unreadable (left untouched; fix it, or remove it and rackboot will ask the node again, which is safe): %w", path, err)
	}
	return r, nil
}

// writeRecord writes the record unless one exists already (another rackboot
// recorded the same fact meanwhile: fine).
func writeRecord(stateDir string, r Record) error {
	data, err := json.MarshalIndent(recordFile{Bootstrapped: &r}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode bootstrap record: %w", err)
	}
	data = append(data, '\n')
	path := filepath.Join(stateDir, BootstrapFile)
	err = atomicfile.WriteNew(path, data, recordMode)
	if errors.Is(err, atomicfile.ErrExists) {
		// Written meanwhile by another rackboot: fine if it is a record.
		if r, rerr := ReadRecord(stateDir); rerr != nil || r == nil {
			return fmt.Errorf("write bootstrap record: %s exists but holds no readable record (%v)", path, rerr)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("write bootstrap record: %w", err)
	}
	return nil
}

// Outcome says how Bootstrap ended successfully.
type Outcome int

// Outcomes of Bootstrap.
const (
	// Bootstrapped: the node accepted the Bootstrap call now.
	Bootstrapped Outcome = iota + 1
	// AlreadyBootstrapped: the node answered AlreadyExists; the record was
	// written now.
	AlreadyBootstrapped
	// Recorded: the state directory had a record; no call was made.
	Recorded
)

// String says the outcome in words.
func (o Outcome) String() string {
	switch o {
	case Bootstrapped:
		return "bootstrapped"
	case AlreadyBootstrapped:
		return "already bootstrapped (the node said so)"
	case Recorded:
		return "already bootstrapped (recorded)"
	default:
		return fmt.Sprintf("Outcome(%d)", int(o))
	}
}

// BootstrapResult is what Bootstrap did.
type BootstrapResult struct {
	Record  Record
	Outcome Outcome
	// Attempts is the number of Bootstrap calls made.
	Attempts int
}

// BootstrapConfig says where to bootstrap etcd.
type BootstrapConfig struct {
	// StateDir holds bootstrap.json.
	StateDir string
	// Talosconfig is the rack's admin talosconfig (its client certificate
	// authenticates the call; its CA checks the node).
	Talosconfig *clientconfig.Config
	// Node is the static address of the first control plane. Never the VIP:
	// the VIP comes up only after etcd is bootstrapped.
	Node string
	// VIP is the cluster's VIP; Node must differ from it. Optional.
	VIP string
	// Endpoint is what to dial, default Node on Talos's apid port (50000).
	// Tests give "127.0.0.1:<port>".
	Endpoint string
}

// Default retry timing.
const (
	DefaultMinBackoff     = time.Second
	DefaultMaxBackoff     = 15 * time.Second
	DefaultAttemptTimeout = 30 * time.Second
)

// BootstrapOption configures a Bootstrapper.
type BootstrapOption func(*Bootstrapper)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) BootstrapOption { return func(b *Bootstrapper) { b.log = l } }

// WithClock sets the clock of the record's time (default time.Now).
func WithClock(now func() time.Time) BootstrapOption { return func(b *Bootstrapper) { b.now = now } }

// WithSleep sets how the Bootstrapper waits between attempts (default: a
// timer, cut short by ctx). It returns ctx's error when ctx ends first.
func WithSleep(sleep func(ctx context.Context, d time.Duration) error) BootstrapOption {
	return func(b *Bootstrapper) { b.sleep = sleep }
}

// WithBackoff sets the first and the longest wait between attempts; the wait
// doubles after each retryable failure.
func WithBackoff(first, longest time.Duration) BootstrapOption {
	return func(b *Bootstrapper) { b.minBackoff, b.maxBackoff = first, longest }
}

// WithAttemptTimeout bounds each Bootstrap call.
func WithAttemptTimeout(d time.Duration) BootstrapOption {
	return func(b *Bootstrapper) { b.attemptTimeout = d }
}

// Bootstrapper bootstraps etcd once, through the Talos API of the first
// control plane, and records it in the state directory.
type Bootstrapper struct {
	cfg            BootstrapConfig
	endpoint       string
	log            *slog.Logger
	now            func() time.Time
	sleep          func(ctx context.Context, d time.Duration) error
	minBackoff     time.Duration
	maxBackoff     time.Duration
	attemptTimeout time.Duration
}

// NewBootstrapper checks cfg and returns a Bootstrapper.
func NewBootstrapper(cfg BootstrapConfig, opts ...BootstrapOption) (*Bootstrapper, error) {
	b := &Bootstrapper{
		cfg:            cfg,
		log:            slog.New(slog.DiscardHandler),
		now:            time.Now,
		sleep:          sleepCtx,
		minBackoff:     DefaultMinBackoff,
		maxBackoff:     DefaultMaxBackoff,
		attemptTimeout: DefaultAttemptTimeout,
	}
	for _, o := range opts {
		o(b)
	}
	if cfg.StateDir == "" {
		return nil, errors.New("bootstrap: no state directory")
	}
	if cfg.Talosconfig == nil {
		return nil, errors.New("bootstrap: no talosconfig")
	}
	node, err := netip.ParseAddr(cfg.Node)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: node %q is not an IP address (the first control plane needs a static address): %w", cfg.Node, err)
	}
	if cfg.VIP != "" {
		if vip, err := netip.ParseAddr(cfg.VIP); err == nil && vip == node {
			return nil, fmt.Errorf("bootstrap: node %s is the VIP; bootstrap goes to a control plane's own address, the VIP comes up only after etcd is bootstrapped", cfg.Node)
		}
	}
	if b.minBackoff <= 0 || b.maxBackoff < b.minBackoff || b.attemptTimeout <= 0 {
		return nil, fmt.Errorf("bootstrap: bad timing (backoff %v..%v, attempt timeout %v)", b.minBackoff, b.maxBackoff, b.attemptTimeout)
	}
	b.endpoint = cfg.Endpoint
	if b.endpoint == "" {
		b.endpoint = cfg.Node
	}
	return b, nil
}

// Node is the address Bootstrap calls.
func (b *Bootstrapper) Node() string { return b.cfg.Node }

// Done reports whether the state directory records that etcd was
// bootstrapped (nil record: not yet).
func (b *Bootstrapper) Done() (*Record, error) { return ReadRecord(b.cfg.StateDir) }

// Bootstrap bootstraps etcd on the node, unless the state directory records
// that it was done. It retries while the node is not ready (Unavailable,
// FailedPrecondition, timeouts, connection errors) with a doubling backoff
// until ctx ends, takes AlreadyExists as done, and fails at once on any other
// answer. The record is written before a success is returned.
func (b *Bootstrapper) Bootstrap(ctx context.Context) (BootstrapResult, error) {
	node := b.cfg.Node
	rec, err := b.Done()
	if err != nil {
		return BootstrapResult{}, err
	}
	if rec != nil {
		b.log.Info("etcd already bootstrapped; not calling Bootstrap again", "node", rec.Node, "at", rec.Time, "record", filepath.Join(b.cfg.StateDir, BootstrapFile))
		if rec.Node != node {
			b.log.Warn("the bootstrap record names another node than the first control plane; keeping the record (a second bootstrap would split the cluster)", "recorded", rec.Node, "first_control_plane", node)
		}
		return BootstrapResult{Record: *rec, Outcome: Recorded}, nil
	}

	c, err := client.New(ctx, client.WithConfig(b.cfg.Talosconfig), client.WithEndpoints(b.endpoint))
	if err != nil {
		return BootstrapResult{}, fmt.Errorf("bootstrap etcd on %s: Talos API client: %w", node, err)
	}
	defer c.Close()

	delay := b.minBackoff
	var last error
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, b.attemptTimeout)
		err := c.Bootstrap(client.WithNode(actx, node), &machine.BootstrapRequest{})
		cancel()
		code, isStatus := codeOf(err)
		switch {
		case err == nil:
			b.log.Info("etcd bootstrapped", "node", node, "attempts", attempt)
			return b.finish(Record{Node: node, Time: b.now()}, Bootstrapped, attempt)
		case code == codes.AlreadyExists:
			b.log.Info("etcd was already bootstrapped on the node; recording it", "node", node, "answer", err)
			return b.finish(Record{Node: node, Time: b.now(), Already: true}, AlreadyBootstrapped, attempt)
		case ctx.Err() != nil:
			return BootstrapResult{Attempts: attempt}, b.gaveUp(ctx, attempt, err)
		case !isStatus || retryable(code):
			last = err
			b.log.Info("node not ready for bootstrap yet; retrying", "node", node, "attempt", attempt, "code", code, "err", err, "wait", delay)
			if err := b.sleep(ctx, delay); err != nil {
				return BootstrapResult{Attempts: attempt}, b.gaveUp(ctx, attempt, last)
			}
			delay = min(delay*2, b.maxBackoff)
		default:
			return BootstrapResult{Attempts: attempt}, fmt.Errorf("bootstrap etcd on %s: the node refused (%s): %w%s", node, code, err, refusalHint(code))
		}
	}
}

// finish writes the record, then reports success.
func (b *Bootstrapper) finish(r Record, o Outcome, attempts int) (BootstrapResult, error) {
	if err := writeRecord(b.cfg.StateDir, r); err != nil {
		return BootstrapResult{Attempts: attempts}, fmt.Errorf("etcd is bootstrapped on %s, but %w (a re-run gets AlreadyExists from the node and writes it then)", r.Node, err)
	}
	return BootstrapResult{Record: r, Outcome: o, Attempts: attempts}, nil
}

// gaveUp is the error when ctx ended before the node accepted.
func (b *Bootstrapper) gaveUp(ctx context.Context, attempts int, last error) error {
	hint := "is the node up and running its installed Talos? check `talosctl -n " + b.cfg.Node + " service` and its console"
	if isTLSError(last) {
		hint = "the node's certificate is not from this rack's secrets: is it still in maintenance mode (no config applied), or was it installed with other secrets?"
	}
	return fmt.Errorf("bootstrap etcd on %s: gave up after %d attempt(s) (%w); last answer: %v; %s", b.cfg.Node, attempts, context.Cause(ctx), last, hint)
}

// retryable reports whether a gRPC code means "not ready yet".
func retryable(c codes.Code) bool {
	switch c {
	case codes.Unavailable, codes.FailedPrecondition, codes.DeadlineExceeded:
		return true
	}
	return false
}

// refusalHint explains a fatal answer.
func refusalHint(c codes.Code) string {
	switch c {
	case codes.PermissionDenied, codes.Unauthenticated:
		return "; the talosconfig's client certificate is not accepted (it needs the os:admin role and must come from this rack's secrets)"
	case codes.Unimplemented:
		return "; the node does not serve the Talos machine API (wrong address?)"
	}
	return ""
}

// codeOf is the gRPC code of err (also inside the machinery client's
// per-node errors); isStatus is false for errors that carry no gRPC status.
func codeOf(err error) (codes.Code, bool) {
	if err == nil {
		return codes.OK, true
	}
	s, ok := status.FromError(err)
	return s.Code(), ok
}

// isTLSError reports whether err looks like a failed TLS handshake.
func isTLSError(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "authentication handshake failed") || strings.Contains(msg, "x509:") || strings.Contains(msg, "tls:")
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
