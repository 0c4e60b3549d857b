// Package cnpg is the PostgreSQL bundle: CloudNativePG's operator, embedded
// from the pinned upstream release manifest (see README.md), and a Cluster
// generated from parameters (instances, storage, TLS, managed roles).
//
// It imports nothing of rackboot's bundles package: bundles/ turns its
// objects and readiness checks into Bundles with gates.
package cnpg

import (
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/dotfile/rackboot/bundles/rook"
)

// The embed pattern must match something even when upstream/ is absent (a
// fresh clone), so it takes the whole directory.
//
//go:embed *
var content embed.FS

// The upstream source and the images.
const (
	Module        = "github.com/cloudnative-pg/cloudnative-pg"
	ModuleVersion = "v1.30.0"
	ReleaseFile   = "cnpg-1.30.0.yaml"
	// OperatorImage is the operator image the release manifest pins
	// (releases/cnpg-1.30.0.yaml, Deployment cnpg-controller-manager).
	OperatorImage = "ghcr.io/cloudnative-pg/cloudnative-pg:1.30.0"
	// DefaultImageTag is the PostgreSQL image CloudNativePG v1.30.0 runs
	// when a Cluster names none (pkg/versions/versions.go,
	// DefaultImageName): a tag only, which the project rebuilds weekly.
	DefaultImageTag = "ghcr.io/cloudnative-pg/postgresql:18.4-system-trixie"
	// Image is that PostgreSQL 18.4 "system" trixie image pinned by digest:
	// the entry for major 18 of CloudNativePG's own image catalog
	// (github.com/cloudnative-pg/artifacts, image-catalogs/
	// catalog-system-trixie.yaml at commit f02378072682, 2026-06-22, the
	// catalog current when v1.30.0 was tagged on 2026-06-29). The release
	// itself pins no digest.
	Image = "ghcr.io/cloudnative-pg/postgresql:18.4-202606221003-system-trixie@sha256:918ed523d6fa5572492afed43e1503bf6fba0b96f424f1a946ff7c4b67b152ce"
)

// Names and defaults of the generated part.
const (
	OperatorNamespace  = "cnpg-system"
	OperatorDeployment = "cnpg-controller-manager"
	DefaultNamespace   = "postgres"
	ClusterName        = "postgres"
	// ServerCASecret and ServerTLSSecret hold rackboot's server CA and
	// certificate (CloudNativePG's "user-provided certificates" mode, so
	// that the apps' Secrets can carry the CA before the cluster exists).
	ServerCASecret      = ClusterName + "-server-ca"
	ServerTLSSecret     = ClusterName + "-server-tls"
	DefaultStorageClass = "ceph-block"
	DefaultStorageSize  = "10Gi"
	MaxInstances        = 3
	Port                = 5432
)

// ServiceRW is the Service CloudNativePG makes for the primary
// (<cluster>-rw); apps connect to it.
func ServiceRW(cluster string) string { return cluster + "-rw" }

// ErrNoManifests says the build carries no materialized CloudNativePG manifest.
var ErrNoManifests = errors.New("no CloudNativePG manifest in this build: run `make bundles` (materialized from github.com/cloudnative-pg/cloudnative-pg v1.30.0)")

// Embedded returns the embedded upstream folder, or ErrNoManifests.
func Embedded() (fs.FS, error) {
	sub, err := fs.Sub(content, "upstream")
	if err != nil {
		return nil, fmt.Errorf("open embedded CloudNativePG manifest: %w", err)
	}
	if _, err := fs.Stat(sub, "SOURCE"); err != nil {
		return nil, ErrNoManifests
	}
	return sub, nil
}

// Upstream parses the operator from fsys (Embedded(), or a folder holding
// the materialized files), in file order, after checking that it comes from
// the pinned version and runs the pinned operator image.
func Upstream(fsys fs.FS) ([]*unstructured.Unstructured, error) {
	src, err := fs.ReadFile(fsys, "SOURCE")
	if err != nil {
		return nil, fmt.Errorf("read CloudNativePG SOURCE: %w (run `make bundles`)", err)
	}
	if !strings.Contains(string(src), "module: "+Module+"\n") || !strings.Contains(string(src), "version: "+ModuleVersion+"\n") {
		return nil, fmt.Errorf("cnpg: manifest is not from %s %s (SOURCE says %q): run `make bundles`", Module, ModuleVersion, strings.TrimSpace(string(src)))
	}
	b, err := fs.ReadFile(fsys, ReleaseFile)
	if err != nil {
		return nil, fmt.Errorf("read CloudNativePG %s: %w (run `make bundles`)", ReleaseFile, err)
	}
	objs, err := rook.ParseYAML(ReleaseFile, b)
	if err != nil {
		return nil, fmt.Errorf("parse CloudNativePG manifest: %w", err)
	}
	found := false
	for _, o := range objs {
		if o.GetKind() != "Deployment" || o.GetName() != OperatorDeployment {
			continue
		}
		cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range cs {
			if m, ok := c.(map[string]any); ok && m["image"] == OperatorImage {
				found = true
			}
		}
	}
	if !found {
		return nil, fmt.Errorf("cnpg: %s has no Deployment %s running %s", ReleaseFile, OperatorDeployment, OperatorImage)
	}
	return objs, nil
}

