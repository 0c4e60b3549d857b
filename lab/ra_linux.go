//go:build linux

package lab

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Where the responder runs, and why there.
//
// It answers on the lab bridge, so it must live in the lab namespace for as
// long as the lab does, and be stopped by `lab down`. The lab's long-lived
// processes are QEMU, dnsmasq (proxy mode only, and in the router
// namespace) and rackboot serve (which must know nothing of the lab: on a
// real rack the home router sends RAs, or none). So it is a process of its
// own, recorded in lab.json like the others: the binary that runs the lab
// (rackboot, or a test binary of this package) started again with the
// argument RACommand. A package init hook catches that argument before the
// program's main, so no command-line wiring is needed and every binary that
// can bring a lab up can also run its responder.

// RACommand as the first argument makes any binary that imports this
// package run the lab's router advertisement responder instead of its main:
//
//	<binary> __rackboot-lab-ra --interface br0
//
// It runs until SIGTERM or SIGINT. Up starts it this way in the lab
// namespace.
const RACommand = "__rackboot-lab-ra"

// raReadyMsg is what the responder logs once its socket listens; Up waits
// for it.
const raReadyMsg = "RA responder ready"

func init() {
	if len(os.Args) > 1 && os.Args[1] == RACommand {
		os.Exit(raMain(os.Args[2:], os.Stderr))
	}
}

// raMain is the responder process: flags, a logger on stderr, and Serve
// until a signal.
func raMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(RACommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	iface := fs.String("interface", Bridge, "the interface to answer router solicitations on")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	s, err := NewRA(RAConfig{Interface: *iface}, WithRALogger(log))
	if err != nil {
		log.Error("RA responder", "err", err)
		return 1
	}
	if err := s.Serve(ctx); err != nil {
		log.Error("RA responder", "err", err)
		return 1
	}
	log.Info("RA responder stopped", "stats", fmt.Sprintf("%+v", s.Stats()))
	return 0
}

// RAConfig configures the responder.
type RAConfig struct {
	// Interface is the link to answer on (the lab bridge).
	Interface string
}

// RAServer answers router solicitations on one interface with RAMessage,
// sent to all nodes (ff02::1), hop limit 255, from the interface's
// link-local address. Every valid solicitation is answered at once: RFC
// 4861 spaces multicast advertisements 3 s apart, which would bring back
// part of the wait this exists to remove, and on the lab's private bridge
// an advertisement (24 bytes) is never larger than the solicitation that
// asked for it, so a flood cannot be amplified.
type RAServer struct {
	cfg   RAConfig
	ifi   *net.Interface
	conn  net.PacketConn
	pc    *ipv6.PacketConn
	log   *slog.Logger
	msg   []byte
	once  sync.Once
	stats struct{ solicit, ignored, adverts atomic.Int64 }
}

// RAOption configures an RAServer.
type RAOption func(*RAServer)

// WithRALogger sets the logger (default: discard).
func WithRALogger(l *slog.Logger) RAOption { return func(s *RAServer) { s.log = l } }

// WithRAConn makes the server use c, a raw ICMPv6 socket ("ip6:ipv6-icmp")
// the caller opened, instead of opening one bound to the interface. The
// server still sets its options (filter, group, hop limits) and closes it
// when Serve returns.
func WithRAConn(c net.PacketConn) RAOption { return func(s *RAServer) { s.conn = c } }

// NewRA opens the responder's socket in the calling thread's network
// namespace: a raw ICMPv6 socket bound to the interface that lets only
// router solicitations through and listens to all-routers (ff02::2). It
// needs CAP_NET_RAW.
func NewRA(cfg RAConfig, opts ...RAOption) (*RAServer, error) {
	if cfg.Interface == "" {
		return nil, errors.New("RA responder: no interface given")
	}
	s := &RAServer{cfg: cfg, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, o := range opts {
		o(s)
	}
	ifi, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		s.closeConn()
		return nil, fmt.Errorf("RA responder: interface %s: %w", cfg.Interface, err)
	}
	s.ifi = ifi
	s.msg = RAMessage(ifi.HardwareAddr)
	if s.conn == nil {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), cfg.Interface) }); err != nil {
				return err
			}
			return serr
		}}
		if s.conn, err = lc.ListenPacket(context.Background(), "ip6:ipv6-icmp", "::"); err != nil {
			return nil, fmt.Errorf("RA responder: open a raw ICMPv6 socket on %s: %w", cfg.Interface, err)
		}
	}
	s.pc = ipv6.NewPacketConn(s.conn)
	if err := s.setup(); err != nil {
		s.closeConn()
		return nil, fmt.Errorf("RA responder on %s: %w", cfg.Interface, err)
	}
	return s, nil
}

