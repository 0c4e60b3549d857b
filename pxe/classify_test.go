package pxe

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/dotfile/rackboot/pxe/ipxe"
)

var (
	testMAC    = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	testServer = netip.MustParseAddr("10.99.0.1")
)

// Packet parts, as real clients send them.
var (
	vcBIOS = dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001"))
	vcEFI  = dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016"))
	vcHTTP = dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001"))
	// arm64 UEFI firmware (type 11, decimal in the vendor class), and its
	// HTTP boot client (type 19).
	vcARM64     = dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00011:UNDI:003000"))
	vcARM64HTTP = dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00019:UNDI:003000"))
	ucIPXE      = dhcpv4.WithUserClass("iPXE", false) // raw, as iPXE sends it
	opt175      = dhcpv4.WithGeneric(optEtherboot, []byte{0xb1, 0x05, 0x01, 0x80, 0x86, 0x10, 0x0e})
	withUUID    = dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, append([]byte{0}, bytes.Repeat([]byte{0xab}, 16)...))
)

func arch93(t ...uint16) dhcpv4.Modifier {
	var b []byte
	for _, v := range t {
		b = append(b, byte(v>>8), byte(v))
	}
	return dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, b)
}

func packet(t testing.TB, mt dhcpv4.MessageType, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	m, err := dhcpv4.NewDiscovery(testMAC, append([]dhcpv4.Modifier{dhcpv4.WithMessageType(mt)}, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	// Round-trip through the wire format: tests see what a server sees.
	m, err = dhcpv4.FromBytes(m.ToBytes())
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestClientArch(t *testing.T) {
	tests := []struct {
		name string
		mods []dhcpv4.Modifier
		want Arch
		err  error
	}{
		{"bios", []dhcpv4.Modifier{vcBIOS, arch93(0)}, ArchBIOS, nil},
		{"efi bc 7", []dhcpv4.Modifier{vcEFI, arch93(7)}, ArchX64UEFI, nil},
		{"efi x64 9", []dhcpv4.Modifier{vcEFI, arch93(9)}, ArchX64UEFI, nil},
		{"arm64", []dhcpv4.Modifier{vcEFI, arch93(11)}, ArchARM64UEFI, nil},
		{"arm64 0x0b with its vendor class", []dhcpv4.Modifier{vcARM64, arch93(0x0b)}, ArchARM64UEFI, nil},
		{"arm64 vendor class without 93", []dhcpv4.Modifier{vcARM64}, ArchARM64UEFI, nil},
		{"x64 http", []dhcpv4.Modifier{vcHTTP, arch93(16)}, ArchX64HTTP, nil},
		{"arm64 http", []dhcpv4.Modifier{vcHTTP, arch93(19)}, ArchARM64HTTP, nil},
		{"arm64 http 0x13 with its vendor class", []dhcpv4.Modifier{vcARM64HTTP, arch93(0x13)}, ArchARM64HTTP, nil},
		{"arm64 http vendor class without 93", []dhcpv4.Modifier{vcARM64HTTP}, ArchARM64HTTP, nil},
		{"option 93 wins over the vendor class", []dhcpv4.Modifier{vcARM64, arch93(7)}, ArchX64UEFI, nil},
		{"x64 vendor class without 93", []dhcpv4.Modifier{vcEFI}, ArchX64UEFI, nil},
		{"vendor class with a short arch is bios", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:011"))}, ArchBIOS, nil},
		{"vendor class with a bad arch is bios", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:0001x:UNDI:003000"))}, ArchBIOS, nil},
		{"32-bit uefi vendor class without 93", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00006:UNDI:003000"))}, ArchUnknown, ErrUnsupportedArch},
		{"first of several", []dhcpv4.Modifier{vcEFI, arch93(7, 0)}, ArchX64UEFI, nil},
		{"pxe without 93 is bios", []dhcpv4.Modifier{vcBIOS}, ArchBIOS, nil},
		{"ipxe without 93 is bios", []dhcpv4.Modifier{ucIPXE}, ArchBIOS, nil},
		{"32-bit uefi", []dhcpv4.Modifier{vcEFI, arch93(6)}, ArchUnknown, ErrUnsupportedArch},
		{"itanium", []dhcpv4.Modifier{vcEFI, arch93(2)}, ArchUnknown, ErrUnsupportedArch},
		{"malformed 93", []dhcpv4.Modifier{vcEFI, dhcpv4.WithGeneric(dhcpv4.OptionClientSystemArchitectureType, []byte{7})}, ArchUnknown, ErrUnsupportedArch},
		{"not pxe", nil, ArchUnknown, ErrNotPXE},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ClientArch(packet(t, dhcpv4.MessageTypeDiscover, tt.mods...))
			if got != tt.want || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("ClientArch = %v, %v; want %v, %v", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestIsPXEAndIPXE(t *testing.T) {
	tests := []struct {
		name      string
		mods      []dhcpv4.Modifier
		pxe, ipxe bool
	}{
		{"pxe bios", []dhcpv4.Modifier{vcBIOS}, true, false},
		{"http boot", []dhcpv4.Modifier{vcHTTP}, true, false},
		{"windows", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("MSFT 5.0"))}, false, false},
		{"nothing", nil, false, false},
		{"ipxe raw user class", []dhcpv4.Modifier{vcBIOS, ucIPXE}, true, true},
		{"ipxe rfc3004 user class", []dhcpv4.Modifier{dhcpv4.WithUserClass("iPXE", true)}, false, true},
		{"ipxe among rfc3004 classes", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptRFC3004UserClass([]string{"foo", "iPXE"}))}, false, true},
		{"option 175 only", []dhcpv4.Modifier{vcEFI, opt175}, true, true},
		{"other user class", []dhcpv4.Modifier{dhcpv4.WithUserClass("iPXEx", false)}, false, false},
		{"lookalike vendor class", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("xPXEClient"))}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := packet(t, dhcpv4.MessageTypeDiscover, tt.mods...)
			if got := IsPXE(m); got != tt.pxe {
				t.Errorf("IsPXE = %v, want %v", got, tt.pxe)
			}
			if got := IsIPXE(m); got != tt.ipxe {
				t.Errorf("IsIPXE = %v, want %v", got, tt.ipxe)
			}
		})
	}
}

func TestBootFile(t *testing.T) {
	tests := []struct {
		arch  Arch
		ipxe  bool
		build IPXEBuild
		file  string
		tftp  bool
	}{
		{ArchBIOS, false, "", "undionly.kpxe", true},
		{ArchX64UEFI, false, "", "ipxe.efi", true},
		{ArchARM64UEFI, false, "", "ipxe-arm64.efi", true},
		{ArchX64HTTP, false, "", "http://10.99.0.1:8080/ipxe/ipxe.efi", false},
		{ArchARM64HTTP, false, "", "http://10.99.0.1:8080/ipxe/ipxe-arm64.efi", false},
		{ArchUnknown, false, "", "", false},
		{ArchBIOS, true, "", "http://10.99.0.1:8080/boot.ipxe", false},
		{ArchX64UEFI, true, "", "http://10.99.0.1:8080/boot.ipxe", false},
		{ArchARM64UEFI, true, "", "http://10.99.0.1:8080/boot.ipxe", false},
		{ArchX64HTTP, true, "", "http://10.99.0.1:8080/boot.ipxe", false},
		{ArchUnknown, true, "", "http://10.99.0.1:8080/boot.ipxe", false},
		// The full build, named.
		{ArchX64UEFI, false, IPXEFull, "ipxe.efi", true},
		{ArchX64HTTP, false, IPXEFull, "http://10.99.0.1:8080/ipxe/ipxe.efi", false},
		// snponly: x64 UEFI only; BIOS keeps undionly (the firmware's
		// UNDI already), arm64 keeps ipxe-arm64.efi (no arm64 snponly).
		{ArchX64UEFI, false, IPXESNPOnly, "snponly.efi", true},
		{ArchX64HTTP, false, IPXESNPOnly, "http://10.99.0.1:8080/ipxe/snponly.efi", false},
		{ArchBIOS, false, IPXESNPOnly, "undionly.kpxe", true},
		{ArchARM64UEFI, false, IPXESNPOnly, "ipxe-arm64.efi", true},
		{ArchARM64HTTP, false, IPXESNPOnly, "http://10.99.0.1:8080/ipxe/ipxe-arm64.efi", false},
		{ArchX64UEFI, true, IPXESNPOnly, "http://10.99.0.1:8080/boot.ipxe", false},
	}
	for _, tt := range tests {
		file, tftp := BootFile(tt.arch, tt.ipxe, tt.build, testServer, 8080)
		if file != tt.file || tftp != tt.tftp {
			t.Errorf("BootFile(%v, ipxe %v, build %q) = %q, %v; want %q, %v", tt.arch, tt.ipxe, tt.build, file, tftp, tt.file, tt.tftp)
		}
		// No boot loop: iPXE never gets an iPXE binary again.
		if tt.ipxe && (strings.HasSuffix(file, ".efi") || strings.HasSuffix(file, ".kpxe")) {
			t.Errorf("iPXE client on %v offered an iPXE binary %q", tt.arch, file)
		}
		// Every binary offered is one the servers serve.
		if name := strings.TrimPrefix(file, "http://10.99.0.1:8080"+BootHTTPDir); !tt.ipxe && file != "" && !ipxe.IsBinary(name) {
			t.Errorf("BootFile(%v, %q) offers %q, which is not an iPXE binary name", tt.arch, tt.build, name)
		}
	}
	if f, _ := BootFile(ArchBIOS, true, "", netip.MustParseAddr("fd00::1"), 80); f != "http://[fd00::1]:80/boot.ipxe" {
		t.Errorf("IPv6 server URL %q", f)
	}
}

// The whole decision from a request as arm64 and x64 firmware send it, with
// and without the snponly build chosen.
func TestDecideBootArchAndBuild(t *testing.T) {
	tests := []struct {
		name  string
		mods  []dhcpv4.Modifier
		build IPXEBuild
		arch  Arch
		file  string
		tftp  bool
		vc    string // vendor class of the reply
	}{
		{"arm64 pxe 0x0b", []dhcpv4.Modifier{vcARM64, arch93(0x0b)}, "", ArchARM64UEFI, "ipxe-arm64.efi", true, "PXEClient"},
		{"arm64 pxe vendor class only", []dhcpv4.Modifier{vcARM64}, "", ArchARM64UEFI, "ipxe-arm64.efi", true, "PXEClient"},
		{"arm64 http boot 0x13", []dhcpv4.Modifier{vcARM64HTTP, arch93(0x13)}, "", ArchARM64HTTP, "http://10.99.0.1:8080/ipxe/ipxe-arm64.efi", false, "HTTPClient"},
		{"arm64 with snponly chosen", []dhcpv4.Modifier{vcARM64, arch93(0x0b)}, IPXESNPOnly, ArchARM64UEFI, "ipxe-arm64.efi", true, "PXEClient"},
		{"x64 uefi", []dhcpv4.Modifier{vcEFI, arch93(7)}, "", ArchX64UEFI, "ipxe.efi", true, "PXEClient"},
		{"x64 uefi snponly", []dhcpv4.Modifier{vcEFI, arch93(7)}, IPXESNPOnly, ArchX64UEFI, "snponly.efi", true, "PXEClient"},
		{"x64 http boot snponly", []dhcpv4.Modifier{vcHTTP, arch93(16)}, IPXESNPOnly, ArchX64HTTP, "http://10.99.0.1:8080/ipxe/snponly.efi", false, "HTTPClient"},
		{"bios with snponly chosen", []dhcpv4.Modifier{vcBIOS, arch93(0)}, IPXESNPOnly, ArchBIOS, "undionly.kpxe", true, "PXEClient"},
		{"ipxe on arm64", []dhcpv4.Modifier{vcARM64, arch93(0x0b), ucIPXE}, IPXESNPOnly, ArchARM64UEFI, "http://10.99.0.1:8080/boot.ipxe", false, "PXEClient"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := packet(t, dhcpv4.MessageTypeDiscover, tt.mods...)
			b, err := DecideBoot(req, testServer, 8080, tt.build)
			if err != nil {
				t.Fatal(err)
			}
			if b.Arch != tt.arch || b.File != tt.file || b.TFTP != tt.tftp {
				t.Fatalf("DecideBoot = %+v, want arch %v file %q tftp %v", b, tt.arch, tt.file, tt.tftp)
			}
			r, err := ProxyReply(req, testServer, b)
			if err != nil {
				t.Fatal(err)
			}
			if r.BootFileName != tt.file || r.ClassIdentifier() != tt.vc {
				t.Errorf("reply: boot file %q, vendor class %q; want %q, %q", r.BootFileName, r.ClassIdentifier(), tt.file, tt.vc)
			}
		})
	}
}

func TestClientUUID(t *testing.T) {
	// SMBIOS UUID 01020304-0506-0708-090a-0b0c0d0e0f10 as firmware sends it
	// in option 97: type 0, then the EFI GUID bytes (first three fields
	// little-endian).
	wire := []byte{0, 0x04, 0x03, 0x02, 0x01, 0x06, 0x05, 0x08, 0x07, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10}
	tests := []struct {
		name string
		opt  []byte // nil: no option 97
		want string
	}{
		{"efi byte order", wire, "01020304-0506-0708-090a-0b0c0d0e0f10"},
		{"none", nil, ""},
		{"all zero", make([]byte, 17), ""},
		{"all ff", append([]byte{0}, bytes.Repeat([]byte{0xff}, 16)...), ""},
		{"short", wire[:16], ""},
		{"type 1", append([]byte{1}, wire[1:]...), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mods []dhcpv4.Modifier
			if tt.opt != nil {
				mods = append(mods, dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier, tt.opt))
			}
			if got := ClientUUID(packet(t, dhcpv4.MessageTypeDiscover, append(mods, vcEFI)...)); got != tt.want {
				t.Errorf("ClientUUID = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestProxyReply(t *testing.T) {
	tests := []struct {
		name     string
		mt       dhcpv4.MessageType
		mods     []dhcpv4.Modifier
		wantType dhcpv4.MessageType
		file     string
		vc       string
		ipxe     bool
		tftp     bool
	}{
		{"bios discover", dhcpv4.MessageTypeDiscover, []dhcpv4.Modifier{vcBIOS, arch93(0), withUUID}, dhcpv4.MessageTypeOffer, "undionly.kpxe", "PXEClient", false, true},
		{"uefi request on 4011", dhcpv4.MessageTypeRequest, []dhcpv4.Modifier{vcEFI, arch93(7)}, dhcpv4.MessageTypeAck, "ipxe.efi", "PXEClient", false, true},
		{"ipxe discover", dhcpv4.MessageTypeDiscover, []dhcpv4.Modifier{vcEFI, arch93(7), ucIPXE, opt175}, dhcpv4.MessageTypeOffer, "http://10.99.0.1:8080/boot.ipxe", "PXEClient", true, false},
		{"http boot", dhcpv4.MessageTypeDiscover, []dhcpv4.Modifier{vcHTTP, arch93(16)}, dhcpv4.MessageTypeOffer, "http://10.99.0.1:8080/ipxe/ipxe.efi", "HTTPClient", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := packet(t, tt.mt, tt.mods...)
			b, err := DecideBoot(req, testServer, 8080, "")
			if err != nil {
				t.Fatal(err)
			}
			r, err := ProxyReply(req, testServer, b)
			if err != nil {
				t.Fatal(err)
			}
			// What the client receives.
			r, err = dhcpv4.FromBytes(r.ToBytes())
			if err != nil {
				t.Fatalf("reply does not parse: %v", err)
			}
			if r.MessageType() != tt.wantType {
				t.Errorf("type %v, want %v", r.MessageType(), tt.wantType)
			}
			if !r.YourIPAddr.Equal(net.IPv4zero) {
				t.Errorf("proxy reply gives an address: %v", r.YourIPAddr)
			}
			if r.TransactionID != req.TransactionID || !bytes.Equal(r.ClientHWAddr, testMAC) {
				t.Errorf("xid/chaddr not echoed")
			}
			if !r.ServerIdentifier().Equal(testServer.AsSlice()) || !r.ServerIPAddr.Equal(testServer.AsSlice()) {
				t.Errorf("server id %v, siaddr %v", r.ServerIdentifier(), r.ServerIPAddr)
			}
			if r.ClassIdentifier() != tt.vc {
				t.Errorf("vendor class %q, want %q", r.ClassIdentifier(), tt.vc)
			}
			if r.BootFileName != tt.file || r.BootFileNameOption() != tt.file {
				t.Errorf("boot file %q / option 67 %q, want %q", r.BootFileName, r.BootFileNameOption(), tt.file)
			}
			if got := r.Options.Get(dhcpv4.OptionVendorSpecificInformation); !bytes.Equal(got, []byte{6, 1, 8, 255}) {
				t.Errorf("option 43 = %x, want discovery control 8", got)
			}
			if got := r.Options.Get(optEtherboot); tt.ipxe != bytes.Equal(got, []byte{176, 1, 1}) {
				t.Errorf("option 175 = %x for ipxe=%v", got, tt.ipxe)
			}
			if tt.tftp != (r.TFTPServerName() == testServer.String()) {
				t.Errorf("option 66 = %q with tftp=%v", r.TFTPServerName(), tt.tftp)
			}
			if u := req.Options.Get(dhcpv4.OptionClientMachineIdentifier); !bytes.Equal(u, r.Options.Get(dhcpv4.OptionClientMachineIdentifier)) {
				t.Errorf("option 97 not echoed")
			}
		})
	}
	if _, err := ProxyReply(packet(t, dhcpv4.MessageTypeRelease, vcBIOS), testServer, Boot{File: "x", TFTP: true}); err == nil {
		t.Error("a proxy reply to a RELEASE was built")
	}
}

func TestDecideBoot(t *testing.T) {
	if _, err := DecideBoot(packet(t, dhcpv4.MessageTypeDiscover), testServer, 80, ""); !errors.Is(err, ErrNotPXE) {
		t.Errorf("plain client: %v", err)
	}
	if _, err := DecideBoot(packet(t, dhcpv4.MessageTypeDiscover, vcEFI, arch93(6)), testServer, 80, ""); !errors.Is(err, ErrUnsupportedArch) {
		t.Errorf("32-bit UEFI: %v", err)
	}
	b, err := DecideBoot(packet(t, dhcpv4.MessageTypeDiscover, vcEFI, arch93(9), ucIPXE), testServer, 80, "")
	if err != nil || !b.IPXE || b.Arch != ArchX64UEFI || b.TFTP || b.File != "http://10.99.0.1:80/boot.ipxe" {
		t.Errorf("iPXE on UEFI: %+v, %v", b, err)
	}
}

func TestFullReply(t *testing.T) {
	req := packet(t, dhcpv4.MessageTypeDiscover)
	g := Grant{
		Addr:      netip.MustParseAddr("10.99.0.100"),
		Subnet:    netip.MustParsePrefix("10.99.0.0/24"),
		Router:    netip.MustParseAddr("10.99.0.254"),
		DNS:       []netip.Addr{netip.MustParseAddr("10.99.0.53")},
		LeaseTime: time.Hour,
	}
	r, err := FullReply(req, dhcpv4.MessageTypeOffer, testServer, g, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, _ = dhcpv4.FromBytes(r.ToBytes())
	if !r.YourIPAddr.Equal(net.IPv4(10, 99, 0, 100)) || r.MessageType() != dhcpv4.MessageTypeOffer {
		t.Errorf("offer %v of %v", r.MessageType(), r.YourIPAddr)
	}
	if m := r.SubnetMask(); m.String() != "ffffff00" {
		t.Errorf("mask %v", m)
	}
	if r.IPAddressLeaseTime(0) != time.Hour || r.IPAddressRenewalTime(0) != 30*time.Minute || r.IPAddressRebindingTime(0) != 52*time.Minute+30*time.Second {
		t.Errorf("times %v %v %v", r.IPAddressLeaseTime(0), r.IPAddressRenewalTime(0), r.IPAddressRebindingTime(0))
	}
	if len(r.Router()) != 1 || !r.Router()[0].Equal(net.IPv4(10, 99, 0, 254)) || len(r.DNS()) != 1 {
		t.Errorf("router %v dns %v", r.Router(), r.DNS())
	}
	if r.ClassIdentifier() != "" || r.BootFileName != "" {
		t.Errorf("non-PXE reply carries PXE options")
	}
	// No router configured: no option 3, so no default route on clients.
	g.Router = netip.Addr{}
	r, _ = FullReply(req, dhcpv4.MessageTypeAck, testServer, g, &Boot{Arch: ArchBIOS, File: "undionly.kpxe", TFTP: true})
	if r.Options.Has(dhcpv4.OptionRouter) {
		t.Error("option 3 without a router")
	}
	if r.BootFileName != "undionly.kpxe" || r.ClassIdentifier() != "PXEClient" || !r.ServerIPAddr.Equal(testServer.AsSlice()) {
		t.Errorf("PXE options missing: file %q vc %q siaddr %v", r.BootFileName, r.ClassIdentifier(), r.ServerIPAddr)
	}
	if _, err := FullReply(req, dhcpv4.MessageTypeNak, testServer, g, nil); err == nil {
		t.Error("FullReply built a NAK")
	}
	nak, err := NakReply(req, testServer, "no")
	if err != nil || nak.MessageType() != dhcpv4.MessageTypeNak || nak.Message() != "no" || !nak.IsBroadcast() {
		t.Errorf("NAK %v %v", nak, err)
	}
}
