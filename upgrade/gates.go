package upgrade

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/bundles/rook"
)

// Clock is the time source of waits (tests step it).
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Gate is one health condition checked before (and after) each node.
type Gate struct {
	// Name says what must hold, e.g. "Ceph is HEALTH_OK".
	Name string
	// Check looks once. It returns whether the gate holds and, when not,
	// why in the user's words (what is unhealthy, what to look at).
	Check func(ctx context.Context) (ok bool, why string)
}

// GateResult is one gate's state at one check.
type GateResult struct {
	Gate string
	OK   bool
	Why  string
}

// CheckGates checks each gate once.
func CheckGates(ctx context.Context, gates []Gate) []GateResult {
	out := make([]GateResult, 0, len(gates))
	for _, g := range gates {
		ok, why := g.Check(ctx)
		out = append(out, GateResult{Gate: g.Name, OK: ok, Why: why})
	}
	return out
}

// EtcdGate: etcd is healthy with every member. Through the Talos API of
// each control plane: the member list (from the first that answers) has one
// voting member per control plane, and each control plane's own member
// status answers without errors and names a leader, the same for all.
// controlPlanes are node names; resolve gives each one's Talos API address.
func EtcdGate(t Talos, controlPlanes []string, resolve func(ctx context.Context, name string) (string, error)) Gate {
	return Gate{
		Name: fmt.Sprintf("etcd is healthy with all %d members", len(controlPlanes)),
		Check: func(ctx context.Context) (bool, string) {
			return checkEtcd(ctx, t, controlPlanes, resolve)
		},
	}
}

func checkEtcd(ctx context.Context, t Talos, cps []string, resolve func(context.Context, string) (string, error)) (bool, string) {
	if len(cps) == 0 {
		return false, "the rack has no control plane"
	}
	var problems []string
	var members []EtcdMember
	listed := false
	leaders := map[uint64]bool{}
	for _, name := range cps {
		addr, err := resolve(ctx, name)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		if !listed {
			if ms, err := t.EtcdMembers(ctx, addr); err == nil {
				members, listed = ms, true
			}
		}
		st, err := t.EtcdStatus(ctx, addr)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s: etcd does not answer (%v)", name, err))
		case len(st.Errors) > 0:
			problems = append(problems, fmt.Sprintf("%s: etcd reports %s", name, strings.Join(st.Errors, "; ")))
		case st.Learner:
			problems = append(problems, name+": etcd member is still a learner (catching up)")
		case st.Leader == 0:
			problems = append(problems, name+": etcd member sees no leader")
		default:
			leaders[st.Leader] = true
		}
	}
	if !listed {
		problems = append(problems, "no control plane lists the etcd members")
	} else {
		voters := 0
		for _, m := range members {
			if m.Learner {
				problems = append(problems, fmt.Sprintf("etcd member %s is a learner", m.Hostname))
				continue
			}
			voters++
		}
		if voters != len(cps) {
			names := make([]string, 0, len(members))
			for _, m := range members {
				names = append(names, m.Hostname)
			}
			problems = append(problems, fmt.Sprintf("etcd has %d voting member(s) (%s), the rack has %d control planes", voters, strings.Join(names, ", "), len(cps)))
		}
	}
	if len(leaders) > 1 {
		problems = append(problems, fmt.Sprintf("etcd members disagree on the leader (%d leaders seen)", len(leaders)))
	}
	if len(problems) > 0 {
		return false, strings.Join(problems, "; ") + "; look at `talosctl -n <control plane> etcd status` and `etcd members`"
	}
	return true, ""
}

// CephClusterGVR is Rook's CephCluster resource.
var CephClusterGVR = schema.GroupVersionResource{Group: "ceph.rook.io", Version: "v1", Resource: "cephclusters"}

// CephGate: the CephCluster's status.ceph.health is HEALTH_OK (bundles'
// gate, rook.ClusterHealthy, read the same way).
func CephGate(dyn dynamic.Interface, namespace, name string) Gate {
	return Gate{
		Name: fmt.Sprintf("Ceph is HEALTH_OK (CephCluster %s/%s)", namespace, name),
		Check: func(ctx context.Context) (bool, string) {
			obj, err := dyn.Resource(CephClusterGVR).Namespace(namespace).Get(ctx, name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				return false, fmt.Sprintf("no CephCluster %s/%s: is Rook-Ceph applied (`rackboot bundles apply`)?", namespace, name)
			case err != nil:
				return false, fmt.Sprintf("read CephCluster %s/%s: %v", namespace, name, err)
			}
			return rook.ClusterHealthy(obj)
		},
	}
}

// NodesReadyGate: every node of the cluster is Ready.
func NodesReadyGate(cs kubernetes.Interface) Gate {
	return Gate{
		Name: "every node is Ready",
		Check: func(ctx context.Context) (bool, string) {
			list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, fmt.Sprintf("list nodes: %v", err)
			}
			var bad []string
			for i := range list.Items {
				if ok, why := nodeReady(&list.Items[i]); !ok {
					bad = append(bad, list.Items[i].Name+": "+why)
				}
			}
			if len(list.Items) == 0 {
				return false, "the cluster has no nodes"
			}
			if len(bad) > 0 {
				slices.Sort(bad)
				return false, strings.Join(bad, "; ") + "; look at `kubectl describe node`"
			}
			return true, ""
		},
	}
}

// nodeReady says whether the Ready condition is True, else why.
func nodeReady(n *corev1.Node) (bool, string) {
	for _, c := range n.Status.Conditions {
		if c.Type != corev1.NodeReady {
			continue
		}
		if c.Status == corev1.ConditionTrue {
			return true, ""
		}
		why := fmt.Sprintf("not Ready (%s", c.Status)
		if c.Reason != "" {
			why += " " + c.Reason
		}
		if c.Message != "" {
			why += ": " + c.Message
		}
		return false, why + ")"
	}
	return false, "no Ready condition yet"
}

// waitGates polls the gates until all hold or timeout passes; it returns
// the first gate that does not hold at the end (nil when all hold).
func waitGates(ctx context.Context, gates []Gate, timeout, poll time.Duration, clk Clock) (*GateResult, error) {
	deadline := clk.Now().Add(timeout)
	for {
		var failed *GateResult
		for _, g := range gates {
			if ok, why := g.Check(ctx); !ok {
				failed = &GateResult{Gate: g.Name, Why: why}
				break
			}
		}
		if failed == nil {
			return nil, nil
		}
		if !clk.Now().Before(deadline) {
			return failed, nil
		}
		select {
		case <-ctx.Done():
			return failed, context.Cause(ctx)
		case <-clk.After(poll):
		}
	}
}
