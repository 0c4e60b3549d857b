package pxe

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/dotfile/rackboot/pxe/ipxe"
)

// MaxCmdline is the longest kernel command line rackboot hands out, in
// bytes: Linux's COMMAND_LINE_SIZE on x86-64 is 2048 including the
// terminating NUL (arch/x86/include/asm/setup.h; the boot protocol's
// cmdline_size is 2047), and a longer line is cut, dropping whatever comes
// last (talos.config=). arm64 takes at least as much (2048 in older kernels,
// 4096 in current ones), so one limit serves both. The ISO/USB images
// (imager) and validate (profiles) use the same limit.
const MaxCmdline = 2048 - 1

// Seconds an iPXE client waits before asking again.
const (
	retryScriptSeconds  = 5  // boot.ipxe: the server did not answer
	retryUnknownSeconds = 30 // an unknown machine, waiting to be added
)

// HTTPConfig configures the HTTP side: iPXE scripts, boot assets, the iPXE
// binaries and the token-protected configs.
type HTTPConfig struct {
	// Server is host:port machines use to reach this HTTP server (e.g.
	// "10.99.0.1:8080"); every URL in scripts and on command lines uses it.
	Server string
	// EventsAddr and LogAddr are host:port of the Talos events sink and kernel
	// log receiver, for {{.EventsAddr}} and {{.LogAddr}} in BootSpec.Cmdline.
	EventsAddr string
	LogAddr    string

	Booter Booter
	// Discovery, when set, boots machines the Booter does not know
	// (the discovery boot, no config); nil tells them to wait and ask again.
	Discovery Discoverer
	Assets    Assets
	// IPXE holds the iPXE binaries for GET /ipxe/<file> (UEFI HTTP boot);
	// nil serves none.
	IPXE fs.FS
	// Tokens guards /config. Required.
	Tokens *Tokens
	// Neighbors is the rack segment's layer-2 view: a script with a config
	// token goes only to the NIC that owns the MAC it names. Required.
	Neighbors Neighbors
	// LeaseOf, in full-DHCP mode, returns rackboot's own lease for a MAC;
	// the script request must then come from that address.
	LeaseOf func(mac net.HardwareAddr) (netip.Addr, bool)

	Log      *slog.Logger     // default: discard
	Recorder Recorder         // default: none
	Now      func() time.Time // default: time.Now (only for event times)
	// Followed, when set, is called with the MAC of every client that asks
	// for its boot script (the DHCP side uses it to tell that a client
	// followed our offer).
	Followed func(mac net.HardwareAddr)
	// FollowedAddr, when set, returns the MAC of the client at an address
	// as DHCP saw it (DHCPServer.FollowedAddr): UEFI HTTP boot firmware
	// fetching /ipxe/<file> sends no MAC, and without it the event could
	// not be put on the machine's timeline.
	FollowedAddr func(addr netip.Addr) (net.HardwareAddr, bool)
}

// HTTP is the HTTP handler. Routes (GET and HEAD only):
//
//	/boot.ipxe        generic iPXE script: chains to /ipxe with the machine's identity
//	/ipxe?mac=&uuid=&serial=&arch=&platform=
//	                  the machine's own script (boot, local disk, or "unknown")
//	/ipxe/<file>      an iPXE binary (UEFI HTTP boot)
//	/assets/<id>      a kernel or initramfs, with Range support
//	/config?t=&mac=&uuid=
//	                  the machine's config, behind its token
//
// Anything else is 404.
type HTTP struct {
	cfg  HTTPConfig
	log  *slog.Logger
	tmpl *template.Template

	mu    sync.Mutex
	boots map[netip.Addr]bootRecord // last script served per address
}

// bootRecord maps an address's asset fetches to the machine it booted.
type bootRecord struct {
	name    string
	mac     net.HardwareAddr
	kernel  string
	initrds []string
	at      time.Time
}

