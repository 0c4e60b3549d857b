package rackedit

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/dotfile/rackboot/profiles"
)

var update = flag.Bool("update", false, "rewrite rackedit/testdata/golden/*.want.yaml")

// seeds are the rack files every property test runs on: the seed rack, the
// seed rack with CRLF line ends, and the odd files in testdata/odd.
func seeds(t testing.TB) map[string][]byte {
	t.Helper()
	out := map[string][]byte{
		"example":      profiles.ExampleRack,
		"example-crlf": bytes.ReplaceAll(profiles.ExampleRack, []byte("\n"), []byte("\r\n")),
	}
	files, err := filepath.Glob("testdata/odd/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 5 {
		t.Fatalf("testdata/odd has %d files", len(files))
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out["odd/"+filepath.Base(f)] = b
	}
	return out
}

func mustLoad(t *testing.T, name string, b []byte) *profiles.Rack {
	t.Helper()
	r, err := profiles.Load(name, b)
	if err != nil {
		t.Fatalf("%s does not load: %v\n%s", name, err, b)
	}
	return r
}

func names(r *profiles.Rack) string {
	var s []string
	for _, m := range r.Machines {
		s = append(s, m.Name)
	}
	return strings.Join(s, ",")
}

// splitLines splits on LF, keeping any CR.
func splitLines(b []byte) []string { return strings.Split(string(b), "\n") }

// subsequence reports whether every line of a is in b, in order; it
// returns the lines of b that are not a's.
func subsequence(a, b []string) (bool, []string) {
	var extra []string
	i := 0
	for _, l := range b {
		if i < len(a) && a[i] == l {
			i++
			continue
		}
		extra = append(extra, l)
	}
	return i == len(a), extra
}

// flowFile: machines in flow style are edited inside lines.
func flowFile(name string) bool { return strings.HasPrefix(name, "odd/flow") }

func newMachine() profiles.Machine {
	return profiles.Machine{
		Name:    "newcomer",
		Role:    profiles.RoleWorker,
		Select:  profiles.Selector{MAC: []string{"0e:00:00:00:00:01"}},
		Address: "dhcp",
	}
}

// TestAddRemoveRoundTrip: adding a machine keeps every line of the file in
// order (only new lines appear, all of them one block), the result loads to
// the rack plus that machine, and removing it gives the original bytes.
func TestAddRemoveRoundTrip(t *testing.T) {
	for name, src := range seeds(t) {
		t.Run(name, func(t *testing.T) {
			before := mustLoad(t, name, src)
			m := newMachine()
			out, err := AddMachine(src, m)
			if err != nil {
				t.Fatalf("add: %v", err)
			}
			after := mustLoad(t, name, out)
			if got, want := names(after), strings.Trim(names(before)+",newcomer", ","); got != want {
				t.Errorf("machines after add: %s, want %s", got, want)
			}
			got := after.Machine("newcomer")
			if got.Role != m.Role || got.Address != m.Address || len(got.Select.MAC) != 1 || got.Select.MAC[0] != m.Select.MAC[0] {
				t.Errorf("added machine reads back as %+v", *got)
			}
			if !flowFile(name) && !bytes.Contains(src, []byte("[]")) && !bytes.Contains(src, []byte("machines:\n#")) {
				ok, extra := subsequence(splitLines(src), splitLines(out))
				if !ok {
					t.Errorf("add changed or dropped lines of the file:\n%s", out)
				}
				if !strings.Contains(string(out), strings.Join(extra, "\n")) {
					t.Errorf("the new lines are not one block: %q", extra)
				}
				if len(extra) == 0 || !strings.Contains(strings.Join(extra, "\n"), "newcomer") {
					t.Errorf("new lines %q do not hold the machine", extra)
				}
			}
			if bytes.Contains(src, []byte("\r\n")) && bytes.Count(out, []byte("\n")) != bytes.Count(out, []byte("\r\n")) {
				t.Errorf("a CRLF file got LF lines:\n%q", out)
			}
			back, err := RemoveMachine(out, "newcomer")
			if err != nil {
				t.Fatalf("remove: %v", err)
			}
			want := src
			if name == "odd/bare-null.yaml" {
				// The documented exception: no machines is written [].
				want = bytes.Replace(src, []byte("machines:\n"), []byte("machines: []\n"), 1)
			}
			if !bytes.Equal(back, want) {
				t.Errorf("add then remove is not the original:\n--- got\n%s\n--- want\n%s", back, want)
			}
		})
	}
}

