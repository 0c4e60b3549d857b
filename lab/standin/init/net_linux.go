//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/dotfile/rackboot/lab/standin/netcfg"
	"github.com/dotfile/rackboot/lab/standin/report"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/mdlayher/packet"
	"github.com/siderolabs/talos/pkg/machinery/config"
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

// configureNetwork applies the machine config's network documents, as an
// installed Talos does at boot: link aliases by selector, static addresses
// and routes from LinkConfig, DHCP where the config asks for it (on every
// link when it has no link config at all), and on a control plane the
// Layer2VIPConfig address with a gratuitous ARP. Talos's own warnings (an
// alias selector matching several links...) go to the log and the report.
func (m *machine) configureNetwork(ctx context.Context, cfg config.Provider) error {
	found, err := waitForLinks(deviceWait)
	if err != nil {
		return err
	}
	byName := map[string]netlink.Link{}
	var links []netcfg.Link
	for _, nl := range found {
		a := nl.Attrs()
		byName[a.Name] = nl
		if err := netlink.LinkSetUp(nl); err != nil {
			return fmt.Errorf("set %s up: %w", a.Name, err)
		}
		driver := ""
		if t, err := os.Readlink("/sys/class/net/" + a.Name + "/device/driver"); err == nil {
			driver = filepath.Base(t)
		}
		links = append(links, netcfg.Link{
			Name: a.Name, Index: a.Index, MAC: a.HardwareAddr, PermMAC: a.PermHWAddr,
			Driver: driver, MTU: a.MTU, Up: true, Broadcast: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
		})
	}
	cp := cfg.Machine() != nil && cfg.Machine().Type().IsControlPlane()
	plan, err := netcfg.Configure(cfg, links, cp)
	if err != nil {
		return fmt.Errorf("network config: %w", err)
	}
	for link, alias := range plan.Aliases {
		m.rep.Aliases = append(m.rep.Aliases, link+"="+alias)
	}
	slices.Sort(m.rep.Aliases)
	for _, w := range plan.Warnings {
		m.log.Warn(w)
	}
	m.rep.NetWarnings = append(m.rep.NetWarnings, plan.Warnings...)
	for _, name := range plan.Missing {
		msg := fmt.Sprintf("link %q is configured but no link has that name or alias: nothing applied there", name)
		m.log.Warn(msg)
		m.rep.NetWarnings = append(m.rep.NetWarnings, msg)
	}
	m.log.Info("network config", "aliases", m.rep.Aliases, "addresses", plan.Addresses, "routes", plan.Routes, "vips", plan.VIPs, "default_dhcp", plan.DefaultDHCP, "dhcp", plan.DHCP)

	for _, a := range plan.Addresses {
		ipnet := &net.IPNet{IP: a.Prefix.Addr().AsSlice(), Mask: net.CIDRMask(a.Prefix.Bits(), a.Prefix.Addr().BitLen())}
		if err := netlink.AddrReplace(byName[a.Link], &netlink.Addr{IPNet: ipnet}); err != nil {
			return fmt.Errorf("add %s to %s: %w", a.Prefix, a.Link, err)
		}
		m.rep.Addresses = append(m.rep.Addresses, a.Prefix.String()+"@"+a.Link)
		if m.rep.IP == "" {
			m.rep.IP = a.Prefix.Addr().String()
		}
	}
	for _, r := range plan.Routes {
		rt := &netlink.Route{LinkIndex: byName[r.Link].Attrs().Index, Priority: int(r.Metric)}
		if r.Dst.IsValid() {
			rt.Dst = &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), r.Dst.Addr().BitLen())}
		}
		if r.Gateway.IsValid() {
			rt.Gw = r.Gateway.AsSlice()
		}
		if err := netlink.RouteReplace(rt); err != nil {
			m.log.Warn("route", "route", r, "err", err)
		}
	}
	var dhcp []netlink.Link
	if plan.DefaultDHCP {
		dhcp = found
	} else {
		for _, name := range plan.DHCP {
			dhcp = append(dhcp, byName[name])
		}
	}
	for i, nl := range dhcp {
		go func() {
			l, err := runDHCP(ctx, m.log, nl, i)
			if err != nil {
				m.log.Warn("DHCP", "link", nl.Attrs().Name, "err", err)
				return
			}
			m.log.Info("DHCP lease (running)", "link", l.Link, "ip", l.IP)
		}()
	}
	for _, v := range plan.VIPs {
		nl := byName[v.Link]
		addr := &netlink.Addr{IPNet: &net.IPNet{IP: v.IP.AsSlice(), Mask: net.CIDRMask(v.IP.BitLen(), v.IP.BitLen())}}
		if err := netlink.AddrReplace(nl, addr); err != nil {
			return fmt.Errorf("add VIP %s to %s: %w", v.IP, v.Link, err)
		}
		m.rep.VIPs = append(m.rep.VIPs, v.IP.String()+"@"+v.Link)
		if err := gratuitousARP(nl, v.IP); err != nil {
			m.log.Warn("failure sending gratuitous ARP", "address", v.IP, "link", v.Link, "err", err)
		} else {
			m.log.Info("sent gratuitous ARP", "address", v.IP, "link", v.Link)
		}
	}
	return nil
}

// gratuitousARP broadcasts an ARP request for ip from ip, as Talos's
// AddressSpecController does for a VIP (address_spec.go gratuitousARP:
// sender and target are the link's MAC and ip).
func gratuitousARP(nl netlink.Link, ip netip.Addr) error {
	if !ip.Is4() {
		return nil
	}
	iface, err := net.InterfaceByIndex(nl.Attrs().Index)
	if err != nil {
		return err
	}
	conn, err := packet.Listen(iface, packet.Raw, unix.ETH_P_ARP, nil)
	if err != nil {
		return fmt.Errorf("error creating arp client: %w", err)
	}
	defer conn.Close()
	return writeGratuitousARP(conn, iface.HardwareAddr, ip)
}

// arpFrame is an Ethernet broadcast ARP request: sender and target are mac
// and ip (a gratuitous ARP).
func arpFrame(mac net.HardwareAddr, ip netip.Addr) []byte {
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	ip4 := ip.As4()
	f := make([]byte, 0, 42)
	f = append(f, bcast...)
	f = append(f, mac...)
	f = append(f, 0x08, 0x06)       // ARP
	f = append(f, 0x00, 0x01)       // Ethernet
	f = append(f, 0x08, 0x00, 6, 4) // IPv4, lengths
	f = append(f, 0x00, 0x01)       // request
	f = append(f, mac...)
	f = append(f, ip4[:]...)
	f = append(f, mac...)
	f = append(f, ip4[:]...)
	return f
}

func writeGratuitousARP(conn *packet.Conn, mac net.HardwareAddr, ip netip.Addr) error {
	_, err := conn.WriteTo(arpFrame(mac, ip), &packet.Addr{HardwareAddr: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}})
	if err != nil {
		return fmt.Errorf("error sending gratuitous ARP: %w", err)
	}
	return nil
}
