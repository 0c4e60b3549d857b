package handoff

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/dotfile/rackboot/disks"
)

var update = flag.Bool("update", false, "rewrite the golden files in handoff/testdata/")

const testImage = "ghcr.io/dotfile/rackboot:v1.0.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

const testAssets = "ghcr.io/dotfile/rackboot-assets:fedcba987654@sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"

// TestRenderGolden: the objects for the default parameters and a pinned
// image, as YAML.
func TestRenderGolden(t *testing.T) {
	objs, err := Render(Params{Image: testImage, AssetsImage: testAssets})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, o := range objs {
		y, err := yaml.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	got := b.String()
	p := filepath.Join("testdata", "objects.yaml")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (go test ./handoff -run TestRenderGolden -update writes it)", err)
	}
	if got != string(want) {
		t.Errorf("Render differs from %s (rerun with -update if intended):\n%s", p, got)
	}
}

// TestBuildSecurity checks the pod's rights field by field: no privileged
// container, exactly NET_BIND_SERVICE and NET_RAW added after dropping
// ALL, no escalation, read-only root, RuntimeDefault seccomp, host network
// on control planes (Talos's label and taint), one per node.
func TestBuildSecurity(t *testing.T) {
	o, err := Build(Params{})
	if err != nil {
		t.Fatal(err)
	}
	ps := o.Deployment.Spec.Template.Spec
	if len(ps.Containers) != 1 || len(ps.InitContainers) != 0 {
		t.Fatalf("%d containers, %d init containers; want 1, 0", len(ps.Containers), len(ps.InitContainers))
	}
	c := ps.Containers[0]
	sc := c.SecurityContext
	if sc.Privileged == nil || *sc.Privileged || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("privileged %v, allowPrivilegeEscalation %v; want false, false", sc.Privileged, sc.AllowPrivilegeEscalation)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("root filesystem is writable")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_BIND_SERVICE", "NET_RAW"}) {
		t.Errorf("capabilities drop %v add %v; want drop ALL, add NET_BIND_SERVICE NET_RAW", sc.Capabilities.Drop, sc.Capabilities.Add)
	}
	if ps.SecurityContext.SeccompProfile == nil || ps.SecurityContext.SeccompProfile.Type != "RuntimeDefault" {
		t.Error("no RuntimeDefault seccomp profile")
	}
	if !ps.HostNetwork || ps.DNSPolicy != "ClusterFirstWithHostNet" || ps.HostPID || ps.HostIPC {
		t.Errorf("hostNetwork %v dnsPolicy %s hostPID %v hostIPC %v", ps.HostNetwork, ps.DNSPolicy, ps.HostPID, ps.HostIPC)
	}
	if _, ok := ps.NodeSelector["node-role.kubernetes.io/control-plane"]; !ok || len(ps.Tolerations) != 1 ||
		ps.Tolerations[0].Key != "node-role.kubernetes.io/control-plane" || ps.Tolerations[0].Effect != "NoSchedule" {
		t.Errorf("nodeSelector %v tolerations %v: want control planes only, their taint tolerated", ps.NodeSelector, ps.Tolerations)
	}
	terms := ps.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution
	if len(terms) != 1 || terms[0].TopologyKey != "kubernetes.io/hostname" {
		t.Errorf("anti-affinity %v: want one required term on kubernetes.io/hostname", terms)
	}
	if *o.Deployment.Spec.Replicas != 2 || o.Budget == nil || o.Budget.Spec.MinAvailable.IntValue() != 1 {
		t.Errorf("replicas %d, budget %v: want 2 and minAvailable 1", *o.Deployment.Spec.Replicas, o.Budget)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		env[e.Name] = e.ValueFrom.FieldRef.FieldPath
	}
	if env["POD_NAME"] != "metadata.name" || env["POD_NAMESPACE"] != "metadata.namespace" {
		t.Errorf("env %v: want POD_NAME and POD_NAMESPACE from the downward API (the leader's identity and the state's namespace)", env)
	}
	for _, v := range ps.Volumes {
		if v.HostPath != nil {
			t.Errorf("volume %s is a host path", v.Name)
		}
	}
	if o.Namespace.Name != disks.ZeroNamespace || o.Namespace.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Errorf("namespace %s labels %v: want %s labelled enforce=privileged (host network is not baseline)", o.Namespace.Name, o.Namespace.Labels, disks.ZeroNamespace)
	}
}

// TestParams: one replica has no budget (it would block every drain);
// bad parameters are refused with what to write.
func TestParams(t *testing.T) {
	o, err := Build(Params{Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	if o.Budget != nil {
		t.Error("a budget for one replica")
	}
	objs, err := Render(Params{Replicas: 1, DHCP: "full", Range: "192.168.1.100-192.168.1.199"})
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 5 {
		t.Errorf("%d objects for one replica, want 5 (no budget)", len(objs))
	}
	args := ServeArgs(Params{DHCP: "full", Range: "10.0.0.10-10.0.0.20"})
	if !slices.Contains(args, "--range=10.0.0.10-10.0.0.20") || !slices.Contains(args, "--dhcp=full") || !slices.Contains(args, "--kube") {
		t.Errorf("serve args %v", args)
	}
	if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--assets-from") }) || len(o.Deployment.Spec.Template.Spec.Volumes) != 2 {
		t.Errorf("without an assets image: args %v, volumes %v; want no --assets-from and the two emptyDirs", args, o.Deployment.Spec.Template.Spec.Volumes)
	}
	for _, tc := range []struct {
		p    Params
		want string
	}{
		{Params{DHCP: "full"}, "needs --range"},
		{Params{Range: "1-2"}, "for --dhcp full only"},
		{Params{DHCP: "relay"}, "write proxy, full or off"},
		{Params{Namespace: "Rack Boot"}, "namespace"},
		{Params{Replicas: -1}, "write 1 or more"},
		{Params{HTTPPort: 70000}, "from 1 to 65535"},
		{Params{AssetsImage: "ghcr.io/dotfile/rackboot-assets:latest"}, "pinned by digest"},
	} {
		if _, err := Render(tc.p); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Render(%+v): %v, want an error with %q", tc.p, err, tc.want)
		}
	}
}

// TestAssetsVolume: the assets image is an image volume, pulled if not
// present, mounted read-only where --assets-from reads.
func TestAssetsVolume(t *testing.T) {
	o, err := Build(Params{AssetsImage: testAssets})
	if err != nil {
		t.Fatal(err)
	}
	ps := o.Deployment.Spec.Template.Spec
	var vol *corev1.Volume
	for i := range ps.Volumes {
		if ps.Volumes[i].Name == "assets" {
			vol = &ps.Volumes[i]
		}
	}
	if vol == nil || vol.Image == nil || vol.Image.Reference != testAssets || vol.Image.PullPolicy != corev1.PullIfNotPresent {
		t.Fatalf("volumes %+v: want an image volume of %s, IfNotPresent", ps.Volumes, testAssets)
	}
	c := ps.Containers[0]
	if !slices.Contains(c.VolumeMounts, corev1.VolumeMount{Name: "assets", MountPath: AssetsDir, ReadOnly: true}) {
		t.Errorf("mounts %+v: want assets read-only at %s", c.VolumeMounts, AssetsDir)
	}
	if !slices.Contains(c.Args, "--assets-from="+AssetsDir) {
		t.Errorf("args %v: want --assets-from=%s", c.Args, AssetsDir)
	}
}
