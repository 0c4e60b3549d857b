package upgrade

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/dotfile/rackboot/bundles/cockroach"
)

// The CockroachDB gate reads what the StatefulSet says (every replica
// ready: bundles' gate) and, for liveness and replication, each node's
// Prometheus endpoint /_status/vars (unauthenticated, also in secure
// clusters): liveness_livenodes (the live nodes the node sees),
// ranges_underreplicated and ranges_unavailable (per store, counted by the
// ranges' leaseholders: summed over all nodes they cover every range once).
// No SQL login is needed.

// VarsSource fetches one CockroachDB pod's /_status/vars.
type VarsSource interface {
	Vars(ctx context.Context, pod string) ([]byte, error)
}

// PodProxyVars fetches /_status/vars through the API server's pod proxy
// (/api/v1/namespaces/NS/pods/https:POD:8080/proxy/_status/vars), so
// rackboot needs no route to the pod network.
type PodProxyVars struct {
	// REST is a CoreV1 REST client (kubernetes.Interface.CoreV1().RESTClient()).
	REST      rest.Interface
	Namespace string
	// Port is CockroachDB's HTTP port; 0 means cockroach.HTTPPort.
	Port int
}

// Vars implements VarsSource.
func (p PodProxyVars) Vars(ctx context.Context, pod string) ([]byte, error) {
	port := p.Port
	if port == 0 {
		port = cockroach.HTTPPort
	}
	b, err := p.REST.Get().Namespace(p.Namespace).Resource("pods").
		Name(fmt.Sprintf("https:%s:%d", pod, port)).SubResource("proxy").Suffix("_status/vars").
		DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("read %s/%s /_status/vars through the API server: %w", p.Namespace, pod, err)
	}
	return b, nil
}

// HTTPVars fetches /_status/vars from a base URL per pod (a port-forward, a
// reachable pod IP; tests use a loopback server).
type HTTPVars struct {
	Client *http.Client
	// URL returns the pod's base URL, e.g. https://10.244.1.5:8080.
	URL func(pod string) string
}

// Vars implements VarsSource.
func (h HTTPVars) Vars(ctx context.Context, pod string) ([]byte, error) {
	u := strings.TrimSuffix(h.URL(pod), "/") + "/_status/vars"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	c := h.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("read %s: HTTP %d", u, resp.StatusCode)
	}
	return b, nil
}

// Metrics are the values of Prometheus text-format samples, by metric name,
// summed over label sets.
type Metrics map[string]float64

// ParseMetrics reads the Prometheus text exposition format (as CockroachDB
// serves it on /_status/vars): "# " lines are skipped; each sample line is
// name[{labels}] value [timestamp]. Samples of the same name are summed.
func ParseMetrics(data []byte) (Metrics, error) {
	m := Metrics{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ \t"); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if !validMetricName(name) {
			return nil, fmt.Errorf("line %d: %q is not a metric name", n, name)
		}
		if strings.HasPrefix(rest, "{") {
			end := labelsEnd(rest)
			if end < 0 {
				return nil, fmt.Errorf("line %d: unterminated labels", n)
			}
			rest = rest[end+1:]
		}
		fs := strings.Fields(rest)
		if len(fs) < 1 || len(fs) > 2 {
			return nil, fmt.Errorf("line %d: want a value and an optional timestamp after %s", n, name)
		}
		v, err := strconv.ParseFloat(fs[0], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: value of %s: %w", n, name, err)
		}
		if len(fs) == 2 {
			if _, err := strconv.ParseInt(fs[1], 10, 64); err != nil {
				return nil, fmt.Errorf("line %d: timestamp of %s: %w", n, name, err)
			}
		}
		m[name] += v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}
	return m, nil
}

func validMetricName(s string) bool {
	if s == "" {
		return false
	}
	for i, c := range s {
		if !(c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// labelsEnd is the index of the } closing the label set that s starts
// with, skipping quoted values (with \" escapes); -1 if none.
func labelsEnd(s string) int {
	quoted := false
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == '}':
			return i
		}
	}
	return -1
}

// CockroachVerdict judges the metrics of every pod (by pod name) against
// the replica count: every node sees all replicas live, no range is under-
// replicated or unavailable. It is pure; CockroachGate feeds it.
func CockroachVerdict(replicas int, byPod map[string]Metrics, pods []string) (bool, string) {
	var problems []string
	var under, unavail float64
	for _, pod := range pods {
		m, ok := byPod[pod]
		if !ok {
			problems = append(problems, pod+": no metrics")
			continue
		}
		live, ok := m["liveness_livenodes"]
		switch {
		case !ok:
			problems = append(problems, pod+": no liveness_livenodes metric")
		case live < float64(replicas):
			problems = append(problems, fmt.Sprintf("%s sees %d of %d nodes live", pod, int(live), replicas))
		}
		under += m["ranges_underreplicated"]
		unavail += m["ranges_unavailable"]
	}
	if unavail > 0 {
		problems = append(problems, fmt.Sprintf("%d range(s) unavailable", int64(math.Round(unavail))))
	}
	if under > 0 {
		problems = append(problems, fmt.Sprintf("%d range(s) under-replicated", int64(math.Round(under))))
	}
	if len(problems) > 0 {
		return false, "CockroachDB: " + strings.Join(problems, "; ") + "; look at the DB Console (Replication dashboard) or `cockroach node status --ranges`"
	}
	return true, ""
}

// CockroachGate: the CockroachDB StatefulSet has every replica ready, every
// node sees all nodes live, and no range is under-replicated or
// unavailable. Pods are named <statefulset>-<ordinal>, as StatefulSets name
// them.
func CockroachGate(cs kubernetes.Interface, namespace string, vars VarsSource) Gate {
	return Gate{
		Name: fmt.Sprintf("CockroachDB (%s/%s): every node live, no under-replicated range", namespace, cockroach.StatefulSet),
		Check: func(ctx context.Context) (bool, string) {
			sts, err := cs.AppsV1().StatefulSets(namespace).Get(ctx, cockroach.StatefulSet, metav1.GetOptions{})
			if err != nil {
				return false, fmt.Sprintf("read StatefulSet %s/%s: %v (is the CockroachDB bundle applied?)", namespace, cockroach.StatefulSet, err)
			}
			u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(sts)
			if err != nil {
				return false, err.Error()
			}
			if ok, why := cockroach.StatefulSetReady(&unstructured.Unstructured{Object: u}); !ok {
				return false, why
			}
			replicas := 1
			if sts.Spec.Replicas != nil {
				replicas = int(*sts.Spec.Replicas)
			}
			byPod := map[string]Metrics{}
			var pods, problems []string
			for i := range replicas {
				pod := fmt.Sprintf("%s-%d", cockroach.StatefulSet, i)
				pods = append(pods, pod)
				b, err := vars.Vars(ctx, pod)
				if err != nil {
					problems = append(problems, err.Error())
					continue
				}
				m, err := ParseMetrics(b)
				if err != nil {
					problems = append(problems, fmt.Sprintf("%s: /_status/vars: %v", pod, err))
					continue
				}
				byPod[pod] = m
			}
			if len(problems) > 0 {
				return false, "CockroachDB: " + strings.Join(problems, "; ")
			}
			return CockroachVerdict(replicas, byPod, pods)
		},
	}
}
