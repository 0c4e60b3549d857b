package apid

//lint:file-ignore SA1019 canApplyImmediate copies the deprecated machine config fields, as Talos's does

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/types/v1alpha1"
	cfgres "github.com/siderolabs/talos/pkg/machinery/resources/config"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
	svcres "github.com/siderolabs/talos/pkg/machinery/resources/v1alpha1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The resources Talos's Kubernetes upgrade (github.com/siderolabs/talos
// v1.13.0 pkg/cluster/kubernetes: upgrade via talos_managed.go, kubelet.go,
// patch.go, and go-kubernetes's upgrade.Checks) reads from a node, as
// machined's controllers publish them from the machine config:
//
//   - config.MachineConfig "v1alpha1" (the active config; patchNodeConfig
//     reads it, patches it and applies it back with NO_REBOOT);
//   - on control planes k8s.APIServerConfig, ControllerManagerConfig and
//     SchedulerConfig in the controlplane namespace, whose Image is
//     cluster.apiServer/controllerManager/scheduler.image
//     (controllers/k8s/control_plane.go); Talos's upgradeStaticPodOnNode
//     watches them and waits for an Updated event after its patch (COSI
//     bumps the version only when the spec changes);
//   - k8s.KubeletSpec "kubelet" with Image machine.kubelet.image
//     (controllers/k8s/kubelet_config.go, kubelet_spec.go) and its args;
//   - v1alpha1.Service "kubelet" {running, healthy}: ServiceController
//     (controllers/v1alpha1/service.go) writes it while the service runs
//     and destroys it when it stops, which KubeletServiceController does to
//     restart the kubelet on a new spec (controllers/k8s/kubelet_service.go);
//   - k8s.Manifest resources in the controlplane namespace (the bootstrap
//     manifests a control plane renders; Talos's manifests sync applies
//     them): the stand-in cannot render Talos's templates (an internal
//     package), so PublishKubernetes takes them from its caller.
//
// Not mirrored: k8s.StaticPod (the checks skip a missing one, as Talos's
// do), the static pods themselves and their mirror pods' status, and the
// Node's kubelet version: that is the kubelet's, which the stand-in does
// not run. MachineConfig is readable with the reader role here; Talos
// marks it sensitive (os:admin... the admin role only).

// kubeNode is a server's Kubernetes side.
type kubeNode struct {
	mu        sync.Mutex
	published bool
	onKubelet func(image string)
}

var kubeNodes sync.Map // *Server → *kubeNode

func (s *Server) kube() *kubeNode {
	n, _ := kubeNodes.LoadOrStore(s, &kubeNode{})
	return n.(*kubeNode)
}

// KubeletRestarted is called with the new image after the stand-in
// restarted its (pretend) kubelet on a new machine.kubelet.image.
func (s *Server) KubeletRestarted(f func(image string)) {
	k := s.kube()
	k.mu.Lock()
	defer k.mu.Unlock()
	k.onKubelet = f
}

// PublishKubernetes publishes the resources above from the machine's
// config (Configure first), with manifests as the control plane's
// bootstrap manifests (ID → objects), and marks the kubelet running and
// healthy. From then on a configured ApplyConfiguration updates them.
func (s *Server) PublishKubernetes(ctx context.Context, manifests map[string][]map[string]any) error {
	s.mu.Lock()
	cfg := s.machine
	s.mu.Unlock()
	if cfg == nil {
		return errors.New("no machine config yet: Configure the server first")
	}
	k := s.kube()
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := s.syncKubernetes(ctx, cfg, nil); err != nil {
		return err
	}
	if cfg.Machine().Type().IsControlPlane() {
		for id, objs := range manifests {
			m := k8s.NewManifest(k8s.ControlPlaneNamespaceName, id)
			for _, o := range objs {
				m.TypedSpec().Items = append(m.TypedSpec().Items, k8s.SingleManifest{Object: o})
			}
			if err := s.state.st.Create(ctx, m); err != nil {
				return fmt.Errorf("manifest %s: %w", id, err)
			}
		}
	}
	svc := svcres.NewService("kubelet")
	*svc.TypedSpec() = svcres.ServiceSpec{Running: true, Healthy: true}
	if err := s.state.st.Create(ctx, svc); err != nil {
		return fmt.Errorf("kubelet service: %w", err)
	}
	k.published = true
	return nil
}

// modify writes r's spec when it differs from the stored one (creating it
// when missing), as controllers' safe.WriterModify: an unchanged spec
// leaves the version alone.
func modify[T resource.Resource](ctx context.Context, st state.State, r T, set func(T)) (changed bool, err error) {
	cur, err := safe.StateGet[T](ctx, st, r.Metadata())
	switch {
	case state.IsNotFoundError(err):
		set(r)
		return true, st.Create(ctx, r)
	case err != nil:
		return false, err
	}
	next := cur.DeepCopy().(T)
	set(next)
	if reflect.DeepEqual(next.Spec(), cur.Spec()) {
		return false, nil
	}
	return true, st.Update(ctx, next)
}

