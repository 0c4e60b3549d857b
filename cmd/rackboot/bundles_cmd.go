package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/bundles/cockroach"
	"github.com/dotfile/rackboot/profiles"
)

// cockroachCertsDir is where the CockroachDB certificates live in the state
// directory.
const cockroachCertsDir = "cockroach"

// bundleFlags are the flags render and apply share.
type bundleFlags struct {
	rookDir string
	// migrate applies a database engine other than the one holding data.
	migrate bool
}

func (f *bundleFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.rookDir, "rook-manifests", "", "folder of Rook's upstream manifests (default: the ones embedded by make bundles)")
	cmd.Flags().BoolVar(&f.migrate, "migrate", false, "apply the rack file's database engine even though the other engine holds data (after you moved it: see docs/DESIGN.md, Databases for apps)")
}

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		cmd := &cobra.Command{
			Use:   "bundles",
			Short: "Render or apply the platform bundles (Rook-Ceph, then CockroachDB or PostgreSQL)",
		}
		cmd.AddCommand(newBundlesRenderCmd(a), newBundlesApplyCmd(a))
		return cmd
	})
}

func newBundlesRenderCmd(a *app) *cobra.Command {
	var f bundleFlags
	var showSecrets bool
	cmd := &cobra.Command{
		Use:   "render",
		Short: "Print every object of the bundles as YAML (Secret values redacted unless --show-secrets)",
		Long: `Print every object rackboot applies, as YAML documents separated by ---,
in apply order. CockroachDB's certificates are created in the state directory
on first use (never regenerated). Secret values are shown as REDACTED unless
--show-secrets is given.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bs, err := a.renderBundles(cmd, f)
			if err != nil {
				return err
			}
			return bundles.WriteYAML(cmd.OutOrStdout(), bs, !showSecrets)
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&showSecrets, "show-secrets", false, "print Secret values (CockroachDB's private keys) instead of REDACTED")
	return cmd
}

func newBundlesApplyCmd(a *app) *cobra.Command {
	var (
		f          bundleFlags
		kubeconfig string
		wait       bool
		timeout    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Apply the bundles with server-side apply, then wait on their health gates",
		Long: `Apply each bundle in order (Rook-Ceph, then CockroachDB) with server-side
apply (field manager rackboot), waiting on each bundle's health gates before
the next one unless --wait=false. Nothing is ever deleted.

The kubeconfig is --kubeconfig, else the admin kubeconfig in the state
directory (written by rackboot kubeconfig), else $KUBECONFIG.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			bs, err := a.renderBundles(cmd, f)
			if err != nil {
				return err
			}
			cfg, path, err := a.restConfig(kubeconfig)
			if err != nil {
				return err
			}
			a.log.Info("applying bundles", "kubeconfig", path, "server", cfg.Host)
			if err := applyBundles(cmd, a, cfg, bs, wait, timeout, f.migrate); err != nil {
				return err
			}
			r, err := a.loadRack(cmd)
			if err != nil {
				return err
			}
			if r.Database.EngineOrDefault() == profiles.EngineCockroachDB {
				certs := filepath.Join(a.StateDir(), cockroachCertsDir)
				fmt.Fprintf(cmd.OutOrStdout(), "CockroachDB (client certificates in %s):\n  %s\n", certs, cockroach.ConnectionString("", certs))
			}
			return writeDBList(cmd.OutOrStdout(), r, a.StateDir())
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: kubeconfig in the state directory, else $KUBECONFIG)")
	cmd.Flags().BoolVar(&wait, "wait", true, "wait on each bundle's health gates")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Minute, "how long to wait on each bundle's gates")
	return cmd
}

// renderBundles loads the rack and renders the bundles for it.
func (a *app) renderBundles(cmd *cobra.Command, f bundleFlags) ([]bundles.Bundle, error) {
	r, err := a.loadRack(cmd)
	if err != nil {
		return nil, err
	}
	return upBundles(cmd, r, a.StateDir(), f)
}

