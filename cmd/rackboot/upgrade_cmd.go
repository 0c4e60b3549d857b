package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/bundles/cnpg"
	"github.com/dotfile/rackboot/bundles/cockroach"
	"github.com/dotfile/rackboot/bundles/rook"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/rackedit"
	"github.com/dotfile/rackboot/upgrade"
)

type upgradeFlags struct {
	talos          string
	resume         bool
	dryRun         bool
	allowDowngrade bool
	kubernetes     string
	k8sFrom        string
	prePull        bool
	upgradeKubelet bool
	kubeconfig     string
	endpoint       string
	gateTimeout    time.Duration
	drainTimeout   time.Duration
	rebootTimeout  time.Duration
}

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		f := &upgradeFlags{}
		cmd := &cobra.Command{
			Use:   "upgrade --talos vX.Y.Z | --kubernetes X.Y.Z",
			Short: "Upgrade Talos node by node (behind etcd, Ceph and CockroachDB health), or Kubernetes with Talos's own upgrade",
			Long: `Rolls a Talos upgrade through the rack one node at a time, control planes
first (rack file order), then workers. Nodes already at the version are
skipped. Before each node: etcd healthy with every member, Ceph HEALTH_OK,
CockroachDB every node live and no under-replicated range, every node Ready.
Then: cordon, drain (evictions: disruption budgets are respected), upgrade
through the Talos API with the rack's installer for the node's schematic,
wait for the new version and Ready, uncordon, and Ceph HEALTH_OK again.

Progress is kept in upgrade.json in the state directory. A failed gate stops
the upgrade and says where; fix it and run again with --resume.
--dry-run prints the plan and the gates' current state and changes nothing.

--kubernetes X.Y.Z upgrades Kubernetes instead, with Talos's own code (what
talosctl upgrade-k8s runs): after etcd is healthy and every node Ready, the
control plane's static pods (kube-apiserver, kube-controller-manager,
kube-scheduler) node by node, kube-proxy, then each node's kubelet, through
each node's machine config, and the bootstrap manifests. One minor version
at a time, never back. The rack file's kubernetesVersion is set at the end.
With --dry-run Talos reports what it would change.`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return runUpgrade(cmd.Context(), a, cmd, f)
			},
		}
		fl := cmd.Flags()
		fl.StringVar(&f.talos, "talos", "", "the Talos version to upgrade to, e.g. v1.13.1 (required)")
		fl.BoolVar(&f.resume, "resume", false, "go on with the upgrade recorded in the state directory (after a failed gate or an interruption)")
		fl.BoolVar(&f.dryRun, "dry-run", false, "print the plan and the gates' current state; change nothing")
		fl.BoolVar(&f.allowDowngrade, "allow-downgrade", false, "allow a version older than what nodes run")
		fl.StringVar(&f.kubernetes, "kubernetes", "", "upgrade Kubernetes to this version instead of Talos, e.g. 1.36.1")
		fl.StringVar(&f.k8sFrom, "kubernetes-from", "", "the Kubernetes version the cluster runs (default: found from the control plane pods)")
		fl.BoolVar(&f.prePull, "pre-pull-images", true, "with --kubernetes: pull the new images on the nodes before changing anything")
		fl.BoolVar(&f.upgradeKubelet, "upgrade-kubelet", true, "with --kubernetes: upgrade every node's kubelet too")
		fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: kubeconfig in the state directory, else $KUBECONFIG)")
		fl.StringVar(&f.endpoint, "talos-endpoint", "", "dial the Talos API at host:port instead of the talosconfig's endpoints (a tunnel; tests)")
		_ = fl.MarkHidden("talos-endpoint")
		registerKube(cmd)
		fl.DurationVar(&f.gateTimeout, "gate-timeout", upgrade.DefaultGateTimeout, "how long the health gates may take to hold before (and after) a node")
		fl.DurationVar(&f.drainTimeout, "drain-timeout", upgrade.DefaultDrainTimeout, "how long a node's pods may take to leave (budgets that refuse are retried until then)")
		fl.DurationVar(&f.rebootTimeout, "reboot-timeout", upgrade.DefaultRebootTimeout, "how long a node may take to come back with the new version")
		return cmd
	})
}