// TestRemoveEach: removing any machine leaves the other lines as they were,
// in order (plus "[]" when the list empties), and the rack without it.
func TestRemoveEach(t *testing.T) {
	for name, src := range seeds(t) {
		r := mustLoad(t, name, src)
		for i, m := range r.Machines {
			t.Run(name+"/"+m.Name, func(t *testing.T) {
				out, err := RemoveMachine(src, m.Name)
				if err != nil {
					t.Fatalf("remove: %v", err)
				}
				after := mustLoad(t, name, out)
				var want []string
				for j, o := range r.Machines {
					if j != i {
						want = append(want, o.Name)
					}
				}
				if got := names(after); got != strings.Join(want, ",") {
					t.Errorf("machines after remove: %s, want %s", got, strings.Join(want, ","))
				}
				check := out
				if len(r.Machines) == 1 {
					check = bytes.Replace(out, []byte("machines: []"), []byte("machines:"), 1)
				}
				// lab.machines is lowered when it would exceed the machines
				// left (and only then); the one line it changes is put back
				// for the comparison below.
				switch l := after.Lab.Machines; {
				case l != r.Lab.Machines && (l != len(want) || r.Lab.Machines <= len(want)):
					t.Errorf("lab.machines %d after the remove (was %d, %d machines left)", l, r.Lab.Machines, len(want))
				case l != r.Lab.Machines:
					check = bytes.Replace(check, fmt.Appendf(nil, "machines: %d", l), fmt.Appendf(nil, "machines: %d", r.Lab.Machines), 1)
				case r.Lab.Machines > len(want) && len(want) > 0:
					t.Errorf("lab.machines %d left above the %d machines left", l, len(want))
				}
				if ok, _ := subsequence(splitLines(check), splitLines(src)); !ok && !flowFile(name) {
					t.Errorf("remove changed lines it should have kept:\n%s", out)
				}
				if bytes.Contains(out, []byte(m.Name+" ")) || bytes.Contains(out, []byte(": "+m.Name+"\n")) {
					t.Errorf("%s is still in the file:\n%s", m.Name, out)
				}
				for _, mac := range m.Select.MAC {
					if bytes.Contains(out, []byte(mac)) {
						t.Errorf("MAC %s is still in the file:\n%s", mac, out)
					}
				}
			})
		}
	}
}

// TestRemoveTakesItsComments: the seed's formula goes with its head, its
// line comment and its commented-out bmc block; urban's neighbours keep
// theirs.
func TestRemoveTakesItsComments(t *testing.T) {
	out, err := RemoveMachine(profiles.ExampleRack, "formula")
	if err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"# HP DL360 G9", "# bmc:", "set-password formula", "# caFile: ilo-ca.pem"} {
		if bytes.Contains(out, []byte(gone)) {
			t.Errorf("%q is still there", gone)
		}
	}
	for _, kept := range []string{"# Lenovo ThinkServer RD350", "# The virtual rack", "# Vanilla Talos", "# this laptop on the rack network"} {
		if !bytes.Contains(out, []byte(kept)) {
			t.Errorf("%q was removed", kept)
		}
	}
	if removed := len(splitLines(profiles.ExampleRack)) - len(splitLines(out)); removed != 18 {
		t.Errorf("removed %d lines, want formula's 18 (10 lines and 8 comment lines)", removed)
	}
}

