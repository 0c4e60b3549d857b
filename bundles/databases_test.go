package bundles

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/dotfile/rackboot/bundles/appdb"
	"github.com/dotfile/rackboot/bundles/cnpg"
	"github.com/dotfile/rackboot/bundles/cockroach"
	"github.com/dotfile/rackboot/internal/kubetest"
)

// appsParams is exampleParams with two apps on engine, in a fresh state
// folder (certificates and passwords of its own).
func appsParams(t *testing.T, engine string, apps ...App) Params {
	t.Helper()
	p := exampleParams(t)
	dir := t.TempDir()
	p.Engine = engine
	p.Apps = apps
	p.Postgres = PostgresParams{Nodes: p.Cockroach.Nodes}
	p.PostgresCertsDir = filepath.Join(dir, "postgres")
	p.PasswordsDir = filepath.Join(dir, "database-passwords")
	if engine == EngineCockroachDB {
		p.CertsDir = filepath.Join(dir, "cockroach")
	}
	return p
}

var twoApps = []App{{Name: "billing", Namespace: "billing"}, {Name: "wiki-js", Namespace: "wiki"}}

// TestRenderGoldenDatabases: the generated objects of both engines with two
// apps (Secret values redacted: they hold random passwords and keys).
func TestRenderGoldenDatabases(t *testing.T) {
	for _, engine := range []string{EngineCockroachDB, EnginePostgres} {
		t.Run(engine, func(t *testing.T) {
			bs := render(t, appsParams(t, engine, twoApps...))
			var buf bytes.Buffer
			if err := WriteYAML(&buf, generated(bs[1:]), true); err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", "apps-"+engine+".yaml")
			if *update {
				if err := os.WriteFile(golden, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./bundles -run TestRenderGoldenDatabases -update)", err)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("rendered objects differ from %s (rerun with -update if intended):\n%s", golden, firstDiff(string(want), buf.String()))
			}
		})
	}
}

// TestRenderPostgres: the engine switch gives CloudNativePG's operator and
// the Cluster instead of CockroachDB, with the Cluster as the rack asks.
func TestRenderPostgres(t *testing.T) {
	p := appsParams(t, EnginePostgres, twoApps...)
	bs := render(t, p)
	var names []string
	for _, b := range bs {
		names = append(names, b.Name)
	}
	if !slices.Equal(names, []string{RookBundle, CNPGBundle, PostgresBundle}) {
		t.Fatalf("bundles %v", names)
	}
	var cluster *unstructured.Unstructured
	for _, o := range bs[2].Objects {
		if o.GetKind() == "Cluster" {
			cluster = o
		}
		if o.GetKind() == "StatefulSet" {
			t.Errorf("postgres engine renders a StatefulSet %s", o.GetName())
		}
	}
	if cluster == nil {
		t.Fatal("no Cluster")
	}
	get := func(f ...string) any { v, _, _ := unstructured.NestedFieldNoCopy(cluster.Object, f...); return v }
	checks := map[string][2]any{
		"instances":             {get("spec", "instances"), int64(3)},
		"imageName":             {get("spec", "imageName"), cnpg.Image},
		"enableSuperuserAccess": {get("spec", "enableSuperuserAccess"), false},
		"storageClass":          {get("spec", "storage", "storageClass"), "ceph-block"},
		"podAntiAffinityType":   {get("spec", "affinity", "podAntiAffinityType"), "required"},
		"serverTLSSecret":       {get("spec", "certificates", "serverTLSSecret"), cnpg.ServerTLSSecret},
	}
	for k, c := range checks {
		if c[0] != c[1] {
			t.Errorf("Cluster %s = %v, want %v", k, c[0], c[1])
		}
	}
	// Gates point at objects of their bundle and do not pass on them fresh.
	for _, b := range bs[1:] {
		for _, g := range b.Gates {
			found := false
			for _, o := range b.Objects {
				gv := o.GroupVersionKind()
				if o.GetName() == g.Object && o.GetNamespace() == g.Namespace && gv.Group == g.GVR.Group && strings.EqualFold(gv.Kind+"s", g.GVR.Resource) {
					found = true
					if ok, why := g.Ready(o); ok || why == "" {
						t.Errorf("gate %q passes on the fresh object", g.Name)
					}
				}
			}
			if !found {
				t.Errorf("gate %q names no object of bundle %s", g.Name, b.Name)
			}
		}
	}
	if n := len(bs[2].Gates); n != 4 {
		t.Errorf("postgres bundle has %d gates, want instances, primary and one per app", n)
	}
	if !strings.Contains(cnpg.Image, "@sha256:") {
		t.Errorf("PostgreSQL image %s is not pinned by digest", cnpg.Image)
	}
	// Two nodes: two instances (required anti-affinity needs a node each).
	p.Postgres.Nodes = p.Postgres.Nodes[:2]
	for _, o := range render(t, p)[2].Objects {
		if o.GetKind() == "Cluster" {
			if n, _, _ := unstructured.NestedInt64(o.Object, "spec", "instances"); n != 2 {
				t.Errorf("two nodes: %d instances", n)
			}
		}
	}
	p.Postgres.Nodes = nil
	if _, err := Render(p); err == nil || !strings.Contains(err.Error(), "schedulable") {
		t.Errorf("no nodes: %v", err)
	}
	p = appsParams(t, "mysql")
	if _, err := Render(p); err == nil || !strings.Contains(err.Error(), "write cockroachdb or postgres") {
		t.Errorf("unknown engine: %v", err)
	}
}

