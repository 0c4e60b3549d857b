package pxe

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/internal/syncbuf"
	"github.com/dotfile/rackboot/pxe/ipxe"
)

func TestTFTPPath(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"ipxe.efi", "ipxe.efi"},
		{"undionly.kpxe", "undionly.kpxe"},
		{"snponly.efi", "snponly.efi"},
		{"ipxe-arm64.efi", "ipxe-arm64.efi"},
		{"/ipxe.efi", "ipxe.efi"},
		{"//ipxe.efi", ""},
		{"../ipxe.efi", ""},
		{"../../etc/passwd", ""},
		{"/etc/passwd", ""},
		{"bin/ipxe.efi", ""},
		{"./ipxe.efi", ""},
		{"..\\ipxe.efi", ""},
		{"ipxe.efi\x00.png", ""},
		{"%2e%2e/ipxe.efi", ""},
		{"ipxe%2eefi", ""},
		{"ipxe.efi\n", ""},
		{"IPXE.EFI", ""},
		{"SOURCE", ""},
		{"README.md", ""},
		{"", ""},
		{"/", ""},
	} {
		got, err := TFTPPath(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("TFTPPath(%q) = %q, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("TFTPPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func FuzzTFTPPath(f *testing.F) {
	for _, s := range []string{"ipxe.efi", "/ipxe.efi", "../x", "a\\b", "%2e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name, err := TFTPPath(s)
		if err != nil {
			return
		}
		if !ipxe.IsBinary(name) || (s != name && s != "/"+name) {
			t.Fatalf("TFTPPath(%q) = %q", s, name)
		}
	})
}

// needTool fails (not skips) when a Debian tool is missing, naming the
// package to install.
func needTool(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s not found: apt-get install %s", tool, pkg)
	}
	return p
}

// debianIPXE is the iPXE binaries from Debian's package, as the server
// would get them with --ipxe-dir /usr/lib/ipxe.
func debianIPXE(t *testing.T) string {
	t.Helper()
	const dir = "/usr/lib/ipxe"
	if _, err := os.Stat(filepath.Join(dir, ipxe.EFI)); err != nil {
		t.Fatalf("%v: apt-get install ipxe", err)
	}
	return dir
}

type tftpFixture struct {
	port   string
	events *httpEvents
	logs   *syncbuf.Buffer
	dir    string
}

func startTFTP(t *testing.T) *tftpFixture {
	t.Helper()
	dir := debianIPXE(t)
	files, err := ipxe.Dir(dir)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f := &tftpFixture{events: &httpEvents{}, logs: &syncbuf.Buffer{}, dir: dir}
	known := map[netip.Addr]net.HardwareAddr{netip.MustParseAddr("127.0.0.1"): tMAC(t, macCP1)}
	srv, err := NewTFTP(TFTPConfig{Files: files, Timeout: time.Second, Retries: 3,
		Followed: func(a netip.Addr) (net.HardwareAddr, bool) { m, ok := known[a]; return m, ok },
		Log:      slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Recorder: f.events}, TFTPConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	f.port = strconv.Itoa(srv.Addr().(*net.UDPAddr).Port)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("TFTP Serve did not return after cancel")
		}
	})
	return f
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// The real atftp client downloads ipxe.efi with blksize 1468 and tsize:
// byte-identical, with the size announced in the OACK.
func TestTFTPAtftpDownload(t *testing.T) {
	atftp := needTool(t, "atftp", "atftp")
	f := startTFTP(t)
	want, err := os.ReadFile(filepath.Join(f.dir, ipxe.EFI))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "ipxe.efi")
	log, err := run(t, atftp, "--trace", "--option", "blksize 1468", "--option", "tsize 0",
		"-g", "-r", ipxe.EFI, "-l", out, "127.0.0.1", f.port)
	if err != nil {
		t.Fatalf("atftp: %v\n%s", err, log)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("downloaded %d bytes, differ from %s (%d bytes)", len(got), ipxe.EFI, len(want))
	}
	// atftp --trace prints the server's OACK.
	var oack string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "OACK") {
			oack = l
		}
	}
	if !strings.Contains(oack, "blksize: 1468") || !strings.Contains(oack, "tsize: "+strconv.Itoa(len(want))) {
		t.Fatalf("OACK with blksize 1468 and tsize %d not seen (%q):\n%s", len(want), oack, clip(log))
	}
	t.Logf("atftp: %s", oack)
	// And the data came in 1468-byte blocks (the last one shorter, maybe 0).
	if n, want := len(regexp.MustCompile(`received (\d+\. )?DATA <block`).FindAllString(log, -1)), len(want)/1468+1; n != want {
		t.Fatalf("%d DATA packets, want %d", n, want)
	}
	// The server logs and records the transfer when the client's last ACK
	// arrives, which may be just after the client has exited.
	deadline := time.Now().Add(5 * time.Second)
	for len(f.events.stages()) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if strings.Count(f.logs.String(), "tftp sent iPXE binary") != 1 {
		t.Fatalf("logs:\n%s", f.logs)
	}
	if got := f.events.stages(); !slices.Equal(got, []string{StageIPXE + ":"}) {
		t.Fatalf("events %v", got)
	}
	f.events.mu.Lock()
	e := f.events.events[0]
	f.events.mu.Unlock()
	if e.Addr.String() != "127.0.0.1" || e.MAC.String() != macCP1 || e.Detail != "tftp "+ipxe.EFI {
		t.Fatalf("event %+v", e)
	}
}

