package main

// Zeroing the bluestore label copies that Talos's fast wipe leaves, with
// a one-shot privileged Job on the machine's node (disks.ZeroJob).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/disks"
	"github.com/dotfile/rackboot/ociimage"
)

// zeroJobRun is one disk's Job: what to create and how long to wait.
type zeroJobRun struct {
	cs      kubernetes.Interface
	spec    disks.ZeroJobSpec
	timeout time.Duration
	poll    time.Duration
}

// zeroImage is the image the Job runs: --image; else rackboot's own image
// of this version in the laptop's registry mirror (ghcr.io is mirrored, so
// the node pulls it from there), named by digest so the node runs exactly
// it. When the mirror does not have it yet it is put there from this
// binary (ociimage.PutSelf, this architecture), as `handoff` does.
func zeroImage(a *app, flag string, out io.Writer) (string, error) {
	if flag != "" {
		return flag, nil
	}
	store, err := openImageStore(a)
	if err != nil {
		return "", err
	}
	if d, err := store.Resolve(ociimage.Repository, ociimage.Tag(version)); err == nil {
		return ociimage.ImageName(version) + "@" + d.Digest.String(), nil
	}
	fmt.Fprintf(out, "putting rackboot's image %s into the registry mirror, from this binary (once)\n", ociimage.ImageName(version))
	return putHandoffImage(a, "")
}

// applyJSON is the body of a server-side apply of obj (a typed object
// with its TypeMeta set).
func applyJSON(obj any) ([]byte, error) {
	return json.Marshal(obj)
}

// run creates the namespace and the Job (replacing a finished Job of the
// same name left from an earlier wipe), waits for it to finish and
// returns its pod's termination message: the command's summary.
func (z zeroJobRun) run(ctx context.Context) (string, error) {
	ns, err := applyJSON(disks.ZeroNamespaceObject())
	if err != nil {
		return "", err
	}
	opts := metav1.PatchOptions{FieldManager: bundles.FieldManager, Force: ptr(true)}
	if _, err := z.cs.CoreV1().Namespaces().Patch(ctx, disks.ZeroNamespace, types.ApplyPatchType, ns, opts); err != nil {
		return "", fmt.Errorf("apply namespace %s: %w", disks.ZeroNamespace, err)
	}
	job := disks.ZeroJob(z.spec)
	jobs := z.cs.BatchV1().Jobs(disks.ZeroNamespace)
	if err := z.removeOld(ctx, job.Name); err != nil {
		return "", err
	}
	body, err := applyJSON(job)
	if err != nil {
		return "", err
	}
	if _, err := jobs.Patch(ctx, job.Name, types.ApplyPatchType, body, opts); err != nil {
		return "", fmt.Errorf("create Job %s/%s: %w", disks.ZeroNamespace, job.Name, err)
	}
	return z.wait(ctx, job.Name)
}

func ptr[T any](v T) *T { return &v }

// removeOld deletes a Job of that name when it has finished, and refuses
// when it still runs.
func (z zeroJobRun) removeOld(ctx context.Context, name string) error {
	jobs := z.cs.BatchV1().Jobs(disks.ZeroNamespace)
	old, err := jobs.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look for an earlier Job %s/%s: %w", disks.ZeroNamespace, name, err)
	}
	if done, _ := jobFinished(old); !done {
		return fmt.Errorf("the Job %s/%s from an earlier wipe of this disk is still running: wait for it, or delete it (kubectl -n %s delete job %s)", disks.ZeroNamespace, name, disks.ZeroNamespace, name)
	}
	bg := metav1.DeletePropagationBackground
	if err := jobs.Delete(ctx, name, metav1.DeleteOptions{PropagationPolicy: &bg}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete the earlier Job %s/%s: %w", disks.ZeroNamespace, name, err)
	}
	for {
		if _, err := jobs.Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the earlier Job %s/%s is not gone: %w", disks.ZeroNamespace, name, ctx.Err())
		case <-time.After(z.poll):
		}
	}
}

