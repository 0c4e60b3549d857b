package pxe

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/dotfile/rackboot/internal/syncbuf"
)

type serverFixture struct {
	srv    *Server
	base   string // http://127.0.0.1:port
	booter *rackBooter
	events *httpEvents
	logs   *syncbuf.Buffer
	clock  *tokClock
	assets string
	state  string
	stop   func() error
}

type serverOpts struct {
	stateDir string
	clock    *tokClock
	assets   string
	opts     []Option
}

func startServer(t *testing.T, so serverOpts) *serverFixture {
	t.Helper()
	if so.stateDir == "" {
		so.stateDir = t.TempDir()
	}
	if so.clock == nil {
		so.clock = newTokClock()
	}
	if so.assets == "" {
		so.assets = t.TempDir()
	}
	f := &serverFixture{
		booter: &rackBooter{
			specs: map[string]*BootSpec{
				macCP1: {Name: "cp1", Kernel: kernelID, Initrd: []string{initrdID}, Cmdline: testCmd},
				macW1:  {Name: "w1", Kernel: kernelID, Initrd: []string{initrdID}, Cmdline: testCmd},
			},
			configs: map[string][]byte{"cp1": []byte(configCP1)},
		},
		events: &httpEvents{}, logs: &syncbuf.Buffer{}, clock: so.clock, assets: so.assets, state: so.stateDir,
	}
	srv, err := New(Config{
		ServerIP:   netip.MustParseAddr("127.0.0.1"),
		HTTPAddr:   "127.0.0.1:0",
		TFTPAddr:   "127.0.0.1:0",
		EventsAddr: "127.0.0.1:4002",
		LogAddr:    "127.0.0.1:4003",
		StateDir:   so.stateDir,
		IPXE:       fstest.MapFS{"ipxe.efi": {Data: []byte("EFI-BINARY")}},
		Log:        slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Recorder:   f.events,
		Now:        so.clock.Now,
		// Loopback stands for the rack's segment: cp1 at .1, a
		// housemate at .2, w1 at .3.
		Neighbors: StaticNeighbors{
			netip.MustParseAddr("127.0.0.1"): tMAC(t, macCP1),
			netip.MustParseAddr("127.0.0.2"): tMAC(t, macOther),
			netip.MustParseAddr("127.0.0.3"): tMAC(t, macW1),
		},
	}, f.booter, dirAssets(so.assets), so.opts...)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = srv
	f.base = "http://" + srv.HTTPAddr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	stopped := false
	var serveErr error
	f.stop = func() error {
		if stopped {
			return serveErr
		}
		stopped = true
		cancel()
		select {
		case serveErr = <-done:
		case <-time.After(15 * time.Second):
			serveErr = errors.New("Serve did not return 15 s after cancel")
		}
		return serveErr
	}
	t.Cleanup(func() {
		if err := f.stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return f
}

// curl runs the real curl; it returns the HTTP status and the body.
func curl(t *testing.T, args ...string) (int, string) {
	t.Helper()
	bin := needTool(t, "curl", "curl")
	out := filepath.Join(t.TempDir(), "body")
	args = append([]string{"-s", "-S", "--max-time", "60", "-o", out, "-w", "%{http_code}"}, args...)
	code, err := run(t, bin, args...)
	if err != nil {
		t.Fatalf("curl %v: %v\n%s", args, err, code)
	}
	n, err := strconv.Atoi(strings.TrimSpace(code))
	if err != nil {
		t.Fatalf("curl %v: status %q", args, code)
	}
	body, _ := os.ReadFile(out)
	return n, string(body)
}

func writeAsset(t *testing.T, dir, id string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(id))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestServerCurlAssets(t *testing.T) {
	f := startServer(t, serverOpts{})
	data := make([]byte, 1<<20+123)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	writeAsset(t, f.assets, kernelID, data)
	url := f.base + "/assets/" + kernelID

	code, body := curl(t, url)
	if code != 200 || sha256.Sum256([]byte(body)) != sha256.Sum256(data) {
		t.Fatalf("full download: %d, %d bytes (want %d, same sha256)", code, len(body), len(data))
	}
	code, body = curl(t, "-r", "0-99", url)
	if code != 206 || body != string(data[:100]) {
		t.Fatalf("range 0-99: %d, %d bytes", code, len(body))
	}
	code, body = curl(t, "-r", fmt.Sprintf("%d-", len(data)-10), url)
	if code != 206 || body != string(data[len(data)-10:]) {
		t.Fatalf("suffix range: %d, %q", code, body)
	}
	code, body = curl(t, "-I", url)
	if code != 200 || !strings.Contains(strings.ToLower(body), "content-length: "+strconv.Itoa(len(data))) ||
		!strings.Contains(strings.ToLower(body), "accept-ranges: bytes") {
		t.Fatalf("HEAD: %d\n%s", code, body)
	}
	if code, _ := curl(t, f.base+"/assets/talos/nope"); code != 404 {
		t.Fatalf("unknown asset: %d", code)
	}
	for _, p := range []string{
		"/assets/../../../../etc/passwd",
		"/assets/talos/../../../../../etc/passwd",
		"/assets/..%2f..%2f..%2f..%2fetc%2fpasswd",
		"/assets/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
		"/ipxe/../../../etc/passwd",
		"/ipxe/..%2f..%2fetc%2fpasswd",
	} {
		code, body := curl(t, "--path-as-is", f.base+p)
		if code == 200 || strings.Contains(body, "root:") {
			t.Errorf("%s: %d %q", p, code, clip(body))
		}
	}
	if code, body := curl(t, f.base+"/ipxe/ipxe.efi"); code != 200 || body != "EFI-BINARY" {
		t.Fatalf("/ipxe/ipxe.efi: %d %q", code, body)
	}
}

// Serving a 100 MB asset streams it: the heap does not grow by its size.
func TestServerLargeAssetMemory(t *testing.T) {
	f := startServer(t, serverOpts{})
	const size = 100 << 20
	p := writeAsset(t, f.assets, initrdID, nil)
	if err := os.Truncate(p, size); err != nil { // sparse: zeros
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	bin := needTool(t, "curl", "curl")
	out, err := run(t, bin, "-s", "-S", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", f.base+"/assets/"+initrdID)
	if err != nil {
		t.Fatalf("curl: %v %s", err, out)
	}
	runtime.ReadMemStats(&after)
	if out != "200 "+strconv.Itoa(size) {
		t.Fatalf("curl: %q, want 200 %d", out, size)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("serving %d MiB allocated %.2f MiB in total", size>>20, float64(alloc)/(1<<20))
	if alloc > 20<<20 {
		t.Fatalf("serving a %d MiB asset allocated %d MiB: it is read into memory, not streamed", size>>20, alloc>>20)
	}
}

// Config access control with the real curl, from the right and a wrong
// source address; logs never show the token or the config.
func TestServerCurlConfig(t *testing.T) {
	f := startServer(t, serverOpts{})
	code, script := curl(t, f.base+scriptURL(macCP1, uuidCP1))
	if code != 200 {
		t.Fatalf("script: %d\n%s", code, script)
	}
	cfgURL := configURLRe.FindStringSubmatch(script)
	if cfgURL == nil || !strings.HasPrefix(cfgURL[1], f.base+"/config?") {
		t.Fatalf("no config URL on %s in:\n%s", f.base, script)
	}
	u, _ := url.Parse(cfgURL[1])
	token := u.Query().Get("t")
	with := func(key, val string) string {
		q := u.Query()
		q.Set(key, val)
		return f.base + "/config?" + q.Encode()
	}
	_, w1Script := curl(t, "--interface", "127.0.0.3", f.base+scriptURL(macW1, ""))

	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"right", []string{cfgURL[1]}, 200},
		{"retry", []string{cfgURL[1]}, 200},
		{"spent, other address", []string{"--interface", "127.0.0.2", cfgURL[1]}, 403},
		{"wrong token", []string{with("t", token[:len(token)-2]+"AA")}, 403},
		{"other mac", []string{with("mac", "52-54-00-00-00-02")}, 403},
		{"unknown mac", []string{with("mac", "52-54-00-00-00-99")}, 403},
		{"machine without config", []string{configURLRe.FindStringSubmatch(w1Script)[1]}, 404},
	} {
		code, body := curl(t, tc.args...)
		if code != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, code, tc.want)
		}
		if (tc.want == 200) != (body == configCP1) {
			t.Errorf("%s: body %q", tc.name, clip(body))
		}
	}
	f.clock.Advance(DefaultTokenTTL + time.Second)
	if code, body := curl(t, cfgURL[1]); code != 403 || body == configCP1 {
		t.Errorf("expired: %d", code)
	}
	logs := f.logs.String()
	if strings.Contains(logs, token) || strings.Contains(logs, "very-secret") {
		t.Fatalf("logs contain the token or the config:\n%s", logs)
	}
	for _, want := range []string{"config served", "config refused", "127.0.0.2"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
}

// A restart of serve in the middle of a boot: the machine got its script
// (and token) from the first process and fetches its config from the second.
func TestServerRestartKeepsTokens(t *testing.T) {
	state, assets, clk := t.TempDir(), t.TempDir(), newTokClock()
	f1 := startServer(t, serverOpts{stateDir: state, clock: clk, assets: assets})
	_, script := curl(t, f1.base+scriptURL(macCP1, uuidCP1))
	m := configURLRe.FindStringSubmatch(script)
	if m == nil {
		t.Fatalf("script:\n%s", script)
	}
	if err := f1.stop(); err != nil {
		t.Fatal(err)
	}
	f2 := startServer(t, serverOpts{stateDir: state, clock: clk, assets: assets})
	u, _ := url.Parse(m[1])
	if code, body := curl(t, f2.base+u.RequestURI()); code != 200 || body != configCP1 {
		t.Fatalf("after restart: %d %q", code, clip(body))
	}
}

func TestServerServicesAndShutdown(t *testing.T) {
	stopped := make(chan struct{})
	f := startServer(t, serverOpts{opts: []Option{
		WithHandler("GET /status", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "status page") })),
		WithService("sink", func(ctx context.Context) error { <-ctx.Done(); close(stopped); return ctx.Err() }),
	}})
	if code, body := curl(t, f.base+"/status"); code != 200 || body != "status page" {
		t.Fatalf("/status: %d %q", code, body)
	}
	if code, body := curl(t, f.base+"/boot.ipxe"); code != 200 || !strings.Contains(body, f.base+"/ipxe?mac=") {
		t.Fatalf("/boot.ipxe: %d %q", code, body)
	}
	if f.srv.TFTPAddr() == nil || f.srv.Tokens() == nil {
		t.Fatal("TFTP address or tokens missing")
	}
	start := time.Now()
	if err := f.stop(); err != nil {
		t.Fatalf("Serve after cancel: %v", err)
	}
	t.Logf("shutdown took %v", time.Since(start))
	select {
	case <-stopped:
	default:
		t.Fatal("service still running after Serve returned")
	}
	if _, err := net.Dial("tcp", f.srv.HTTPAddr().String()); err == nil {
		t.Fatal("HTTP still accepting after shutdown")
	}
}

