// Package cockroach is the CockroachDB bundle, written by rackboot with
// client-go types: a secure (TLS-only) StatefulSet with certificates rackboot
// issues and keeps in its state directory, services, a disruption budget and
// a one-shot init Job.
//
// It imports nothing of rackboot's bundles package: bundles/ turns its
// objects and readiness checks into a Bundle with gates.
package cockroach

import (
	"errors"
	"fmt"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Names and defaults.
const (
	DefaultNamespace    = "cockroachdb"
	StatefulSet         = "cockroachdb"
	HeadlessService     = "cockroachdb"
	PublicService       = "cockroachdb-public"
	InitJob             = "cockroachdb-init"
	NodeSecret          = "cockroachdb-node"
	RootSecret          = "cockroachdb-root"
	Image               = "docker.io/cockroachdb/cockroach:v25.3.2"
	DefaultStorageClass = "ceph-block"
	DefaultStorageSize  = "10Gi"
	DefaultMemory       = "2Gi"
	DefaultCPU          = "1"
	// MaxReplicas is the replica count once there are three schedulable nodes.
	MaxReplicas = 3
	GRPCPort    = 26257
	HTTPPort    = 8080

	certsDir = "/cockroach/cockroach-certs"
	dataDir  = "/cockroach/cockroach-data"
	// The pods run as the image's non-root user.
	uid = 1000
)

// Params are the bundle's inputs.
type Params struct {
	// Nodes are the schedulable node names; replicas = min(3, len(Nodes)).
	Nodes []string
	// Replicas overrides the count; when it exceeds len(Nodes) the per-node
	// anti-affinity becomes preferred instead of required.
	Replicas int
	// Namespace defaults to cockroachdb.
	Namespace string
	// Image defaults to the pinned Image.
	Image string
	// StorageClass and StorageSize of each replica's volume (ceph-block, 10Gi).
	StorageClass string
	StorageSize  string
	// Memory and CPU of each replica (requests = limits); cockroach's cache
	// and SQL memory are each a quarter of Memory.
	Memory string
	CPU    string
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
	def(&p.Memory, DefaultMemory)
	def(&p.CPU, DefaultCPU)
	if p.Replicas == 0 {
		p.Replicas = min(MaxReplicas, len(p.Nodes))
	}
	return p
}

// ReplicaCount is the number of replicas p asks for.
func (p Params) ReplicaCount() int { return p.WithDefaults().Replicas }

// Objects renders the bundle with the given certificates, in apply order.
func Objects(p Params, certs *Certs) ([]*unstructured.Unstructured, error) {
	p = p.WithDefaults()
	if p.Replicas < 1 {
		return nil, errors.New("cockroach: no schedulable nodes")
	}
	if certs == nil {
		return nil, errors.New("cockroach: no certificates")
	}
	storage, err := resource.ParseQuantity(p.StorageSize)
	if err != nil {
		return nil, fmt.Errorf("cockroach: storage size %q: %w", p.StorageSize, err)
	}
	mem, err := resource.ParseQuantity(p.Memory)
	if err != nil {
		return nil, fmt.Errorf("cockroach: memory %q: %w", p.Memory, err)
	}
	cpu, err := resource.ParseQuantity(p.CPU)
	if err != nil {
		return nil, fmt.Errorf("cockroach: cpu %q: %w", p.CPU, err)
	}
	ns := p.Namespace
	labels := map[string]string{"app.kubernetes.io/name": "cockroachdb", "app.kubernetes.io/managed-by": "rackboot"}
	selector := map[string]string{"app.kubernetes.io/name": "cockroachdb", "app.kubernetes.io/component": "database"}
	podLabels := merge(labels, selector)
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels}
	}
	ports := []corev1.ServicePort{
		{Name: "grpc", Port: GRPCPort, TargetPort: intstr.FromString("grpc")},
		{Name: "http", Port: HTTPPort, TargetPort: intstr.FromString("http")},
	}

	namespace := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}
	sa := &corev1.ServiceAccount{ObjectMeta: meta(StatefulSet), AutomountServiceAccountToken: ptr(false)}
	nodeSecret := &corev1.Secret{ObjectMeta: meta(NodeSecret), Type: corev1.SecretTypeOpaque, Data: map[string][]byte{
		CACertFile: certs.CACert, NodeCertFile: certs.NodeCert, NodeKeyFile: certs.NodeKey,
	}}
	rootSecret := &corev1.Secret{ObjectMeta: meta(RootSecret), Type: corev1.SecretTypeOpaque, Data: map[string][]byte{
		CACertFile: certs.CACert, RootCertFile: certs.RootCert, RootKeyFile: certs.RootKey,
	}}
	headless := &corev1.Service{ObjectMeta: meta(HeadlessService), Spec: corev1.ServiceSpec{
		ClusterIP:                corev1.ClusterIPNone,
		PublishNotReadyAddresses: true,
		Selector:                 selector,
		Ports:                    ports,
	}}
	public := &corev1.Service{ObjectMeta: meta(PublicService), Spec: corev1.ServiceSpec{
		Type:     corev1.ServiceTypeClusterIP,
		Selector: selector,
		Ports:    ports,
	}}
	pdb := &policyv1.PodDisruptionBudget{ObjectMeta: meta(StatefulSet + "-budget"), Spec: policyv1.PodDisruptionBudgetSpec{
		Selector:       &metav1.LabelSelector{MatchLabels: selector},
		MaxUnavailable: ptr(intstr.FromInt32(1)),
	}}

	resources := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceMemory: mem, corev1.ResourceCPU: cpu},
		Limits:   corev1.ResourceList{corev1.ResourceMemory: mem, corev1.ResourceCPU: cpu},
	}
	sts := &appsv1.StatefulSet{ObjectMeta: meta(StatefulSet), Spec: appsv1.StatefulSetSpec{
		ServiceName:         HeadlessService,
		Replicas:            ptr(int32(p.Replicas)),
		Selector:            &metav1.LabelSelector{MatchLabels: selector},
		PodManagementPolicy: appsv1.ParallelPodManagement,
		UpdateStrategy:      appsv1.StatefulSetUpdateStrategy{Type: appsv1.RollingUpdateStatefulSetStrategyType},
		Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: podLabels},
			Spec: corev1.PodSpec{
				ServiceAccountName:            StatefulSet,
				AutomountServiceAccountToken:  ptr(false),
				TerminationGracePeriodSeconds: ptr(int64(300)),
				SecurityContext:               podSecurity(),
				Affinity:                      antiAffinity(selector, p.Replicas > len(p.Nodes)),
				InitContainers: []corev1.Container{{
					Name:            "copy-certs",
					Image:           p.Image,
					Command:         []string{"/bin/bash", "-ec", copyCerts("/cockroach/certs-secret", certsDir)},
					SecurityContext: containerSecurity(),
					VolumeMounts: []corev1.VolumeMount{
						{Name: "certs", MountPath: certsDir},
						{Name: "certs-secret", MountPath: "/cockroach/certs-secret", ReadOnly: true},
					},
				}},
				Containers: []corev1.Container{{
					Name:    "cockroachdb",
					Image:   p.Image,
					Command: []string{"/bin/bash", "-ec", startCommand(p.Replicas)},
					Ports: []corev1.ContainerPort{
						{Name: "grpc", ContainerPort: GRPCPort, Protocol: corev1.ProtocolTCP},
						{Name: "http", ContainerPort: HTTPPort, Protocol: corev1.ProtocolTCP},
					},
					Env: []corev1.EnvVar{{Name: "GOMAXPROCS", ValueFrom: &corev1.EnvVarSource{
						ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu", Divisor: resource.MustParse("1")},
					}}},
					Resources: resources,
					ReadinessProbe: &corev1.Probe{
						ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: "/health?ready=1", Port: intstr.FromString("http"), Scheme: corev1.URISchemeHTTPS,
						}},
						InitialDelaySeconds: 10, PeriodSeconds: 5, FailureThreshold: 2,
					},
					LivenessProbe: &corev1.Probe{
						ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
							Path: "/health", Port: intstr.FromString("http"), Scheme: corev1.URISchemeHTTPS,
						}},
						InitialDelaySeconds: 30, PeriodSeconds: 5,
					},
					SecurityContext: containerSecurity(),
					VolumeMounts: []corev1.VolumeMount{
						{Name: "datadir", MountPath: dataDir},
						{Name: "certs", MountPath: certsDir},
					},
				}},
				Volumes: []corev1.Volume{
					{Name: "certs", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
					{Name: "certs-secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
						SecretName: NodeSecret, DefaultMode: ptr(int32(0o440)),
					}}},
				},
			},
		},
		VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "PersistentVolumeClaim"},
			ObjectMeta: metav1.ObjectMeta{Name: "datadir", Labels: selector},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				StorageClassName: ptr(p.StorageClass),
				Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: storage}},
			},
		}},
	}}

	job := &batchv1.Job{ObjectMeta: meta(InitJob), Spec: batchv1.JobSpec{
		BackoffLimit: ptr(int32(20)),
		Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app.kubernetes.io/name": "cockroachdb", "app.kubernetes.io/component": "init"}},
			Spec: corev1.PodSpec{
				RestartPolicy:                corev1.RestartPolicyOnFailure,
				ServiceAccountName:           StatefulSet,
				AutomountServiceAccountToken: ptr(false),
				SecurityContext:              podSecurity(),
				Containers: []corev1.Container{{
					Name:            "init",
					Image:           p.Image,
					Command:         []string{"/bin/bash", "-ec", copyCerts("/cockroach/certs-secret", certsDir) + "\n" + InitScript(StatefulSet+"-0."+HeadlessService)},
					SecurityContext: containerSecurity(),
					VolumeMounts: []corev1.VolumeMount{
						{Name: "certs", MountPath: certsDir},
						{Name: "certs-secret", MountPath: "/cockroach/certs-secret", ReadOnly: true},
					},
				}},
				Volumes: []corev1.Volume{
					{Name: "certs", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
					{Name: "certs-secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
						SecretName: RootSecret, DefaultMode: ptr(int32(0o440)),
					}}},
				},
			},
		},
	}}

	typed := []runtime.Object{namespace, sa, nodeSecret, rootSecret, headless, public, pdb, sts, job}
	out := make([]*unstructured.Unstructured, 0, len(typed))
	for _, o := range typed {
		u, err := ToUnstructured(o)
		if err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// startCommand runs cockroach in secure mode, joining the first three pods,
// advertising the pod's stable DNS name; cache and SQL memory are fractions
// of the container's memory limit (cockroach reads its cgroup limit).
func startCommand(replicas int) string {
	join := make([]string, min(MaxReplicas, replicas))
	for i := range join {
		join[i] = fmt.Sprintf("%s-%d.%s", StatefulSet, i, HeadlessService)
	}
	return strings.Join([]string{
		"exec /cockroach/cockroach start",
		"--certs-dir=" + certsDir,
		"--store=" + dataDir,
		`--advertise-host="$(hostname -f)"`,
		"--http-addr=0.0.0.0",
		"--join=" + strings.Join(join, ","),
		"--cache=.25",
		"--max-sql-memory=.25",
	}, " ")
}

// copyCerts copies the Secret's files into the emptyDir cockroach reads,
// with keys 0400: cockroach refuses keys readable by group or others, and a
// Secret volume under fsGroup is group-readable.
func copyCerts(from, to string) string {
	return fmt.Sprintf("cp -f %s/* %s/ && chmod 0400 %s/*.key", from, to, to)
}

// InitScript is the init Job's shell snippet: `cockroach init` against host,
// where "cluster has already been initialized" counts as success, so the Job
// is idempotent.
func InitScript(host string) string {
	return fmt.Sprintf(`out=$(/cockroach/cockroach init --certs-dir=%s --host=%s 2>&1) && { echo "$out"; exit 0; }
echo "$out"
case "$out" in *"cluster has already been initialized"*) exit 0 ;; esac
exit 1`, certsDir, host)
}

func antiAffinity(selector map[string]string, preferred bool) *corev1.Affinity {
	term := corev1.PodAffinityTerm{
		LabelSelector: &metav1.LabelSelector{MatchLabels: selector},
		TopologyKey:   "kubernetes.io/hostname",
	}
	if preferred {
		return &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{Weight: 100, PodAffinityTerm: term}},
		}}
	}
	return &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{term},
	}}
}

