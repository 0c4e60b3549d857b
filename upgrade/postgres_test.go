package upgrade

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/bundles/cnpg"
)

// TestPostgresGate: CloudNativePG's real CRDs on the real apiserver; the
// Cluster's status is written by the test, as the operator would (no
// operator runs here): missing, instances not ready, no primary, an
// unhealthy primary, then healthy.
func TestPostgresGate(t *testing.T) {
	k := startKube(t)
	fsys, err := cnpg.Embedded()
	if err != nil {
		t.Fatal(err)
	}
	up, err := cnpg.Upstream(fsys)
	if err != nil {
		t.Fatal(err)
	}
	var crds []*unstructured.Unstructured
	for _, o := range up {
		if o.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, o)
		}
	}
	ctx := t.Context()
	if _, err := bundles.Apply(ctx, k.cfg, crds, bundles.WithPollInterval(50*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	gate := PostgresGate(k.dyn, "postgres", "postgres")
	expect := func(wantOK bool, wantWhy string) {
		t.Helper()
		ok, why := gate.Check(ctx)
		if ok != wantOK || !strings.Contains(why, wantWhy) {
			t.Fatalf("gate: %v %q, want %v %q", ok, why, wantOK, wantWhy)
		}
	}
	expect(false, "no PostgreSQL Cluster postgres/postgres")

	ns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "postgres"}}}
	cluster := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
		"metadata": map[string]any{"name": "postgres", "namespace": "postgres"},
		"spec":     map[string]any{"instances": int64(3), "storage": map[string]any{"size": "1Gi"}},
	}}
	if _, err := bundles.Apply(ctx, k.cfg, []*unstructured.Unstructured{ns, cluster}); err != nil {
		t.Fatal(err)
	}
	setStatus := func(status map[string]any) {
		t.Helper()
		ri := k.dyn.Resource(PostgresClusterGVR).Namespace("postgres")
		obj, err := ri.Get(context.Background(), "postgres", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		obj.Object["status"] = status
		if _, err := ri.UpdateStatus(context.Background(), obj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	expect(false, "0/3 PostgreSQL instances ready")
	setStatus(map[string]any{"readyInstances": int64(2), "phase": "Waiting for the instances to become active"})
	expect(false, "2/3 PostgreSQL instances ready")
	setStatus(map[string]any{"readyInstances": int64(3)})
	expect(false, "no primary elected yet")
	setStatus(map[string]any{"readyInstances": int64(3), "currentPrimary": "postgres-1",
		"instancesStatus": map[string]any{"healthy": []any{"postgres-2", "postgres-3"}, "failed": []any{"postgres-1"}}})
	expect(false, "primary postgres-1 is not healthy")
	setStatus(map[string]any{"readyInstances": int64(3), "currentPrimary": "postgres-1",
		"instancesStatus": map[string]any{"healthy": []any{"postgres-1", "postgres-2", "postgres-3"}}})
	expect(true, "")
}
