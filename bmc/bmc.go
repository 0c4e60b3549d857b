package bmc

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"
)

// Protocol is how rackboot talks to a BMC.
type Protocol string

const (
	// ProtocolAuto probes Redfish (https, then http), then IPMI.
	ProtocolAuto    Protocol = "auto"
	ProtocolRedfish Protocol = "redfish"
	ProtocolIPMI    Protocol = "ipmi"
)

// ParseProtocol accepts the rack file's words ("" means auto).
func ParseProtocol(s string) (Protocol, error) {
	switch p := Protocol(strings.ToLower(strings.TrimSpace(s))); p {
	case "":
		return ProtocolAuto, nil
	case ProtocolAuto, ProtocolRedfish, ProtocolIPMI:
		return p, nil
	}
	return "", fmt.Errorf("unknown BMC protocol %q: use ipmi, redfish or auto", s)
}

// State is a machine's power state as its BMC reports it.
type State string

const (
	StateOn      State = "on"
	StateOff     State = "off"
	StateUnknown State = "unknown"
)

// BootMode is the firmware mode a network boot should use.
type BootMode string

const (
	BootModeBIOS BootMode = "bios" // legacy / CSM PXE
	BootModeUEFI BootMode = "uefi"
)

// Enablement says for how long a boot override holds.
type Enablement string

const (
	EnabledOnce       Enablement = "once"
	EnabledContinuous Enablement = "continuous"
	EnabledDisabled   Enablement = "disabled"
)

// BootOverride is a boot override as the BMC reports it after it was set.
type BootOverride struct {
	// Target uses Redfish's names for both protocols: "Pxe", "Hdd", "Cd",
	// "BiosSetup", "None", ... (IPMI device selectors are mapped to them).
	Target string `json:"target"`
	// Enabled is Once, Continuous or Disabled ("" if the BMC did not say).
	Enabled Enablement `json:"enabled,omitempty"`
	// Mode is the firmware mode the BMC will boot the target in ("" if the
	// BMC did not say).
	Mode BootMode `json:"mode,omitempty"`
	// Differences lists, in words, how this read-back differs from what
	// was asked (empty when the BMC holds exactly the requested override).
	Differences []string `json:"differences,omitempty"`
}

// Netboots tells whether, by this read-back, the next boot is a network
// boot: target Pxe and the override not disabled.
func (o BootOverride) Netboots() bool {
	return o.Target == TargetPxe && o.Enabled != EnabledDisabled
}

