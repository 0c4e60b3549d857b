package kubestate

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/rest"

	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// testImportPartial: a state directory with BMC passwords but no config
// token key yet (no serve ran: bmc set-password only) imports the
// passwords; the missing file is skipped, not the ones after it.
func testImportPartial(t *testing.T, cfg *rest.Config) {
	st := replicas(t, cfg, 1)[0]
	ctx := ctxFor(t)
	dir := t.TempDir()
	if err := profiles.SetBMCPassword(dir, "formula", "hunter2-bmc"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, pxe.TokenKeyFile)); !os.IsNotExist(err) {
		t.Fatalf("the token key is there: %v", err)
	}
	if err := st.Import(ctx, dir, ""); err != nil {
		t.Fatal(err)
	}
	pw, err := st.BMCPasswords(context.Background(), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if got, _, ok := pw.Get("formula"); !ok || got != "hunter2-bmc" {
		t.Errorf("the BMC password was not imported (ok %v)", ok)
	}
	if _, err := st.getSecret(ctx, TokenKeyName); err == nil {
		t.Error("a token key Secret appeared from a state directory without one")
	}
}
