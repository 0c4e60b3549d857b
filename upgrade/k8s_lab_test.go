package upgrade

// Talos's own Kubernetes upgrade (pkg/cluster/kubernetes.Upgrade, v1.13.0)
// against a real kube-apiserver (internal/kubetest) and the lab stand-in's
// Talos API (lab/standin/apid) on loopback for each control plane, with
// mutual TLS from the rack's secrets and the admin talosconfig.
//
// The kubelet's part is played by the test (the API server has no kubelet
// and the stand-in runs no static pods): fakeKubelet writes the control
// plane's mirror pods in kube-system (image, Talos's config-version
// annotation, Ready) from what the node's Talos API publishes, and the
// Node's kubelet version after the stand-in restarted its kubelet.

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	cfgres "github.com/siderolabs/talos/pkg/machinery/resources/config"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/dotfile/rackboot/lab/standin/apid"
	"github.com/dotfile/rackboot/profiles"
)

// k8sLab is the example rack's control planes at Kubernetes 1.35.2.
type k8sLab struct {
	t     *testing.T
	kube  *kube
	tc    *clientconfig.Config
	nodes []*k8sNode
}

type k8sNode struct {
	name, ip, addr string
	srv            *apid.Server
}

// bootstrapManifest is one of the objects Talos's control plane renders
// (k8stemplates: kubelet bootstrapping: approve node client CSRs).
var bootstrapManifest = map[string]any{
	"apiVersion": "rbac.authorization.k8s.io/v1",
	"kind":       "ClusterRoleBinding",
	"metadata":   map[string]any{"name": "system-bootstrap-approve-node-client-csr"},
	"roleRef": map[string]any{
		"apiGroup": "rbac.authorization.k8s.io",
		"kind":     "ClusterRole",
		"name":     "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
	},
	"subjects": []any{map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:bootstrappers"}},
}

const labFrom = "1.35.2"

func newK8sLab(t *testing.T) *k8sLab {
	t.Helper()
	r, err := profiles.Load("rack.yaml", profiles.ExampleRack)
	if err != nil {
		t.Fatal(err)
	}
	r.Cluster.KubernetesVersion = labFrom
	b, _, err := profiles.LoadOrCreateSecrets(t.TempDir(), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	tcData, err := profiles.Talosconfig(r, b)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := clientconfig.FromBytes(tcData)
	if err != nil {
		t.Fatal(err)
	}
	l := &k8sLab{t: t, kube: startKube(t), tc: tc}
	for _, m := range r.ControlPlanes() {
		raw, err := profiles.GenerateConfig(r, m.Name, b)
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := configloader.NewFromBytes(raw)
		if err != nil {
			t.Fatal(err)
		}
		srv, err := apid.New(apid.Config{
			Version:   "v1.13.0",
			Addresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
			Hostname:  m.Name,
			Installed: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Configure(cfg); err != nil {
			t.Fatal(err)
		}
		if err := srv.PublishKubernetes(t.Context(), map[string][]map[string]any{"00-kubelet-bootstrapping-token": {bootstrapManifest}}); err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx, ln) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve %s: %v", m.Name, err)
			}
		})
		ip := netip.MustParsePrefix(m.Address).Addr().String()
		n := &k8sNode{name: m.Name, ip: ip, addr: ln.Addr().String(), srv: srv}
		l.nodes = append(l.nodes, n)
		l.controlPlaneNode(n)
	}
	return l
}

// controlPlaneNode: the Node (control-plane label, Ready, kubelet
// v1.35.2) and its static pods' mirror pods at 1.35.2, as the kubelet
// reports them.
func (l *k8sLab) controlPlaneNode(n *k8sNode) {
	t := l.t
	t.Helper()
	ctx := t.Context()
	node, err := l.kube.cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: n.name, Labels: map[string]string{constants.LabelNodeRoleControlPlane: ""},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.ip}}
	node.Status.NodeInfo.KubeletVersion = "v" + labFrom
	if _, err := l.kube.cs.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler"} {
		if err := l.mirrorPod(ctx, n, app, "registry.k8s.io/"+app+":v"+labFrom, "1"); err != nil {
			t.Fatal(err)
		}
	}
}