// TestRenderKeepsPasswords: a second render reads the passwords the first
// one made; none is rotated.
func TestRenderKeepsPasswords(t *testing.T) {
	p := appsParams(t, EnginePostgres, twoApps...)
	secretsOf := func() map[string]string {
		out := map[string]string{}
		for _, b := range render(t, p) {
			for _, o := range b.Objects {
				if o.GetKind() == "Secret" && strings.HasSuffix(o.GetName(), "-database") {
					out[o.GetNamespace()+"/"+o.GetName()] = secretValue(t, o, appdb.KeyPassword)
				}
			}
		}
		return out
	}
	a, b := secretsOf(), secretsOf()
	if len(a) != 2 || a["billing/billing-database"] == "" || a["billing/billing-database"] == a["wiki/wiki-js-database"] {
		t.Fatalf("passwords %v", a)
	}
	for k := range a {
		if a[k] != b[k] {
			t.Errorf("%s: password changed between renders", k)
		}
	}
	fi, err := os.Stat(appdb.PasswordFile(p.PasswordsDir, "billing"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("password file: %v %v", fi.Mode(), err)
	}
}

func secretValue(t *testing.T, o *unstructured.Unstructured, key string) string {
	t.Helper()
	v, _, _ := unstructured.NestedString(o.Object, "data", key)
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		t.Fatalf("Secret %s/%s key %s: %v", o.GetNamespace(), o.GetName(), key, err)
	}
	return string(b)
}

// TestDatabasesAPIServer applies both engines' objects to a real
// kube-apiserver + etcd. CloudNativePG's admission webhooks are left out:
// with no operator running to answer them (failurePolicy: Fail), the API
// server would refuse every Cluster and Database. Nothing runs the
// objects (no controllers, no kubelet): what is checked is that the API
// server accepts them as rendered, where they land, and that a second
// apply changes nothing.
func TestDatabasesAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	t.Run("postgres", func(t *testing.T) { testPostgresAPIServer(t, env.Config) })
	t.Run("cockroachdb", func(t *testing.T) { testCockroachAPIServer(t, env.Config) })
}

func applyAll(t *testing.T, cfg *rest.Config, objs []*unstructured.Unstructured) Result {
	t.Helper()
	res, err := Apply(t.Context(), cfg, objs, WithPollInterval(50*time.Millisecond))
	if err != nil {
		t.Fatalf("apply: %v (%+v)", err, res)
	}
	return res
}