func (o BootOverride) String() string {
	s := fmt.Sprintf("target %s, %s, mode %s", orDash(o.Target), orDash(string(o.Enabled)), orDash(string(o.Mode)))
	if len(o.Differences) > 0 {
		s += " (" + strings.Join(o.Differences, "; ") + ")"
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// TargetPxe is the network boot target.
const TargetPxe = "Pxe"

// Driver powers one machine and sets its next boot through its BMC. A
// Driver serializes its calls: never more than one request is in flight to
// the BMC, whatever the number of goroutines calling it.
type Driver interface {
	// Info names the BMC and how it is reached.
	Info() Info
	PowerState(ctx context.Context) (State, error)
	// PowerOn and PowerOff (hard) read the state first and do nothing if
	// the machine is already there; otherwise they act and poll the state
	// until it changes (Config.PowerTimeout).
	PowerOn(ctx context.Context) error
	PowerOff(ctx context.Context) error
	// PowerCycle asks the OS to shut down (ACPI soft-off), waits up to
	// Config.SoftTimeout for the machine to go off, forces it off if it
	// did not, then powers it on. A machine that is off is just powered on.
	PowerCycle(ctx context.Context) error
	// SetNetbootOnce sets a one-time network (PXE) boot in mode and reads
	// the override back. It returns what the BMC holds; its Differences
	// say how that differs from what was asked. The error wraps
	// ErrOverrideIgnored when the read-back shows no network boot at all.
	SetNetbootOnce(ctx context.Context, mode BootMode) (BootOverride, error)
	// Close ends the BMC session (IPMI) and frees connections.
	Close() error
}

// Info describes a Driver's BMC.
type Info struct {
	Address  string   `json:"address"`
	Protocol Protocol `json:"protocol"`
	// Endpoint is the Redfish base URL or the IPMI host:port.
	Endpoint string `json:"endpoint"`
	// System is the Redfish system's @odata.id ("" for IPMI).
	System string `json:"system,omitempty"`
	// TLSVerified is false when a Redfish BMC's certificate is accepted
	// without verification (the default: BMCs use self-signed ones).
	TLSVerified bool `json:"tlsVerified"`
	// Probed is true when Protocol was found by probing (Config auto).
	Probed bool `json:"probed,omitempty"`
}

// Config says how to reach one BMC.
type Config struct {
	// Address is the BMC's host or IP, with an optional port
	// ("10.0.0.31", "10.0.0.31:8443", "[fe80::1%eth0]:623"); for Redfish
	// also a URL ("https://10.0.0.31"). Without a port: 443/80 for Redfish,
	// 623 for IPMI. With auto, a port is used for every protocol probed.
	Address  string
	Protocol Protocol // default auto
	User     string
	// Password never appears in logs, errors or the String of a Config.
	Password string

	// SystemID picks the Redfish system when the BMC has several: its Id,
	// its UUID, or the MAC address of one of its network interfaces.
	SystemID string

	// VerifyTLS checks a Redfish BMC's certificate against RootCAs (or
	// the host's roots when nil). The default (false) accepts any
	// certificate, as BMCs ship self-signed ones, and says so in the log
	// and in Info.TLSVerified.
	VerifyTLS bool
	RootCAs   *x509.CertPool

	RequestTimeout time.Duration // one request; default 15s
	PowerTimeout   time.Duration // a power change to show; default 90s
	SoftTimeout    time.Duration // PowerCycle's graceful shutdown; default 60s
	Retries        int           // extra attempts on transient errors; default 3, <0 none

	Log   *slog.Logger                                     // default: discard
	Now   func() time.Time                                 // default: time.Now
	Sleep func(ctx context.Context, d time.Duration) error // default: a timer that stops on ctx
}

// String prints the Config without its password.
func (c Config) String() string {
	pw := ""
	if c.Password != "" {
		pw = "[redacted]"
	}
	return fmt.Sprintf("{Address:%s Protocol:%s User:%s Password:%s SystemID:%s VerifyTLS:%t}",
		c.Address, c.Protocol, c.User, pw, c.SystemID, c.VerifyTLS)
}

// GoString keeps %#v from printing the password.
func (c Config) GoString() string { return "bmc.Config" + c.String() }

// LogValue keeps slog from printing the password.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(slog.String("address", c.Address), slog.String("protocol", string(c.Protocol)),
		slog.String("user", c.User))
}

