package pxe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
)

// DHCPMode says how rackboot takes part in DHCP.
type DHCPMode string

// DHCP modes.
const (
	// DHCPProxy answers only PXE clients with boot information and never
	// an address: the network's own DHCP server (the home router) gives
	// addresses. Listens on ports 67 and 4011.
	DHCPProxy DHCPMode = "proxy"
	// DHCPFull is a real DHCP server for an isolated network: addresses
	// from a range, static reservations, and PXE options for PXE clients.
	DHCPFull DHCPMode = "full"
	// DHCPOff runs no DHCP at all (the router is configured by hand).
	DHCPOff DHCPMode = "off"
)

// Ports: DHCP server, and the PXE boot server that proxy clients ask.
const (
	DHCPPort       = 67
	BootServerPort = 4011
)

// DHCPConfig configures the DHCP server.
type DHCPConfig struct {
	// Mode is proxy (default when empty), full or off.
	Mode DHCPMode
	// Interface is the network interface to serve on; sockets are bound to
	// it (SO_BINDTODEVICE). Required unless the sockets are passed in with
	// WithDHCPConn / WithBootServerConn.
	Interface string
	// ServerIP is rackboot's IPv4 address on that network: the server
	// identifier, the TFTP next-server and the host of HTTP boot URLs.
	ServerIP netip.Addr
	// HTTPPort is the port of rackboot's HTTP server (iPXE scripts).
	HTTPPort int
	// IPXEBuild says which iPXE build a client's x64 UEFI firmware gets
	// (the rack file's choice for the machine, found by the MAC and the
	// option 97 UUID the request carries); nil gives IPXEFull to all. It
	// is called with the server's lock held and must not call back into it.
	IPXEBuild func(c Client) IPXEBuild

	// Full mode only.

	// RangeStart and RangeEnd bound the dynamic pool, inclusive.
	RangeStart, RangeEnd netip.Addr
	// Subnet is the network (10.99.0.0/24); ServerIP and the range are in it.
	Subnet netip.Prefix
	// Router (option 3) and DNS (option 6) are optional; no router means
	// clients get no default route.
	Router netip.Addr
	DNS    []netip.Addr
	// LeaseTime defaults to 1 hour.
	LeaseTime time.Duration
	// LeasesFile is where leases are kept (JSON, atomic writes); "" keeps
	// them in memory only. cmd uses <state dir>/dhcp-leases.json.
	LeasesFile string
	// LeaseStore, when set, keeps the leases instead of LeasesFile (shared
	// by several servers, one answering at a time: OpenLeaseStore).
	LeaseStore LeaseStore
	// Reservations returns a machine's static address (from the rack
	// file); that MAC always gets it, in or out of the range.
	Reservations func(mac net.HardwareAddr) (netip.Addr, bool)
	// Reserved reports whether addr is some machine's static address, so
	// it is never handed to another MAC. Needed when static addresses lie
	// inside the range; nil means none do.
	Reserved func(addr netip.Addr) bool
	// DeclineHold is how long an address a client DECLINEd (found in use)
	// is not offered again. Default 10 minutes.
	DeclineHold time.Duration

	// Proxy mode only.

	// IgnoredAfter is how many DISCOVERs from one MAC, answered with a
	// proxy offer and never followed up, mean its firmware ignores proxy
	// offers (recorded as StageProxyIgnored). Default 4.
	IgnoredAfter int
	// IgnoredWindow is the time those DISCOVERs must fall in. Default 2m.
	IgnoredWindow time.Duration
}

// offerHold is how long an offered address is kept for the client.
const offerHold = 30 * time.Second

// ParseDHCPRange parses "A-B" (10.99.0.100-10.99.0.199) as --range gives it.
func ParseDHCPRange(s string) (start, end netip.Addr, err error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return start, end, fmt.Errorf("DHCP range %q: want FIRST-LAST, e.g. 10.99.0.100-10.99.0.199", s)
	}
	if start, err = netip.ParseAddr(strings.TrimSpace(a)); err != nil {
		return start, end, fmt.Errorf("DHCP range %q: %w", s, err)
	}
	if end, err = netip.ParseAddr(strings.TrimSpace(b)); err != nil {
		return start, end, fmt.Errorf("DHCP range %q: %w", s, err)
	}
	if !start.Is4() || !end.Is4() || end.Less(start) {
		return start, end, fmt.Errorf("DHCP range %q: want two IPv4 addresses, the first not above the last", s)
	}
	return start, end, nil
}

