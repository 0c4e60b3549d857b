// Package rook is the Rook-Ceph bundle: the operator part, embedded from the
// pinned upstream module (see README.md), and the cluster part, generated
// from parameters (nodes and their device filters).
//
// It imports nothing of rackboot: bundles/ turns its objects and readiness
// checks into a Bundle with gates.
package rook

import (
	"bufio"
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"regexp"
	"slices"
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

// ImagesFile is upstream's list of the images the release uses
// (deploy/examples/images.txt), materialized beside the manifests.
const ImagesFile = "images.txt"

// OperatorConfig is the operator's settings ConfigMap (operator.yaml); its
// settings take precedence over the operator Deployment's env.
const OperatorConfig = "rook-ceph-operator-config"

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
	return upstream(fsys, "")
}

// UpstreamWithoutCRDs is Upstream without the CustomResourceDefinitions,
// which are most of its bytes and hold no image: for listing images, where
// parsing them was ~0.3 s of every config render on 2 cores.
func UpstreamWithoutCRDs(fsys fs.FS) ([]*unstructured.Unstructured, error) {
	return upstream(fsys, "CustomResourceDefinition")
}

func upstream(fsys fs.FS, skipKind string) ([]*unstructured.Unstructured, error) {
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
		objs, err := parseYAML(name, b, skipKind)
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
	if err := pinCSIImages(fsys, out); err != nil {
		return nil, err
	}
	return out, nil
}

// pinCSIImages writes the CSI images into the operator's settings
// ConfigMap. Rook v1.18 runs the ceph-csi-operator, whose driver pods take
// their images from an image-set ConfigMap the Rook operator creates at run
// time from ROOK_CSI_*_IMAGE settings, defaulting to values compiled into the
// operator (pkg/operator/ceph/csi/spec.go, read by csi.go's getImage).
// Upstream's operator.yaml carries those defaults commented out; setting
// them explicitly changes nothing for Rook and makes every image the
// cluster pulls visible in the rendered objects (for the registry mirror).
// A setting upstream already gives is kept.
func pinCSIImages(fsys fs.FS, objs []*unstructured.Unstructured) error {
	op, err := fs.ReadFile(fsys, "operator.yaml")
	if err != nil {
		return fmt.Errorf("read Rook operator.yaml: %w (run `make bundles`)", err)
	}
	list, err := fs.ReadFile(fsys, ImagesFile)
	if err != nil {
		return fmt.Errorf("read Rook %s: %w (run `make bundles`)", ImagesFile, err)
	}
	csi, err := CSIImages(op, list)
	if err != nil {
		return err
	}
	for _, o := range objs {
		if o.GetKind() != "ConfigMap" || o.GetAPIVersion() != "v1" || o.GetName() != OperatorConfig || o.GetNamespace() != Namespace {
			continue
		}
		data, _, err := unstructured.NestedStringMap(o.Object, "data")
		if err != nil {
			return fmt.Errorf("rook: ConfigMap %s: %w", OperatorConfig, err)
		}
		if data == nil {
			data = map[string]string{}
		}
		for _, k := range slices.Sorted(maps.Keys(csi)) {
			if _, set := data[k]; !set {
				data[k] = csi[k]
			}
		}
		return unstructured.SetNestedStringMap(o.Object, data, "data")
	}
	return fmt.Errorf("rook: operator.yaml holds no ConfigMap %s/%s to pin the CSI images in", Namespace, OperatorConfig)
}

// csiImageSetting is a commented-out CSI image setting of operator.yaml:
//
//	# ROOK_CSI_CEPH_IMAGE: "quay.io/cephcsi/cephcsi:v3.15.0"
var csiImageSetting = regexp.MustCompile(`^\s*#\s*(ROOK_CSI[A-Z_]*_IMAGE)\s*:\s*"([^"]+)"\s*$`)

// CSIImages returns the CSI image settings (ROOK_CSI_CEPH_IMAGE,
// ROOK_CSI_REGISTRAR_IMAGE, ..., ROOK_CSIADDONS_IMAGE) that upstream's
// operator.yaml documents as the defaults, each checked to be in upstream's
// images.txt.
func CSIImages(operatorYAML, imagesTxt []byte) (map[string]string, error) {
	listed := map[string]bool{}
	for _, f := range strings.Fields(string(imagesTxt)) {
		listed[f] = true
	}
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(operatorYAML))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		m := csiImageSetting.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		if prev, dup := out[m[1]]; dup && prev != m[2] {
			return nil, fmt.Errorf("rook: operator.yaml gives %s twice (%s, %s)", m[1], prev, m[2])
		}
		if !listed[m[2]] {
			return nil, fmt.Errorf("rook: operator.yaml's %s is %s, which %s does not list", m[1], m[2], ImagesFile)
		}
		out[m[1]] = m[2]
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("rook: read operator.yaml: %w", err)
	}
	if len(out) == 0 {
		return nil, errors.New("rook: operator.yaml documents no ROOK_CSI_*_IMAGE setting: the CSI images cannot be pinned (has upstream changed its format?)")
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