// mirrorPod writes app's mirror pod on n: image, Talos's config-version
// annotation, Ready, the node's address as host IP.
func (l *k8sLab) mirrorPod(ctx context.Context, n *k8sNode, app, image, configVersion string) error {
	pods := l.kube.cs.CoreV1().Pods("kube-system")
	name := app + "-" + n.name
	pod, err := pods.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		pod, err = pods.Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system", Labels: map[string]string{"k8s-app": app}},
			Spec:       corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: app, Image: image}}},
		}, metav1.CreateOptions{})
	}
	if err != nil {
		return err
	}
	if pod.Annotations[constants.AnnotationStaticPodConfigVersion] == configVersion && pod.Spec.Containers[0].Image == image {
		return nil
	}
	// A static pod's new spec is a new mirror pod (the kubelet deletes
	// and re-creates it): the image cannot change in place.
	if pod.Spec.Containers[0].Image != image {
		zero := int64(0)
		if err := pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			return err
		}
		if pod, err = pods.Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system", Labels: map[string]string{"k8s-app": app}},
			Spec:       corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: app, Image: image}}},
		}, metav1.CreateOptions{}); err != nil {
			return err
		}
	}
	if pod.Annotations == nil {
		pod.Annotations = map[string]string{}
	}
	pod.Annotations[constants.AnnotationStaticPodConfigVersion] = configVersion
	if pod, err = pods.Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		return err
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.HostIP = n.ip
	pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	_, err = pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{})
	return err
}

// fakeKubelet plays the kubelets until ctx ends: each control plane's
// mirror pods follow its Talos API's APIServerConfig,
// ControllerManagerConfig and SchedulerConfig (image; version as Talos's
// config-version annotation), and a restarted kubelet reports its image's
// version on the Node.
func (l *k8sLab) fakeKubelet(ctx context.Context) *sync.WaitGroup {
	var wg sync.WaitGroup
	for _, n := range l.nodes {
		n.srv.KubeletRestarted(func(image string) {
			_, tag, _ := strings.Cut(image, ":")
			if err := l.setKubeletVersion(ctx, n.name, tag); err != nil && ctx.Err() == nil {
				l.t.Errorf("kubelet of %s: %v", n.name, err)
			}
		})
		c, err := client.New(ctx, client.WithConfig(l.tc), client.WithEndpoints(n.addr))
		if err != nil {
			l.t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close() //nolint:errcheck
			for ctx.Err() == nil {
				for app, md := range map[string]*resource.Metadata{
					"kube-apiserver":          k8s.NewAPIServerConfig().Metadata(),
					"kube-controller-manager": k8s.NewControllerManagerConfig().Metadata(),
					"kube-scheduler":          k8s.NewSchedulerConfig().Metadata(),
				} {
					r, err := c.COSI.Get(ctx, md)
					if err != nil {
						continue
					}
					var image string
					switch s := r.Spec().(type) {
					case *k8s.APIServerConfigSpec:
						image = s.Image
					case *k8s.ControllerManagerConfigSpec:
						image = s.Image
					case *k8s.SchedulerConfigSpec:
						image = s.Image
					}
					if err := l.mirrorPod(ctx, n, app, image, r.Metadata().Version().String()); err != nil && ctx.Err() == nil {
						l.t.Logf("mirror pod %s on %s: %v", app, n.name, err)
					}
				}
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
			}
		}()
	}
	return &wg
}

func (l *k8sLab) setKubeletVersion(ctx context.Context, name, version string) error {
	n, err := l.kube.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	n.Status.NodeInfo.KubeletVersion = version
	_, err = l.kube.cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	return err
}

func (l *k8sLab) cluster() *K8sCluster {
	l.t.Helper()
	ep := map[string]string{}
	for _, n := range l.nodes {
		ep[n.ip] = n.addr
	}
	c, err := NewK8sCluster(l.t.Context(), l.tc, l.kube.cfg,
		DefaultEndpoints(l.nodes[0].addr),
		NodeEndpoint(func(node string) string {
			if a, ok := ep[node]; ok {
				return a
			}
			return node // unknown: fails to connect, as a wrong address would
		}))
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() { _ = c.Shutdown() })
	return c
}

// images is what n's applied machine config says now.
func (l *k8sLab) images(n *k8sNode) map[string]string {
	l.t.Helper()
	c, err := client.New(l.t.Context(), client.WithConfig(l.tc), client.WithEndpoints(n.addr))
	if err != nil {
		l.t.Fatal(err)
	}
	defer c.Close() //nolint:errcheck
	mc, err := safe.StateGetByID[*cfgres.MachineConfig](l.t.Context(), c.COSI, cfgres.ActiveID)
	if err != nil {
		l.t.Fatal(err)
	}
	cl := mc.Config().Cluster()
	return map[string]string{
		"apiserver":  cl.APIServer().Image(),
		"controller": cl.ControllerManager().Image(),
		"scheduler":  cl.Scheduler().Image(),
		"proxy":      cl.Proxy().Image(),
		"kubelet":    mc.Config().Machine().Kubelet().Image(),
	}
}

func (l *k8sLab) bootstrapApplied() bool {
	_, err := l.kube.cs.RbacV1().ClusterRoleBindings().Get(l.t.Context(), "system-bootstrap-approve-node-client-csr", metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		l.t.Fatal(err)
	}
	return err == nil
}

