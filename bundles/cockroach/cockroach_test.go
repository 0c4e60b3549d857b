package cockroach

import (
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// testCerts issues one set of certificates per test binary run into a
// directory the test copies (RSA key generation is the slow part).
func testCerts(t *testing.T) *Certs {
	t.Helper()
	c, err := LoadOrCreateCerts(sharedCertsDir(t), 3, DefaultNamespace, fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func objects(t *testing.T, p Params) map[string]*unstructured.Unstructured {
	t.Helper()
	objs, err := Objects(p, testCerts(t))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]*unstructured.Unstructured{}
	for _, o := range objs {
		if o.GetAPIVersion() == "" || o.GetKind() == "" || o.GetName() == "" {
			t.Errorf("object without apiVersion/kind/name: %v", o.Object)
		}
		if _, ok := o.Object["status"]; ok {
			t.Errorf("%s %s carries a status", o.GetKind(), o.GetName())
		}
		m[o.GetKind()+"/"+o.GetName()] = o
	}
	return m
}

func typed[T any](t *testing.T, u *unstructured.Unstructured) *T {
	t.Helper()
	if u == nil {
		t.Fatal("object missing")
	}
	var v T
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, &v, true); err != nil {
		t.Fatalf("%s %s does not convert back: %v", u.GetKind(), u.GetName(), err)
	}
	return &v
}

func TestObjects(t *testing.T) {
	m := objects(t, Params{Nodes: []string{"a", "b", "c", "d"}})
	sts := typed[appsv1.StatefulSet](t, m["StatefulSet/cockroachdb"])
	if *sts.Spec.Replicas != 3 || sts.Spec.ServiceName != HeadlessService || sts.Namespace != DefaultNamespace {
		t.Errorf("statefulset replicas %d, service %s, ns %s", *sts.Spec.Replicas, sts.Spec.ServiceName, sts.Namespace)
	}
	pod := sts.Spec.Template.Spec
	c := pod.Containers[0]
	if c.Image != Image || !strings.HasPrefix(Image, "docker.io/cockroachdb/cockroach:v") {
		t.Errorf("image %s", c.Image)
	}
	cmd := strings.Join(c.Command, " ")
	for _, want := range []string{"--certs-dir=/cockroach/cockroach-certs", "--join=cockroachdb-0.cockroachdb,cockroachdb-1.cockroachdb,cockroachdb-2.cockroachdb",
		`--advertise-host="$(hostname -f)"`, "--cache=.25", "--max-sql-memory=.25"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("start command lacks %s: %s", want, cmd)
		}
	}
	if strings.Contains(cmd, "insecure") {
		t.Error("insecure mode")
	}
	rp := c.ReadinessProbe.HTTPGet
	if rp.Path != "/health?ready=1" || rp.Scheme != corev1.URISchemeHTTPS {
		t.Errorf("readiness probe %+v", rp)
	}
	aa := pod.Affinity.PodAntiAffinity
	if len(aa.RequiredDuringSchedulingIgnoredDuringExecution) != 1 || aa.RequiredDuringSchedulingIgnoredDuringExecution[0].TopologyKey != "kubernetes.io/hostname" {
		t.Errorf("anti-affinity %+v", aa)
	}
	vct := sts.Spec.VolumeClaimTemplates[0]
	if *vct.Spec.StorageClassName != "ceph-block" || vct.Spec.Resources.Requests.Storage().String() != "10Gi" {
		t.Errorf("volume claim %+v", vct.Spec)
	}
	headless := typed[corev1.Service](t, m["Service/cockroachdb"])
	if headless.Spec.ClusterIP != "None" || !headless.Spec.PublishNotReadyAddresses || len(headless.Spec.Ports) != 2 {
		t.Errorf("headless service %+v", headless.Spec)
	}
	if m["Service/cockroachdb-public"] == nil || m["PodDisruptionBudget/cockroachdb-budget"] == nil || m["ServiceAccount/cockroachdb"] == nil || m["Namespace/cockroachdb"] == nil {
		t.Error("missing objects")
	}
	job := typed[batchv1.Job](t, m["Job/cockroachdb-init"])
	script := strings.Join(job.Spec.Template.Spec.Containers[0].Command, " ")
	if !strings.Contains(script, "init --certs-dir=/cockroach/cockroach-certs --host=cockroachdb-0.cockroachdb") {
		t.Errorf("init job: %s", script)
	}
	// The Secrets carry the files of the certificates directory.
	certs := testCerts(t)
	for name, files := range map[string][]string{
		"Secret/cockroachdb-node": {CACertFile, NodeCertFile, NodeKeyFile},
		"Secret/cockroachdb-root": {CACertFile, RootCertFile, RootKeyFile},
	} {
		data, _, _ := unstructured.NestedStringMap(m[name].Object, "data")
		if len(data) != len(files) {
			t.Errorf("%s has %d keys", name, len(data))
		}
		for _, f := range files {
			want, err := os.ReadFile(certs.Path(f))
			if err != nil {
				t.Fatal(err)
			}
			got, err := base64.StdEncoding.DecodeString(data[f])
			if err != nil || string(got) != string(want) {
				t.Errorf("%s %s differs from %s (%v)", name, f, certs.Path(f), err)
			}
		}
	}
}

