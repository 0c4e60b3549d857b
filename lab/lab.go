// Package lab is the virtual rack: a private network (a named network
// namespace with a bridge, a tap per VM and, for proxy-DHCP rehearsals, a
// second namespace where dnsmasq plays the home router) and one QEMU VM per
// machine of the rack file, with the machine's MAC, SMBIOS UUID and serial,
// an NVMe disk and SATA disks, booting BIOS or UEFI from the network first.
//
// A lab outlives the command that made it: everything it creates (namespaces,
// processes with their start times, disk files, serial logs) is recorded in
// <stateDir>/lab/<name>/lab.json, and Down removes exactly that, by PID and by
// name. Nothing here touches the host's interfaces or routes, and no
// namespace of a lab ever has a default route: Up checks and refuses to boot
// a VM otherwise.
//
// The decisions (which address the server takes, the QEMU command line, the
// dnsmasq command line, KVM or TCG) are pure functions; the Linux plumbing is
// in the *_linux.go files, and other systems get a clear error.
package lab

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"regexp"
	"time"
)

// ErrNeedsLinux is returned on systems without network namespaces.
var ErrNeedsLinux = errors.New("the lab needs Linux (network namespaces, QEMU)")

// ErrExists is returned by Up when the lab is already up.
var ErrExists = errors.New("lab already up")

// ErrNotUp is returned by Status and Console when the lab has no state.
var ErrNotUp = errors.New("lab is not up")

// ErrUnknownVM is returned by Console and WaitSerial for a VM the lab does
// not have.
var ErrUnknownVM = errors.New("no such VM in the lab")

// Tools are the programs and firmware files the lab uses. The zero value of
// a field means the Debian default (see DefaultTools).
type Tools struct {
	QEMU     string // qemu-system-x86_64 (apt: qemu-system-x86)
	QEMUImg  string // qemu-img (apt: qemu-utils)
	Dnsmasq  string // dnsmasq (apt: dnsmasq-base)
	OVMFCode string // OVMF_CODE_4M.fd (apt: ovmf)
	OVMFVars string // OVMF_VARS_4M.fd (apt: ovmf), copied per VM
	// arm64 VMs (a rack machine with arch: arm64): QEMU's virt machine
	// with Debian's AAVMF (EDK2 for arm64) as UEFI firmware.
	QEMUArm64 string // qemu-system-aarch64 (apt: qemu-system-arm)
	AAVMFCode string // AAVMF_CODE.fd (apt: qemu-efi-aarch64)
	AAVMFVars string // AAVMF_VARS.fd (apt: qemu-efi-aarch64), copied per VM
	// Virtual BMCs (a machine whose bmc: address is in the lab subnet).
	IPMISim string // ipmi_sim (apt: openipmi)
	Python  string // Debian's /usr/bin/python3, which runs sushy-tools
	// SushyTools is a directory holding sushy-tools' sushy_tools/ package
	// (run as python3 -m sushy_tools.emulator.main), or a sushy-emulator
	// program (pip install sushy-tools). "": $RACKBOOT_SUSHY_TOOLS, else
	// ../shared/tools/sushy-tools beside the module root (found from the
	// working directory or this binary's), else sushy-emulator on PATH.
	SushyTools string
}

// DefaultTools are the Debian 12 paths.
func DefaultTools() Tools {
	return Tools{
		QEMU:     "qemu-system-x86_64",
		QEMUImg:  "qemu-img",
		Dnsmasq:  "dnsmasq",
		OVMFCode: "/usr/share/OVMF/OVMF_CODE_4M.fd",
		OVMFVars: "/usr/share/OVMF/OVMF_VARS_4M.fd",

		QEMUArm64: "qemu-system-aarch64",
		AAVMFCode: "/usr/share/AAVMF/AAVMF_CODE.fd",
		AAVMFVars: "/usr/share/AAVMF/AAVMF_VARS.fd",

		IPMISim: "ipmi_sim",
		Python:  "/usr/bin/python3",
	}
}