func (c Config) withDefaults() Config {
	if c.Protocol == "" {
		c.Protocol = ProtocolAuto
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 15 * time.Second
	}
	if c.PowerTimeout <= 0 {
		c.PowerTimeout = 90 * time.Second
	}
	if c.SoftTimeout <= 0 {
		c.SoftTimeout = 60 * time.Second
	}
	if c.Retries == 0 {
		c.Retries = 3
	} else if c.Retries < 0 {
		c.Retries = 0
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Sleep == nil {
		c.Sleep = sleepCtx
	}
	return c
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Errors a caller can test with errors.Is.
var (
	// ErrAuth: the BMC refused the user name or password.
	ErrAuth = errors.New("the BMC refused the user name or password")
	// ErrUnreachable: nothing answered at the address.
	ErrUnreachable = errors.New("the BMC does not answer")
	// ErrOverrideIgnored: the read-back shows the BMC did not keep a
	// network boot override (it answered success and ignored it).
	ErrOverrideIgnored = errors.New("the BMC did not keep the network boot override")
	// ErrUnsupported: the BMC does not offer what is needed.
	ErrUnsupported = errors.New("the BMC does not support this")
	// ErrTimeout: the power state did not change in time.
	ErrTimeout = errors.New("the power state did not change in time")
)

// Error is every error a Driver or Open returns: it names the BMC and the
// protocol ("bmc 10.0.0.31 (redfish): power on: ..."), and never contains
// the password.
type Error struct {
	Address  string
	Protocol Protocol
	Op       string
	Err      error
	secret   string
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("bmc %s (%s): %s: %v", e.Address, e.Protocol, e.Op, e.Err)
	if e.secret != "" {
		msg = strings.ReplaceAll(msg, e.secret, "[redacted]")
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

func (c *Config) errorf(p Protocol, op string, err error) error {
	if err == nil {
		return nil
	}
	var be *Error
	if errors.As(err, &be) {
		return err
	}
	return &Error{Address: c.Address, Protocol: p, Op: op, Err: err, secret: c.Password}
}

// Open connects to the BMC cfg names, with cfg.Protocol or, for auto, the
// first protocol that answers (Redfish over https, over http, then IPMI).
// It checks the credentials, and for Redfish finds the system.
func Open(ctx context.Context, cfg Config) (Driver, error) {
	cfg = cfg.withDefaults()
	if cfg.Address == "" {
		return nil, errors.New("bmc: no address: set the machine's bmc address")
	}
	switch cfg.Protocol {
	case ProtocolRedfish:
		return openRedfish(ctx, cfg, "")
	case ProtocolIPMI:
		return openIPMI(ctx, cfg, false)
	case ProtocolAuto:
		return openAuto(ctx, cfg)
	}
	return nil, cfg.errorf(cfg.Protocol, "open", fmt.Errorf("unknown protocol %q: use ipmi, redfish or auto", cfg.Protocol))
}

// splitAddress returns the host and port ("" when none) of a Config
// address that is not a URL.
func splitAddress(addr string) (host, port string) {
	if h, p, err := net.SplitHostPort(addr); err == nil {
		return h, p
	}
	return strings.Trim(addr, "[]"), ""
}

// poll calls get until want returns true or timeout passes, sleeping
// between calls with a growing interval (0.5s to 3s).
func poll[T any](ctx context.Context, cfg *Config, timeout time.Duration, get func(context.Context) (T, error), want func(T) bool) (T, error) {
	deadline := cfg.Now().Add(timeout)
	interval := 500 * time.Millisecond
	for {
		v, err := get(ctx)
		if err == nil && want(v) {
			return v, nil
		}
		if cfg.Now().After(deadline) {
			if err != nil {
				return v, err
			}
			return v, ErrTimeout
		}
		if err := cfg.Sleep(ctx, interval); err != nil {
			return v, err
		}
		interval = min(interval*3/2, 3*time.Second)
	}
}

// retry runs fn until it succeeds, fails with a non-transient error, or
// cfg.Retries extra attempts are used; the wait doubles from 500ms up to 5s.
func retry(ctx context.Context, cfg *Config, transient func(error) bool, fn func(context.Context) error) error {
	wait := 500 * time.Millisecond
	for attempt := 0; ; attempt++ {
		err := fn(ctx)
		if err == nil || attempt >= cfg.Retries || !transient(err) || ctx.Err() != nil {
			return err
		}
		cfg.Log.Debug("bmc: transient error, retrying", "address", cfg.Address, "attempt", attempt+1, "wait", wait, "err", redact(err.Error(), cfg.Password))
		if serr := cfg.Sleep(ctx, wait); serr != nil {
			return err
		}
		wait = min(wait*2, 5*time.Second)
	}
}

func redact(s, secret string) string {
	if secret == "" {
		return s
	}
	return strings.ReplaceAll(s, secret, "[redacted]")
}