// rackParams turns the rack into bundle parameters: every machine is a Ceph
// node with its Ceph device filter; CockroachDB runs on the workers, and on
// the control planes too while there are fewer than three workers (Talos
// then allows scheduling on control planes).
func rackParams(r *profiles.Rack, stateDir string) bundles.Params {
	var p bundles.Params
	var workers, cps []string
	for i := range r.Machines {
		m := &r.Machines[i]
		p.Rook.Nodes = append(p.Rook.Nodes, bundles.RookNode{Name: m.Name, DeviceFilter: r.CephDisks(m)})
		if m.Role == profiles.RoleControlPlane {
			cps = append(cps, m.Name)
		} else {
			workers = append(workers, m.Name)
		}
	}
	p.Cockroach.Nodes = workers
	if len(workers) < 3 {
		p.Cockroach.Nodes = append(p.Cockroach.Nodes, cps...)
	}
	p.CertsDir = filepath.Join(stateDir, cockroachCertsDir)
	// The apps' database: the same nodes as CockroachDB's.
	p.Engine = r.Database.EngineOrDefault()
	for _, app := range r.Database.Apps {
		p.Apps = append(p.Apps, bundles.App{Name: app.Name, Namespace: app.Namespace})
	}
	p.Postgres.Nodes = p.Cockroach.Nodes
	p.PostgresCertsDir = filepath.Join(stateDir, postgresCertsDir)
	p.PasswordsDir = filepath.Join(stateDir, databasePasswordsDir)
	return p
}

// restConfig loads the kubeconfig: the flag, else the state directory's
// admin kubeconfig, else $KUBECONFIG (or ~/.kube/config).
func (a *app) restConfig(flag string) (*rest.Config, string, error) {
	path := flag
	if path == "" {
		state := filepath.Join(a.StateDir(), "kubeconfig")
		if _, err := os.Stat(state); err == nil {
			path = state
		}
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if path != "" {
		rules.ExplicitPath = path
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		if path == "" {
			return nil, "", fmt.Errorf("load kubeconfig (no --kubeconfig, no %s; write one with `rackboot kubeconfig`): %w",
				filepath.Join(a.StateDir(), "kubeconfig"), err)
		}
		return nil, "", fmt.Errorf("load kubeconfig %s: %w", path, err)
	}
	if path == "" {
		path = "$KUBECONFIG"
	}
	return cfg, path, nil
}

// applyBundles applies each bundle, then (with wait) waits on its gates
// before the next: CockroachDB's volumes need Ceph healthy.
func applyBundles(cmd *cobra.Command, a *app, cfg *rest.Config, bs []bundles.Bundle, wait bool, timeout time.Duration, migrate bool) error {
	out := cmd.OutOrStdout()
	if err := checkEngineSwitch(cmd.Context(), cfg, bs, migrate); err != nil {
		return err
	}
	for _, b := range bs {
		fmt.Fprintf(out, "bundle %s: applying %d objects\n", b.Name, len(b.Objects))
		res, err := bundles.Apply(cmd.Context(), cfg, b.Objects,
			bundles.WithLogger(a.log),
			bundles.WithProgress(func(r bundles.ObjectResult) { a.log.Debug("applied", "object", r.Ref.String(), "action", r.Action) }))
		fmt.Fprintf(out, "bundle %s: %d created, %d configured, %d unchanged, %d failed\n", b.Name, res.Created, res.Configured, res.Unchanged, res.Failed)
		if err != nil {
			return fmt.Errorf("apply bundle %s: %w", b.Name, err)
		}
		if !wait {
			continue
		}
		fmt.Fprintf(out, "bundle %s: waiting up to %s on %d health gates\n", b.Name, timeout, len(b.Gates))
		err = bundles.WaitGates(cmd.Context(), cfg, b.Gates, timeout, func(s bundles.GateStatus) { printGate(out, b.Name, s) }, bundles.WithLogger(a.log))
		if err != nil {
			return fmt.Errorf("bundle %s is not healthy: %w", b.Name, err)
		}
	}
	return nil
}

func printGate(w io.Writer, bundle string, s bundles.GateStatus) {
	if s.Passed {
		fmt.Fprintf(w, "bundle %s: ok: %s\n", bundle, s.Gate)
		return
	}
	fmt.Fprintf(w, "bundle %s: waiting: %s: %s\n", bundle, s.Gate, s.Why)
}
