// Package pxe is the netboot appliance: proxy or full DHCP, TFTP for the iPXE
// binaries, and HTTP for iPXE scripts, boot assets and per-machine configs.
//
// pxe knows nothing of Talos or of the rack file. It asks a Booter what a
// machine should boot and records what it sees through a Recorder; cmd/ wires
// in the implementations (profiles for the rack, inventory for the state).
package pxe

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"time"
)

// Arch is a client's firmware type, from DHCP option 93 (RFC 4578, IANA
// "Processor Architecture Types").
type Arch int

// The firmware types rackboot serves.
const (
	ArchUnknown   Arch = iota
	ArchBIOS           // 0: x86 BIOS
	ArchX64UEFI        // 7, 9: x64 UEFI
	ArchARM64UEFI      // 11: arm64 UEFI
	ArchX64HTTP        // 16: x64 UEFI HTTP boot
	ArchARM64HTTP      // 19: arm64 UEFI HTTP boot
)

func (a Arch) String() string {
	switch a {
	case ArchBIOS:
		return "bios"
	case ArchX64UEFI:
		return "efi-x64"
	case ArchARM64UEFI:
		return "efi-arm64"
	case ArchX64HTTP:
		return "http-x64"
	case ArchARM64HTTP:
		return "http-arm64"
	default:
		return "unknown"
	}
}

// ParseArch is the inverse of Arch.String; anything else is ArchUnknown.
func ParseArch(s string) Arch {
	for a := ArchBIOS; a <= ArchARM64HTTP; a++ {
		if a.String() == s {
			return a
		}
	}
	return ArchUnknown
}

// CPU is the Linux architecture name for the arch (amd64 or arm64).
func (a Arch) CPU() string {
	if a == ArchARM64UEFI || a == ArchARM64HTTP {
		return "arm64"
	}
	return "amd64"
}

// Client is a booting machine as the network sees it.
type Client struct {
	MAC    net.HardwareAddr
	UUID   string // SMBIOS UUID, lower case, or ""
	Serial string // SMBIOS serial, or ""
	Arch   Arch
	Addr   netip.Addr // source address of the request, when known
}

// ErrUnknownMachine is returned by a Booter for a client it does not know.
// Such a client never gets a config; it is recorded as discovered.
var ErrUnknownMachine = errors.New("unknown machine")

// BootError is a Booter's answer for a machine it knows but cannot boot yet
// (no boot assets, a rack file that does not fit the machine): the machine
// shows the message as its stage and is told to ask again. Msg says what
// to do; it is shown to the user.
type BootError struct {
	Name string
	Msg  string
}

func (e *BootError) Error() string { return e.Name + " cannot boot: " + e.Msg }

// LocalBoot says how iPXE leaves the network boot for the local disk.
type LocalBoot string

// Local boot methods.
const (
	LocalBootExit    LocalBoot = "exit"
	LocalBootSanboot LocalBoot = "sanboot"
)

// BootSpec is what one machine boots.
type BootSpec struct {
	// Name identifies the machine in logs and the status page.
	Name string
	// Installed machines boot from their local disk with LocalBoot.
	Installed bool
	LocalBoot LocalBoot
	// Kernel and Initrd are asset IDs, served under /assets/<id>.
	Kernel string
	Initrd []string
	// Cmdline is a text/template for the kernel command line. pxe fills in:
	// {{.ConfigURL}} (the token-protected config URL), {{.EventsAddr}}
	// (host:port of the events sink), {{.LogAddr}} (host:port of the kernel
	// log receiver) and {{.Server}} (this server's address).
	Cmdline string
	// MACs are the machine's MACs from the rack file; when set, a boot
	// script with a config token goes only to a request naming one of
	// them (see CheckOwner).
	MACs []net.HardwareAddr
}

// Booter is what pxe asks about machines.
type Booter interface {
	// BootSpec returns what the client should boot, or ErrUnknownMachine.
	BootSpec(ctx context.Context, c Client) (*BootSpec, error)
	// Config returns the machine's config, named by BootSpec.Name. It is
	// served only to that machine, behind a token.
	Config(ctx context.Context, name string) ([]byte, error)
}

// Discoverer describes the discovery boot: what a machine the Booter does
// not know boots, so that it comes up and can be looked at before anyone
// writes it into the rack. pxe asks it only for unknown machines (never for
// one the owner check refused) and only when HTTPConfig.Discovery is set.
//
// The spec must carry no secret: pxe mints no token for it, and its
// Cmdline is rendered without {{.ConfigURL}} (a template naming it is
// refused, and the machine gets the waiting script instead). Name is only
// shown; Installed and MACs are ignored.
type Discoverer interface {
	DiscoveryBoot(ctx context.Context, c Client) (*BootSpec, error)
}

// DiscovererFunc adapts a function to Discoverer.
type DiscovererFunc func(ctx context.Context, c Client) (*BootSpec, error)

// DiscoveryBoot calls f.
func (f DiscovererFunc) DiscoveryBoot(ctx context.Context, c Client) (*BootSpec, error) {
	return f(ctx, c)
}

// Assets opens boot assets by ID (kernel or initramfs of one version,
// schematic and arch). The file is served with sendfile and Range support.
type Assets interface {
	Open(id string) (ReadSeekCloser, error)
}

// ReadSeekCloser is an open asset; an *os.File is one.
type ReadSeekCloser interface {
	io.ReadSeeker
	io.Closer
}

// Stages pxe reports. Other packages (the Talos events sink) add later ones
// (installing, installed, running) to the same timeline.
const (
	StageDiscovered   = "discovered"    // an unknown machine asked to boot (and was told to wait)
	StageDHCP         = "dhcp"          // got a boot offer from rackboot
	StageProxyIgnored = "proxy-ignored" // keeps sending DISCOVERs, ignoring our proxy offers
	StageIPXE         = "ipxe"          // fetched an iPXE binary over TFTP/HTTP
	StageScript       = "script"        // fetched its iPXE boot script
	StageKernel       = "kernel"        // fetched its kernel
	StageInitrd       = "initrd"        // fetched its initramfs
	StageConfig       = "config"        // fetched its machine config
	StageLocalBoot    = "local-boot"    // was sent to boot from its disk
	StageCannotBoot   = "cannot-boot"   // known, but rackboot cannot boot it yet (detail: why and the fix)
	// StageDenied: a request for the machine's boot script or config was
	// refused (another NIC claimed its MAC, a spent token from another
	// address). The event names the machine; its Addr and MAC are the
	// requester's and must not be taken as the machine's.
	StageDenied = "denied"
	// StageDiscoveryBoot: an unknown machine asked to boot and got the
	// discovery boot (Discoverer): a kernel and initrd, no config.
	StageDiscoveryBoot = "discovery-boot"
)

// Event is something pxe saw a client do.
type Event struct {
	Time   time.Time
	MAC    net.HardwareAddr
	Name   string // machine name, "" when unknown
	Addr   netip.Addr
	Stage  string
	Detail string // never a secret
}

// Recorder receives what pxe sees (the machine inventory implements it).
type Recorder interface {
	Record(Event)
}

// RecorderFunc adapts a function to Recorder.
type RecorderFunc func(Event)

// Record calls f.
func (f RecorderFunc) Record(e Event) { f(e) }
