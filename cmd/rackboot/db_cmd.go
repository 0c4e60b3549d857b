package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/bundles/appdb"
	"github.com/dotfile/rackboot/bundles/cnpg"
	"github.com/dotfile/rackboot/bundles/cockroach"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/rackedit"
)

// Folders of the state directory the databases use.
const (
	postgresCertsDir     = "postgres"
	databasePasswordsDir = "database-passwords"
)

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		cmd := &cobra.Command{
			Use:   "db",
			Short: "The apps' databases: list them, add one",
		}
		cmd.AddCommand(newDBListCmd(a), newDBAddCmd(a))
		return cmd
	})
}

func newDBListCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "Show the database engine, each app's database and user, and where its Secret is",
		Long: `Show the rack file's database engine, where apps connect, and for each app
of database.apps its database, its user and the Secret <app>-database in its
namespace (uri, host, port, user, password, database, sslmode, ca.crt) that
its pods mount. Reads the rack file and the state directory; creates nothing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := a.loadRack(cmd)
			if err != nil {
				return err
			}
			return writeDBList(cmd.OutOrStdout(), r, a.StateDir())
		},
	}
}

// dbServer is where the apps of engine connect, and the CA's Secret.
func dbServer(engine string) (host string, port int, caSecret string) {
	if engine == profiles.EnginePostgres {
		return cnpg.Host(cnpg.DefaultNamespace), cnpg.Port, cnpg.DefaultNamespace + "/" + cnpg.ServerCASecret
	}
	return fmt.Sprintf("%s.%s.svc", cockroach.PublicService, cockroach.DefaultNamespace), cockroach.GRPCPort,
		cockroach.DefaultNamespace + "/" + cockroach.NodeSecret + " (ca.crt)"
}

// writeDBList prints the engine and the apps; it only reads.
func writeDBList(w io.Writer, r *profiles.Rack, state string) error {
	engine := r.Database.EngineOrDefault()
	host, port, ca := dbServer(engine)
	fmt.Fprintf(w, "engine    %s\nserver    %s:%d (sslmode=verify-full)\nCA        Secret %s\n", engine, host, port, ca)
	if len(r.Database.Apps) == 0 {
		fmt.Fprintf(w, "\nno apps: add one with `rackboot db add NAME --namespace NS`\n")
		return nil
	}
	names := make([]string, len(r.Database.Apps))
	for i, app := range r.Database.Apps {
		names[i] = app.Name
	}
	pw, err := appdb.LoadPasswords(filepath.Join(state, databasePasswordsDir), names)
	if err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tNAMESPACE\tDATABASE\tUSER\tSECRET\tPASSWORD")
	for _, app := range r.Database.Apps {
		state := "kept in " + appdb.PasswordFile(filepath.Join(state, databasePasswordsDir), app.Name)
		if pw[app.Name] == "" {
			state = "not made yet (rackboot bundles apply)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s/%s\t%s\n", app.Name, app.Namespace, appdb.SQLName(app.Name), appdb.SQLName(app.Name),
			app.Namespace, appdb.SecretName(app.Name), state)
	}
	return tw.Flush()
}

type dbAddFlags struct {
	namespace string
	apply     bool
	bundle    bundleFlags
	kubecfg   string
	wait      bool
	timeout   time.Duration
}

func newDBAddCmd(a *app) *cobra.Command {
	var f dbAddFlags
	cmd := &cobra.Command{
		Use:   "add NAME --namespace NS",
		Short: "Add an app to the rack file's database.apps, then apply its database, user and Secret",
		Long: `Add {name: NAME, namespace: NS} to database.apps in the rack file (every
other line, comment and blank line kept), check the rack, write it, then apply
the database bundles so that the app gets its database, its user and the
Secret NAME-database in NS (--apply=false: only write the rack file).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runDBAdd(cmd, a, args[0], &f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.namespace, "namespace", "", "the namespace the app's pods run in, where its Secret goes (required)")
	fl.BoolVar(&f.apply, "apply", true, "apply the database bundles after writing the rack file")
	fl.StringVar(&f.kubecfg, "kubeconfig", "", "kubeconfig file (default: kubeconfig in the state directory, else $KUBECONFIG)")
	fl.BoolVar(&f.wait, "wait", true, "wait on the database bundles' health gates")
	fl.DurationVar(&f.timeout, "timeout", 15*time.Minute, "how long to wait on each bundle's gates")
	f.bundle.add(cmd)
	_ = cmd.MarkFlagRequired("namespace")
	return cmd
}