// withDefaults returns cfg with defaults filled in, or all its problems.
func (cfg DHCPConfig) withDefaults() (DHCPConfig, error) {
	if cfg.Mode == "" {
		cfg.Mode = DHCPProxy
	}
	if cfg.LeaseTime == 0 {
		cfg.LeaseTime = time.Hour
	}
	if cfg.DeclineHold == 0 {
		cfg.DeclineHold = 10 * time.Minute
	}
	if cfg.IgnoredAfter == 0 {
		cfg.IgnoredAfter = 4
	}
	if cfg.IgnoredWindow == 0 {
		cfg.IgnoredWindow = 2 * time.Minute
	}
	var errs []error
	switch cfg.Mode {
	case DHCPOff:
		return cfg, nil
	case DHCPProxy, DHCPFull:
	default:
		return cfg, fmt.Errorf("DHCP mode %q: want proxy, full or off", cfg.Mode)
	}
	if !cfg.ServerIP.Is4() {
		errs = append(errs, fmt.Errorf("server IP %v: want this machine's IPv4 address on the boot network", cfg.ServerIP))
	}
	if cfg.HTTPPort <= 0 || cfg.HTTPPort > 65535 {
		errs = append(errs, fmt.Errorf("HTTP port %d out of range", cfg.HTTPPort))
	}
	if cfg.IgnoredAfter < 2 {
		errs = append(errs, fmt.Errorf("IgnoredAfter %d: want at least 2", cfg.IgnoredAfter))
	}
	if cfg.Mode == DHCPFull {
		p := cfg.Subnet
		switch {
		case !p.IsValid() || !p.Addr().Is4() || p.Bits() > 30:
			errs = append(errs, fmt.Errorf("subnet %v: want an IPv4 network of /30 or larger", p))
		default:
			p = p.Masked()
			cfg.Subnet = p
			if cfg.ServerIP.Is4() && !p.Contains(cfg.ServerIP) {
				errs = append(errs, fmt.Errorf("server IP %v is outside subnet %v", cfg.ServerIP, p))
			}
			if !cfg.RangeStart.Is4() || !cfg.RangeEnd.Is4() || cfg.RangeEnd.Less(cfg.RangeStart) {
				errs = append(errs, fmt.Errorf("range %v-%v: want two IPv4 addresses, the first not above the last", cfg.RangeStart, cfg.RangeEnd))
			} else if !p.Contains(cfg.RangeStart) || !p.Contains(cfg.RangeEnd) {
				errs = append(errs, fmt.Errorf("range %v-%v is not inside subnet %v", cfg.RangeStart, cfg.RangeEnd, p))
			} else if cfg.RangeStart == p.Addr() || cfg.RangeEnd == lastAddr(p) {
				errs = append(errs, fmt.Errorf("range %v-%v includes the network or broadcast address of %v", cfg.RangeStart, cfg.RangeEnd, p))
			}
			if cfg.Router.IsValid() && !p.Contains(cfg.Router) {
				errs = append(errs, fmt.Errorf("router %v is outside subnet %v", cfg.Router, p))
			}
		}
		for _, d := range cfg.DNS {
			if !d.Is4() {
				errs = append(errs, fmt.Errorf("DNS server %v is not IPv4", d))
			}
		}
		if cfg.LeaseTime < time.Minute {
			errs = append(errs, fmt.Errorf("lease time %v: want at least a minute", cfg.LeaseTime))
		}
	}
	return cfg, errors.Join(errs...)
}

// lastAddr is the broadcast address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// DHCPOption adjusts a DHCPServer.
type DHCPOption func(*DHCPServer)

// WithDHCPConn serves DHCP (port 67) on conn instead of opening a socket;
// tests pass a 127.0.0.1:0 socket. The server closes it on shutdown.
func WithDHCPConn(conn net.PacketConn) DHCPOption {
	return func(s *DHCPServer) { s.conn = conn }
}

// WithBootServerConn serves the proxy-mode PXE boot server (port 4011) on
// conn. The server closes it on shutdown.
func WithBootServerConn(conn net.PacketConn) DHCPOption {
	return func(s *DHCPServer) { s.bootConn = conn }
}

// WithDHCPLogger sets the logger (default: discard).
func WithDHCPLogger(l *slog.Logger) DHCPOption {
	return func(s *DHCPServer) { s.log = l }
}