// podSecurity and containerSecurity meet the "restricted" Pod Security
// Standard (stricter than Talos's default "baseline").
func podSecurity() *corev1.PodSecurityContext {
	return &corev1.PodSecurityContext{
		RunAsUser:      ptr(int64(uid)),
		RunAsGroup:     ptr(int64(uid)),
		FSGroup:        ptr(int64(uid)),
		RunAsNonRoot:   ptr(true),
		SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

func containerSecurity() *corev1.SecurityContext {
	return &corev1.SecurityContext{
		AllowPrivilegeEscalation: ptr(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
	}
}

// ToUnstructured converts a typed object (its GroupVersionKind is taken from
// client-go's scheme when TypeMeta is empty) and drops the empty
// creationTimestamp and status fields the conversion adds (the top-level
// status always: it is the server's to write).
func ToUnstructured(o runtime.Object) (*unstructured.Unstructured, error) {
	gvk, err := gvkOf(o)
	if err != nil {
		return nil, err
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil {
		return nil, fmt.Errorf("convert %s: %w", gvk.Kind, err)
	}
	// Status is the server's to write: never applied.
	delete(m, "status")
	prune(m)
	u := &unstructured.Unstructured{Object: m}
	u.SetGroupVersionKind(gvk)
	return u, nil
}

// prune removes null creationTimestamps and empty status maps at any depth.
func prune(v any) {
	switch t := v.(type) {
	case map[string]any:
		for k, c := range t {
			if k == "creationTimestamp" && c == nil {
				delete(t, k)
				continue
			}
			if k == "status" {
				if sm, ok := c.(map[string]any); ok && len(sm) == 0 {
					delete(t, k)
					continue
				}
			}
			prune(c)
		}
	case []any:
		for _, c := range t {
			prune(c)
		}
	}
}

func merge(a, b map[string]string) map[string]string {
	out := make(map[string]string, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// StatefulSetReady says whether a StatefulSet has all its replicas ready;
// why names the counts and where to look.
func StatefulSetReady(o *unstructured.Unstructured) (bool, string) {
	want, _, _ := unstructured.NestedInt64(o.Object, "spec", "replicas")
	ready, _, _ := unstructured.NestedInt64(o.Object, "status", "readyReplicas")
	if want > 0 && ready == want {
		return true, ""
	}
	return false, fmt.Sprintf("%d/%d cockroachdb pods ready; look at `kubectl -n %s get pods,pvc` and `kubectl -n %s logs %s-0`",
		ready, want, o.GetNamespace(), o.GetNamespace(), o.GetName())
}

// JobSucceeded says whether a Job has succeeded; why names its failures and
// where to look.
func JobSucceeded(o *unstructured.Unstructured) (bool, string) {
	ok, _, _ := unstructured.NestedInt64(o.Object, "status", "succeeded")
	if ok > 0 {
		return true, ""
	}
	failed, _, _ := unstructured.NestedInt64(o.Object, "status", "failed")
	return false, fmt.Sprintf("job %s has not succeeded (%d failed attempts); look at `kubectl -n %s logs job/%s`",
		o.GetName(), failed, o.GetNamespace(), o.GetName())
}

// ConnectionString is the SQL URL for root through the public service (or
// host:port when given, e.g. "localhost:26257" through a port-forward; the
// node certificate covers both), with the certificate paths of certsDir.
func ConnectionString(host, certsDir string) string {
	if host == "" {
		host = fmt.Sprintf("%s.%s:%d", PublicService, DefaultNamespace, GRPCPort)
	}
	path := func(f string) string { return queryEscape(strings.TrimRight(certsDir, "/") + "/" + f) }
	return fmt.Sprintf("postgresql://root@%s/defaultdb?sslmode=verify-full&sslrootcert=%s&sslcert=%s&sslkey=%s",
		host, path(CACertFile), path(RootCertFile), path(RootKeyFile))
}

// queryEscape percent-encodes a query value but keeps '/' readable.
func queryEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~/", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}
