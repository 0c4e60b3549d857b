package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/assetimage"
	"github.com/dotfile/rackboot/handoff"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/kubestate"
	"github.com/dotfile/rackboot/ociimage"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
	"github.com/dotfile/rackboot/registry"
)

// handoffStateFiles are the files handoff carries that the test fills.
var handoffStateFiles = []string{profiles.SecretsFile, pxe.TokenKeyFile, profiles.BMCPasswordsFile, inventory.FileName}

// fillHandoffState writes what `rackboot up` leaves: the secrets bundle,
// the config-token key, a BMC password, a machine state.
func fillHandoffState(t *testing.T, state string) {
	t.Helper()
	if _, _, err := profiles.LoadOrCreateSecrets(state, time.Now); err != nil {
		t.Fatal(err)
	}
	if _, err := pxe.OpenTokens(state, pxe.TokenConfig{}); err != nil {
		t.Fatal(err)
	}
	if err := profiles.SetBMCPassword(state, "formula", "hunter2-bmc"); err != nil {
		t.Fatal(err)
	}
	inv, err := inventory.Open(state, inventory.WithNames(func(n string) bool { return n == "formula" }))
	if err != nil {
		t.Fatal(err)
	}
	inv.Record(pxe.Event{Name: "formula", Stage: pxe.StageDHCP})
	if err := inv.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range handoffStateFiles {
		if _, err := os.Stat(filepath.Join(state, f)); err != nil {
			t.Fatalf("state not filled: %v", err)
		}
	}
}

// fakeRollout stands in for what cannot run here (no kubelet, no
// controller-manager): once the Deployment exists it creates one ready pod
// at 127.0.0.1 (a host-network pod's address is its node's) and writes
// the Deployment's status; when the Deployment is scaled to 0 it deletes
// the pod, as the ReplicaSet controller and the kubelet would.
func fakeRollout(ctx context.Context, t *testing.T, cs kubernetes.Interface) {
	ns := handoff.Namespace
	sel := labels.SelectorFromSet(handoff.Selector).String()
	for ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond) // polling a real apiserver: nothing to inject
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, handoff.Name, metav1.GetOptions{})
		if err != nil {
			continue
		}
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			continue
		}
		if *d.Spec.Replicas == 0 {
			for _, p := range pods.Items {
				_ = cs.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
			}
			continue
		}
		if len(pods.Items) > 0 && d.Status.ObservedGeneration == d.Generation {
			continue
		}
		if len(pods.Items) == 0 {
			tmpl := d.Spec.Template
			tmpl.Spec.NodeName = "formula"
			p, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "rackboot-fake", Labels: tmpl.Labels},
				Spec:       tmpl.Spec,
			}, metav1.CreateOptions{})
			if err != nil {
				t.Logf("fake rollout: create pod: %v", err)
				continue
			}
			p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1", HostIP: "127.0.0.1",
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
			if _, err := cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
				t.Logf("fake rollout: pod status: %v", err)
				continue
			}
		}
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: d.Generation, Replicas: 1, UpdatedReplicas: 1, ReadyReplicas: 1, AvailableReplicas: 1}
		if _, err := cs.AppsV1().Deployments(ns).UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
			t.Logf("fake rollout: deployment status: %v", err)
		}
	}
}

