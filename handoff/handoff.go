// Package handoff holds the Kubernetes objects of rackboot running inside
// the cluster it built (`rackboot handoff`): its namespace, ServiceAccount,
// Role and RoleBinding (only what a replica does), a host-network
// Deployment of `rackboot serve --kube` on the control-plane nodes, and a
// PodDisruptionBudget; and the wait until a replica answers.
//
// Render is pure: the same Params give the same objects.
package handoff

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/dotfile/rackboot/disks"
	"github.com/dotfile/rackboot/kubestate"
	"github.com/dotfile/rackboot/ociimage"
)

// Namespace is where rackboot runs in the cluster: the namespace rackboot
// owns (its disk-zeroing Jobs run there too), labelled for Pod Security.
const Namespace = disks.ZeroNamespace

// Name is the name of the ServiceAccount, Role, RoleBinding, Deployment
// and PodDisruptionBudget.
const Name = "rackboot"

// LeaseName is the Lease whose holder answers DHCP (serve --lease-name's
// default).
const LeaseName = "rackboot-dhcp"

// StateDir is the replica's state directory: an emptyDir (the root
// filesystem is read-only; the state itself is in the namespace's
// objects).
const StateDir = "/var/lib/rackboot"

// AssetsDir is where the replica finds the asset cache and the image store
// when Params.AssetsImage is set: the assets image (package assetimage)
// mounted read-only as an image volume, given to serve as --assets-from.
const AssetsDir = "/var/lib/rackboot-assets"

// Labels of the appliance's pods; Selector selects them.
var (
	Selector = map[string]string{
		"app.kubernetes.io/name":      "rackboot",
		"app.kubernetes.io/component": "appliance",
	}
)

// Ports of `rackboot serve` (its flags' defaults) and the ones the
// Deployment declares: with hostNetwork each is also a host port, so the
// scheduler never puts a replica where they are taken.
const (
	DefaultHTTPPort = 8080
	dhcpPort        = 67
	bootServerPort  = 4011
	tftpPort        = 69
	eventsPort      = 4002
	logPort         = 4003
	registryPort    = 5000
)

// Params say what to render. Zero values take the defaults.
type Params struct {
	Namespace string // default Namespace
	// Image is rackboot's image: name:tag, best with @sha256:digest.
	// Default ociimage.ImageName("dev").
	Image    string
	Replicas int32 // default 2; one per control-plane node at most
	HTTPPort int   // default DefaultHTTPPort
	// DHCP is serve's --dhcp: proxy (default), full or off; Range is
	// --range for full.
	DHCP, Range string
	LeaseName   string // default LeaseName
	// AssetsImage is the assets image (assetimage.Name: name:tag@digest):
	// mounted read-only at AssetsDir as an image volume, and serve reads
	// its boot files and mirror images there. Empty: none (the replicas
	// serve no boot files and no images).
	AssetsImage string
}

func (p Params) withDefaults() Params {
	if p.Namespace == "" {
		p.Namespace = Namespace
	}
	if p.Image == "" {
		p.Image = ociimage.ImageName("dev")
	}
	if p.Replicas == 0 {
		p.Replicas = 2
	}
	if p.HTTPPort == 0 {
		p.HTTPPort = DefaultHTTPPort
	}
	if p.DHCP == "" {
		p.DHCP = "proxy"
	}
	if p.LeaseName == "" {
		p.LeaseName = LeaseName
	}
	return p
}

func (p Params) check() error {
	if errs := validation.IsDNS1123Label(p.Namespace); len(errs) > 0 {
		return fmt.Errorf("namespace %q: %s", p.Namespace, errs[0])
	}
	if errs := validation.IsDNS1123Subdomain(p.LeaseName); len(errs) > 0 {
		return fmt.Errorf("lease name %q: %s", p.LeaseName, errs[0])
	}
	if p.Replicas < 1 {
		return fmt.Errorf("replicas %d: write 1 or more (one per control-plane node at most)", p.Replicas)
	}
	if p.HTTPPort < 1 || p.HTTPPort > 65535 {
		return fmt.Errorf("HTTP port %d: write a port from 1 to 65535", p.HTTPPort)
	}
	if p.AssetsImage != "" && !strings.Contains(p.AssetsImage, "@sha256:") {
		return fmt.Errorf("assets image %q: it must be pinned by digest (name:tag@sha256:...), as assetimage.Name writes it: the volume is pulled IfNotPresent", p.AssetsImage)
	}
	switch p.DHCP {
	case "proxy", "off":
		if p.Range != "" {
			return fmt.Errorf("a DHCP range is for --dhcp full only (got --dhcp %s)", p.DHCP)
		}
	case "full":
		if p.Range == "" {
			return errors.New("--dhcp full needs --range A-B (the addresses to hand out)")
		}
	default:
		return fmt.Errorf("DHCP mode %q: write proxy, full or off", p.DHCP)
	}
	return nil
}

