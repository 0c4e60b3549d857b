//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dotfile/rackboot/lab/standin/report"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// lease is the address the stand-in got on one link.
type lease struct {
	Link     string
	MAC      string
	IP       string
	Hostname string
}

// link is one physical link and its DHCP client, which runs in the
// background until it has a lease (or its context ends).
type link struct {
	name  string
	mac   string
	index int
	done  chan struct{} // closed when lease or err is set
	lease *lease
	err   error
}

// wait returns the link's lease once DHCP is done.
func (l *link) wait(ctx context.Context) (*lease, error) {
	select {
	case <-l.done:
		return l.lease, l.err
	case <-ctx.Done():
		return nil, fmt.Errorf("DHCP on %s (%s): %w", l.name, l.mac, ctx.Err())
	}
}

// network is every physical link of the machine. Like Talos (its network
// operator config: a DHCP4 operator on every physical link, no client
// identifier), the stand-in runs DHCP on each of them; the first (lowest
// interface index) is the primary: its lease gives ${mac}, the hostname,
// DNS, and the routes that win.
type network struct {
	links []*link
}

func (n *network) primary() *link { return n.links[0] }

// byMAC is the link with that hardware address, or nil.
func (n *network) byMAC(mac net.HardwareAddr) *link {
	for _, l := range n.links {
		if strings.EqualFold(l.mac, mac.String()) {
			return l
		}
	}
	return nil
}

// report is every link with its address, for the report line.
func (n *network) report() []report.Link {
	out := make([]report.Link, len(n.links))
	for i, l := range n.links {
		out[i] = report.Link{Name: l.name, MAC: l.mac}
		select {
		case <-l.done:
			if l.lease != nil {
				out[i].IP = l.lease.IP
			}
		default:
		}
	}
	return out
}

func (n *network) macs() []string {
	out := make([]string, len(n.links))
	for i, l := range n.links {
		out[i] = l.name + "=" + l.mac
	}
	return out
}

// bringUpNetwork waits for the Ethernet links, sets each up and starts DHCP
// on each (the real insomniacslk client). Leases arrive through link.wait;
// DHCP goes on in the background until ctx ends.
func bringUpNetwork(ctx context.Context, log *slog.Logger, wait time.Duration) (*network, error) {
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo)
	}
	found, err := waitForLinks(wait)
	if err != nil {
		return nil, err
	}
	n := &network{}
	for i, nl := range found {
		n.links = append(n.links, &link{name: nl.Attrs().Name, mac: nl.Attrs().HardwareAddr.String(), index: i, done: make(chan struct{})})
	}
	log.Info("links", "found", n.macs())
	if len(found) > 1 {
		// Several links on one segment: each answers ARP only for its own
		// addresses, and asks with them, so a reply to an address comes
		// back on the link that has it.
		for _, kv := range [][2]string{{"arp_ignore", "1"}, {"arp_announce", "2"}} {
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/all/"+kv[0], []byte(kv[1]+"\n"), 0o644); err != nil {
				log.Warn("sysctl", "key", kv[0], "err", err)
			}
		}
	}
	for i, l := range n.links {
		go func(l *link, nl netlink.Link) {
			l.lease, l.err = runDHCP(ctx, log, nl, l.index)
			close(l.done)
		}(l, found[i])
	}
	return n, nil
}

// dhcpModifiers are the options the stand-in's DHCP client adds to the
// library's DISCOVER and REQUEST. No client identifier (option 61), as
// Talos sends none: servers must key on the MAC (chaddr).
func dhcpModifiers() []dhcpv4.Modifier {
	return []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("rackboot-standin"))}
}

