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

	"github.com/dotfile/rackboot/bundles/appdb"
	"github.com/dotfile/rackboot/bundles/cnpg"
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

	// Engine is the apps' database: profiles.EngineCockroachDB ("" too)
	// or profiles.EnginePostgres (CloudNativePG).
	Engine string
	// Apps get a database, a user and a Secret <app>-database.
	Apps []App
	// Postgres is the CloudNativePG Cluster's inputs (engine postgres).
	Postgres PostgresParams
	// PostgresCertsDir keeps the PostgreSQL server's CA and certificate;
	// PasswordsDir the apps' passwords (both created on first use, never
	// regenerated).
	PostgresCertsDir string
	PasswordsDir     string
	// CNPGManifests is the folder of CloudNativePG's materialized release
	// manifest; nil means the one embedded in the binary.
	CNPGManifests fs.FS

	// placeholders renders Secrets with placeholder certificates and
	// passwords, making and reading none (ListImages only: such objects
	// never leave this package).
	placeholders bool
}

// ListImages is the images the bundles for p run (Images of every object
// Render would make). Images do not depend on certificates or passwords,
// so none are made or read: the objects are rendered with placeholders in
// their Secrets and dropped, and p's directories are not used. Making the
// three RSA keys of CockroachDB's certificates only to drop them took
// ~0.7 s of every `serve` start on a 2-core machine (BENCHMARKS.md, P6).
func ListImages(p Params) ([]string, error) {
	p.placeholders = true
	bs, err := Render(p)
	if err != nil {
		return nil, err
	}
	var objs []*unstructured.Unstructured
	for _, b := range bs {
		objs = append(objs, b.Objects...)
	}
	return Images(objs)
}

// placeholderPEM fills a certificate or key field when placeholders is
// set; it is no PEM, so nothing could mistake it for a key.
var placeholderPEM = []byte("placeholder: rendered only to list images")

// App is one app of the rack's database section.
type App = appdb.App

// PostgresParams are the CloudNativePG Cluster's inputs.
type PostgresParams = cnpg.Params

// Engines of Params.Engine (the rack file's database.engine).
const (
	EngineCockroachDB = "cockroachdb"
	EnginePostgres    = "postgres"
)

// Names of the bundles, in apply order.
const (
	RookBundle      = "rook-ceph"
	CockroachBundle = "cockroachdb"
	CNPGBundle      = "cloudnative-pg"
	PostgresBundle  = "postgres"
)

// Render returns the platform's bundles in apply order: Rook-Ceph (the
// upstream operator part, then the generated cluster part), then the apps'
// database: CockroachDB (with the apps' SQL Job), or, with engine postgres,
// CloudNativePG's operator and the PostgreSQL Cluster with the apps'
// databases.
// The output is deterministic for the same inputs and certificates.
func Render(p Params) ([]Bundle, error) {
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
	upstreamOf := rook.Upstream
	if p.placeholders { // listing images: CRDs hold none
		upstreamOf = rook.UpstreamWithoutCRDs
	}
	upstream, err := upstreamOf(manifests)
	if err != nil {
		return nil, fmt.Errorf("render Rook-Ceph bundle: %w", err)
	}
	cluster, err := rook.Cluster(p.Rook)
	if err != nil {
		return nil, fmt.Errorf("render Rook-Ceph bundle: %w", err)
	}
	// The generated namespace (with its pod-security labels) comes first.
	rookObjs := append(append(cluster[:1:1], upstream...), cluster[1:]...)

	rookBundle := Bundle{
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
	}
	var db []Bundle
	switch p.Engine {
	case EngineCockroachDB, "":
		b, err := renderCockroach(p, now)
		if err != nil {
			return nil, err
		}
		db = []Bundle{b}
	case EnginePostgres:
		if db, err = renderPostgres(p, now); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("render bundles: database engine %q is not known: write %s or %s", p.Engine, EngineCockroachDB, EnginePostgres)
	}
	out := append([]Bundle{rookBundle}, db...)
	if err := checkObjects(out); err != nil {
		return nil, err
	}
	return out, nil
}

// passwords loads or makes the apps' passwords.
func passwords(p Params) (map[string]string, error) {
	if len(p.Apps) == 0 {
		return map[string]string{}, nil
	}
	if p.placeholders {
		pw := map[string]string{}
		for _, a := range p.Apps {
			pw[a.Name] = string(placeholderPEM)
		}
		return pw, nil
	}
	if p.PasswordsDir == "" {
		return nil, errors.New("render bundles: apps but no passwords directory")
	}
	names := make([]string, len(p.Apps))
	for i, a := range p.Apps {
		names[i] = a.Name
	}
	return appdb.LoadOrCreatePasswords(p.PasswordsDir, names)
}