// TestAddStyle: the new entry copies the neighbours' style.
func TestAddStyle(t *testing.T) {
	src := seeds(t)
	for _, tc := range []struct {
		file string
		want string
	}{
		{"example", "\n  - name: newcomer\n    role: worker\n    select:\n      mac: [\"0e:00:00:00:00:01\"]\n    address: dhcp\n"},
		{"odd/indent4.yaml", "\n    -   role: worker\n        name: newcomer\n        select:\n            mac:\n                - '0e:00:00:00:00:01'\n        address: dhcp"},
		{"odd/compact.yaml", "\n- name: newcomer\n  role: worker\n  select:\n    mac: [0e:00:00:00:00:01]\n  address: dhcp\n# end of the machines\n"},
		{"odd/flow.yaml", "{name: b, role: worker, select: {mac: ['02:00:00:00:00:0b']}},\n  {name: newcomer, role: worker, select: {mac: ['0e:00:00:00:00:01']}, address: dhcp}\n]"},
		{"odd/flow-oneline.yaml", "}, { name: newcomer, role: worker, select: {mac: [\"0e:00:00:00:00:01\"]}, address: dhcp }]"},
		{"odd/empty-flow.yaml", "machines: # none yet: rackboot machine adopt writes them here\n  - name: newcomer\n"},
		{"odd/block-of-flow.yaml", "select: {mac: [02:00:00:00:00:0b]}}\n  - {name: newcomer, role: worker, select: {mac: [0e:00:00:00:00:01]}, address: dhcp}\nlab:"},
		{"odd/blank-separated.yaml", "          value: {max-pods: \"250\"}\n\n  - name: newcomer\n"},
	} {
		out, err := AddMachine(src[tc.file], newMachine())
		if err != nil {
			t.Errorf("%s: %v", tc.file, err)
			continue
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("%s: want the new entry as\n%s\ngot\n%s", tc.file, tc.want, out)
		}
	}
}

func TestAddRefusesDuplicates(t *testing.T) {
	for _, tc := range []struct {
		m    profiles.Machine
		want string
	}{
		{profiles.Machine{Name: "urban", Select: profiles.Selector{MAC: []string{"0e:00:00:00:00:09"}}}, `machine "urban" is already in the rack file (line 51)`},
		{profiles.Machine{Name: "x", Select: profiles.Selector{MAC: []string{"52-54-00-B0-00-03"}}}, `MAC 52:54:00:b0:00:03 is already in the rack file: machine "lailah" has it (line 64)`},
		{profiles.Machine{Name: "x", Select: profiles.Selector{MAC: []string{"0e:00:00:00:00:09", "525400b00006"}}}, `machine "amdusias-ii" has it (line 84)`},
	} {
		_, err := AddMachine(profiles.ExampleRack, tc.m)
		if err == nil || !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("add %s: %v, want ErrExists with %q", tc.m.Name, err, tc.want)
		}
	}
	if _, err := AddMachine(profiles.ExampleRack, profiles.Machine{Role: profiles.RoleWorker}); err == nil {
		t.Error("a machine without a name was added")
	}
	if _, err := AddMachine([]byte("cluster: [\n"), newMachine()); err == nil || !strings.Contains(err.Error(), "does not load") {
		t.Errorf("broken file: %v", err)
	}
}

// TestAddNeverWritesPassword: a BMC password set by mistake is not written,
// and an empty patch is left out.
func TestAddNeverWritesPassword(t *testing.T) {
	m := newMachine()
	m.BMC = &profiles.BMC{Address: "10.0.1.9", User: "admin", Password: true}
	m.Patches = []profiles.Patch{{}}
	out, err := AddMachine(profiles.ExampleRack, m)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out, []byte("password:")) || bytes.Contains(out, []byte("patches:")) {
		t.Errorf("wrote a password or an empty patch:\n%s", out[len(profiles.ExampleRack)-300:])
	}
	if r := mustLoad(t, "out", out); r.Machine("newcomer").BMC.User != "admin" {
		t.Errorf("bmc not written")
	}
}

