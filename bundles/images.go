package bundles

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/dotfile/rackboot/registry"
)

// podSpecPaths are where workload kinds hold their pod spec: Pod; Deployment,
// DaemonSet, StatefulSet, ReplicaSet, ReplicationController, Job (and other
// kinds with a pod template); CronJob.
var podSpecPaths = [][]string{
	{"spec"},
	{"spec", "template", "spec"},
	{"spec", "jobTemplate", "spec", "template", "spec"},
}

var containerLists = []string{"initContainers", "containers", "ephemeralContainers"}

// Images returns every container image the objects reference, normalized
// (registry.ParseRef: docker.io/library/x:tag for short Docker Hub names),
// sorted, each once:
//   - the image of every container, init container and ephemeral container
//     of a pod spec, in any kind that holds one where Kubernetes' workloads
//     do (spec, spec.template.spec, spec.jobTemplate.spec.template.spec);
//   - the value of every container env var whose name ends in _IMAGE (how
//     operators such as Rook take the images of the pods they create);
//   - the value of every ConfigMap key ending in _IMAGE (Rook's operator
//     settings, rook-ceph-operator-config: ROOK_CSI_CEPH_IMAGE, ...);
//   - a Rook CephCluster's spec.cephVersion.image.
//
// A container without an image, or a reference that does not parse, is an
// error naming the object. Images that an operator only knows from its own
// code, with no setting in the objects, are not found: bundles/rook pins
// Rook's CSI images in its ConfigMap for that reason.
func Images(objs []*unstructured.Unstructured) ([]string, error) {
	seen := map[string]bool{}
	add := func(o *unstructured.Unstructured, where, ref string) error {
		n, err := registry.ParseRef(ref)
		if err != nil {
			return fmt.Errorf("%s %s/%s: %s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), where, err)
		}
		seen[n.String()] = true
		return nil
	}
	for _, o := range objs {
		if o.GetKind() == "ConfigMap" && o.GetAPIVersion() == "v1" {
			data, _, err := unstructured.NestedStringMap(o.Object, "data")
			if err != nil {
				return nil, fmt.Errorf("ConfigMap %s/%s: %w", o.GetNamespace(), o.GetName(), err)
			}
			for k, v := range data {
				if isImageSetting(k) && strings.TrimSpace(v) != "" {
					if err := add(o, "data."+k, strings.TrimSpace(v)); err != nil {
						return nil, err
					}
				}
			}
			continue
		}
		if o.GetKind() == "CephCluster" && strings.HasPrefix(o.GetAPIVersion(), "ceph.rook.io/") {
			img, ok, err := unstructured.NestedString(o.Object, "spec", "cephVersion", "image")
			if err != nil || !ok || img == "" {
				return nil, fmt.Errorf("CephCluster %s/%s has no spec.cephVersion.image (%v): Rook needs one", o.GetNamespace(), o.GetName(), err)
			}
			if err := add(o, "spec.cephVersion.image", img); err != nil {
				return nil, err
			}
		}
		if o.GetKind() == "Cluster" && strings.HasPrefix(o.GetAPIVersion(), "postgresql.cnpg.io/") {
			if img, ok, _ := unstructured.NestedString(o.Object, "spec", "imageName"); ok && img != "" {
				if err := add(o, "spec.imageName", img); err != nil {
					return nil, err
				}
			}
		}
		for _, path := range podSpecPaths {
			for _, list := range containerLists {
				field := append(slices.Clone(path), list)
				cs, ok, err := unstructured.NestedSlice(o.Object, field...)
				if !ok || err != nil {
					continue
				}
				where := strings.Join(field, ".")
				for i, c := range cs {
					c, ok := c.(map[string]any)
					if !ok {
						return nil, fmt.Errorf("%s %s/%s: %s[%d] is not a container", o.GetKind(), o.GetNamespace(), o.GetName(), where, i)
					}
					img, _ := c["image"].(string)
					if img == "" {
						return nil, fmt.Errorf("%s %s/%s: %s[%d] (%v) has no image", o.GetKind(), o.GetNamespace(), o.GetName(), where, i, c["name"])
					}
					if err := add(o, fmt.Sprintf("%s[%d].image", where, i), img); err != nil {
						return nil, err
					}
					env, _ := c["env"].([]any)
					for _, e := range env {
						e, _ := e.(map[string]any)
						name, _ := e["name"].(string)
						val, _ := e["value"].(string)
						if isImageSetting(name) && strings.TrimSpace(val) != "" {
							if err := add(o, fmt.Sprintf("%s[%d].env %s", where, i, name), strings.TrimSpace(val)); err != nil {
								return nil, err
							}
						}
					}
				}
			}
		}
	}
	return slices.Sorted(maps.Keys(seen)), nil
}

// isImageSetting reports a setting name that holds an image reference by
// convention (ROOK_CSI_CEPH_IMAGE, CSI_IMAGE...).
func isImageSetting(name string) bool {
	return name == "IMAGE" || strings.HasSuffix(name, "_IMAGE")
}