func runDBAdd(cmd *cobra.Command, a *app, name string, f *dbAddFlags) error {
	path := a.rackPath
	src, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read the rack file: %w", err)
	}
	out, err := rackedit.AddDatabaseApp(src, profiles.DatabaseApp{Name: name, Namespace: f.namespace})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	r, err := profiles.Load(path, out)
	if err != nil {
		return fmt.Errorf("%s with app %s added does not load: %w", path, name, err)
	}
	if ps := r.Validate(); ps.Errors() {
		fmt.Fprint(cmd.ErrOrStderr(), ps.Error())
		return &exitError{code: 1, err: fmt.Errorf("%s with app %s added is not valid (nothing written): fix the problems above, or give another name or namespace", path, name)}
	}
	if err := writeRack(path, src, out); err != nil {
		return err
	}
	fmt.Fprintf(cmd.OutOrStdout(), "added database app %s (namespace %s) to %s\n", name, f.namespace, path)
	if !f.apply {
		fmt.Fprintf(cmd.OutOrStdout(), "not applied (--apply=false): run `rackboot bundles apply` to create its database, user and Secret\n")
		return nil
	}
	bs, err := upBundles(cmd, r, a.StateDir(), f.bundle)
	if err != nil {
		return err
	}
	cfg, kpath, err := a.restConfig(f.kubecfg)
	if err != nil {
		return err
	}
	a.log.Info("applying the database bundles", "kubeconfig", kpath, "server", cfg.Host)
	// Rook-Ceph is the first bundle and is not the app's business.
	if err := applyBundles(cmd, a, cfg, bs[1:], f.wait, f.timeout, f.bundle.migrate); err != nil {
		return err
	}
	return writeDBList(cmd.OutOrStdout(), r, a.StateDir())
}

// dbFound is what a cluster holds of each engine.
type dbFound struct {
	// Cockroach: the StatefulSet exists; Postgres: the Cluster exists.
	Cockroach, Postgres bool
	// The volumes (PVC names) holding each engine's data.
	CockroachPVCs, PostgresPVCs []string
}

// engineSwitchRefusal says why applying engine over what the cluster
// holds would lose data, or is nil: the other engine has volumes and
// --migrate was not given.
func engineSwitchRefusal(engine string, found dbFound, migrate bool) error {
	var other, ns string
	var pvcs []string
	switch engine {
	case profiles.EnginePostgres:
		other, ns, pvcs = "CockroachDB", cockroach.DefaultNamespace, found.CockroachPVCs
	default:
		other, ns, pvcs = "PostgreSQL (CloudNativePG)", cnpg.DefaultNamespace, found.PostgresPVCs
	}
	if len(pvcs) == 0 || migrate {
		return nil
	}
	return fmt.Errorf("the rack file asks for database engine %s, but %s runs in namespace %s with data on %d volume(s) (%s): "+
		"switching would point every app's Secret at an empty %s database, and the apps would no longer see their data "+
		"(%s and its volumes stay; nothing is deleted). Dump the data and restore it into the new engine first "+
		"(docs/DESIGN.md, \"Databases for apps\"), then run again with --migrate; or set database.engine back in the rack file",
		engine, other, ns, len(pvcs), strings.Join(pvcs, ", "), engine, other)
}

// probeDatabases reads what the cluster holds of each engine.
func probeDatabases(ctx context.Context, cfg *rest.Config) (dbFound, error) {
	var f dbFound
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return f, fmt.Errorf("kubernetes client: %w", err)
	}
	get := func(gvr schema.GroupVersionResource, ns, name string) (bool, error) {
		_, err := dyn.Resource(gvr).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err == nil:
			return true, nil
		case apierrors.IsNotFound(err), meta.IsNoMatchError(err):
			return false, nil
		default:
			return false, err
		}
	}
	pvcs := func(ns, selector string) ([]string, error) {
		l, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "persistentvolumeclaims"}).Namespace(ns).
			List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return nil, err
		}
		var out []string
		for _, p := range l.Items {
			out = append(out, p.GetName())
		}
		return out, nil
	}
	if f.Cockroach, err = get(schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "statefulsets"}, cockroach.DefaultNamespace, cockroach.StatefulSet); err != nil {
		return f, fmt.Errorf("look for CockroachDB: %w", err)
	}
	if f.Cockroach {
		if f.CockroachPVCs, err = pvcs(cockroach.DefaultNamespace, "app.kubernetes.io/name=cockroachdb"); err != nil {
			return f, fmt.Errorf("look for CockroachDB's volumes: %w", err)
		}
	}
	f.Postgres, err = get(schema.GroupVersionResource{Group: "postgresql.cnpg.io", Version: "v1", Resource: "clusters"}, cnpg.DefaultNamespace, cnpg.ClusterName)
	if err != nil {
		return f, fmt.Errorf("look for PostgreSQL: %w", err)
	}
	if f.Postgres {
		// CloudNativePG labels its volumes cnpg.io/cluster=<name>
		// (docs/src/labels_annotations.md).
		if f.PostgresPVCs, err = pvcs(cnpg.DefaultNamespace, "cnpg.io/cluster="+cnpg.ClusterName); err != nil {
			return f, fmt.Errorf("look for PostgreSQL's volumes: %w", err)
		}
	}
	return f, nil
}

// checkEngineSwitch refuses bundles that would switch the database engine
// over data, unless migrate.
func checkEngineSwitch(ctx context.Context, cfg *rest.Config, bs []bundles.Bundle, migrate bool) error {
	engine := ""
	for _, b := range bs {
		switch b.Name {
		case bundles.CockroachBundle:
			engine = profiles.EngineCockroachDB
		case bundles.PostgresBundle:
			engine = profiles.EnginePostgres
		}
	}
	if engine == "" {
		return nil
	}
	found, err := probeDatabases(ctx, cfg)
	if err != nil {
		return fmt.Errorf("check the database engine before applying: %w", err)
	}
	if err := engineSwitchRefusal(engine, found, migrate); err != nil {
		return &exitError{code: 1, err: err}
	}
	return nil
}
