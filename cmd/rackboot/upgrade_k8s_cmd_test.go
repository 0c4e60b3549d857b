package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/constants"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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

// TestUpgradeKubernetesDryRunCLI: the command against a real API server and
// formula's Talos API (the lab stand-in, through --talos-endpoint: it
// answers every node's calls itself, so the cluster here is formula alone)
// at Kubernetes 1.36.0: a dry run to 1.36.1 reports what Talos would change
// and changes nothing (rack file, state directory, API server); a
// downgrade and a skipped minor version are refused after the version is
// found from the pods.
func TestUpgradeKubernetesDryRunCLI(t *testing.T) {
	l := newRemoveLab(t)
	n := l.talos("formula", members("formula", "urban"), nil)
	must(t, n.srv.PublishKubernetes(t.Context(), nil))
	ctx := t.Context()
	node, err := l.cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: "formula", Labels: map[string]string{constants.LabelNodeRoleControlPlane: ""},
	}}, metav1.CreateOptions{})
	must(t, err)
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.1.11"}}
	_, err = l.cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	must(t, err)
	for _, app := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		_, err := l.cs.CoreV1().Pods("kube-system").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: app + "-formula", Namespace: "kube-system", Labels: map[string]string{"k8s-app": app}},
			Spec:       corev1.PodSpec{NodeName: "formula", Containers: []corev1.Container{{Name: app, Image: "registry.k8s.io/" + app + ":v1.36.0"}}},
		}, metav1.CreateOptions{})
		must(t, err)
	}
	before, stateBefore := l.rackText(), dirNames(t, l.state)
	run := func(args ...string) (string, error) {
		out, errOut, err := runCmd(t, append([]string{"-f", l.rack, "--state", l.state, "upgrade", "--kubeconfig", l.kube, "--talos-endpoint", n.addr}, args...)...)
		t.Logf("upgrade %v: %v\n%s%s", args, err, out, errOut)
		return out, err
	}
	out, err := run("--kubernetes", "1.36.1", "--dry-run")
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	wantOutput(t, out,
		"gate ok: every node is Ready",
		"the cluster runs Kubernetes 1.36.0",
		`discovered controlplane nodes ["192.168.1.11"]`,
		`Talos version 1.13.0 is compatible with Kubernetes version 1.36.1`,
		" > update kube-apiserver: v1.36.0 -> 1.36.1",
		" > update kubelet: 1.36.0 -> 1.36.1",
		"updating manifests (dry run)",
		"dry run: Kubernetes 1.36.0 → 1.36.1; nothing was changed",
	)
	for _, tc := range []struct{ to, want string }{
		{"1.35.4", "target Kubernetes 1.35.4 is older than the cluster's 1.36.0"},
		{"1.38.0", "skips 1 minor version(s)"},
	} {
		if _, err := run("--kubernetes", tc.to, "--dry-run"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--kubernetes %s: %v, want %q", tc.to, err, tc.want)
		}
	}
	if l.rackText() != before {
		t.Error("the dry run changed the rack file")
	}
	if after := dirNames(t, l.state); !slices.Equal(stateBefore, after) {
		t.Errorf("the dry run changed the state directory: %v → %v", stateBefore, after)
	}
}