func (s *RAServer) setup() error {
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeRouterSolicitation)
	if err := s.pc.SetICMPFilter(&f); err != nil {
		return fmt.Errorf("ICMPv6 filter: %w", err)
	}
	if err := s.pc.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagSrc|ipv6.FlagInterface, true); err != nil {
		return fmt.Errorf("control messages: %w", err)
	}
	if err := s.pc.JoinGroup(s.ifi, &net.IPAddr{IP: net.ParseIP("ff02::2")}); err != nil {
		return fmt.Errorf("join all-routers ff02::2: %w", err)
	}
	if err := s.pc.SetMulticastInterface(s.ifi); err != nil {
		return fmt.Errorf("multicast interface: %w", err)
	}
	if err := s.pc.SetMulticastHopLimit(ndHopLimit); err != nil {
		return fmt.Errorf("multicast hop limit: %w", err)
	}
	if err := s.pc.SetHopLimit(ndHopLimit); err != nil {
		return fmt.Errorf("hop limit: %w", err)
	}
	if err := s.pc.SetMulticastLoopback(false); err != nil {
		return fmt.Errorf("multicast loopback: %w", err)
	}
	return nil
}

func (s *RAServer) closeConn() {
	s.once.Do(func() {
		if s.conn != nil {
			s.conn.Close()
		}
	})
}

// Stats is what the server has done so far.
func (s *RAServer) Stats() RAStats {
	return RAStats{
		Solicitations: s.stats.solicit.Load(),
		Ignored:       s.stats.ignored.Load(),
		Adverts:       s.stats.adverts.Load(),
	}
}

// Serve sends one unsolicited advertisement, then answers solicitations
// until ctx is done (then it returns nil). It closes the socket on return.
func (s *RAServer) Serve(ctx context.Context) error {
	defer s.closeConn()
	stop := context.AfterFunc(ctx, s.closeConn)
	defer stop()
	s.log.Info(raReadyMsg, "interface", s.cfg.Interface, "mac", s.ifi.HardwareAddr.String())
	// Unsolicited: best effort. Until a VM's tap gives the bridge a
	// carrier, the bridge has no link-local address to send from.
	if err := s.advertise("unsolicited"); err != nil {
		s.log.Info("unsolicited router advertisement not sent (answering solicitations anyway)", "err", err)
	}
	buf := make([]byte, 1500)
	for {
		n, cm, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("RA responder: read on %s: %w", s.cfg.Interface, err)
		}
		src, hop := netip.Addr{}, -1
		if a, ok := from.(*net.IPAddr); ok {
			src, _ = netip.AddrFromSlice(a.IP)
		}
		if cm != nil {
			hop = cm.HopLimit
			if cm.IfIndex != 0 && cm.IfIndex != s.ifi.Index {
				s.stats.ignored.Add(1)
				continue
			}
		}
		rs, err := CheckRS(src, hop, buf[:n])
		if err != nil {
			s.stats.ignored.Add(1)
			s.log.Info("packet ignored", "from", src, "err", err)
			continue
		}
		s.stats.solicit.Add(1)
		if err := s.advertise("solicited"); err != nil {
			// The next solicitation gets another try.
			s.log.Warn("router advertisement not sent", "from", src, "mac", rs.SourceLL.String(), "err", err)
			continue
		}
		s.log.Info("router solicitation answered", "from", src, "mac", rs.SourceLL.String())
	}
}

func (s *RAServer) advertise(why string) error {
	// The interface goes by index in the control message, not as the
	// address's zone: Go resolves zone names through a process-wide cache
	// that may hold another namespace's interfaces.
	dst := &net.IPAddr{IP: net.ParseIP("ff02::1")}
	cm := &ipv6.ControlMessage{HopLimit: ndHopLimit, IfIndex: s.ifi.Index}
	if _, err := s.pc.WriteTo(s.msg, cm, dst); err != nil {
		return fmt.Errorf("send %s router advertisement to ff02::1%%%s: %w", why, s.cfg.Interface, err)
	}
	s.stats.adverts.Add(1)
	return nil
}

// startRA starts the responder (this same binary, see RACommand) in the lab
// namespace on the bridge, records it, and waits until it listens.
func (l *Lab) startRA(ctx context.Context, st *State) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("RA responder: find this binary: %w", err)
	}
	logPath := filepath.Join(l.dir, "ra.log")
	spec := ProcessSpec{Role: "ra", Path: exe, Args: []string{RACommand, "--interface", Bridge}}
	done, err := l.startWait(st, st.Namespaces[0], spec, logPath, "")
	if err != nil {
		return err
	}
	t := time.NewTicker(l.poll)
	defer t.Stop()
	for deadline := time.Now().Add(10 * time.Second); ; {
		if b, _ := os.ReadFile(logPath); bytes.Contains(b, []byte(raReadyMsg)) {
			l.log.Info("ready", "lab", l.name, "role", spec.Role)
			return nil
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			return fmt.Errorf("RA responder is not ready after 10s:\n%s", tail(b, 20))
		}
		select {
		case werr := <-done:
			b, _ := os.ReadFile(logPath)
			return fmt.Errorf("RA responder exited at once (%v):\n%s", werr, tail(b, 20))
		case <-ctx.Done():
			return fmt.Errorf("RA responder: %w", ctx.Err())
		case <-t.C:
		}
	}
}
