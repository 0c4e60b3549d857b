package rook

import (
	"fmt"
	"regexp"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Node is one storage node: its Kubernetes node name (the kubernetes.io/hostname
// label) and the regular expression of the whole disks Ceph takes on it.
type Node struct {
	Name         string
	DeviceFilter string
}

// Params are the cluster part's inputs. Every node in Nodes carries disks
// for Ceph; mons and mgrs run on them too.
type Params struct {
	Nodes []Node
	// CephImage overrides the pinned CephImage (e.g. a local mirror).
	CephImage string
}

// MonCount is the number of Ceph monitors for n nodes: 1 for one or two
// nodes (two mons are no better than one), 3 from three nodes on.
func MonCount(n int) int {
	if n >= 3 {
		return 3
	}
	return 1
}

// MgrCount is the number of Ceph managers: one standby once there are two nodes.
func MgrCount(n int) int {
	if n >= 2 {
		return 2
	}
	return 1
}

// PoolSize is the replica count of the block pool for n nodes with disks:
// min(3, n).
func PoolSize(n int) int {
	return max(1, min(3, n))
}

// FailureDomain is the CRUSH failure domain of the pool: host, or osd on a
// single node (where host would leave every PG undersized).
func FailureDomain(n int) string {
	if n <= 1 {
		return "osd"
	}
	return "host"
}

var nodeName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)

// Validate reports the first problem of p: no nodes, a name that is not a
// Kubernetes node name, a duplicate, or a device filter that is not a
// regular expression.
func (p Params) Validate() error {
	if len(p.Nodes) == 0 {
		return fmt.Errorf("rook: no storage nodes")
	}
	seen := map[string]bool{}
	for _, n := range p.Nodes {
		if !nodeName.MatchString(n.Name) {
			return fmt.Errorf("rook: node name %q is not a Kubernetes node name", n.Name)
		}
		if seen[n.Name] {
			return fmt.Errorf("rook: node %q is listed twice", n.Name)
		}
		seen[n.Name] = true
		if n.DeviceFilter != "" {
			if _, err := regexp.Compile(n.DeviceFilter); err != nil {
				return fmt.Errorf("rook: node %s: device filter %q: %w", n.Name, n.DeviceFilter, err)
			}
		}
	}
	return nil
}

// Cluster generates the cluster part: the rook-ceph Namespace (privileged
// pod security, which Rook needs and Talos does not grant by default), the
// CephCluster, the block pools (.mgr and replicapool) and the default
// StorageClass ceph-block.
func Cluster(p Params) ([]*unstructured.Unstructured, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	n := len(p.Nodes)
	image := p.CephImage
	if image == "" {
		image = CephImage
	}
	single := n == 1
	size := PoolSize(n)

	nodes := make([]any, 0, n)
	for _, nd := range p.Nodes {
		f := nd.DeviceFilter
		if f == "" {
			f = DefaultDeviceFilter
		}
		nodes = append(nodes, map[string]any{"name": nd.Name, "deviceFilter": f})
	}

	ns := obj("v1", "Namespace", "", Namespace)
	ns.SetLabels(map[string]string{
		"app.kubernetes.io/managed-by":       "rackboot",
		"pod-security.kubernetes.io/enforce": "privileged",
		"pod-security.kubernetes.io/audit":   "privileged",
		"pod-security.kubernetes.io/warn":    "privileged",
	})

	cluster := obj("ceph.rook.io/v1", "CephCluster", Namespace, ClusterName)
	spec := map[string]any{
		"cephVersion":     map[string]any{"image": image, "allowUnsupported": false},
		"dataDirHostPath": DataDirHost,
		"mon":             map[string]any{"count": int64(MonCount(n)), "allowMultiplePerNode": single},
		"mgr": map[string]any{
			"count":                int64(MgrCount(n)),
			"allowMultiplePerNode": single,
			"modules":              []any{map[string]any{"name": "rook", "enabled": true}},
		},
		"dashboard":      map[string]any{"enabled": true, "ssl": true},
		"crashCollector": map[string]any{"disable": false},
		"storage": map[string]any{
			"useAllNodes":   false,
			"useAllDevices": false,
			"nodes":         nodes,
		},
		"disruptionManagement": map[string]any{"managePodBudgets": true},
	}
	if size < 3 {
		// Fewer than three nodes: pools default to what the nodes can
		// hold, and a size-1 pool is expected, not a warning.
		spec["cephConfig"] = map[string]any{"global": map[string]any{
			"osd_pool_default_size":          fmt.Sprint(size),
			"mon_warn_on_pool_no_redundancy": "false",
		}}
	}
	cluster.Object["spec"] = spec

	pool := func(name, cephName string) *unstructured.Unstructured {
		o := obj("ceph.rook.io/v1", "CephBlockPool", Namespace, name)
		s := map[string]any{
			"failureDomain": FailureDomain(n),
			"replicated":    map[string]any{"size": int64(size), "requireSafeReplicaSize": size > 1},
		}
		if cephName != "" {
			s["name"] = cephName
		}
		o.Object["spec"] = s
		return o
	}

	sc := obj("storage.k8s.io/v1", "StorageClass", "", StorageClass)
	sc.SetAnnotations(map[string]string{"storageclass.kubernetes.io/is-default-class": "true"})
	sc.Object["provisioner"] = RBDProvisioner
	sc.Object["parameters"] = map[string]any{
		"clusterID":     Namespace,
		"pool":          PoolName,
		"imageFormat":   "2",
		"imageFeatures": "layering",
		"csi.storage.k8s.io/provisioner-secret-name":             "rook-csi-rbd-provisioner",
		"csi.storage.k8s.io/provisioner-secret-namespace":        Namespace,
		"csi.storage.k8s.io/controller-expand-secret-name":       "rook-csi-rbd-provisioner",
		"csi.storage.k8s.io/controller-expand-secret-namespace":  Namespace,
		"csi.storage.k8s.io/controller-publish-secret-name":      "rook-csi-rbd-provisioner",
		"csi.storage.k8s.io/controller-publish-secret-namespace": Namespace,
		"csi.storage.k8s.io/node-stage-secret-name":              "rook-csi-rbd-node",
		"csi.storage.k8s.io/node-stage-secret-namespace":         Namespace,
		"csi.storage.k8s.io/fstype":                              "ext4",
	}
	sc.Object["reclaimPolicy"] = "Delete"
	sc.Object["allowVolumeExpansion"] = true
	sc.Object["volumeBindingMode"] = "Immediate"

	return []*unstructured.Unstructured{ns, cluster, pool("builtin-mgr", ".mgr"), pool(PoolName, ""), sc}, nil
}

func obj(apiVersion, kind, namespace, name string) *unstructured.Unstructured {
	o := &unstructured.Unstructured{Object: map[string]any{}}
	o.SetAPIVersion(apiVersion)
	o.SetKind(kind)
	o.SetName(name)
	if namespace != "" {
		o.SetNamespace(namespace)
	}
	o.SetLabels(map[string]string{"app.kubernetes.io/managed-by": "rackboot"})
	return o
}

// ClusterHealthy says whether a CephCluster reports HEALTH_OK; why names
// the current health and where to look.
func ClusterHealthy(o *unstructured.Unstructured) (bool, string) {
	h, _, _ := unstructured.NestedString(o.Object, "status", "ceph", "health")
	if h == "HEALTH_OK" {
		return true, ""
	}
	if h == "" {
		h = "not reported yet"
	}
	msg, _, _ := unstructured.NestedString(o.Object, "status", "message")
	why := "ceph health is " + h
	if msg != "" {
		why += " (" + msg + ")"
	}
	return false, why + "; look at `kubectl -n rook-ceph get cephcluster` and `ceph status` via the toolbox"
}

// PhaseReady says whether a Rook object's .status.phase is Ready (a
// CephCluster or a CephBlockPool); why names the current phase.
func PhaseReady(o *unstructured.Unstructured) (bool, string) {
	ph, _, _ := unstructured.NestedString(o.Object, "status", "phase")
	if ph == "Ready" {
		return true, ""
	}
	if ph == "" {
		ph = "not reported yet"
	}
	return false, fmt.Sprintf("%s %s phase is %s; look at `kubectl -n rook-ceph describe %s %s` and the rook-ceph-operator log",
		o.GetKind(), o.GetName(), ph, strings.ToLower(o.GetKind()), o.GetName())
}
