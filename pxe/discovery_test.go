package pxe

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
)

// discoveryCmd is a discovery boot's command line as a caller would write
// it: the rack's usual arguments and the event/log receivers, no config.
const discoveryCmd = "talos.platform=metal console=ttyS0 talos.events.sink={{.EventsAddr}} talos.logging.kernel=udp://{{.LogAddr}}"

// fakeDiscovery answers every unknown machine the same way and remembers
// who asked.
type fakeDiscovery struct {
	mu    sync.Mutex
	spec  *BootSpec
	err   error
	asked []Client
}

func (d *fakeDiscovery) DiscoveryBoot(_ context.Context, c Client) (*BootSpec, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked = append(d.asked, c)
	if d.spec == nil {
		return nil, d.err
	}
	cp := *d.spec
	return &cp, d.err
}

// withDiscovery is the fixture's handler with a discovery boot (nil: off).
func (f *httpFixture) withDiscovery(t *testing.T, d Discoverer) *httpFixture {
	t.Helper()
	cfg := f.h.cfg
	cfg.Discovery = d
	h, err := NewHTTP(cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := *f
	g.h = h
	return &g
}

// TestDiscoveryDecision: what each machine is answered with and without a
// discovery boot. An unknown machine gets the discovery boot only when one
// is configured and its spec is sound, never a token or a config URL; a
// known machine, an installed one and a refused owner check never see the
// discovery boot.
func TestDiscoveryDecision(t *testing.T) {
	good := &BootSpec{Name: "discovery", Kernel: kernelID, Initrd: []string{initrdID}, Cmdline: discoveryCmd}
	withConfigURL := &BootSpec{Kernel: kernelID, Initrd: []string{initrdID}, Cmdline: testCmd}
	literalConfig := &BootSpec{Kernel: kernelID, Initrd: []string{initrdID}, Cmdline: "talos.config=http://10.99.0.1:8080/config?t=forged"}
	badKernel := &BootSpec{Kernel: "../../etc/passwd", Initrd: []string{initrdID}, Cmdline: discoveryCmd}
	badInitrd := &BootSpec{Kernel: kernelID, Initrd: []string{"a/../b"}, Cmdline: discoveryCmd}
	longCmd := &BootSpec{Kernel: kernelID, Initrd: []string{initrdID}, Cmdline: strings.Repeat("x", MaxCmdline)}
	newline := &BootSpec{Kernel: kernelID, Initrd: []string{initrdID}, Cmdline: "a\nchain http://evil/"}
	for _, tc := range []struct {
		name   string
		d      *fakeDiscovery // nil: discovery off
		mac    string
		from   string
		script string // a line the script must have
		stage  string // event stage:name
		asked  bool   // the Discoverer was asked
		detail string // in the event's detail
	}{
		{name: "off, unknown", mac: macUnknown, from: "10.99.0.50", script: "unknown machine 52:54:00:00:00:99: add it to rack.yaml", stage: StageDiscovered + ":"},
		{name: "on, unknown", d: &fakeDiscovery{spec: good}, mac: macUnknown, from: "10.99.0.50",
			script: "kernel http://10.99.0.1:8080/assets/" + kernelID + " initrd=initramfs.xz talos.platform=metal console=ttyS0 talos.events.sink=10.99.0.1:4002 talos.logging.kernel=udp://10.99.0.1:4003",
			stage:  StageDiscoveryBoot + ":", asked: true, detail: "kernel=" + kernelID},
		{name: "on, spec names the config URL", d: &fakeDiscovery{spec: withConfigURL}, mac: macUnknown, from: "10.99.0.50",
			script: "add it to rack.yaml", stage: StageDiscovered + ":", asked: true, detail: "no discovery boot"},
		{name: "on, spec has a literal config URL", d: &fakeDiscovery{spec: literalConfig}, mac: macUnknown, from: "10.99.0.50",
			script: "add it to rack.yaml", stage: StageDiscovered + ":", asked: true, detail: "gets no config"},
		{name: "on, bad kernel id", d: &fakeDiscovery{spec: badKernel}, mac: macUnknown, from: "10.99.0.50",
			script: "add it to rack.yaml", stage: StageDiscovered + ":", asked: true, detail: "bad kernel asset id"},
		{name: "on, bad initrd id", d: &fakeDiscovery{spec: badInitrd}, mac: macUnknown, from: "10.99.0.50",
			script: "add it to rack.yaml", stage: StageDiscovered + ":", asked: true, detail: "bad initrd asset id"},
		{name: "on, command line too long", d: &fakeDiscovery{spec: longCmd}, mac: macUnknown, from: "10.99.0.50",
			script: "add it to rack.yaml", stage: StageDiscovered + ":", asked: true, detail: "over the 2047-byte limit"},
		{name: "on, newline in the command line", d: &fakeDiscovery{spec: newline}, mac: macUnknown, from: "10.99.0.50",
			script: "add it to rack.yaml", stage: StageDiscovered + ":", asked: true, detail: "control character"},
		{name: "on, no assets (BootError)", d: &fakeDiscovery{err: &BootError{Msg: "no Talos v1.13.0 for arm64: run rackboot assets pull"}}, mac: macUnknown, from: "10.99.0.50",
			script: "add it to rack.yaml", stage: StageDiscovered + ":", asked: true, detail: "run rackboot assets pull"},
		{name: "on, other error", d: &fakeDiscovery{err: errors.New("boom")}, mac: macUnknown, from: "10.99.0.50",
			script: "add it to rack.yaml", stage: StageDiscovered + ":", asked: true, detail: "boom"},
		{name: "on, nothing for it", d: &fakeDiscovery{}, mac: macUnknown, from: "10.99.0.50",
			script: "add it to rack.yaml", stage: StageDiscovered + ":", asked: true, detail: "nothing for this machine"},
		{name: "on, known machine", d: &fakeDiscovery{spec: good}, mac: macCP1, from: "10.99.0.50",
			script: "talos.config=http://10.99.0.1:8080/config?", stage: StageScript + ":cp1"},
		{name: "on, installed machine", d: &fakeDiscovery{spec: good}, mac: macDone, from: "10.99.0.50",
			script: "booting from local disk", stage: StageLocalBoot + ":cp2"},
		{name: "on, known MAC from another NIC", d: &fakeDiscovery{spec: good}, mac: macCP1, from: "10.99.0.51",
			script: "add it to rack.yaml", stage: StageDenied + ":cp1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newHTTPFixture(t)
			if tc.d != nil {
				f = f.withDiscovery(t, tc.d)
			}
			w := f.get(scriptURL(tc.mac, ""), tc.from)
			if w.Code != http.StatusOK {
				t.Fatalf("status %d: %s", w.Code, w.Body)
			}
			body := w.Body.String()
			if !strings.Contains(body, tc.script) {
				t.Errorf("script lacks %q:\n%s", tc.script, body)
			}
			if got := f.events.stages(); !slices.Equal(got, []string{tc.stage}) {
				t.Errorf("events %v, want [%s]", got, tc.stage)
			}
			if tc.detail != "" && !strings.Contains(f.events.events[0].Detail, tc.detail) {
				t.Errorf("event detail %q lacks %q", f.events.events[0].Detail, tc.detail)
			}
			if tc.d != nil && (len(tc.d.asked) > 0) != tc.asked {
				t.Errorf("discovery asked %d times, want asked=%v", len(tc.d.asked), tc.asked)
			}
			if tc.mac == macUnknown {
				// The shared-LAN rule: nothing an unknown machine is told
				// lets it fetch anything but public boot assets.
				for _, secret := range []string{"/config", "?t=", "&t=", "token", "secret"} {
					if strings.Contains(body, secret) {
						t.Errorf("script for an unknown machine contains %q:\n%s", secret, body)
					}
				}
				if strings.Contains(f.logs.String(), "forged") {
					t.Errorf("the refused command line was logged:\n%s", f.logs)
				}
			}
		})
	}
}

