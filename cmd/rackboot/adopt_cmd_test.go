package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// missingLines says which lines of before are missing from after, in order:
// rackedit's guarantee is that every byte outside the new entry stays.
func missingLines(before, after string) []string {
	var missing []string
	rest := after
	for _, l := range strings.SplitAfter(before, "\n") {
		i := strings.Index(rest, l)
		if i < 0 {
			missing = append(missing, l)
			continue
		}
		rest = rest[i+len(l):]
	}
	return missing
}

// TestAdoptWritesRack: `machine adopt` with no serve running writes the
// machine into the rack file, keeping every original line (comments
// included) in order, with the file's mode, and creates no state.
func TestAdoptWritesRack(t *testing.T) {
	dir := t.TempDir()
	rack := filepath.Join(dir, "rack.yaml")
	must(t, os.WriteFile(rack, profiles.ExampleRack, 0o640))
	state := filepath.Join(dir, "state")
	out, errOut, err := runRoot(t, "-f", rack, "--state", state, "machine", "adopt", "52-54-00-00-00-77",
		"--name", "urban-2", "--role", "worker", "--address", "192.168.1.17/24", "--install-disk-serial", "S4EVNX0R123")
	if err != nil {
		t.Fatalf("adopt: %v\n%s%s", err, out, errOut)
	}
	got, err := os.ReadFile(rack)
	must(t, err)
	if m := missingLines(string(profiles.ExampleRack), string(got)); len(m) > 0 {
		t.Errorf("adopt lost lines of the rack file: %q", m)
	}
	r, err := profiles.Load(rack, got)
	must(t, err)
	m := r.Machine("urban-2")
	if m == nil || m.Role != profiles.RoleWorker || len(m.Select.MAC) != 1 || m.Select.MAC[0] != "52:54:00:00:00:77" ||
		m.Address != "192.168.1.17/24" || m.InstallDisk.Serial != "S4EVNX0R123" || m.Arch != "" {
		t.Fatalf("adopted machine: %+v", m)
	}
	if r.Machines[len(r.Machines)-1].Name != "urban-2" {
		t.Error("the new machine is not the last one")
	}
	if ps := r.Validate(); ps.Errors() {
		t.Errorf("the rack adopt wrote is not valid:\n%v", ps)
	}
	st, err := os.Stat(rack)
	must(t, err)
	if st.Mode().Perm() != 0o640 {
		t.Errorf("rack file mode %v, want 0640 as before", st.Mode().Perm())
	}
	if !strings.Contains(out, "adopted urban-2 (52:54:00:00:00:77, worker) into "+rack) || !strings.Contains(out, "no rackboot serve is running") {
		t.Errorf("output:\n%s", out)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("adopt created the state dir (%v)", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("adopt left %d files beside the rack (a temp file?)", len(ents))
	}
}

// TestAdoptRefuses: a MAC or a name already in the rack, a bad role or
// MAC, and a new rack that does not validate are refused with what to do,
// and the file is left byte for byte.
func TestAdoptRefuses(t *testing.T) {
	dir := t.TempDir()
	rack := filepath.Join(dir, "rack.yaml")
	must(t, os.WriteFile(rack, profiles.ExampleRack, 0o644))
	lineOf := func(text string) string {
		for i, l := range strings.Split(string(profiles.ExampleRack), "\n") {
			if strings.Contains(l, text) {
				return fmt.Sprint(i + 1)
			}
		}
		t.Fatalf("%q not in the example rack", text)
		return ""
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"MAC taken", []string{"52:54:00:B0:00:03", "--name", "new", "--role", "worker"}, rack + `: MAC 52:54:00:b0:00:03 is already in the rack file: machine "lailah" has it (line ` + lineOf(`mac: ["52:54:00:b0:00:03"]`) + ")"},
		{"name taken", []string{"52:54:00:00:00:77", "--name", "verus", "--role", "worker"}, rack + `: machine "verus" is already in the rack file (line ` + lineOf("- name: verus") + ")"},
		{"bad role", []string{"52:54:00:00:00:77", "--name", "new", "--role", "master"}, `--role "master": write controlplane or worker`},
		{"bad MAC", []string{"52:54:00:00:77", "--name", "new", "--role", "worker"}, "is not a MAC address"},
		{"address outside the subnet", []string{"52:54:00:00:00:77", "--name", "new", "--role", "worker", "--address", "10.9.9.9/24"}, "is not valid (nothing written)"},
		{"bad name", []string{"52:54:00:00:00:77", "--name", "New_One", "--role", "worker"}, "is not valid (nothing written)"},
		{"no name", []string{"52:54:00:00:00:77", "--role", "worker"}, `"name" not set`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, err := runRoot(t, append([]string{"-f", rack, "--state", filepath.Join(dir, "state"), "machine", "adopt"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q\n%s%s", err, tc.want, out, errOut)
			}
			if strings.Contains(tc.want, "not valid") && !strings.Contains(errOut, "rack.yaml:") {
				t.Errorf("the validation problems were not printed:\n%s", errOut)
			}
			got, _ := os.ReadFile(rack)
			if !bytes.Equal(got, profiles.ExampleRack) {
				t.Fatal("a refused adopt changed the rack file")
			}
		})
	}
}

func TestWriteRackRefusesAChangedFile(t *testing.T) {
	dir := t.TempDir()
	rack := filepath.Join(dir, "rack.yaml")
	must(t, os.WriteFile(rack, []byte("edited meanwhile\n"), 0o644))
	err := writeRack(rack, []byte("what adopt read\n"), []byte("new\n"))
	if err == nil || !strings.Contains(err.Error(), "changed while rackboot was editing it") {
		t.Fatalf("err = %v", err)
	}
	if got, _ := os.ReadFile(rack); string(got) != "edited meanwhile\n" {
		t.Fatalf("file is %q", got)
	}
	// Through a symlink, the target is replaced and the link kept.
	target := filepath.Join(dir, "real.yaml")
	must(t, os.WriteFile(target, []byte("old\n"), 0o600))
	link := filepath.Join(dir, "link.yaml")
	must(t, os.Symlink(target, link))
	must(t, writeRack(link, []byte("old\n"), []byte("new\n")))
	if got, _ := os.ReadFile(target); string(got) != "new\n" {
		t.Errorf("target is %q", got)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlink was replaced: %v %v", fi, err)
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode().Perm())
	}
}