// WithDHCPClock sets the clock used for leases and proxy-ignored detection.
func WithDHCPClock(now func() time.Time) DHCPOption {
	return func(s *DHCPServer) { s.now = now }
}

// WithDHCPRecorder sets where boot offers and proxy-ignored clients are
// recorded.
func WithDHCPRecorder(r Recorder) DHCPOption {
	return func(s *DHCPServer) { s.rec = r }
}

// WithDHCPActive makes the server answer only while active returns true;
// it is asked for every packet, before anything is decided or recorded. A
// packet that arrives while it is false is dropped unanswered and counted
// (Inactive). Replicas of rackboot pass their leader election here, so only
// the leader answers DHCP; nil (the default) answers always.
func WithDHCPActive(active func() bool) DHCPOption {
	return func(s *DHCPServer) { s.active = active }
}

// DHCPServer is rackboot's proxy or full DHCP server.
type DHCPServer struct {
	cfg      DHCPConfig
	conn     net.PacketConn
	bootConn net.PacketConn
	log      *slog.Logger
	now      func() time.Time
	rec      Recorder
	active   func() bool
	inactive atomic.Uint64 // packets dropped while active() was false

	mu      sync.Mutex // guards leases, ignored and seen
	leases  *Leases    // full mode
	ignored *ignoreTracker
	seen    map[netip.Addr]seenAddr // proxy mode: addresses PXE clients took from the router
}

// seenAddr is a PXE client's address as seen in its broadcast REQUEST to
// the network's DHCP server.
type seenAddr struct {
	mac net.HardwareAddr
	at  time.Time
}

// NewDHCP checks cfg, loads the leases (full mode) and opens the sockets
// (unless given). Opening port 67 fails with a clear error when another
// DHCP server holds it or rackboot lacks the privilege.
func NewDHCP(cfg DHCPConfig, opts ...DHCPOption) (*DHCPServer, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("DHCP config: %w", err)
	}
	s := &DHCPServer{cfg: cfg}
	for _, o := range opts {
		o(s)
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.rec == nil {
		s.rec = RecorderFunc(func(Event) {})
	}
	s.ignored = newIgnoreTracker(cfg.IgnoredAfter, cfg.IgnoredWindow)
	s.seen = map[netip.Addr]seenAddr{}
	if cfg.Mode == DHCPOff {
		s.closeConns()
		return s, nil
	}
	if cfg.Mode == DHCPFull {
		if cfg.LeaseStore != nil {
			s.leases, err = OpenLeaseStore(cfg.LeaseStore, s.now)
		} else {
			s.leases, err = OpenLeases(cfg.LeasesFile, s.now)
		}
		if err != nil {
			s.closeConns()
			return nil, err
		}
	}
	if s.conn == nil {
		if s.conn, err = ListenDHCP(cfg.Interface, DHCPPort); err != nil {
			s.closeConns()
			return nil, err
		}
	}
	if cfg.Mode == DHCPProxy && s.bootConn == nil {
		if s.bootConn, err = ListenDHCP(cfg.Interface, BootServerPort); err != nil {
			s.closeConns()
			return nil, err
		}
	}
	return s, nil
}

func (s *DHCPServer) closeConns() {
	for _, c := range []net.PacketConn{s.conn, s.bootConn} {
		if c != nil {
			c.Close()
		}
	}
}

// ListenDHCP opens a UDP socket on port for DHCP: broadcast allowed, bound
// to iface (SO_BINDTODEVICE) when not empty. Errors say what to do: port
// in use (another DHCP server), missing privilege, unknown interface.
func ListenDHCP(iface string, port int) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = dhcpSockopts(fd, iface) })
		return errors.Join(err, serr)
	}}
	conn, err := lc.ListenPacket(context.Background(), "udp4", fmt.Sprintf("0.0.0.0:%d", port))
	switch {
	case err == nil:
		return conn, nil
	case errors.Is(err, syscall.EADDRINUSE):
		return nil, fmt.Errorf("listen for DHCP on UDP port %d: port %d in use: another DHCP server (dnsmasq, dhcpd, a running rackboot?) is on this machine; stop it or use --dhcp off: %w", port, port, err)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return nil, fmt.Errorf("listen for DHCP on UDP port %d: needs root or CAP_NET_BIND_SERVICE (and CAP_NET_RAW to bind to %q): %w", port, iface, err)
	case errors.Is(err, syscall.ENODEV):
		return nil, fmt.Errorf("listen for DHCP on UDP port %d: no interface %q: %w", port, iface, err)
	default:
		return nil, fmt.Errorf("listen for DHCP on UDP port %d: %w", port, err)
	}
}