// TestHandoffAPIServer runs `rackboot handoff` and `--back` against a
// real kube-apiserver (kubetest). The pod's side is the fake above (no
// kubelet here); the answer comes from a real HTTP server at the pod's
// address. Checked: the state's secrets in the cluster byte for byte, a
// second run and a dry run change no resourceVersion, --back refuses a
// different secrets bundle before stopping anything, and otherwise
// stops the replicas and brings every file back byte for byte (0600).
func TestHandoffAPIServer(t *testing.T) {
	env := kubetest.Start(t)
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rack, state := writeExampleRack(t)

	// Nothing to hand off before up made the state.
	if _, _, err := runCmd(t, "-f", rack, "handoff", "--kubeconfig", env.Kubeconfig); err == nil || !strings.Contains(err.Error(), "nothing to hand off") {
		t.Fatalf("handoff without a state: %v, want nothing to hand off", err)
	}
	fillHandoffState(t, state)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("rackboot")) }))
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	done := make(chan struct{})
	go func() { defer close(done); fakeRollout(ctx, t, cs) }()
	defer func() { cancel(); <-done }() // no t.Logf after the test

	// make release's image, small: a layout put into the laptop's mirror.
	idx := tinyRackbootImage(t)
	layout := filepath.Join(t.TempDir(), "oci")
	if err := ociimage.WriteLayout(layout, idx, ociimage.Tag(version)); err != nil {
		t.Fatal(err)
	}
	args := []string{"-f", rack, "handoff", "--kubeconfig", env.Kubeconfig, "--http-port", port, "--timeout", "60s", "--image-layout", layout}
	t0 := time.Now()
	out, errOut, err := runCmd(t, args...)
	if err != nil {
		t.Fatalf("handoff: %v\n%s\n%s", err, out, errOut)
	}
	t.Logf("measured: first handoff in %v", time.Since(t0).Round(time.Millisecond))
	for _, want := range []string{"Deployment rackboot-system/rackboot created", "answers at http://127.0.0.1:" + port + "/", "stop rackboot serve", "the assets image " + assetimage.Repository, "the machines pull images from"} {
		if !strings.Contains(out, want) {
			t.Errorf("handoff output lacks %q:\n%s", want, out)
		}
	}
	// The image is the one put into the laptop's mirror, by digest.
	dep, err := cs.AppsV1().Deployments(handoff.Namespace).Get(ctx, handoff.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	img := dep.Spec.Template.Spec.Containers[0].Image
	name, digest, ok := strings.Cut(img, "@")
	if !ok || name != ociimage.ImageName(version) || !strings.HasPrefix(digest, "sha256:") || !strings.Contains(out, img) {
		t.Errorf("deployment image %q: want %s@sha256:... as put into the mirror", img, ociimage.ImageName(version))
	}
	store, err := registry.Open(filepath.Join(state, "assets", "images"))
	if err != nil {
		t.Fatal(err)
	}
	if !store.HasRepository(ociimage.Repository) {
		t.Errorf("the laptop's image store has no %s", ociimage.Repository)
	}
	if d, _ := idx.Digest(); digest != d.String() {
		t.Errorf("deployment image digest %s, the layout's index is %s", digest, d)
	}
	// The assets image (here: the mirror's one image, rackboot's) is put
	// into the laptop's mirror and mounted by the Deployment, by digest.
	var assets string
	for _, v := range dep.Spec.Template.Spec.Volumes {
		if v.Image != nil {
			assets = v.Image.Reference
		}
	}
	if !strings.HasPrefix(assets, assetimage.Repository+":") || !strings.Contains(out, assets) {
		t.Errorf("deployment assets volume %q: want %s:<tag>@sha256:... as handoff printed it", assets, assetimage.Repository)
	} else if tagged, _, _ := strings.Cut(assets, "@"); store.Has(tagged) != nil {
		t.Errorf("the laptop's image store has no %s: %v", tagged, store.Has(tagged))
	}
	for _, f := range []struct{ file, name, key string }{
		{profiles.SecretsFile, kubestate.SecretsName, kubestate.SecretsKey},
		{pxe.TokenKeyFile, kubestate.TokenKeyName, kubestate.TokenKeyKey},
		{profiles.BMCPasswordsFile, kubestate.BMCPasswordsName, kubestate.BMCPasswordsKey},
	} {
		local, err := os.ReadFile(filepath.Join(state, f.file))
		if err != nil {
			t.Fatal(err)
		}
		sec, err := cs.CoreV1().Secrets(handoff.Namespace).Get(ctx, f.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sec.Data[f.key], local) {
			t.Errorf("secret %s differs from %s", f.name, f.file)
		}
	}
	if strings.Contains(out+errOut, "hunter2-bmc") {
		t.Error("the output shows a BMC password")
	}

	// Again, then a dry run: nothing changes.
	before := namespaceVersions(t, ctx, cs)
	out, errOut, err = runCmd(t, args...)
	if err != nil {
		t.Fatalf("second handoff: %v\n%s\n%s", err, out, errOut)
	}
	if strings.Contains(out, " created") || strings.Contains(out, " configured") {
		t.Errorf("second handoff changed objects:\n%s", out)
	}
	out, errOut, err = runCmd(t, "-f", rack, "handoff", "--kubeconfig", env.Kubeconfig, "--http-port", port, "--dry-run")
	if err != nil {
		t.Fatalf("handoff --dry-run: %v\n%s\n%s", err, out, errOut)
	}
	for _, want := range []string{"kind: Deployment", "Deployment rackboot: accepted (server-side dry run)", "secrets.yaml (", "nothing was changed"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry-run output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hunter2-bmc") {
		t.Error("the dry run shows a BMC password")
	}
	after := namespaceVersions(t, ctx, cs)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s: resourceVersion %s after a second handoff and a dry run, was %s", k, after[k], v)
		}
	}
	t.Logf("measured: %d objects in %s kept their resourceVersion over a second handoff and a dry run", len(before), handoff.Namespace)

	// --back to a laptop holding another cluster's secrets: refused, and
	// the replicas keep serving.
	other := filepath.Join(t.TempDir(), "state")
	if _, _, err := profiles.LoadOrCreateSecrets(other, time.Now); err != nil {
		t.Fatal(err)
	}
	out, _, err = runCmd(t, "-f", rack, "--state", other, "handoff", "--back", "--kubeconfig", env.Kubeconfig)
	if err == nil || !strings.Contains(err.Error(), kubestate.ErrSecretsDiffer.Error()) {
		t.Fatalf("--back over different secrets: %v\n%s, want refused", err, out)
	}
	if d, err := cs.AppsV1().Deployments(handoff.Namespace).Get(ctx, handoff.Name, metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else if *d.Spec.Replicas != 2 {
		t.Fatalf("after a refused --back: replicas %d; want 2 still", *d.Spec.Replicas)
	}

	// --back to a fresh laptop: replicas stopped first, every file back.
	back := filepath.Join(t.TempDir(), "state")
	out, errOut, err = runCmd(t, "-f", rack, "--state", back, "handoff", "--back", "--kubeconfig", env.Kubeconfig, "--timeout", "60s")
	if err != nil {
		t.Fatalf("handoff --back: %v\n%s\n%s", err, out, errOut)
	}
	d, err := cs.AppsV1().Deployments(handoff.Namespace).Get(ctx, handoff.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *d.Spec.Replicas != 0 {
		t.Fatalf("after --back: replicas %d; want 0", *d.Spec.Replicas)
	}
	for _, f := range handoffStateFiles {
		want, err := os.ReadFile(filepath.Join(state, f))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(back, f)
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("--back did not bring %s: %v", f, err)
		}
		if f != inventory.FileName && !bytes.Equal(got, want) {
			t.Errorf("%s after --back differs from the laptop's", f)
		}
		if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	// The machine state comes back as the same record.
	ms, err := inventory.Open(back)
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := ms.Machine("formula"); !ok || m.Stage != pxe.StageDHCP {
		t.Errorf("formula after --back: %+v %v, want at dhcp", m, ok)
	}
	ms.Close()
	if !strings.Contains(out, "start sudo rackboot serve") {
		t.Errorf("--back output lacks what to do next:\n%s", out)
	}
}

// namespaceVersions is every object's resourceVersion in handoff's
// namespace (the appliance and the state).
func namespaceVersions(t *testing.T, ctx context.Context, cs kubernetes.Interface) map[string]string {
	t.Helper()
	ns := handoff.Namespace
	out := map[string]string{}
	add := func(kind string, items []metav1.Object) {
		for _, o := range items {
			out[kind+"/"+o.GetName()] = o.GetResourceVersion()
		}
	}
	cms, err := cs.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var objs []metav1.Object
	for i := range cms.Items {
		objs = append(objs, &cms.Items[i])
	}
	add("ConfigMap", objs)
	secs, err := cs.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	objs = nil
	for i := range secs.Items {
		objs = append(objs, &secs.Items[i])
	}
	add("Secret", objs)
	for kind, get := range map[string]func() (metav1.Object, error){
		"Deployment": func() (metav1.Object, error) {
			return cs.AppsV1().Deployments(ns).Get(ctx, handoff.Name, metav1.GetOptions{})
		},
		"Role": func() (metav1.Object, error) {
			return cs.RbacV1().Roles(ns).Get(ctx, handoff.Name, metav1.GetOptions{})
		},
		"RoleBinding": func() (metav1.Object, error) {
			return cs.RbacV1().RoleBindings(ns).Get(ctx, handoff.Name, metav1.GetOptions{})
		},
		"ServiceAccount": func() (metav1.Object, error) {
			return cs.CoreV1().ServiceAccounts(ns).Get(ctx, handoff.Name, metav1.GetOptions{})
		},
		"PodDisruptionBudget": func() (metav1.Object, error) {
			return cs.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, handoff.Name, metav1.GetOptions{})
		},
		"Namespace": func() (metav1.Object, error) { return cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}) },
	} {
		o, err := get()
		if err != nil {
			t.Fatal(err)
		}
		out[kind+"/"+o.GetName()] = o.GetResourceVersion()
	}
	return out
}