// TestDiscoveryScript: the discovery boot's script (golden), the identity
// the Discoverer is asked with, the boot assets it names are served, and
// it names no config and no token.
func TestDiscoveryScript(t *testing.T) {
	d := &fakeDiscovery{spec: &BootSpec{Name: "discovery", Kernel: kernelID, Initrd: []string{initrdID}, Cmdline: discoveryCmd}}
	f := newHTTPFixture(t).withDiscovery(t, d)
	w := f.get(scriptURL(macUnknown, uuidCP1), "10.99.0.50")
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	goldenHTTP(t, "discovery.ipxe", w.Body.Bytes())
	c := d.asked[0]
	if c.MAC.String() != macUnknown || c.UUID != uuidCP1 || c.Serial != "SN 1" || c.Arch != ArchX64UEFI || c.Addr.String() != "10.99.0.50" {
		t.Fatalf("discovery asked with %+v", c)
	}
	if body := w.Body.String(); strings.Contains(body, "config") || strings.Contains(body, "?t=") {
		t.Errorf("the discovery script names a config or a token:\n%s", body)
	}
	for _, id := range []string{kernelID, initrdID} {
		if w := f.get("/assets/"+id, "10.99.0.50"); w.Code != http.StatusOK {
			t.Errorf("asset %s: %d", id, w.Code)
		}
	}
	e := f.events.events[0]
	if e.Stage != StageDiscoveryBoot || e.MAC.String() != macUnknown || e.Addr.String() != "10.99.0.50" || e.Name != "" {
		t.Errorf("event %+v", e)
	}
	if want := `uuid=` + uuidCP1 + ` serial="SN 1" arch=efi-x64 kernel=` + kernelID; e.Detail != want {
		t.Errorf("event detail %q, want %q", e.Detail, want)
	}
}

func TestParseArch(t *testing.T) {
	for a := ArchUnknown; a <= ArchARM64HTTP; a++ {
		if got := ParseArch(a.String()); got != a {
			t.Errorf("ParseArch(%q) = %v, want %v", a.String(), got, a)
		}
	}
	for _, s := range []string{"", "x86_64", "EFI-X64", "efi-x64 "} {
		if got := ParseArch(s); got != ArchUnknown {
			t.Errorf("ParseArch(%q) = %v, want unknown", s, got)
		}
	}
}
