package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/bundles/appdb"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/profiles"
)

func TestEngineSwitchRefusal(t *testing.T) {
	crdb := dbFound{Cockroach: true, CockroachPVCs: []string{"datadir-cockroachdb-0", "datadir-cockroachdb-1"}}
	pg := dbFound{Postgres: true, PostgresPVCs: []string{"postgres-1"}}
	tests := []struct {
		engine  string
		found   dbFound
		migrate bool
		want    string
	}{
		{profiles.EnginePostgres, dbFound{}, false, ""},
		{profiles.EnginePostgres, dbFound{Cockroach: true}, false, ""}, // no volumes: no data to lose
		{profiles.EngineCockroachDB, crdb, false, ""},
		{profiles.EnginePostgres, crdb, false, "CockroachDB runs in namespace cockroachdb with data on 2 volume(s) (datadir-cockroachdb-0, datadir-cockroachdb-1)"},
		{profiles.EnginePostgres, crdb, true, ""},
		{profiles.EngineCockroachDB, pg, false, "PostgreSQL (CloudNativePG) runs in namespace postgres with data on 1 volume(s) (postgres-1)"},
		{profiles.EnginePostgres, pg, false, ""},
	}
	for _, tc := range tests {
		err := engineSwitchRefusal(tc.engine, tc.found, tc.migrate)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s over %+v: %v", tc.engine, tc.found, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "--migrate")):
			t.Errorf("%s over %+v: %v, want %q and --migrate", tc.engine, tc.found, err, tc.want)
		}
	}
}

// writeAppsRack is the example rack with a database section.
func writeAppsRack(t *testing.T, section string) (rack, state string) {
	t.Helper()
	rack, state = writeExampleRack(t)
	if err := os.WriteFile(rack, append(append([]byte{}, profiles.ExampleRack...), section...), 0o644); err != nil {
		t.Fatal(err)
	}
	return rack, state
}

