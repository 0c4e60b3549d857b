package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/bundles/cockroach"
	"github.com/dotfile/rackboot/bundles/rook"
	"github.com/dotfile/rackboot/internal/kubetest"
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

// TestBundlesApplyAPIServer applies the rendered bundles to a real
// kube-apiserver (internal/kubetest): every CRD becomes Established, every
// object is accepted and readable, and a second apply changes nothing.
func TestBundlesApplyAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	rack, state := writeExampleRack(t)
	out, errOut, err := runCmd(t, "-f", rack, "bundles", "apply", "--kubeconfig", env.Kubeconfig, "--wait=false")
	if err != nil {
		t.Fatalf("bundles apply: %v\n%s\n%s", err, out, errOut)
	}
	for _, want := range []string{"bundle rook-ceph: applying", "bundle cockroachdb: applying", "0 failed", "postgresql://root@cockroachdb-public.cockroachdb:26257/defaultdb?sslmode=verify-full"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	ctx := context.Background()
	r, err := profiles.Load("rack.yaml", profiles.ExampleRack)
	if err != nil {
		t.Fatal(err)
	}
	bs, err := bundles.Render(rackParams(r, state))
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	dyn := dynamic.NewForConfigOrDie(env.Config)
	crds := 0
	for _, b := range bs {
		for _, o := range b.Objects {
			gvk := o.GroupVersionKind()
			m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				t.Errorf("%s %s: no resource on the server: %v", gvk.Kind, o.GetName(), err)
				continue
			}
			var ri dynamic.ResourceInterface = dyn.Resource(m.Resource)
			if o.GetNamespace() != "" {
				ri = dyn.Resource(m.Resource).Namespace(o.GetNamespace())
			}
			got, err := ri.Get(ctx, o.GetName(), metav1.GetOptions{})
			if err != nil {
				t.Errorf("%s %s/%s not on the server: %v", gvk.Kind, o.GetNamespace(), o.GetName(), err)
				continue
			}
			if gvk.Kind == "CustomResourceDefinition" {
				crds++
				conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
				established := false
				for _, c := range conds {
					cm, _ := c.(map[string]any)
					established = established || (cm["type"] == "Established" && cm["status"] == "True")
				}
				if !established {
					t.Errorf("CRD %s is not Established", o.GetName())
				}
			}
		}
	}
	if crds < 21 {
		t.Errorf("%d CRDs checked", crds)
	}

	// A second apply changes nothing.
	out, errOut, err = runCmd(t, "-f", rack, "bundles", "apply", "--kubeconfig", env.Kubeconfig, "--wait=false")
	if err != nil {
		t.Fatalf("second bundles apply: %v\n%s\n%s", err, out, errOut)
	}
	if strings.Count(out, " 0 created, 0 configured,") != 2 {
		t.Errorf("second apply changed objects:\n%s", out)
	}
}

// TestBundlesApplyGates waits on the real gates: the test plays Rook's
// operator (CephCluster HEALTH_OK and Ready, pool Ready, through the status
// subresource), so the Rook bundle passes; nothing runs CockroachDB's pods,
// so its gates time out naming what is not ready and where to look.
func TestBundlesApplyGates(t *testing.T) {
	env := kubetest.Start(t)
	rack, _ := writeExampleRack(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dyn := dynamic.NewForConfigOrDie(env.Config)
	operator := make(chan error, 1)
	go func() {
		set := func(resource, name string, status map[string]any) error {
			ri := dyn.Resource(schema.GroupVersionResource{Group: "ceph.rook.io", Version: "v1", Resource: resource}).Namespace("rook-ceph")
			for ctx.Err() == nil {
				o, err := ri.Get(ctx, name, metav1.GetOptions{})
				if err == nil {
					o.Object["status"] = status
					if _, err = ri.UpdateStatus(ctx, o, metav1.UpdateOptions{}); err == nil {
						return nil
					}
				}
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
			return ctx.Err()
		}
		err := set("cephclusters", "rook-ceph", map[string]any{"phase": "Ready", "ceph": map[string]any{"health": "HEALTH_OK"}})
		if err == nil {
			err = set("cephblockpools", "replicapool", map[string]any{"phase": "Ready"})
		}
		operator <- err
	}()
	out, errOut, err := runCmd(t, "-f", rack, "bundles", "apply", "--kubeconfig", env.Kubeconfig, "--timeout", "15s")
	if err := <-operator; err != nil {
		t.Fatalf("playing the operator: %v", err)
	}
	for _, want := range []string{"ok: CephCluster rook-ceph/rook-ceph is HEALTH_OK", "ok: CephBlockPool rook-ceph/replicapool is Ready"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if err == nil {
		t.Fatalf("apply passed CockroachDB's gates with no pods running:\n%s", out)
	}
	for _, want := range []string{"bundle cockroachdb is not healthy", "0/3 cockroachdb pods ready", "kubectl -n cockroachdb"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("timeout error lacks %q: %v\n%s", want, err, errOut)
		}
	}
}