// syncKubernetes writes the resources derived from cfg; old is the
// config before (nil at first: no kubelet restart).
func (s *Server) syncKubernetes(ctx context.Context, cfg, old config.Provider) error {
	st := s.state.st
	if err := writeMachineConfig(ctx, st, cfg); err != nil {
		return err
	}
	if cfg.Machine().Type().IsControlPlane() {
		c := cfg.Cluster()
		for _, w := range []func() error{
			func() error {
				_, err := modify(ctx, st, k8s.NewAPIServerConfig(), func(r *k8s.APIServerConfig) { r.TypedSpec().Image = c.APIServer().Image() })
				return err
			},
			func() error {
				_, err := modify(ctx, st, k8s.NewControllerManagerConfig(), func(r *k8s.ControllerManagerConfig) {
					r.TypedSpec().Enabled, r.TypedSpec().Image = true, c.ControllerManager().Image()
				})
				return err
			},
			func() error {
				_, err := modify(ctx, st, k8s.NewSchedulerConfig(), func(r *k8s.SchedulerConfig) {
					r.TypedSpec().Enabled, r.TypedSpec().Image = true, c.Scheduler().Image()
				})
				return err
			},
		} {
			if err := w(); err != nil {
				return fmt.Errorf("control plane config: %w", err)
			}
		}
	}
	kubelet := cfg.Machine().Kubelet()
	changed, err := modify(ctx, st, k8s.NewKubeletSpec(k8s.NamespaceName, k8s.KubeletID), func(r *k8s.KubeletSpec) {
		r.TypedSpec().Image = kubelet.Image()
		r.TypedSpec().Args = kubeletArgs(kubelet.ExtraArgs())
	})
	if err != nil {
		return fmt.Errorf("kubelet spec: %w", err)
	}
	if changed && old != nil {
		return s.restartKubelet(ctx, kubelet.Image())
	}
	return nil
}

// writeMachineConfig writes the active MachineConfig resource (machined
// writes it on every applied config).
func writeMachineConfig(ctx context.Context, st state.State, cfg config.Provider) error {
	mc := cfgres.NewMachineConfig(cfg)
	cur, err := st.Get(ctx, mc.Metadata())
	switch {
	case state.IsNotFoundError(err):
		err = st.Create(ctx, mc)
	case err == nil:
		mc.Metadata().SetVersion(cur.Metadata().Version())
		err = st.Update(ctx, mc)
	}
	if err != nil {
		return fmt.Errorf("machine config resource: %w", err)
	}
	return nil
}

// kubeletArgs are the kubelet's extra args as flags (Talos adds its own,
// which the stand-in leaves out).
func kubeletArgs(extra map[string][]string) []string {
	var out []string
	for k, vs := range extra {
		for _, v := range vs {
			out = append(out, "--"+k+"="+v)
		}
	}
	return out
}

// restartKubelet is KubeletServiceController's restart as the Service
// resource shows it: destroyed when the kubelet stops, written running
// and healthy when it is up again.
func (s *Server) restartKubelet(ctx context.Context, image string) error {
	st := s.state.st
	svc := svcres.NewService("kubelet")
	if err := st.Destroy(ctx, svc.Metadata()); err != nil && !state.IsNotFoundError(err) {
		return fmt.Errorf("stop kubelet: %w", err)
	}
	*svc.TypedSpec() = svcres.ServiceSpec{Running: true, Healthy: true}
	if err := st.Create(ctx, svc); err != nil {
		return fmt.Errorf("start kubelet: %w", err)
	}
	if f := s.kube().onKubelet; f != nil {
		f(image)
	}
	return nil
}

