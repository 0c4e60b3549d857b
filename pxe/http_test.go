package pxe

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/dotfile/rackboot/internal/syncbuf"
)

var updateHTTPGolden = flag.Bool("update-http", false, "rewrite pxe/testdata/http golden scripts")

// rackBooter is the test's own Booter: machines by MAC, configs by name.
type rackBooter struct {
	mu      sync.Mutex
	specs   map[string]*BootSpec
	configs map[string][]byte
	asked   []Client
}

func (b *rackBooter) BootSpec(_ context.Context, c Client) (*BootSpec, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.asked = append(b.asked, c)
	s, ok := b.specs[c.MAC.String()]
	if !ok {
		return nil, ErrUnknownMachine
	}
	cp := *s
	return &cp, nil
}

func (b *rackBooter) Config(_ context.Context, name string) ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c, ok := b.configs[name]
	if !ok {
		return nil, ErrUnknownMachine
	}
	return c, nil
}

// dirAssets is a deliberately naive Assets: it joins the id to a directory.
// Only the handler's id check stands between a request and ../../etc/passwd.
type dirAssets string

func (d dirAssets) Open(id string) (ReadSeekCloser, error) {
	return os.Open(filepath.Join(string(d), filepath.FromSlash(id)))
}

type httpEvents struct {
	mu     sync.Mutex
	events []Event
}

func (l *httpEvents) Record(e Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (l *httpEvents) stages() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var s []string
	for _, e := range l.events {
		s = append(s, e.Stage+":"+e.Name)
	}
	return s
}

const (
	macCP1     = "52:54:00:00:00:01"
	macW1      = "52:54:00:00:00:02"
	macDone    = "52:54:00:00:00:03"
	macSan     = "52:54:00:00:00:04"
	macUnknown = "52:54:00:00:00:99"
	macOther   = "52:54:00:66:66:66" // a housemate's laptop
	uuidCP1    = "8f5b2a8e-1c2d-4e5f-9a0b-1c2d3e4f5a6b"
	configCP1  = "version: v1alpha1\nmachine:\n  token: cp1-very-secret-join-token\n"
	kernelID   = "talos/v1.13.0/376567988ad3/amd64/kernel"
	initrdID   = "talos/v1.13.0/376567988ad3/amd64/initramfs.xz"
	testCmd    = "talos.platform=metal console=ttyS0 talos.config={{.ConfigURL}} talos.events.sink={{.EventsAddr}} talos.logging.kernel=udp://{{.LogAddr}}"
)

type httpFixture struct {
	h      *HTTP
	booter *rackBooter
	events *httpEvents
	clock  *tokClock
	tokens *Tokens
	logs   *syncbuf.Buffer
	assets string
	neigh  StaticNeighbors
}

// fixtureNeighbors is the rack segment the HTTP tests see: cp1 at .50, a
// housemate at .51, w1 at .60; 192.0.2.0/24 is behind a router.
func fixtureNeighbors(t testing.TB) StaticNeighbors {
	return StaticNeighbors{
		netip.MustParseAddr("10.99.0.50"): tMAC(t, macCP1),
		netip.MustParseAddr("10.99.0.51"): tMAC(t, macOther),
		netip.MustParseAddr("10.99.0.60"): tMAC(t, macW1),
		netip.MustParseAddr("10.99.0.61"): nil, // an incomplete ARP entry
	}
}

