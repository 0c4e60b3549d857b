package handoff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
)

// Answer is the replica that answered.
type Answer struct {
	Pod  string // pod name
	Node string
	URL  string // what answered 200, http://<node address>:<port>/
}

// WaitConfig says what to wait for.
type WaitConfig struct {
	Client    kubernetes.Interface
	Namespace string // default Namespace
	Name      string // the Deployment; default Name
	HTTPPort  int    // default DefaultHTTPPort
	Timeout   time.Duration
	// Poll is the interval between looks (default 2 s).
	Poll time.Duration
	// HTTP asks the replicas (default: a client with a 3 s timeout).
	HTTP *http.Client
	// Progress, when set, is called with what is still awaited each time
	// it changes.
	Progress func(string)
	Log      *slog.Logger
}

// WaitAnswer waits until the Deployment's rollout has an available
// replica and one of its ready pods answers HTTP 200 on GET / at its
// address (the node's: host network) and port, as seen from here: the
// laptop on the rack's network. On timeout the error says what was
// missing last (no pod, a pod pending and why, no answer).
func WaitAnswer(ctx context.Context, c WaitConfig) (Answer, error) {
	if c.Client == nil {
		return Answer{}, errors.New("wait for rackboot in the cluster: no Kubernetes client")
	}
	c = c.withDefaults()
	deadline := time.Now().Add(c.Timeout)
	last := ""
	for {
		lctx, cancel := context.WithTimeout(ctx, lookTimeout)
		a, why, err := c.look(lctx)
		cancel()
		if err != nil {
			return Answer{}, err
		}
		if why == "" {
			return a, nil
		}
		if ctx.Err() != nil {
			return Answer{}, fmt.Errorf("wait for deployment %s/%s: %w (last: %s)", c.Namespace, c.Name, ctx.Err(), last)
		}
		if why != last {
			last = why
			if c.Progress != nil {
				c.Progress(why)
			}
			c.Log.Debug("waiting for rackboot in the cluster", "why", why)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return Answer{}, fmt.Errorf("no replica of deployment %s/%s answered within %v: %s", c.Namespace, c.Name, c.Timeout, last)
		}
		select {
		case <-ctx.Done():
		case <-time.After(min(c.Poll, left)):
		}
	}
}

// lookTimeout bounds one look (API calls and the HTTP probes).
const lookTimeout = 20 * time.Second

