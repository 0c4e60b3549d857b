package rook

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// embedded is the materialized upstream folder; the test fails (it does not
// skip) when it is missing, naming the make target.
func embedded(t *testing.T) fs.FS {
	t.Helper()
	fsys, err := Embedded()
	if err != nil {
		t.Fatalf("%v (the tests need the materialized Rook manifests)", err)
	}
	return fsys
}

func TestUpstream(t *testing.T) {
	fsys := embedded(t)
	objs, err := Upstream(fsys)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
		if err := CheckObject(o); err != nil {
			t.Error(err)
		}
		if o.GetKind() == "Namespace" {
			t.Errorf("upstream Namespace %s kept; Cluster generates it", o.GetName())
		}
	}
	// Rook v1.18.8: 21 ceph.rook.io/objectbucket CRDs plus the CSI operator's.
	if kinds["CustomResourceDefinition"] < 21 {
		t.Errorf("%d CRDs, want at least 21", kinds["CustomResourceDefinition"])
	}
	if kinds["Deployment"] != 2 {
		t.Errorf("%d Deployments, want 2 (rook-ceph-operator, ceph-csi-controller-manager)", kinds["Deployment"])
	}
	var images []string
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			img, err := firstImage(o)
			if err != nil {
				t.Fatal(err)
			}
			images = append(images, img)
		}
	}
	for _, img := range images {
		if strings.HasSuffix(img, ":latest") || !strings.Contains(img, ":v") {
			t.Errorf("image %q is not pinned to a version", img)
		}
	}
	src, err := Source(fsys)
	if err != nil || !strings.Contains(src, "go.sum: github.com/rook/rook v1.18.8 h1:") {
		t.Errorf("SOURCE = %q, %v", src, err)
	}
}

// TestUpstreamWithoutCRDs: the same objects as Upstream minus every
// CustomResourceDefinition, in the same order; a "kind:" that is not a
// top-level key does not hide a document.
func TestUpstreamWithoutCRDs(t *testing.T) {
	fsys := embedded(t)
	all, err := Upstream(fsys)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UpstreamWithoutCRDs(fsys)
	if err != nil {
		t.Fatal(err)
	}
	var want []*unstructured.Unstructured
	for _, o := range all {
		if o.GetKind() != "CustomResourceDefinition" {
			want = append(want, o)
		}
	}
	if len(want) == len(all) || !reflect.DeepEqual(got, want) {
		t.Errorf("UpstreamWithoutCRDs: %d objects, want the %d of Upstream's %d that are not CRDs, equal", len(got), len(want), len(all))
	}
	docs := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  x: |\n    kind: CustomResourceDefinition\n" +
		"---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: b\n"
	objs, err := parseYAML("t", []byte(docs), "CustomResourceDefinition")
	if err != nil || len(objs) != 1 || objs[0].GetName() != "a" {
		t.Errorf("parseYAML skipping CRDs: %v, %d objects; want only ConfigMap a", err, len(objs))
	}
}

func TestUpstreamMissingAndWrong(t *testing.T) {
	if _, err := Upstream(fstest.MapFS{}); err == nil {
		t.Error("empty folder accepted")
	}
	wrong := fstest.MapFS{"SOURCE": {Data: []byte("module: github.com/rook/rook\nversion: v1.17.0\n")}}
	if _, err := Upstream(wrong); err == nil || !strings.Contains(err.Error(), "make bundles") {
		t.Errorf("wrong version: %v", err)
	}
	okSource := []byte("module: github.com/rook/rook\nversion: v1.18.8\n")
	deploy := func(img string) []byte {
		return []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: rook-ceph-operator, namespace: rook-ceph}\nspec:\n  template:\n    spec:\n      containers: [{name: op, image: " + img + "}]\n")
	}
	opConfig := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: rook-ceph-operator-config, namespace: rook-ceph}\ndata:\n  ROOK_LOG_LEVEL: INFO\n  # ROOK_CSI_CEPH_IMAGE: \"quay.io/cephcsi/cephcsi:v3.15.0\"\n---\n"
	mfs := func(op []byte) fstest.MapFS {
		return fstest.MapFS{"SOURCE": {Data: okSource}, "crds.yaml": {}, "common.yaml": {}, "operator.yaml": {Data: append([]byte(opConfig), op...)}, "csi-operator.yaml": {},
			"images.txt": {Data: []byte(" docker.io/rook/ceph:v1.18.8\n quay.io/cephcsi/cephcsi:v3.15.0\n")}}
	}
	if _, err := Upstream(mfs(deploy("docker.io/rook/ceph:master"))); err == nil || !strings.Contains(err.Error(), "pinned") {
		t.Errorf("unpinned operator image: %v", err)
	}
	objs, err := Upstream(mfs(deploy(OperatorImage)))
	if err != nil || len(objs) != 2 {
		t.Errorf("minimal upstream: %d objects, %v", len(objs), err)
	} else if data := objs[0].Object["data"]; !reflect.DeepEqual(data, map[string]any{"ROOK_LOG_LEVEL": "INFO", "ROOK_CSI_CEPH_IMAGE": "quay.io/cephcsi/cephcsi:v3.15.0"}) {
		t.Errorf("operator config data %v: want the CSI image pinned beside the upstream setting", data)
	}
	noList := mfs(deploy(OperatorImage))
	delete(noList, "images.txt")
	if _, err := Upstream(noList); err == nil || !strings.Contains(err.Error(), "make bundles") {
		t.Errorf("no images.txt: %v", err)
	}
	if _, err := Upstream(mfs([]byte("kind: ConfigMap\n"))); err == nil {
		t.Error("object without apiVersion/name accepted")
	}
}