// runDHCP sets one link up, gets a lease (retrying until ctx ends) and
// configures the address and routes with netlink. The primary link (index
// 0) gets the kernel's prefix route and a default route; the others get
// their prefix (and default) route with a higher metric, so the primary's
// routes win and only a socket bound to another link uses it.
func runDHCP(ctx context.Context, log *slog.Logger, nl netlink.Link, index int) (*lease, error) {
	name := nl.Attrs().Name
	if err := netlink.LinkSetUp(nl); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	waitCarrier(name, deviceWait)

	client, err := nclient4.New(name, nclient4.WithTimeout(3*time.Second), nclient4.WithRetry(3))
	if err != nil {
		return nil, fmt.Errorf("DHCP client on %s: %w", name, err)
	}
	defer client.Close()
	var l *nclient4.Lease
	for attempt := 1; ; attempt++ {
		l, err = client.Request(ctx, dhcpModifiers()...)
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
	metric := 0
	addr := &netlink.Addr{IPNet: ipnet}
	if index > 0 {
		metric = 1024 + index
		addr.Flags = unix.IFA_F_NOPREFIXROUTE
	}
	if err := netlink.AddrReplace(nl, addr); err != nil {
		return nil, fmt.Errorf("add %s to %s: %w", ipnet, name, err)
	}
	if index > 0 {
		prefix := &net.IPNet{IP: ipnet.IP.Mask(mask), Mask: mask}
		route := &netlink.Route{LinkIndex: nl.Attrs().Index, Dst: prefix, Src: ack.YourIPAddr, Scope: netlink.SCOPE_LINK, Priority: metric}
		if err := netlink.RouteReplace(route); err != nil {
			return nil, fmt.Errorf("route %s on %s: %w", prefix, name, err)
		}
	}
	if routers := ack.Router(); len(routers) > 0 {
		route := &netlink.Route{LinkIndex: nl.Attrs().Index, Gw: routers[0], Priority: metric}
		if err := netlink.RouteReplace(route); err != nil {
			return nil, fmt.Errorf("default route via %s on %s: %w", routers[0], name, err)
		}
	}
	if dns := ack.DNS(); len(dns) > 0 && index == 0 {
		var b strings.Builder
		for _, d := range dns {
			fmt.Fprintf(&b, "nameserver %s\n", d)
		}
		_ = os.MkdirAll("/etc", 0o755)
		_ = os.WriteFile("/etc/resolv.conf", []byte(b.String()), 0o644)
	}
	out := &lease{Link: name, MAC: nl.Attrs().HardwareAddr.String(), IP: ack.YourIPAddr.String(), Hostname: ack.HostName()}
	log.Info("DHCP lease", "link", name, "mac", out.MAC, "ip", ipnet, "server", ack.ServerIdentifier(), "hostname", out.Hostname)
	return out, nil
}

// isPhysical reports whether a link is an Ethernet device (not loopback,
// bridge, tunnel...).
func isPhysical(l netlink.Link) bool {
	return l.Type() == "device" && len(l.Attrs().HardwareAddr) == 6 && l.Attrs().Flags&net.FlagLoopback == 0
}

// waitForLinks returns the Ethernet links in interface index order, once
// at least one has appeared and none has been added for half a second
// (NIC drivers register their devices while the modules load).
func waitForLinks(wait time.Duration) ([]netlink.Link, error) {
	deadline := time.Now().Add(wait)
	var last []netlink.Link
	stableSince := time.Now()
	for {
		all, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list links: %w", err)
		}
		var cur []netlink.Link
		for _, l := range all {
			if isPhysical(l) {
				cur = append(cur, l)
			}
		}
		slices.SortFunc(cur, func(a, b netlink.Link) int { return a.Attrs().Index - b.Attrs().Index })
		if len(cur) != len(last) {
			last = cur
			stableSince = time.Now()
		}
		if len(last) > 0 && (time.Since(stableSince) >= 500*time.Millisecond || time.Now().After(deadline)) {
			return last, nil
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

// boundDialer dials from the link's DHCP address and out of that link
// (SO_BINDTODEVICE): the lab's way to make a request leave through a chosen
// NIC of a multi-NIC machine.
func boundDialer(l *link, ip net.IP) *net.Dialer {
	return &net.Dialer{
		LocalAddr: &net.TCPAddr{IP: ip},
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.BindToDevice(int(fd), l.name)
			}); err != nil {
				return err
			}
			if serr != nil {
				return fmt.Errorf("bind to %s: %w", l.name, serr)
			}
			return nil
		},
	}
}
