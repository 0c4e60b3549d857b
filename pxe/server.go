package pxe

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/dotfile/rackboot/pxe/ipxe"
)

// shutdownTimeout bounds how long Serve waits for HTTP requests in flight
// (a kernel download) after ctx is cancelled.
const shutdownTimeout = 5 * time.Second

// Config is the netboot server's configuration.
type Config struct {
	// ServerIP is the address machines reach this server on; it goes into
	// every URL. Required unless HTTPAddr names a specific IP.
	ServerIP netip.Addr
	// HTTPAddr and TFTPAddr are the listen addresses (default ":8080" and
	// ":69"). DisableTFTP turns TFTP off (iPXE ROMs only, or HTTP boot).
	HTTPAddr    string
	TFTPAddr    string
	DisableTFTP bool
	// EventsAddr and LogAddr (host:port) fill {{.EventsAddr}} and
	// {{.LogAddr}} in kernel command lines.
	EventsAddr string
	LogAddr    string
	// StateDir keeps the config-token key (pxe-token.key, 0600), so tokens
	// survive a restart. "" keeps the key in memory only: a restart then
	// makes machines mid-boot fail their config fetch until they reboot.
	StateDir string
	// Tokens, when set, is used instead of the state dir's key (for
	// several servers sharing one key and spent tokens: NewSharedTokens).
	Tokens *Tokens
	// IPXE holds the iPXE binaries; nil means the embedded ones (ipxe.FS).
	IPXE     fs.FS
	TokenTTL time.Duration // default DefaultTokenTTL
	// Neighbors is the rack segment's layer-2 view (KernelNeighbors of the
	// rack interface): boot scripts with config tokens go only to the NIC
	// that owns the MAC they name. Required.
	Neighbors Neighbors
	// LeaseOf, in full-DHCP mode, is the DHCP server's lease lookup
	// (DHCPServer.LeaseOf): a script request must come from the MAC's lease.
	LeaseOf func(mac net.HardwareAddr) (netip.Addr, bool)

	Log      *slog.Logger     // default: discard
	Recorder Recorder         // default: none
	Now      func() time.Time // default: time.Now
	Rand     io.Reader        // default: crypto/rand
	// Followed is passed to HTTPConfig.Followed and FollowedAddr to
	// HTTPConfig.FollowedAddr and TFTPConfig.Followed (DHCPServer.Followed
	// and FollowedAddr).
	Followed     func(mac net.HardwareAddr)
	FollowedAddr func(addr netip.Addr) (net.HardwareAddr, bool)
	// Discovery, when set, boots machines the Booter does not know (see
	// Discoverer); nil tells them to wait and ask again.
	Discovery Discoverer
}

// Option adds to a Server.
type Option func(*Server)

// WithHTTPListener serves HTTP on l instead of listening on Config.HTTPAddr.
func WithHTTPListener(l net.Listener) Option { return func(s *Server) { s.httpLn = l } }

// WithTFTPConn serves TFTP on conn instead of listening on Config.TFTPAddr.
func WithTFTPConn(conn *net.UDPConn) Option { return func(s *Server) { s.tftpConn = conn } }

// WithHandler mounts h on the HTTP server at pattern (http.ServeMux syntax,
// e.g. "GET /api/" or "/metrics"): the status page, metrics, an API.
// The netboot routes keep "/" and the paths listed on HTTP.
func WithHandler(pattern string, h http.Handler) Option {
	return func(s *Server) { s.handlers = append(s.handlers, mount{pattern, h}) }
}

// WithService runs fn in the same errgroup as TFTP and HTTP (the DHCP
// server, the Talos events sink): ctx is cancelled when Serve's ctx is or
// when any part fails, and fn's error (other than context.Canceled) stops
// the others and is returned by Serve, prefixed with name.
func WithService(name string, fn func(ctx context.Context) error) Option {
	return func(s *Server) { s.services = append(s.services, service{name, fn}) }
}

type mount struct {
	pattern string
	h       http.Handler
}

type service struct {
	name string
	fn   func(ctx context.Context) error
}

// Server runs TFTP, HTTP and the added services together.
type Server struct {
	cfg      Config
	log      *slog.Logger
	httpLn   net.Listener
	tftpConn *net.UDPConn
	handlers []mount
	services []service

	tokens *Tokens
	http   *HTTP
	mux    *http.ServeMux
	tftp   *TFTP
}