func newHTTPFixture(t *testing.T) *httpFixture {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(kernelID)), 0o755); err != nil {
		t.Fatal(err)
	}
	for id, content := range map[string]string{kernelID: "KERNEL-BYTES", initrdID: "INITRD-BYTES"} {
		if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(id)), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	clk := newTokClock()
	tk := testTokens(t, clk)
	f := &httpFixture{
		booter: &rackBooter{
			specs: map[string]*BootSpec{
				macCP1:  {Name: "cp1", Kernel: kernelID, Initrd: []string{initrdID}, Cmdline: testCmd},
				macW1:   {Name: "w1", Kernel: kernelID, Initrd: []string{initrdID}, Cmdline: testCmd},
				macDone: {Name: "cp2", Installed: true, LocalBoot: LocalBootExit},
				macSan:  {Name: "cp3", Installed: true, LocalBoot: LocalBootSanboot},
			},
			// w1 has a boot spec but (like a machine just removed from the
			// rack) no config.
			configs: map[string][]byte{"cp1": []byte(configCP1)},
		},
		events: &httpEvents{},
		clock:  clk,
		tokens: tk,
		logs:   &syncbuf.Buffer{},
		assets: dir,
		neigh:  fixtureNeighbors(t),
	}
	h, err := NewHTTP(HTTPConfig{
		Neighbors:  f.neigh,
		Server:     "10.99.0.1:8080",
		EventsAddr: "10.99.0.1:4002",
		LogAddr:    "10.99.0.1:4003",
		Booter:     f.booter,
		Assets:     dirAssets(dir),
		IPXE:       fstest.MapFS{"ipxe.efi": {Data: []byte("EFI-BINARY")}, "SOURCE": {Data: []byte("src")}},
		Tokens:     tk,
		Log:        slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Recorder:   f.events,
		Now:        clk.Now,
		// DHCP knows w1 at .60 (as from its REQUEST in proxy mode).
		FollowedAddr: func(a netip.Addr) (net.HardwareAddr, bool) {
			if a == netip.MustParseAddr("10.99.0.60") {
				return tMAC(t, macW1), true
			}
			return nil, false
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.h = h
	return f
}

func (f *httpFixture) get(target, remote string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(http.MethodGet, target, nil)
	r.RemoteAddr = net.JoinHostPort(remote, "40000")
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	return w
}

func scriptURL(mac, uuid string) string {
	q := url.Values{"mac": {strings.ReplaceAll(mac, ":", "-")}, "uuid": {uuid}, "serial": {"SN 1"}, "arch": {"x86_64"}, "platform": {"efi"}}
	return "/ipxe?" + q.Encode()
}

var configURLRe = regexp.MustCompile(`talos\.config=(\S+)`)

// configPath extracts the /config request URI from a served script.
func configPath(t *testing.T, script string) string {
	t.Helper()
	m := configURLRe.FindStringSubmatch(script)
	if m == nil {
		t.Fatalf("no talos.config= in script:\n%s", script)
	}
	u, err := url.Parse(m[1])
	if err != nil {
		t.Fatal(err)
	}
	return u.RequestURI()
}

func goldenHTTP(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "http", name)
	if *updateHTTPGolden {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./pxe/ -run %s -update-http to create it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (-update-http to accept):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func TestHTTPScripts(t *testing.T) {
	f := newHTTPFixture(t)
	for _, tc := range []struct {
		golden, target string
		stage          string
	}{
		{"boot.ipxe", "/boot.ipxe", ""},
		{"machine-cp1.ipxe", scriptURL(macCP1, uuidCP1), StageScript + ":cp1"},
		{"local-exit.ipxe", scriptURL(macDone, ""), StageLocalBoot + ":cp2"},
		{"local-sanboot.ipxe", scriptURL(macSan, ""), StageLocalBoot + ":cp3"},
		{"unknown.ipxe", scriptURL(macUnknown, ""), StageDiscovered + ":"},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			before := len(f.events.stages())
			w := f.get(tc.target, "10.99.0.50")
			if w.Code != http.StatusOK {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			if !strings.HasPrefix(w.Body.String(), "#!ipxe\n") {
				t.Fatalf("not an iPXE script:\n%s", w.Body)
			}
			goldenHTTP(t, tc.golden, w.Body.Bytes())
			got := f.events.stages()[before:]
			if tc.stage == "" && len(got) != 0 || tc.stage != "" && !slices.Equal(got, []string{tc.stage}) {
				t.Fatalf("events %v, want [%s]", got, tc.stage)
			}
		})
	}
	// The booter saw the identity boot.ipxe sends.
	c := f.booter.asked[0]
	if c.MAC.String() != macCP1 || c.UUID != uuidCP1 || c.Serial != "SN 1" || c.Arch != ArchX64UEFI || c.Addr.String() != "10.99.0.50" {
		t.Fatalf("booter asked with %+v", c)
	}
	// The script names the initrd on the kernel line (UEFI, 2019 iPXE) and
	// carries a config URL bound to cp1.
	script := f.get(scriptURL(macCP1, uuidCP1), "10.99.0.50").Body.String()
	if !strings.Contains(script, "kernel http://10.99.0.1:8080/assets/"+kernelID+" initrd=initramfs.xz talos.platform=metal") ||
		!strings.Contains(script, "initrd --name initramfs.xz http://10.99.0.1:8080/assets/"+initrdID) ||
		!strings.Contains(script, "talos.events.sink=10.99.0.1:4002 talos.logging.kernel=udp://10.99.0.1:4003") {
		t.Fatalf("script:\n%s", script)
	}
	if w := f.get(configPath(t, script), "10.99.0.50"); w.Code != http.StatusOK || w.Body.String() != configCP1 {
		t.Fatalf("config: %d %q", w.Code, w.Body)
	}
}

// Asset fetches of a machine that was just given a script are recorded as
// its kernel and initrd stages; other fetches are served but not recorded.
func TestHTTPAssetStages(t *testing.T) {
	f := newHTTPFixture(t)
	f.get(scriptURL(macCP1, uuidCP1), "10.99.0.50")
	for _, a := range [][2]string{{kernelID, "KERNEL-BYTES"}, {initrdID, "INITRD-BYTES"}} {
		id, want := a[0], a[1]
		w := f.get("/assets/"+id, "10.99.0.50")
		if w.Code != http.StatusOK || w.Body.String() != want {
			t.Fatalf("GET %s: %d %q", id, w.Code, w.Body)
		}
	}
	f.get("/assets/"+kernelID, "10.99.0.77") // someone else
	want := []string{"script:cp1", "kernel:cp1", "initrd:cp1"}
	if got := f.events.stages(); !slices.Equal(got, want) {
		t.Fatalf("events %v, want %v", got, want)
	}
	w := f.get("/ipxe/ipxe.efi", "10.99.0.60")
	if w.Code != http.StatusOK || w.Body.String() != "EFI-BINARY" {
		t.Fatalf("GET /ipxe/ipxe.efi: %d %q", w.Code, w.Body)
	}
	f.events.mu.Lock()
	last := f.events.events[len(f.events.events)-1]
	f.events.mu.Unlock()
	if last.Stage != StageIPXE || last.Addr.String() != "10.99.0.60" || last.MAC.String() != macW1 {
		t.Fatalf("last event %+v, want ipxe from 10.99.0.60 with the MAC DHCP saw there (%s)", last, macW1)
	}
	// UEFI HTTP boot asks HEAD first: no event for it; an address DHCP
	// does not know gives an event without a MAC.
	n := len(f.events.stages())
	head := httptest.NewRequest(http.MethodHead, "/ipxe/ipxe.efi", nil)
	head.RemoteAddr = "10.99.0.60:40000"
	hw := httptest.NewRecorder()
	f.h.ServeHTTP(hw, head)
	if hw.Code != http.StatusOK || hw.Header().Get("Content-Length") != "10" {
		t.Fatalf("HEAD /ipxe/ipxe.efi: %d, Content-Length %q", hw.Code, hw.Header().Get("Content-Length"))
	}
	if got := len(f.events.stages()); got != n {
		t.Errorf("HEAD recorded %d event(s)", got-n)
	}
	f.get("/ipxe/ipxe.efi", "10.99.0.61")
	f.events.mu.Lock()
	last = f.events.events[len(f.events.events)-1]
	f.events.mu.Unlock()
	if last.Stage != StageIPXE || last.MAC != nil {
		t.Errorf("event for an address DHCP does not know: %+v", last)
	}
}

func TestHTTPConfigAccess(t *testing.T) {
	f := newHTTPFixture(t)
	const me = "10.99.0.50"
	script := f.get(scriptURL(macCP1, uuidCP1), me).Body.String()
	cfgPath := configPath(t, script)
	u, _ := url.Parse(cfgPath)
	token := u.Query().Get("t")
	with := func(key, val string) string {
		q := u.Query()
		q.Set(key, val)
		return "/config?" + q.Encode()
	}
	w1Script := f.get(scriptURL(macW1, ""), "10.99.0.60").Body.String()

	for _, tc := range []struct {
		name, target, from string
		want               int
	}{
		{"right", cfgPath, me, 200},
		{"retry", cfgPath, me, 200},
		{"spent, other address", cfgPath, "10.99.0.51", 403},
		{"forged token", with("t", "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), me, 403},
		{"no token", with("t", ""), me, 403},
		{"other mac", with("mac", "52-54-00-00-00-02"), me, 403},
		{"unknown mac", with("mac", "52-54-00-00-00-99"), me, 403},
		{"bad mac", with("mac", "zz"), me, 403},
		{"other uuid", with("uuid", "8f5b2a8e-1c2d-4e5f-9a0b-1c2d3e4f5a6c"), me, 403},
		{"valid token, machine gone", configPath(t, w1Script), me, 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := f.get(tc.target, tc.from)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d (%s)", w.Code, tc.want, w.Body)
			}
			if tc.want == 200 && w.Body.String() != configCP1 {
				t.Fatalf("body %q", w.Body)
			}
			if tc.want != 200 && strings.Contains(w.Body.String(), "secret") {
				t.Fatal("refusal leaks the config")
			}
		})
	}
	f.clock.Advance(DefaultTokenTTL + 1)
	if w := f.get(cfgPath, me); w.Code != 403 {
		t.Fatalf("expired: %d", w.Code)
	}
	// A new boot gets a new token; Consume (the machine has its config)
	// spends it.
	f.clock.Advance(1)
	cfgPath = configPath(t, f.get(scriptURL(macCP1, uuidCP1), me).Body.String())
	if w := f.get(cfgPath, me); w.Code != 200 {
		t.Fatalf("second boot: %d", w.Code)
	}
	f.clock.Advance(1)
	f.tokens.Consume("cp1")
	if w := f.get(cfgPath, me); w.Code != 403 {
		t.Fatalf("after Consume: %d", w.Code)
	}
	var configs int
	for _, s := range f.events.stages() {
		if s == "config:cp1" {
			configs++
		}
	}
	if configs != 3 {
		t.Fatalf("%d config events, want 3: %v", configs, f.events.stages())
	}
	logs := f.logs.String()
	if strings.Contains(logs, token) || strings.Contains(logs, "very-secret") {
		t.Fatalf("logs contain the token or the config:\n%s", logs)
	}
	if !strings.Contains(logs, "config refused") {
		t.Fatalf("refusals not logged:\n%s", logs)
	}
}

func TestHTTPRefusals(t *testing.T) {
	f := newHTTPFixture(t)
	secret := filepath.Join(filepath.Dir(f.assets), "secret")
	if err := os.WriteFile(secret, []byte("TOP-SECRET"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		method, target string
		want           int
	}{
		{"POST", "/boot.ipxe", 405},
		{"PUT", "/config", 405},
		{"GET", "/", 404},
		{"GET", "/nope", 404},
		{"GET", "/boot.ipxe/x", 404},
		{"GET", "/ipxe", 400},
		{"GET", "/ipxe?mac=zz", 400},
		{"GET", "/ipxe?mac=52-54-00-00-00-01&uuid=nope", 400},
		{"GET", "/assets/", 404},
		{"GET", "/assets/nope", 404},
		{"GET", "/assets/../secret", 404},
		{"GET", "/assets/talos/../../secret", 404},
		{"GET", "/assets/..%2fsecret", 404},
		{"GET", "/assets/%2e%2e/secret", 404},
		{"GET", "/assets//etc/passwd", 404},
		{"GET", "/assets/a%5c..%5csecret", 404},
		{"GET", "/assets/a%00b", 404},
		{"GET", "/ipxe/SOURCE", 404},
		{"GET", "/ipxe/../ipxe.efi", 404},
		{"GET", "/ipxe/undionly.kpxe", 404}, // a binary this FS lacks
	} {
		r := httptest.NewRequest(tc.method, "/", nil)
		u, err := url.ParseRequestURI(tc.target)
		if err != nil {
			t.Fatal(err)
		}
		r.URL = u
		r.RemoteAddr = "10.99.0.50:40000"
		w := httptest.NewRecorder()
		f.h.ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("%s %s: %d, want %d", tc.method, tc.target, w.Code, tc.want)
		}
		if strings.Contains(w.Body.String(), "TOP-SECRET") {
			t.Errorf("%s %s leaked a file outside the asset store", tc.method, tc.target)
		}
	}
	if got := f.events.stages(); len(got) != 0 {
		t.Fatalf("refused requests recorded events: %v", got)
	}
}

// A bad boot spec is an error for the operator, never a broken script.
func TestHTTPBadBootSpec(t *testing.T) {
	for name, spec := range map[string]*BootSpec{
		"cmdline too long":  {Name: "cp1", Kernel: kernelID, Initrd: []string{initrdID}, Cmdline: strings.Repeat("a", MaxCmdline)},
		"newline":           {Name: "cp1", Kernel: kernelID, Cmdline: "quiet\nshell"},
		"bad template":      {Name: "cp1", Kernel: kernelID, Cmdline: "{{.Nope}}"},
		"unclosed template": {Name: "cp1", Kernel: kernelID, Cmdline: "{{"},
		"bad kernel id":     {Name: "cp1", Kernel: "../vmlinuz"},
		"bad initrd id":     {Name: "cp1", Kernel: kernelID, Initrd: []string{"/abs"}},
		"no name":           {Kernel: kernelID},
		"name with newline": {Name: "cp1\nshell", Kernel: kernelID},
	} {
		t.Run(name, func(t *testing.T) {
			f := newHTTPFixture(t)
			f.booter.specs[macCP1] = spec
			w := f.get(scriptURL(macCP1, ""), "10.99.0.50")
			if w.Code != http.StatusInternalServerError {
				t.Fatalf("status %d, want 500:\n%s", w.Code, w.Body)
			}
			if strings.Contains(w.Body.String(), "#!ipxe") || len(f.events.stages()) != 0 {
				t.Fatalf("served a script or recorded %v", f.events.stages())
			}
		})
	}
	// Exactly at the limit is fine.
	f := newHTTPFixture(t)
	prefix := "initrd=initramfs.xz "
	f.booter.specs[macCP1] = &BootSpec{Name: "cp1", Kernel: kernelID, Initrd: []string{initrdID}, Cmdline: strings.Repeat("a", MaxCmdline-len(prefix))}
	if w := f.get(scriptURL(macCP1, ""), "10.99.0.50"); w.Code != 200 {
		t.Fatalf("at the limit: %d", w.Code)
	}
}

func TestHTTPNeedsConfig(t *testing.T) {
	tk := testTokens(t, newTokClock())
	ok := HTTPConfig{Server: "1.2.3.4:80", Booter: &rackBooter{}, Assets: dirAssets("/nonexistent"), Tokens: tk, Neighbors: StaticNeighbors{}}
	if _, err := NewHTTP(ok); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*HTTPConfig){
		"no server":   func(c *HTTPConfig) { c.Server = "" },
		"server port": func(c *HTTPConfig) { c.Server = "1.2.3.4" },
		"no booter":   func(c *HTTPConfig) { c.Booter = nil },
		"no assets":   func(c *HTTPConfig) { c.Assets = nil },
		"no tokens":   func(c *HTTPConfig) { c.Tokens = nil },
		"no L2 view":  func(c *HTTPConfig) { c.Neighbors = nil },
	} {
		c := ok
		mod(&c)
		if _, err := NewHTTP(c); err == nil {
			t.Errorf("%s: NewHTTP succeeded", name)
		}
	}
}

func TestParseIPXEQuery(t *testing.T) {
	for _, tc := range []struct {
		query   string
		wantErr bool
		want    Client
	}{
		{"mac=52-54-00-aa-bb-cc&uuid=8F5B2A8E-1C2D-4E5F-9A0B-1C2D3E4F5A6B&serial=ABC%20123&arch=x86_64&platform=efi", false,
			Client{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}, UUID: "8f5b2a8e-1c2d-4e5f-9a0b-1c2d3e4f5a6b", Serial: "ABC 123", Arch: ArchX64UEFI}},
		{"mac=52:54:00:aa:bb:cc&arch=i386&platform=pcbios", false, Client{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}, Arch: ArchBIOS}},
		{"mac=52-54-00-aa-bb-cc&uuid=00000000-0000-0000-0000-000000000000", false, Client{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}}},
		{"mac=52-54-00-aa-bb-cc&uuid=ffffffff-ffff-ffff-ffff-ffffffffffff", false, Client{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}}},
		{"mac=52-54-00-aa-bb-cc&serial=a%0Ab", false, Client{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}}},
		{"mac=52-54-00-aa-bb-cc&serial=%20%20", false, Client{MAC: net.HardwareAddr{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}}},
		{"", true, Client{}},
		{"mac=", true, Client{}},
		{"mac=52-54-00-aa-bb", true, Client{}},
		{"mac=00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", true, Client{}}, // InfiniBand: not served
		{"mac=52-54-00-aa-bb-cc&uuid=8f5b2a8e1c2d4e5f9a0b1c2d3e4f5a6b", true, Client{}},
		{"mac=52-54-00-aa-bb-cc&uuid=8f5b2a8e-1c2d-4e5f-9a0b-1c2d3e4f5a6g", true, Client{}},
		{"mac=52-54-00-aa-bb-cc&uuid=${uuid}", true, Client{}},
	} {
		q, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseIPXEQuery(q)
		if (err != nil) != tc.wantErr {
			t.Errorf("%q: err %v, wantErr %v", tc.query, err, tc.wantErr)
			continue
		}
		if err == nil && (got.MAC.String() != tc.want.MAC.String() || got.UUID != tc.want.UUID || got.Serial != tc.want.Serial || got.Arch != tc.want.Arch) {
			t.Errorf("%q: got %+v, want %+v", tc.query, got, tc.want)
		}
	}
}