// IsWebhook says whether o is one of the operator's admission webhook
// configurations (they call the operator, so with no operator running every
// request they match is refused).
func IsWebhook(o *unstructured.Unstructured) bool {
	return o.GetAPIVersion() == "admissionregistration.k8s.io/v1" &&
		(o.GetKind() == "MutatingWebhookConfiguration" || o.GetKind() == "ValidatingWebhookConfiguration")
}

// Role is one managed login role of the Cluster (spec.managed.roles).
type Role struct {
	Name string
	// PasswordSecret is a kubernetes.io/basic-auth Secret in the Cluster's
	// namespace holding username and password.
	PasswordSecret string
	Comment        string
}

// Params are the Cluster's inputs.
type Params struct {
	// Nodes are the schedulable node names; instances = min(3, len(Nodes)).
	Nodes        []string
	Namespace    string
	Image        string
	StorageClass string
	StorageSize  string
	// Roles are managed login roles; HBA are pg_hba.conf lines placed
	// before CloudNativePG's default rules.
	Roles []Role
	HBA   []string
}

// WithDefaults fills the empty fields.
func (p Params) WithDefaults() Params {
	def := func(s *string, d string) {
		if *s == "" {
			*s = d
		}
	}
	def(&p.Namespace, DefaultNamespace)
	def(&p.Image, Image)
	def(&p.StorageClass, DefaultStorageClass)
	def(&p.StorageSize, DefaultStorageSize)
	return p
}

// Instances is min(3, nodes).
func (p Params) Instances() int { return min(MaxInstances, len(p.Nodes)) }

// DNSNames are the names the server certificate must carry: the rw, ro and
// r Services CloudNativePG makes, short and qualified.
func DNSNames(ns string) []string {
	var out []string
	for _, s := range []string{"-rw", "-ro", "-r"} {
		svc := ClusterName + s
		out = append(out, svc, svc+"."+ns, svc+"."+ns+".svc", svc+"."+ns+".svc.cluster.local")
	}
	return out
}

// Host is the primary's Service as apps in other namespaces reach it.
func Host(ns string) string { return ServiceRW(ClusterName) + "." + ns + ".svc" }

// Objects renders the namespace, the server TLS Secrets and the Cluster.
func Objects(p Params, certs *Certs) ([]*unstructured.Unstructured, error) {
	p = p.WithDefaults()
	n := p.Instances()
	if n < 1 {
		return nil, errors.New("cnpg: no schedulable nodes")
	}
	if certs == nil {
		return nil, errors.New("cnpg: no server certificates")
	}
	labels := map[string]any{"app.kubernetes.io/name": "postgres", "app.kubernetes.io/managed-by": "rackboot"}
	meta := func(name string, namespaced bool, extra map[string]any) map[string]any {
		l := map[string]any{}
		for k, v := range labels {
			l[k] = v
		}
		for k, v := range extra {
			l[k] = v
		}
		m := map[string]any{"name": name, "labels": l}
		if namespaced {
			m["namespace"] = p.Namespace
		}
		return m
	}
	// cnpg.io/reload: instances reload the certificates when they change
	// (docs/src/certificates.md, "User-provided certificates mode").
	reload := map[string]any{"cnpg.io/reload": ""}
	ns := obj("v1", "Namespace", meta(p.Namespace, false, nil), nil)
	ca := obj("v1", "Secret", meta(ServerCASecret, true, reload), map[string]any{
		"type": "Opaque", "data": b64(map[string][]byte{"ca.crt": certs.CACert}),
	})
	tls := obj("v1", "Secret", meta(ServerTLSSecret, true, reload), map[string]any{
		"type": "kubernetes.io/tls", "data": b64(map[string][]byte{"tls.crt": certs.ServerCert, "tls.key": certs.ServerKey}),
	})
	roles := make([]any, 0, len(p.Roles))
	for _, r := range p.Roles {
		roles = append(roles, map[string]any{
			"name": r.Name, "ensure": "present", "login": true, "superuser": false, "createdb": false,
			"createrole": false, "inherit": true, "replication": false, "comment": r.Comment,
			"passwordSecret": map[string]any{"name": r.PasswordSecret},
		})
	}
	hba := make([]any, 0, len(p.HBA))
	for _, h := range p.HBA {
		hba = append(hba, h)
	}
	spec := map[string]any{
		"instances": int64(n),
		"imageName": p.Image,
		// No postgres superuser password Secret: apps get their own roles.
		"enableSuperuserAccess": false,
		// CloudNativePG makes the PodDisruptionBudgets itself (one for the
		// primary, one for the replicas) while enablePDB is true, its
		// default (docs/src/kubernetes_upgrade.md); said here, not left
		// to the default.
		"enablePDB": true,
		"storage":   map[string]any{"storageClass": p.StorageClass, "size": p.StorageSize},
		"affinity": map[string]any{
			"enablePodAntiAffinity": true,
			"podAntiAffinityType":   "required",
			"topologyKey":           "kubernetes.io/hostname",
		},
		"certificates": map[string]any{"serverCASecret": ServerCASecret, "serverTLSSecret": ServerTLSSecret},
		"postgresql": map[string]any{
			"parameters": map[string]any{"ssl_min_protocol_version": "TLSv1.3"},
			"pg_hba":     hba,
		},
	}
	if len(roles) > 0 {
		spec["managed"] = map[string]any{"roles": roles}
	}
	cluster := obj("postgresql.cnpg.io/v1", "Cluster", meta(ClusterName, true, nil), map[string]any{"spec": spec})
	return []*unstructured.Unstructured{ns, ca, tls, cluster}, nil
}