func wantLines(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q", w)
		}
	}
}

func wantImages(t *testing.T, name string, got map[string]string, version string) {
	t.Helper()
	for what, image := range got {
		if !strings.HasSuffix(image, ":v"+version) {
			t.Errorf("%s: %s image %s, want version v%s", name, what, image, version)
		}
	}
}

// A dry run goes through all of Talos's upgrade: version compatibility
// from each node's Talos API, the removed-flags checks (1.35→1.36 has
// some), pre-pull (the stand-in answers Unimplemented, which Talos skips),
// each static pod and kube-proxy and kubelet step, and the manifests diff
// against the real API server; it changes nothing.
func TestKubernetesUpgradeDryRun(t *testing.T) {
	l := newK8sLab(t)
	var out bytes.Buffer
	path, err := RunKubernetes(t.Context(), K8sConfig{
		Request: K8sRequest{To: "1.36.0", DryRun: true, PrePullImages: true, UpgradeKubelet: true, ReconcileTimeout: time.Minute},
		Cluster: l.cluster(),
		Gates:   []Gate{NodesReadyGate(l.kube.cs)},
		Out:     &out,
	})
	t.Logf("dry run:\n%s", out.String())
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	if path.String() != "1.35->1.36" {
		t.Errorf("path %s", path)
	}
	a, b := l.nodes[0].ip, l.nodes[1].ip
	wantLines(t, out.String(),
		"gate ok: every node is Ready",
		"the cluster runs Kubernetes 1.35.2",
		`discovered controlplane nodes ["`+a+`" "`+b+`"]`,
		`> "`+a+`": Talos version 1.13.0 is compatible with Kubernetes version 1.36.0`,
		"checking for removed Kubernetes component flags",
		`< "`+a+`": not implemented, skipping`,
		`updating "kube-apiserver" to version "1.36.0"`,
		" > update kube-apiserver: v1.35.2 -> 1.36.0",
		" > update kube-scheduler: v1.35.2 -> 1.36.0",
		"updating kube-proxy to version \"1.36.0\"",
		" > update kubelet: 1.35.2 -> 1.36.0",
		" > skipped in dry-run",
		"updating manifests (dry run)",
		"system-bootstrap-approve-node-client-csr",
	)
	for _, n := range l.nodes {
		wantImages(t, n.name, l.images(n), labFrom)
	}
	if l.bootstrapApplied() {
		t.Error("the dry run applied a manifest")
	}
}

// A real run: Talos's upgrade patches each control plane's machine config
// through ApplyConfiguration (NO_REBOOT) for each static pod, kube-proxy
// and the kubelet, waits for the new config version's mirror pods to be
// Ready and for the restarted kubelet's version on the Node, then applies
// the bootstrap manifests to the real API server with server-side apply.
// A second run finds everything at the version and changes nothing.
func TestKubernetesUpgrade(t *testing.T) {
	l := newK8sLab(t)
	ctx, cancel := context.WithCancel(t.Context())
	wg := l.fakeKubelet(ctx)
	defer wg.Wait()
	defer cancel()
	cl := l.cluster()
	run := func() string {
		var out bytes.Buffer
		start := time.Now()
		_, err := RunKubernetes(ctx, K8sConfig{
			Request: K8sRequest{To: "1.36.0", PrePullImages: true, UpgradeKubelet: true, ReconcileTimeout: time.Minute},
			Cluster: cl,
			Gates:   []Gate{NodesReadyGate(l.kube.cs)},
			Out:     &out,
		})
		t.Logf("upgrade (%s):\n%s", time.Since(start).Round(time.Millisecond), out.String())
		if err != nil {
			t.Fatalf("upgrade: %v", err)
		}
		return out.String()
	}
	out := run()
	a := l.nodes[0].ip
	wantLines(t, out,
		`> "`+a+`": machine configuration patched`,
		`> "`+a+`": waiting for kube-apiserver pod update`,
		`< "`+a+`": successfully updated`,
		`> "`+a+`": waiting for kubelet restart`,
		`> "`+a+`": waiting for node update`,
		"updating manifests",
	)
	for _, n := range l.nodes {
		wantImages(t, n.name, l.images(n), "1.36.0")
		node, err := l.kube.cs.CoreV1().Nodes().Get(t.Context(), n.name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if v := node.Status.NodeInfo.KubeletVersion; v != "v1.36.0" {
			t.Errorf("%s: kubelet %s", n.name, v)
		}
	}
	if !l.bootstrapApplied() {
		t.Error("the bootstrap manifest was not applied")
	}
	again := run()
	wantLines(t, again, "the cluster runs Kubernetes 1.36.0")
	for _, not := range []string{"waiting for kubelet restart", " > update "} {
		if strings.Contains(again, not) {
			t.Errorf("the second run did %q", not)
		}
	}
}
