package pxe

// Pure PXE decisions over one DHCP packet: what firmware the client runs,
// whether it is already iPXE, what it should boot next, and the replies
// that say so. No sockets, no state: table-tested in classify_test.go.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// ErrNotPXE means the client is not a network-booting firmware nor iPXE
// (an OS's DHCP client, a phone): it gets no boot offer.
var ErrNotPXE = errors.New("not a PXE client")

// ErrUnsupportedArch means the client's firmware type (option 93) is one
// rackboot has no iPXE binary for (32-bit UEFI, Itanium...).
var ErrUnsupportedArch = errors.New("unsupported client architecture")

// DHCP options rackboot reads or writes that dhcpv4 has no name for.
const (
	optEtherboot  = dhcpv4.GenericOptionCode(175) // iPXE's encapsulated settings
	ipxeNoPXEDHCP = 176                           // 175.176: don't wait for ProxyDHCP offers
	pxeDiscovery  = 6                             // 43.6: PXE_DISCOVERY_CONTROL
	// pxeBootFileOnly is PXE_DISCOVERY_CONTROL bit 3: a boot file is in
	// this offer, download it without boot server discovery or menus.
	pxeBootFileOnly = 8
)

// Boot file names the TFTP server must serve (iPXE builds per firmware),
// and the HTTP paths the HTTP server must serve.
const (
	BootFileBIOS       = "undionly.kpxe"
	BootFileX64EFI     = "ipxe.efi"
	BootFileX64SNPOnly = "snponly.efi"
	BootFileARM64EFI   = "ipxe-arm64.efi"
	BootScriptPath     = "/boot.ipxe" // the iPXE script every iPXE client starts with
	BootHTTPDir        = "/ipxe/"     // iPXE binaries over HTTP, for UEFI HTTP boot
)

// IPXEBuild is which iPXE build x64 UEFI firmware is given.
type IPXEBuild string

// The iPXE builds. BIOS firmware always gets undionly.kpxe (it drives the
// NIC through the firmware's UNDI, whatever the NIC), and arm64 firmware
// ipxe-arm64.efi (Debian builds no arm64 snponly.efi).
const (
	// IPXEFull is ipxe.efi, with iPXE's own NIC drivers (the default; "" means it too).
	IPXEFull IPXEBuild = "full"
	// IPXESNPOnly is snponly.efi: no NIC drivers of its own, it drives
	// the NIC through the UEFI firmware's SNP (Simple Network Protocol).
	// For NICs iPXE has no driver for, or drives badly.
	IPXESNPOnly IPXEBuild = "snponly"
)

// IsPXE reports whether the request comes from PXE or UEFI HTTP boot
// firmware (vendor class "PXEClient..." or "HTTPClient...").
func IsPXE(m *dhcpv4.DHCPv4) bool {
	vc := m.ClassIdentifier()
	return strings.HasPrefix(vc, "PXEClient") || strings.HasPrefix(vc, "HTTPClient")
}

// IsIPXE reports whether the request comes from iPXE: user class "iPXE"
// (option 77, raw as iPXE sends it or RFC 3004 encoded) or iPXE's own
// option 175.
func IsIPXE(m *dhcpv4.DHCPv4) bool {
	if m.Options.Has(optEtherboot) {
		return true
	}
	raw := m.Options.Get(dhcpv4.OptionUserClassInformation)
	if string(raw) == "iPXE" {
		return true
	}
	for _, uc := range m.UserClass() {
		if uc == "iPXE" {
			return true
		}
	}
	return false
}

// ClientArch returns the client's firmware type from option 93 (RFC 4578),
// or, without option 93, from the vendor class ("PXEClient:Arch:00011:...",
// the same number in decimal). A PXE client with neither is BIOS (old ROMs
// omit both). A client that is not PXE and has no option 93 gets ErrNotPXE;
// a type rackboot cannot boot gets ErrUnsupportedArch.
func ClientArch(m *dhcpv4.DHCPv4) (Arch, error) {
	v := m.Options.Get(dhcpv4.OptionClientSystemArchitectureType)
	if v == nil {
		if !IsPXE(m) && !IsIPXE(m) {
			return ArchUnknown, ErrNotPXE
		}
		t, ok := vendorClassArch(m.ClassIdentifier())
		if !ok {
			return ArchBIOS, nil
		}
		return archType(t)
	}
	if len(v) < 2 || len(v)%2 != 0 {
		return ArchUnknown, fmt.Errorf("malformed option 93 (%d bytes): %w", len(v), ErrUnsupportedArch)
	}
	// Several types may be listed; the first is the one in use.
	return archType(binary.BigEndian.Uint16(v))
}

