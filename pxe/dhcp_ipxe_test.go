package pxe

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// The DHCP server asks DHCPConfig.IPXEBuild which iPXE build a firmware
// client gets (by MAC and option 97 UUID), in proxy and full mode; iPXE
// clients get their script and the question is not asked.
func TestDHCPIPXEBuild(t *testing.T) {
	snpMAC := net.HardwareAddr{0x52, 0x54, 0, 0, 0, 0x5e}
	snpUUID := "01020304-0506-0708-090a-0b0c0d0e0f10"
	uuid97 := dhcpv4.WithGeneric(dhcpv4.OptionClientMachineIdentifier,
		[]byte{0, 0x04, 0x03, 0x02, 0x01, 0x06, 0x05, 0x08, 0x07, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10})
	var asked []Client
	choose := func(c Client) IPXEBuild {
		asked = append(asked, c)
		if bytes.Equal(c.MAC, snpMAC) || c.UUID == snpUUID {
			return IPXESNPOnly
		}
		return ""
	}
	tests := []struct {
		name string
		mac  net.HardwareAddr
		mods []dhcpv4.Modifier
		file string
		ask  bool // IPXEBuild is asked
	}{
		{"chosen by MAC", snpMAC, []dhcpv4.Modifier{vcEFI, arch93(7)}, "snponly.efi", true},
		{"chosen by UUID", macA, []dhcpv4.Modifier{vcEFI, arch93(7), uuid97}, "snponly.efi", true},
		{"not chosen", macB, []dhcpv4.Modifier{vcEFI, arch93(7)}, "ipxe.efi", true},
		{"http boot chosen", snpMAC, []dhcpv4.Modifier{vcHTTP, arch93(16)}, "http://10.99.0.1:8080/ipxe/snponly.efi", true},
		{"arm64 keeps its build", snpMAC, []dhcpv4.Modifier{vcARM64, arch93(11)}, "ipxe-arm64.efi", true},
		{"bios keeps undionly", snpMAC, []dhcpv4.Modifier{vcBIOS, arch93(0)}, "undionly.kpxe", true},
		{"ipxe gets its script", snpMAC, []dhcpv4.Modifier{vcEFI, arch93(7), ucIPXE}, "http://10.99.0.1:8080/boot.ipxe", false},
	}
	for _, mode := range []DHCPMode{DHCPProxy, DHCPFull} {
		cfg := fullConfig()
		if mode == DHCPProxy {
			cfg = DHCPConfig{ServerIP: testServer, HTTPPort: 8080}
		}
		cfg.IPXEBuild = choose
		s := newTestDHCP(t, cfg, newFakeClock(), nil)
		for _, tt := range tests {
			t.Run(string(mode)+"/"+tt.name, func(t *testing.T) {
				asked = nil
				r := s.handle(pkt(t, tt.mac, dhcpv4.MessageTypeDiscover, tt.mods...), false)
				if r == nil {
					t.Fatal("no offer")
				}
				if r.BootFileName != tt.file {
					t.Errorf("boot file %q, want %q", r.BootFileName, tt.file)
				}
				if !tt.ask {
					if len(asked) != 0 {
						t.Errorf("IPXEBuild asked for an iPXE client: %+v", asked)
					}
					return
				}
				if len(asked) == 0 || !bytes.Equal(asked[0].MAC, tt.mac) {
					t.Fatalf("IPXEBuild asked %+v, want the client's MAC %s", asked, tt.mac)
				}
				if hasUUID := strings.Contains(tt.name, "UUID"); hasUUID != (asked[0].UUID == snpUUID) {
					t.Errorf("IPXEBuild asked with UUID %q", asked[0].UUID)
				}
			})
		}
	}
	// Without IPXEBuild every x64 UEFI client gets the full build.
	s := newTestDHCP(t, DHCPConfig{ServerIP: testServer, HTTPPort: 8080}, newFakeClock(), nil)
	if r := s.handle(pkt(t, snpMAC, dhcpv4.MessageTypeDiscover, vcEFI, arch93(7)), false); r == nil || r.BootFileName != "ipxe.efi" {
		t.Fatalf("no IPXEBuild: %v", r)
	}
}