func TestRemoveUnknown(t *testing.T) {
	_, err := RemoveMachine(profiles.ExampleRack, "nobody")
	if !errors.Is(err, ErrUnknownMachine) || !strings.Contains(err.Error(), "formula, urban, lailah, verus, mastema, amdusias-ii") {
		t.Errorf("remove nobody: %v", err)
	}
	_, err = SetAddress(profiles.ExampleRack, "nobody", "dhcp")
	if !errors.Is(err, ErrUnknownMachine) {
		t.Errorf("set address of nobody: %v", err)
	}
	_, err = RemoveMachine([]byte("cluster: {name: x}\nmachines: []\n"), "x")
	if !errors.Is(err, ErrUnknownMachine) || !strings.Contains(err.Error(), "no machines") {
		t.Errorf("remove from an empty rack: %v", err)
	}
}

// TestRemoveRefusesSharedAnchor: an entry whose anchor another entry merges
// is not removed behind the user's back.
func TestRemoveRefusesSharedAnchor(t *testing.T) {
	src := []byte("cluster: {name: x}\nmachines:\n  - &base\n    name: a\n    role: worker\n    select: {mac: [\"02:00:00:00:00:01\"]}\n  - <<: *base\n    name: b\n    select: {mac: [\"02:00:00:00:00:02\"]}\n")
	mustLoad(t, "anchor", src)
	if out, err := RemoveMachine(src, "a"); err == nil {
		t.Errorf("removed an entry others merge:\n%s", out)
	}
	out, err := RemoveMachine(src, "b")
	if err != nil {
		t.Fatal(err)
	}
	if want := "cluster: {name: x}\nmachines:\n  - &base\n    name: a\n    role: worker\n    select: {mac: [\"02:00:00:00:00:01\"]}\n"; string(out) != want {
		t.Errorf("got\n%s", out)
	}
}

func TestSetAddress(t *testing.T) {
	for _, tc := range []struct {
		src, name, addr, want string
	}{
		{"machines:\n  - name: a # x\n    address: 10.0.0.1/24 # old\n", "a", "dhcp", "machines:\n  - name: a # x\n    address: dhcp # old\n"},
		{"machines:\n  - name: a\n    address: \"10.0.0.1/24\"\n", "a", "10.0.0.2/24", "machines:\n  - name: a\n    address: \"10.0.0.2/24\"\n"},
		{"machines:\n  - name: a\n    select:\n      mac: [\"02:00:00:00:00:01\"]\n    # disks\n    installDisk: {type: sata}\n", "a", "10.0.0.3/24",
			"machines:\n  - name: a\n    select:\n      mac: [\"02:00:00:00:00:01\"]\n    address: 10.0.0.3/24\n    # disks\n    installDisk: {type: sata}\n"},
		{"machines:\n  - name: a\n    role: worker\n    # the end\nlab: {}\n", "a", "dhcp", "machines:\n  - name: a\n    role: worker\n    address: dhcp\n    # the end\nlab: {}\n"},
		{"machines: [{name: a, role: worker }]\n", "a", "dhcp", "machines: [{name: a, role: worker, address: dhcp }]\n"},
		{"machines: [{name: a, address: 1.2.3.4/24}, {name: b}]\n", "a", "dhcp", "machines: [{name: a, address: dhcp}, {name: b}]\n"},
	} {
		out, err := SetAddress([]byte(tc.src), tc.name, tc.addr)
		if err != nil {
			t.Errorf("%q: %v", tc.src, err)
			continue
		}
		if string(out) != tc.want {
			t.Errorf("set address in\n%s\ngot\n%s\nwant\n%s", tc.src, out, tc.want)
		}
	}
}