func TestIPXEArch(t *testing.T) {
	for _, tc := range []struct {
		buildarch, platform string
		want                Arch
	}{
		{"i386", "pcbios", ArchBIOS},
		{"x86_64", "pcbios", ArchBIOS},
		{"x86_64", "efi", ArchX64UEFI},
		{"arm64", "efi", ArchARM64UEFI},
		{"i386", "efi", ArchUnknown},
		{"", "", ArchUnknown},
		{"x86_64", "", ArchUnknown},
	} {
		if got := IPXEArch(tc.buildarch, tc.platform); got != tc.want {
			t.Errorf("IPXEArch(%q, %q) = %v, want %v", tc.buildarch, tc.platform, got, tc.want)
		}
	}
}

func TestValidAssetID(t *testing.T) {
	for id, want := range map[string]bool{
		kernelID:                   true,
		"kernel":                   true,
		"a/b.c/d_e-f+g":            true,
		"":                         false,
		"/abs":                     false,
		"a/":                       false,
		"a//b":                     false,
		"..":                       false,
		"a/../b":                   false,
		"./a":                      false,
		"a\\b":                     false,
		"a\x00b":                   false,
		"a%2fb":                    false,
		"a b":                      false,
		"é":                        false,
		strings.Repeat("a", 513):   false,
		strings.Repeat("a/", 200):  false,
		strings.Repeat("ab/", 170): false,
	} {
		if got := ValidAssetID(id); got != want {
			t.Errorf("ValidAssetID(%q) = %v, want %v", clip(id), got, want)
		}
	}
}