// A failing service stops the whole server, and Serve says which one.
func TestServerServiceFailure(t *testing.T) {
	boom := errors.New("port 67 in use")
	f := startServer(t, serverOpts{opts: []Option{
		WithService("dhcp", func(context.Context) error { return boom }),
	}})
	done := make(chan error, 1)
	go func() { done <- f.stop() }()
	err := <-done
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "dhcp") {
		t.Fatalf("Serve = %v, want the dhcp error", err)
	}
	f.stop = func() error { return nil }
}

func TestServerStartupErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := strconv.Itoa(busy.Addr().(*net.TCPAddr).Port)
	base := Config{ServerIP: netip.MustParseAddr("127.0.0.1"), HTTPAddr: "127.0.0.1:0", TFTPAddr: "127.0.0.1:0",
		StateDir: t.TempDir(), IPXE: fstest.MapFS{"ipxe.efi": {Data: []byte("x")}}, Neighbors: StaticNeighbors{}}
	assets := dirAssets(t.TempDir())

	cfg := base
	cfg.HTTPAddr = busy.Addr().String()
	_, err = New(cfg, &rackBooter{}, assets)
	if err == nil || !strings.Contains(err.Error(), "port "+port+" is already in use") {
		t.Fatalf("HTTP port in use: %v", err)
	}

	cfg = base
	cfg.ServerIP = netip.Addr{}
	cfg.HTTPAddr = ":0"
	if _, err := New(cfg, &rackBooter{}, assets); err == nil || !strings.Contains(err.Error(), "server IP") {
		t.Fatalf("no server IP: %v", err)
	}

	if _, err := New(base, &rackBooter{}, assets, WithHandler("/", http.NotFoundHandler())); err == nil {
		t.Fatal("mounting over / succeeded")
	}

	// The TFTP port busy: the HTTP socket bound first is released again.
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg = base
	cfg.TFTPAddr = udp.LocalAddr().String()
	cfg.HTTPAddr = ln.Addr().String()
	ln.Close()
	if _, err := New(cfg, &rackBooter{}, assets); err == nil || !strings.Contains(err.Error(), "TFTP") {
		t.Fatalf("TFTP port in use: %v", err)
	}
	again, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		t.Fatalf("HTTP socket not released after a failed New: %v", err)
	}
	again.Close()
}

func TestListenError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{&net.OpError{Op: "listen", Err: os.NewSyscallError("bind", syscall.EADDRINUSE)}, "udp port 69 is already in use"},
		{&net.OpError{Op: "listen", Err: os.NewSyscallError("bind", syscall.EACCES)}, "needs root or CAP_NET_BIND_SERVICE"},
		{errors.New("other"), "listen on udp :69"},
	} {
		got := listenError("TFTP", "udp", ":69", tc.err)
		if !strings.Contains(got.Error(), tc.want) || !errors.Is(got, tc.err) {
			t.Errorf("listenError(%v) = %v, want %q and wrapping", tc.err, got, tc.want)
		}
	}
}