func runUpgrade(ctx context.Context, a *app, cmd *cobra.Command, f *upgradeFlags) error {
	out := cmd.OutOrStdout()
	if f.kubernetes != "" {
		return runUpgradeKubernetes(ctx, a, cmd, f)
	}
	if f.talos == "" {
		return &exitError{code: 2, err: errors.New("say which Talos version to upgrade to: --talos v1.13.1")}
	}
	target, err := upgrade.ParseVersion(f.talos)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	if f.dryRun && f.resume {
		return &exitError{code: 2, err: errors.New("--dry-run and --resume do not go together: --dry-run changes nothing")}
	}
	r, err := a.loadRack(cmd)
	if err != nil {
		return err
	}
	store, err := a.upgradeState()
	if err != nil {
		return err
	}
	machines, err := upgradeMachines(r, target)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	if err := checkOfflineInstallers(a, r, machines, target); err != nil {
		return &exitError{code: 1, err: err}
	}

	// Only read: the secrets must exist (an upgrade never creates them), and
	// the client configs stay in memory.
	secrets, err := a.upgradeSecrets(ctx)
	if err != nil {
		return err
	}
	tcData, err := profiles.Talosconfig(r, secrets)
	if err != nil {
		return err
	}
	tc, err := clientconfig.FromBytes(tcData)
	if err != nil {
		return fmt.Errorf("read back the talosconfig: %w", err)
	}
	var endpoints []string
	if f.endpoint != "" {
		endpoints = []string{f.endpoint}
	}
	talos, err := upgrade.NewTalosAPI(ctx, tc, endpoints...)
	if err != nil {
		return err
	}
	defer talos.Close()
	restCfg, _, err := a.restConfig(f.kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}

	// What each node runs now.
	current := map[string]string{}
	whys := map[string]string{}
	for _, m := range machines {
		addr := m.Address
		if addr == "" {
			if addr, err = upgrade.NodeAddress(ctx, cs, m.Name); err != nil {
				whys[m.Name] = err.Error()
				continue
			}
		}
		vctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		v, err := talos.Version(vctx, addr)
		cancel()
		if err != nil {
			whys[m.Name] = err.Error()
			continue
		}
		current[m.Name] = v
	}
	plan, err := upgrade.MakePlan(machines, current, target)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	for i := range plan.Nodes {
		plan.Nodes[i].Why = whys[plan.Nodes[i].Name]
	}
	gates, after, notes := upgradeGates(ctx, cs, dyn, talos, plan)

	if f.dryRun {
		for _, n := range notes {
			fmt.Fprintln(out, n)
		}
		if err := upgrade.WritePlan(out, plan, upgrade.CheckGates(ctx, gates)); err != nil {
			return err
		}
		if err := plan.Check(f.allowDowngrade); err != nil {
			fmt.Fprintln(out, "refused:", err)
		}
		if st, err := upgrade.LoadState(store); err == nil && st != nil && !st.Finished() {
			fmt.Fprintf(out, "an unfinished upgrade to %s is recorded in %s: go on with --resume\n", st.Target, store.Where())
		}
		return nil
	}
	if err := plan.Check(f.allowDowngrade); err != nil {
		return &exitError{code: 1, err: err}
	}
	for _, n := range notes {
		fmt.Fprintln(out, n)
	}
	_, err = upgrade.Run(ctx, upgrade.Config{
		State:         store,
		Plan:          plan,
		Talos:         talos,
		Kube:          cs,
		Gates:         gates,
		After:         after,
		Resume:        f.resume,
		Out:           out,
		Log:           a.log.With("step", "upgrade"),
		GateTimeout:   f.gateTimeout,
		RebootTimeout: f.rebootTimeout,
		Drain:         upgrade.DrainOptions{Timeout: f.drainTimeout},
	})
	if err != nil {
		var se *upgrade.StepError
		if errors.As(err, &se) {
			return &exitError{code: 1, err: fmt.Errorf("%w\nfix it, then run `rackboot upgrade --talos %s --resume` (progress is in %s)", err, target, store.Where())}
		}
		return &exitError{code: 1, err: err}
	}
	if r.Cluster.TalosVersion != target.String() {
		where, err := a.writeTalosVersion(ctx, target.String())
		if err != nil {
			fmt.Fprintf(out, "the rack file still says talosVersion: %s (%v): set it to %s so that new and reinstalled machines get %s\n", r.Cluster.TalosVersion, err, target, target)
			return nil
		}
		fmt.Fprintf(out, "%s: talosVersion %s → %s (comments and layout kept), so new and reinstalled machines get %s\n", where, r.Cluster.TalosVersion, target, target)
		if a.kube == nil {
			reportServeReload(ctx, a.StateDir(), out, "", "the next one reads the new rack file")
		}
	}
	return nil
}

// setRackTalosVersion writes the upgrade's version into the rack file
// (rackedit: only that value changes), atomically.
func setRackTalosVersion(path, version string) error {
	return editRack(path, func(src []byte) ([]byte, error) { return rackedit.SetTalosVersion(src, version) })
}

// editRack rewrites the rack file with edit's result, atomically (and not
// over a file changed meanwhile: writeRack).
func editRack(path string, edit func(src []byte) ([]byte, error)) error {
	src, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	out, err := edit(src)
	if err != nil {
		return err
	}
	return writeRack(path, src, out)
}