// Followed tells the server that mac came to rackboot after a proxy offer
// (fetched over TFTP or HTTP): its firmware does not ignore proxy offers.
func (s *DHCPServer) Followed(mac net.HardwareAddr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ignored.followed(mac.String())
}

// FollowedAddr is Followed for a client known only by its address (TFTP
// sees no MAC). It returns the client's MAC when the server knows it: in
// full mode from the leases, in proxy mode from the REQUESTs PXE clients
// broadcast to the network's DHCP server (rackboot sees those too).
func (s *DHCPServer) FollowedAddr(addr netip.Addr) (net.HardwareAddr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leases != nil {
		le, ok := s.leases.Lookup(addr)
		if !ok || !s.leases.Active(le) {
			return nil, false
		}
		mac, err := net.ParseMAC(le.MAC)
		return mac, err == nil
	}
	seen, ok := s.seen[addr]
	if !ok {
		return nil, false
	}
	s.ignored.followed(seen.mac.String())
	return seen.mac, true
}

// LeaseOf returns the address of mac's active lease (full mode only; in
// other modes rackboot hands out no address and ok is false).
func (s *DHCPServer) LeaseOf(mac net.HardwareAddr) (netip.Addr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leases == nil {
		return netip.Addr{}, false
	}
	le, ok := s.leases.Get(mac)
	if !ok || !s.leases.Active(le) {
		return netip.Addr{}, false
	}
	return le.Addr, true
}

// LeaseHolder returns the MAC holding an active lease on addr (full mode
// only).
func (s *DHCPServer) LeaseHolder(addr netip.Addr) (net.HardwareAddr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leases == nil {
		return nil, false
	}
	le, ok := s.leases.Lookup(addr)
	if !ok || !s.leases.Active(le) {
		return nil, false
	}
	mac, err := net.ParseMAC(le.MAC)
	return mac, err == nil
}

// Leases returns the full-mode leases on record (nil in other modes).
func (s *DHCPServer) Leases() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leases == nil {
		return nil
	}
	return s.leases.All()
}

