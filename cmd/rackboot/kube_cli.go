package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/handoff"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/kubestate"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/status"
)

// The laptop's commands against an in-cluster rackboot (`--kube`): status,
// machines, machine reinstall, power and upgrade read the rack, the
// secrets bundle, the BMC passwords and the machine records from the
// namespace rackboot handoff filled (package kubestate) instead of the
// state directory, and change machine records there, where every replica
// of serve --kube sees them through its watch. Nothing is made in the
// state directory. RACKBOOT_KUBE=1 makes --kube the default, the way
// RACKBOOT_RACK and RACKBOOT_STATE give -f and --state theirs.

// kubeEnv gives --kube its default.
const kubeEnv = "RACKBOOT_KUBE"

// kubeFlagMark marks the --kube flags registerKube adds (serve's own
// --kube means something else: run as a replica).
const kubeFlagMark = "rackboot/kube-cli"

// kubeCallTimeout bounds reading the cluster's state for one command.
const kubeCallTimeout = 30 * time.Second

// registerKube adds --kube, --namespace and (unless cmd has its own)
// --kubeconfig to cmd.
func registerKube(cmd *cobra.Command) {
	fl := cmd.Flags()
	def, _ := strconv.ParseBool(os.Getenv(kubeEnv))
	fl.Bool("kube", def, "work on the rackboot running in Kubernetes (after rackboot handoff): the rack, secrets, BMC passwords and machine states in its namespace instead of the state directory (default $"+kubeEnv+")")
	_ = fl.SetAnnotation("kube", kubeFlagMark, []string{"true"})
	fl.String("namespace", "", "with --kube: the namespace rackboot runs in (default $POD_NAMESPACE, else "+handoff.Namespace+", where rackboot handoff puts it)")
	_ = fl.SetAnnotation("namespace", kubeFlagMark, []string{"true"})
	if fl.Lookup("kubeconfig") == nil {
		fl.String("kubeconfig", "", "with --kube: the cluster's kubeconfig (default: kubeconfig in the state directory, else $KUBECONFIG or ~/.kube/config)")
		_ = fl.SetAnnotation("kubeconfig", kubeFlagMark, []string{"true"})
	}
}

// kubeOn reports whether cmd runs with --kube (from the flag or
// RACKBOOT_KUBE). --namespace or its --kubeconfig without it, or a RACKBOOT_KUBE that is not
// a boolean, is an error that says what to write.
func kubeOn(cmd *cobra.Command) (bool, error) {
	f := cmd.Flags().Lookup("kube")
	if f == nil || f.Annotations[kubeFlagMark] == nil {
		return false, nil
	}
	if !f.Changed {
		if v := os.Getenv(kubeEnv); v != "" {
			if _, err := strconv.ParseBool(v); err != nil {
				return false, fmt.Errorf("%s=%q: write %s=1 to work on the rackboot in Kubernetes, or %s=0", kubeEnv, v, kubeEnv, kubeEnv)
			}
		}
	}
	on := f.Value.String() == "true"
	if !on {
		for _, name := range []string{"namespace", "kubeconfig"} {
			if g := cmd.Flags().Lookup(name); g != nil && g.Changed && g.Annotations[kubeFlagMark] != nil {
				return false, fmt.Errorf("--%s is for --kube only: add --kube, or leave it out", name)
			}
		}
	}
	return on, nil
}

// kubeNamespace is --namespace, else $POD_NAMESPACE, else handoff's.
func kubeNamespace(cmd *cobra.Command) string {
	if f := cmd.Flags().Lookup("namespace"); f != nil && f.Value.String() != "" {
		return f.Value.String()
	}
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	return handoff.Namespace
}

// openKube opens the cluster's rackboot state when cmd runs with --kube
// (a.kube; nil otherwise). It makes no call and only reads the kubeconfig.
func (a *app) openKube(cmd *cobra.Command) error {
	on, err := kubeOn(cmd)
	if err != nil || !on {
		return err
	}
	path := ""
	if f := cmd.Flags().Lookup("kubeconfig"); f != nil {
		path = f.Value.String()
	}
	cfg, from, err := a.restConfig(path)
	if err != nil {
		return fmt.Errorf("--kube: %w", err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("--kube: Kubernetes client: %w", err)
	}
	st, err := kubestate.New(cs, kubeNamespace(cmd), kubestate.WithLogger(a.log.With("service", "kubestate")))
	if err != nil {
		return fmt.Errorf("--kube: %w", err)
	}
	a.log.Debug("state from Kubernetes", "namespace", st.Namespace(), "kubeconfig", from, "server", cfg.Host)
	a.kube = st
	return nil
}

// kubeCtx bounds one command's reads from the cluster.
func kubeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if ctx == nil {
		ctx = context.Background()
	}
	return context.WithTimeout(ctx, kubeCallTimeout)
}

// rackWhere names the rack: its file, or its ConfigMap under --kube.
func (a *app) rackWhere() string {
	if a.kube != nil {
		return "configmap " + a.kube.Namespace() + "/" + kubestate.RackName
	}
	return a.rackPath
}