// vendorClassArch reads the architecture type from a PXE vendor class,
// "PXEClient:Arch:xxxxx:UNDI:yyyzzz" (PXE 2.1; HTTPClient likewise, UEFI
// 2.5): five decimal digits.
func vendorClassArch(vc string) (uint16, bool) {
	_, rest, ok := strings.Cut(vc, ":Arch:")
	if !ok || len(rest) < 5 || (len(rest) > 5 && rest[5] != ':') {
		return 0, false
	}
	var t uint16
	for _, c := range rest[:5] {
		if c < '0' || c > '9' {
			return 0, false
		}
		t = t*10 + uint16(c-'0')
	}
	if !strings.HasPrefix(vc, "PXEClient:Arch:") && !strings.HasPrefix(vc, "HTTPClient:Arch:") {
		return 0, false
	}
	return t, true
}

// archType maps an RFC 4578 / IANA processor architecture type.
func archType(t uint16) (Arch, error) {
	switch t {
	case 0:
		return ArchBIOS, nil
	case 7, 9:
		return ArchX64UEFI, nil
	case 11:
		return ArchARM64UEFI, nil
	case 16:
		return ArchX64HTTP, nil
	case 19:
		return ArchARM64HTTP, nil
	case 6:
		return ArchUnknown, fmt.Errorf("client type 6 (32-bit x86 UEFI): %w", ErrUnsupportedArch)
	default:
		return ArchUnknown, fmt.Errorf("client type %d: %w", t, ErrUnsupportedArch)
	}
}

// BootFile is what a client should boot next. An iPXE client gets the
// boot script URL; firmware gets the iPXE binary for its arch (and, on x64
// UEFI, build): a TFTP file name (tftp true), or an HTTP URL for UEFI HTTP
// boot. A client that is already iPXE never gets an iPXE binary, so there
// is no boot loop. "" means nothing to offer (unknown arch).
func BootFile(arch Arch, isIPXE bool, build IPXEBuild, serverIP netip.Addr, httpPort int) (file string, tftp bool) {
	base := "http://" + netip.AddrPortFrom(serverIP, uint16(httpPort)).String()
	if isIPXE {
		return base + BootScriptPath, false
	}
	x64 := BootFileX64EFI
	if build == IPXESNPOnly {
		x64 = BootFileX64SNPOnly
	}
	switch arch {
	case ArchBIOS:
		return BootFileBIOS, true
	case ArchX64UEFI:
		return x64, true
	case ArchARM64UEFI:
		return BootFileARM64EFI, true
	case ArchX64HTTP:
		return base + BootHTTPDir + x64, false
	case ArchARM64HTTP:
		return base + BootHTTPDir + BootFileARM64EFI, false
	default:
		return "", false
	}
}

// ClientUUID is the client's SMBIOS UUID from option 97 (type 0 and 16
// bytes, RFC 4578), lower case as dmidecode and iPXE's ${uuid} print it, or
// "" without one. PXE firmware and iPXE both send it in EFI GUID byte order
// (the first three fields little-endian), so those are swapped back.
func ClientUUID(m *dhcpv4.DHCPv4) string {
	v := m.Options.Get(dhcpv4.OptionClientMachineIdentifier)
	if len(v) != 17 || v[0] != 0 {
		return ""
	}
	u := v[1:]
	if allBytes(u, 0) || allBytes(u, 0xff) {
		return "" // firmware without a UUID
	}
	return fmt.Sprintf("%02x%02x%02x%02x-%02x%02x-%02x%02x-%x-%x",
		u[3], u[2], u[1], u[0], u[5], u[4], u[7], u[6], u[8:10], u[10:16])
}

func allBytes(b []byte, v byte) bool {
	for _, c := range b {
		if c != v {
			return false
		}
	}
	return true
}

// Boot is the boot decision for one request.
type Boot struct {
	Arch Arch
	IPXE bool
	// File is a TFTP file name when TFTP is true, else an HTTP URL.
	File string
	TFTP bool
}

// HTTPBoot reports whether the client is UEFI HTTP boot firmware, which
// wants vendor class "HTTPClient" in the reply.
func (b Boot) HTTPBoot() bool {
	return !b.IPXE && (b.Arch == ArchX64HTTP || b.Arch == ArchARM64HTTP)
}

// String describes the decision for logs and events.
func (b Boot) String() string {
	how := "http"
	if b.TFTP {
		how = "tftp"
	}
	return fmt.Sprintf("arch %s, ipxe %t, boot %s %s", b.Arch, b.IPXE, how, b.File)
}

// DecideBoot decides what the requesting client boots: ErrNotPXE for a
// client that isn't booting from the network, ErrUnsupportedArch for
// firmware rackboot has no iPXE for. build is the iPXE build chosen for the
// client (x64 UEFI only; "" is IPXEFull).
func DecideBoot(m *dhcpv4.DHCPv4, serverIP netip.Addr, httpPort int, build IPXEBuild) (Boot, error) {
	ipxe := IsIPXE(m)
	if !ipxe && !IsPXE(m) {
		return Boot{}, ErrNotPXE
	}
	arch, err := ClientArch(m)
	if err != nil {
		return Boot{}, err
	}
	file, tftp := BootFile(arch, ipxe, build, serverIP, httpPort)
	if file == "" {
		return Boot{}, fmt.Errorf("arch %s: %w", arch, ErrUnsupportedArch)
	}
	return Boot{Arch: arch, IPXE: ipxe, File: file, TFTP: tftp}, nil
}