// Objects are the typed objects Render converts, in apply order.
type Objects struct {
	Namespace      *corev1.Namespace
	ServiceAccount *corev1.ServiceAccount
	Role           *rbacv1.Role
	RoleBinding    *rbacv1.RoleBinding
	Deployment     *appsv1.Deployment
	// Budget is nil with one replica: a budget of one pod that must stay
	// would block every drain of its node (a Talos upgrade).
	Budget *policyv1.PodDisruptionBudget
}

// Build returns the typed objects for p.
func Build(p Params) (Objects, error) {
	p = p.withDefaults()
	if err := p.check(); err != nil {
		return Objects{}, fmt.Errorf("handoff: %w", err)
	}
	ns := disks.ZeroNamespaceObject() // same labels: both apply it with one field manager
	ns.Name = p.Namespace
	o := Objects{
		Namespace: ns,
		ServiceAccount: &corev1.ServiceAccount{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
			ObjectMeta: meta(p, Name),
		},
		Role: &rbacv1.Role{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
			ObjectMeta: meta(p, Name),
			Rules:      Rules(p.LeaseName),
		},
		RoleBinding: &rbacv1.RoleBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
			ObjectMeta: meta(p, Name),
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: Name},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: Name, Namespace: p.Namespace}},
		},
		Deployment: deployment(p),
	}
	if p.Replicas >= 2 {
		one := intstr.FromInt32(1)
		o.Budget = &policyv1.PodDisruptionBudget{
			TypeMeta:   metav1.TypeMeta{APIVersion: "policy/v1", Kind: "PodDisruptionBudget"},
			ObjectMeta: meta(p, Name),
			Spec: policyv1.PodDisruptionBudgetSpec{
				MinAvailable: &one,
				Selector:     &metav1.LabelSelector{MatchLabels: Selector},
			},
		}
	}
	return o, nil
}

// Render returns the objects for p as unstructured objects (no status, no
// creation timestamps), ready for bundles.Apply.
func Render(p Params) ([]*unstructured.Unstructured, error) {
	o, err := Build(p)
	if err != nil {
		return nil, err
	}
	typed := []runtime.Object{o.Namespace, o.ServiceAccount, o.Role, o.RoleBinding, o.Deployment}
	if o.Budget != nil {
		typed = append(typed, o.Budget)
	}
	out := make([]*unstructured.Unstructured, 0, len(typed))
	for _, t := range typed {
		m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(t)
		if err != nil {
			return nil, fmt.Errorf("handoff: convert %T: %w", t, err)
		}
		delete(m, "status")
		unstructured.RemoveNestedField(m, "metadata", "creationTimestamp")
		unstructured.RemoveNestedField(m, "spec", "template", "metadata", "creationTimestamp")
		out = append(out, &unstructured.Unstructured{Object: m})
	}
	return out, nil
}

// Rules are the Role's rules: kubestate's (the state's ConfigMaps and
// Secrets) and the leader election's Lease (client-go's LeaseLock gets,
// creates and updates it; create cannot be limited to a name).
func Rules(lease string) []rbacv1.PolicyRule {
	return append(kubestate.Rules(),
		rbacv1.PolicyRule{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"},
			Verbs: []string{"get", "update"}, ResourceNames: []string{lease}},
		rbacv1.PolicyRule{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"},
			Verbs: []string{"create"}},
	)
}

func meta(p Params, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: p.Namespace, Labels: podLabels()}
}

// podLabels are Selector and managed-by: rackboot.
func podLabels() map[string]string {
	l := map[string]string{}
	for k, v := range Selector {
		l[k] = v
	}
	l[kubestate.LabelManagedBy] = kubestate.ManagedBy
	return l
}

// ServeArgs is the container's command line after the binary.
func ServeArgs(p Params) []string {
	p = p.withDefaults()
	args := []string{"serve", "--kube",
		"--state=" + StateDir,
		"--server-ip=$(POD_IP)", // the node's address: hostNetwork
		"--http-port=" + strconv.Itoa(p.HTTPPort),
		"--dhcp=" + p.DHCP,
		"--lease-name=" + p.LeaseName,
	}
	if p.Range != "" {
		args = append(args, "--range="+p.Range)
	}
	if p.AssetsImage != "" {
		args = append(args, "--assets-from="+AssetsDir)
	}
	return args
}

func deployment(p Params) *appsv1.Deployment {
	zero, one := intstr.FromInt32(0), intstr.FromInt32(1)
	replicas := p.Replicas
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: meta(p, Name),
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: Selector},
			// No surge: every replica holds the host's ports and the
			// anti-affinity allows one per node, so a new pod can only
			// start where an old one has stopped.
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{MaxSurge: &zero, MaxUnavailable: &one}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: podLabels()},
				Spec:       podSpec(p),
			},
		},
	}
}

