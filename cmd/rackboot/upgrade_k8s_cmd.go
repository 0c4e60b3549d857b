package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/handoff"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/rackedit"
	"github.com/dotfile/rackboot/upgrade"
)

// runUpgradeKubernetes is `rackboot upgrade --kubernetes X.Y.Z`: Talos's
// own Kubernetes upgrade (upgrade.RunKubernetes) behind the etcd and
// nodes-Ready gates, then the rack file's kubernetesVersion.
func runUpgradeKubernetes(ctx context.Context, a *app, cmd *cobra.Command, f *upgradeFlags) error {
	out := cmd.OutOrStdout()
	if err := checkK8sFlags(f); err != nil {
		return &exitError{code: 2, err: err}
	}
	target, err := upgrade.ParseK8sVersion("target", f.kubernetes)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	r, err := a.loadRack(cmd)
	if err != nil {
		return err
	}
	if err := checkOfflineK8sImages(a, r, target); err != nil {
		return &exitError{code: 1, err: err}
	}
	tc, err := rackTalosconfig(ctx, a, r)
	if err != nil {
		return err
	}
	restCfg, _, err := a.restConfig(f.kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	var endpoints []string
	var copts []upgrade.K8sClusterOption
	if f.endpoint != "" {
		endpoints = []string{f.endpoint}
		copts = append(copts, upgrade.ViaEndpoints(f.endpoint))
	}
	talos, err := upgrade.NewTalosAPI(ctx, tc, endpoints...)
	if err != nil {
		return err
	}
	defer talos.Close()
	cl, err := upgrade.NewK8sCluster(ctx, tc, restCfg, copts...)
	if err != nil {
		return err
	}
	defer cl.Shutdown() //nolint:errcheck

	path, err := upgrade.RunKubernetes(ctx, upgrade.K8sConfig{
		Request: upgrade.K8sRequest{
			From:             f.k8sFrom,
			To:               target,
			DryRun:           f.dryRun,
			PrePullImages:    f.prePull,
			UpgradeKubelet:   f.upgradeKubelet,
			ReconcileTimeout: upgrade.DefaultReconcileTimeout,
		},
		Cluster:     cl,
		Gates:       k8sGates(cs, talos, r),
		GateTimeout: f.gateTimeout,
		Out:         out,
	})
	if err != nil {
		if errors.Is(err, upgrade.ErrK8sUpgrade) && !f.dryRun {
			err = fmt.Errorf("%w\nwhat was done stays done; fix it and run the same command again (Talos skips what is already at %s)", err, target)
		}
		return &exitError{code: 1, err: err}
	}
	if f.dryRun {
		fmt.Fprintf(out, "dry run: Kubernetes %s → %s; nothing was changed\n", path.FromVersion(), path.ToVersion())
		return nil
	}
	fmt.Fprintf(out, "Kubernetes is at %s\n", target)
	if strings.TrimPrefix(r.Cluster.KubernetesVersion, "v") != target {
		where, err := a.writeKubernetesVersion(ctx, target)
		if err != nil {
			fmt.Fprintf(out, "the rack file still says kubernetesVersion: %s (%v): set it to %s so that new and reinstalled machines get %s\n", r.Cluster.KubernetesVersion, err, target, target)
			return nil
		}
		fmt.Fprintf(out, "%s: kubernetesVersion %s → %s (comments and layout kept), so new and reinstalled machines get %s\n", where, r.Cluster.KubernetesVersion, target, target)
	}
	return nil
}

// writeKubernetesVersion is writeTalosVersion for kubernetesVersion: the
// rack file, or under --kube its ConfigMap.
func (a *app) writeKubernetesVersion(ctx context.Context, version string) (string, error) {
	if a.kube == nil {
		return a.rackPath, setRackKubernetesVersion(a.rackPath, version)
	}
	ctx, cancel := kubeCtx(ctx)
	defer cancel()
	err := a.kube.UpdateRackFile(ctx, func(old []byte) ([]byte, error) { return rackedit.SetKubernetesVersion(old, version) })
	return fmt.Sprintf("%s (the replicas read it when they start: kubectl -n %s rollout restart deployment/%s)",
		a.rackWhere(), a.kube.Namespace(), handoff.Name), err
}

// checkK8sFlags refuses the Talos upgrade's flags with --kubernetes.
func checkK8sFlags(f *upgradeFlags) error {
	switch {
	case f.talos != "":
		return errors.New("--talos and --kubernetes do not go together: upgrade one at a time (Talos first when Kubernetes needs a newer Talos)")
	case f.resume:
		return errors.New("--resume is for a Talos upgrade: run the same --kubernetes command again, Talos's upgrade skips what is already done")
	case f.allowDowngrade:
		return errors.New("--allow-downgrade is for a Talos upgrade: Kubernetes is never downgraded")
	}
	return nil
}

// rackTalosconfig is the admin talosconfig, in memory only, from the
// secrets (the state directory's, or under --kube the cluster's; an
// upgrade never creates them).
func rackTalosconfig(ctx context.Context, a *app, r *profiles.Rack) (*clientconfig.Config, error) {
	secrets, err := a.upgradeSecrets(ctx)
	if err != nil {
		return nil, err
	}
	return talosconfigOf(r, secrets)
}

// k8sGates: etcd healthy with every control plane of the rack, every node
// Ready.
func k8sGates(cs kubernetes.Interface, talos upgrade.Talos, r *profiles.Rack) []upgrade.Gate {
	var cps []string
	addrs := map[string]string{}
	for _, m := range r.ControlPlanes() {
		cps = append(cps, m.Name)
		if p, err := netip.ParsePrefix(m.Address); err == nil {
			addrs[m.Name] = p.Addr().String()
		}
	}
	resolve := func(ctx context.Context, name string) (string, error) {
		if a := addrs[name]; a != "" {
			return a, nil
		}
		return upgrade.NodeAddress(ctx, cs, name)
	}
	return []upgrade.Gate{upgrade.EtcdGate(talos, cps, resolve), upgrade.NodesReadyGate(cs)}
}

// checkOfflineK8sImages: an offline rack's nodes pull through rackboot's
// mirror only, so its store must hold the target's Kubernetes images (the
// rack's image list with kubernetesVersion set to the target).
func checkOfflineK8sImages(a *app, r *profiles.Rack, target string) error {
	if !r.Cluster.Offline {
		return nil
	}
	next := *r
	next.Cluster.KubernetesVersion = target
	images, _, err := next.Images()
	if err != nil {
		return err
	}
	st, err := openImageStore(a)
	if err != nil {
		return err
	}
	var missing []string
	for _, im := range images {
		if !k8sImageOf(im, target) {
			continue
		}
		if err := st.Has(im.Ref); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%v)", im.Ref, err))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the rack is offline (offline: true) but the image store %s lacks Kubernetes %s's images:\n  %s\nset kubernetesVersion: %s in the rack file and run `rackboot assets pull` where there is internet, then come back",
			st.Dir(), target, strings.Join(missing, "\n  "), target)
	}
	return nil
}

// k8sImageOf: the image is one of Kubernetes target's (kubelet, control
// plane, kube-proxy), by the sources Rack.Images gives.
func k8sImageOf(im profiles.Image, target string) bool {
	for _, s := range im.Sources {
		if strings.HasPrefix(s, "Kubernetes v"+target+" ") {
			return true
		}
	}
	return false
}

// setRackKubernetesVersion writes the version into the rack file
// (rackedit: only that value changes), atomically.
func setRackKubernetesVersion(path, version string) error {
	return editRack(path, func(src []byte) ([]byte, error) { return rackedit.SetKubernetesVersion(src, version) })
}