func TestDBList(t *testing.T) {
	rack, state := writeAppsRack(t, "database:\n  engine: postgres\n  apps:\n    - name: wiki-js\n      namespace: wiki\n")
	out, errOut, err := runCmd(t, "-f", rack, "db", "list")
	if err != nil {
		t.Fatalf("db list: %v\n%s", err, errOut)
	}
	for _, want := range []string{"engine    postgres", "postgres-rw.postgres.svc:5432", "Secret postgres/postgres-server-ca",
		"wiki-js  wiki       wiki_js   wiki_js  wiki/wiki-js-database", "not made yet"} {
		if !strings.Contains(out, want) {
			t.Errorf("db list lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("db list created the state directory: %v", err)
	}
}

// TestDBAddAPIServer: db add writes the rack file (keeping its comments)
// and applies the database bundle to a real kube-apiserver: the app's
// Secret lands in its namespace; a second app keeps the first one's
// password. The bundle is CockroachDB's: CloudNativePG's would need its
// operator answering its admission webhooks.
func TestDBAddAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	rack, state := writeExampleRack(t)
	out, errOut, err := runCmd(t, "-f", rack, "db", "add", "shop", "--namespace", "shop", "--kubeconfig", env.Kubeconfig, "--wait=false")
	if err != nil {
		t.Fatalf("db add: %v\n%s\n%s", err, out, errOut)
	}
	src, _ := os.ReadFile(rack)
	if !strings.HasPrefix(string(src), string(profiles.ExampleRack)) || !strings.HasSuffix(string(src), "database:\n  apps:\n    - name: shop\n      namespace: shop\n") {
		t.Errorf("rack file after db add:\n%s", src[len(src)-200:])
	}
	if !strings.Contains(out, "shop/shop-database") || !strings.Contains(out, "bundle cockroachdb: applying") || strings.Contains(out, "bundle rook-ceph") {
		t.Errorf("db add output:\n%s", out)
	}
	secrets := dynamic.NewForConfigOrDie(env.Config).Resource(schema.GroupVersionResource{Version: "v1", Resource: "secrets"})
	first, err := secrets.Namespace("shop").Get(t.Context(), "shop-database", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the app's Secret: %v", err)
	}
	if out, errOut, err = runCmd(t, "-f", rack, "db", "add", "blog", "--namespace", "blog", "--kubeconfig", env.Kubeconfig, "--wait=false"); err != nil {
		t.Fatalf("second db add: %v\n%s\n%s", err, out, errOut)
	}
	again, err := secrets.Namespace("shop").Get(t.Context(), "shop-database", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if a, b := first.Object["data"].(map[string]any)["password"], again.Object["data"].(map[string]any)["password"]; a != b || first.GetResourceVersion() != again.GetResourceVersion() {
		t.Error("adding a second app changed the first app's Secret")
	}
	if _, err := secrets.Namespace("blog").Get(t.Context(), "blog-database", metav1.GetOptions{}); err != nil {
		t.Errorf("second app's Secret: %v", err)
	}
	// The same name again is refused, the file untouched.
	before, _ := os.ReadFile(rack)
	if _, _, err := runCmd(t, "-f", rack, "db", "add", "shop", "--namespace", "x", "--apply=false"); err == nil || !strings.Contains(err.Error(), "already in the rack file") {
		t.Errorf("duplicate app: %v", err)
	}
	if after, _ := os.ReadFile(rack); string(after) != string(before) {
		t.Error("a refused db add changed the rack file")
	}
	fi, err := os.Stat(appdb.PasswordFile(filepath.Join(state, databasePasswordsDir), "shop"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("password file: %v", err)
	}

	// Switching to postgres over CockroachDB's volumes is refused; the
	// volume is made here as the StatefulSet's would be (no controller
	// runs in this API server).
	pvc := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "PersistentVolumeClaim",
		"metadata": map[string]any{"name": "datadir-cockroachdb-0", "namespace": "cockroachdb", "labels": map[string]any{"app.kubernetes.io/name": "cockroachdb"}},
		"spec":     map[string]any{"accessModes": []any{"ReadWriteOnce"}, "resources": map[string]any{"requests": map[string]any{"storage": "1Gi"}}},
	}}
	if _, err := dynamic.NewForConfigOrDie(env.Config).Resource(schema.GroupVersionResource{Version: "v1", Resource: "persistentvolumeclaims"}).
		Namespace("cockroachdb").Create(t.Context(), pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	r, err := profiles.LoadFile(rack)
	if err != nil {
		t.Fatal(err)
	}
	r.Database.Engine = profiles.EnginePostgres
	bs, err := bundles.Render(rackParams(r, state))
	if err != nil {
		t.Fatal(err)
	}
	err = checkEngineSwitch(t.Context(), env.Config, bs, false)
	if err == nil || !strings.Contains(err.Error(), "datadir-cockroachdb-0") {
		t.Errorf("switch to postgres over CockroachDB's data: %v", err)
	}
	if err := checkEngineSwitch(t.Context(), env.Config, bs, true); err != nil {
		t.Errorf("switch with --migrate: %v", err)
	}
	if _, errOut, err := runCmd(t, "-f", writeEngine(t, rack, "postgres"), "bundles", "apply", "--kubeconfig", env.Kubeconfig, "--wait=false"); err == nil || !strings.Contains(err.Error(), "--migrate") {
		t.Errorf("bundles apply switching engines: %v\n%s", err, errOut)
	}
}

// writeEngine writes a copy of rack with database.engine set, beside it
// (same state directory).
func writeEngine(t *testing.T, rack, engine string) string {
	t.Helper()
	src, err := os.ReadFile(rack)
	if err != nil {
		t.Fatal(err)
	}
	out := strings.Replace(string(src), "database:\n", "database:\n  engine: "+engine+"\n", 1)
	path := filepath.Join(filepath.Dir(rack), "rack-"+engine+".yaml")
	if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
