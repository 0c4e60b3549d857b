package cnpg

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestUpstream(t *testing.T) {
	fsys, err := Embedded()
	if err != nil {
		t.Fatalf("%v", err)
	}
	objs, err := Upstream(fsys)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
	}
	// releases/cnpg-1.30.0.yaml: 11 CRDs, the operator, both webhook kinds.
	if kinds["CustomResourceDefinition"] != 11 || kinds["Deployment"] != 1 || kinds["MutatingWebhookConfiguration"] != 1 || kinds["ValidatingWebhookConfiguration"] != 1 {
		t.Errorf("kinds %v", kinds)
	}
	src, _ := os.ReadFile(filepath.Join("upstream", "SOURCE"))
	if !strings.Contains(string(src), "file: releases/cnpg-1.30.0.yaml f8bede43fe4ee0d478c2355b204a36876b2ae4faac60f2a9452280b293da3b88") {
		t.Errorf("SOURCE %q", src)
	}
}

func TestUpstreamRefuses(t *testing.T) {
	if _, err := Upstream(fstest.MapFS{}); err == nil || !strings.Contains(err.Error(), "make bundles") {
		t.Errorf("empty folder: %v", err)
	}
	wrong := fstest.MapFS{"SOURCE": {Data: []byte("module: " + Module + "\nversion: v1.29.0\n")}}
	if _, err := Upstream(wrong); err == nil || !strings.Contains(err.Error(), "not from") {
		t.Errorf("other version: %v", err)
	}
	other := fstest.MapFS{
		"SOURCE":    {Data: []byte("module: " + Module + "\nversion: " + ModuleVersion + "\n")},
		ReleaseFile: {Data: []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: cnpg-controller-manager}\nspec: {template: {spec: {containers: [{image: example.org/cnpg:1}]}}}\n")},
	}
	if _, err := Upstream(other); err == nil || !strings.Contains(err.Error(), OperatorImage) {
		t.Errorf("other operator image: %v", err)
	}
}

func TestCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pg")
	names := DNSNames("postgres")
	a, err := LoadOrCreateCerts(dir, names, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	b, err := LoadOrCreateCerts(dir, names, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.CACert) != string(b.CACert) || string(a.ServerKey) != string(b.ServerKey) {
		t.Error("a second call made new certificates")
	}
	ca, _ := parseCert(a.CACert)
	srv, _ := parseCert(a.ServerCert)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := srv.Verify(x509.VerifyOptions{Roots: pool, DNSName: "postgres-rw.postgres.svc"}); err != nil {
		t.Errorf("server certificate for postgres-rw.postgres.svc: %v", err)
	}
	for _, f := range []string{CACertFile, CAKeyFile, ServerCertFile, ServerKeyFile} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi.Mode(), err)
		}
	}
	// A name the certificate lacks is an error, not a silent new certificate.
	if _, err := LoadOrCreateCerts(dir, append(names, "db.example"), time.Now); err == nil || !strings.Contains(err.Error(), "does not name db.example") {
		t.Errorf("missing name: %v", err)
	}
	// A run stopped after the server key: the certificate is issued for it.
	if err := os.Remove(filepath.Join(dir, ServerCertFile)); err != nil {
		t.Fatal(err)
	}
	c, err := LoadOrCreateCerts(dir, names, time.Now)
	if err != nil || string(c.ServerKey) != string(a.ServerKey) || string(c.ServerCert) == string(a.ServerCert) {
		t.Errorf("resume after the key: %v", err)
	}
	// A certificate without its key is refused.
	if err := os.Remove(filepath.Join(dir, ServerKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateCerts(dir, names, time.Now); err == nil || !strings.Contains(err.Error(), "not the other") {
		t.Errorf("certificate without key: %v", err)
	}
}

func TestGates(t *testing.T) {
	u := func(m map[string]any) *unstructured.Unstructured { return &unstructured.Unstructured{Object: m} }
	fresh := u(map[string]any{"metadata": map[string]any{"name": "postgres", "namespace": "postgres"}, "spec": map[string]any{"instances": int64(3)}})
	if ok, why := InstancesReady(fresh); ok || !strings.Contains(why, "0/3") {
		t.Errorf("fresh: %v %q", ok, why)
	}
	if ok, why := HasPrimary(fresh); ok || !strings.Contains(why, "no primary") {
		t.Errorf("fresh primary: %v %q", ok, why)
	}
	healthy := fresh.DeepCopy()
	_ = unstructured.SetNestedField(healthy.Object, int64(3), "status", "readyInstances")
	_ = unstructured.SetNestedField(healthy.Object, "postgres-1", "status", "currentPrimary")
	_ = unstructured.SetNestedStringSlice(healthy.Object, []string{"postgres-1", "postgres-2", "postgres-3"}, "status", "instancesStatus", "healthy")
	if ok, _ := InstancesReady(healthy); !ok {
		t.Error("3/3 ready not passed")
	}
	if ok, _ := HasPrimary(healthy); !ok {
		t.Error("healthy primary not passed")
	}
	_ = unstructured.SetNestedStringSlice(healthy.Object, []string{"postgres-2"}, "status", "instancesStatus", "healthy")
	if ok, why := HasPrimary(healthy); ok || !strings.Contains(why, "postgres-1 is not healthy") {
		t.Errorf("unhealthy primary: %v %q", ok, why)
	}
	db := u(map[string]any{"metadata": map[string]any{"name": "postgres-a", "namespace": "postgres"}})
	if ok, _ := DatabaseApplied(db); ok {
		t.Error("fresh Database passed")
	}
	_ = unstructured.SetNestedField(db.Object, true, "status", "applied")
	if ok, _ := DatabaseApplied(db); !ok {
		t.Error("applied Database not passed")
	}
}
