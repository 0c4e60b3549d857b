package rook

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// rookSource is the directory of the pinned Rook module in the module cache
// (downloaded as scripts/materialize-rook.sh does, outside rackboot's
// go.mod).
func rookSource(t *testing.T) string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("no go command on PATH (install Go 1.26 at /usr/local/go): %v", err)
	}
	cmd := exec.Command(goCmd, "mod", "download", "-json", Module+"@"+ModuleVersion)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download %s@%s: %v\n%s", Module, ModuleVersion, err, out)
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil || info.Error != "" || info.Dir == "" {
		t.Fatalf("go mod download %s@%s: %v %s\n%s", Module, ModuleVersion, err, info.Error, out)
	}
	return info.Dir
}

// TestCSIImagesAreRookDefaults: the CSI images pinned in the operator's
// ConfigMap are exactly the settings the operator reads
// (pkg/operator/ceph/csi/csi.go: getImage("ROOK_CSI_..._IMAGE", Default...))
// with the defaults compiled into it (spec.go), so pinning them changes
// nothing for Rook and misses none.
func TestCSIImagesAreRookDefaults(t *testing.T) {
	dir := filepath.Join(rookSource(t), "pkg", "operator", "ceph", "csi")
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	defaults := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s*(Default\w+Image)\s*=\s*"([^"]+)"`).FindAllStringSubmatch(read("spec.go"), -1) {
		defaults[m[1]] = m[2]
	}
	want := map[string]string{}
	for _, m := range regexp.MustCompile(`getImage\("(\w+)",\s*(\w+)\)`).FindAllStringSubmatch(read("csi.go"), -1) {
		img, ok := defaults[m[2]]
		if !ok {
			t.Fatalf("csi.go reads %s with default %s, which spec.go does not set", m[1], m[2])
		}
		want[m[1]] = img
	}
	if len(want) < 6 {
		t.Fatalf("found %d getImage settings in Rook's csi.go: %v (has the code changed?)", len(want), want)
	}

	objs, err := Upstream(embedded(t))
	if err != nil {
		t.Fatal(err)
	}
	var data map[string]string
	for _, o := range objs {
		if o.GetKind() == "ConfigMap" && o.GetName() == OperatorConfig {
			data, _, _ = unstructured.NestedStringMap(o.Object, "data")
		}
	}
	got := map[string]string{}
	for k, v := range data {
		if strings.HasSuffix(k, "_IMAGE") {
			got[k] = v
		}
	}
	if len(got) != len(want) {
		t.Errorf("pinned %d CSI images %v, Rook's operator reads %d: %v", len(got), got, len(want), want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q in %s, Rook's compiled default is %q", k, got[k], OperatorConfig, v)
		}
	}
}

func TestCSIImages(t *testing.T) {
	list := []byte(" quay.io/cephcsi/cephcsi:v3.15.0\n registry.k8s.io/sig-storage/csi-attacher:v4.8.1\n")
	for _, tc := range []struct {
		name, op, err string
		want          map[string]string
	}{
		{name: "two", op: "data:\n  # ROOK_CSI_CEPH_IMAGE: \"quay.io/cephcsi/cephcsi:v3.15.0\"\n  #ROOK_CSI_ATTACHER_IMAGE:  \"registry.k8s.io/sig-storage/csi-attacher:v4.8.1\"  \n  # ROOK_CSI_IMAGE_PULL_POLICY: \"IfNotPresent\"\n",
			want: map[string]string{"ROOK_CSI_CEPH_IMAGE": "quay.io/cephcsi/cephcsi:v3.15.0", "ROOK_CSI_ATTACHER_IMAGE": "registry.k8s.io/sig-storage/csi-attacher:v4.8.1"}},
		{name: "repeated alike", op: "# ROOK_CSI_CEPH_IMAGE: \"quay.io/cephcsi/cephcsi:v3.15.0\"\n# ROOK_CSI_CEPH_IMAGE: \"quay.io/cephcsi/cephcsi:v3.15.0\"\n",
			want: map[string]string{"ROOK_CSI_CEPH_IMAGE": "quay.io/cephcsi/cephcsi:v3.15.0"}},
		{name: "not in images.txt", op: "# ROOK_CSI_CEPH_IMAGE: \"quay.io/cephcsi/cephcsi:v3.14.0\"\n", err: "does not list"},
		{name: "two values", op: "# ROOK_CSI_CEPH_IMAGE: \"quay.io/cephcsi/cephcsi:v3.15.0\"\n# ROOK_CSI_CEPH_IMAGE: \"registry.k8s.io/sig-storage/csi-attacher:v4.8.1\"\n", err: "twice"},
		{name: "none", op: "data:\n  ROOK_LOG_LEVEL: INFO\n", err: "no ROOK_CSI_*_IMAGE"},
	} {
		got, err := CSIImages([]byte(tc.op), list)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || len(got) != len(tc.want) {
			t.Errorf("%s: %v, %v; want %v", tc.name, got, err, tc.want)
			continue
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("%s: %s = %q, want %q", tc.name, k, got[k], v)
			}
		}
	}
}