func (t Tools) withDefaults() Tools {
	d := DefaultTools()
	if t.QEMU == "" {
		t.QEMU = d.QEMU
	}
	if t.QEMUImg == "" {
		t.QEMUImg = d.QEMUImg
	}
	if t.Dnsmasq == "" {
		t.Dnsmasq = d.Dnsmasq
	}
	if t.OVMFCode == "" {
		t.OVMFCode = d.OVMFCode
	}
	if t.OVMFVars == "" {
		t.OVMFVars = d.OVMFVars
	}
	if t.QEMUArm64 == "" {
		t.QEMUArm64 = d.QEMUArm64
	}
	if t.AAVMFCode == "" {
		t.AAVMFCode = d.AAVMFCode
	}
	if t.AAVMFVars == "" {
		t.AAVMFVars = d.AAVMFVars
	}
	if t.IPMISim == "" {
		t.IPMISim = d.IPMISim
	}
	if t.Python == "" {
		t.Python = d.Python
	}
	return t
}

// Lab is one named virtual rack and its state directory. Making a Lab
// creates nothing; Up does.
type Lab struct {
	name  string
	dir   string
	log   *slog.Logger
	now   func() time.Time
	tools Tools
	accel *Accel
	poll  time.Duration
	stop  time.Duration
	noRA  bool // see WithoutRA
}

// Option configures a Lab.
type Option func(*Lab)

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(x *Lab) { x.log = l } }

// WithClock sets the clock used for the times recorded in the state.
func WithClock(now func() time.Time) Option { return func(x *Lab) { x.now = now } }

// WithTools overrides the programs and firmware files.
func WithTools(t Tools) Option { return func(x *Lab) { x.tools = t.withDefaults() } }

// WithAccel forces the accelerator instead of detecting it.
func WithAccel(a Accel) Option { return func(x *Lab) { x.accel = &a } }

// WithPollInterval sets how often Console (follow mode) and WaitSerial look
// at a serial log for new output (default 200ms).
func WithPollInterval(d time.Duration) Option { return func(x *Lab) { x.poll = d } }

// WithStopTimeout sets how long Down waits for a process to exit after
// SIGTERM before it sends SIGKILL (default 5s).
func WithStopTimeout(d time.Duration) Option { return func(x *Lab) { x.stop = d } }

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?$`)

// ValidName reports whether name can name a lab: 1-20 characters, lower
// case letters, digits and inner dashes (it becomes the namespace rb-<name>).
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("lab name %q: use 1-20 lower-case letters, digits and inner dashes", name)
	}
	return nil
}

// New returns the lab called name whose state lives in
// <stateDir>/lab/<name>/.
func New(stateDir, name string, opts ...Option) (*Lab, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if stateDir == "" {
		return nil, errors.New("lab: no state directory given")
	}
	abs, err := filepath.Abs(stateDir)
	if err != nil {
		return nil, fmt.Errorf("lab: state directory %s: %w", stateDir, err)
	}
	l := &Lab{
		name:  name,
		dir:   filepath.Join(abs, "lab", name),
		log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		now:   time.Now,
		tools: DefaultTools(),
		poll:  200 * time.Millisecond,
		stop:  5 * time.Second,
	}
	for _, o := range opts {
		o(l)
	}
	return l, nil
}

// Name is the lab's name.
func (l *Lab) Name() string { return l.name }

// Dir is the lab's state directory.
func (l *Lab) Dir() string { return l.dir }

// Path is a path inside the lab's state directory.
func (l *Lab) Path(elem ...string) string {
	return filepath.Join(append([]string{l.dir}, elem...)...)
}

// StatePath is the lab's lab.json.
func (l *Lab) StatePath() string { return filepath.Join(l.dir, "lab.json") }

// Namespace is the name of the lab's network namespace: rb-<lab>.
func Namespace(lab string) string { return "rb-" + lab }

// RouterNamespace is the name of the home router's namespace: rb-<lab>-router.
func RouterNamespace(lab string) string { return "rb-" + lab + "-router" }

// Interface names inside the lab's namespaces (private to them, so they
// cannot collide with the host's).
const (
	Bridge      = "br0"
	routerVeth  = "rtr0" // the bridge's end of the veth to the router
	routerIface = "eth0" // the router's end
)
