package upgrade

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/siderolabs/go-kubernetes/kubernetes/ssa"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

func TestK8sPath(t *testing.T) {
	for _, tc := range []struct {
		from, to string
		path     string // Path.String() when accepted
		err      string // part of the refusal
	}{
		{from: "1.35.2", to: "1.36.0", path: "1.35->1.36"},
		{from: "v1.35.2", to: "v1.36.0", path: "1.35->1.36"},
		{from: "1.36.0", to: "1.36.1", path: "1.36->1.36"},
		{from: "1.36.0", to: "1.36.0", path: "1.36->1.36"}, // manifests only
		{from: "1.34.1", to: "1.36.0", err: "skips 1 minor version(s): Kubernetes upgrades one minor version at a time; upgrade to 1.35.x first"},
		{from: "1.33.0", to: "1.36.0", err: "skips 2 minor"},
		{from: "1.36.1", to: "1.36.0", err: "older than the cluster's 1.36.1: rackboot does not downgrade"},
		{from: "1.36.0", to: "1.35.4", err: "does not downgrade"},
		{from: "1.36.0", to: "1.37.0", err: "does not support Kubernetes 1.36.0 → 1.37.0 (path 1.36->1.37)"},
		{from: "1.18.0", to: "1.19.0", err: "does not support"},
		{from: "1.36.0", to: "2.0.0", err: "does not support"},
		{from: "1.36", to: "1.36.1", err: `from Kubernetes version "1.36" is not a version: write it as 1.36.1`},
		{from: "1.36.0", to: "latest", err: `target Kubernetes version "latest" is not a version`},
		{from: "1.36.0", to: "1.36.1-rc.0", err: "pre-release"},
	} {
		t.Run(tc.from+"->"+tc.to, func(t *testing.T) {
			p, err := K8sPath(tc.from, tc.to)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("K8sPath(%q, %q) = %v, %v; want an error with %q", tc.from, tc.to, p, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("K8sPath(%q, %q): %v", tc.from, tc.to, err)
			}
			if p.String() != tc.path || !p.IsSupported() {
				t.Fatalf("path %s (supported %v), want %s", p, p.IsSupported(), tc.path)
			}
			if strings.HasPrefix(p.ToVersion(), "v") || strings.HasPrefix(p.FromVersion(), "v") {
				t.Fatalf("versions keep a v: %q %q (Talos formats images as :v%%s)", p.FromVersion(), p.ToVersion())
			}
		})
	}
}

func TestK8sOptions(t *testing.T) {
	p, err := K8sPath("1.35.0", "1.36.0")
	if err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	for _, tc := range []struct {
		name string
		req  K8sRequest
		want func(t *testing.T, req K8sRequest)
	}{
		{
			name: "talosctl defaults",
			req:  K8sRequest{PrePullImages: true, UpgradeKubelet: true, ReconcileTimeout: DefaultReconcileTimeout, Log: &log},
		},
		{
			name: "dry run, no kubelet, no pre-pull, endpoint, no wait",
			req:  K8sRequest{DryRun: true, ControlPlaneEndpoint: "https://10.0.0.1:6443"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := K8sOptions(tc.req, p)
			if o.Path != p || o.DryRun != tc.req.DryRun || o.PrePullImages != tc.req.PrePullImages ||
				o.UpgradeKubelet != tc.req.UpgradeKubelet || o.ControlPlaneEndpoint != tc.req.ControlPlaneEndpoint {
				t.Fatalf("options %+v do not carry the request %+v", o, tc.req)
			}
			for got, want := range map[string]string{
				o.KubeletImage:           constants.KubeletImage,
				o.APIServerImage:         "registry.k8s.io/kube-apiserver",
				o.ControllerManagerImage: "registry.k8s.io/kube-controller-manager",
				o.SchedulerImage:         "registry.k8s.io/kube-scheduler",
				o.ProxyImage:             "registry.k8s.io/kube-proxy",
			} {
				if got != want {
					t.Errorf("image %q, want %q", got, want)
				}
			}
			if err := o.Validate(); err != nil {
				t.Fatalf("Talos's UpgradeOptions.Validate: %v", err)
			}
			if o.InventoryPolicy != ssa.InventoryPolicyAdoptIfNoInventory || o.NoPrune || o.ForceManifests {
				t.Fatalf("manifest options %v noPrune=%v force=%v, want talosctl's defaults", o.InventoryPolicy, o.NoPrune, o.ForceManifests)
			}
			if o.ReconcileTimeout != tc.req.ReconcileTimeout || o.SkipManifestWait != (tc.req.ReconcileTimeout == 0) {
				t.Fatalf("reconcile %s skip %v", o.ReconcileTimeout, o.SkipManifestWait)
			}
			if o.EncoderOpt == nil || o.LogOutput == nil {
				t.Fatal("no encoder option or log output: Talos's patchNodeConfig and Log need them")
			}
		})
	}
	if DefaultReconcileTimeout != 5*time.Minute {
		t.Fatal("talosctl's --manifests-reconcile-timeout default is 5m")
	}
}

// Talos's UpgradeOptions.Log writes to LogOutput without a newline.
func TestK8sLogLines(t *testing.T) {
	var b bytes.Buffer
	o := K8sOptions(K8sRequest{Log: &b}, nil)
	o.Log("discovered controlplane nodes %q", []string{"10.0.0.1"})
	o.Log("%s", "a diff\n")
	o.Log(" > skipped in dry-run")
	if want := "discovered controlplane nodes [\"10.0.0.1\"]\na diff\n > skipped in dry-run\n"; b.String() != want {
		t.Fatalf("log %q, want %q", b.String(), want)
	}
}

// FuzzK8sPath: any two strings: no panic; an accepted path is one Talos
// supports, never backwards, with versions Talos can put after ":v".
func FuzzK8sPath(f *testing.F) {
	for _, s := range [][2]string{{"1.35.2", "1.36.0"}, {"v1.36.0", "1.36.1"}, {"1.36.1", "1.36.0"}, {"1.36", "x"}, {"1.36.0-rc.1", "1.36.0+b"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, from, to string) {
		p, err := K8sPath(from, to)
		if err != nil {
			return
		}
		if !p.IsSupported() || strings.HasPrefix(p.ToVersion(), "v") || strings.HasPrefix(p.FromVersion(), "v") {
			t.Fatalf("K8sPath(%q, %q) = %s (%q → %q)", from, to, p, p.FromVersion(), p.ToVersion())
		}
		fv, _ := parseK8sVersion("from", p.FromVersion())
		tv, _ := parseK8sVersion("to", p.ToVersion())
		if tv.LT(fv) {
			t.Fatalf("K8sPath(%q, %q) goes back", from, to)
		}
	})
}
