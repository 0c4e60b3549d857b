package pxe

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"path"
	"strings"
	"time"

	"github.com/pin/tftp/v3"

	"github.com/dotfile/rackboot/pxe/ipxe"
)

// TFTPConfig configures the read-only TFTP server for the iPXE binaries.
type TFTPConfig struct {
	// Addr is the UDP listen address; default ":69". Ignored with TFTPConn.
	Addr string
	// Files holds the iPXE binaries (ipxe.FS() or ipxe.Dir). Only the names
	// ipxe.IsBinary accepts are ever served from it.
	Files fs.FS
	// Timeout is how long to wait for each ACK before sending again
	// (default 2 s); Retries how many times (default 5). iPXE and PXE ROMs
	// retransmit their own requests too, so a short timeout recovers a lost
	// packet quickly without flooding a slow client.
	Timeout time.Duration
	Retries int

	Log      *slog.Logger     // default: discard
	Recorder Recorder         // default: none
	Now      func() time.Time // default: time.Now (event times)
	// Followed, when set, is told the address of every client that asks for
	// an iPXE binary and may return its MAC (DHCPServer.FollowedAddr): the
	// event then names the MAC too.
	Followed func(addr netip.Addr) (net.HardwareAddr, bool)
}

// TFTPOption changes how NewTFTP builds the server.
type TFTPOption func(*TFTP)

// TFTPConn makes the server use conn (e.g. 127.0.0.1:0 in tests, or a socket
// bound to one interface) instead of listening on TFTPConfig.Addr.
func TFTPConn(conn *net.UDPConn) TFTPOption {
	return func(t *TFTP) { t.conn = conn }
}

// TFTP serves the iPXE binaries over TFTP (RFC 1350, with the blksize and
// tsize options of RFC 2348/2349 negotiated by pin/tftp). Writes are refused.
type TFTP struct {
	cfg  TFTPConfig
	log  *slog.Logger
	conn *net.UDPConn
	srv  *tftp.Server
}

// NewTFTP checks cfg and binds the UDP socket (unless TFTPConn gave one), so
// a port in use is reported here; call Serve to run it.
func NewTFTP(cfg TFTPConfig, opts ...TFTPOption) (*TFTP, error) {
	if cfg.Files == nil {
		return nil, errors.New("TFTP config: Files (the iPXE binaries) is required")
	}
	if cfg.Addr == "" {
		cfg.Addr = ":69"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 5
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Recorder == nil {
		cfg.Recorder = RecorderFunc(func(Event) {})
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := &TFTP{cfg: cfg, log: cfg.Log}
	for _, o := range opts {
		o(t)
	}
	if t.conn == nil {
		ua, err := net.ResolveUDPAddr("udp", cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("TFTP listen address %q: %w", cfg.Addr, err)
		}
		c, err := net.ListenUDP("udp", ua)
		if err != nil {
			return nil, listenError("TFTP", "udp", cfg.Addr, err)
		}
		t.conn = c
	}
	// Write handler nil: pin/tftp answers every WRQ with an error.
	t.srv = tftp.NewServer(t.read, nil)
	t.srv.SetTimeout(cfg.Timeout)
	t.srv.SetRetries(cfg.Retries)
	t.srv.SetHook(tftpHook{t.log})
	// Sender-anticipate (SetAnticipate) stays off: it is pin/tftp's
	// experimental path, sends several blocks before reading ACKs, and is
	// not RFC 7440 windowsize, so a strict client may drop or misorder the
	// extra blocks. Turn it on only if measured faster with the QEMU rack's
	// iPXE and PXE ROMs and never failing under packet loss.
	return t, nil
}

// Addr is the address the server listens on.
func (t *TFTP) Addr() net.Addr { return t.conn.LocalAddr() }

// Serve answers requests until ctx is cancelled, then lets running
// transfers finish (each is bounded by Timeout × Retries) and returns nil.
func (t *TFTP) Serve(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- t.srv.Serve(t.conn) }()
	t.log.Info("tftp serving", "addr", t.conn.LocalAddr().String())
	select {
	case <-ctx.Done():
		t.srv.Shutdown() // closes the socket, waits for transfers
		if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("tftp server stop: %w", err)
		}
		return nil
	case err := <-done:
		if err == nil || errors.Is(err, net.ErrClosed) {
			return nil
		}
		return fmt.Errorf("tftp server: %w", err)
	}
}

