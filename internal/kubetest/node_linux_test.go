package kubetest

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/internal/netns"
)

// TestNode: a real kubelet and containerd register a Node that becomes
// Ready, and run a host-network pod (the pause image, the only one the
// node has without a registry) to Running; deleting the pod stops it.
func TestNode(t *testing.T) {
	env := Start(t)
	ns := netns.New(t, "node")
	ns.AddBridge("br0", netip.MustParsePrefix("10.77.0.2/24"))
	n := StartNode(t, env, ns, "10.77.0.2")
	t.Logf("measured: node Ready in %v", n.ReadyIn.Round(time.Millisecond))

	cs := kubernetes.NewForConfigOrDie(env.Config)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if v := node.Status.NodeInfo.KubeletVersion; v != Version {
		t.Errorf("kubelet version %q, want %s", v, Version)
	}
	t.Logf("node: runtime %s, kernel %s, addresses %v", node.Status.NodeInfo.ContainerRuntimeVersion, node.Status.NodeInfo.KernelVersion, node.Status.Addresses)

	no := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hostnet"},
		Spec: corev1.PodSpec{
			NodeName: n.Name, HostNetwork: true, AutomountServiceAccountToken: &no,
			Containers: []corev1.Container{{Name: "pause", Image: PauseImage}},
		},
	}
	t0 := time.Now()
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := WaitPod(t, cs, "default", "hostnet", 2*time.Minute)
	t.Logf("measured: pod Running in %v, IP %s", time.Since(t0).Round(time.Millisecond), p.Status.PodIP)
	if p.Status.PodIP != n.IP {
		t.Errorf("host-network pod IP %s, want the node's %s", p.Status.PodIP, n.IP)
	}
}