func TestErrNoManifestsMessage(t *testing.T) {
	if !strings.Contains(ErrNoManifests.Error(), "make bundles") || !strings.Contains(ErrNoManifests.Error(), "v1.18.8") {
		t.Error(ErrNoManifests)
	}
	// The embedded folder is missing in a fresh clone: Embedded says so.
	if _, err := os.Stat(filepath.Join("upstream", "SOURCE")); errors.Is(err, os.ErrNotExist) {
		if _, err := Embedded(); !errors.Is(err, ErrNoManifests) {
			t.Errorf("Embedded() = %v, want ErrNoManifests", err)
		}
	}
}

func TestParseYAML(t *testing.T) {
	in := "# comment only\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: x\ndata: {k: v}\n---\n# trailing\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n"
	objs, err := ParseYAML("t", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 || objs[0].GetName() != "a" || objs[1].GetKind() != "Namespace" {
		t.Fatalf("got %v", objs)
	}
	for _, bad := range []string{
		"apiVersion: v1\nkind: ConfigMap\n",
		"apiVersion: v1\nmetadata: {name: a}\n",
		"- a\n- b\n",
		"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: [x]}\n",
		"apiVersion: [v1]\nkind: ConfigMap\nmetadata: {name: a}\n",
		"a: b: c\n",
	} {
		if _, err := ParseYAML("bad", []byte(bad)); err == nil || !strings.Contains(err.Error(), "bad: YAML document 1") {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
}

func FuzzParseYAML(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n"))
	f.Add([]byte("---\n# x\n---\n{}\n"))
	f.Add([]byte("kind: [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := ParseYAML("fuzz", data)
		if err != nil {
			return
		}
		for _, o := range objs {
			if err := CheckObject(o); err != nil {
				t.Fatalf("ParseYAML returned an object CheckObject refuses: %v", err)
			}
			if _, err := o.MarshalJSON(); err != nil {
				t.Fatalf("object does not marshal: %v", err)
			}
		}
	})
}

func TestCounts(t *testing.T) {
	for _, c := range []struct {
		nodes, mons, mgrs, size int
		domain                  string
		multi                   bool
	}{
		{1, 1, 1, 1, "osd", true},
		{2, 1, 2, 2, "host", false},
		{3, 3, 2, 3, "host", false},
		{6, 3, 2, 3, "host", false},
	} {
		var p Params
		for i := 0; i < c.nodes; i++ {
			p.Nodes = append(p.Nodes, Node{Name: string(rune('a' + i))})
		}
		objs, err := Cluster(p)
		if err != nil {
			t.Fatal(err)
		}
		byKind := map[string]*unstructured.Unstructured{}
		for _, o := range objs {
			byKind[o.GetKind()+"/"+o.GetName()] = o
		}
		cl := byKind["CephCluster/rook-ceph"]
		num := func(o *unstructured.Unstructured, f ...string) int64 {
			v, _, err := unstructured.NestedInt64(o.Object, f...)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		flag := func(o *unstructured.Unstructured, f ...string) bool {
			v, _, err := unstructured.NestedBool(o.Object, f...)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		if got := num(cl, "spec", "mon", "count"); got != int64(c.mons) {
			t.Errorf("%d nodes: mon.count %d, want %d", c.nodes, got, c.mons)
		}
		if got := num(cl, "spec", "mgr", "count"); got != int64(c.mgrs) {
			t.Errorf("%d nodes: mgr.count %d, want %d", c.nodes, got, c.mgrs)
		}
		if got := flag(cl, "spec", "mon", "allowMultiplePerNode"); got != c.multi {
			t.Errorf("%d nodes: mon.allowMultiplePerNode %v", c.nodes, got)
		}
		nodes, _, _ := unstructured.NestedSlice(cl.Object, "spec", "storage", "nodes")
		if len(nodes) != c.nodes || nodes[0].(map[string]any)["deviceFilter"] != DefaultDeviceFilter {
			t.Errorf("%d nodes: storage.nodes = %v", c.nodes, nodes)
		}
		for _, f := range []string{"useAllNodes", "useAllDevices"} {
			if v, ok, _ := unstructured.NestedBool(cl.Object, "spec", "storage", f); !ok || v {
				t.Errorf("storage.%s = %v (set %v), want false", f, v, ok)
			}
		}
		for _, name := range []string{"replicapool", "builtin-mgr"} {
			pool := byKind["CephBlockPool/"+name]
			if got := num(pool, "spec", "replicated", "size"); got != int64(c.size) {
				t.Errorf("%d nodes: %s size %d, want %d", c.nodes, name, got, c.size)
			}
			if got, _, _ := unstructured.NestedString(pool.Object, "spec", "failureDomain"); got != c.domain {
				t.Errorf("%d nodes: %s failureDomain %s, want %s", c.nodes, name, got, c.domain)
			}
			if got := flag(pool, "spec", "replicated", "requireSafeReplicaSize"); got != (c.size > 1) {
				t.Errorf("%d nodes: requireSafeReplicaSize %v", c.nodes, got)
			}
		}
		_, hasCfg, _ := unstructured.NestedMap(cl.Object, "spec", "cephConfig")
		if hasCfg != (c.size < 3) {
			t.Errorf("%d nodes: cephConfig present = %v", c.nodes, hasCfg)
		}
	}
}

func TestClusterObjects(t *testing.T) {
	objs, err := Cluster(Params{Nodes: []Node{{Name: "n1", DeviceFilter: "^sdb$"}, {Name: "n2"}}})
	if err != nil {
		t.Fatal(err)
	}
	ns := objs[0]
	if ns.GetKind() != "Namespace" || ns.GetLabels()["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace %v", ns.Object)
	}
	sc := objs[len(objs)-1]
	if sc.GetName() != "ceph-block" || sc.GetAnnotations()["storageclass.kubernetes.io/is-default-class"] != "true" ||
		sc.Object["provisioner"] != RBDProvisioner || sc.Object["reclaimPolicy"] != "Delete" || sc.Object["allowVolumeExpansion"] != true {
		t.Errorf("storage class %v", sc.Object)
	}
	nodes, _, _ := unstructured.NestedSlice(objs[1].Object, "spec", "storage", "nodes")
	if nodes[0].(map[string]any)["deviceFilter"] != "^sdb$" || nodes[1].(map[string]any)["deviceFilter"] != DefaultDeviceFilter {
		t.Errorf("nodes %v", nodes)
	}
	if img, _, _ := unstructured.NestedString(objs[1].Object, "spec", "cephVersion", "image"); img != CephImage {
		t.Errorf("ceph image %s", img)
	}
	for _, o := range objs {
		if err := CheckObject(o); err != nil {
			t.Error(err)
		}
	}
}

func TestClusterBadParams(t *testing.T) {
	for _, p := range []Params{
		{},
		{Nodes: []Node{{Name: "Bad_Name"}}},
		{Nodes: []Node{{Name: "a"}, {Name: "a"}}},
		{Nodes: []Node{{Name: "a", DeviceFilter: "sd[("}}},
	} {
		if _, err := Cluster(p); err == nil {
			t.Errorf("%+v accepted", p)
		}
	}
}

func TestReadiness(t *testing.T) {
	mk := func(status map[string]any) *unstructured.Unstructured {
		o := obj("ceph.rook.io/v1", "CephCluster", Namespace, ClusterName)
		if status != nil {
			o.Object["status"] = status
		}
		return o
	}
	if ok, why := ClusterHealthy(mk(nil)); ok || !strings.Contains(why, "not reported yet") || !strings.Contains(why, "toolbox") {
		t.Errorf("no status: %v %q", ok, why)
	}
	if ok, why := ClusterHealthy(mk(map[string]any{"ceph": map[string]any{"health": "HEALTH_ERR"}, "message": "mon down"})); ok || !strings.Contains(why, "HEALTH_ERR") || !strings.Contains(why, "mon down") {
		t.Errorf("HEALTH_ERR: %v %q", ok, why)
	}
	if ok, _ := ClusterHealthy(mk(map[string]any{"ceph": map[string]any{"health": "HEALTH_OK"}})); !ok {
		t.Error("HEALTH_OK not healthy")
	}
	if ok, why := PhaseReady(mk(map[string]any{"phase": "Progressing"})); ok || !strings.Contains(why, "Progressing") {
		t.Errorf("Progressing: %v %q", ok, why)
	}
	if ok, _ := PhaseReady(mk(map[string]any{"phase": "Ready"})); !ok {
		t.Error("Ready not ready")
	}
}