func podSpec(p Params) corev1.PodSpec {
	yes, no := true, false
	grace := int64(30)
	return corev1.PodSpec{
		ServiceAccountName:            Name,
		AutomountServiceAccountToken:  &yes,
		HostNetwork:                   true,
		DNSPolicy:                     corev1.DNSClusterFirstWithHostNet,
		TerminationGracePeriodSeconds: &grace,
		EnableServiceLinks:            &no,
		// Talos labels and taints control planes with
		// node-role.kubernetes.io/control-plane (see docs/DESIGN.md).
		NodeSelector: map[string]string{"node-role.kubernetes.io/control-plane": ""},
		Tolerations: []corev1.Toleration{{Key: "node-role.kubernetes.io/control-plane",
			Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
		Affinity: &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
				LabelSelector: &metav1.LabelSelector{MatchLabels: Selector},
				TopologyKey:   "kubernetes.io/hostname",
			}},
		}},
		SecurityContext: &corev1.PodSecurityContext{
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		Containers: []corev1.Container{container(p)},
		Volumes:    volumes(p),
	}
}

// volumes are the state and /tmp emptyDirs and, with an assets image, the
// image volume holding the boot files and the mirror's images (read-only:
// the kubelet mounts image volumes read-only).
func volumes(p Params) []corev1.Volume {
	vs := []corev1.Volume{
		{Name: "state", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	if p.AssetsImage != "" {
		vs = append(vs, corev1.Volume{Name: "assets", VolumeSource: corev1.VolumeSource{
			Image: &corev1.ImageVolumeSource{Reference: p.AssetsImage, PullPolicy: corev1.PullIfNotPresent}}})
	}
	return vs
}

func volumeMounts(p Params) []corev1.VolumeMount {
	ms := []corev1.VolumeMount{
		{Name: "state", MountPath: StateDir},
		{Name: "tmp", MountPath: "/tmp"},
	}
	if p.AssetsImage != "" {
		ms = append(ms, corev1.VolumeMount{Name: "assets", MountPath: AssetsDir, ReadOnly: true})
	}
	return ms
}

func container(p Params) corev1.Container {
	yes, no := true, false
	root := int64(0)
	field := func(path string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path}}
	}
	probe := func(period, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromString("http")}},
			PeriodSeconds:    period,
			TimeoutSeconds:   3,
			FailureThreshold: failures,
		}
	}
	port := func(name string, n int, proto corev1.Protocol) corev1.ContainerPort {
		return corev1.ContainerPort{Name: name, ContainerPort: int32(n), HostPort: int32(n), Protocol: proto}
	}
	return corev1.Container{
		Name:            "rackboot",
		Image:           p.Image,
		ImagePullPolicy: corev1.PullIfNotPresent,
		Command:         []string{ociimage.BinaryPath},
		Args:            ServeArgs(p),
		Env: []corev1.EnvVar{
			{Name: "POD_NAME", ValueFrom: field("metadata.name")},
			{Name: "POD_NAMESPACE", ValueFrom: field("metadata.namespace")},
			{Name: "POD_IP", ValueFrom: field("status.podIP")},
		},
		Ports: []corev1.ContainerPort{
			port("http", p.HTTPPort, corev1.ProtocolTCP),
			port("dhcp", dhcpPort, corev1.ProtocolUDP),
			port("pxe", bootServerPort, corev1.ProtocolUDP),
			port("tftp", tftpPort, corev1.ProtocolUDP),
			port("events", eventsPort, corev1.ProtocolTCP),
			port("kmsg", logPort, corev1.ProtocolUDP),
			port("registry", registryPort, corev1.ProtocolTCP),
		},
		ReadinessProbe: probe(5, 3),
		LivenessProbe:  probe(10, 6),
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("64Mi")},
			Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")},
		},
		// Root with two capabilities only: Kubernetes gives added
		// capabilities to a non-root user's permitted set only, not its
		// effective one (no ambient capabilities: kubernetes/kubernetes
		// #56374, KEP-2763), so a non-root rackboot could not bind :67.
		SecurityContext: &corev1.SecurityContext{
			RunAsUser:                &root,
			RunAsGroup:               &root,
			RunAsNonRoot:             &no,
			Privileged:               &no,
			AllowPrivilegeEscalation: &no,
			ReadOnlyRootFilesystem:   &yes,
			Capabilities: &corev1.Capabilities{
				Drop: []corev1.Capability{"ALL"},
				Add:  []corev1.Capability{"NET_BIND_SERVICE", "NET_RAW"},
			},
		},
		VolumeMounts:             volumeMounts(p),
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}