// NewHTTP checks cfg and returns the handler.
func NewHTTP(cfg HTTPConfig) (*HTTP, error) {
	if cfg.Server == "" {
		return nil, errors.New("HTTP config: Server (host:port machines reach) is required")
	}
	if _, _, err := net.SplitHostPort(cfg.Server); err != nil {
		return nil, fmt.Errorf("HTTP config: Server %q: %w", cfg.Server, err)
	}
	if cfg.Booter == nil || cfg.Assets == nil || cfg.Tokens == nil || cfg.Neighbors == nil {
		return nil, errors.New("HTTP config: Booter, Assets, Tokens and Neighbors are required")
	}
	tm, err := ipxe.Templates()
	if err != nil {
		return nil, err
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
	return &HTTP{cfg: cfg, log: cfg.Log, tmpl: tm, boots: map[netip.Addr]bootRecord{}}, nil
}

func (h *HTTP) base() string { return "http://" + h.cfg.Server }

func (h *HTTP) record(e Event) {
	e.Time = h.cfg.Now()
	h.cfg.Recorder.Record(e)
}

// ServeHTTP routes the request.
func (h *HTTP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	addr := remoteAddr(r)
	// The query of /config carries the token: never log it.
	h.log.Debug("http request", "method", r.Method, "path", r.URL.Path, "addr", addr)
	p := r.URL.Path
	switch {
	case p == "/boot.ipxe":
		h.serveBootScript(w)
	case p == "/ipxe":
		h.serveMachineScript(w, r, addr)
	case strings.HasPrefix(p, "/ipxe/"):
		h.serveIPXE(w, r, addr, strings.TrimPrefix(p, "/ipxe/"))
	case strings.HasPrefix(p, "/assets/"):
		h.serveAsset(w, r, addr, strings.TrimPrefix(p, "/assets/"))
	case p == "/config":
		h.serveConfig(w, r, addr)
	default:
		http.NotFound(w, r)
	}
}

func remoteAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func writeScript(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(body)
}

func (h *HTTP) render(name string, data any) ([]byte, error) {
	var b bytes.Buffer
	if err := h.tmpl.ExecuteTemplate(&b, name, data); err != nil {
		return nil, fmt.Errorf("render %s: %w", name, err)
	}
	return b.Bytes(), nil
}

func (h *HTTP) serveBootScript(w http.ResponseWriter) {
	b, err := h.render("boot.ipxe.tmpl", map[string]any{"Base": h.base(), "RetrySeconds": retryScriptSeconds})
	if err != nil {
		h.log.Error("boot script", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	writeScript(w, b)
}

func (h *HTTP) serveMachineScript(w http.ResponseWriter, r *http.Request, addr netip.Addr) {
	c, err := ParseIPXEQuery(r.URL.Query())
	if err != nil {
		h.log.Info("bad iPXE script request", "addr", addr, "err", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.Addr = addr
	if h.cfg.Followed != nil {
		h.cfg.Followed(c.MAC)
	}
	log := h.log.With("mac", c.MAC.String(), "addr", addr)
	spec, err := h.cfg.Booter.BootSpec(r.Context(), c)
	if errors.Is(err, ErrUnknownMachine) {
		h.serveUnknown(w, r, c, log)
		return
	}
	var be *BootError
	if errors.As(err, &be) && checkScriptText("message", be.Msg) == nil && checkScriptText("name", be.Name) == nil {
		log.Warn("machine cannot boot", "name", be.Name, "reason", be.Msg)
		h.record(Event{Name: be.Name, Stage: StageCannotBoot, Detail: be.Msg})
		b, err := h.render("blocked.ipxe.tmpl", map[string]any{"Name": be.Name, "Message": be.Msg, "RetrySeconds": retryUnknownSeconds})
		if err != nil {
			log.Error("cannot-boot script", "err", err)
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		writeScript(w, b)
		return
	}
	if err != nil {
		log.Error("boot spec", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if !spec.Installed {
		if err := h.checkOwner(c, spec); err != nil {
			log.Warn("boot script withheld", "name", spec.Name, "reason", err)
			h.record(Event{Name: spec.Name, Stage: StageDenied,
				Detail: fmt.Sprintf("boot script for MAC %s asked from %s: %v", c.MAC, addr, err)})
			h.writeUnknown(w, c, log)
			return
		}
	}
	b, rec, err := h.machineScript(c, spec)
	if err != nil {
		log.Error("boot script", "name", spec.Name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if spec.Installed {
		log.Info("sending installed machine to its local disk", "name", spec.Name, "method", localBoot(spec.LocalBoot))
		h.record(Event{MAC: c.MAC, Name: spec.Name, Addr: addr, Stage: StageLocalBoot, Detail: string(localBoot(spec.LocalBoot))})
	} else {
		h.remember(addr, rec)
		log.Info("boot script served", "name", spec.Name, "kernel", spec.Kernel)
		h.record(Event{MAC: c.MAC, Name: spec.Name, Addr: addr, Stage: StageScript, Detail: "kernel " + spec.Kernel})
	}
	writeScript(w, b)
}

// serveUnknown answers a machine the Booter does not know: the discovery
// boot when there is one for it, else the waiting script. Either way it
// gets no token and no config.
func (h *HTTP) serveUnknown(w http.ResponseWriter, r *http.Request, c Client, log *slog.Logger) {
	ident := fmt.Sprintf("uuid=%s serial=%q arch=%s", c.UUID, c.Serial, c.Arch)
	var (
		spec *BootSpec
		err  error
	)
	if h.cfg.Discovery != nil {
		spec, err = h.cfg.Discovery.DiscoveryBoot(r.Context(), c)
	}
	b, kernel, why := h.decideUnknown(c, spec, err)
	if b == nil {
		log.Info("unknown machine asked to boot", "uuid", c.UUID, "serial", c.Serial, "arch", c.Arch.String(), "discovery", why)
		detail := ident
		if why != "" {
			detail += " (no discovery boot: " + why + ")"
		}
		h.record(Event{MAC: c.MAC, Addr: c.Addr, Stage: StageDiscovered, Detail: detail})
		h.writeUnknown(w, c, log)
		return
	}
	log.Info("unknown machine asked to boot: discovery boot", "uuid", c.UUID, "serial", c.Serial, "arch", c.Arch.String(), "kernel", kernel)
	h.record(Event{MAC: c.MAC, Addr: c.Addr, Stage: StageDiscoveryBoot, Detail: ident + " kernel=" + kernel})
	writeScript(w, b)
}

// decideUnknown is the discovery decision for an unknown machine, given
// what the Discoverer answered (nil, nil: no discovery): the discovery
// script and its kernel, or nil and why not ("" when discovery is off).
func (h *HTTP) decideUnknown(c Client, spec *BootSpec, err error) (script []byte, kernel, why string) {
	switch {
	case h.cfg.Discovery == nil:
		return nil, "", ""
	case err != nil:
		var be *BootError
		if errors.As(err, &be) {
			return nil, "", be.Msg
		}
		return nil, "", err.Error()
	case spec == nil:
		return nil, "", "the discovery boot has nothing for this machine"
	}
	b, err := h.discoveryScript(c, spec)
	if err != nil {
		h.log.Error("discovery boot script", "mac", c.MAC.String(), "err", err)
		return nil, "", err.Error()
	}
	return b, spec.Kernel, ""
}

// discoveryData is what a discovery boot's Cmdline template sees: no
// ConfigURL, so a template naming it fails to render.
type discoveryData struct {
	EventsAddr string
	LogAddr    string
	Server     string
}

// discoveryScript renders the discovery boot. It mints no token; a
// command line that would reach this server's /config is refused.
func (h *HTTP) discoveryScript(c Client, spec *BootSpec) ([]byte, error) {
	if !ValidAssetID(spec.Kernel) {
		return nil, fmt.Errorf("discovery boot: bad kernel asset id %q", spec.Kernel)
	}
	initrds, err := h.initrdLines(spec.Initrd)
	if err != nil {
		return nil, fmt.Errorf("discovery boot: %w", err)
	}
	cmdline, err := RenderCmdline(spec.Cmdline, discoveryData{EventsAddr: h.cfg.EventsAddr, LogAddr: h.cfg.LogAddr, Server: h.cfg.Server})
	if err != nil {
		return nil, fmt.Errorf("discovery boot: kernel command line: %w", err)
	}
	if strings.Contains(cmdline, h.cfg.Server+"/config") {
		return nil, errors.New("discovery boot: the kernel command line points at the config URL; a discovery boot gets no config")
	}
	var args strings.Builder
	for _, in := range initrds {
		args.WriteString("initrd=" + in.Name + " ")
	}
	args.WriteString(cmdline)
	if n := args.Len(); n > MaxCmdline {
		return nil, fmt.Errorf("discovery boot: kernel command line is %d bytes, over the %d-byte limit", n, MaxCmdline)
	}
	return h.render("discovery.ipxe.tmpl", map[string]any{
		"MAC":       c.MAC.String(),
		"KernelURL": h.base() + "/assets/" + spec.Kernel,
		"Initrds":   initrds,
		"Cmdline":   cmdline,
	})
}

// initrdLines names each initrd for iPXE and the kernel line.
func (h *HTTP) initrdLines(ids []string) ([]initrdLine, error) {
	var initrds []initrdLine
	used := map[string]bool{}
	for i, id := range ids {
		if !ValidAssetID(id) {
			return nil, fmt.Errorf("bad initrd asset id %q", id)
		}
		// iPXE names the image; under UEFI an iPXE from 2019 (QEMU's NIC
		// ROMs, old flashed NICs) needs initrd=<name> on the kernel line
		// for the EFI stub to find it (2025's hands it over by LoadFile2).
		name := path.Base(id)
		if used[name] {
			name = fmt.Sprintf("initrd%d-%s", i, name)
		}
		used[name] = true
		initrds = append(initrds, initrdLine{Name: name, URL: h.base() + "/assets/" + id})
	}
	return initrds, nil
}

// writeUnknown answers with the script of a machine rackboot has no config
// for: it waits and asks again.
func (h *HTTP) writeUnknown(w http.ResponseWriter, c Client, log *slog.Logger) {
	b, err := h.render("unknown.ipxe.tmpl", map[string]any{"MAC": c.MAC.String(), "RetrySeconds": retryUnknownSeconds})
	if err != nil {
		log.Error("unknown-machine script", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	writeScript(w, b)
}

// checkOwner asks the layer-2 view whether c comes from the NIC that owns
// the MAC it names.
func (h *HTTP) checkOwner(c Client, spec *BootSpec) error {
	oc := OwnerCheck{Claimed: c.MAC, Allowed: spec.MACs, Addr: c.Addr}
	oc.Neighbor, oc.NeighErr = h.cfg.Neighbors.Neighbor(c.Addr)
	if h.cfg.LeaseOf != nil {
		oc.FullDHCP = true
		oc.Lease, oc.LeaseFound = h.cfg.LeaseOf(c.MAC)
	}
	return CheckOwner(oc)
}

func localBoot(m LocalBoot) LocalBoot {
	if m == LocalBootSanboot {
		return m
	}
	return LocalBootExit
}

// cmdlineData is what a BootSpec.Cmdline template sees.
type cmdlineData struct {
	ConfigURL  string // token-protected config URL
	EventsAddr string // host:port of the events sink
	LogAddr    string // host:port of the kernel log receiver
	Server     string // host:port of this HTTP server
}

type initrdLine struct{ Name, URL string }

// machineScript renders the script for a known machine (and mints its
// config token).
func (h *HTTP) machineScript(c Client, spec *BootSpec) ([]byte, bootRecord, error) {
	if err := checkScriptText("machine name", spec.Name); err != nil || spec.Name == "" {
		return nil, bootRecord{}, fmt.Errorf("boot spec: bad machine name %q", spec.Name)
	}
	if spec.Installed {
		b, err := h.render("local.ipxe.tmpl", map[string]any{"Name": spec.Name, "Method": string(localBoot(spec.LocalBoot))})
		return b, bootRecord{}, err
	}
	if !ValidAssetID(spec.Kernel) {
		return nil, bootRecord{}, fmt.Errorf("boot spec for %s: bad kernel asset id %q", spec.Name, spec.Kernel)
	}
	initrds, err := h.initrdLines(spec.Initrd)
	if err != nil {
		return nil, bootRecord{}, fmt.Errorf("boot spec for %s: %w", spec.Name, err)
	}

	token, err := h.cfg.Tokens.Mint(TokenBinding{Name: spec.Name, MAC: c.MAC, UUID: c.UUID})
	if err != nil {
		return nil, bootRecord{}, err
	}
	cmdline, err := RenderCmdline(spec.Cmdline, cmdlineData{
		ConfigURL:  ConfigURL(h.cfg.Server, token, c.MAC, c.UUID),
		EventsAddr: h.cfg.EventsAddr,
		LogAddr:    h.cfg.LogAddr,
		Server:     h.cfg.Server,
	})
	if err != nil {
		return nil, bootRecord{}, fmt.Errorf("kernel command line for %s: %w", spec.Name, err)
	}
	var args strings.Builder
	for _, in := range initrds {
		args.WriteString("initrd=" + in.Name + " ")
	}
	args.WriteString(cmdline)
	if n := args.Len(); n > MaxCmdline {
		return nil, bootRecord{}, fmt.Errorf("kernel command line for %s is %d bytes, over the %d-byte limit", spec.Name, n, MaxCmdline)
	}
	b, err := h.render("machine.ipxe.tmpl", map[string]any{
		"Name":      spec.Name,
		"KernelURL": h.base() + "/assets/" + spec.Kernel,
		"Initrds":   initrds,
		"Cmdline":   cmdline,
	})
	if err != nil {
		return nil, bootRecord{}, err
	}
	return b, bootRecord{name: spec.Name, mac: c.MAC, kernel: spec.Kernel, initrds: spec.Initrd}, nil
}

// ConfigURL is the talos.config= URL for a token. The MAC and UUID are
// written literally, not as Talos's ${mac}/${uuid}: the command line passes
// through iPXE first, which expands ${...} everywhere on a line, so Talos
// would never see the variables anyway. The literal values are the ones the
// token is bound to.
func ConfigURL(server, token string, mac net.HardwareAddr, uuid string) string {
	q := url.Values{"t": {token}, "mac": {macHexhyp(mac)}}
	if uuid != "" {
		q.Set("uuid", uuid)
	}
	return "http://" + server + "/config?" + q.Encode()
}

func macHexhyp(mac net.HardwareAddr) string { return strings.ReplaceAll(mac.String(), ":", "-") }

// RenderCmdline executes a BootSpec.Cmdline template. The result must be one
// line of printable text (it becomes an iPXE script line).
func RenderCmdline(tmpl string, data any) (string, error) {
	t, err := template.New("cmdline").Option("missingkey=error").Parse(tmpl)
	if err != nil {
		return "", fmt.Errorf("parse template: %w", err)
	}
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return "", fmt.Errorf("execute template: %w", err)
	}
	s := strings.TrimSpace(b.String())
	if err := checkScriptText("command line", s); err != nil {
		return "", err
	}
	return s, nil
}

// checkScriptText refuses control characters: a newline would end the iPXE
// script line and start another command.
func checkScriptText(what, s string) error {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%s contains control character %q", what, r)
		}
	}
	return nil
}

// remember keeps which machine an address booted, to name its asset
// fetches; entries older than a token's life are dropped.
func (h *HTTP) remember(addr netip.Addr, rec bootRecord) {
	now := h.cfg.Now()
	rec.at = now
	h.mu.Lock()
	defer h.mu.Unlock()
	for a, r := range h.boots {
		if now.Sub(r.at) > DefaultTokenTTL {
			delete(h.boots, a)
		}
	}
	h.boots[addr] = rec
}

func (h *HTTP) bootOf(addr netip.Addr) (bootRecord, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.boots[addr]
	return r, ok
}

func (h *HTTP) serveAsset(w http.ResponseWriter, r *http.Request, addr netip.Addr, id string) {
	if !ValidAssetID(id) {
		h.log.Info("asset request refused", "addr", addr, "id", id)
		http.NotFound(w, r)
		return
	}
	f, err := h.cfg.Assets.Open(id)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			h.log.Warn("open asset", "id", id, "addr", addr, "err", err)
		}
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	if r.Method == http.MethodGet {
		if rec, ok := h.bootOf(addr); ok {
			stage := ""
			if id == rec.kernel {
				stage = StageKernel
			}
			for _, in := range rec.initrds {
				if id == in {
					stage = StageInitrd
				}
			}
			if stage != "" && r.Header.Get("Range") == "" {
				h.record(Event{MAC: rec.mac, Name: rec.name, Addr: addr, Stage: stage, Detail: id})
			}
		}
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	// ServeContent streams (sendfile for an *os.File) and answers Range.
	http.ServeContent(w, r, "", time.Time{}, f)
}

func (h *HTTP) serveIPXE(w http.ResponseWriter, r *http.Request, addr netip.Addr, name string) {
	if h.cfg.IPXE == nil || !ipxe.IsBinary(name) {
		http.NotFound(w, r)
		return
	}
	f, err := h.cfg.IPXE.Open(name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	rs, ok := f.(io.ReadSeeker)
	if !ok {
		h.log.Error("iPXE binary is not seekable", "file", name)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	if r.Method == http.MethodGet && r.Header.Get("Range") == "" {
		// OVMF's HTTP boot asks HEAD first (the size), then GET: one event.
		var mac net.HardwareAddr
		if h.cfg.FollowedAddr != nil && addr.IsValid() {
			mac, _ = h.cfg.FollowedAddr(addr)
		}
		h.record(Event{MAC: mac, Addr: addr, Stage: StageIPXE, Detail: "http " + name})
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, rs)
}

func (h *HTTP) serveConfig(w http.ResponseWriter, r *http.Request, addr netip.Addr) {
	token, mac, uuid, err := ParseConfigQuery(r.URL.Query())
	if err != nil {
		h.log.Warn("config refused", "addr", addr, "reason", err)
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	log := h.log.With("mac", mac.String(), "addr", addr)
	// The MAC seen for the fetching address, when it is on the rack's
	// segment: the pin remembers it, so later events from that address
	// are believed only from that NIC.
	hw, _ := h.cfg.Neighbors.Neighbor(addr)
	name, retry, err := h.cfg.Tokens.Spend(token, mac, uuid, addr, hw)
	switch {
	case errors.Is(err, ErrTokenInvalid) || errors.Is(err, ErrTokenExpired) || errors.Is(err, ErrTokenConsumed):
		log.Warn("config refused", "name", name, "reason", err)
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	case errors.Is(err, ErrTokenSpent):
		log.Warn("config refused", "name", name, "reason", err)
		h.record(Event{Name: name, Stage: StageDenied, Detail: fmt.Sprintf("config asked from %s with a token already used from another address", addr)})
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	case err != nil:
		log.Error("config: cannot record the token as used, not serving", "name", name, "err", err)
		http.Error(w, "temporarily unavailable", http.StatusServiceUnavailable)
		return
	}
	data, err := h.cfg.Booter.Config(r.Context(), name)
	if errors.Is(err, ErrUnknownMachine) {
		log.Warn("config refused: machine no longer in the rack", "name", name)
		http.NotFound(w, r)
		return
	}
	if err != nil {
		log.Error("config", "name", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	log.Info("config served", "name", name, "bytes", len(data), "retry", retry)
	h.record(Event{MAC: mac, Name: name, Addr: addr, Stage: StageConfig})
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(data)
}

// ParseIPXEQuery reads a machine's identity from the /ipxe query that
// boot.ipxe sends: mac (required; hexhyp or colons), uuid, serial, arch
// (iPXE's ${buildarch}) and platform (${platform}).
func ParseIPXEQuery(q url.Values) (Client, error) {
	mac, err := parseQueryMAC(q.Get("mac"))
	if err != nil {
		return Client{}, err
	}
	uuid, err := parseQueryUUID(q.Get("uuid"))
	if err != nil {
		return Client{}, err
	}
	serial := strings.TrimSpace(q.Get("serial"))
	if len(serial) > 128 || checkScriptText("serial", serial) != nil {
		serial = "" // firmware junk: not an identity
	}
	return Client{MAC: mac, UUID: uuid, Serial: serial, Arch: IPXEArch(q.Get("arch"), q.Get("platform"))}, nil
}

// ParseConfigQuery reads t (the token), mac and uuid from a /config query.
func ParseConfigQuery(q url.Values) (token string, mac net.HardwareAddr, uuid string, err error) {
	token = q.Get("t")
	if token == "" || len(token) > 1024 {
		return "", nil, "", errors.New("missing or oversized token")
	}
	if mac, err = parseQueryMAC(q.Get("mac")); err != nil {
		return "", nil, "", err
	}
	if uuid, err = parseQueryUUID(q.Get("uuid")); err != nil {
		return "", nil, "", err
	}
	return token, mac, uuid, nil
}

func parseQueryMAC(s string) (net.HardwareAddr, error) {
	if s == "" {
		return nil, errors.New("missing mac")
	}
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, fmt.Errorf("bad mac %q: want six hex bytes like 52-54-00-12-34-56", clip(s))
	}
	return mac, nil
}

// parseQueryUUID returns the SMBIOS UUID in lower case, or "" when absent or a
// placeholder (all zeros or all ones).
func parseQueryUUID(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	s = strings.ToLower(s)
	if len(s) != 36 {
		return "", fmt.Errorf("bad uuid %q", clip(s))
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return "", fmt.Errorf("bad uuid %q", s)
			}
		default:
			if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f') {
				return "", fmt.Errorf("bad uuid %q", s)
			}
		}
	}
	if s == "00000000-0000-0000-0000-000000000000" || s == "ffffffff-ffff-ffff-ffff-ffffffffffff" {
		return "", nil
	}
	return s, nil
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}

// IPXEArch maps iPXE's ${buildarch} and ${platform} to the firmware type.
// A BIOS iPXE (undionly.kpxe) is built for i386 even on 64-bit machines, so
// the platform decides first.
func IPXEArch(buildarch, platform string) Arch {
	switch platform {
	case "pcbios":
		return ArchBIOS
	case "efi":
		switch buildarch {
		case "x86_64":
			return ArchX64UEFI
		case "arm64":
			return ArchARM64UEFI
		}
	}
	return ArchUnknown
}

// ValidAssetID says whether id is a safe asset ID: 1-512 bytes of
// slash-separated segments made of letters, digits, '.', '_', '-' and '+',
// none empty, "." or "..". So no ID can climb out of an asset store, be
// absolute, or hide a backslash, NUL or escape.
func ValidAssetID(id string) bool {
	if id == "" || len(id) > 512 {
		return false
	}
	for seg := range strings.SplitSeq(id, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		for i := 0; i < len(seg); i++ {
			c := seg[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '+') {
				return false
			}
		}
	}
	return true
}