// renderCockroach is the CockroachDB bundle, with the apps' SQL Job.
func renderCockroach(p Params, now func() time.Time) (Bundle, error) {
	cp := p.Cockroach.WithDefaults()
	if cp.Replicas < 1 {
		return Bundle{}, errors.New("render CockroachDB bundle: no schedulable nodes")
	}
	certs := &cockroach.Certs{CACert: placeholderPEM, NodeCert: placeholderPEM, NodeKey: placeholderPEM, RootCert: placeholderPEM, RootKey: placeholderPEM}
	if !p.placeholders {
		if p.CertsDir == "" {
			return Bundle{}, errors.New("render CockroachDB bundle: no certificates directory")
		}
		var err error
		if certs, err = cockroach.LoadOrCreateCerts(p.CertsDir, cp.Replicas, cp.Namespace, now); err != nil {
			return Bundle{}, fmt.Errorf("render CockroachDB bundle: %w", err)
		}
	}
	crdbObjs, err := cockroach.Objects(cp, certs)
	if err != nil {
		return Bundle{}, fmt.Errorf("render CockroachDB bundle: %w", err)
	}
	gates := []Gate{
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
	}
	pw, err := passwords(p)
	if err != nil {
		return Bundle{}, fmt.Errorf("render CockroachDB bundle: %w", err)
	}
	apps, err := appdb.CockroachObjects(p.Apps, pw, cp, certs.CACert)
	if err != nil {
		return Bundle{}, fmt.Errorf("render CockroachDB bundle: %w", err)
	}
	if len(apps) > 0 {
		job := appdb.CockroachJobName(p.Apps)
		gates = append(gates, Gate{
			Name:      fmt.Sprintf("Job %s/%s (the apps' databases and users) succeeded", cp.Namespace, job),
			GVR:       schema.GroupVersionResource{Group: "batch", Version: "v1", Resource: "jobs"},
			Namespace: cp.Namespace, Object: job,
			Ready: cockroach.JobSucceeded,
		})
	}
	return Bundle{Name: CockroachBundle, Objects: append(crdbObjs, apps...), Gates: gates}, nil
}

// renderPostgres is CloudNativePG's operator bundle (gated on the operator
// being available: its webhooks must answer before a Cluster is applied)
// and the PostgreSQL bundle: the Cluster, its TLS Secrets, the apps' roles,
// databases and Secrets.
func renderPostgres(p Params, now func() time.Time) ([]Bundle, error) {
	manifests := p.CNPGManifests
	if manifests == nil {
		var err error
		if manifests, err = cnpg.Embedded(); err != nil {
			return nil, fmt.Errorf("render CloudNativePG bundle: %w", err)
		}
	}
	operator, err := cnpg.Upstream(manifests)
	if err != nil {
		return nil, fmt.Errorf("render CloudNativePG bundle: %w", err)
	}
	pp := p.Postgres.WithDefaults()
	if pp.Instances() < 1 {
		return nil, errors.New("render PostgreSQL bundle: no schedulable nodes")
	}
	certs := &cnpg.Certs{CACert: placeholderPEM, CAKey: placeholderPEM, ServerCert: placeholderPEM, ServerKey: placeholderPEM}
	if !p.placeholders {
		if p.PostgresCertsDir == "" {
			return nil, errors.New("render PostgreSQL bundle: no certificates directory")
		}
		if certs, err = cnpg.LoadOrCreateCerts(p.PostgresCertsDir, cnpg.DNSNames(pp.Namespace), now); err != nil {
			return nil, fmt.Errorf("render PostgreSQL bundle: %w", err)
		}
	}
	pw, err := passwords(p)
	if err != nil {
		return nil, fmt.Errorf("render PostgreSQL bundle: %w", err)
	}
	apps, err := appdb.PostgresObjects(p.Apps, pw, pp.Namespace, certs.CACert)
	if err != nil {
		return nil, fmt.Errorf("render PostgreSQL bundle: %w", err)
	}
	pp.Roles, pp.HBA = apps.Roles, apps.HBA
	cluster, err := cnpg.Objects(pp, certs)
	if err != nil {
		return nil, fmt.Errorf("render PostgreSQL bundle: %w", err)
	}
	clusterGVR := schema.GroupVersionResource{Group: "postgresql.cnpg.io", Version: "v1", Resource: "clusters"}
	gates := []Gate{
		{
			Name: fmt.Sprintf("Cluster %s/%s has all %d instances ready", pp.Namespace, cnpg.ClusterName, pp.Instances()),
			GVR:  clusterGVR, Namespace: pp.Namespace, Object: cnpg.ClusterName,
			Ready: cnpg.InstancesReady,
		},
		{
			Name: fmt.Sprintf("Cluster %s/%s has a healthy primary", pp.Namespace, cnpg.ClusterName),
			GVR:  clusterGVR, Namespace: pp.Namespace, Object: cnpg.ClusterName,
			Ready: cnpg.HasPrimary,
		},
	}
	for _, a := range p.Apps {
		gates = append(gates, Gate{
			Name:      fmt.Sprintf("Database %s/%s (app %s) is created", pp.Namespace, appdb.DatabaseObject(a.Name), a.Name),
			GVR:       schema.GroupVersionResource{Group: "postgresql.cnpg.io", Version: "v1", Resource: "databases"},
			Namespace: pp.Namespace, Object: appdb.DatabaseObject(a.Name),
			Ready: cnpg.DatabaseApplied,
		})
	}
	return []Bundle{
		{
			Name:    CNPGBundle,
			Objects: operator,
			Gates: []Gate{{
				Name:      fmt.Sprintf("Deployment %s/%s is available", cnpg.OperatorNamespace, cnpg.OperatorDeployment),
				GVR:       schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"},
				Namespace: cnpg.OperatorNamespace, Object: cnpg.OperatorDeployment,
				Ready: cnpg.DeploymentAvailable,
			}},
		},
		{Name: PostgresBundle, Objects: append(cluster, apps.Objects...), Gates: gates},
	}, nil
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
