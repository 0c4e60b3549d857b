package profiles

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/registry"
)

// rackVariant is the example rack with its text edited (old → new pairs),
// so that arch and patches go through the loader as a user writes them.
func rackVariant(t *testing.T, edits ...string) *Rack {
	t.Helper()
	src := string(ExampleRack)
	for i := 0; i+1 < len(edits); i += 2 {
		if !strings.Contains(src, edits[i]) {
			t.Fatalf("example rack has no %q to edit", edits[i])
		}
		src = strings.Replace(src, edits[i], edits[i+1], 1)
	}
	r, err := Load("rack.yaml", []byte(src))
	if err != nil {
		t.Fatalf("load edited example rack: %v\n%s", err, src)
	}
	return r
}

// verusARM makes the worker verus an arm64 machine.
var verusARM = []string{"    address: 192.168.1.14/24\n", "    address: 192.168.1.14/24\n    arch: arm64\n"}

func images(t *testing.T, r *Rack) ([]Image, []string) {
	t.Helper()
	ims, unlisted, err := r.Images()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, im := range ims {
		n, err := registry.ParseRef(im.Ref)
		if err != nil || n.String() != im.Ref {
			t.Errorf("ref %q is not normalized (%v, %v)", im.Ref, n, err)
		}
		if seen[im.Ref] {
			t.Errorf("ref %q listed twice", im.Ref)
		}
		seen[im.Ref] = true
		if len(im.Platforms) == 0 || !slices.IsSorted(im.Platforms) || len(slices.Compact(slices.Clone(im.Platforms))) != len(im.Platforms) {
			t.Errorf("%s: platforms %v: want a sorted list without repeats", im.Ref, im.Platforms)
		}
		for _, p := range im.Platforms {
			if p != "linux/amd64" && p != "linux/arm64" {
				t.Errorf("%s: platform %q", im.Ref, p)
			}
		}
		if len(im.Sources) == 0 {
			t.Errorf("%s has no source", im.Ref)
		}
	}
	return ims, unlisted
}

func byRef(ims []Image) map[string]Image {
	m := map[string]Image{}
	for _, im := range ims {
		m[im.Ref] = im
	}
	return m
}

func norm(t *testing.T, ref string) string {
	t.Helper()
	n, err := registry.ParseRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	return n.String()
}

// TestImagesInstallers: one installer per distinct schematic, the GPU node's
// apart, each with the architectures of the machines using it.
func TestImagesInstallers(t *testing.T) {
	r := rackVariant(t, verusARM...)
	ims, _ := images(t, r)
	got := byRef(ims)

	perSchematic := map[string][]*Machine{}
	for i := range r.Machines {
		m := &r.Machines[i]
		id, err := SchematicID(r.Schematic(m))
		if err != nil {
			t.Fatal(err)
		}
		perSchematic[id] = append(perSchematic[id], m)
	}
	if len(perSchematic) != 2 {
		t.Fatalf("example rack has %d schematics, want 2 (vanilla, GPU)", len(perSchematic))
	}
	installers := 0
	for _, im := range ims {
		if strings.HasPrefix(im.Ref, ImageFactory+"/metal-installer/") {
			installers++
		}
	}
	if installers != len(perSchematic) {
		t.Errorf("%d installer images, want one per schematic (%d)", installers, len(perSchematic))
	}
	for id, ms := range perSchematic {
		ref := norm(t, InstallerImage(id, r.Cluster.TalosVersion))
		im, ok := got[ref]
		if !ok {
			t.Errorf("no installer %s for %d machines", ref, len(ms))
			continue
		}
		var wantPlat, wantSrc []string
		for _, m := range ms {
			if p := "linux/" + m.ArchOrDefault(); !slices.Contains(wantPlat, p) {
				wantPlat = append(wantPlat, p)
			}
			wantSrc = append(wantSrc, "installer of machine "+m.Name+" (machine.install.image)")
		}
		slices.Sort(wantPlat)
		if !slices.Equal(im.Platforms, wantPlat) {
			t.Errorf("%s: platforms %v, want %v", ref, im.Platforms, wantPlat)
		}
		if !slices.Equal(im.Sources, wantSrc) {
			t.Errorf("%s: sources %q, want %q", ref, im.Sources, wantSrc)
		}
	}
	gpu, err := SchematicID(r.Schematic(r.Machine("amdusias-ii")))
	if err != nil {
		t.Fatal(err)
	}
	if ms := perSchematic[gpu]; len(ms) != 1 || ms[0].Name != "amdusias-ii" {
		t.Errorf("GPU schematic %s is used by %d machines, want amdusias-ii alone", gpu, len(ms))
	}
	if im := got[norm(t, InstallerImage(gpu, r.Cluster.TalosVersion))]; !slices.Equal(im.Platforms, []string{"linux/amd64"}) {
		t.Errorf("GPU installer platforms %v, want linux/amd64 only (verus, arm64, is vanilla)", im.Platforms)
	}
}