// tftp-hpa (no options: plain 512-byte blocks) gets undionly.kpxe; traversal
// and writes are refused.
func TestTFTPHpa(t *testing.T) {
	tftp := needTool(t, "tftp", "tftp-hpa")
	f := startTFTP(t)
	dir := t.TempDir()
	want, err := os.ReadFile(filepath.Join(f.dir, ipxe.BIOS))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "undionly.kpxe")
	log, err := run(t, tftp, "-m", "binary", "127.0.0.1", f.port, "-c", "get", ipxe.BIOS, out)
	if err != nil {
		t.Fatalf("tftp get: %v\n%s", err, log)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatalf("tftp-hpa download differs (%d vs %d bytes)\n%s", len(got), len(want), log)
	}

	for _, remote := range []string{"../../../../etc/passwd", "/etc/passwd", "..\\..\\etc\\passwd", "%2e%2e/%2e%2e/etc/passwd", "SOURCE", "ipxe.lkrn"} {
		local := filepath.Join(dir, "x")
		os.Remove(local)
		log, err := run(t, tftp, "-m", "binary", "127.0.0.1", f.port, "-c", "get", remote, local)
		// tftp-hpa exits 0 on a server error; the message and the absence
		// of data tell.
		if !strings.Contains(log, "not found") {
			t.Errorf("get %q: want a 'file not found' error, got %v:\n%s", remote, err, log)
		}
		if b, _ := os.ReadFile(local); len(b) > 0 {
			t.Errorf("get %q wrote %d bytes", remote, len(b))
		}
	}

	src := filepath.Join(dir, "upload")
	if err := os.WriteFile(src, []byte("evil"), 0o644); err != nil {
		t.Fatal(err)
	}
	log, _ = run(t, tftp, "-m", "binary", "127.0.0.1", f.port, "-c", "put", src, ipxe.EFI)
	if !strings.Contains(log, "does not support write") {
		t.Errorf("put: want a refusal, got:\n%s", log)
	}
	if got, _ := os.ReadFile(filepath.Join(f.dir, ipxe.EFI)); bytes.Equal(got, []byte("evil")) {
		t.Fatal("write request changed the served file")
	}
	if got := f.events.stages(); len(got) != 1 {
		t.Fatalf("events %v, want one ipxe fetch", got)
	}
}

// atftp's put is refused too, with an error exit.
func TestTFTPAtftpPutRefused(t *testing.T) {
	atftp := needTool(t, "atftp", "atftp")
	f := startTFTP(t)
	src := filepath.Join(t.TempDir(), "upload")
	if err := os.WriteFile(src, []byte("evil"), 0o644); err != nil {
		t.Fatal(err)
	}
	log, err := run(t, atftp, "-p", "-l", src, "-r", "new.efi", "127.0.0.1", f.port)
	if err == nil {
		t.Fatalf("atftp put succeeded:\n%s", log)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("atftp: %v", err)
	}
}

func TestNewTFTPErrors(t *testing.T) {
	if _, err := NewTFTP(TFTPConfig{}); err == nil {
		t.Error("NewTFTP without Files succeeded")
	}
	files, err := ipxe.Dir(debianIPXE(t))
	if err != nil {
		t.Fatal(err)
	}
	busy, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	_, err = NewTFTP(TFTPConfig{Files: files, Addr: busy.LocalAddr().String()})
	port := strconv.Itoa(busy.LocalAddr().(*net.UDPAddr).Port)
	if err == nil || !strings.Contains(err.Error(), "already in use") || !strings.Contains(err.Error(), port) {
		t.Fatalf("port in use: %v", err)
	}
}
