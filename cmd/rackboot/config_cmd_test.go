package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/dotfile/rackboot/profiles"
)

func runCmd(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

func writeExampleRack(t *testing.T) (rack, state string) {
	t.Helper()
	dir := t.TempDir()
	rack = filepath.Join(dir, "rack.yaml")
	if err := os.WriteFile(rack, profiles.ExampleRack, 0o644); err != nil {
		t.Fatal(err)
	}
	return rack, filepath.Join(dir, ".rackboot")
}

func TestConfigCommand(t *testing.T) {
	rack, state := writeExampleRack(t)
	out, errOut, err := runCmd(t, "-f", rack, "config", "formula")
	if err != nil {
		t.Fatalf("config: %v\n%s", err, errOut)
	}
	cfg, err := configloader.NewFromBytes([]byte(out))
	if err != nil {
		t.Fatalf("stdout is not a Talos config: %v", err)
	}
	if !cfg.Machine().Type().IsControlPlane() {
		t.Fatal("formula is not a control plane")
	}
	if !strings.Contains(errOut, "created the cluster secrets") {
		t.Fatalf("first run did not say it created secrets: %s", errOut)
	}
	secretsPath := filepath.Join(state, profiles.SecretsFile)
	fi, err := os.Stat(secretsPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secrets file: %v, mode %v", err, fi)
	}
	before, _ := os.ReadFile(secretsPath)

	out2, errOut2, err := runCmd(t, "-f", rack, "config", "formula")
	if err != nil || out2 != out || strings.Contains(errOut2, "created") {
		t.Fatalf("second run: err %v, same output %v, stderr %s", err, out2 == out, errOut2)
	}
	after, _ := os.ReadFile(secretsPath)
	if !bytes.Equal(before, after) {
		t.Fatal("second run changed the secrets")
	}

	if _, _, err := runCmd(t, "-f", rack, "config", "nosuch"); err == nil || !strings.Contains(err.Error(), "formula, urban") {
		t.Fatalf("unknown machine: %v", err)
	}
}

func TestClientConfigCommands(t *testing.T) {
	rack, state := writeExampleRack(t)
	out, errOut, err := runCmd(t, "-f", rack, "talosconfig")
	if err != nil {
		t.Fatalf("talosconfig: %v\n%s", err, errOut)
	}
	path := filepath.Join(state, "talosconfig")
	if !strings.Contains(out, "wrote "+path) {
		t.Fatalf("talosconfig did not say where it wrote: %q", out)
	}
	tc, err := config.Open(path)
	if err != nil {
		t.Fatalf("talosctl cannot open %s: %v", path, err)
	}
	if eps := tc.Contexts["dotfile"].Endpoints; len(eps) != 2 || eps[0] != "192.168.1.11" {
		t.Fatalf("endpoints %v", eps)
	}

	custom := filepath.Join(t.TempDir(), "kc")
	out, errOut, err = runCmd(t, "-f", rack, "kubeconfig", "-o", custom)
	if err != nil {
		t.Fatalf("kubeconfig: %v\n%s", err, errOut)
	}
	if !strings.Contains(out, "wrote "+custom) {
		t.Fatalf("kubeconfig did not say where it wrote: %q", out)
	}
	for _, p := range []string{path, custom} {
		fi, err := os.Stat(p)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v mode %v; want 0600", p, err, fi.Mode())
		}
	}
	kc, err := clientcmd.LoadFromFile(custom)
	if err != nil || kc.CurrentContext != "admin@dotfile" {
		t.Fatalf("kubeconfig: %v, context %q", err, kc.CurrentContext)
	}
}

func TestSecretsImportCommand(t *testing.T) {
	rack, state := writeExampleRack(t)
	// Make secrets through one command, copy them, import into a fresh state.
	if _, errOut, err := runCmd(t, "-f", rack, "config", "urban"); err != nil {
		t.Fatalf("config: %v\n%s", err, errOut)
	}
	bundle := filepath.Join(state, profiles.SecretsFile)
	fresh := filepath.Join(t.TempDir(), "state")
	out, _, err := runCmd(t, "-f", rack, "--state", fresh, "secrets", "import", bundle)
	if err != nil || !strings.Contains(out, "imported") {
		t.Fatalf("import: %v %q", err, out)
	}
	a, _ := os.ReadFile(bundle)
	b, _ := os.ReadFile(filepath.Join(fresh, profiles.SecretsFile))
	if !bytes.Equal(a, b) {
		t.Fatal("imported bundle differs")
	}
	if _, _, err := runCmd(t, "-f", rack, "--state", fresh, "secrets", "import", bundle); err == nil || !strings.Contains(err.Error(), "already exist") {
		t.Fatalf("second import: %v; want a refusal", err)
	}
}
