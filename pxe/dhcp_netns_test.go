package pxe

// DHCP against real clients and a real home router, on veths and a bridge
// in network namespaces the tests create (internal/netns): nothing leaves
// them, and none has a default route.

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"

	"github.com/dotfile/rackboot/internal/netns"
)

// requireTool fails the test, naming the Debian package, when a tool is
// missing.
func requireTool(t *testing.T, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Fatalf("%s not found: apt-get install %s (%v)", tool, pkg, err)
	}
}

func noDefaultRoutes(t *testing.T, nss ...*netns.NS) {
	t.Helper()
	for _, ns := range nss {
		r, err := ns.DefaultRoute()
		if err != nil {
			t.Fatal(err)
		}
		if r != "" {
			t.Fatalf("namespace %s has a default route: %s", ns.Name(), r)
		}
	}
}

// listenIn opens a DHCP socket on port, bound to dev, inside ns.
func listenIn(t *testing.T, ns *netns.NS, dev string, port int) net.PacketConn {
	t.Helper()
	var conn net.PacketConn
	if err := ns.Run(func() (err error) {
		conn, err = ListenDHCP(dev, port)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return conn
}

func macOf(t *testing.T, ns *netns.NS, dev string) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	if err := ns.Run(func() error {
		ifi, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		mac = ifi.HardwareAddr
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}

// readEnv parses a file of NAME=value lines.
func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			env[k] = v
		}
	}
	return env
}

// TestUdhcpcFullMode: busybox's udhcpc, a real DHCP client, gets a lease
// from rackboot in full mode across a veth, with the PXE boot file for the
// arch it announces (option 93 = 7, x64 UEFI).
func TestUdhcpcFullMode(t *testing.T) {
	requireTool(t, "udhcpc", "udhcpc (or busybox-static)")
	srv := netns.New(t, "dhcpsrv")
	cli := netns.New(t, "dhcpcli")
	srv.AddVeth("lan0", cli, "eth0")
	srv.AddAddr("lan0", netip.MustParsePrefix("10.99.0.1/24"))
	noDefaultRoutes(t, srv, cli)

	dir := t.TempDir()
	cfg := fullConfig()
	cfg.Interface = "lan0"
	cfg.LeasesFile = filepath.Join(dir, "dhcp-leases.json")
	var rec events
	s, err := NewDHCP(cfg, WithDHCPConn(listenIn(t, srv, "lan0", DHCPPort)), WithDHCPLogger(testLogger(t)), WithDHCPRecorder(&rec))
	if err != nil {
		t.Fatal(err)
	}
	startDHCP(t, s)

	// udhcpc runs this script on each event; it only records what it got,
	// it does not configure anything.
	script := filepath.Join(dir, "script.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nenv > \""+dir+"/$1.env\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := cli.Exec(ctx, "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", script,
		"-V", "PXEClient:Arch:00007:UNDI:003016", "-x", "0x5d:0007")
	if err != nil {
		t.Fatalf("udhcpc: %v\n%s", err, out)
	}
	env := readEnv(t, filepath.Join(dir, "bound.env"))
	if env["ip"] != "10.99.0.100" || env["subnet"] != "255.255.255.0" || env["serverid"] != "10.99.0.1" || env["lease"] != "3600" {
		t.Errorf("udhcpc got ip=%q subnet=%q serverid=%q lease=%q", env["ip"], env["subnet"], env["serverid"], env["lease"])
	}
	if env["boot_file"] != "ipxe.efi" || env["siaddr"] != "10.99.0.1" {
		t.Errorf("udhcpc got boot_file=%q siaddr=%q", env["boot_file"], env["siaddr"])
	}
	if _, ok := env["router"]; ok {
		t.Errorf("a router was handed out: %q", env["router"])
	}
	mac := macOf(t, cli, "eth0")
	leases := s.Leases()
	if len(leases) != 1 || leases[0].MAC != mac.String() || leases[0].Addr != netip.MustParseAddr("10.99.0.100") {
		t.Errorf("server leases %+v, client %s", leases, mac)
	}
	if ev := rec.stages(StageDHCP); len(ev) == 0 || !strings.Contains(ev[0].Detail, "ipxe.efi") {
		t.Errorf("dhcp events %+v", ev)
	}
	if data, err := os.ReadFile(cfg.LeasesFile); err != nil || !strings.Contains(string(data), mac.String()) {
		t.Errorf("lease not persisted: %v %s", err, data)
	}
}

