//go:build linux

package main

import (
	"net"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// TestDHCPNoClientIdentifier: the DISCOVER and REQUEST the stand-in sends
// carry no client identifier (option 61), as Talos's DHCP client sends
// none; a server must know the machine by chaddr alone.
func TestDHCPNoClientIdentifier(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	discover, err := dhcpv4.NewDiscovery(mac, dhcpModifiers()...)
	if err != nil {
		t.Fatal(err)
	}
	offer, err := dhcpv4.NewReplyFromRequest(discover, dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer),
		dhcpv4.WithYourIP(net.IPv4(10, 0, 0, 5)), dhcpv4.WithServerIP(net.IPv4(10, 0, 0, 1)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 0, 0, 1))))
	if err != nil {
		t.Fatal(err)
	}
	request, err := dhcpv4.NewRequestFromOffer(offer, dhcpModifiers()...)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*dhcpv4.DHCPv4{discover, request} {
		if m.Options.Has(dhcpv4.OptionClientIdentifier) {
			t.Errorf("%s carries option 61: %s", m.MessageType(), m.Summary())
		}
		if m.ClassIdentifier() != "rackboot-standin" {
			t.Errorf("%s vendor class %q", m.MessageType(), m.ClassIdentifier())
		}
	}
}