// errTFTPNotFound is sent to clients for anything but an iPXE binary.
var errTFTPNotFound = errors.New("file not found")

// TFTPPath turns a requested TFTP file name into the iPXE binary to serve.
// Only an exact binary name is accepted, optionally with one leading '/'
// (some ROMs send "/ipxe.efi"); anything with another slash, "..", a
// backslash, NUL, '%' or a control character is refused.
func TFTPPath(requested string) (string, error) {
	if strings.ContainsAny(requested, "\\%\x00") {
		return "", fmt.Errorf("%w: bad character in %q", errTFTPNotFound, clip(requested))
	}
	if err := checkScriptText("file name", requested); err != nil {
		return "", fmt.Errorf("%w: %v", errTFTPNotFound, err)
	}
	name := strings.TrimPrefix(requested, "/")
	if !ipxe.IsBinary(name) {
		return "", fmt.Errorf("%w: %q is not an iPXE binary", errTFTPNotFound, clip(requested))
	}
	return name, nil
}

// read is pin/tftp's read handler. The error it returns is sent to the
// client, so it says no more than "file not found".
func (t *TFTP) read(filename string, rf io.ReaderFrom) error {
	var addr netip.Addr
	ot, _ := rf.(tftp.OutgoingTransfer)
	if ot != nil {
		ra := ot.RemoteAddr()
		if a, ok := netip.AddrFromSlice(ra.IP); ok {
			addr = a.Unmap()
		}
	}
	name, err := TFTPPath(filename)
	if err != nil {
		level := slog.LevelInfo
		if path.Base(filename) == "autoexec.ipxe" {
			level = slog.LevelDebug // iPXE 2025 looks for it first, then goes on
		}
		t.log.Log(context.Background(), level, "tftp request refused", "addr", addr, "err", err)
		return errTFTPNotFound
	}
	var mac net.HardwareAddr
	if t.cfg.Followed != nil && addr.IsValid() {
		mac, _ = t.cfg.Followed(addr)
	}
	f, err := t.cfg.Files.Open(name)
	if err != nil {
		t.log.Warn("tftp: iPXE binary missing", "file", name, "addr", addr, "err", err)
		return errTFTPNotFound
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && ot != nil {
		ot.SetSize(st.Size()) // answers a tsize request
	}
	n, err := rf.ReadFrom(f)
	if err != nil {
		if n == 0 && ot != nil {
			// UEFI firmware asks once for the size only (tsize), then
			// stops the transfer before the first block: not a failure.
			t.log.Debug("tftp: client stopped before the first block (a firmware size probe)", "file", name, "addr", addr, "err", err)
		} else {
			t.log.Info("tftp transfer failed", "file", name, "addr", addr, "bytes", n, "err", err)
		}
		return fmt.Errorf("send %s: %w", name, err)
	}
	t.log.Info("tftp sent iPXE binary", "file", name, "addr", addr, "bytes", n)
	// TFTP sees only the address; the MAC comes from DHCP when it knows it.
	t.cfg.Recorder.Record(Event{Time: t.cfg.Now(), MAC: mac, Addr: addr, Stage: StageIPXE, Detail: "tftp " + name})
	return nil
}

type tftpHook struct{ log *slog.Logger }

func (h tftpHook) OnSuccess(s tftp.TransferStats) {
	h.log.Debug("tftp transfer done", "file", s.Filename, "addr", s.RemoteAddr.String(),
		"duration", s.Duration, "sent", s.DatagramsSent, "acked", s.DatagramsAcked, "opts", fmt.Sprint(s.Opts))
}

func (h tftpHook) OnFailure(s tftp.TransferStats, err error) {
	h.log.Debug("tftp transfer failed", "file", s.Filename, "addr", s.RemoteAddr.String(), "err", err)
}
