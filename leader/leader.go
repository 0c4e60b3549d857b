// Package leader elects one replica of rackboot as the holder of a
// coordination.k8s.io Lease, with client-go's leaderelection, and says
// whether this replica may act as the leader right now (Leading).
//
// Leading is a fence, not a mirror of client-go's callbacks: it is true only
// between OnStartedLeading and the end of the term, and only while the last
// successful write of the Lease by this replica was sent less than
// RenewDeadline ago. client-go gives up renewing after RenewDeadline, but it
// calls OnStoppedLeading only after trying to release the Lease (up to
// another RenewDeadline when the API server is unreachable), so a callback
// alone could let the old leader act past the moment another replica may
// take over (LeaseDuration after it last saw the Lease change). The time
// check closes that gap: the old leader stops at most RenewDeadline after
// its last renewal was sent, another replica starts no earlier than
// LeaseDuration after it saw that renewal, and LeaseDuration > RenewDeadline
// (client-go refuses other settings). On shutdown the fence closes before
// the Lease is released.
//
//	el, err := leader.New(leader.Config{Client: cs, Namespace: "rackboot", Name: "rackboot-dhcp"})
//	go el.Run(ctx)
//	if el.Leading() { /* answer DHCP */ }
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	rl "k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

// The defaults are the core Kubernetes components' (client-go's
// LeaderElectionConfig documents 15 s, 10 s and 2 s).
const (
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// Config configures an Elector.
type Config struct {
	// Client reaches the API server (the Lease is a coordination.k8s.io/v1
	// object). Required.
	Client kubernetes.Interface
	// Namespace and Name name the Lease. Required.
	Namespace, Name string
	// Identity is this replica's name in the Lease; default DefaultIdentity.
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's
	// (defaults 15 s, 10 s, 2 s). LeaseDuration must be above RenewDeadline,
	// and RenewDeadline above 1.2 × RetryPeriod.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// OnStart is called when this replica becomes the leader, OnStop when
	// its term ends (the fence closed: lease lost, not renewed in time, or
	// shutdown). Each term gets one OnStart and one OnStop. Optional; they
	// must not block.
	OnStart, OnStop func()
	// OnNewLeader is called with the identity of each new holder seen
	// (this replica included). Optional.
	OnNewLeader func(identity string)

	Log *slog.Logger     // default: discard
	Now func() time.Time // default: time.Now
}

// DefaultIdentity is $POD_NAME when set (a Deployment's pod), else
// hostname_pid, unique among processes on one host.
func DefaultIdentity() string {
	if p := os.Getenv("POD_NAME"); p != "" {
		return p
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "rackboot"
	}
	return h + "_" + strconv.Itoa(os.Getpid())
}

// Elector campaigns for the Lease and reports whether this replica leads.
type Elector struct {
	cfg  Config
	log  *slog.Logger
	lock rl.Interface

	mu        sync.Mutex
	leading   bool      // between OnStartedLeading and the end of the term
	renewedAt time.Time // send time of the last successful write of the Lease as holder
	closed    bool      // shutting down: never lead again
	expiry    *time.Timer
	holder    string
	terms     int
}

// New checks cfg (with client-go's own rules for the durations) and
// builds the Elector; Run campaigns.
func New(cfg Config) (*Elector, error) {
	if cfg.Client == nil {
		return nil, errors.New("leader election: no Kubernetes client")
	}
	if cfg.Namespace == "" || cfg.Name == "" {
		return nil, fmt.Errorf("leader election: the Lease needs a namespace and a name (got %q/%q)", cfg.Namespace, cfg.Name)
	}
	if cfg.Identity == "" {
		cfg.Identity = DefaultIdentity()
	}
	if cfg.LeaseDuration == 0 {
		cfg.LeaseDuration = DefaultLeaseDuration
	}
	if cfg.RenewDeadline == 0 {
		cfg.RenewDeadline = DefaultRenewDeadline
	}
	if cfg.RetryPeriod == 0 {
		cfg.RetryPeriod = DefaultRetryPeriod
	}
	if err := checkDurations(cfg.LeaseDuration, cfg.RenewDeadline, cfg.RetryPeriod); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	e := &Elector{cfg: cfg, log: cfg.Log}
	e.lock = &fencedLock{
		Interface: &rl.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.Namespace, Name: cfg.Name},
			Client:     cfg.Client.CoordinationV1(),
			LockConfig: rl.ResourceLockConfig{Identity: cfg.Identity},
		},
		now:     cfg.Now,
		written: e.written,
	}
	return e, nil
}