// edits is a golden case: a rack file and what adopt/remove do to it.
type edits struct {
	Input string `yaml:"input"`
	Edits []struct {
		Add        *profiles.Machine `yaml:"add"`
		Remove     string            `yaml:"remove"`
		SetAddress *struct {
			Name    string `yaml:"name"`
			Address string `yaml:"address"`
		} `yaml:"setAddress"`
	} `yaml:"edits"`
}

// TestGolden: testdata/golden/NAME.edits.yaml names an input and edits;
// the result must be NAME.want.yaml byte for byte (-update rewrites it).
func TestGolden(t *testing.T) {
	cases, err := filepath.Glob("testdata/golden/*.edits.yaml")
	if err != nil || len(cases) == 0 {
		t.Fatalf("no golden cases: %v", err)
	}
	for _, c := range cases {
		name := strings.TrimSuffix(filepath.Base(c), ".edits.yaml")
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(c)
			if err != nil {
				t.Fatal(err)
			}
			var e edits
			if err := yaml.Unmarshal(raw, &e); err != nil {
				t.Fatal(err)
			}
			src := profiles.ExampleRack
			if e.Input != "example" {
				if src, err = os.ReadFile(filepath.Join("testdata", e.Input)); err != nil {
					t.Fatal(err)
				}
			}
			for i, ed := range e.Edits {
				switch {
				case ed.Add != nil:
					src, err = AddMachine(src, *ed.Add)
				case ed.Remove != "":
					src, err = RemoveMachine(src, ed.Remove)
				case ed.SetAddress != nil:
					src, err = SetAddress(src, ed.SetAddress.Name, ed.SetAddress.Address)
				default:
					err = fmt.Errorf("edit %d does nothing", i)
				}
				if err != nil {
					t.Fatalf("edit %d: %v", i+1, err)
				}
			}
			mustLoad(t, name, src)
			want := filepath.Join("testdata/golden", name+".want.yaml")
			if *update {
				if err := os.WriteFile(want, src, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			w, err := os.ReadFile(want)
			if err != nil {
				t.Fatalf("%v (create it with: go test ./rackedit -run Golden -update)", err)
			}
			if !bytes.Equal(src, w) {
				t.Errorf("%s differs; got:\n%s", want, src)
			}
		})
	}
}

// SetTalosVersion changes exactly the version's value: the line's quoting
// and comment stay, every other byte is the same.
func TestSetTalosVersion(t *testing.T) {
	quoted := strings.Replace(string(profiles.ExampleRack), "  talosVersion: v1.13.0\n", "  talosVersion: \"v1.13.0\" # pinned by hand\n", 1)
	for name, tc := range map[string]struct{ src, want string }{
		"example": {string(profiles.ExampleRack), "  talosVersion: v1.13.1\n"},
		"quoted":  {quoted, "  talosVersion: \"v1.13.1\" # pinned by hand\n"},
	} {
		out, err := SetTalosVersion([]byte(tc.src), "v1.13.1")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		a, b := splitLines([]byte(tc.src)), splitLines(out)
		if len(a) != len(b) {
			t.Fatalf("%s: %d lines became %d", name, len(a), len(b))
		}
		changed := 0
		for i := range a {
			if a[i] != b[i] {
				changed++
				if b[i]+"\n" != tc.want {
					t.Errorf("%s: line %d is %q, want %q", name, i+1, b[i], tc.want)
				}
			}
		}
		if changed != 1 {
			t.Errorf("%s: %d lines changed, want 1", name, changed)
		}
		if r := mustLoad(t, name, out); r.Cluster.TalosVersion != "v1.13.1" {
			t.Errorf("%s: loads with talosVersion %q", name, r.Cluster.TalosVersion)
		}
	}
	if _, err := SetTalosVersion(profiles.ExampleRack, ""); err == nil {
		t.Error("an empty version was accepted")
	}
}