// ProxyReply builds a proxy DHCP answer (PXE spec): an OFFER to a DISCOVER
// (port 67) or an ACK to a REQUEST or INFORM (port 4011). It never gives
// an address (yiaddr 0): the network's own DHCP server does that.
func ProxyReply(req *dhcpv4.DHCPv4, serverIP netip.Addr, b Boot) (*dhcpv4.DHCPv4, error) {
	var mt dhcpv4.MessageType
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		mt = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeInform:
		mt = dhcpv4.MessageTypeAck
	default:
		return nil, fmt.Errorf("proxy reply to a %s: only DISCOVER, REQUEST and INFORM get one", req.MessageType())
	}
	reply, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithYourIP(net.IPv4zero),
		dhcpv4.WithClientIP(req.ClientIPAddr),
	)
	if err != nil {
		return nil, fmt.Errorf("build proxy reply: %w", err)
	}
	addBoot(reply, req, serverIP, b)
	return reply, nil
}

// Grant is the network configuration a full DHCP reply gives.
type Grant struct {
	Addr      netip.Addr   // the client's address; invalid in an INFORM ACK
	Subnet    netip.Prefix // for the subnet mask
	Router    netip.Addr   // optional
	DNS       []netip.Addr // optional
	LeaseTime time.Duration
}

// FullReply builds a full DHCP OFFER or ACK (mt) giving g; when boot is
// not nil the PXE options for it are added too.
func FullReply(req *dhcpv4.DHCPv4, mt dhcpv4.MessageType, serverIP netip.Addr, g Grant, boot *Boot) (*dhcpv4.DHCPv4, error) {
	if mt != dhcpv4.MessageTypeOffer && mt != dhcpv4.MessageTypeAck {
		return nil, fmt.Errorf("full reply of type %s: only OFFER and ACK", mt)
	}
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithServerIP(net.IPv4zero),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(serverIP.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptSubnetMask(net.CIDRMask(g.Subnet.Bits(), 32))),
	}
	if g.Addr.IsValid() {
		mods = append(mods, dhcpv4.WithYourIP(g.Addr.AsSlice()))
	} else {
		// INFORM: the client has its address already.
		mods = append(mods, dhcpv4.WithClientIP(req.ClientIPAddr))
	}
	if g.LeaseTime > 0 {
		mods = append(mods,
			dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(g.LeaseTime)),
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(g.LeaseTime/2)),
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(g.LeaseTime*7/8)))
	}
	if g.Router.IsValid() {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(g.Router.AsSlice())))
	}
	if len(g.DNS) > 0 {
		ips := make([]net.IP, len(g.DNS))
		for i, a := range g.DNS {
			ips[i] = a.AsSlice()
		}
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(ips...)))
	}
	reply, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		return nil, fmt.Errorf("build %s: %w", mt, err)
	}
	if boot != nil {
		addBoot(reply, req, serverIP, *boot)
	}
	return reply, nil
}

// NakReply builds a NAK saying why.
func NakReply(req *dhcpv4.DHCPv4, serverIP netip.Addr, why string) (*dhcpv4.DHCPv4, error) {
	reply, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(serverIP.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptMessage(why)),
	)
	if err != nil {
		return nil, fmt.Errorf("build NAK: %w", err)
	}
	// RFC 2131 4.3.2: a NAK is broadcast (the client may have no address).
	reply.SetBroadcast()
	return reply, nil
}

// addBoot adds the PXE options for b: server identifier and next-server,
// vendor class, boot file, discovery control (so firmware boots the file
// at once instead of asking boot servers or showing a menu), the client's
// UUID echoed back (some ROMs insist), and for iPXE 175.176=1 so it does
// not wait seconds for more ProxyDHCP offers.
func addBoot(reply, req *dhcpv4.DHCPv4, serverIP netip.Addr, b Boot) {
	reply.UpdateOption(dhcpv4.OptServerIdentifier(serverIP.AsSlice()))
	reply.ServerIPAddr = serverIP.AsSlice()
	reply.ServerHostName = serverIP.String()
	vc := "PXEClient"
	if b.HTTPBoot() {
		vc = "HTTPClient"
	}
	reply.UpdateOption(dhcpv4.OptClassIdentifier(vc))
	reply.BootFileName = b.File
	reply.UpdateOption(dhcpv4.OptBootFileName(b.File))
	if b.TFTP {
		reply.UpdateOption(dhcpv4.OptTFTPServerName(serverIP.String()))
	}
	reply.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionVendorSpecificInformation,
		[]byte{pxeDiscovery, 1, pxeBootFileOnly, 255}))
	if uuid := req.Options.Get(dhcpv4.OptionClientMachineIdentifier); uuid != nil {
		reply.UpdateOption(dhcpv4.OptGeneric(dhcpv4.OptionClientMachineIdentifier, uuid))
	}
	if b.IPXE {
		reply.UpdateOption(dhcpv4.OptGeneric(optEtherboot, []byte{ipxeNoPXEDHCP, 1, 1}))
	}
}