// checkDurations applies client-go's rules (NewLeaderElector) with messages
// that name the flags, plus whole seconds for the lease: the Lease stores
// leaseDurationSeconds, so 1.5 s would be written as 1 s.
func checkDurations(lease, renew, retry time.Duration) error {
	var errs []error
	if lease <= 0 || renew <= 0 || retry <= 0 {
		errs = append(errs, fmt.Errorf("lease duration %v, renew deadline %v, retry period %v: all must be positive", lease, renew, retry))
	}
	if lease <= renew {
		errs = append(errs, fmt.Errorf("lease duration %v must be longer than the renew deadline %v (the leader must give up before others may take over)", lease, renew))
	}
	if float64(renew) <= leaderelection.JitterFactor*float64(retry) {
		errs = append(errs, fmt.Errorf("renew deadline %v must be longer than %.1f × the retry period %v", renew, leaderelection.JitterFactor, retry))
	}
	if lease%time.Second != 0 {
		errs = append(errs, fmt.Errorf("lease duration %v: want whole seconds (the Lease stores seconds)", lease))
	}
	return errors.Join(errs...)
}

// Identity is this replica's name in the Lease.
func (e *Elector) Identity() string { return e.cfg.Identity }

// Leading reports whether this replica may act as the leader now: it won
// the Lease, its term has not ended, and its last renewal was sent less than
// RenewDeadline ago. Cheap enough to call per packet.
func (e *Elector) Leading() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leadingLocked(e.cfg.Now())
}

func (e *Elector) leadingLocked(now time.Time) bool {
	return e.leading && !e.closed && fenceOpen(e.renewedAt, now, e.cfg.RenewDeadline)
}

// fenceOpen says whether a holder whose last renewal was sent at renewedAt
// may still act at now: for less than renewDeadline after it.
func fenceOpen(renewedAt, now time.Time, renewDeadline time.Duration) bool {
	return !renewedAt.IsZero() && now.Before(renewedAt.Add(renewDeadline))
}

// Leader is the holder of the Lease as last seen ("" before any).
func (e *Elector) Leader() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.holder
}

// Terms is how many times this replica became the leader.
func (e *Elector) Terms() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.terms
}

// Run campaigns until ctx ends; after losing the Lease it stands by and
// campaigns again. On return the fence is closed and, if this replica held
// the Lease, it was released (ReleaseOnCancel) so another can take over at
// its next retry instead of after LeaseDuration. It returns nil when ctx
// ended.
func (e *Elector) Run(ctx context.Context) error {
	// client-go logs through klog's context logger: send it to ours.
	ectx, cancel := context.WithCancel(klog.NewContext(context.WithoutCancel(ctx),
		logr.FromSlogHandler(e.log.With("lease", e.cfg.Namespace+"/"+e.cfg.Name).Handler())))
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		// The fence first, then the release (client-go's ReleaseOnCancel
		// asks that everything the lease guards has stopped before).
		e.close("shutting down")
		cancel()
	})
	defer stop()
	e.log.Info("campaigning for the lease", "lease", e.cfg.Namespace+"/"+e.cfg.Name, "identity", e.cfg.Identity,
		"lease_duration", e.cfg.LeaseDuration, "renew_deadline", e.cfg.RenewDeadline, "retry_period", e.cfg.RetryPeriod)
	for ectx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            e.lock,
			LeaseDuration:   e.cfg.LeaseDuration,
			RenewDeadline:   e.cfg.RenewDeadline,
			RetryPeriod:     e.cfg.RetryPeriod,
			ReleaseOnCancel: true,
			Name:            e.cfg.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) { e.started() },
				OnStoppedLeading: func() { e.endTerm("lease lost") },
				OnNewLeader:      e.newLeader,
			},
		})
		if err != nil {
			return fmt.Errorf("leader election: %w", err)
		}
		le.Run(ectx)
	}
	e.close("shutting down")
	return nil
}