// upgradeMachines turns the rack into the upgrade's machines: static
// addresses, and the Image Factory installer of each machine's schematic at
// the target version (what the generated config's machine.install.image
// would be with talosVersion set to it).
func upgradeMachines(r *profiles.Rack, target upgrade.Version) ([]upgrade.Machine, error) {
	var out []upgrade.Machine
	for i := range r.Machines {
		m := &r.Machines[i]
		id, err := profiles.SchematicID(r.Schematic(m))
		if err != nil {
			return nil, fmt.Errorf("machine %s: %w", m.Name, err)
		}
		um := upgrade.Machine{
			Name:         m.Name,
			ControlPlane: m.Role == profiles.RoleControlPlane,
			Installer:    profiles.InstallerImage(id, target.String()),
		}
		if m.Address != "" && m.Address != "dhcp" {
			p, err := netip.ParsePrefix(m.Address)
			if err != nil {
				return nil, fmt.Errorf("machine %s: address %q: %w", m.Name, m.Address, err)
			}
			um.Address = p.Addr().String()
		}
		out = append(out, um)
	}
	return out, nil
}

// checkOfflineInstallers: an offline rack's nodes pull the installer from
// rackboot's mirror only, so the store must hold the new ones first.
func checkOfflineInstallers(a *app, r *profiles.Rack, machines []upgrade.Machine, target upgrade.Version) error {
	if !r.Cluster.Offline {
		return nil
	}
	st, err := openImageStore(a)
	if err != nil {
		return err
	}
	var missing []string
	seen := map[string]bool{}
	for _, m := range machines {
		if seen[m.Installer] {
			continue
		}
		seen[m.Installer] = true
		if err := st.Has(m.Installer); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%v)", m.Installer, err))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("the rack is offline (offline: true) but the image store %s lacks the %s installer(s):\n  %s\nset talosVersion: %s in the rack file and run `rackboot assets pull` where there is internet, then come back",
			st.Dir(), target, strings.Join(missing, "\n  "), target)
	}
	return nil
}

// upgradeGates builds the gates from what the cluster runs: etcd always;
// Ceph when Rook's CephCluster API is served; CockroachDB when its
// StatefulSet exists. notes say which gates are left out and why.
func upgradeGates(ctx context.Context, cs kubernetes.Interface, dyn dynamic.Interface, talos upgrade.Talos, plan upgrade.Plan) (before, after []upgrade.Gate, notes []string) {
	addrs := map[string]string{}
	for _, n := range plan.Nodes {
		addrs[n.Name] = n.Address
	}
	resolve := func(ctx context.Context, name string) (string, error) {
		if a := addrs[name]; a != "" {
			return a, nil
		}
		return upgrade.NodeAddress(ctx, cs, name)
	}
	before = append(before, upgrade.EtcdGate(talos, plan.ControlPlanes(), resolve))
	if _, err := cs.Discovery().ServerResourcesForGroupVersion(upgrade.CephClusterGVR.GroupVersion().String()); err != nil && apierrors.IsNotFound(err) {
		notes = append(notes, "no Ceph gate: Rook-Ceph is not installed (no ceph.rook.io/v1 API)")
	} else {
		ceph := upgrade.CephGate(dyn, rook.Namespace, rook.ClusterName)
		before = append(before, ceph)
		after = append(after, ceph)
	}
	if _, err := cs.AppsV1().StatefulSets(cockroach.DefaultNamespace).Get(ctx, cockroach.StatefulSet, metav1.GetOptions{}); err != nil && apierrors.IsNotFound(err) {
		notes = append(notes, fmt.Sprintf("no CockroachDB gate: no StatefulSet %s/%s", cockroach.DefaultNamespace, cockroach.StatefulSet))
	} else {
		before = append(before, upgrade.CockroachGate(cs, cockroach.DefaultNamespace,
			upgrade.PodProxyVars{REST: cs.CoreV1().RESTClient(), Namespace: cockroach.DefaultNamespace}))
	}
	if _, err := dyn.Resource(upgrade.PostgresClusterGVR).Namespace(cnpg.DefaultNamespace).Get(ctx, cnpg.ClusterName, metav1.GetOptions{}); err != nil && (apierrors.IsNotFound(err) || meta.IsNoMatchError(err)) {
		notes = append(notes, fmt.Sprintf("no PostgreSQL gate: no CloudNativePG Cluster %s/%s", cnpg.DefaultNamespace, cnpg.ClusterName))
	} else {
		pg := upgrade.PostgresGate(dyn, cnpg.DefaultNamespace, cnpg.ClusterName)
		before = append(before, pg)
		after = append(after, pg)
	}
	before = append(before, upgrade.NodesReadyGate(cs))
	return before, after, notes
}
