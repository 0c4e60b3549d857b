package main

import (
	"net/netip"
	"strings"
	"testing"
)

func TestPickInterface(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	subnet := p("192.168.1.0/24")
	lo := iface{name: "lo", up: true, loop: true, addrs: []netip.Prefix{p("127.0.0.1/8")}}
	rack := iface{name: "eth0", up: true, addrs: []netip.Prefix{p("192.168.1.5/24"), p("fe80::1/64")}}
	wifi := iface{name: "wlan0", up: true, addrs: []netip.Prefix{p("10.0.0.7/24")}}
	usb := iface{name: "usb0", up: true, addrs: []netip.Prefix{p("172.16.0.2/24")}}
	down := iface{name: "eth1", up: false, addrs: []netip.Prefix{p("192.168.1.6/24")}}
	tests := []struct {
		name     string
		all      []iface
		flag     string
		want     netip.Addr
		wantName string
		wantIP   string
		wantErr  string
	}{
		{name: "the one in the rack subnet wins", all: []iface{lo, wifi, rack, down}, wantName: "eth0", wantIP: "192.168.1.5"},
		{name: "only LAN interface", all: []iface{lo, wifi}, wantName: "wlan0", wantIP: "10.0.0.7"},
		{name: "two candidates", all: []iface{lo, wifi, usb}, wantErr: "pick one with --interface"},
		{name: "two in subnet", all: []iface{rack, {name: "eth2", up: true, addrs: []netip.Prefix{p("192.168.1.9/24")}}}, wantErr: "several interfaces"},
		{name: "nothing up", all: []iface{lo, down}, wantErr: "plug the laptop"},
		{name: "named", all: []iface{rack, wifi}, flag: "wlan0", wantName: "wlan0", wantIP: "10.0.0.7"},
		{name: "named missing", all: []iface{rack}, flag: "eth9", wantErr: `no network interface named "eth9"`},
		{name: "server ip given", all: []iface{rack, wifi}, want: a("10.0.0.7"), wantName: "wlan0", wantIP: "10.0.0.7"},
		{name: "server ip nowhere", all: []iface{wifi, usb}, want: a("10.9.9.9"), wantErr: "no interface has the address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name, ip, err := pickInterface(tt.all, tt.flag, tt.want, subnet)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || name != tt.wantName || ip.String() != tt.wantIP {
				t.Fatalf("= %s %s %v, want %s %s", name, ip, err, tt.wantName, tt.wantIP)
			}
		})
	}
}