// Serve answers DHCP until ctx is cancelled; then it closes its sockets and
// returns nil. In off mode it only waits for ctx.
func (s *DHCPServer) Serve(ctx context.Context) error {
	if s.cfg.Mode == DHCPOff {
		<-ctx.Done()
		return nil
	}
	s.log.Info("DHCP serving", "mode", s.cfg.Mode, "interface", s.cfg.Interface, "addr", s.conn.LocalAddr().String(), "server_ip", s.cfg.ServerIP)
	type conn struct {
		c    net.PacketConn
		boot bool
	}
	conns := []conn{{s.conn, false}}
	if s.bootConn != nil {
		conns = append(conns, conn{s.bootConn, true})
	}
	errc := make(chan error, len(conns))
	for _, c := range conns {
		srv, err := server4.NewServer("", nil, s.packetHandler(c.boot),
			server4.WithConn(c.c), server4.WithLogger(dhcpDebugLogger{s.log}))
		if err != nil {
			s.closeConns()
			return fmt.Errorf("start DHCP server: %w", err)
		}
		go func() { errc <- srv.Serve() }()
	}
	var first error
	select {
	case <-ctx.Done():
	case first = <-errc:
	}
	s.closeConns()
	for range len(conns) - boolInt(first != nil) {
		<-errc
	}
	if first != nil && ctx.Err() == nil {
		return fmt.Errorf("serve DHCP: %w", first)
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Inactive is how many packets were dropped because the server was not
// active (see WithDHCPActive).
func (s *DHCPServer) Inactive() uint64 { return s.inactive.Load() }

// ReloadLeases reads the lease table again from its store or file (full
// mode; nothing in other modes). A replica that becomes the DHCP leader
// calls it before it answers: the previous leader may have bound leases.
func (s *DHCPServer) ReloadLeases() error {
	if s.leases == nil {
		return nil
	}
	if err := s.leases.Reload(); err != nil {
		return fmt.Errorf("reload DHCP leases: %w", err)
	}
	return nil
}

// packetHandler answers one request read by server4 (which parsed it and
// turned an unset source address into broadcast).
func (s *DHCPServer) packetHandler(bootServer bool) server4.Handler {
	return func(conn net.PacketConn, peer net.Addr, req *dhcpv4.DHCPv4) {
		if s.active != nil && !s.active() {
			s.inactive.Add(1)
			s.log.Debug("DHCP packet not answered: another replica leads", "mac", req.ClientHWAddr.String(), "type", req.MessageType().String())
			return
		}
		reply := s.handle(req, bootServer)
		if reply == nil {
			return
		}
		dst := replyDest(req, peer)
		if _, err := conn.WriteTo(reply.ToBytes(), dst); err != nil {
			s.log.Warn("DHCP reply not sent", "mac", req.ClientHWAddr.String(), "to", dst.String(), "err", err)
		}
	}
}

// replyDest is where a reply goes (RFC 2131 4.1): through the relay if
// there is one, else to the client's address when it has one, else
// broadcast (server4 already made an unset source the broadcast address).
func replyDest(req *dhcpv4.DHCPv4, peer net.Addr) net.Addr {
	if gw := req.GatewayIPAddr; gw != nil && !gw.IsUnspecified() {
		return &net.UDPAddr{IP: gw, Port: DHCPPort}
	}
	return peer
}

// handle decides the reply to one request, nil for none. bootServer says
// the request came to port 4011.
//
// A full-mode change to the leases (REQUEST, RELEASE, DECLINE) is made
// under s.mu and put on disk after s.mu is released: the reply waits for
// the write that covers its lease (an ACK is never sent for a lease that
// is not on disk), while other requests go on, and REQUESTs arriving
// during a write share the next one (see Leases).
func (s *DHCPServer) handle(req *dhcpv4.DHCPv4, bootServer bool) *dhcpv4.DHCPv4 {
	if req.OpCode != dhcpv4.OpcodeBootRequest || len(req.ClientHWAddr) != 6 {
		s.log.Debug("DHCP packet dropped: not a request from an Ethernet client", "op", req.OpCode.String(), "hwlen", len(req.ClientHWAddr))
		return nil
	}
	s.mu.Lock()
	if s.cfg.Mode != DHCPFull {
		defer s.mu.Unlock()
		return s.handleProxy(req, bootServer)
	}
	reply, commit := s.handleFull(req)
	s.mu.Unlock()
	if commit != nil && !commit() {
		return nil
	}
	return reply
}

// handleProxy answers PXE clients' DISCOVERs on port 67 and their REQUESTs
// on port 4011; everything else is the network's DHCP server's business.
func (s *DHCPServer) handleProxy(req *dhcpv4.DHCPv4, bootServer bool) *dhcpv4.DHCPv4 {
	mac := req.ClientHWAddr
	mt := req.MessageType()
	if !bootServer && mt == dhcpv4.MessageTypeRequest && (IsPXE(req) || IsIPXE(req)) {
		s.learnAddr(req)
		return nil // the network's DHCP server answers it
	}
	switch {
	case !bootServer && mt == dhcpv4.MessageTypeDiscover:
	case bootServer && (mt == dhcpv4.MessageTypeRequest || mt == dhcpv4.MessageTypeInform):
	default:
		return nil
	}
	b, ok := s.decide(req)
	if !ok {
		return nil
	}
	reply, err := ProxyReply(req, s.cfg.ServerIP, b)
	if err != nil {
		s.log.Error("DHCP proxy reply", "mac", mac.String(), "err", err)
		return nil
	}
	now := s.now()
	addr, _ := netip.AddrFromSlice(req.ClientIPAddr.To4())
	if bootServer {
		s.ignored.followed(mac.String())
		s.record(Event{Time: now, MAC: mac, Addr: addr, Stage: StageDHCP, Detail: "proxy boot server ack: " + b.String()})
		return reply
	}
	if b.IPXE {
		// iPXE asking means the firmware took our offer (it loaded iPXE).
		s.ignored.followed(mac.String())
	} else if s.ignored.discover(mac.String(), now) {
		file, _ := BootFile(b.Arch, false, s.build(req, b.Arch), s.cfg.ServerIP, s.cfg.HTTPPort)
		detail := fmt.Sprintf("firmware ignores proxy DHCP offers (%d DISCOVERs answered, never followed): use --dhcp full on an isolated switch, or set the router's DHCP next-server to %s and boot file to %s",
			s.cfg.IgnoredAfter, s.cfg.ServerIP, file)
		s.log.Warn("PXE client ignores proxy DHCP", "mac", mac.String(), "fix", detail)
		s.record(Event{Time: now, MAC: mac, Stage: StageProxyIgnored, Detail: detail})
	}
	s.record(Event{Time: now, MAC: mac, Addr: addr, Stage: StageDHCP, Detail: "proxy offer: " + b.String()})
	return reply
}

// learnAddr remembers which address a PXE client requests from the
// network's DHCP server, for FollowedAddr.
func (s *DHCPServer) learnAddr(req *dhcpv4.DHCPv4) {
	addr, ok := netip.AddrFromSlice(req.RequestedIPAddress().To4())
	if !ok {
		addr, ok = netip.AddrFromSlice(req.ClientIPAddr.To4())
	}
	if !ok || addr.IsUnspecified() {
		return
	}
	now := s.now()
	for a, seen := range s.seen {
		if now.Sub(seen.at) > s.cfg.IgnoredWindow {
			delete(s.seen, a)
		}
	}
	s.seen[addr] = seenAddr{mac: append(net.HardwareAddr(nil), req.ClientHWAddr...), at: now}
}

// decide returns the boot decision for a PXE client, false for clients
// that get none (logged).
func (s *DHCPServer) decide(req *dhcpv4.DHCPv4) (Boot, bool) {
	arch, _ := ClientArch(req) // DecideBoot reports the error
	b, err := DecideBoot(req, s.cfg.ServerIP, s.cfg.HTTPPort, s.build(req, arch))
	switch {
	case err == nil:
		return b, true
	case errors.Is(err, ErrNotPXE):
		s.log.Debug("DHCP client is not PXE", "mac", req.ClientHWAddr.String(), "vendor_class", req.ClassIdentifier())
	default:
		s.log.Warn("PXE client not served", "mac", req.ClientHWAddr.String(), "err", err)
	}
	return Boot{}, false
}

// build is the iPXE build chosen for the requesting client (IPXEFull
// unless the config's IPXEBuild says otherwise).
func (s *DHCPServer) build(req *dhcpv4.DHCPv4, arch Arch) IPXEBuild {
	if s.cfg.IPXEBuild == nil || IsIPXE(req) {
		return IPXEFull
	}
	c := Client{MAC: append(net.HardwareAddr(nil), req.ClientHWAddr...), UUID: ClientUUID(req), Arch: arch}
	if b := s.cfg.IPXEBuild(c); b != "" {
		return b
	}
	return IPXEFull
}

func (s *DHCPServer) record(e Event) { s.rec.Record(e) }

// grant is the network configuration for addr.
func (s *DHCPServer) grant(addr netip.Addr, lease time.Duration) Grant {
	return Grant{Addr: addr, Subnet: s.cfg.Subnet, Router: s.cfg.Router, DNS: s.cfg.DNS, LeaseTime: lease}
}

// handleFull is a DHCP server (RFC 2131) with PXE options for PXE clients.
// It returns the reply and, when it changed the leases, commit: called
// without s.mu, it waits until the change is on disk and reports whether
// the reply may be sent.
func (s *DHCPServer) handleFull(req *dhcpv4.DHCPv4) (reply *dhcpv4.DHCPv4, commit func() bool) {
	mac := req.ClientHWAddr
	log := s.log.With("mac", mac.String())
	var boot *Boot
	if IsPXE(req) || IsIPXE(req) {
		if b, ok := s.decide(req); ok {
			boot = &b
		}
	}
	ours := s.cfg.ServerIP.AsSlice()
	sid := req.ServerIdentifier()
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		requested, _ := netip.AddrFromSlice(req.RequestedIPAddress().To4())
		addr, ok := s.pick(mac, requested)
		if !ok {
			log.Warn("DHCP pool exhausted: no address to offer", "range", s.cfg.RangeStart.String()+"-"+s.cfg.RangeEnd.String())
			return nil, nil
		}
		s.leases.Hold(mac, addr, offerHold)
		reply, err := FullReply(req, dhcpv4.MessageTypeOffer, s.cfg.ServerIP, s.grant(addr, s.cfg.LeaseTime), boot)
		if err != nil {
			log.Error("DHCP offer", "err", err)
			return nil, nil
		}
		if boot != nil {
			s.record(Event{Time: s.now(), MAC: mac, Addr: addr, Stage: StageDHCP, Detail: "offer " + addr.String() + ": " + boot.String()})
		}
		return reply, nil

	case dhcpv4.MessageTypeRequest:
		if sid != nil && !sid.Equal(ours) {
			// The client chose another server's offer.
			s.leases.DropHold(mac)
			return nil, nil
		}
		addr, _ := netip.AddrFromSlice(req.RequestedIPAddress().To4())
		if !addr.IsValid() {
			addr, _ = netip.AddrFromSlice(req.ClientIPAddr.To4())
		}
		if !addr.IsValid() || addr.IsUnspecified() {
			log.Debug("DHCP REQUEST without an address dropped")
			return nil, nil
		}
		if why := s.unusable(addr, mac); why != "" {
			log.Info("DHCP NAK", "addr", addr.String(), "why", why)
			reply, err := NakReply(req, s.cfg.ServerIP, why)
			if err != nil {
				log.Error("DHCP NAK", "err", err)
				return nil, nil
			}
			return reply, nil
		}
		le, b, err := s.leases.bind(mac, addr, s.cfg.LeaseTime, req.HostName())
		if err != nil {
			log.Error("DHCP lease not recorded, no ACK", "addr", addr.String(), "err", err)
			return nil, nil
		}
		reply, err := FullReply(req, dhcpv4.MessageTypeAck, s.cfg.ServerIP, s.grant(addr, s.cfg.LeaseTime), boot)
		if err != nil {
			log.Error("DHCP ACK", "err", err)
			reply = nil // the lease is written all the same: it is in the table
		}
		return reply, func() bool {
			if err := s.leases.commit(b); err != nil {
				// No ACK for a lease that would not survive a restart;
				// the client retries.
				log.Error("DHCP lease not recorded, no ACK", "addr", addr.String(), "err", err)
				return false
			}
			if reply != nil {
				log.Info("DHCP lease", "addr", addr.String(), "until", le.Expires, "hostname", le.Hostname)
			}
			return true
		}

	case dhcpv4.MessageTypeRelease:
		if sid != nil && !sid.Equal(ours) {
			return nil, nil
		}
		addr, _ := netip.AddrFromSlice(req.ClientIPAddr.To4())
		b, err := s.leases.release(mac, addr)
		if err != nil {
			log.Info("DHCP RELEASE ignored", "err", err)
			return nil, nil
		}
		return nil, func() bool {
			if err := s.leases.commit(b); err != nil {
				log.Error("DHCP release not recorded", "addr", addr.String(), "err", err)
			}
			return true
		}

	case dhcpv4.MessageTypeDecline:
		if sid != nil && !sid.Equal(ours) {
			return nil, nil
		}
		addr, ok := netip.AddrFromSlice(req.RequestedIPAddress().To4())
		if !ok || !s.cfg.Subnet.Contains(addr) {
			return nil, nil
		}
		log.Warn("DHCP DECLINE: address in use by another host", "addr", addr.String(), "not_offered_for", s.cfg.DeclineHold)
		b := s.leases.decline(addr, s.cfg.DeclineHold)
		return nil, func() bool {
			if err := s.leases.commit(b); err != nil {
				log.Error("DHCP decline not recorded", "err", err)
			}
			return true
		}

	case dhcpv4.MessageTypeInform:
		reply, err := FullReply(req, dhcpv4.MessageTypeAck, s.cfg.ServerIP, s.grant(netip.Addr{}, 0), boot)
		if err != nil {
			log.Error("DHCP INFORM ACK", "err", err)
			return nil, nil
		}
		return reply, nil
	}
	return nil, nil
}

// reservation returns mac's static address, if it has a usable one.
func (s *DHCPServer) reservation(mac net.HardwareAddr) (netip.Addr, bool) {
	if s.cfg.Reservations == nil {
		return netip.Addr{}, false
	}
	a, ok := s.cfg.Reservations(mac)
	if !ok {
		return netip.Addr{}, false
	}
	if !a.Is4() || !s.cfg.Subnet.Contains(a) {
		s.log.Error("static address outside the DHCP subnet ignored", "mac", mac.String(), "addr", a, "subnet", s.cfg.Subnet)
		return netip.Addr{}, false
	}
	return a, true
}

// inRange reports whether addr is in the dynamic pool.
func (s *DHCPServer) inRange(addr netip.Addr) bool {
	return addr.Is4() && !addr.Less(s.cfg.RangeStart) && !s.cfg.RangeEnd.Less(addr)
}

// unusable says why mac may not have addr, "" when it may.
func (s *DHCPServer) unusable(addr netip.Addr, mac net.HardwareAddr) string {
	if res, ok := s.reservation(mac); ok {
		if addr == res {
			return ""
		}
		return fmt.Sprintf("this machine's address is %s", res)
	}
	switch {
	case !s.cfg.Subnet.Contains(addr):
		return fmt.Sprintf("%s is not on this network (%s)", addr, s.cfg.Subnet)
	case !s.inRange(addr):
		return fmt.Sprintf("%s is outside the range %s-%s", addr, s.cfg.RangeStart, s.cfg.RangeEnd)
	case addr == s.cfg.ServerIP || addr == s.cfg.Router:
		return fmt.Sprintf("%s is the server's or router's", addr)
	case s.cfg.Reserved != nil && s.cfg.Reserved(addr):
		return fmt.Sprintf("%s is reserved for another machine", addr)
	case s.leases.InUse(addr, mac):
		return fmt.Sprintf("%s is in use", addr)
	}
	return ""
}

// pooled reports whether addr may go to any MAC without a reservation:
// unusable's fixed rules (all but InUse), without building messages.
func (s *DHCPServer) pooled(addr netip.Addr) bool {
	return s.cfg.Subnet.Contains(addr) && s.inRange(addr) && addr != s.cfg.ServerIP && addr != s.cfg.Router &&
		(s.cfg.Reserved == nil || !s.cfg.Reserved(addr))
}

// pick chooses the address to offer mac: its static address; else what it
// had or was offered; else the one it asks for; else a never-used address
// of the range (lowest first); else the one expired longest ago. The range
// search is Leases.Pick: O(1) amortized, not a scan from the start.
func (s *DHCPServer) pick(mac net.HardwareAddr, requested netip.Addr) (netip.Addr, bool) {
	if res, ok := s.reservation(mac); ok {
		return res, true
	}
	if a, ok := s.leases.Held(mac); ok && s.unusable(a, mac) == "" {
		return a, true
	}
	if le, ok := s.leases.Get(mac); ok && s.unusable(le.Addr, mac) == "" {
		return le.Addr, true
	}
	if requested.IsValid() && s.unusable(requested, mac) == "" {
		return requested, true
	}
	return s.leases.Pick(s.cfg.RangeStart, s.cfg.RangeEnd, mac, s.pooled)
}

// ignoreTracker notices PXE firmware that keeps sending DISCOVERs after our
// proxy offers without ever following one up: its firmware ignores proxy
// DHCP. Pure state machine over an explicit clock; see discover.
type ignoreTracker struct {
	after  int
	window time.Duration
	macs   map[string]*ignoreState
}

type ignoreState struct {
	first    time.Time // first answered DISCOVER of this run
	count    int
	reported bool
}

func newIgnoreTracker(after int, window time.Duration) *ignoreTracker {
	return &ignoreTracker{after: after, window: window, macs: map[string]*ignoreState{}}
}

// discover counts a DISCOVER from mac that we answered with a proxy offer
// and reports true once per run when the count reaches the threshold
// within the window. A run restarts after the window or a follow-up.
func (t *ignoreTracker) discover(mac string, now time.Time) bool {
	// Forget old runs so the map stays small.
	for m, st := range t.macs {
		if now.Sub(st.first) > t.window {
			delete(t.macs, m)
		}
	}
	st, ok := t.macs[mac]
	if !ok {
		st = &ignoreState{first: now}
		t.macs[mac] = st
	}
	st.count++
	if st.count >= t.after && !st.reported {
		st.reported = true
		return true
	}
	return false
}

// followed forgets mac's run: it came back to us, so it took our offer.
func (t *ignoreTracker) followed(mac string) { delete(t.macs, mac) }

// dhcpDebugLogger routes server4's chatter (every packet, parse errors of
// bad packets) to the debug level.
type dhcpDebugLogger struct{ log *slog.Logger }

func (l dhcpDebugLogger) Printf(format string, v ...any) {
	l.log.Debug("dhcp: " + fmt.Sprintf(format, v...))
}

func (l dhcpDebugLogger) PrintMessage(prefix string, m *dhcpv4.DHCPv4) {
	l.log.Debug("dhcp: "+prefix, "summary", m.Summary())
}