// TestHandoffFlags: wrong flags are refused before anything is read from
// the cluster or written (no image store appears).
func TestHandoffFlags(t *testing.T) {
	rack, state := writeExampleRack(t)
	fillHandoffState(t, state)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--dhcp", "full"}, "needs --range"},
		{[]string{"--dhcp", "relay"}, "write proxy, full or off"},
		{[]string{"--replicas", "-1"}, "write 1 or more"},
		{[]string{"--back", "--image", "x"}, "--image is for handing off"},
		{[]string{"--back", "--dry-run"}, "--dry-run is for handing off"},
	} {
		args := append([]string{"-f", rack, "handoff", "--kubeconfig", filepath.Join(t.TempDir(), "none")}, tc.args...)
		if _, _, err := runCmd(t, args...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("handoff %v: %v, want %q", tc.args, err, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(state, "assets")); err == nil {
		t.Error("a refused handoff wrote the image store")
	}
}

// TestImageVolumesByDefault: ImageVolume is on by default from Kubernetes
// 1.35 (k8s.io/kubernetes v1.35.8 pkg/features/kube_features.go).
func TestImageVolumesByDefault(t *testing.T) {
	for _, tc := range []struct {
		major, minor string
		want         bool
	}{{"1", "35", true}, {"1", "36+", true}, {"2", "0", true}, {"1", "34", false}, {"1", "31+", false}, {"", "", false}} {
		if got := imageVolumesByDefault(tc.major, tc.minor); got != tc.want {
			t.Errorf("%s.%s: %v, want %v", tc.major, tc.minor, got, tc.want)
		}
	}
}

// TestRuntimeHasImageVolumes: containerd mounts image volumes from 2.1.
func TestRuntimeHasImageVolumes(t *testing.T) {
	for rt, want := range map[string]bool{
		"containerd://2.2.3": true, "containerd://v2.1.0": true, "containerd://3.0.0": true, "cri-o://1.33.0": true,
		"containerd://2.0.5": false, "containerd://1.6.20~ds1": false, "containerd://1.7.27": false, "containerd://x": false,
	} {
		if got := runtimeHasImageVolumes(rt); got != want {
			t.Errorf("%s: %v, want %v", rt, got, want)
		}
	}
}

// FuzzRuntimeHasImageVolumes: any node's runtime string is judged without
// a panic; a runtime that is not containerd is never refused, and a
// containerd accepted has a major version of 2 or more.
func FuzzRuntimeHasImageVolumes(f *testing.F) {
	for _, s := range []string{"containerd://2.2.3", "containerd://1.6.20~ds1", "cri-o://1.33.0", "containerd://v2.1", "containerd://"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rt string) {
		ok := runtimeHasImageVolumes(rt)
		v, isContainerd := strings.CutPrefix(rt, "containerd://")
		if !isContainerd && !ok {
			t.Fatalf("%q refused: not containerd", rt)
		}
		if isContainerd && ok {
			major, _, _ := strings.Cut(strings.TrimPrefix(v, "v"), ".")
			if n, err := strconv.Atoi(major); err != nil || n < 2 {
				t.Fatalf("%q accepted with major %q", rt, major)
			}
		}
	})
}
