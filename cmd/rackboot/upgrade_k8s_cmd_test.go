package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/profiles"
)

func TestUpgradeKubernetesRefuses(t *testing.T) {
	rack, state := writeExampleRack(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--kubernetes", "1.36.1", "--resume"}, "run the same --kubernetes command again"},
		{[]string{"--kubernetes", "1.36.1", "--allow-downgrade"}, "Kubernetes is never downgraded"},
		{[]string{"--kubernetes", "1.36"}, `target Kubernetes version "1.36" is not a version: write it as 1.36.1`},
		{[]string{"--kubernetes", "latest"}, "is not a version"},
		{[]string{"--kubernetes", "1.36.1"}, "no cluster secrets"},
		{[]string{"--kubernetes", "v1.36.1", "--dry-run"}, "no cluster secrets"},
	} {
		_, _, err := runCmd(t, append([]string{"-f", rack, "--state", state, "upgrade"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("a refused upgrade created the state directory: %v", err)
	}
}

// After a Kubernetes upgrade the rack file says the new version, and only
// that changed.
func TestSetRackKubernetesVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rack.yaml")
	if err := os.WriteFile(path, profiles.ExampleRack, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := setRackKubernetesVersion(path, "1.36.1"); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Replace(string(profiles.ExampleRack), "kubernetesVersion: 1.36.0", "kubernetesVersion: 1.36.1", 1); string(got) != want {
		t.Errorf("rack file after the upgrade:\n%s", got)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, %v; want 0640 kept", fi.Mode().Perm(), err)
	}
}

// The images an offline rack's store must hold for a Kubernetes upgrade:
// the target's kubelet, control plane and kube-proxy, nothing else.
func TestK8sImagesOfTarget(t *testing.T) {
	r, err := profiles.Load("rack.yaml", profiles.ExampleRack)
	if err != nil {
		t.Fatal(err)
	}
	r.Cluster.KubernetesVersion = "1.36.1"
	images, _, err := r.Images()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, im := range images {
		if k8sImageOf(im, "1.36.1") {
			got = append(got, im.Ref)
		}
	}
	slices.Sort(got)
	want := []string{
		"ghcr.io/siderolabs/kubelet:v1.36.1",
		"registry.k8s.io/kube-apiserver:v1.36.1",
		"registry.k8s.io/kube-controller-manager:v1.36.1",
		"registry.k8s.io/kube-proxy:v1.36.1",
		"registry.k8s.io/kube-scheduler:v1.36.1",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Kubernetes 1.36.1's images %q, want %q", got, want)
	}
}