func (c WaitConfig) withDefaults() WaitConfig {
	if c.Namespace == "" {
		c.Namespace = Namespace
	}
	if c.Name == "" {
		c.Name = Name
	}
	if c.HTTPPort == 0 {
		c.HTTPPort = DefaultHTTPPort
	}
	if c.Timeout == 0 {
		c.Timeout = 10 * time.Minute
	}
	if c.Poll == 0 {
		c.Poll = 2 * time.Second
	}
	if c.HTTP == nil {
		c.HTTP = &http.Client{Timeout: 3 * time.Second}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

// look checks once. why is "" when a replica answered; err is set only
// for what waiting will not fix (no rights to read).
func (c WaitConfig) look(ctx context.Context) (Answer, string, error) {
	d, err := c.Client.AppsV1().Deployments(c.Namespace).Get(ctx, c.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsForbidden(err) || apierrors.IsUnauthorized(err):
		return Answer{}, "", fmt.Errorf("read deployment %s/%s: %w", c.Namespace, c.Name, err)
	case err != nil:
		return Answer{}, fmt.Sprintf("deployment %s/%s: %v", c.Namespace, c.Name, err), nil
	}
	if why := rolloutPending(d); why != "" {
		return Answer{}, why + podsWhy(ctx, c, d), nil
	}
	pods, err := c.pods(ctx, d)
	if err != nil {
		return Answer{}, err.Error(), nil
	}
	var tried []string
	for _, p := range pods {
		if !podReady(p) || p.Status.PodIP == "" {
			continue
		}
		url := "http://" + net.JoinHostPort(p.Status.PodIP, strconv.Itoa(c.HTTPPort)) + "/"
		if err := c.get(ctx, url); err != nil {
			tried = append(tried, fmt.Sprintf("%s at %s: %v", p.Name, url, err))
			continue
		}
		return Answer{Pod: p.Name, Node: p.Spec.NodeName, URL: url}, "", nil
	}
	if len(tried) == 0 {
		return Answer{}, "no ready pod with an address yet" + podsWhy(ctx, c, d), nil
	}
	return Answer{}, "no replica answered from here: " + strings.Join(tried, "; "), nil
}

// rolloutPending says why the Deployment has no available replica of its
// current spec yet ("" when it has).
func rolloutPending(d *appsv1.Deployment) string {
	want := int32(1)
	if d.Spec.Replicas != nil {
		want = *d.Spec.Replicas
	}
	s := d.Status
	switch {
	case want == 0:
		return "the deployment is scaled to 0 (rackboot handoff --back did that; rackboot handoff scales it up)"
	case s.ObservedGeneration < d.Generation:
		return "the deployment's controller has not seen its latest spec yet"
	case s.AvailableReplicas < 1:
		return fmt.Sprintf("0 of %d replicas available", want)
	case s.UpdatedReplicas < 1:
		return "no replica runs the latest spec yet"
	}
	return ""
}

func (c WaitConfig) pods(ctx context.Context, d *appsv1.Deployment) ([]corev1.Pod, error) {
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("deployment %s/%s selector: %w", c.Namespace, c.Name, err)
	}
	list, err := c.Client.CoreV1().Pods(c.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list the pods of deployment %s/%s: %w", c.Namespace, c.Name, err)
	}
	pods := list.Items
	slices.SortFunc(pods, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	return pods, nil
}

// podsWhy describes the pods that are not ready (scheduling, image pull,
// crash), for the user waiting: ": pod X: Pending: 0/3 nodes are...".
func podsWhy(ctx context.Context, c WaitConfig, d *appsv1.Deployment) string {
	pods, err := c.pods(ctx, d)
	if err != nil || len(pods) == 0 {
		return ""
	}
	var parts []string
	for _, p := range pods {
		if !podReady(p) {
			parts = append(parts, "pod "+p.Name+": "+podWhy(p))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return ": " + strings.Join(parts, "; ")
}

func podWhy(p corev1.Pod) string {
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			return strings.TrimSpace(w.Reason + " " + w.Message)
		}
		if t := cs.LastTerminationState.Terminated; t != nil {
			return strings.TrimSpace(fmt.Sprintf("restarted %d times, last exit %d: %s", cs.RestartCount, t.ExitCode, t.Message))
		}
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodScheduled && cond.Status == corev1.ConditionFalse {
			return "not scheduled: " + cond.Message
		}
	}
	return string(p.Status.Phase) + ", not ready"
}

func podReady(p corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, cond := range p.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (c WaitConfig) get(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// ScaleDown sets the Deployment's replicas to 0 and waits until none of
// its pods is left (terminated pods stop answering DHCP), so the laptop's
// serve can take over without two DHCP servers. A missing Deployment is
// not an error.
func ScaleDown(ctx context.Context, cs kubernetes.Interface, namespace string, timeout, poll time.Duration) error {
	if namespace == "" {
		namespace = Namespace
	}
	deps := cs.AppsV1().Deployments(namespace)
	body := []byte(`{"spec":{"replicas":0}}`)
	_, err := deps.Patch(ctx, Name, "application/merge-patch+json", body, metav1.PatchOptions{FieldManager: "rackboot-handoff-back"})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("scale deployment %s/%s to 0: %w", namespace, Name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	sel := labels.SelectorFromSet(Selector).String()
	for {
		list, err := cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err == nil && len(list.Items) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			left := "?"
			if err == nil {
				left = strconv.Itoa(len(list.Items))
			}
			return fmt.Errorf("deployment %s/%s scaled to 0, but %s of its pods are still there after %v: wait until `kubectl -n %s get pods -l %s` shows none before serving from the laptop",
				namespace, Name, left, timeout, namespace, sel)
		case <-time.After(poll):
		}
	}
}
