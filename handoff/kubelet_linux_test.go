package handoff

// The handoff's pod run by a real kubelet v1.35.8 and containerd
// (kubetest.StartNode) in a network namespace: rackboot's image, built by
// ociimage from a static build of cmd/rackboot, pulled by containerd from
// rackboot's own registry mirror; the pod's security context applied by
// runc. STAND-IN, said here: no controller-manager or scheduler runs, so
// the test creates the pod from the Deployment's template on the node
// (what the ReplicaSet controller and the scheduler would do) and
// publishes the kube-root-ca.crt ConfigMap (the root-ca-cert-publisher's
// job); see kubetest's node file for the node's own stand-ins.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/internal/kubetest/rackimage"
	"github.com/dotfile/rackboot/internal/netns"
	"github.com/dotfile/rackboot/kubestate"
	"github.com/dotfile/rackboot/profiles"
)

const (
	nodeIP     = "10.77.0.2"
	mirrorAddr = "127.0.0.1:5555" // in the node's namespace
)

// kubeletRack is a rack on the node's network.
const kubeletRack = `cluster:
  name: kubelet
  talosVersion: v1.13.0
  kubernetesVersion: 1.36.0
  vip: 10.77.0.10
  network:
    subnet: 10.77.0.0/24
    gateway: 10.77.0.254
    nameservers: [10.77.0.254]
    rackboot: 10.77.0.2
machines:
  - name: formula
    role: controlplane
    select: {mac: ["52:54:00:b0:00:01"]}
    address: 10.77.0.11/24
`

// TestKubeletRunsHandoff: the pod starts on the node, is Ready (the
// kubelet's own readiness probe), answers HTTP at the node's address, runs
// with exactly NET_BIND_SERVICE and NET_RAW effective, and holds UDP :67.
func TestKubeletRunsHandoff(t *testing.T) {
	env := kubetest.Start(t, kubetest.WithServiceAccountAdmission())
	ns := netns.New(t, "node")
	ns.AddBridge("br0", netip.MustParsePrefix(nodeIP+"/24"))
	image := rackimage.Serve(t, ns, mirrorAddr)
	node := kubetest.StartNode(t, env, ns, nodeIP, kubetest.WithMirror(mirrorAddr, "ghcr.io"),
		kubetest.WithNodeLabels(map[string]string{"node-role.kubernetes.io/control-plane": ""}))
	t.Logf("measured: node Ready in %v", node.ReadyIn.Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	o, err := Build(Params{Image: image, Replicas: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bundles.Apply(ctx, env.Config, mustRender(t, Params{Image: image, Replicas: 1})); err != nil {
		t.Fatal(err)
	}
	if err := env.PublishRootCA(ctx, Namespace); err != nil {
		t.Fatal(err)
	}
	importState(t, ctx, cs)

	// STAND-IN for the ReplicaSet controller and the scheduler.
	tmpl := o.Deployment.Spec.Template
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "rackboot-node1", Namespace: Namespace, Labels: tmpl.Labels}, Spec: tmpl.Spec}
	pod.Spec.NodeName = node.Name
	t0 := time.Now()
	if _, err := cs.CoreV1().Pods(Namespace).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := kubetest.WaitPod(t, cs, Namespace, pod.Name, 3*time.Minute)
	t.Logf("measured: pod Ready in %v (image pull from the mirror included)", time.Since(t0).Round(time.Millisecond))
	if p.Status.PodIP != nodeIP {
		t.Errorf("pod IP %s, want the node's %s", p.Status.PodIP, nodeIP)
	}

	body := getIn(t, ns, "http://"+nodeIP+":"+strconv.Itoa(DefaultHTTPPort)+"/")
	t.Logf("the replica's answer at %s:%d: %d bytes", nodeIP, DefaultHTTPPort, len(body))

	pid := containerPID(t, node, p)
	capEff := statusField(t, pid, "CapEff")
	const want = 1<<10 | 1<<13 // CAP_NET_BIND_SERVICE, CAP_NET_RAW
	if got, err := strconv.ParseUint(capEff, 16, 64); err != nil || got != want {
		t.Errorf("rackboot's effective capabilities %s, want %016x (NET_BIND_SERVICE, NET_RAW only)", capEff, want)
	}
	t.Logf("rackboot's /proc/%d/status CapEff: %s", pid, capEff)
	for _, f := range []string{"Uid", "NoNewPrivs", "Seccomp"} {
		t.Logf("rackboot's /proc/%d/status %s: %s", pid, f, statusField(t, pid, f))
	}
	if nnp := statusField(t, pid, "NoNewPrivs"); nnp != "1" {
		t.Errorf("NoNewPrivs %s, want 1 (allowPrivilegeEscalation: false)", nnp)
	}
	if !holdsUDP(t, pid, 67) {
		t.Errorf("rackboot (pid %d) holds no socket on UDP :67", pid)
	}
}

// importState puts a rack and a secrets bundle into the namespace, as
// rackboot handoff does.
func importState(t *testing.T, ctx context.Context, cs kubernetes.Interface) {
	t.Helper()
	dir := t.TempDir()
	rack := filepath.Join(dir, "rack.yaml")
	if err := os.WriteFile(rack, []byte(kubeletRack), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	if _, _, err := profiles.LoadOrCreateSecrets(state, time.Now); err != nil {
		t.Fatal(err)
	}
	st, err := kubestate.New(cs, Namespace)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Import(ctx, state, rack); err != nil {
		t.Fatal(err)
	}
}

// getIn GETs url from inside ns and returns the body; the test fails
// unless the answer is 200.
func getIn(t *testing.T, ns *netns.NS, url string) []byte {
	t.Helper()
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
			err = ns.Run(func() error { c, err = (&net.Dialer{}).DialContext(ctx, network, addr); return err })
			return c, err
		}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s in the node's namespace: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d: %s", url, resp.StatusCode, b)
	}
	return b
}

// containerPID is the PID of the pod's first container's process, as
// containerd recorded it.
func containerPID(t *testing.T, n *kubetest.Node, p *corev1.Pod) int {
	t.Helper()
	if len(p.Status.ContainerStatuses) == 0 {
		t.Fatal("the pod has no container status")
	}
	id := strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
	b, err := os.ReadFile(filepath.Join(n.Dir, "state", "io.containerd.runtime.v2.task", "k8s.io", id, "init.pid"))
	if err != nil {
		t.Fatalf("the container's PID: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// statusField is a field of /proc/PID/status.
func statusField(t *testing.T, pid int, field string) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("/proc/%d/status has no %s", pid, field)
	return ""
}

// holdsUDP says whether pid has an open UDP socket on port (any address),
// from its network namespace's /proc/PID/net/udp and its fds.
func holdsUDP(t *testing.T, pid, port int) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/udp", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 10 {
			continue
		}
		if i := strings.LastIndexByte(f[1], ':'); i >= 0 && f[1][i+1:] == fmt.Sprintf("%04X", port) {
			inodes[f[9]] = true
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") && inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] {
			return true
		}
	}
	return false
}