func TestReplicas(t *testing.T) {
	for _, c := range []struct {
		nodes, override, want int
		preferred             bool
	}{
		{1, 0, 1, false}, {2, 0, 2, false}, {3, 0, 3, false}, {6, 0, 3, false}, {1, 3, 3, true},
	} {
		p := Params{Replicas: c.override}
		for i := range c.nodes {
			p.Nodes = append(p.Nodes, string(rune('a'+i)))
		}
		if got := p.ReplicaCount(); got != c.want {
			t.Errorf("%d nodes: %d replicas, want %d", c.nodes, got, c.want)
		}
		sts := typed[appsv1.StatefulSet](t, objects(t, p)["StatefulSet/cockroachdb"])
		aa := sts.Spec.Template.Spec.Affinity.PodAntiAffinity
		if (len(aa.PreferredDuringSchedulingIgnoredDuringExecution) == 1) != c.preferred || (len(aa.RequiredDuringSchedulingIgnoredDuringExecution) == 1) == c.preferred {
			t.Errorf("%d nodes, %d replicas: anti-affinity %+v", c.nodes, c.want, aa)
		}
		join := strings.Count(strings.Join(sts.Spec.Template.Spec.Containers[0].Command, " "), ".cockroachdb")
		if join != min(3, c.want) {
			t.Errorf("%d replicas: %d hosts in --join", c.want, join)
		}
	}
	if _, err := Objects(Params{}, testCerts(t)); err == nil {
		t.Error("no nodes accepted")
	}
	if _, err := Objects(Params{Nodes: []string{"a"}, Memory: "lots"}, testCerts(t)); err == nil {
		t.Error("bad memory accepted")
	}
}

// TestInitScript runs the init Job's snippet with bash against a stand-in
// cockroach binary: success, already initialized (success), other failure.
func TestInitScript(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("bash not found: apt-get install bash")
	}
	for _, c := range []struct {
		out  string
		code int
		ok   bool
	}{
		{"Cluster successfully initialized", 0, true},
		{"ERROR: cluster has already been initialized", 1, true},
		{"ERROR: cannot dial server", 1, false},
	} {
		dir := t.TempDir()
		fake := filepath.Join(dir, "cockroach")
		script := "#!/bin/sh\necho '" + c.out + "'\nexit " + string(rune('0'+c.code)) + "\n"
		if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		snippet := strings.ReplaceAll(InitScript("cockroachdb-0.cockroachdb"), "/cockroach/cockroach ", fake+" ")
		out, err := exec.Command(bash, "-ec", snippet).CombinedOutput()
		if (err == nil) != c.ok || !strings.Contains(string(out), c.out) {
			t.Errorf("%q: err %v, output %q", c.out, err, out)
		}
	}
}

func TestReadiness(t *testing.T) {
	sts := &unstructured.Unstructured{Object: map[string]any{"metadata": map[string]any{"name": "cockroachdb", "namespace": "cockroachdb"},
		"spec": map[string]any{"replicas": int64(3)}, "status": map[string]any{"readyReplicas": int64(2)}}}
	if ok, why := StatefulSetReady(sts); ok || !strings.Contains(why, "2/3") {
		t.Errorf("2/3: %v %q", ok, why)
	}
	sts.Object["status"] = map[string]any{"readyReplicas": int64(3)}
	if ok, _ := StatefulSetReady(sts); !ok {
		t.Error("3/3 not ready")
	}
	job := &unstructured.Unstructured{Object: map[string]any{"metadata": map[string]any{"name": "cockroachdb-init", "namespace": "cockroachdb"},
		"status": map[string]any{"failed": int64(2)}}}
	if ok, why := JobSucceeded(job); ok || !strings.Contains(why, "2 failed") || !strings.Contains(why, "logs job/cockroachdb-init") {
		t.Errorf("failed job: %v %q", ok, why)
	}
	job.Object["status"] = map[string]any{"succeeded": int64(1)}
	if ok, _ := JobSucceeded(job); !ok {
		t.Error("succeeded job not ready")
	}
}

func TestConnectionString(t *testing.T) {
	got := ConnectionString("", "/home/me/rack/.rackboot/cockroach/")
	want := "postgresql://root@cockroachdb-public.cockroachdb:26257/defaultdb?sslmode=verify-full" +
		"&sslrootcert=/home/me/rack/.rackboot/cockroach/ca.crt&sslcert=/home/me/rack/.rackboot/cockroach/client.root.crt" +
		"&sslkey=/home/me/rack/.rackboot/cockroach/client.root.key"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
	if got := ConnectionString("localhost:26257", "/a b&c"); !strings.Contains(got, "root@localhost:26257/") || !strings.Contains(got, "sslrootcert=/a%20b%26c/ca.crt") {
		t.Errorf("escaping: %s", got)
	}
}
