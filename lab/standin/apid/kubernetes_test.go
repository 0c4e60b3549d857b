package apid_test

import (
	"testing"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
	"github.com/siderolabs/talos/pkg/machinery/config/types/v1alpha1"
	cfgres "github.com/siderolabs/talos/pkg/machinery/resources/config"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
	svcres "github.com/siderolabs/talos/pkg/machinery/resources/v1alpha1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A configured machine's ApplyConfiguration as Talos's upgrade-k8s uses it:
// admin only, immediate changes only (NO_REBOOT), a dry run changes
// nothing, and the published resources follow the applied config: the
// static pods' config resources get a new version only when their image
// changes, and a new kubelet image restarts the kubelet (its Service
// destroyed, then running again).
func TestConfiguredApplyKubernetes(t *testing.T) {
	p := newPKI(t, "/dev/nvme0n1")
	s, addr, _ := configured(t, p, nil)
	if err := s.PublishKubernetes(ctx(t), map[string][]map[string]any{"10-test": {{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": "x"}}}}); err != nil {
		t.Fatal(err)
	}
	var restarted []string
	s.KubeletRestarted(func(image string) { restarted = append(restarted, image) })
	admin := withConfig(t, p.admin, addr)
	reader := withConfig(t, withRole(t, p, "os:reader"), addr)

	mc, err := safe.StateGetByID[*cfgres.MachineConfig](ctx(t), admin.COSI, cfgres.ActiveID)
	if err != nil {
		t.Fatal(err)
	}
	api0, err := safe.StateGetByID[*k8s.APIServerConfig](ctx(t), admin.COSI, k8s.APIServerConfigID)
	if err != nil {
		t.Fatal(err)
	}
	if api0.TypedSpec().Image != mc.Config().Cluster().APIServer().Image() {
		t.Fatalf("APIServerConfig image %q, config %q", api0.TypedSpec().Image, mc.Config().Cluster().APIServer().Image())
	}
	if ms, err := safe.StateListAll[*k8s.Manifest](ctx(t), admin.COSI); err != nil || ms.Len() != 1 {
		t.Fatalf("manifests: %v, %v", ms, err)
	}
	patch := func(f func(c *v1alpha1.Config)) []byte {
		t.Helper()
		next, err := mc.Provider().PatchV1Alpha1(func(c *v1alpha1.Config) error { f(c); return nil })
		if err != nil {
			t.Fatal(err)
		}
		b, err := next.EncodeBytes(encoder.WithComments(encoder.CommentsDisabled))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	upgraded := patch(func(c *v1alpha1.Config) {
		c.ClusterConfig.APIServerConfig.ContainerImage = "registry.k8s.io/kube-apiserver:v1.36.1"
		c.MachineConfig.MachineKubelet.KubeletImage = "ghcr.io/siderolabs/kubelet:v1.36.1"
	})
	for _, tc := range []struct {
		name string
		req  *machine.ApplyConfigurationRequest
		code codes.Code
	}{
		{"reader", &machine.ApplyConfigurationRequest{Data: upgraded, Mode: machine.ApplyConfigurationRequest_NO_REBOOT}, codes.PermissionDenied},
		{"needs a reboot", &machine.ApplyConfigurationRequest{Data: patch(func(c *v1alpha1.Config) { c.MachineConfig.MachineToken = "abcdef.0123456789abcdef" }), Mode: machine.ApplyConfigurationRequest_NO_REBOOT}, codes.InvalidArgument},
		{"reboot mode", &machine.ApplyConfigurationRequest{Data: upgraded, Mode: machine.ApplyConfigurationRequest_REBOOT}, codes.Unimplemented},
		{"not a config", &machine.ApplyConfigurationRequest{Data: []byte("version: v1alpha1\nmachine: 3\n"), Mode: machine.ApplyConfigurationRequest_NO_REBOOT}, codes.InvalidArgument},
		{"dry run", &machine.ApplyConfigurationRequest{Data: upgraded, Mode: machine.ApplyConfigurationRequest_NO_REBOOT, DryRun: true}, codes.OK},
	} {
		c := admin
		if tc.name == "reader" {
			c = reader
		}
		if _, err := c.ApplyConfiguration(ctx(t), tc.req); status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}
	if api, err := safe.StateGetByID[*k8s.APIServerConfig](ctx(t), admin.COSI, k8s.APIServerConfigID); err != nil || !api.Metadata().Version().Equal(api0.Metadata().Version()) {
		t.Fatalf("refused and dry-run applies changed APIServerConfig: %v, %v", api, err)
	}

	watch := make(chan safe.WrappedStateEvent[*svcres.Service], 16)
	if err := safe.StateWatch(ctx(t), admin.COSI, svcres.NewService("kubelet").Metadata(), watch); err != nil {
		t.Fatal(err)
	}
	if ev := <-watch; ev.Type() != state.Created {
		t.Fatalf("kubelet service: first event %s", ev.Type())
	}
	resp, err := admin.ApplyConfiguration(ctx(t), &machine.ApplyConfigurationRequest{Data: upgraded, Mode: machine.ApplyConfigurationRequest_NO_REBOOT})
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if m := resp.GetMessages()[0]; m.GetMode() != machine.ApplyConfigurationRequest_NO_REBOOT || m.GetModeDetails() != "Applied configuration without a reboot" {
		t.Errorf("apply reply: %v", m)
	}
	for _, want := range []state.EventType{state.Destroyed, state.Created} {
		if ev := <-watch; ev.Type() != want {
			t.Fatalf("kubelet service event %s, want %s", ev.Type(), want)
		}
	}
	if len(restarted) != 1 || restarted[0] != "ghcr.io/siderolabs/kubelet:v1.36.1" {
		t.Errorf("kubelet restarts %q", restarted)
	}
	api, err := safe.StateGetByID[*k8s.APIServerConfig](ctx(t), admin.COSI, k8s.APIServerConfigID)
	if err != nil || api.TypedSpec().Image != "registry.k8s.io/kube-apiserver:v1.36.1" || api.Metadata().Version().Equal(api0.Metadata().Version()) {
		t.Fatalf("APIServerConfig after apply: %v, %v", api, err)
	}
	sched, err := safe.StateGetByID[*k8s.SchedulerConfig](ctx(t), admin.COSI, k8s.SchedulerConfigID)
	if err != nil || sched.Metadata().Version().String() != "1" {
		t.Errorf("SchedulerConfig, unchanged, has a new version: %v, %v", sched, err)
	}
	ks, err := safe.StateGetByID[*k8s.KubeletSpec](ctx(t), admin.COSI, k8s.KubeletID)
	if err != nil || ks.TypedSpec().Image != "ghcr.io/siderolabs/kubelet:v1.36.1" {
		t.Errorf("KubeletSpec after apply: %v, %v", ks, err)
	}
	mc2, err := safe.StateGetByID[*cfgres.MachineConfig](ctx(t), admin.COSI, cfgres.ActiveID)
	if err != nil || mc2.Config().Cluster().APIServer().Image() != "registry.k8s.io/kube-apiserver:v1.36.1" {
		t.Errorf("MachineConfig after apply: %v", err)
	}
}