// TestProxyBesideDnsmasq: dnsmasq is the home router (addresses), rackboot
// in proxy mode sits on the same bridge; a PXE client (the real nclient4 on
// a raw socket, with option 93/60) gets its address from dnsmasq and its
// boot file from rackboot, then asks rackboot's boot server on 4011.
func TestProxyBesideDnsmasq(t *testing.T) {
	requireTool(t, "dnsmasq", "dnsmasq-base")
	lan := netns.New(t, "lan")
	router := netns.New(t, "router")
	client := netns.New(t, "pxeclient")
	lan.AddBridge("br0", netip.MustParsePrefix("10.99.0.2/24"))
	lan.AddVeth("prouter", router, "eth0")
	lan.SetMaster("prouter", "br0")
	lan.AddVeth("pclient", client, "eth0")
	lan.SetMaster("pclient", "br0")
	router.AddAddr("eth0", netip.MustParsePrefix("10.99.0.1/24"))
	noDefaultRoutes(t, lan, router, client)

	dir := t.TempDir()
	dnsmasq := router.Start("dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
		"--interface=eth0", "--bind-interfaces", "--dhcp-range=10.99.0.100,10.99.0.150,255.255.255.0,1h",
		"--dhcp-leasefile="+filepath.Join(dir, "dnsmasq.leases"), "--pid-file="+filepath.Join(dir, "dnsmasq.pid"),
		"--user=root", "--group=root", "--no-ping", "--log-dhcp", "--log-facility=-")

	var rec events
	s, err := NewDHCP(DHCPConfig{Interface: "br0", ServerIP: netip.MustParseAddr("10.99.0.2"), HTTPPort: 8080},
		WithDHCPConn(listenIn(t, lan, "br0", DHCPPort)), WithBootServerConn(listenIn(t, lan, "br0", BootServerPort)),
		WithDHCPLogger(testLogger(t)), WithDHCPRecorder(&rec))
	if err != nil {
		t.Fatal(err)
	}
	startDHCP(t, s)

	mac := macOf(t, client, "eth0")
	var c *nclient4.Client
	if err := client.Run(func() (err error) {
		// Retries cover dnsmasq still starting up.
		c, err = nclient4.New("eth0", nclient4.WithTimeout(time.Second), nclient4.WithRetry(5))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	pxe := []dhcpv4.Modifier{vcBIOS, arch93(0)}
	disc, err := dhcpv4.NewDiscovery(mac, pxe...)
	if err != nil {
		t.Fatal(err)
	}
	offers := map[string]*dhcpv4.DHCPv4{}
	_, err = c.SendAndRead(ctx, c.RemoteAddr(), disc, func(p *dhcpv4.DHCPv4) bool {
		if p.MessageType() == dhcpv4.MessageTypeOffer {
			offers[p.ServerIdentifier().String()] = p
		}
		return len(offers) == 2
	})
	if err != nil {
		t.Fatalf("waiting for both offers (got %d): %v\ndnsmasq:\n%s", len(offers), err, dnsmasq.Output())
	}
	home, ours := offers["10.99.0.1"], offers["10.99.0.2"]
	if home == nil || ours == nil {
		t.Fatalf("offers from %v", offers)
	}
	addr, _ := netip.AddrFromSlice(home.YourIPAddr.To4())
	if !netip.MustParsePrefix("10.99.0.0/24").Contains(addr) || home.BootFileName != "" {
		t.Fatalf("router offer %s", home.Summary())
	}
	if !ours.YourIPAddr.Equal(net.IPv4zero) || ours.BootFileName != "undionly.kpxe" || ours.ClassIdentifier() != "PXEClient" ||
		!ours.ServerIPAddr.Equal(net.IPv4(10, 99, 0, 2)) {
		t.Fatalf("proxy offer %s", ours.Summary())
	}

	// The client takes the router's address (rackboot stays out of it).
	lease, err := c.RequestFromOffer(ctx, home, pxe...)
	if err != nil {
		t.Fatalf("request to dnsmasq: %v\n%s", err, dnsmasq.Output())
	}
	if !lease.ACK.YourIPAddr.Equal(home.YourIPAddr) {
		t.Fatalf("dnsmasq ack %s", lease.ACK.Summary())
	}

	// Then, as PXE firmware does, it asks the boot server on 4011 from its
	// new address.
	client.AddAddr("eth0", netip.PrefixFrom(addr, 24))
	var conn net.PacketConn
	if err := client.Run(func() (err error) {
		conn, err = net.ListenPacket("udp4", net.JoinHostPort(addr.String(), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	boot := &net.UDPAddr{IP: net.IPv4(10, 99, 0, 2), Port: BootServerPort}
	bc, err := nclient4.NewWithConn(conn, mac, nclient4.WithServerAddr(boot), nclient4.WithTimeout(time.Second), nclient4.WithRetry(3))
	if err != nil {
		t.Fatal(err)
	}
	defer bc.Close()
	req, err := dhcpv4.NewDiscovery(mac, append(pxe, dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithClientIP(addr.AsSlice()), dhcpv4.WithBroadcast(false))...)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := bc.SendAndRead(ctx, boot, req, nclient4.IsMessageType(dhcpv4.MessageTypeAck))
	if err != nil {
		t.Fatalf("boot server on 4011: %v", err)
	}
	if ack.BootFileName != "undionly.kpxe" || !ack.YourIPAddr.Equal(net.IPv4zero) {
		t.Fatalf("4011 ack %s", ack.Summary())
	}
	if data, err := os.ReadFile(filepath.Join(dir, "dnsmasq.leases")); err != nil || !strings.Contains(string(data), mac.String()) {
		t.Errorf("dnsmasq has no lease for %s: %v %s", mac, err, data)
	}
	if got := rec.stages(StageProxyIgnored); len(got) != 0 {
		t.Errorf("flagged as ignoring proxy offers: %+v", got)
	}
	if got := rec.stages(StageDHCP); len(got) < 2 {
		t.Errorf("dhcp events %+v", got)
	}
}
