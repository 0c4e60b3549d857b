package disks_test

// The zeroing Job's pod run by a real kubelet v1.35.8 and containerd
// (kubetest.StartNode) against a loop device: rackboot's image pulled from
// rackboot's registry mirror, the node's /dev mounted, a privileged
// container. STAND-IN, said here: no controller-manager runs, so the test
// creates the Job's pod from its template (the Job controller's part);
// the Job itself is the one ZeroJob builds, accepted by the real API
// server. The device is a loop device, whose identity is its backing file
// (disks.Identities), so the Job's serial is the image's path.

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/disks"
	"github.com/dotfile/rackboot/disks/diskstest"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/internal/kubetest/rackimage"
	"github.com/dotfile/rackboot/internal/netns"
	"github.com/dotfile/rackboot/ociimage"
)

// TestKubeletRunsZeroJob: the Job's container zeroes the plan's ranges on
// the node's disk, ends with exit code 0 and its summary as the
// termination message, and the disk holds no Ceph label afterwards.
func TestKubeletRunsZeroJob(t *testing.T) {
	const size = 2 << 30
	img := filepath.Join(t.TempDir(), "old-osd.img")
	diskstest.Seed(t, img, size, false, 0, 1<<30)
	if diskstest.Inspect(t, img).Clean() {
		t.Fatal("the seeded image reads clean")
	}
	dev := diskstest.LoopDevice(t, img)

	env := kubetest.Start(t)
	ns := netns.New(t, "node")
	ns.AddBridge("br0", netip.MustParsePrefix("10.77.0.2/24"))
	const mirror = "127.0.0.1:5555"
	image := rackimage.Serve(t, ns, mirror)
	node := kubetest.StartNode(t, env, ns, "10.77.0.2", kubetest.WithMirror(mirror, "ghcr.io"))

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cs := kubernetes.NewForConfigOrDie(env.Config)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, disks.ZeroNamespaceObject(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	job, err := cs.BatchV1().Jobs(disks.ZeroNamespace).Create(ctx, disks.ZeroJob(disks.ZeroJobSpec{
		Node: node.Name, Device: filepath.Base(dev), Serial: img, Size: size, Image: image, Binary: ociimage.BinaryPath,
	}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// STAND-IN for the Job controller (which names pods the same way).
	yes := true
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: job.Name + "-", Namespace: job.Namespace, Labels: job.Spec.Template.Labels,
			Annotations:     job.Spec.Template.Annotations,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: job.Name, UID: job.UID, Controller: &yes}}},
		Spec: job.Spec.Template.Spec,
	}
	t0 := time.Now()
	created, err := cs.CoreV1().Pods(job.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p := kubetest.WaitPodDone(t, cs, job.Namespace, created.Name, 3*time.Minute)
	t.Logf("measured: the Job's pod ended in %v (%s)", time.Since(t0).Round(time.Millisecond), p.Status.Phase)
	if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Terminated == nil {
		t.Fatalf("container statuses %+v", p.Status.ContainerStatuses)
	}
	term := p.Status.ContainerStatuses[0].State.Terminated
	t.Logf("termination message: %s", term.Message)
	if p.Status.Phase != corev1.PodSucceeded || term.ExitCode != 0 || !strings.Contains(term.Message, "zeroed 4 range(s)") {
		t.Errorf("the Job's pod: %s, exit code %d, message %q; want Succeeded, 0, zeroed 4 range(s)", p.Status.Phase, term.ExitCode, term.Message)
	}
	if rep := diskstest.Inspect(t, img); !rep.Clean() {
		t.Errorf("after the Job the disk holds %s; want nothing", rep.Summary())
	}
}
