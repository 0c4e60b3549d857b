package bundles

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"

	"github.com/dotfile/rackboot/bundles/cockroach"
	"github.com/dotfile/rackboot/bundles/rook"
)

// RookParams are the Rook-Ceph cluster part's inputs (storage nodes and
// their device filters).
type RookParams = rook.Params

// RookNode is one Ceph storage node.
type RookNode = rook.Node

// CockroachParams are the CockroachDB bundle's inputs (schedulable nodes,
// sizes).
type CockroachParams = cockroach.Params

// Params are everything Render needs. It knows nothing of the rack file.
type Params struct {
	Rook      RookParams
	Cockroach CockroachParams
	// CertsDir keeps CockroachDB's CA, node and root certificates (created
	// on first use, never regenerated).
	CertsDir string
	// RookManifests is the folder of Rook's materialized upstream files;
	// nil means the ones embedded in the binary.
	RookManifests fs.FS
	// Now is the clock of certificate issuance; nil means time.Now.
	Now func() time.Time
}

// Names of the bundles, in apply order.
const (
	RookBundle      = "rook-ceph"
	CockroachBundle = "cockroachdb"
)

// Render returns the platform's bundles in apply order: Rook-Ceph (the
// upstream operator part, then the generated cluster part) and CockroachDB.
// The output is deterministic for the same inputs and certificates.
func Render(p Params) ([]Bundle, error) {
	if p.CertsDir == "" {
		return nil, errors.New("render bundles: no certificates directory")
	}
	now := p.Now
	if now == nil {
		now = time.Now
	}
	manifests := p.RookManifests
	if manifests == nil {
		var err error
		if manifests, err = rook.Embedded(); err != nil {
			return nil, fmt.Errorf("render Rook-Ceph bundle: %w", err)
		}
	}
	upstream, err := rook.Upstream(manifests)
	if err != nil {
		return nil, fmt.Errorf("render Rook-Ceph bundle: %w", err)
	}
	cluster, err := rook.Cluster(p.Rook)
	if err != nil {
		return nil, fmt.Errorf("render Rook-Ceph bundle: %w", err)
	}
	// The generated namespace (with its pod-security labels) comes first.
	rookObjs := append(append(cluster[:1:1], upstream...), cluster[1:]...)

	cp := p.Cockroach.WithDefaults()
	if cp.Replicas < 1 {
		return nil, errors.New("render CockroachDB bundle: no schedulable nodes")
	}
	certs, err := cockroach.LoadOrCreateCerts(p.CertsDir, cp.Replicas, cp.Namespace, now)
	if err != nil {
		return nil, fmt.Errorf("render CockroachDB bundle: %w", err)
	}
	crdbObjs, err := cockroach.Objects(cp, certs)
	if err != nil {
		return nil, fmt.Errorf("render CockroachDB bundle: %w", err)
	}

	out := []Bundle{
		{
			Name:    RookBundle,
			Objects: rookObjs,
			Gates: []Gate{
				{
					Name:      fmt.Sprintf("CephCluster %s/%s is HEALTH_OK", rook.Namespace, rook.ClusterName),
					GVR:       schema.GroupVersionResource{Group: "ceph.rook.io", Version: "v1", Resource: "cephclusters"},
					Namespace: rook.Namespace, Object: rook.ClusterName,
					Ready: rook.ClusterHealthy,
				},
				{
					Name:      fmt.Sprintf("CephCluster %s/%s is Ready", rook.Namespace, rook.ClusterName),
					GVR:       schema.GroupVersionResource{Group: "ceph.rook.io", Version: "v1", Resource: "cephclusters"},
					Namespace: rook.Namespace, Object: rook.ClusterName,
					Ready: rook.PhaseReady,
				},
				{
					Name:      fmt.Sprintf("CephBlockPool %s/%s is Ready", rook.Namespace, rook.PoolName),
					GVR:       schema.GroupVersionResource{Group: "ceph.rook.io", Version: "v1", Resource: "cephblockpools"},
					Namespace: rook.Namespace, Object: rook.PoolName,
					Ready: rook.PhaseReady,
				},
			},
		},
		{
			Name:    CockroachBundle,
			Objects: crdbObjs,
			Gates: []Gate{
				{
					Name:      fmt.Sprintf("StatefulSet %s/%s has %d ready replicas", cp.Namespace, cockroach.StatefulSet, cp.Replicas),
					GVR:       schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "statefulsets"},
					Namespace: cp.Namespace, Object: cockroach.StatefulSet,
					Ready: cockroach.StatefulSetReady,
				},
				{
					Name:      fmt.Sprintf("Job %s/%s succeeded", cp.Namespace, cockroach.InitJob),
					GVR:       schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"},
					Namespace: cp.Namespace, Object: cockroach.InitJob,
					Ready: cockroach.JobSucceeded,
				},
			},
		},
	}
	if err := checkObjects(out); err != nil {
		return nil, err
	}
	return out, nil
}

// checkObjects reports an object without apiVersion, kind or name, or one
// that appears twice.
func checkObjects(bs []Bundle) error {
	seen := map[string]string{}
	for _, b := range bs {
		for _, o := range b.Objects {
			if err := rook.CheckObject(o); err != nil {
				return fmt.Errorf("render bundle %s: %w", b.Name, err)
			}
			key := o.GroupVersionKind().GroupKind().String() + " " + o.GetNamespace() + "/" + o.GetName()
			if other, dup := seen[key]; dup {
				return fmt.Errorf("render bundles: %s is in both %s and %s", key, other, b.Name)
			}
			seen[key] = b.Name
		}
	}
	return nil
}

// Redacted is what WriteYAML shows instead of a Secret's values when asked
// to redact.
const Redacted = "REDACTED"

// WriteYAML writes every object of bs as YAML documents separated by `---`,
// each preceded by a comment naming its bundle. Keys are sorted, so equal
// objects give equal bytes. With redact, the values of Secrets' data and
// stringData are replaced by Redacted (keys stay visible).
func WriteYAML(w io.Writer, bs []Bundle, redact bool) error {
	for _, b := range bs {
		for _, o := range b.Objects {
			if redact && o.GetKind() == "Secret" && o.GetAPIVersion() == "v1" {
				o = redactSecret(o)
			}
			y, err := yaml.Marshal(o.Object)
			if err != nil {
				return fmt.Errorf("encode %s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err)
			}
			if _, err := fmt.Fprintf(w, "---\n# bundle: %s\n%s", b.Name, y); err != nil {
				return fmt.Errorf("write bundles: %w", err)
			}
		}
	}
	return nil
}

func redactSecret(o *unstructured.Unstructured) *unstructured.Unstructured {
	c := o.DeepCopy()
	for _, field := range []string{"data", "stringData"} {
		if m, ok := c.Object[field].(map[string]any); ok {
			for k := range m {
				m[k] = Redacted
			}
		}
	}
	return c
}
