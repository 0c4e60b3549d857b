package profiles

import (
	"strconv"
	"strings"
	"testing"
)

func TestTalosProblemsExampleRackClean(t *testing.T) {
	if ps := talosProblems(exampleRack(t)); len(ps) != 0 {
		t.Fatalf("the example rack has Talos problems:\n%v", ps.Error())
	}
}

// lineOf is the 1-based line of the first line of src containing marker.
func lineOf(t *testing.T, src, marker string) int {
	t.Helper()
	for i, l := range strings.Split(src, "\n") {
		if strings.Contains(l, marker) {
			return i + 1
		}
	}
	t.Fatalf("marker %q not in rack", marker)
	return 0
}

func TestTalosProblems(t *testing.T) {
	for _, tc := range []struct {
		name string
		// edit turns the single-node rack into the bad one.
		from, to string
		// the problem: the line holding marker, and words in its message.
		marker  string
		want    []string
		warning bool
	}{
		{
			name: "kubernetes too new", from: "kubernetesVersion: 1.36.0", to: "kubernetesVersion: 1.40.0",
			marker: "kubernetesVersion:", want: []string{"too new", "write kubernetesVersion 1.36.0", "1.31.0"},
		},
		{
			name: "kubernetes too old", from: "kubernetesVersion: 1.36.0", to: "kubernetesVersion: 1.20.0",
			marker: "kubernetesVersion:", want: []string{"too old", "write kubernetesVersion"},
		},
		{
			name: "kubernetes not a version", from: "kubernetesVersion: 1.36.0", to: "kubernetesVersion: latest",
			marker: "kubernetesVersion:", want: []string{"write a version without v, such as 1.36.0"},
		},
		{
			name: "kubernetes with v", from: "kubernetesVersion: 1.36.0", to: "kubernetesVersion: v1.36.0",
			marker: "kubernetesVersion:", want: []string{"without v"},
		},
		{
			name: "talos newer than machinery", from: "talosVersion: v1.13.0", to: "talosVersion: v1.14.0",
			marker: "kubernetesVersion:", want: []string{"not supported", "write talosVersion v1.13.x"},
		},
		{
			name: "talos too old for network documents", from: "talosVersion: v1.13.0\n  kubernetesVersion: 1.36.0", to: "talosVersion: v1.11.0\n  kubernetesVersion: 1.34.0",
			marker: "talosVersion:", want: []string{"too old", "v1.13.0"},
		},
		{
			name: "patch with unknown field", from: "          sysctls:", to: "          sysctlz:",
			marker: "      - machine:", want: []string{"does not load", "sysctlz", "write a mapping of Talos config fields"},
		},
		{
			name: "patch not yaml", from: "      - machine:\n          sysctls:\n            vm.nr_hugepages: \"64\"", to: "      - \"machine: [oops\"",
			marker: "oops", want: []string{"does not load"},
		},
		{
			name: "json6902 patch", from: "      - machine:\n          sysctls:\n            vm.nr_hugepages: \"64\"", to: "      - - op: remove\n          path: /machine/install",
			marker: "op: remove", want: []string{"JSON6902", "strategic-merge", "$patch: delete"},
		},
		{
			name: "patch that fails metal validation", from: "      - machine:\n          sysctls:\n            vm.nr_hugepages: \"64\"", to: "      - machine:\n          install:\n            $patch: delete",
			marker: "- name: one", want: []string{"fails metal validation", "install", "rackboot config one"},
		},
		{
			name: "cluster patch reported once for all machines", from: "  network:\n", to: "  patches:\n    - cluster:\n        network:\n          podSubnets: [\"10.244.0.0/16\"]\n          podSubnetz: x\n  network:\n",
			marker: "    - cluster:", want: []string{"does not load", "podSubnetz"},
		},
		{
			// Once for both machines; mirror.gcr.io is not rackboot's.
			name: "patch sets a v1alpha1 mirror rackboot's document shadows", from: "    gateway: 10.0.0.1\n",
			to:     "    gateway: 10.0.0.1\n    rackboot: 10.0.0.2\n  patches:\n    - machine:\n        registries:\n          mirrors:\n            docker.io: {endpoints: [\"https://mirror.example.com\"]}\n            mirror.gcr.io: {endpoints: [\"https://mirror.example.com\"]}\n",
			marker: "- name: one", warning: true, want: []string{`machine.registries.mirrors["docker.io"], which Talos ignores`, "kind: RegistryMirrorConfig, name: docker.io"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(singleNodeRack, tc.from) {
				t.Fatalf("edit %q not found in the rack", tc.from)
			}
			src := strings.Replace(singleNodeRack, tc.from, tc.to, 1)
			r, err := Load("bad.yaml", []byte(src))
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			ps := talosProblems(r)
			if len(ps) != 1 {
				t.Fatalf("got %d problems, want exactly 1:\n%s", len(ps), ps.Error())
			}
			p := ps[0]
			if wantLine := lineOf(t, src, tc.marker); p.Pos.Line != wantLine {
				t.Errorf("problem at line %d, want %d (%q): %s", p.Pos.Line, wantLine, tc.marker, p)
			}
			if p.File != "bad.yaml" || p.Warning != tc.warning {
				t.Errorf("problem %s: file or severity wrong", p)
			}
			for _, w := range tc.want {
				if !strings.Contains(p.Msg, w) {
					t.Errorf("message %q lacks %q", p.Msg, w)
				}
			}
		})
	}
}

// Problems the structural checks own are not repeated here.
func TestTalosProblemsLeavesStructuralOnesToValidate(t *testing.T) {
	for _, edit := range [][2]string{
		{"talosVersion: v1.13.0", "talosVersion: 1.13.0"},
		{"vip: 10.0.0.10", "vip: nope"},
		{"address: 10.0.0.11/24", "address: 10.0.0.11"},
		{"role: worker", "role: boss"},
	} {
		src := strings.Replace(singleNodeRack, edit[0], edit[1], 1)
		r, err := Load("bad.yaml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		if ps := talosProblems(r); len(ps) != 0 {
			t.Errorf("%s → %s: talosProblems repeats a structural problem:\n%s", edit[0], edit[1], ps.Error())
		}
	}
}

// FuzzTalosProblems holds validation to its promise: a rack it finds no
// error in generates a config.
func FuzzTalosProblems(f *testing.F) {
	f.Add("machine: {sysctls: {a: b}}")
	f.Add("- op: remove\n  path: /machine/install")
	f.Add("cluster: {allowSchedulingOnControlPlanes: true}")
	b := testBundle(f)
	f.Fuzz(func(t *testing.T, patch string) {
		src := strings.Replace(singleNodeRack, "      - machine:\n          sysctls:\n            vm.nr_hugepages: \"64\"", "      - "+strconv.Quote(patch), 1)
		r, err := Load("fuzz.yaml", []byte(src))
		if err != nil {
			return
		}
		ps := talosProblems(r)
		if ps.Errors() {
			return
		}
		if _, err := GenerateConfig(r, "one", b); err != nil {
			t.Fatalf("talosProblems found no error in patch %q, but generation fails: %v", patch, err)
		}
	})
}