func testPostgresAPIServer(t *testing.T, cfg *rest.Config) {
	p := appsParams(t, EnginePostgres, twoApps...)
	bs := render(t, p)
	var objs []*unstructured.Unstructured
	webhooks := 0
	for _, b := range bs[1:] {
		for _, o := range b.Objects {
			if cnpg.IsWebhook(o) {
				webhooks++
				continue
			}
			objs = append(objs, o)
		}
	}
	if webhooks != 2 {
		t.Errorf("%d webhook configurations left out, want CloudNativePG's 2", webhooks)
	}
	t0 := time.Now()
	res := applyAll(t, cfg, objs)
	t.Logf("measured: %d objects (CloudNativePG's CRDs Established included) applied in %v", len(objs), time.Since(t0).Round(time.Millisecond))
	if res.Created != len(objs) {
		t.Errorf("first apply %+v, want %d created", res, len(objs))
	}
	dyn := dynamic.NewForConfigOrDie(cfg)
	crds := dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	for _, name := range []string{"clusters.postgresql.cnpg.io", "databases.postgresql.cnpg.io", "databaseroles.postgresql.cnpg.io", "poolers.postgresql.cnpg.io"} {
		crd, err := crds.Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("CRD %s: %v", name, err)
		}
		if !established(crd) {
			t.Errorf("CRD %s is not Established", name)
		}
	}
	dbs := dyn.Resource(schema.GroupVersionResource{Group: "postgresql.cnpg.io", Version: "v1", Resource: "databases"}).Namespace(cnpg.DefaultNamespace)
	for _, a := range twoApps {
		db, err := dbs.Get(t.Context(), appdb.DatabaseObject(a.Name), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("Database of %s: %v", a.Name, err)
		}
		if owner, _, _ := unstructured.NestedString(db.Object, "spec", "owner"); owner != appdb.SQLName(a.Name) {
			t.Errorf("Database of %s owned by %q", a.Name, owner)
		}
	}
	cluster, err := dyn.Resource(schema.GroupVersionResource{Group: "postgresql.cnpg.io", Version: "v1", Resource: "clusters"}).
		Namespace(cnpg.DefaultNamespace).Get(t.Context(), cnpg.ClusterName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("Cluster: %v", err)
	}
	roles, _, _ := unstructured.NestedSlice(cluster.Object, "spec", "managed", "roles")
	if len(roles) != 2 {
		t.Errorf("Cluster has %d managed roles, want 2", len(roles))
	}
	certs, err := cnpg.LoadOrCreateCerts(p.PostgresCertsDir, cnpg.DNSNames(cnpg.DefaultNamespace), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	forbidden := map[string][]byte{"the CA key": certs.CAKey, "the server key": certs.ServerKey}
	checkAppSecrets(t, cfg, cnpg.Host(cnpg.DefaultNamespace), "5432", certs.CACert, forbidden)
	secondApply(t, cfg, objs)
}

