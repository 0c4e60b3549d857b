// Package bundles renders the cluster's platform (Rook-Ceph, CockroachDB) as
// Kubernetes objects and applies them with server-side apply, then waits on
// their health gates. It takes a rest.Config and objects; it knows nothing of
// the rack file (cmd/ turns the rack into bundle parameters).
package bundles

import (
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// FieldManager is the server-side apply field manager of every object
// rackboot applies.
const FieldManager = "rackboot"

// Bundle is one part of the platform: its objects and how to tell it is
// healthy.
type Bundle struct {
	Name    string
	Objects []*unstructured.Unstructured
	Gates   []Gate
}

// Gate is one health condition: an object that must reach a state.
type Gate struct {
	// Name says what is awaited, e.g. "CephCluster rook-ceph/rook-ceph is HEALTH_OK".
	Name      string
	GVR       schema.GroupVersionResource
	Namespace string
	Object    string
	// Ready inspects the current object. It returns whether the gate is
	// passed and, when not, a short description of what is not healthy and
	// what to look at (shown on timeout).
	Ready func(obj *unstructured.Unstructured) (ok bool, why string)
}
