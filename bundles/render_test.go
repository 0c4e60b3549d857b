package bundles

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/dotfile/rackboot/bundles/cockroach"
	"github.com/dotfile/rackboot/bundles/rook"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// certsDir is shared by the tests that only read certificates (issuing RSA
// keys is the slow part); it is removed after the run.
var certsDir string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "bundles-certs-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	certsDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// exampleParams are what `rackboot bundles render` derives from
// profiles/example/rack.yaml (cmd/rackboot checks that): six machines with
// the default Ceph filter; four workers, so CockroachDB stays off the
// control planes.
func exampleParams(t *testing.T) Params {
	t.Helper()
	var rp RookParams
	for _, n := range []string{"formula", "urban", "lailah", "verus", "mastema", "amdusias-ii"} {
		rp.Nodes = append(rp.Nodes, RookNode{Name: n, DeviceFilter: `^sd[a-z]+$`})
	}
	return Params{
		Rook:      rp,
		Cockroach: CockroachParams{Nodes: []string{"lailah", "verus", "mastema", "amdusias-ii"}},
		CertsDir:  certsDir,
		Now:       func() time.Time { return time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC) },
	}
}

func render(t *testing.T, p Params) []Bundle {
	t.Helper()
	bs, err := Render(p)
	if err != nil {
		t.Fatalf("%v (Rook manifests are materialized by `make bundles`)", err)
	}
	return bs
}

// generated keeps the objects rackboot writes (labelled managed-by
// rackboot), leaving out Rook's upstream files, which are not ours to commit.
func generated(bs []Bundle) []Bundle {
	out := make([]Bundle, len(bs))
	for i, b := range bs {
		out[i] = Bundle{Name: b.Name}
		for _, o := range b.Objects {
			if o.GetLabels()["app.kubernetes.io/managed-by"] == "rackboot" {
				out[i].Objects = append(out[i].Objects, o)
			}
		}
	}
	return out
}

func TestRenderGolden(t *testing.T) {
	bs := render(t, exampleParams(t))
	var buf bytes.Buffer
	if err := WriteYAML(&buf, generated(bs), true); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "example-rack.yaml")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./bundles -run TestRenderGolden -update)", err)
	}
	if !bytes.Equal(buf.Bytes(), want) {
		t.Errorf("rendered bundles differ from %s (rerun with -update if intended):\n%s", golden, firstDiff(string(want), buf.String()))
	}
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := range min(len(al), len(bl)) {
		if al[i] != bl[i] {
			return "line " + strconv.Itoa(i+1) + ":\n- " + al[i] + "\n+ " + bl[i]
		}
	}
	return "lengths differ: " + strconv.Itoa(len(al)) + " vs " + strconv.Itoa(len(bl)) + " lines"
}

func TestRenderDeterministic(t *testing.T) {
	p := exampleParams(t)
	var a, b bytes.Buffer
	if err := WriteYAML(&a, render(t, p), false); err != nil {
		t.Fatal(err)
	}
	if err := WriteYAML(&b, render(t, p), false); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two renders with the same inputs and certificates differ")
	}
	if !strings.Contains(a.String(), "BEGIN RSA PRIVATE KEY") && !strings.Contains(a.String(), "node.key: ") {
		t.Error("unredacted output has no node key")
	}
	var r bytes.Buffer
	if err := WriteYAML(&r, render(t, p), true); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(filepath.Join(p.CertsDir, cockroach.NodeKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(r.String(), string(key[40:80])) || !strings.Contains(r.String(), "node.key: "+Redacted) {
		t.Error("redacted output shows the node key or hides its name")
	}
}

func TestRenderObjects(t *testing.T) {
	p := exampleParams(t)
	bs := render(t, p)
	if len(bs) != 2 || bs[0].Name != RookBundle || bs[1].Name != CockroachBundle {
		t.Fatalf("bundles %v", bs)
	}
	kinds := map[string]int{}
	for _, b := range bs {
		for _, o := range b.Objects {
			// Every object converts cleanly to JSON and back, and names itself.
			j, err := o.MarshalJSON()
			if err != nil {
				t.Fatalf("%s: %v", o.GetName(), err)
			}
			var back unstructured.Unstructured
			if err := back.UnmarshalJSON(j); err != nil {
				t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
			}
			if back.GetAPIVersion() == "" || back.GetKind() == "" || back.GetName() == "" {
				t.Errorf("object without apiVersion/kind/name: %s", j[:min(len(j), 200)])
			}
			kinds[o.GetKind()]++
		}
	}
	if kinds["CustomResourceDefinition"] < 21 || kinds["CephCluster"] != 1 || kinds["CephBlockPool"] != 2 ||
		kinds["StorageClass"] != 1 || kinds["StatefulSet"] != 1 || kinds["Job"] != 1 || kinds["Secret"] != 2 || kinds["Namespace"] != 2 {
		t.Errorf("kinds %v", kinds)
	}
	first := bs[0].Objects[0]
	if first.GetKind() != "Namespace" || first.GetName() != rook.Namespace || first.GetLabels()["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("Rook bundle starts with %s %s %v", first.GetKind(), first.GetName(), first.GetLabels())
	}
	// Gates point at objects of their bundle and judge them.
	for _, b := range bs {
		for _, g := range b.Gates {
			found := false
			for _, o := range b.Objects {
				gv := o.GroupVersionKind()
				if o.GetName() == g.Object && o.GetNamespace() == g.Namespace && gv.Group == g.GVR.Group && gv.Version == g.GVR.Version &&
					strings.EqualFold(gv.Kind+"s", g.GVR.Resource) {
					found = true
					if ok, why := g.Ready(o); ok || why == "" {
						t.Errorf("gate %q passes on the fresh object (%v, %q)", g.Name, ok, why)
					}
				}
			}
			if !found {
				t.Errorf("gate %q names no object of bundle %s", g.Name, b.Name)
			}
		}
	}
}

func TestRenderRefuses(t *testing.T) {
	p := exampleParams(t)
	p.CertsDir = ""
	if _, err := Render(p); err == nil {
		t.Error("no certs dir accepted")
	}
	p = exampleParams(t)
	p.Cockroach.Nodes = nil
	if _, err := Render(p); err == nil || !strings.Contains(err.Error(), "schedulable") {
		t.Errorf("no schedulable nodes: %v", err)
	}
	p = exampleParams(t)
	p.Rook.Nodes = nil
	if _, err := Render(p); err == nil {
		t.Error("no storage nodes accepted")
	}
	p = exampleParams(t)
	p.RookManifests = os.DirFS(t.TempDir())
	if _, err := Render(p); err == nil {
		t.Error("empty Rook manifests folder accepted")
	}
	p = exampleParams(t)
	p.Cockroach.StorageSize = "ten gigs"
	if _, err := Render(p); err == nil || !strings.Contains(err.Error(), "storage size") {
		t.Errorf("bad storage size: %v", err)
	}
}
