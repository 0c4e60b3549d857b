package upgrade

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// ErrDrainTimeout is wrapped by Drain's error when pods are still on the
// node when its time is up.
var ErrDrainTimeout = errors.New("drain timed out")

// Cordon marks the node unschedulable (or schedulable again with false),
// as `kubectl cordon`/`uncordon` do.
func Cordon(ctx context.Context, cs kubernetes.Interface, node string, unschedulable bool) error {
	patch := fmt.Sprintf(`{"spec":{"unschedulable":%t}}`, unschedulable)
	if _, err := cs.CoreV1().Nodes().Patch(ctx, node, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		verb := "cordon"
		if !unschedulable {
			verb = "uncordon"
		}
		return fmt.Errorf("%s node %s: %w", verb, node, err)
	}
	return nil
}

// DrainOptions bound a drain.
type DrainOptions struct {
	// Timeout is how long pods may take to leave (evictions refused by a
	// disruption budget are retried until then). Default DefaultDrainTimeout.
	Timeout time.Duration
	// Retry is the wait between rounds (kubectl drain waits 5 s after a
	// 429). Default 5 s.
	Retry time.Duration
	// Clock; default the real one.
	Clock Clock
	// Progress, when not nil, is told each eviction and each refusal.
	Progress func(msg string)
}

// DefaultDrainTimeout is how long a drain waits for a node's pods.
const DefaultDrainTimeout = 10 * time.Minute

// DrainResult says what a drain did.
type DrainResult struct {
	Evicted []string // namespace/name
	Skipped []string // "namespace/name (DaemonSet)" / "(mirror pod)"
	// Refused counts the evictions a disruption budget refused (429).
	Refused int
}

// skipReason says why drain leaves a pod alone, as kubectl drain does:
// DaemonSet pods (their controller ignores unschedulable and would put them
// back), mirror pods (static pods: the kubelet owns them, the API cannot
// delete them), and pods already finished.
func skipReason(p *corev1.Pod) string {
	if _, ok := p.Annotations[corev1.MirrorPodAnnotationKey]; ok {
		return "mirror pod"
	}
	for _, o := range p.OwnerReferences {
		if o.Controller != nil && *o.Controller && o.Kind == "DaemonSet" {
			return "DaemonSet"
		}
	}
	return ""
}

// Drain evicts every pod of the node through the policy/v1 Eviction API,
// so PodDisruptionBudgets are respected: an eviction a budget refuses (HTTP
// 429) is retried each Retry until Timeout. DaemonSet and mirror pods are
// left alone. It returns when no evictable pod is left on the node (pods
// being deleted count until they are gone).
func Drain(ctx context.Context, cs kubernetes.Interface, node string, o DrainOptions) (DrainResult, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultDrainTimeout
	}
	if o.Retry <= 0 {
		o.Retry = 5 * time.Second
	}
	if o.Clock == nil {
		o.Clock = realClock{}
	}
	say := func(format string, args ...any) {
		if o.Progress != nil {
			o.Progress(fmt.Sprintf(format, args...))
		}
	}
	var res DrainResult
	deadline := o.Clock.Now().Add(o.Timeout)
	skipped := map[string]bool{}
	evicted := map[string]bool{}
	for {
		list, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
		})
		if err != nil {
			return res, fmt.Errorf("drain %s: list its pods: %w", node, err)
		}
		var waiting []string
		for i := range list.Items {
			p := &list.Items[i]
			ref := p.Namespace + "/" + p.Name
			if why := skipReason(p); why != "" {
				if !skipped[ref] {
					skipped[ref] = true
					res.Skipped = append(res.Skipped, ref+" ("+why+")")
				}
				continue
			}
			if p.DeletionTimestamp != nil {
				waiting = append(waiting, ref+": terminating")
				continue
			}
			err := cs.PolicyV1().Evictions(p.Namespace).Evict(ctx, &policyv1.Eviction{
				ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
			})
			switch {
			case err == nil:
				if !evicted[ref] {
					evicted[ref] = true
					res.Evicted = append(res.Evicted, ref)
				}
				say("evicted %s", ref)
				waiting = append(waiting, ref+": evicted, terminating")
			case apierrors.IsNotFound(err):
				// Gone meanwhile.
			case apierrors.IsTooManyRequests(err):
				res.Refused++
				why := firstLine(err.Error())
				say("eviction of %s refused by a disruption budget, retrying: %s", ref, why)
				waiting = append(waiting, ref+": "+why)
			default:
				return res, fmt.Errorf("drain %s: evict %s: %w", node, ref, err)
			}
		}
		if len(waiting) == 0 {
			slices.Sort(res.Skipped)
			return res, nil
		}
		if !o.Clock.Now().Before(deadline) {
			slices.Sort(waiting)
			return res, fmt.Errorf("%w: %s still has %d pod(s) after %v:\n  %s\n(a disruption budget that allows no disruption keeps its pods: check `kubectl get pdb -A`; rerun with a longer --drain-timeout once the budget allows it)",
				ErrDrainTimeout, node, len(waiting), o.Timeout, strings.Join(waiting, "\n  "))
		}
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("drain %s: %w", node, context.Cause(ctx))
		case <-o.Clock.After(o.Retry):
		}
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