// TestLiveRackReload: serve's reload takes a rack with a new machine
// (its MAC then gets a boot spec), refuses an invalid one and one with
// other cluster settings (keeping the rack it has), and declares the new
// machine to the inventory only when its MAC was not seen yet.
func TestLiveRackReload(t *testing.T) {
	dir := t.TempDir()
	rack := filepath.Join(dir, "rack.yaml")
	must(t, os.WriteFile(rack, profiles.ExampleRack, 0o644))
	r, err := profiles.LoadFile(rack)
	must(t, err)
	st, err := inventory.Open(filepath.Join(dir, "state"), inventory.WithFlushDelay(time.Hour))
	must(t, err)
	hw, _ := net.ParseMAC("52:54:00:00:00:77")
	st.Record(pxe.Event{MAC: hw, Stage: pxe.StageDiscoveryBoot})
	live := newLiveRack(r, slog.New(slog.DiscardHandler))
	assets := func(version, schematic, arch string) (string, string, error) {
		return "talos/" + arch + "/kernel", "talos/" + arch + "/initrd", nil
	}
	bundle, _, err := profiles.LoadOrCreateSecretsIfNew(filepath.Join(dir, "secrets"), time.Now, nil)
	must(t, err)
	live.start(func(r *profiles.Rack) *profiles.Booter { return profiles.NewBooter(r, bundle, assets) })
	ctx := context.Background()
	if _, err := live.BootSpec(ctx, pxe.Client{MAC: hw}); !errors.Is(err, pxe.ErrUnknownMachine) {
		t.Fatalf("before adopt: %v", err)
	}
	if _, err := live.DiscoveryBoot(ctx, pxe.Client{MAC: hw}); err != nil {
		t.Fatalf("discovery boot: %v", err)
	}

	add := func(src []byte, m profiles.Machine) []byte {
		out, _, err := adoptRack(rack, src, m)
		must(t, err)
		return out
	}
	one := add(profiles.ExampleRack, profiles.Machine{Name: "new1", Role: profiles.RoleWorker, Select: profiles.Selector{MAC: []string{"52:54:00:00:00:77"}}})
	two := add(one, profiles.Machine{Name: "new2", Role: profiles.RoleWorker, Select: profiles.Selector{MAC: []string{"52:54:00:00:00:78"}}})
	must(t, os.WriteFile(rack, two, 0o644))
	msg, err := live.reload(rack, st)
	if err != nil || msg != "rack reloaded: 8 machines, added new1, new2" {
		t.Fatalf("reload: %q %v", msg, err)
	}
	spec, err := live.BootSpec(ctx, pxe.Client{MAC: hw})
	if err != nil || spec.Name != "new1" || !strings.Contains(spec.Cmdline, "{{.ConfigURL}}") {
		t.Fatalf("after reload: %+v %v", spec, err)
	}
	if n, ok := live.macName("52:54:00:00:00:78"); !ok || n != "new2" {
		t.Errorf("macName after reload: %q %v", n, ok)
	}
	if !live.known("new2") {
		t.Error("new2 not known after reload")
	}
	if _, ok := st.Machine("new1"); ok {
		t.Error("new1 was declared although its MAC was seen: its history would not move to its name")
	}
	if _, ok := st.Machine("new2"); !ok {
		t.Error("new2 was not declared")
	}
	if cfg, err := live.Config(ctx, "new1"); err != nil || !bytes.Contains(cfg, []byte("hostname: new1")) {
		t.Errorf("config of new1: %v", err)
	}

	// Invalid rack and other cluster settings: refused, rack kept.
	for _, tc := range []struct{ src, want string }{
		{strings.Replace(string(two), "name: new2", "name: New_2", 1), "not valid"},
		{strings.Replace(string(two), "vip: 192.168.1.10", "vip: 192.168.1.9", 1), "cluster settings changed"},
	} {
		must(t, os.WriteFile(rack, []byte(tc.src), 0o644))
		if _, err := live.reload(rack, st); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("reload: %v, want %q", err, tc.want)
		}
		if live.Rack().Machine("new2") == nil || live.Rack().Cluster.VIP != "192.168.1.10" {
			t.Error("a refused reload changed the rack")
		}
	}

	// The versions rackboot upgrade writes at its end are taken: the next
	// config is for the new Talos version.
	upgraded := strings.Replace(strings.Replace(string(two), "talosVersion: v1.13.0", "talosVersion: v1.13.1", 1),
		"kubernetesVersion: 1.36.0", "kubernetesVersion: 1.36.1", 1)
	must(t, os.WriteFile(rack, []byte(upgraded), 0o644))
	if _, err := live.reload(rack, st); err != nil {
		t.Fatalf("reload after an upgrade's version change: %v", err)
	}
	if c := live.Rack().Cluster; c.TalosVersion != "v1.13.1" || c.KubernetesVersion != "1.36.1" {
		t.Errorf("versions after reload: %s %s", c.TalosVersion, c.KubernetesVersion)
	}
	if cfg, err := live.Config(ctx, "new1"); err != nil || !bytes.Contains(cfg, []byte(":v1.13.1")) {
		t.Errorf("config of new1 after the version reload (want the v1.13.1 installer): %v", err)
	}
}