// FuzzIPXEQuery: any query string parses without panic, and what is
// accepted is well formed (it is echoed into iPXE scripts and logs).
func FuzzIPXEQuery(f *testing.F) {
	f.Add("mac=52-54-00-aa-bb-cc&uuid=8f5b2a8e-1c2d-4e5f-9a0b-1c2d3e4f5a6b&serial=X&arch=x86_64&platform=efi")
	f.Add("t=abc&mac=52:54:00:aa:bb:cc")
	f.Add("mac=%0a&serial=%00")
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		if c, err := ParseIPXEQuery(q); err == nil {
			if len(c.MAC) != 6 {
				t.Fatalf("accepted MAC %v", c.MAC)
			}
			if c.UUID != "" && (len(c.UUID) != 36 || strings.ToLower(c.UUID) != c.UUID) {
				t.Fatalf("accepted UUID %q", c.UUID)
			}
			if checkScriptText("serial", c.Serial) != nil || len(c.Serial) > 128 {
				t.Fatalf("accepted serial %q", c.Serial)
			}
		}
		if tok, mac, uuid, err := ParseConfigQuery(q); err == nil {
			if tok == "" || len(mac) != 6 || (uuid != "" && len(uuid) != 36) {
				t.Fatalf("accepted %q %v %q", tok, mac, uuid)
			}
		}
	})
}