// New binds the sockets (so a port in use or a missing privilege is
// reported now, naming the port) and builds the handlers. Call Serve to run
// them; if Serve is never called, Close releases the sockets.
func New(cfg Config, booter Booter, assets Assets, opts ...Option) (_ *Server, err error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = ":8080"
	}
	if cfg.TFTPAddr == "" {
		cfg.TFTPAddr = ":69"
	}
	s := &Server{cfg: cfg, log: cfg.Log}
	for _, o := range opts {
		o(s)
	}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	files := cfg.IPXE
	if files == nil {
		embedded, ferr := ipxe.FS()
		switch {
		case ferr == nil:
			files = embedded
		case !cfg.DisableTFTP:
			return nil, ferr
		default: // HTTP only: /ipxe/<file> answers 404
			s.log.Warn("no iPXE binaries: HTTP boot clients cannot fetch them", "err", ferr)
		}
	}
	tc := TokenConfig{TTL: cfg.TokenTTL, Now: cfg.Now, Rand: cfg.Rand}
	switch {
	case cfg.Tokens != nil:
		s.tokens = cfg.Tokens
	case cfg.StateDir != "":
		s.tokens, err = OpenTokens(cfg.StateDir, tc)
	default:
		s.log.Warn("no state dir: config tokens will not survive a restart")
		key := make([]byte, tokenKeyLen)
		r := cfg.Rand
		if r == nil {
			r = rand.Reader
		}
		if _, err = io.ReadFull(r, key); err != nil {
			return nil, fmt.Errorf("make config token key: %w", err)
		}
		s.tokens, err = NewTokens(key, tc)
	}
	if err != nil {
		return nil, err
	}

	if s.httpLn == nil {
		if s.httpLn, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
			return nil, listenError("HTTP", "tcp", cfg.HTTPAddr, err)
		}
	}
	server, err := advertised(cfg.ServerIP, s.httpLn.Addr())
	if err != nil {
		return nil, err
	}
	s.http, err = NewHTTP(HTTPConfig{
		Server: server, EventsAddr: cfg.EventsAddr, LogAddr: cfg.LogAddr,
		Booter: booter, Assets: assets, IPXE: files, Tokens: s.tokens,
		Neighbors: cfg.Neighbors, LeaseOf: cfg.LeaseOf,
		Log: cfg.Log.With("service", "http"), Recorder: cfg.Recorder, Now: cfg.Now, Followed: cfg.Followed,
		FollowedAddr: cfg.FollowedAddr, Discovery: cfg.Discovery,
	})
	if err != nil {
		return nil, err
	}
	s.mux = http.NewServeMux()
	s.mux.Handle("/", s.http)
	for _, m := range s.handlers {
		if err := registerHandler(s.mux, m); err != nil {
			return nil, err
		}
	}

	if !cfg.DisableTFTP {
		var topts []TFTPOption
		if s.tftpConn != nil {
			topts = append(topts, TFTPConn(s.tftpConn))
		}
		s.tftp, err = NewTFTP(TFTPConfig{Addr: cfg.TFTPAddr, Files: files,
			Log: cfg.Log.With("service", "tftp"), Recorder: cfg.Recorder, Now: cfg.Now, Followed: cfg.FollowedAddr}, topts...)
		if err != nil {
			return nil, err
		}
		s.tftpConn = s.tftp.conn
	}
	return s, nil
}

// registerHandler mounts m, turning ServeMux's panic on a bad or
// conflicting pattern into an error.
func registerHandler(mux *http.ServeMux, m mount) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("mount HTTP handler %q: %v", m.pattern, r)
		}
	}()
	mux.Handle(m.pattern, m.h)
	return nil
}

// advertised is the host:port machines use for HTTP.
func advertised(ip netip.Addr, ln net.Addr) (string, error) {
	ap, err := netip.ParseAddrPort(ln.String())
	if err != nil {
		return "", fmt.Errorf("HTTP listen address %s: %w", ln, err)
	}
	if !ip.IsValid() {
		ip = ap.Addr().Unmap()
		if ip.IsUnspecified() {
			return "", fmt.Errorf("HTTP listens on %s (all addresses): set the server IP machines reach", ln)
		}
	}
	return net.JoinHostPort(ip.Unmap().String(), strconv.Itoa(int(ap.Port()))), nil
}

// listenError says plainly why a socket could not be bound.
func listenError(what, network, addr string, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("%s: %s port %s is already in use (another server running?): %w", what, network, portOf(addr), err)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("%s: binding %s port %s needs root or CAP_NET_BIND_SERVICE: %w", what, network, portOf(addr), err)
	}
	return fmt.Errorf("%s: listen on %s %s: %w", what, network, addr, err)
}

func portOf(addr string) string {
	if _, p, err := net.SplitHostPort(addr); err == nil {
		return p
	}
	return addr
}

// Tokens is the config-token issuer; the events side calls Consume on it
// when a machine reports it loaded its config.
func (s *Server) Tokens() *Tokens { return s.tokens }

// Handler is the HTTP handler with the netboot routes and WithHandler mounts.
func (s *Server) Handler() http.Handler { return s.mux }

// HTTPAddr is the HTTP listen address.
func (s *Server) HTTPAddr() net.Addr { return s.httpLn.Addr() }

// TFTPAddr is the TFTP listen address, or nil with DisableTFTP.
func (s *Server) TFTPAddr() net.Addr {
	if s.tftpConn == nil {
		return nil
	}
	return s.tftpConn.LocalAddr()
}

// Close releases the sockets of a Server that is not serving.
func (s *Server) Close() error {
	var errs []error
	if s.httpLn != nil {
		if err := s.httpLn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	if s.tftpConn != nil {
		if err := s.tftpConn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Serve runs HTTP, TFTP and the services until ctx is cancelled (then it
// shuts them down and returns nil) or one of them fails (then it stops the
// others and returns that error).
func (s *Server) Serve(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	hs := &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return gctx },
	}
	s.log.Info("http serving", "addr", s.httpLn.Addr().String(), "url", s.http.base())
	g.Go(func() error {
		if err := hs.Serve(s.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("http server: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			s.log.Warn("http shutdown: closing connections still open", "err", err)
			hs.Close()
		}
		return nil
	})
	if s.tftp != nil {
		g.Go(func() error { return s.tftp.Serve(gctx) })
	}
	for _, svc := range s.services {
		g.Go(func() error {
			if err := svc.fn(gctx); err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("%s: %w", svc.name, err)
			}
			return nil
		})
	}
	return g.Wait()
}