// TestControlReload: POST /rack/reload on the control socket answers
// 200 when the reload works and 409 with the reason when it does not.
func TestControlReload(t *testing.T) {
	fail := false
	h := controlHandler(http.NotFoundHandler(), controlActions{
		reinstall: func(string) error { return nil }, forget: func(string) error { return nil },
		reload: func() (string, error) {
			if fail {
				return "", errors.New("the cluster settings changed")
			}
			return "ok", nil
		},
	})
	for _, f := range []bool{false, true} {
		fail = f
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, controlBase+"/rack/reload", nil))
		var body map[string]string
		_ = json.Unmarshal(w.Body.Bytes(), &body)
		if f && (w.Code != http.StatusConflict || body["error"] != "the cluster settings changed") || !f && w.Code != http.StatusOK {
			t.Errorf("fail=%v: %d %s", f, w.Code, w.Body)
		}
	}
}

// An adopted machine that booted as arm64 gets arch: arm64 (its boot
// spec would otherwise refuse the arch); amd64 is the default, not written.
func TestAdoptedMachineArch(t *testing.T) {
	for arch, want := range map[string]string{"arm64": "arm64", "amd64": "", "": ""} {
		m, err := adoptedMachine("52-54-00-00-00-77", &adoptFlags{name: "x", role: "worker"}, arch)
		if err != nil || m.Arch != want || m.Select.MAC[0] != "52:54:00:00:00:77" {
			t.Errorf("arch %q: %+v %v", arch, m, err)
		}
	}
}