// FuzzHTTPAssetPath: no request path reaches a file outside the asset
// directory, even with a naive Assets.
func FuzzHTTPAssetPath(f *testing.F) {
	root := f.TempDir()
	assets := filepath.Join(root, "assets")
	if err := os.MkdirAll(filepath.Join(assets, "k"), 0o755); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "secret"), []byte("TOP-SECRET"), 0o600); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(assets, "k", "kernel"), []byte("KERNEL"), 0o644); err != nil {
		f.Fatal(err)
	}
	tk, _ := NewTokens(bytes.Repeat([]byte{1}, 32), TokenConfig{})
	h, err := NewHTTP(HTTPConfig{Server: "127.0.0.1:80", Booter: &rackBooter{}, Assets: dirAssets(assets), Tokens: tk, Neighbors: StaticNeighbors{}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("k/kernel")
	f.Add("../secret")
	f.Add("k/../../secret")
	f.Fuzz(func(t *testing.T, p string) {
		r := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/assets/" + p}, RemoteAddr: "127.0.0.1:1", Header: http.Header{}}
		r = r.WithContext(context.Background())
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if strings.Contains(w.Body.String(), "TOP-SECRET") {
			t.Fatalf("path %q reached a file outside the assets", p)
		}
		if w.Code == http.StatusOK && !ValidAssetID(p) {
			t.Fatalf("path %q served though invalid", p)
		}
	})
}

// errBooter fails every request: the handler answers 500, not a script.
type errBooter struct{}

func (errBooter) BootSpec(context.Context, Client) (*BootSpec, error) {
	return nil, errors.New("rack file unreadable")
}
func (errBooter) Config(context.Context, string) ([]byte, error) { return nil, fs.ErrPermission }

func TestHTTPBooterError(t *testing.T) {
	h, err := NewHTTP(HTTPConfig{Server: "1.2.3.4:80", Booter: errBooter{}, Assets: dirAssets(t.TempDir()), Tokens: testTokens(t, newTokClock()), Neighbors: StaticNeighbors{}})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", scriptURL(macCP1, ""), nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 500 {
		t.Fatalf("status %d", w.Code)
	}
}
