package kubestate

import (
	"errors"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/rest"
)

func TestDocumentName(t *testing.T) {
	for file, want := range map[string]string{"upgrade.json": "rackboot-upgrade", "notes": "rackboot-notes"} {
		if got, err := DocumentName(file); err != nil || got != want {
			t.Errorf("DocumentName(%q) = %q, %v; want %q", file, got, err, want)
		}
	}
	for _, bad := range []string{"", "../upgrade.json", "a/b.json", ".hidden", "Upper.json", strings.Repeat("x", 300) + ".json"} {
		if got, err := DocumentName(bad); err == nil {
			t.Errorf("DocumentName(%q) = %q, want an error", bad, got)
		}
	}
}

// testDocuments: a document read by two laptops at once (two Stores over
// two clients): the first write wins, the second is refused and names the
// object; after reading again it goes through. Read never creates.
func testDocuments(t *testing.T, cfg *rest.Config) {
	rs := replicas(t, cfg, 2)
	ctx := ctxFor(t)
	a, err := rs[0].Document("upgrade.json")
	if err != nil {
		t.Fatal(err)
	}
	b, err := rs[1].Document("upgrade.json")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := a.Read(ctx); ok || err != nil {
		t.Fatalf("read of a missing document: ok %v, err %v", ok, err)
	}
	if _, err := rs[0].getConfigMap(ctx, "rackboot-upgrade"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Read created the object: %v", err)
	}
	if _, ok, err := b.Read(ctx); ok || err != nil {
		t.Fatalf("read of a missing document: ok %v, err %v", ok, err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.Write(ctx, []byte(`{"n":1}`)))
	must(a.Write(ctx, []byte(`{"n":2}`))) // its own last write is what it read
	err = b.Write(ctx, []byte(`{"n":"b"}`))
	if err == nil || !apierrors.IsAlreadyExists(errors.Unwrap(err)) || !strings.Contains(err.Error(), "configmap "+rs[0].Namespace()+"/rackboot-upgrade") {
		t.Fatalf("second laptop's create over the first's: %v", err)
	}
	data, ok, err := b.Read(ctx)
	if err != nil || !ok || string(data) != `{"n":2}` {
		t.Fatalf("read back: %q %v %v", data, ok, err)
	}
	must(b.Write(ctx, []byte(`{"n":3}`)))
	if err := a.Write(ctx, []byte(`{"n":4}`)); err == nil || !apierrors.IsConflict(errors.Unwrap(err)) || !strings.Contains(err.Error(), "changed by someone else") {
		t.Fatalf("stale update: %v", err)
	}
	cm, err := rs[0].getConfigMap(ctx, "rackboot-upgrade")
	if err != nil || cm.Data["upgrade.json"] != `{"n":3}` || cm.Labels[LabelComponent] != ComponentDocument {
		t.Fatalf("stored: %+v %v", cm, err)
	}
}