// started opens a term. client-go calls it in a goroutine after the
// acquiring write, which the lock wrapper has already timed.
func (e *Elector) started() {
	e.mu.Lock()
	if e.closed || e.leading {
		e.mu.Unlock()
		return
	}
	e.leading = true
	e.terms++
	e.armLocked()
	open := e.leadingLocked(e.cfg.Now())
	e.mu.Unlock()
	if !open { // the acquiring write is already older than the renew deadline
		e.endTerm("lease not renewed within the renew deadline")
		return
	}
	e.log.Info("leading: this replica answers DHCP", "identity", e.cfg.Identity)
	if e.cfg.OnStart != nil {
		e.cfg.OnStart()
	}
}

// written records a successful Create or Update of the Lease, sent at sent.
func (e *Elector) written(sent time.Time, rec rl.LeaderElectionRecord) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if rec.HolderIdentity != e.cfg.Identity {
		// A release (holder cleared): never lead on it.
		e.renewedAt = time.Time{}
		return
	}
	if sent.After(e.renewedAt) {
		e.renewedAt = sent
	}
	if e.leading {
		e.armLocked()
	}
}

// armLocked (re)starts the timer that ends the term when no renewal
// follows within RenewDeadline. Leading checks the time itself; the timer
// only makes OnStop and the log line happen without a caller.
func (e *Elector) armLocked() {
	wait := e.renewedAt.Add(e.cfg.RenewDeadline).Sub(e.cfg.Now())
	if e.expiry != nil {
		e.expiry.Stop()
	}
	e.expiry = time.AfterFunc(max(wait, 0), func() {
		e.mu.Lock()
		expired := e.leading && !fenceOpen(e.renewedAt, e.cfg.Now(), e.cfg.RenewDeadline)
		e.mu.Unlock()
		if expired {
			e.endTerm("lease not renewed within the renew deadline")
		}
	})
}

// endTerm closes the current term, if any: OnStop once, and a log line.
func (e *Elector) endTerm(why string) {
	e.mu.Lock()
	if !e.leading {
		e.mu.Unlock()
		return
	}
	e.leading = false
	if e.expiry != nil {
		e.expiry.Stop()
	}
	e.mu.Unlock()
	e.log.Warn("stopped leading: this replica no longer answers DHCP", "identity", e.cfg.Identity, "reason", why)
	if e.cfg.OnStop != nil {
		e.cfg.OnStop()
	}
}

// close ends the term for good (shutdown).
func (e *Elector) close(why string) {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.endTerm(why)
}

func (e *Elector) newLeader(id string) {
	e.mu.Lock()
	e.holder = id
	e.mu.Unlock()
	if id != e.cfg.Identity && id != "" {
		e.log.Info("another replica leads", "leader", id)
	}
	if e.cfg.OnNewLeader != nil {
		e.cfg.OnNewLeader(id)
	}
}

// fencedLock times every successful write of the Lease. The send time,
// taken before the request, is earlier than any moment another replica can
// have seen the record change, so a fence measured from it closes no later
// than it must.
type fencedLock struct {
	rl.Interface
	now     func() time.Time
	written func(sent time.Time, rec rl.LeaderElectionRecord)
}

func (l *fencedLock) Create(ctx context.Context, rec rl.LeaderElectionRecord) error {
	sent := l.now()
	if err := l.Interface.Create(ctx, rec); err != nil {
		return err
	}
	l.written(sent, rec)
	return nil
}

func (l *fencedLock) Update(ctx context.Context, rec rl.LeaderElectionRecord) error {
	sent := l.now()
	if err := l.Interface.Update(ctx, rec); err != nil {
		return err
	}
	l.written(sent, rec)
	return nil
}