// b64 encodes Secret data as the API server keeps it (so a second
// server-side apply finds nothing to change).
func b64(m map[string][]byte) map[string]any {
	out := make(map[string]any, len(m))
	for k, v := range m {
		out[k] = base64.StdEncoding.EncodeToString(v)
	}
	return out
}

func obj(apiVersion, kind string, meta map[string]any, rest map[string]any) *unstructured.Unstructured {
	m := map[string]any{"apiVersion": apiVersion, "kind": kind, "metadata": meta}
	for k, v := range rest {
		m[k] = v
	}
	return &unstructured.Unstructured{Object: m}
}

// DeploymentAvailable says whether the operator Deployment has its replicas
// available (its webhooks answer then).
func DeploymentAvailable(o *unstructured.Unstructured) (bool, string) {
	want, _, _ := unstructured.NestedInt64(o.Object, "spec", "replicas")
	avail, _, _ := unstructured.NestedInt64(o.Object, "status", "availableReplicas")
	if want > 0 && avail >= want {
		return true, ""
	}
	return false, fmt.Sprintf("%d/%d operator pods available; look at `kubectl -n %s get pods` and `kubectl -n %s logs deploy/%s`",
		avail, want, o.GetNamespace(), o.GetNamespace(), o.GetName())
}

// InstancesReady says whether every instance of a Cluster is ready.
func InstancesReady(o *unstructured.Unstructured) (bool, string) {
	want, _, _ := unstructured.NestedInt64(o.Object, "spec", "instances")
	ready, _, _ := unstructured.NestedInt64(o.Object, "status", "readyInstances")
	phase, _, _ := unstructured.NestedString(o.Object, "status", "phase")
	if want > 0 && ready == want {
		return true, ""
	}
	return false, fmt.Sprintf("%d/%d PostgreSQL instances ready (phase %q); look at `kubectl -n %s get pods,pvc` and `kubectl -n %s get cluster %s -o yaml`",
		ready, want, phase, o.GetNamespace(), o.GetNamespace(), o.GetName())
}

// HasPrimary says whether a Cluster has a primary (status.currentPrimary)
// that is among its healthy instances.
func HasPrimary(o *unstructured.Unstructured) (bool, string) {
	primary, _, _ := unstructured.NestedString(o.Object, "status", "currentPrimary")
	healthy, _, _ := unstructured.NestedStringSlice(o.Object, "status", "instancesStatus", "healthy")
	if primary != "" {
		for _, h := range healthy {
			if h == primary {
				return true, ""
			}
		}
		return false, fmt.Sprintf("primary %s is not healthy; look at `kubectl -n %s logs %s`", primary, o.GetNamespace(), primary)
	}
	return false, fmt.Sprintf("no primary elected yet; look at `kubectl -n %s get cluster %s -o yaml` (status.phase)", o.GetNamespace(), o.GetName())
}

// DatabaseApplied says whether a Database resource has been applied to
// PostgreSQL (status.applied).
func DatabaseApplied(o *unstructured.Unstructured) (bool, string) {
	applied, _, _ := unstructured.NestedBool(o.Object, "status", "applied")
	if applied {
		return true, ""
	}
	msg, _, _ := unstructured.NestedString(o.Object, "status", "message")
	return false, fmt.Sprintf("database %s not created yet (%s); look at `kubectl -n %s get database %s -o yaml`", o.GetName(), msg, o.GetNamespace(), o.GetName())
}
