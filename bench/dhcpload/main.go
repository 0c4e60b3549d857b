// Command dhcpload is the DHCP load generator of `make bench` (rows P3 and
// P6). It simulates many DHCP clients with distinct MACs on one socket,
// built with insomniacslk/dhcp's dhcpv4 packets and nclient4's raw
// broadcast connection, so any DHCP server (rackboot, dnsmasq) sees the
// same traffic a rack of real machines sends.
//
//	dhcpload -i veth0 -mode dora -n 1000 -c 100 -name DHCP/dora
//	dhcpload -i veth0 -startup -- ip netns exec srv rackboot serve ...
//
// Load runs print one line in Go's benchmark format (for benchstat);
// -startup prints one line "startup-ms <ms>".
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "dhcpload:", err)
		os.Exit(1)
	}
}

// flags are dhcpload's command line.
type flags struct {
	iface     string
	server    string
	mode      string
	clients   int
	conc      int
	timeout   time.Duration
	retries   int
	macPrefix string
	xidBase   uint
	name      string
	startup   bool
	interval  time.Duration
	limit     time.Duration
	serverLog string
	verbose   bool
}

func parseFlags(args []string, stderr io.Writer) (*flags, []string, error) {
	f := &flags{}
	fs := flag.NewFlagSet("dhcpload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.iface, "i", "", "interface to broadcast on (raw socket, like a real client; needs root)")
	fs.StringVar(&f.server, "server", "", "instead of -i: a server's UDP address (host:port) to send to from an ordinary socket")
	fs.StringVar(&f.mode, "mode", "discover", "discover (DISCOVER→OFFER) or dora (DISCOVER, OFFER, REQUEST, ACK)")
	fs.IntVar(&f.clients, "n", 1000, "simulated clients (distinct MACs)")
	fs.IntVar(&f.conc, "c", 100, "exchanges in flight at once")
	fs.DurationVar(&f.timeout, "timeout", time.Second, "wait for each reply before sending again")
	fs.IntVar(&f.retries, "retries", 2, "sends after the first before a client counts as failed")
	fs.StringVar(&f.macPrefix, "mac-prefix", "02:b0", "first two MAC bytes (hex, locally administered); vary it between runs")
	fs.UintVar(&f.xidBase, "xid-base", 0, "first transaction ID (default: from the clock)")
	fs.StringVar(&f.name, "name", "DHCP", "benchmark name printed (Benchmark<name>)")
	fs.BoolVar(&f.startup, "startup", false, "start the command after -- and time exec → first OFFER")
	fs.DurationVar(&f.interval, "interval", 5*time.Millisecond, "-startup: DISCOVER resend interval")
	fs.DurationVar(&f.limit, "limit", 10*time.Second, "-startup: give up after this long")
	fs.StringVar(&f.serverLog, "server-log", "", "-startup: append the server's output to this file (default: discard)")
	fs.BoolVar(&f.verbose, "v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return nil, nil, err
	}
	if (f.iface == "") == (f.server == "") {
		return nil, nil, errors.New("give exactly one of -i IFACE or -server HOST:PORT")
	}
	if f.startup && fs.NArg() == 0 {
		return nil, nil, errNoCommand
	}
	if !f.startup && fs.NArg() > 0 {
		return nil, nil, fmt.Errorf("unexpected arguments %q (a command goes with -startup)", fs.Args())
	}
	return f, fs.Args(), nil
}

// ParseMACPrefix parses "02:b0" into two bytes.
func ParseMACPrefix(s string) ([2]byte, error) {
	var p [2]byte
	b, err := hex.DecodeString(strings.ReplaceAll(s, ":", ""))
	if err != nil || len(b) != 2 {
		return p, fmt.Errorf("MAC prefix %q: want two hex bytes like 02:b0", s)
	}
	copy(p[:], b)
	return p, nil
}

func run(args []string, stdout, stderr io.Writer) error {
	f, cmdArgs, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if f.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	prefix, err := ParseMACPrefix(f.macPrefix)
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	conn, dst, err := openConn(f)
	if err != nil {
		return err
	}
	xid := uint32(f.xidBase)
	if xid == 0 {
		xid = uint32(time.Now().UnixNano())
	}
	l := NewLoader(conn, dst, xid, WithLogger(log))
	recvDone := make(chan error, 1)
	go func() { recvDone <- l.Receive(ctx) }()
	defer func() {
		conn.Close()
		<-recvDone
	}()

	if f.startup {
		cmd := exec.Command(cmdArgs[0], cmdArgs[1:]...)
		if f.serverLog != "" {
			lf, err := os.OpenFile(f.serverLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				return fmt.Errorf("server log: %w", err)
			}
			defer lf.Close()
			cmd.Stdout, cmd.Stderr = lf, lf
		}
		d, err := l.Startup(ctx, cmd, ClientMAC(prefix, 0), f.interval, f.limit, 5*time.Second)
		if err != nil {
			return fmt.Errorf("startup of %s: %w", strings.Join(cmdArgs, " "), err)
		}
		fmt.Fprintf(stdout, "startup-ms %.2f\n", float64(d.Microseconds())/1e3)
		return nil
	}

	cfg := Config{Mode: Mode(f.mode), Clients: f.clients, Concurrency: f.conc, Timeout: f.timeout,
		Retries: f.retries, MACPrefix: prefix}
	res, err := l.Run(ctx, cfg)
	if err != nil {
		return err
	}
	log.Info("done", "mode", res.Mode, "ok", res.OK, "failed", res.Failed, "elapsed", res.Elapsed,
		"rate", fmt.Sprintf("%.0f/s", res.Rate()), "p50", Percentile(res.Latencies, 50), "p99", Percentile(res.Latencies, 99),
		"strays", l.Strays(), "nak_restarts", l.Naks())
	fmt.Fprintln(stdout, res.BenchLine(f.name))
	if res.OK == 0 {
		return fmt.Errorf("no client got an answer (%d failed)", res.Failed)
	}
	return nil
}

// openConn opens the socket: a raw broadcast conn on -i (source 0.0.0.0:68,
// as a client without an address sends), or a UDP socket towards -server.
func openConn(f *flags) (net.PacketConn, net.Addr, error) {
	if f.server != "" {
		dst, err := net.ResolveUDPAddr("udp4", f.server)
		if err != nil {
			return nil, nil, fmt.Errorf("-server %q: %w", f.server, err)
		}
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, nil, fmt.Errorf("open UDP socket: %w", err)
		}
		return c, dst, nil
	}
	ifi, err := net.InterfaceByName(f.iface)
	if err != nil {
		return nil, nil, fmt.Errorf("interface %s: %w", f.iface, err)
	}
	raw, err := packet.Listen(ifi, packet.Datagram, unix.ETH_P_IP, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("raw socket on %s (needs root): %w", f.iface, err)
	}
	// A burst of replies must not overflow the default 208 KiB buffer.
	if rc, err := raw.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
		})
	}
	conn := nclient4.NewBroadcastUDPConn(raw, &net.UDPAddr{Port: 68})
	return conn, &net.UDPAddr{IP: net.IPv4bcast, Port: 67}, nil
}