// TestImagesPlatforms: control-plane images carry the control planes'
// architectures; what runs on every node carries all of them.
func TestImagesPlatforms(t *testing.T) {
	for _, tc := range []struct {
		name        string
		edits       []string
		cp, all     []string
		installArch []string
	}{
		{"all amd64", nil, []string{"linux/amd64"}, []string{"linux/amd64"}, nil},
		{"arm64 worker", verusARM, []string{"linux/amd64"}, []string{"linux/amd64", "linux/arm64"}, nil},
		{"arm64 control plane", []string{"    address: 192.168.1.12/24\n", "    address: 192.168.1.12/24\n    arch: arm64\n"},
			[]string{"linux/amd64", "linux/arm64"}, []string{"linux/amd64", "linux/arm64"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rackVariant(t, tc.edits...)
			ims, _ := images(t, r)
			for _, im := range ims {
				want := tc.all
				for _, s := range im.Sources {
					for _, cp := range []string{"cluster.etcd.image", "cluster.apiServer.image", "cluster.controllerManager.image", "cluster.scheduler.image"} {
						if strings.Contains(s, cp) {
							want = tc.cp
						}
					}
					if strings.HasPrefix(s, "installer of") {
						want = nil
					}
				}
				if want != nil && !slices.Equal(im.Platforms, want) {
					t.Errorf("%s (%s): platforms %v, want %v", im.Ref, im.Sources[0], im.Platforms, want)
				}
			}
		})
	}
}

// talosImagesTool builds profiles/testdata/talosimages, a program that runs
// Talos's own pkg/images.List (github.com/siderolabs/talos v1.13.0) on
// config files. A cold build compiles machinery (about two minutes on two
// cores); then it comes from the build cache.
func talosImagesTool(t *testing.T) string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command on PATH (install Go 1.26 at /usr/local/go and add /usr/local/go/bin to PATH): %v", err)
	}
	bin := filepath.Join(t.TempDir(), "talosimages")
	cmd := exec.Command(goCmd, "build", "-o", bin, ".")
	cmd.Dir = filepath.Join("testdata", "talosimages")
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build testdata/talosimages (Talos's pkg/images): %v\n%s", err, out)
	}
	return bin
}