func testCockroachAPIServer(t *testing.T, cfg *rest.Config) {
	apps := []App{{Name: "shop", Namespace: "shop"}, {Name: "blog", Namespace: "blog"}}
	p := appsParams(t, EngineCockroachDB, apps...)
	bs := render(t, p)
	objs := bs[1].Objects
	res := applyAll(t, cfg, objs)
	if res.Created != len(objs) {
		t.Errorf("first apply %+v, want %d created", res, len(objs))
	}
	job, err := dynamic.NewForConfigOrDie(cfg).Resource(schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"}).
		Namespace(cockroach.DefaultNamespace).Get(t.Context(), appdb.CockroachJobName(apps), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("apps Job: %v", err)
	}
	if job.GetName() == "" {
		t.Fatal("no Job")
	}
	certs, err := cockroach.LoadOrCreateCerts(p.CertsDir, 3, cockroach.DefaultNamespace, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	forbidden := map[string][]byte{"root's client key": certs.RootKey, "root's client certificate": certs.RootCert, "the node key": certs.NodeKey}
	checkAppSecretsOf(t, cfg, apps, "cockroachdb-public.cockroachdb.svc", "26257", certs.CACert, forbidden)
	secondApply(t, cfg, objs)
}

func checkAppSecrets(t *testing.T, cfg *rest.Config, host, port string, ca []byte, forbidden map[string][]byte) {
	checkAppSecretsOf(t, cfg, twoApps, host, port, ca, forbidden)
}

// checkAppSecretsOf reads each app's Secret from its namespace: the
// connection keys, sslmode=verify-full, the CA; never a superuser or a key.
func checkAppSecretsOf(t *testing.T, cfg *rest.Config, apps []App, host, port string, ca []byte, forbidden map[string][]byte) {
	t.Helper()
	secrets := dynamic.NewForConfigOrDie(cfg).Resource(schema.GroupVersionResource{Version: "v1", Resource: "secrets"})
	for _, a := range apps {
		s, err := secrets.Namespace(a.Namespace).Get(t.Context(), appdb.SecretName(a.Name), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("Secret of %s in namespace %s: %v", a.Name, a.Namespace, err)
		}
		user := appdb.SQLName(a.Name)
		want := map[string]string{appdb.KeyHost: host, appdb.KeyPort: port, appdb.KeyUser: user, appdb.KeyDatabase: user,
			appdb.KeySSLMode: "verify-full", appdb.KeyCA: string(ca)}
		for k, v := range want {
			if got := secretValue(t, s, k); got != v {
				t.Errorf("%s: %s = %q, want %q", s.GetName(), k, got, v)
			}
		}
		pw := secretValue(t, s, appdb.KeyPassword)
		uri := secretValue(t, s, appdb.KeyURI)
		if len(pw) < 40 || !strings.HasPrefix(uri, "postgresql://"+user+":"+pw+"@"+host+":"+port+"/"+user+"?sslmode=verify-full") {
			t.Errorf("%s: password of %d characters, uri %q", s.GetName(), len(pw), strings.ReplaceAll(uri, pw, "PASSWORD"))
		}
		data, _, _ := unstructured.NestedStringMap(s.Object, "data")
		for _, v := range data {
			raw, _ := base64.StdEncoding.DecodeString(v)
			for what, f := range forbidden {
				if bytes.Contains(raw, bytes.TrimSpace(f)) {
					t.Errorf("%s holds %s", s.GetName(), what)
				}
			}
			for _, su := range []string{"postgres:", "root:", "user=postgres", "user=root"} {
				if strings.Contains(string(raw), su) {
					t.Errorf("%s names a superuser (%q)", s.GetName(), su)
				}
			}
		}
	}
}

// secondApply applies objs again: nothing changes.
func secondApply(t *testing.T, cfg *rest.Config, objs []*unstructured.Unstructured) {
	t.Helper()
	before := resourceVersions(t, cfg, objs)
	res := applyAll(t, cfg, objs)
	if res.Unchanged != len(objs) || res.Created+res.Configured+res.Failed != 0 {
		t.Errorf("second apply %+v, want all %d unchanged", res, len(objs))
	}
	after := resourceVersions(t, cfg, objs)
	for ref, rv := range before {
		if after[ref] != rv {
			t.Errorf("%s: resourceVersion %s -> %s on a second apply", ref, rv, after[ref])
		}
	}
}

func established(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// TestRenderCockroachApps: the apps' Job is in the CockroachDB bundle, with
// a gate; without apps there is neither (the bundle is as before).
func TestRenderCockroachApps(t *testing.T) {
	bs := render(t, appsParams(t, EngineCockroachDB, twoApps...))
	job := appdb.CockroachJobName(twoApps)
	last := bs[len(bs)-1].Gates[len(bs[len(bs)-1].Gates)-1]
	if bs[1].Name != CockroachBundle || last.Object != job || !strings.Contains(last.Name, "apps' databases") {
		t.Errorf("last gate %q on %s", last.Name, last.Object)
	}
	plain := render(t, appsParams(t, EngineCockroachDB))
	if len(plain[1].Gates) != 2 {
		t.Errorf("no apps: %d gates", len(plain[1].Gates))
	}
	for _, o := range plain[1].Objects {
		if strings.HasPrefix(o.GetName(), "cockroachdb-apps") {
			t.Errorf("no apps, but %s %s", o.GetKind(), o.GetName())
		}
	}
}

// TestImagesPostgres: the mirror and offline racks carry CloudNativePG's
// operator and the pinned PostgreSQL image.
func TestImagesPostgres(t *testing.T) {
	var objs []*unstructured.Unstructured
	for _, b := range render(t, appsParams(t, EnginePostgres, twoApps...)) {
		objs = append(objs, b.Objects...)
	}
	imgs, err := Images(objs)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{cnpg.Image, cnpg.OperatorImage} {
		found := false
		for _, i := range imgs {
			if strings.HasSuffix(i, strings.TrimPrefix(want, "ghcr.io/")) {
				found = true
			}
		}
		if !found {
			t.Errorf("images lack %s: %v", want, imgs)
		}
	}
}
