//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
)

// lease is the address the stand-in got.
type lease struct {
	Link     string
	MAC      string
	IP       string
	Hostname string
}

// bringUpNetwork waits for the first Ethernet link, sets it up, runs DHCP
// on it (with the real insomniacslk client) and configures the address and
// default route with netlink.
func bringUpNetwork(ctx context.Context, log *slog.Logger, wait time.Duration) (*lease, error) {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo)
	}
	link, err := waitForLink(wait)
	if err != nil {
		return nil, err
	}
	name := link.Attrs().Name
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	waitCarrier(name, wait)

	client, err := nclient4.New(name, nclient4.WithTimeout(3*time.Second), nclient4.WithRetry(3))
	if err != nil {
		return nil, fmt.Errorf("DHCP client on %s: %w", name, err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, configTimeout)
	defer cancel()
	var l *nclient4.Lease
	for attempt := 1; ; attempt++ {
		l, err = client.Request(ctx, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("rackboot-standin")))
		if err == nil {
			break
		}
		log.Warn("DHCP failed, retrying", "link", name, "attempt", attempt, "err", err)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("DHCP on %s: %w", name, err)
		}
	}
	ack := l.ACK
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ack.YourIPAddr.DefaultMask()
	}
	ipnet := &net.IPNet{IP: ack.YourIPAddr, Mask: mask}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: ipnet}); err != nil {
		return nil, fmt.Errorf("add %s to %s: %w", ipnet, name, err)
	}
	if routers := ack.Router(); len(routers) > 0 {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: routers[0]}
		if err := netlink.RouteReplace(route); err != nil {
			return nil, fmt.Errorf("default route via %s: %w", routers[0], err)
		}
	}
	if dns := ack.DNS(); len(dns) > 0 {
		var b strings.Builder
		for _, d := range dns {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		_ = os.MkdirAll("/etc", 0o755)
		_ = os.WriteFile("/etc/resolv.conf", []byte(b.String()), 0o644)
	}
	out := &lease{Link: name, MAC: link.Attrs().HardwareAddr.String(), IP: ack.YourIPAddr.String(), Hostname: ack.HostName()}
	log.Info("DHCP lease", "link", name, "mac", out.MAC, "ip", ipnet, "server", ack.ServerIdentifier(), "hostname", out.Hostname)
	return out, nil
}

// waitForLink returns the first non-loopback device link (lowest index),
// waiting for the NIC driver to register it.
func waitForLink(wait time.Duration) (netlink.Link, error) {
	deadline := time.Now().Add(wait)
	for {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list links: %w", err)
		}
		for _, l := range links {
			if l.Type() == "device" && len(l.Attrs().HardwareAddr) == 6 && l.Attrs().Flags&net.FlagLoopback == 0 {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, errors.New("no network interface appeared")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitCarrier(name string, wait time.Duration) {
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if readTrim("/sys/class/net/"+name+"/carrier") == "1" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
