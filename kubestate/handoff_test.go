package kubestate

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// stateFiles are the files Import and Export carry, byte for byte.
var stateFiles = []string{
	profiles.SecretsFile, pxe.TokenKeyFile, profiles.BMCPasswordsFile, LeasesKey, inventory.FileName,
}

// makeStateDir fills a state directory the way serve does: secrets, the
// token key and a spent token, a BMC password, a lease, machine states.
func makeStateDir(t *testing.T) (stateDir, rackFile string) {
	t.Helper()
	dir := t.TempDir()
	stateDir = filepath.Join(dir, ".rackboot")
	if err := os.Mkdir(stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	rack, err := os.ReadFile("../profiles/example/rack.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rackFile = filepath.Join(dir, "rack.yaml")
	if err := os.WriteFile(rackFile, rack, 0o644); err != nil {
		t.Fatal(err)
	}
	now := func() time.Time { return time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC) }
	if _, _, err := profiles.LoadOrCreateSecrets(stateDir, now); err != nil {
		t.Fatal(err)
	}
	toks, err := pxe.OpenTokens(stateDir, pxe.TokenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := toks.Mint(pxe.TokenBinding{Name: "formula", MAC: mac1})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := toks.Spend(tok, mac1, "", ip1, mac1); err != nil {
		t.Fatal(err)
	}
	if err := profiles.SetBMCPassword(stateDir, "formula", "hunter2-bmc"); err != nil {
		t.Fatal(err)
	}
	leases, err := pxe.OpenLeases(filepath.Join(stateDir, LeasesKey), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leases.Bind(mac1, ip1, time.Hour, "formula"); err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.Open(stateDir, inventory.WithNames(func(n string) bool { return n == "formula" }))
	if err != nil {
		t.Fatal(err)
	}
	inv.Record(pxe.Event{Name: "formula", MAC: mac1, Addr: ip1, Stage: pxe.StageDHCP})
	inv.Record(pxe.Event{MAC: mac2, Stage: pxe.StageDiscovered}) // an unknown machine
	if _, err := inv.MarkEvent("formula", "ev-1", inventory.StageInstalled, "done"); err != nil {
		t.Fatal(err)
	}
	if err := inv.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range stateFiles {
		if _, err := os.Stat(filepath.Join(stateDir, f)); err != nil {
			t.Fatalf("state dir lacks %s: %v", f, err)
		}
	}
	return stateDir, rackFile
}

// versions are the resourceVersions of every object rackboot manages.
func versions(t *testing.T, s *Store) map[string]string {
	t.Helper()
	ctx := context.Background()
	sel := metav1.ListOptions{LabelSelector: LabelManagedBy + "=" + ManagedBy}
	out := map[string]string{}
	cms, err := s.cs.CoreV1().ConfigMaps(s.ns).List(ctx, sel)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range cms.Items {
		out["configmap/"+o.Name] = o.ResourceVersion
	}
	secs, err := s.cs.CoreV1().Secrets(s.ns).List(ctx, sel)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range secs.Items {
		out["secret/"+o.Name] = o.ResourceVersion
	}
	return out
}

// testImportExport: import a state dir, import again (nothing written),
// read everything back the way serve --kube does, export into another
// directory: every file identical; a different secrets bundle is never
// replaced on either side.
func testImportExport(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	s := replicas(t, cfg, 1)[0]
	stateDir, rackFile := makeStateDir(t)
	if err := s.Import(ctx, stateDir, rackFile); err != nil {
		t.Fatal(err)
	}
	first := versions(t, s)
	// 3 secrets, rack, leases, 2 machines, 1 spent token, consumed marks: none.
	if len(first) != 8 {
		t.Errorf("objects after import: %v, want 8", first)
	}
	if err := s.Import(ctx, stateDir, rackFile); err != nil {
		t.Fatal(err)
	}
	if second := versions(t, s); !equalMaps(first, second) {
		t.Errorf("second import wrote objects:\n first %v\nsecond %v", first, second)
	}

	// What serve --kube reads.
	if r, err := s.Rack(ctx); err != nil || len(r.Machines) == 0 {
		t.Errorf("Rack: %v", err)
	}
	if _, err := s.Secrets(ctx); err != nil {
		t.Errorf("Secrets: %v", err)
	}
	if p, err := s.BMCPasswords(ctx, func(string) string { return "" }); err != nil {
		t.Errorf("BMCPasswords: %v", err)
	} else if pw, _, ok := p.Get("formula"); !ok || pw != "hunter2-bmc" {
		t.Error("BMCPasswords: formula's password is not the state dir's")
	}
	inv, err := s.Inventory(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !inv.Installed("formula") {
		t.Error("imported inventory: formula is not installed")
	}
	toks, err := s.Tokens(ctx, pxe.TokenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if name, _, ok := toks.Pinned(ip1); !ok || name != "formula" {
		t.Errorf("imported spent token: Pinned(%v) = %q, %v", ip1, name, ok)
	}

	out := filepath.Join(t.TempDir(), "state")
	outRack := filepath.Join(filepath.Dir(out), "rack.yaml")
	if err := s.Export(ctx, out, outRack); err != nil {
		t.Fatal(err)
	}
	for _, f := range stateFiles {
		sameFile(t, filepath.Join(stateDir, f), filepath.Join(out, f))
		if fi, err := os.Stat(filepath.Join(out, f)); err == nil && fi.Mode().Perm() != 0o600 {
			t.Errorf("exported %s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	sameFile(t, rackFile, outRack)
	if err := s.Export(ctx, out, outRack); err != nil {
		t.Errorf("second export into the same directory: %v", err)
	}

	// A different secrets bundle is never replaced.
	other := t.TempDir()
	if _, _, err := profiles.LoadOrCreateSecrets(other, time.Now); err != nil {
		t.Fatal(err)
	}
	if err := s.Import(ctx, other, ""); !errors.Is(err, ErrSecretsDiffer) {
		t.Errorf("import of another cluster's secrets: %v, want ErrSecretsDiffer", err)
	}
	if err := s.Export(ctx, other, ""); !errors.Is(err, ErrSecretsDiffer) {
		t.Errorf("export over another cluster's secrets: %v, want ErrSecretsDiffer", err)
	}
	sec, err := s.SecretsFile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sameBytes(t, filepath.Join(stateDir, profiles.SecretsFile), sec)
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	db, err := os.ReadFile(b)
	if err != nil {
		t.Error(err)
		return
	}
	sameBytes(t, a, db)
}

func sameBytes(t *testing.T, path string, got []byte) {
	t.Helper()
	want, err := os.ReadFile(path)
	if err != nil {
		t.Error(err)
		return
	}
	if !bytes.Equal(want, got) {
		t.Errorf("%s: %d bytes came back as %d different bytes", filepath.Base(path), len(want), len(got))
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}
