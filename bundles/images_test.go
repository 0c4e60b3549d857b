package bundles

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/dotfile/rackboot/bundles/cockroach"
	"github.com/dotfile/rackboot/bundles/rook"
	"github.com/dotfile/rackboot/registry"
)

func parse(t testing.TB, docs string) []*unstructured.Unstructured {
	t.Helper()
	objs, err := rook.ParseYAML("test", []byte(docs))
	if err != nil {
		t.Fatalf("test fixture: %v", err)
	}
	return objs
}

// podSpec is a pod spec with a container of each kind, indented to sit at
// depth levels of two spaces.
func podSpec(depth int, img string) string {
	pad := strings.Repeat("  ", depth)
	return pad + "initContainers: [{name: init, image: " + img + "-init}]\n" +
		pad + "containers: [{name: main, image: " + img + "}]\n" +
		pad + "ephemeralContainers: [{name: debug, image: " + img + "-debug}]\n"
}

func TestImagesWorkloadKinds(t *testing.T) {
	three := func(repo string) []string {
		return []string{repo + ":1-debug", repo + ":1", repo + ":1-init"}
	}
	for _, tc := range []struct {
		name, docs string
		want       []string
	}{
		{"Pod", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n" + podSpec(1, "example.com/pod:1"), three("example.com/pod")},
		{"Deployment", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n" + podSpec(3, "example.com/deploy:1"), three("example.com/deploy")},
		{"DaemonSet", "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: d}\nspec:\n  template:\n    spec:\n" + podSpec(3, "example.com/ds:1"), three("example.com/ds")},
		{"StatefulSet", "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: s}\nspec:\n  template:\n    spec:\n" + podSpec(3, "example.com/sts:1"), three("example.com/sts")},
		{"ReplicaSet", "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: r}\nspec:\n  template:\n    spec:\n" + podSpec(3, "example.com/rs:1"), three("example.com/rs")},
		{"Job", "apiVersion: batch/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec:\n" + podSpec(3, "example.com/job:1"), three("example.com/job")},
		{"CronJob", "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec:\n  schedule: '@daily'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n" + podSpec(5, "example.com/cron:1"), three("example.com/cron")},
		{"Docker Hub short names", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: busybox}\n  - {name: b, image: 'nginx:1.27'}\n  - {name: c, image: rook/ceph:v1.18.8}\n  - {name: d, image: index.docker.io/library/busybox}\n",
			[]string{"docker.io/library/busybox:latest", "docker.io/library/nginx:1.27", "docker.io/rook/ceph:v1.18.8"}},
		{"digest", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: a, image: 'quay.io/x/y:v1@sha256:0000000000000000000000000000000000000000000000000000000000000000'}\n",
			[]string{"quay.io/x/y:v1@sha256:0000000000000000000000000000000000000000000000000000000000000000"}},
		{"env and ConfigMap settings", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: rook-ceph-operator-config, namespace: rook-ceph}\ndata:\n  ROOK_CSI_CEPH_IMAGE: quay.io/cephcsi/cephcsi:v3.15.0\n  ROOK_CSI_IMAGE_PULL_POLICY: IfNotPresent\n  ROOK_LOG_LEVEL: INFO\n  EMPTY_IMAGE: ''\n" +
			"---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: op}\nspec:\n  template:\n    spec:\n      containers:\n      - name: op\n        image: docker.io/rook/ceph:v1.18.8\n        env:\n        - {name: ROOK_CSIADDONS_IMAGE, value: quay.io/csiaddons/k8s-sidecar:v0.13.0}\n        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}\n        - {name: ROOK_LOG_LEVEL, value: DEBUG}\n",
			[]string{"docker.io/rook/ceph:v1.18.8", "quay.io/cephcsi/cephcsi:v3.15.0", "quay.io/csiaddons/k8s-sidecar:v0.13.0"}},
		{"CephCluster", "apiVersion: ceph.rook.io/v1\nkind: CephCluster\nmetadata: {name: c, namespace: rook-ceph}\nspec:\n  cephVersion: {image: 'quay.io/ceph/ceph:v19.2.3'}\n",
			[]string{"quay.io/ceph/ceph:v19.2.3"}},
		{"no images", "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {SOME_IMAGE: not-looked-at}\n", nil},
		{"duplicates", "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: a, image: busybox:1}, {name: b, image: docker.io/library/busybox:1}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec:\n  containers: [{name: a, image: busybox:1}]\n",
			[]string{"docker.io/library/busybox:1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Images(parse(t, tc.docs))
			if err != nil {
				t.Fatal(err)
			}
			want := slices.Sorted(slices.Values(tc.want))
			if !slices.Equal(got, want) {
				t.Errorf("images %q, want %q", got, want)
			}
		})
	}
}

func TestImagesRefuses(t *testing.T) {
	for _, tc := range []struct{ name, docs, err string }{
		{"container without image", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: x}\nspec:\n  template:\n    spec:\n      containers: [{name: main}]\n",
			"Deployment x/d: spec.template.spec.containers[0] (main) has no image"},
		{"bad reference", "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec:\n  containers: [{name: main, image: 'Upper/Case:1'}]\n",
			"Pod x/p: spec.containers[0].image"},
		{"bad setting", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: x}\ndata: {ROOK_CSI_CEPH_IMAGE: 'quay.io/x:'}\n",
			"ConfigMap x/c: data.ROOK_CSI_CEPH_IMAGE"},
		{"container not a mapping", "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\nspec:\n  containers: [busybox]\n",
			"spec.containers[0] is not a container"},
		{"CephCluster without image", "apiVersion: ceph.rook.io/v1\nkind: CephCluster\nmetadata: {name: c, namespace: rook-ceph}\nspec: {}\n",
			"has no spec.cephVersion.image"},
	} {
		_, err := Images(parse(t, tc.docs))
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.err)
		}
	}
}

