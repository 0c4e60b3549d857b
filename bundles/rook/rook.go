// Package rook is the Rook-Ceph bundle: the operator part, embedded from the
// pinned upstream module (see README.md), and the cluster part, generated
// from parameters (nodes and their device filters).
//
// It imports nothing of rackboot: bundles/ turns its objects and readiness
// checks into a Bundle with gates.
package rook

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// The embed pattern must match something even when upstream/ is absent (a
// fresh clone), so it takes the whole directory: README.md and the Go files
// are always there; upstream/ joins them once materialized.
//
//go:embed *
var content embed.FS

// The upstream source and the images it pins.
const (
	Module        = "github.com/rook/rook"
	ModuleVersion = "v1.18.8"
	// OperatorImage is the operator image upstream's operator.yaml pins.
	OperatorImage = "docker.io/rook/ceph:v1.18.8"
	// CephImage is the Ceph image the v1.18.8 examples (cluster.yaml) pin.
	CephImage = "quay.io/ceph/ceph:v19.2.3"
)

// Names of the cluster part.
const (
	Namespace      = "rook-ceph"
	ClusterName    = "rook-ceph"
	PoolName       = "replicapool"
	StorageClass   = "ceph-block"
	RBDProvisioner = "rook-ceph.rbd.csi.ceph.com"
	DataDirHost    = "/var/lib/rook"
	// DefaultDeviceFilter takes whole sd* disks only (anchored: `^sd.`
	// would also match partitions).
	DefaultDeviceFilter = `^sd[a-z]+$`
)

// UpstreamFiles are the upstream files, in apply order.
var upstreamFiles = []string{"crds.yaml", "common.yaml", "operator.yaml", "csi-operator.yaml"}

// ErrNoManifests says the build carries no materialized Rook manifests.
var ErrNoManifests = errors.New("no Rook manifests in this build: run `make bundles` (materialized from github.com/rook/rook v1.18.8)")

// Embedded returns the embedded upstream folder, or ErrNoManifests.
func Embedded() (fs.FS, error) {
	sub, err := fs.Sub(content, "upstream")
	if err != nil {
		return nil, fmt.Errorf("open embedded Rook manifests: %w", err)
	}
	if _, err := fs.Stat(sub, "SOURCE"); err != nil {
		return nil, ErrNoManifests
	}
	return sub, nil
}

// Source returns the SOURCE record of fsys (module, version, go.sum hash).
func Source(fsys fs.FS) (string, error) {
	b, err := fs.ReadFile(fsys, "SOURCE")
	if err != nil {
		return "", fmt.Errorf("read Rook SOURCE: %w", err)
	}
	return string(b), nil
}

// Upstream parses the operator part from fsys (Embedded(), or a directory
// holding the materialized files): the CRDs, common RBAC, operator and CSI
// operator, in file order. It checks that the files come from the pinned
// version and that the operator image is the pinned one. Upstream's
// Namespace object is dropped: Cluster generates it with the labels Talos
// needs.
func Upstream(fsys fs.FS) ([]*unstructured.Unstructured, error) {
	src, err := Source(fsys)
	if err != nil {
		return nil, err
	}
	if !strings.Contains(src, "version: "+ModuleVersion+"\n") || !strings.Contains(src, "module: "+Module+"\n") {
		return nil, fmt.Errorf("rook: manifests are not from %s %s (SOURCE says %q): run `make bundles`", Module, ModuleVersion, strings.TrimSpace(src))
	}
	var out []*unstructured.Unstructured
	operatorImage := false
	for _, name := range upstreamFiles {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, fmt.Errorf("read Rook %s: %w (run `make bundles`)", name, err)
		}
		objs, err := ParseYAML(name, b)
		if err != nil {
			return nil, fmt.Errorf("parse Rook manifests: %w", err)
		}
		for _, o := range objs {
			if o.GetKind() == "Namespace" && o.GetAPIVersion() == "v1" && o.GetName() == Namespace {
				continue
			}
			if o.GetKind() == "Deployment" && o.GetName() == "rook-ceph-operator" {
				img, err := firstImage(o)
				if err != nil {
					return nil, fmt.Errorf("rook: %s: %w", name, err)
				}
				if img != OperatorImage {
					return nil, fmt.Errorf("rook: %s: operator image is %q, expected the pinned %q", name, img, OperatorImage)
				}
				operatorImage = true
			}
			out = append(out, o)
		}
	}
	if !operatorImage {
		return nil, errors.New("rook: manifests hold no rook-ceph-operator Deployment")
	}
	return out, nil
}

func firstImage(o *unstructured.Unstructured) (string, error) {
	cs, _, err := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if err != nil || len(cs) == 0 {
		return "", fmt.Errorf("deployment %s has no containers", o.GetName())
	}
	c, ok := cs[0].(map[string]any)
	if !ok {
		return "", fmt.Errorf("deployment %s: container is not a mapping", o.GetName())
	}
	img, _ := c["image"].(string)
	return img, nil
}
