package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/bundles/cockroach"
	"github.com/dotfile/rackboot/bundles/rook"
	"github.com/dotfile/rackboot/profiles"
)

func TestRackParams(t *testing.T) {
	r, err := profiles.Load("rack.yaml", profiles.ExampleRack)
	if err != nil {
		t.Fatal(err)
	}
	p := rackParams(r, "/state")
	if len(p.Rook.Nodes) != 6 || p.Rook.Nodes[0] != (rook.Node{Name: "formula", DeviceFilter: `^sd[a-z]+$`}) {
		t.Errorf("rook nodes %v", p.Rook.Nodes)
	}
	// Four workers: CockroachDB stays off the control planes.
	if want := []string{"lailah", "verus", "mastema", "amdusias-ii"}; !slices.Equal(p.Cockroach.Nodes, want) {
		t.Errorf("cockroach nodes %v, want %v", p.Cockroach.Nodes, want)
	}
	if p.CertsDir != filepath.Join("/state", "cockroach") {
		t.Errorf("certs dir %s", p.CertsDir)
	}
	// Two workers: the control planes join; a machine's own Ceph filter wins.
	r.Machines = r.Machines[:4]
	r.Machines[3].CephDisks = "^sdb$"
	p = rackParams(r, "/state")
	if want := []string{"lailah", "verus", "formula", "urban"}; !slices.Equal(p.Cockroach.Nodes, want) {
		t.Errorf("cockroach nodes %v, want %v", p.Cockroach.Nodes, want)
	}
	if p.Rook.Nodes[3].DeviceFilter != "^sdb$" {
		t.Errorf("verus filter %q", p.Rook.Nodes[3].DeviceFilter)
	}
}

func TestBundlesRender(t *testing.T) {
	rack, state := writeExampleRack(t)
	out, errOut, err := runCmd(t, "-f", rack, "bundles", "render")
	if err != nil {
		t.Fatalf("bundles render: %v\n%s", err, errOut)
	}
	if !strings.Contains(errOut, "created the CockroachDB CA") {
		t.Errorf("first render did not say it created certificates: %s", errOut)
	}
	objs, err := rook.ParseYAML("stdout", []byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) < 40 {
		t.Errorf("%d objects rendered", len(objs))
	}
	if strings.Contains(out, "BEGIN RSA PRIVATE KEY") || strings.Contains(out, "LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVk") || !strings.Contains(out, "client.root.key: REDACTED") {
		t.Error("render shows a private key without --show-secrets")
	}
	for _, f := range []string{cockroach.CACertFile, cockroach.NodeKeyFile, cockroach.RootKeyFile} {
		st, err := os.Stat(filepath.Join(state, "cockroach", f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, err, st)
		}
	}
	key, _ := os.ReadFile(filepath.Join(state, "cockroach", cockroach.RootKeyFile))
	out2, errOut2, err := runCmd(t, "-f", rack, "bundles", "render", "--show-secrets")
	if err != nil {
		t.Fatalf("bundles render --show-secrets: %v\n%s", err, errOut2)
	}
	if strings.Contains(errOut2, "created") {
		t.Errorf("second render created certificates again: %s", errOut2)
	}
	again, _ := os.ReadFile(filepath.Join(state, "cockroach", cockroach.RootKeyFile))
	if string(again) != string(key) {
		t.Error("root key changed on the second render")
	}
	if !strings.Contains(out2, "client.root.key: LS0t") {
		t.Error("--show-secrets does not show the root key")
	}

	_, _, err = runCmd(t, "-f", rack, "bundles", "render", "--rook-manifests", t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "SOURCE") {
		t.Errorf("empty --rook-manifests: %v", err)
	}
}

func TestBundlesApplyNoKubeconfig(t *testing.T) {
	rack, _ := writeExampleRack(t)
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "missing"))
	t.Setenv("HOME", t.TempDir())
	_, _, err := runCmd(t, "-f", rack, "bundles", "apply", "--kubeconfig", filepath.Join(t.TempDir(), "nope"))
	if err == nil || !strings.Contains(err.Error(), "load kubeconfig") {
		t.Errorf("apply without a kubeconfig: %v", err)
	}
}