// TestImagesRenderedBundles: the rendered Rook-Ceph and CockroachDB
// bundles name every image Rook's own images.txt lists for the release
// (operator, Ceph, ceph-csi-operator and the CSI driver and sidecars, the
// latter through the pinned operator settings) except COSI's, which only a
// CephCOSIDriver (not rendered) deploys; plus CockroachDB's; and nothing
// else.
func TestImagesRenderedBundles(t *testing.T) {
	bs := render(t, exampleParams(t))
	var objs []*unstructured.Unstructured
	var cephImage string
	for _, b := range bs {
		objs = append(objs, b.Objects...)
		for _, o := range b.Objects {
			if o.GetKind() == "CephCluster" {
				cephImage, _, _ = unstructured.NestedString(o.Object, "spec", "cephVersion", "image")
			}
		}
	}
	got, err := Images(objs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Errorf("images not sorted and unique: %q", got)
	}
	for _, g := range got {
		if n, err := registry.ParseRef(g); g == "" || err != nil || n.String() != g {
			t.Errorf("image %q is not normalized: %v", g, err)
		}
	}

	manifests, err := rook.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	list, err := fs.ReadFile(manifests, rook.ImagesFile)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{norm(t, cephImage), norm(t, cockroach.Image)}
	for _, img := range strings.Fields(string(list)) {
		// COSI's driver and sidecar (Rook pkg/operator/ceph/object/cosi/spec.go).
		if strings.Contains(img, "/cosi:") || strings.Contains(img, "/objectstorage-sidecar:") {
			continue
		}
		want = append(want, norm(t, img))
	}
	slices.Sort(want)
	want = slices.Compact(want)
	if !slices.Equal(got, want) {
		t.Errorf("rendered bundles' images:\n got  %q\n want %q (Rook's images.txt without COSI, the CephCluster's, CockroachDB's)", got, want)
	}
	for _, must := range []string{"quay.io/cephcsi/cephcsi:", "registry.k8s.io/sig-storage/csi-node-driver-registrar:", "registry.k8s.io/sig-storage/csi-provisioner:",
		"registry.k8s.io/sig-storage/csi-attacher:", "registry.k8s.io/sig-storage/csi-resizer:", "registry.k8s.io/sig-storage/csi-snapshotter:", "quay.io/cephcsi/ceph-csi-operator:"} {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, must) }) {
			t.Errorf("no %s* image in %q", must, got)
		}
	}
}

func norm(t *testing.T, ref string) string {
	t.Helper()
	n, err := registry.ParseRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	return n.String()
}

// FuzzImages: any objects give either an error or normalized, sorted,
// unique references; never a panic.
func FuzzImages(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n" + podSpec(1, "busybox:1")))
	f.Add([]byte("apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: c}\nspec:\n  jobTemplate:\n    spec:\n      template:\n        spec:\n" + podSpec(5, "x.io/a/b:1")))
	f.Add([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {A_IMAGE: 'b@sha256:0000000000000000000000000000000000000000000000000000000000000000'}\n"))
	f.Add([]byte("apiVersion: ceph.rook.io/v1\nkind: CephCluster\nmetadata: {name: c}\nspec: {cephVersion: {image: 7}}\n"))
	f.Add([]byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{image: a, env: [{name: X_IMAGE, value: [1]}, 3]}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := rook.ParseYAML("fuzz", data)
		if err != nil {
			return
		}
		got, err := Images(objs)
		if err != nil {
			return
		}
		if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Fatalf("not sorted and unique: %q", got)
		}
		for _, g := range got {
			n, err := registry.ParseRef(g)
			if err != nil || n.String() != g {
				t.Fatalf("%q is not normalized: %v", g, err)
			}
		}
	})
}

// TestListImages: ListImages gives what Images of the real render gives,
// for both engines with apps, and makes and reads no certificate or
// password: its directories are left not existing.
func TestListImages(t *testing.T) {
	for _, engine := range []string{EngineCockroachDB, EnginePostgres} {
		t.Run(engine, func(t *testing.T) {
			p := appsParams(t, engine, twoApps...)
			var objs []*unstructured.Unstructured
			for _, b := range render(t, p) {
				objs = append(objs, b.Objects...)
			}
			want, err := Images(objs)
			if err != nil {
				t.Fatal(err)
			}
			nowhere := filepath.Join(t.TempDir(), "nowhere")
			p.CertsDir, p.PostgresCertsDir, p.PasswordsDir = nowhere+"/crdb", nowhere+"/pg", nowhere+"/pw"
			got, err := ListImages(p)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("ListImages:\n got  %q\n want %q (Images of the rendered bundles)", got, want)
			}
			if _, err := os.Stat(nowhere); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("ListImages touched its directories: %v", err)
			}
			p.CertsDir, p.PostgresCertsDir, p.PasswordsDir = "", "", ""
			if _, err := ListImages(p); err != nil {
				t.Errorf("ListImages needs no directory, but: %v", err)
			}
		})
	}
}