// loadKubeRack is loadRack under --kube: the rack file from the ConfigMap
// rackboot-rack, with the same checks.
func (a *app) loadKubeRack(cmd *cobra.Command) (*profiles.Rack, error) {
	ctx, cancel := kubeCtx(cmd.Context())
	defer cancel()
	where := a.rackWhere()
	data, err := a.kube.RackFile(ctx)
	if err != nil {
		return nil, fmt.Errorf("--kube: %w", err)
	}
	r, err := profiles.Load(where, data)
	if err != nil {
		var ps profiles.Problems
		if errors.As(err, &ps) {
			fmt.Fprintln(cmd.ErrOrStderr(), ps.Error())
			return nil, &exitError{code: 1, err: fmt.Errorf("the rack file in %s has %d problem(s); fix them there (kubectl edit)", where, len(ps))}
		}
		return nil, err
	}
	if ps := r.Validate(); len(ps) > 0 {
		fmt.Fprintln(cmd.ErrOrStderr(), ps.Error())
		if ps.Errors() {
			return nil, &exitError{code: 1, err: fmt.Errorf("the rack file in %s is not valid; fix the errors above there (kubectl edit)", where)}
		}
	}
	return r, nil
}

// bmcPasswords are the BMC passwords: from the Secret
// rackboot-bmc-passwords under --kube, else the state directory (and the
// environment's either way). Neither creates anything.
func (a *app) bmcPasswords(ctx context.Context) (*profiles.BMCPasswords, error) {
	if a.kube == nil {
		return profiles.LoadBMCPasswords(a.StateDir(), nil)
	}
	ctx, cancel := kubeCtx(ctx)
	defer cancel()
	pw, err := a.kube.BMCPasswords(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("--kube: %w", err)
	}
	return pw, nil
}

// kubeMachines are the machine records in the cluster, as every replica
// of serve --kube sees them: the rack's machines and the discovered ones
// (keyed by MAC). Nothing is written.
func (a *app) kubeMachines(ctx context.Context) ([]inventory.Machine, error) {
	inv, err := a.kubeInventory(ctx)
	if err != nil {
		return nil, err
	}
	return inv.Machines(), nil
}

// kubeInventory opens the machine records in the cluster; a change made
// through it (Reset) is saved to the machine's record at once, conflict
// safe, and every replica takes it in through its watch.
func (a *app) kubeInventory(ctx context.Context) (*inventory.Store, error) {
	ctx, cancel := kubeCtx(ctx)
	defer cancel()
	inv, err := a.kube.Inventory(ctx, inventory.WithLogger(a.log.With("service", "inventory")))
	if err != nil {
		return nil, fmt.Errorf("--kube: %w", err)
	}
	return inv, nil
}

// kubeStatus is status --kube: the records in the cluster.
func (a *app) kubeStatus(ctx context.Context, offline bool, server string) ([]inventory.Machine, error) {
	if offline || server != "" {
		return nil, errors.New("--kube reads the machine states in the cluster: leave out --offline and --server")
	}
	return a.kubeMachines(ctx)
}

// machinesSnapshot is inventorySnapshot, or under --kube the records in
// the cluster.
func (a *app) machinesSnapshot(ctx context.Context) ([]inventory.Machine, time.Time, string, error) {
	if a.kube == nil {
		return inventorySnapshot(ctx, a.StateDir())
	}
	ms, err := a.kubeMachines(ctx)
	return ms, time.Now(), fromKube, err
}

// reinstallMachine is machine reinstall's change: under --kube on the
// machine's record in the cluster (replicas see it through their watch),
// else through the running serve or in the state directory.
func (a *app) reinstallMachine(ctx context.Context, name string) error {
	if a.kube == nil {
		return changeMachine(ctx, a.StateDir(), "/machines/"+name+"/reinstall",
			func(st *inventory.Store) error { return st.Reset(name) })
	}
	inv, err := a.kubeInventory(ctx)
	if err != nil {
		return err
	}
	return inv.Reset(name)
}

// kubeServed is fetchServed under --kube: the records in the cluster, for
// reinstall --power's preflight and its watch of the install.
func (a *app) kubeServed(ctx context.Context) (*status.MachinesResponse, error) {
	ms, err := a.kubeMachines(ctx)
	if err != nil {
		return nil, err
	}
	return &status.MachinesResponse{Time: time.Now(), Stages: inventory.Stages(), Machines: ms}, nil
}

// forgetMachine is machine forget's change: under --kube the discovered
// machine's record in the cluster is deleted (every replica drops it
// through its watch), else through the running serve or in the state
// directory.
func (a *app) forgetMachine(ctx context.Context, mac string) error {
	if a.kube == nil {
		return changeMachine(ctx, a.StateDir(), "/machines/"+mac+"/forget",
			func(st *inventory.Store) error { return st.Forget(mac) })
	}
	inv, err := a.kubeInventory(ctx)
	if err != nil {
		return err
	}
	if err := inv.Forget(mac); err != nil {
		if errors.Is(err, inventory.ErrUnknownMachine) {
			return fmt.Errorf("%w: no discovered machine with this MAC in namespace %s (list them with rackboot machines --kube)", err, a.kube.Namespace())
		}
		return fmt.Errorf("--kube: %w", err)
	}
	return nil
}