// talosList runs Talos's images.List on each machine's generated config:
// machine name → images.Versions field → reference.
func talosList(t *testing.T, tool string, r *Rack) map[string]map[string]string {
	t.Helper()
	dir := t.TempDir()
	b := testBundle(t)
	var files []string
	for _, m := range r.Machines {
		data, err := GenerateConfig(r, m.Name, b)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(dir, m.Name+".yaml")
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(tool, files...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("talosimages: %v\n%s", err, stderr.Bytes())
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	lists := map[string]map[string]string{}
	for _, m := range r.Machines {
		var l map[string]string
		if err := dec.Decode(&l); err != nil {
			t.Fatalf("talosimages output for %s: %v\n%s", m.Name, err, out)
		}
		lists[m.Name] = l
	}
	return lists
}

// TestImagesMatchTalos compares the system images (all but the installers)
// with what Talos's own images.List returns for the same generated configs:
// the kubelet of every machine, etcd and the control-plane pods of the
// control planes, and the bootstrap manifests' images (kube-proxy, CoreDNS,
// flannel, kube-network-policies when enabled) and the pause image. A new
// field in Talos's list fails the test until Images knows it.
func TestImagesMatchTalos(t *testing.T) {
	tool := talosImagesTool(t)
	for _, tc := range []struct {
		name      string
		edits     []string
		netpols   bool
		overrides []string // references only a patch names
	}{
		{name: "example rack"},
		{
			name: "patched",
			edits: append(slices.Clone(verusARM), "  installDisk:\n    type: nvme\n", `  installDisk:
    type: nvme
  patches:
    - cluster:
        apiServer:
          image: mirror.example.com/k8s/kube-apiserver:v1.36.0
        coreDNS:
          image: coredns/coredns:1.12.4
        network:
          cni:
            name: flannel
            flannel:
              kubeNetworkPoliciesEnabled: true
`),
			netpols:   true,
			overrides: []string{"mirror.example.com/k8s/kube-apiserver:v1.36.0", "docker.io/coredns/coredns:1.12.4"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rackVariant(t, tc.edits...)
			lists := talosList(t, tool, r)
			want := map[string]bool{}
			for _, m := range r.Machines {
				l := lists[m.Name]
				for field, ref := range l {
					switch field {
					case "Kubelet":
					case "Etcd", "KubeAPIServer", "KubeControllerManager", "KubeScheduler",
						"KubeProxy", "CoreDNS", "Flannel", "Pause":
						// The example's configs enable kube-proxy,
						// CoreDNS and flannel (Talos's defaults);
						// Talos renders them from the control planes'
						// configs.
						if m.Role != RoleControlPlane {
							continue
						}
					case "KubeNetworkPolicies":
						if !tc.netpols || m.Role != RoleControlPlane {
							continue
						}
					default:
						t.Errorf("Talos's images.List has a field %s (%s) that Rack.Images does not know: add it", field, ref)
						continue
					}
					want[norm(t, ref)] = true
				}
			}
			ims, _ := images(t, r)
			got := map[string]bool{}
			for _, im := range ims {
				if !strings.HasPrefix(im.Ref, ImageFactory+"/metal-installer/") {
					got[im.Ref] = true
				}
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("system images differ from Talos's images.List:\n got  %v\n want %v", slices.Sorted(mapKeys(got)), slices.Sorted(mapKeys(want)))
			}
			for _, o := range tc.overrides {
				if !got[o] {
					t.Errorf("patched image %s not listed", o)
				}
			}
			if np := norm(t, lists["formula"]["KubeNetworkPolicies"]); got[np] != tc.netpols {
				t.Errorf("%s listed = %v, want %v (flannel network policies enabled = %v)", np, got[np], tc.netpols, tc.netpols)
			}
			if !got[norm(t, SandboxImage)] || lists["formula"]["Pause"] != SandboxImage {
				t.Errorf("SandboxImage %s: Talos's DefaultSandboxImage is %s", SandboxImage, lists["formula"]["Pause"])
			}
		})
	}
}

func mapKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestImagesMachinePatches: a machine's own patch changes its images only.
func TestImagesMachinePatches(t *testing.T) {
	r := rackVariant(t, "    address: 192.168.1.13/24\n", `    address: 192.168.1.13/24
    patches:
      - machine:
          kubelet:
            image: mirror.example.com/siderolabs/kubelet:v1.36.0
          install:
            image: mirror.example.com/siderolabs/installer:v1.13.0
`)
	ims, _ := images(t, r)
	got := byRef(ims)
	for ref, src := range map[string]string{
		"mirror.example.com/siderolabs/kubelet:v1.36.0":   "Kubernetes v1.36.0 kubelet (machine.kubelet.image)",
		"mirror.example.com/siderolabs/installer:v1.13.0": "installer of machine lailah (machine.install.image)",
	} {
		if im, ok := got[ref]; !ok || !slices.Equal(im.Sources, []string{src}) {
			t.Errorf("%s: %+v, want it listed for %q", ref, im, src)
		}
	}
	vanilla := got[norm(t, InstallerImage(r.Cluster.Schematic.ID, r.Cluster.TalosVersion))]
	for _, s := range vanilla.Sources {
		if strings.Contains(s, "lailah") {
			t.Errorf("lailah's patched install image, yet the vanilla installer lists it: %q", vanilla.Sources)
		}
	}
	if len(vanilla.Sources) != 4 {
		t.Errorf("vanilla installer sources %q, want the other four machines", vanilla.Sources)
	}
}

// TestImagesDisabledAndUnlisted: what the configs turn off is not listed;
// what rackboot cannot list is said.
func TestImagesDisabledAndUnlisted(t *testing.T) {
	r := rackVariant(t, "  installDisk:\n    type: nvme\n", `  installDisk:
    type: nvme
  patches:
    - cluster:
        proxy:
          disabled: true
        coreDNS:
          disabled: true
        network:
          cni:
            name: none
        extraManifests:
          - https://example.com/cilium.yaml
        inlineManifests:
          - name: metallb
            contents: "apiVersion: v1\nkind: Namespace\nmetadata: {name: metallb}\n"
`)
	ims, unlisted := images(t, r)
	for _, im := range ims {
		for _, s := range im.Sources {
			for _, off := range []string{"kube-proxy", "CoreDNS", "flannel"} {
				if strings.Contains(s, off) {
					t.Errorf("%s listed (%s) though the config disables it", im.Ref, s)
				}
			}
		}
	}
	want := []string{
		"the images of the CNI you deploy yourself (cluster.network.cni.name: none)",
		"the images of extra manifest https://example.com/cilium.yaml (cluster.extraManifests)",
		`the images of inline manifest "metallb" (cluster.inlineManifests)`,
	}
	if !slices.Equal(unlisted, want) {
		t.Errorf("unlisted %q, want %q", unlisted, want)
	}
	_, unlisted = images(t, exampleRack(t))
	if len(unlisted) != 0 {
		t.Errorf("example rack: unlisted %q, want none", unlisted)
	}
}

// TestImagesDeterministic: the same rack gives the same list.
func TestImagesDeterministic(t *testing.T) {
	r := exampleRack(t)
	a, _ := images(t, r)
	b, _ := images(t, r)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("two runs differ:\n%v\n%v", a, b)
	}
}
