package main

// `rackboot disks wipe` with a cluster: after Talos's fast wipe it creates
// the zeroing Job in a real kube-apiserver (internal/kubetest) and waits
// for it. The lab has no kubelet and no Job controller, so FAKE KUBELET
// below plays both: it takes the Job the API server accepted, runs the
// Job's container command with the same rackboot code (newRootCmd, in this
// process) against a loop device over the machine's disk image, and
// records the result in the API as the kubelet and the Job controller
// would (a Pod with the container's exit code and termination message; the
// Job's conditions). Two rewrites it must make, said here: the node's
// /host/dev/<disk> becomes the loop device, and the serial becomes the
// image's path, because a loop device's identity is its backing file
// (disks.Identities). The zeroing itself on a real block device is
// disks' TestZeroDeviceLoop.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/disks"
	"github.com/dotfile/rackboot/disks/diskstest"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/ociimage"
	"github.com/dotfile/rackboot/registry"
)

// fakeKubelet runs the zeroing Jobs of one node. images maps a disk's
// kernel name to its image file.
type fakeKubelet struct {
	t      *testing.T
	cs     kubernetes.Interface
	node   string
	images map[string]string
	// keepSerial passes the Job's serial unchanged: the loop device's
	// identity is then wrong, and the command must refuse.
	keepSerial bool

	mu   sync.Mutex
	seen []*batchv1.Job
}

func (k *fakeKubelet) jobs() []*batchv1.Job {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.seen)
}

// start polls for new Jobs until the test ends.
func (k *fakeKubelet) start() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	k.t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		ran := map[string]bool{}
		for ctx.Err() == nil {
			l, err := k.cs.BatchV1().Jobs(disks.ZeroNamespace).List(ctx, metav1.ListOptions{})
			if err == nil {
				for i := range l.Items {
					j := &l.Items[i]
					if ran[string(j.UID)] || j.Spec.Template.Spec.NodeName != k.node {
						continue
					}
					ran[string(j.UID)] = true
					k.mu.Lock()
					k.seen = append(k.seen, j.DeepCopy())
					k.mu.Unlock()
					if err := k.run(ctx, j); err != nil {
						k.t.Errorf("FAKE KUBELET: %v", err)
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
}

// run runs one Job's container and writes the results into the API.
func (k *fakeKubelet) run(ctx context.Context, j *batchv1.Job) error {
	c := j.Spec.Template.Spec.Containers[0]
	args := slices.Clone(c.Args)
	result := filepath.Join(k.t.TempDir(), "termination-log")
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--device":
			name := strings.TrimPrefix(args[i+1], disks.ZeroHostDev+"/")
			img, ok := k.images[name]
			if !ok {
				return fmt.Errorf("the Job names %s, which the node does not have", args[i+1])
			}
			args[i+1] = diskstest.LoopDevice(k.t, img)
			if !k.keepSerial {
				for s := range args {
					if args[s] == "--serial" {
						args[s+1] = img
					}
				}
			}
		case "--result-file":
			args[i+1] = result
		}
	}
	k.t.Logf("FAKE KUBELET: %s %s", strings.Join(c.Command, " "), strings.Join(args, " "))
	root := newRootCmd()
	var out strings.Builder
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	runErr := root.ExecuteContext(ctx)
	exit := int32(0)
	if runErr != nil {
		exit = 1
	}
	msg, _ := os.ReadFile(result)
	k.t.Logf("FAKE KUBELET: exit %d, output:\n%s", exit, out.String())

	now := metav1.Now()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: j.Name + "-" + string(j.UID)[:5], Namespace: j.Namespace,
			Labels: map[string]string{batchv1.JobNameLabel: j.Name, batchv1.ControllerUidLabel: string(j.UID)},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "batch/v1", Kind: "Job", Name: j.Name, UID: j.UID,
				Controller: ptr(true)}},
		},
		Spec: *j.Spec.Template.Spec.DeepCopy(),
	}
	pods := k.cs.CoreV1().Pods(j.Namespace)
	p, err := pods.Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create the Job's pod: %w", err)
	}
	phase := corev1.PodSucceeded
	if exit != 0 {
		phase = corev1.PodFailed
	}
	p.Status = corev1.PodStatus{Phase: phase, StartTime: &now, ContainerStatuses: []corev1.ContainerStatus{{
		Name: c.Name, Image: c.Image, ImageID: c.Image,
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: exit, Message: string(msg), StartedAt: now, FinishedAt: now, Reason: map[bool]string{true: "Completed", false: "Error"}[exit == 0],
		}},
	}}}
	if _, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("set the pod's status: %w", err)
	}
	return k.finishJob(ctx, j, exit == 0)
}

