package main

import (
	"os"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/dotfile/rackboot/bundles/rook"
	"github.com/dotfile/rackboot/rackedit"
)

// cephNodes renders the bundles of the rack file as `bundles render`
// prints them and returns the CephCluster's storage node names and the
// replica size of the replicapool.
func cephNodes(t *testing.T, rack string) (names []string, size int64) {
	t.Helper()
	out, errOut, err := runCmd(t, "-f", rack, "bundles", "render")
	if err != nil {
		t.Fatalf("bundles render: %v\n%s", err, errOut)
	}
	objs, err := rook.ParseYAML("stdout", []byte(out))
	if err != nil {
		t.Fatal(err)
	}
	size = -1
	for _, o := range objs {
		switch {
		case o.GetKind() == "CephCluster":
			nodes, _, _ := unstructured.NestedSlice(o.Object, "spec", "storage", "nodes")
			for _, n := range nodes {
				names = append(names, n.(map[string]any)["name"].(string))
			}
		case o.GetKind() == "CephBlockPool" && o.GetName() == "replicapool":
			v, _, _ := unstructured.NestedFieldNoCopy(o.Object, "spec", "replicated", "size")
			switch n := v.(type) {
			case int64:
				size = n
			case float64:
				size = int64(n)
			default:
				t.Fatalf("replicapool size %T %v", v, v)
			}
		}
	}
	if names == nil || size < 0 {
		t.Fatalf("no CephCluster nodes or replicapool in the render:\n%s", out)
	}
	return names, size
}

// TestBundlesFollowAdoptRemove: the Rook bundle's node list and pool size
// come from the rack file, so a machine `machine adopt` writes is a Ceph
// node on the next `bundles apply`, and one `machine remove` drops (the
// same rack edit: rackedit.RemoveMachine) is not.
func TestBundlesFollowAdoptRemove(t *testing.T) {
	rack, state := writeExampleRack(t)
	before, sizeBefore := cephNodes(t, rack)
	if slices.Contains(before, "amdusias") {
		t.Fatalf("example rack already has amdusias: %v", before)
	}
	out, errOut, err := runRoot(t, "-f", rack, "--state", state, "machine", "adopt", "52-54-00-00-00-78",
		"--name", "amdusias", "--role", "worker", "--address", "192.168.1.18/24", "--no-apply")
	if err != nil {
		t.Fatalf("adopt: %v\n%s%s", err, out, errOut)
	}
	after, sizeAfter := cephNodes(t, rack)
	if !slices.Equal(after, append(slices.Clone(before), "amdusias")) {
		t.Errorf("Ceph nodes after adopt: %v, want %v + amdusias", after, before)
	}
	if want := int64(rook.PoolSize(len(after))); sizeAfter != want {
		t.Errorf("pool size %d with %d nodes, want %d", sizeAfter, len(after), want)
	}

	src, err := os.ReadFile(rack)
	must(t, err)
	edited, err := rackedit.RemoveMachine(src, "amdusias")
	must(t, err)
	must(t, os.WriteFile(rack, edited, 0o644))
	again, sizeAgain := cephNodes(t, rack)
	if !slices.Equal(again, before) || sizeAgain != sizeBefore {
		t.Errorf("after removal: nodes %v size %d, want %v size %d", again, sizeAgain, before, sizeBefore)
	}
}

// TestAdoptedControlPlaneSharesSecrets: a control plane `machine adopt`
// writes gets a config from the rack's one secrets bundle (the same
// cluster, etcd and machine CAs, token and encryption secret as the first
// control plane), which is all Talos needs to join etcd as a learner (see
// DESIGN.md "Discovering machines").
func TestAdoptedControlPlaneSharesSecrets(t *testing.T) {
	rack, state := writeExampleRack(t)
	cfgOf := func(name string) map[string]any {
		t.Helper()
		out, errOut, err := runCmd(t, "-f", rack, "config", name)
		if err != nil {
			t.Fatalf("config %s: %v\n%s", name, err, errOut)
		}
		var m map[string]any
		must(t, yaml.Unmarshal([]byte(strings.SplitN(out, "\n---\n", 2)[0]), &m))
		return m
	}
	first := cfgOf("formula")
	out, errOut, err := runRoot(t, "-f", rack, "--state", state, "machine", "adopt", "52-54-00-00-00-79",
		"--name", "urban-3", "--role", "controlplane", "--address", "192.168.1.19/24", "--no-apply")
	if err != nil {
		t.Fatalf("adopt: %v\n%s%s", err, out, errOut)
	}
	adopted := cfgOf("urban-3")
	if adopted["machine"].(map[string]any)["type"] != "controlplane" {
		t.Fatalf("urban-3 is %v", adopted["machine"].(map[string]any)["type"])
	}
	for _, path := range [][]string{
		{"cluster", "ca", "crt"}, {"cluster", "ca", "key"}, {"cluster", "etcd", "ca", "crt"}, {"cluster", "etcd", "ca", "key"},
		{"cluster", "token"}, {"cluster", "secretboxEncryptionSecret"}, {"machine", "ca", "crt"}, {"machine", "token"},
		{"cluster", "controlPlane", "endpoint"},
	} {
		a, _, _ := unstructured.NestedFieldNoCopy(first, path...)
		b, _, _ := unstructured.NestedFieldNoCopy(adopted, path...)
		if a == nil || a != b {
			t.Errorf("%s differs between formula and the adopted urban-3 (or is missing)", strings.Join(path, "."))
		}
	}
}