// jobFinished says whether a Job is done and whether it failed.
func jobFinished(j *batchv1.Job) (done, failed bool) {
	for _, c := range j.Status.Conditions {
		if c.Status != corev1.ConditionTrue {
			continue
		}
		switch c.Type {
		case batchv1.JobComplete:
			return true, false
		case batchv1.JobFailed:
			return true, true
		}
	}
	return false, false
}

// wait polls the Job until it finishes or the timeout passes, then reads
// its pod's termination message and exit code.
func (z zeroJobRun) wait(ctx context.Context, name string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, z.timeout)
	defer cancel()
	jobs := z.cs.BatchV1().Jobs(disks.ZeroNamespace)
	for {
		j, err := jobs.Get(ctx, name, metav1.GetOptions{})
		if err != nil && ctx.Err() == nil {
			return "", fmt.Errorf("read Job %s/%s: %w", disks.ZeroNamespace, name, err)
		}
		if err == nil {
			if done, failed := jobFinished(j); done {
				msg, code := z.podResult(context.WithoutCancel(ctx), j)
				if failed {
					return msg, fmt.Errorf("failed (exit code %d): %s", code, cmpOr(msg, jobReason(j)))
				}
				return msg, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("not finished after %s (is the node up, and can it pull %s through the rack's mirror?)", z.timeout, z.spec.Image)
		case <-time.After(z.poll):
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func jobReason(j *batchv1.Job) string {
	for _, c := range j.Status.Conditions {
		if c.Type == batchv1.JobFailed && c.Status == corev1.ConditionTrue {
			return strings.TrimSpace(c.Reason + ": " + c.Message)
		}
	}
	return "no reason given"
}

// podResult is the termination message and exit code of the Job's pod
// (the kubelet copies the command's --result-file there); "" and -1 when
// there is none. Pods are matched by the Job's uid, not its name: pods of
// an earlier Job of the same name may not be collected yet.
func (z zeroJobRun) podResult(ctx context.Context, j *batchv1.Job) (string, int32) {
	pods, err := z.cs.CoreV1().Pods(disks.ZeroNamespace).List(ctx, metav1.ListOptions{LabelSelector: batchv1.ControllerUidLabel + "=" + string(j.UID)})
	if err != nil {
		return "", -1
	}
	for _, p := range pods.Items {
		for _, cs := range p.Status.ContainerStatuses {
			if t := cs.State.Terminated; t != nil {
				return strings.TrimSpace(t.Message), t.ExitCode
			}
		}
	}
	return "", -1
}

// zeroLabelCopies runs the Job for each disk and says what it did; the
// error names the node, the disk and the Job.
func zeroLabelCopies(ctx context.Context, cs kubernetes.Interface, node, image string, picked []diskRow, timeout time.Duration, out io.Writer) error {
	var errs []error
	for _, d := range picked {
		spec := disks.ZeroJobSpec{Node: node, Device: d.Name, Serial: d.Serial, WWID: d.WWID, Size: int64(d.Size), Image: image, Binary: ociimage.BinaryPath}
		name := disks.ZeroJobName(node, spec.ID())
		fmt.Fprintf(out, "%s: %s: zeroing the Ceph label copies and both ends (%s) with Job %s/%s (image %s)\n",
			node, d.Name, rangesText(int64(d.Size)), disks.ZeroNamespace, name, image)
		msg, err := zeroJobRun{cs: cs, spec: spec, timeout: timeout, poll: time.Second}.run(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("zeroing %s (%s) on %s with Job %s/%s: %w", d.Name, d.idText(), node, disks.ZeroNamespace, name, err))
			continue
		}
		fmt.Fprintf(out, "%s: %s: Job %s: %s\n", node, d.Name, name, cmpOr(msg, "finished (no message)"))
	}
	return errors.Join(errs...)
}

func rangesText(size int64) string {
	var n int64
	plan := disks.WipePlan(size)
	for _, r := range plan {
		n += r.Length
	}
	return fmt.Sprintf("%d ranges, %d KiB", len(plan), n>>10)
}