// finishJob sets the Job's status as the Job controller does.
func (k *fakeKubelet) finishJob(ctx context.Context, j *batchv1.Job, ok bool) error {
	jobs := k.cs.BatchV1().Jobs(j.Namespace)
	cur, err := jobs.Get(ctx, j.Name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	cond := func(t batchv1.JobConditionType, reason string) batchv1.JobCondition {
		return batchv1.JobCondition{Type: t, Status: corev1.ConditionTrue, LastProbeTime: now, LastTransitionTime: now, Reason: reason}
	}
	cur.Status.StartTime = &now
	if ok {
		cur.Status.Succeeded = 1
		cur.Status.CompletionTime = &now
		cur.Status.Conditions = []batchv1.JobCondition{cond(batchv1.JobSuccessCriteriaMet, "CompletionsReached"), cond(batchv1.JobComplete, "CompletionsReached")}
	} else {
		cur.Status.Failed = 1
		cur.Status.Conditions = []batchv1.JobCondition{cond(batchv1.JobFailureTarget, "BackoffLimitExceeded"), cond(batchv1.JobFailed, "BackoffLimitExceeded")}
	}
	if _, err := jobs.UpdateStatus(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("set the Job's status: %w", err)
	}
	return nil
}

// tinyRackbootImage is rackboot's image as ociimage builds it for make
// release, for this version, holding a one-line script instead of the
// binary (building one from the test binary takes half a minute).
func tinyRackbootImage(t *testing.T) v1.ImageIndex {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "rackboot")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	idx, err := ociimage.Build(ociimage.Config{Binaries: []ociimage.Binary{{OS: "linux", Arch: "amd64", Path: bin}}, Version: version})
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// seedZeroImage puts a small rackboot image (a one-line script, built by
// ociimage like make release's) into the state dir's registry mirror under
// this version's name, as an earlier handoff or wipe would have; the wipe
// must then use it by digest instead of building one from the test binary.
func seedZeroImage(t *testing.T, state string) string {
	t.Helper()
	idx := tinyRackbootImage(t)
	store, err := registry.Open(filepath.Join(state, "assets", "images"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := ociimage.Put(store, idx, version)
	if err != nil {
		t.Fatal(err)
	}
	return ociimage.ImageName(version) + "@" + d.String()
}

// TestDisksWipeZeroJob: with a cluster, the fast wipe is followed by the
// zeroing Job, which the API server accepts as rackboot builds it; run by
// the FAKE KUBELET, it clears the label copy at 1 GiB that Talos's fast
// wipe leaves (TestDisksWipe shows it left without the Job). Then a Job
// whose command refuses the disk (its serial does not match): the wipe
// fails naming the node, the disk and the Job, and the disk is untouched.
func TestDisksWipeZeroJob(t *testing.T) {
	env := kubetest.Start(t)
	l := newDisksLab(t)
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	kl := &fakeKubelet{t: t, cs: cs, node: "formula", images: map[string]string{"sda": l.sda, "sdb": filepath.Join(l.root, "dev/sdb")}}
	kl.start()
	image := seedZeroImage(t, l.state)
	wipe := []string{"disks", "wipe", "formula", "--node", "formula=" + l.addr, "--serial", "WD-OLD-1", "--yes",
		"--kubeconfig", env.Kubeconfig, "--job-timeout", "2m"}
	start := time.Now()
	out, err := l.run(t, "", wipe...)
	t.Logf("wipe with the Job (%s):\n%s", time.Since(start).Round(time.Millisecond), out)
	if err != nil {
		t.Fatalf("wipe: %v", err)
	}
	for _, want := range []string{
		"formula: sda: zeroing the Ceph label copies and both ends (4 ranges, 2060 KiB) with Job rackboot-system/rackboot-zero-formula-wd-old-1 (image " + image + ")",
		"Job rackboot-zero-formula-wd-old-1: zeroed 4 range(s), 2109440 bytes",
		"sda wiped (fast): Talos sees nothing on it now",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out, "--method zeroes") {
		t.Error("after the Job the output still sends the user to --method zeroes")
	}
	if rep := diskstest.Inspect(t, l.sda); !rep.Clean() {
		t.Errorf("after the fast wipe and the Job the image holds %s; want nothing (the copy at 1 GiB zeroed)", rep.Summary())
	}
	js := kl.jobs()
	if len(js) != 1 {
		t.Fatalf("the fake kubelet saw %d Jobs, want 1", len(js))
	}
	spec := js[0].Spec.Template.Spec
	c := spec.Containers[0]
	if spec.NodeName != "formula" || c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged ||
		c.Image != image || !slices.Contains(c.Args, "WD-OLD-1") || !slices.Contains(c.Args, "/host/dev/sda") ||
		*js[0].Spec.BackoffLimit != 0 {
		t.Errorf("the Job as the API server stored it: %+v", js[0].Spec)
	}

	// Again, with the serial kept: the loop device is not "WD-OLD-1", so
	// the command refuses; the earlier finished Job is replaced.
	diskstest.Seed(t, l.sda, cephDiskSize, true, 0, 1<<30)
	kl.keepSerial = true
	out, err = l.run(t, "", wipe...)
	t.Logf("wipe with a refusing Job:\n%s", out)
	if err == nil || !strings.Contains(err.Error(), "zeroing sda (serial WD-OLD-1) on formula with Job rackboot-system/rackboot-zero-formula-wd-old-1: failed (exit code 1)") ||
		!strings.Contains(err.Error(), `is not the disk with serial "WD-OLD-1"`) {
		t.Errorf("refusing Job: %v", err)
	}
	if ls := diskstest.Inspect(t, l.sda).Labels(); !slices.ContainsFunc(ls, func(x disks.Signature) bool { return x.Offset == 1<<30 }) {
		t.Errorf("after the refused Job the image holds labels %+v; want the copy at 1 GiB still there", ls)
	}
}

// TestZeroRangesRefuses: the hidden command's own refusals reach the
// termination message (the result file) and the exit code; it is hidden
// from help.
func TestZeroRangesRefuses(t *testing.T) {
	res := filepath.Join(t.TempDir(), "result")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--serial", "S", "--range", "0:4096"}, "give --device PATH"},
		{[]string{"--device", "/dev/null", "--serial", "S", "--range", "4096"}, `range "4096": write OFFSET:LENGTH`},
		{[]string{"--device", "/dev/null", "--serial", "S", "--range", "0:4096"}, "not a block device"},
	} {
		root := newRootCmd()
		var out strings.Builder
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append([]string{disks.ZeroCommand, "--result-file", res}, tc.args...))
		err := root.ExecuteContext(context.Background())
		msg, _ := os.ReadFile(res)
		if exitCode(err) != 1 || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(string(msg), "refused or failed: ") || !strings.Contains(string(msg), tc.want) {
			t.Errorf("%v: %v; result file %q; want %q", tc.args, err, msg, tc.want)
		}
	}
	root := newRootCmd()
	var out strings.Builder
	root.SetOut(&out)
	root.SetArgs([]string{"--help"})
	if err := root.Execute(); err != nil || strings.Contains(out.String(), disks.ZeroCommand) {
		t.Errorf("help: %v, lists the hidden command: %v", err, strings.Contains(out.String(), disks.ZeroCommand))
	}
}
