package disks

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ZeroNamespace is the namespace rackboot owns in the cluster, where its
// disk-zeroing Jobs run. Pod Security admission must let privileged pods
// run there (Talos enforces "baseline" by default).
const ZeroNamespace = "rackboot-system"

// ZeroHostDev is where the Job mounts the node's /dev.
const ZeroHostDev = "/host/dev"

// ZeroCommand is the hidden rackboot subcommand the Job runs.
const ZeroCommand = "__zero-ranges"

// ZeroJobSpec says which disk of which node a Job zeroes.
type ZeroJobSpec struct {
	Node   string // the Kubernetes node (the machine's name)
	Device string // the kernel name on the node, "sda"
	Serial string // Talos's Disk.Serial: checked on the node before writing
	WWID   string // Talos's Disk.WWID, for a disk with no serial (AHCI SATA): checked instead
	Size   int64  // Talos's Disk.Size: checked too
	Image  string // rackboot's image (ociimage.ImageName), pulled through the rack's mirror
	// Binary is the binary's path in the image (ociimage.BinaryPath).
	Binary string
}

var dnsUnsafe = regexp.MustCompile(`[^a-z0-9-]+`)

// ID is what names the disk: its serial, else its WWID.
func (s ZeroJobSpec) ID() string {
	if s.Serial != "" {
		return s.Serial
	}
	return s.WWID
}

// ZeroJobName is the Job's name for a node's disk: rackboot-zero-<node>-<serial>
// (a disk without a serial: its WWID), lower-cased and made a DNS label;
// when longer than 63 characters, cut and ended with a hash of both, so two
// disks never share a name.
func ZeroJobName(node, serial string) string {
	n := strings.Trim(dnsUnsafe.ReplaceAllString(strings.ToLower("rackboot-zero-"+node+"-"+serial), "-"), "-")
	if len(n) <= 63 {
		return n
	}
	h := sha256.Sum256([]byte(node + "\x00" + serial))
	return strings.TrimRight(n[:63-11], "-") + "-" + hex.EncodeToString(h[:])[:10]
}

// ZeroArgs is the Job's command line after the binary: the device, its
// serial (or, without one, its WWID) and size, and one --range OFF:LEN per
// range.
func ZeroArgs(s ZeroJobSpec, ranges []Range) []string {
	id := []string{"--serial", s.Serial}
	if s.Serial == "" {
		id = []string{"--wwid", s.WWID}
	}
	args := append([]string{ZeroCommand, "--device", ZeroHostDev + "/" + s.Device}, id...)
	args = append(args, "--size", strconv.FormatInt(s.Size, 10), "--result-file", "/dev/termination-log")
	for _, r := range ranges {
		args = append(args, "--range", FormatRange(r))
	}
	return args
}

// FormatRange is OFF:LEN in bytes, what ParseRange reads.
func FormatRange(r Range) string { return fmt.Sprintf("%d:%d", r.Offset, r.Length) }

// ParseRange reads OFF:LEN (decimal bytes, LEN > 0, OFF ≥ 0, no overflow).
func ParseRange(s string) (Range, error) {
	o, l, ok := strings.Cut(s, ":")
	off, err1 := strconv.ParseInt(o, 10, 64)
	n, err2 := strconv.ParseInt(l, 10, 64)
	if !ok || err1 != nil || err2 != nil || off < 0 || n <= 0 || off > (1<<63-1)-n {
		return Range{}, fmt.Errorf("range %q: write OFFSET:LENGTH in bytes, e.g. 1073741824:4096", s)
	}
	return Range{Offset: off, Length: n}, nil
}

// ZeroNamespaceObject is ZeroNamespace, labelled so Pod Security admission
// admits the privileged Job (Talos's default is baseline).
func ZeroNamespaceObject() *corev1.Namespace {
	return &corev1.Namespace{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: ZeroNamespace, Labels: map[string]string{
			"app.kubernetes.io/managed-by":       "rackboot",
			"pod-security.kubernetes.io/enforce": "privileged",
		}},
	}
}

// ZeroJob is a one-shot Job that zeroes WipePlan(s.Size) on one disk of
// one node: pinned by nodeName (no scheduler decision; tolerates every
// taint, control planes included), privileged and root (to open the block
// device), the node's /dev mounted at ZeroHostDev, never retried
// (backoffLimit 0: a refusal is final), gone an hour after it finishes.
// The command's summary is the container's termination message, which
// the API keeps in the pod's status.
func ZeroJob(s ZeroJobSpec) *batchv1.Job {
	var zero int32
	ttl := int32(3600)
	deadline := int64(900)
	yes, no := true, false
	root := int64(0)
	hostPathDir := corev1.HostPathDirectory
	labels := map[string]string{
		"app.kubernetes.io/name":       "rackboot",
		"app.kubernetes.io/component":  "zero-disk",
		"app.kubernetes.io/managed-by": "rackboot",
	}
	annotations := map[string]string{
		"rackboot.dotfile.dev/node":   s.Node,
		"rackboot.dotfile.dev/device": s.Device,
	}
	if s.Serial != "" {
		annotations["rackboot.dotfile.dev/serial"] = s.Serial
	} else {
		annotations["rackboot.dotfile.dev/wwid"] = s.WWID
	}
	return &batchv1.Job{
		TypeMeta: metav1.TypeMeta{APIVersion: "batch/v1", Kind: "Job"},
		ObjectMeta: metav1.ObjectMeta{
			Name: ZeroJobName(s.Node, s.ID()), Namespace: ZeroNamespace,
			Labels: labels, Annotations: annotations,
		},
		Spec: batchv1.JobSpec{
			BackoffLimit:            &zero,
			TTLSecondsAfterFinished: &ttl,
			ActiveDeadlineSeconds:   &deadline,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels, Annotations: annotations},
				Spec: corev1.PodSpec{
					NodeName:                     s.Node,
					RestartPolicy:                corev1.RestartPolicyNever,
					AutomountServiceAccountToken: &no,
					Tolerations:                  []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
					Containers: []corev1.Container{{
						Name:                     "zero",
						Image:                    s.Image,
						ImagePullPolicy:          corev1.PullIfNotPresent,
						Command:                  []string{s.Binary},
						Args:                     ZeroArgs(s, WipePlan(s.Size)),
						TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
						SecurityContext: &corev1.SecurityContext{
							Privileged: &yes, RunAsUser: &root, RunAsGroup: &root, RunAsNonRoot: &no,
						},
						VolumeMounts: []corev1.VolumeMount{{Name: "dev", MountPath: ZeroHostDev}},
					}},
					Volumes: []corev1.Volume{{Name: "dev", VolumeSource: corev1.VolumeSource{
						HostPath: &corev1.HostPathVolumeSource{Path: "/dev", Type: &hostPathDir},
					}}},
				},
			},
		},
	}
}