// applyConfigured mirrors v1alpha1_server.go Server.ApplyConfiguration once
// the machine has its config (the caller checked the admin role): the
// config must hold v1alpha1, Validate and RuntimeValidate, NO_REBOOT, TRY
// and AUTO only for what Runtime.CanApplyImmediate allows (else
// InvalidArgument, AUTO falls back to a reboot, which the stand-in refuses
// as Unimplemented), STAGED only answered; applied, the config becomes the
// machine's and the resources above follow it.
func (s *Server) applyConfigured(ctx context.Context, in *machine.ApplyConfigurationRequest) (*machine.ApplyConfigurationResponse, error) {
	cfg, err := configloader.NewFromBytes(in.GetData())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if cfg.RawV1Alpha1() == nil {
		return nil, status.Error(codes.InvalidArgument, "the applied machine configuration doesn't contain v1alpha1 config, did you mean to patch the machine config instead?")
	}
	mode := metalMode{installed: s.installed()}
	warnings, err := cfg.Validate(mode)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	more, err := cfg.RuntimeValidate(ctx, s.state.st, mode)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	warnings = append(warnings, more...)
	s.mu.Lock()
	old := s.machine
	s.mu.Unlock()
	m := in.GetMode()
	details := "Applied configuration without a reboot"
	switch m {
	case machine.ApplyConfigurationRequest_NO_REBOOT, machine.ApplyConfigurationRequest_TRY:
		if err := canApplyImmediate(old, cfg); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	case machine.ApplyConfigurationRequest_AUTO:
		if err := canApplyImmediate(old, cfg); err != nil {
			return nil, status.Errorf(codes.Unimplemented, "the change needs a reboot, which the stand-in does not apply: %v", err)
		}
		m = machine.ApplyConfigurationRequest_NO_REBOOT
	case machine.ApplyConfigurationRequest_STAGED:
		details = "Staged configuration to be applied after the next reboot"
	default:
		return nil, status.Errorf(codes.Unimplemented, "the stand-in applies a config without a reboot only (mode %s)", m)
	}
	if in.GetDryRun() {
		return &machine.ApplyConfigurationResponse{Messages: []*machine.ApplyConfiguration{{
			Mode: m, ModeDetails: fmt.Sprintf("Dry run summary:\n%s (skipped in dry-run).\n", details),
		}}}, nil
	}
	s.log.Info("apply config request", "mode", m.String())
	if m != machine.ApplyConfigurationRequest_STAGED {
		if err := s.applyNow(ctx, old, cfg); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	return &machine.ApplyConfigurationResponse{Messages: []*machine.ApplyConfiguration{{
		Mode: m, Warnings: warnings, ModeDetails: details,
	}}}, nil
}

func (s *Server) applyNow(ctx context.Context, old, cfg config.Provider) error {
	s.mu.Lock()
	s.machine = cfg
	s.mu.Unlock()
	k := s.kube()
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.published {
		return nil
	}
	return s.syncKubernetes(ctx, cfg, old)
}

// canApplyImmediate is v1alpha1_runtime.go Runtime.CanApplyImmediate: only
// .debug, .cluster and the listed .machine fields may differ.
func canApplyImmediate(cur, next config.Provider) error {
	if cur == nil || cur.RawV1Alpha1() == nil {
		return errors.New("current config is not v1alpha1")
	}
	c, n := cur.RawV1Alpha1(), next.RawV1Alpha1().DeepCopy()
	n.ConfigDebug = c.ConfigDebug
	n.ClusterConfig = c.ClusterConfig
	if n.MachineConfig != nil && c.MachineConfig != nil {
		copyImmediateMachine(n.MachineConfig, c.MachineConfig)
	}
	if !reflect.DeepEqual(c, n) {
		return errors.New("this config change can't be applied in immediate mode")
	}
	return nil
}

func copyImmediateMachine(n, c *v1alpha1.MachineConfig) {
	n.MachineCA = c.MachineCA
	n.MachineAcceptedCAs = c.MachineAcceptedCAs
	n.MachineTime = c.MachineTime
	n.MachineCertSANs = c.MachineCertSANs
	n.MachineInstall = c.MachineInstall
	n.MachineNetwork = c.MachineNetwork
	n.MachineSysfs = c.MachineSysfs
	n.MachineSysctls = c.MachineSysctls
	n.MachineLogging = c.MachineLogging
	n.MachineControlPlane = c.MachineControlPlane
	n.MachineKubelet = c.MachineKubelet
	n.MachineKernel = c.MachineKernel
	n.MachineRegistries = c.MachineRegistries
	n.MachinePods = c.MachinePods
	n.MachineSeccompProfiles = c.MachineSeccompProfiles
	n.MachineNodeAnnotations = c.MachineNodeAnnotations
	n.MachineNodeLabels = c.MachineNodeLabels
	n.MachineNodeTaints = c.MachineNodeTaints
	if n.MachineFeatures != nil && c.MachineFeatures != nil {
		n.MachineFeatures.KubernetesTalosAPIAccessConfig = c.MachineFeatures.KubernetesTalosAPIAccessConfig
		n.MachineFeatures.KubePrismSupport = c.MachineFeatures.KubePrismSupport
		n.MachineFeatures.HostDNSSupport = c.MachineFeatures.HostDNSSupport
		n.MachineFeatures.ImageCacheSupport = c.MachineFeatures.ImageCacheSupport
		n.MachineFeatures.FeatureNodeAddressSortAlgorithm = c.MachineFeatures.FeatureNodeAddressSortAlgorithm
	}
}
