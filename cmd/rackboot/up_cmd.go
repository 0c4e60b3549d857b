package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/dotfile/rackboot/bringup"
	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/bundles/cnpg"
	"github.com/dotfile/rackboot/bundles/cockroach"
	"github.com/dotfile/rackboot/internal/atomicfile"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/status"
)

// upFlags are `rackboot up`'s flags: serve's, plus the bring-up's.
type upFlags struct {
	serve       serveFlags
	bundle      bundleFlags
	timeout     time.Duration
	skipBundles bool
	serving     bool
	exitWhenUp  bool
	// power: once serve answers, netboot once and power every machine
	// with a bmc: that is not installed (power_netboot.go).
	power bool
	// bootstrapEndpoint dials the Talos API somewhere else than the first
	// control plane's address (a tunnel; tests).
	bootstrapEndpoint string
	// skipDiskCheck applies Rook without reading the Ceph disks first.
	skipDiskCheck bool
	// nodes: NAME=HOST[:PORT] where a machine's Talos API answers for the
	// disk check (as `rackboot disks --node`).
	nodes []string
}

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		f := &upFlags{}
		cmd := &cobra.Command{
			Use:   "up",
			Short: "Netboot the rack and bring the cluster up: bootstrap etcd once, wait for the VIP and the nodes, apply the bundles",
			Long: `Runs what ` + "`rackboot serve`" + ` runs and, beside it, the bring-up:

  1. wait until the first control plane (in rack file order) reports installed
  2. bootstrap etcd on it, through its own address and the Talos API, exactly
     once (recorded in bootstrap.json in the state directory)
  3. wait until the Kubernetes API answers on https://<vip>:6443/readyz
  4. wait until every machine of the rack is a Ready node
  5. read every machine's Ceph disks through its Talos API and stop when one
     is not clean (Rook would refuse it): the message names the machine, the
     disk and the ` + "`rackboot disks wipe`" + ` command (--skip-disk-check goes on)
  6. apply each bundle (Rook-Ceph, then CockroachDB) and wait on its health gates

Each step has --timeout; on failure the message says what is not healthy and
what to look at. Every step is idempotent: run ` + "`rackboot up`" + ` again to continue.
The admin talosconfig and kubeconfig are written to the state directory.
Without --exit, rackboot keeps serving after the cluster is up (Ctrl-C stops it).`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return runUp(cmd.Context(), a, cmd, f)
			},
		}
		f.serve.register(cmd)
		f.bundle.add(cmd)
		fl := cmd.Flags()
		fl.DurationVar(&f.timeout, "timeout", bringup.DefaultStepTimeout, "time limit of each bring-up step")
		fl.BoolVar(&f.skipBundles, "skip-bundles", false, "stop once the nodes are Ready: apply no bundle")
		fl.BoolVar(&f.serving, "serve", true, "netboot the rack meanwhile (--serve=false: the machines are installed already, e.g. from USB)")
		fl.BoolVar(&f.exitWhenUp, "exit", false, "stop serving and exit once the cluster is up")
		fl.BoolVar(&f.power, "power", false, "power the machines that are not installed through their BMCs (bmc: in the rack file), with a network boot once")
		fl.StringVar(&f.bootstrapEndpoint, "bootstrap-endpoint", "", "dial the Talos API at host:port instead of the first control plane's address (e.g. through a tunnel)")
		_ = fl.MarkHidden("bootstrap-endpoint")
		fl.BoolVar(&f.skipDiskCheck, "skip-disk-check", false, "apply Rook without first checking that every Ceph disk is clean (Rook leaves out the disks it refuses)")
		fl.StringArrayVar(&f.nodes, "node", nil, "for the disk check, reach machine NAME's Talos API at HOST[:PORT] instead of its rack address: NAME=HOST[:PORT] (repeatable; needed for machines on DHCP)")
		return cmd
	})
}

// runUp runs serve and the bring-up driver together.
func runUp(ctx context.Context, a *app, cmd *cobra.Command, f *upFlags) error {
	out := cmd.OutOrStdout()
	r, err := a.loadRack(cmd)
	if err != nil {
		return err
	}
	plan, err := upPlan(r)
	if err != nil {
		return err
	}
	first, err := bringup.FirstControlPlane(plan.Nodes, plan.VIP)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	// An offline rack installs only from the image store: check it first.
	if err := checkOfflineImages(a, r); err != nil {
		return &exitError{code: 1, err: err}
	}
	state := a.StateDir()
	secrets, err := a.clusterSecrets()
	if err != nil {
		return err
	}

	// Client configs: written for the operator (the hints name them) and
	// used by the driver.
	tcData, err := profiles.Talosconfig(r, secrets)
	if err != nil {
		return err
	}
	plan.TalosconfigPath = filepath.Join(state, "talosconfig")
	if err := atomicfile.Write(plan.TalosconfigPath, tcData, 0o600); err != nil {
		return fmt.Errorf("write talosconfig: %w", err)
	}
	talosconfig, err := clientconfig.FromBytes(tcData)
	if err != nil {
		return fmt.Errorf("read back the talosconfig: %w", err)
	}
	kcData, err := profiles.AdminKubeconfig(r, secrets, time.Now())
	if err != nil {
		return err
	}
	plan.KubeconfigPath = filepath.Join(state, "kubeconfig")
	if err := atomicfile.Write(plan.KubeconfigPath, kcData, 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	restCfg, err := clientcmd.RESTConfigFromKubeConfig(kcData)
	if err != nil {
		return fmt.Errorf("read back the kubeconfig: %w", err)
	}
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}

	// Bundles are rendered before anything starts: a rendering problem is
	// found before a machine is touched.
	plan.SkipBundles = f.skipBundles
	if !f.skipBundles {
		if plan.Bundles, err = upBundles(cmd, r, state, f.bundle); err != nil {
			return err
		}
		certs := filepath.Join(state, cockroachCertsDir)
		plan.SQL = &bringup.SQL{ConnectionString: cockroach.ConnectionString("", certs), CertsDir: certs}
		if r.Database.EngineOrDefault() == profiles.EnginePostgres {
			host, port, ca := dbServer(profiles.EnginePostgres)
			plan.SQL = &bringup.SQL{ConnectionString: fmt.Sprintf("PostgreSQL at %s:%d, CA in Secret %s; the apps' Secrets: rackboot db list", host, port, ca),
				CertsDir: filepath.Join(state, postgresCertsDir)}
		}
	}
	plan.StepTimeout = f.timeout
	plan.SkipDiskCheck = f.skipDiskCheck
	for _, n := range rackParams(r, state).Rook.Nodes {
		plan.CephNodes = append(plan.CephNodes, n.Name)
	}
	eps, err := machineEndpoints(r, f.nodes)
	if err != nil {
		return &exitError{code: 2, err: err}
	}

	boot, err := bringup.NewBootstrapper(bringup.BootstrapConfig{
		StateDir:    state,
		Talosconfig: talosconfig,
		Node:        first.IP.String(),
		VIP:         plan.VIP.String(),
		Endpoint:    f.bootstrapEndpoint,
	}, bringup.WithLogger(a.log.With("step", "bootstrap")))
	if err != nil {
		return err
	}
	deps := bringup.Deps{
		Bootstrap: boot,
		Cluster:   &kubeCluster{cfg: restCfg, cs: cs, timeout: f.timeout, log: a.log.With("step", "cluster"), out: out, migrate: f.bundle.migrate},
		Disks:     &talosCephDisks{rack: r, tc: talosconfig, endpoints: eps, timeout: upDiskTimeout, osds: rookOSDs(cs)},
		Out:       out,
		Log:       a.log,
	}

	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var serveDone chan error
	if f.serving {
		// The driver reads the machine stages from serve's own status API:
		// serve keeps its inventory to itself.
		// Without the events sink no machine ever reports installed.
		if f.serve.eventsPort != 0 {
			deps.Stages = newServedStages(controlClient(a.StateDir(), 5*time.Second), controlBase, 2*time.Second, a.log)
		}
		serveDone = make(chan error, 1)
		go func() { serveDone <- runServe(ctx, a, cmd, &f.serve) }()
		if f.power {
			go powerUp(ctx, a, out, r)
		}
	}
	driverDone := make(chan error, 1)
	go func() { driverDone <- bringup.Run(ctx, plan, deps) }()

	select {
	case err := <-serveDone:
		cancel()
		derr := <-driverDone
		if parent.Err() != nil {
			// Interrupted: the driver says where it stopped.
			return derr
		}
		if err == nil {
			err = errors.New("stopped")
		}
		a.log.Debug("bring-up stopped with serve", "err", derr)
		return fmt.Errorf("netboot server: %w (the bring-up stopped with it; run `rackboot up` again)", err)
	case err := <-driverDone:
		if err != nil {
			cancel()
			if serveDone != nil {
				if serr := <-serveDone; serr != nil {
					a.log.Debug("serve stopped", "err", serr)
				}
			}
			return err
		}
		if serveDone == nil {
			return nil
		}
		if f.exitWhenUp {
			cancel()
			return <-serveDone
		}
		fmt.Fprintln(out, "\nstill serving the rack (netboot, status page); Ctrl-C stops rackboot")
		return <-serveDone
	}
}

// upPlan turns the rack into the driver's plan (machines in file order).
func upPlan(r *profiles.Rack) (bringup.Plan, error) {
	vip, err := netip.ParseAddr(r.Cluster.VIP)
	if err != nil {
		return bringup.Plan{}, fmt.Errorf("cluster.vip %q: %w", r.Cluster.VIP, err)
	}
	p := bringup.Plan{Cluster: r.Cluster.Name, VIP: vip}
	for i := range r.Machines {
		m := &r.Machines[i]
		n := bringup.Node{Name: m.Name, ControlPlane: m.Role == profiles.RoleControlPlane}
		if !m.IsDHCP() {
			pfx, err := netip.ParsePrefix(m.Address)
			if err != nil {
				return bringup.Plan{}, fmt.Errorf("address of %s: %w", m.Name, err)
			}
			n.IP = pfx.Addr()
		}
		p.Nodes = append(p.Nodes, n)
	}
	return p, nil
}

// upBundles renders the bundles for r (as `rackboot bundles render` does,
// without loading the rack again).
func upBundles(cmd *cobra.Command, r *profiles.Rack, state string, f bundleFlags) ([]bundles.Bundle, error) {
	p := rackParams(r, state)
	if f.rookDir != "" {
		st, err := os.Stat(f.rookDir)
		if err != nil {
			return nil, fmt.Errorf("rook manifests: %w", err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("rook manifests: %s is not a directory", f.rookDir)
		}
		p.RookManifests = os.DirFS(f.rookDir)
	}
	_, statErr := os.Stat(filepath.Join(p.CertsDir, cockroach.CACertFile))
	_, pgErr := os.Stat(filepath.Join(p.PostgresCertsDir, cnpg.CACertFile))
	bs, err := bundles.Render(p)
	if err != nil {
		return nil, err
	}
	switch {
	case p.Engine == profiles.EnginePostgres && errors.Is(pgErr, os.ErrNotExist):
		fmt.Fprintf(cmd.ErrOrStderr(), "created the PostgreSQL server CA and certificate in %s (keep them: they are never regenerated)\n", p.PostgresCertsDir)
	case p.Engine != profiles.EnginePostgres && errors.Is(statErr, os.ErrNotExist):
		fmt.Fprintf(cmd.ErrOrStderr(), "created the CockroachDB CA, node and root certificates in %s (keep them: they are never regenerated)\n", p.CertsDir)
	}
	return bs, nil
}

// kubeCluster is bringup.Cluster on the bundles engine.
type kubeCluster struct {
	cfg     *rest.Config
	cs      kubernetes.Interface
	timeout time.Duration
	log     *slog.Logger
	out     io.Writer
	// migrate: apply a database engine over the other one's data.
	migrate bool
}

func (k *kubeCluster) WaitAPIServer(ctx context.Context) error {
	return bundles.WaitAPIServer(ctx, k.cfg, k.timeout, bundles.WithLogger(k.log))
}

func (k *kubeCluster) WaitNodesReady(ctx context.Context, names []string) error {
	return bundles.WaitNodesReady(ctx, k.cs, names, k.timeout, bundles.WithLogger(k.log))
}

func (k *kubeCluster) Apply(ctx context.Context, b bundles.Bundle) error {
	if err := checkEngineSwitch(ctx, k.cfg, []bundles.Bundle{b}, k.migrate); err != nil {
		return err
	}
	res, err := bundles.Apply(ctx, k.cfg, b.Objects,
		bundles.WithLogger(k.log),
		bundles.WithProgress(func(r bundles.ObjectResult) { k.log.Debug("applied", "object", r.Ref.String(), "action", r.Action) }))
	fmt.Fprintf(k.out, "      %d created, %d configured, %d unchanged, %d failed\n", res.Created, res.Configured, res.Unchanged, res.Failed)
	return err
}

func (k *kubeCluster) WaitGates(ctx context.Context, b bundles.Bundle) error {
	return bundles.WaitGates(ctx, k.cfg, b.Gates, k.timeout, func(s bundles.GateStatus) { printGate(k.out, b.Name, s) }, bundles.WithLogger(k.log))
}

// servedStages is bringup.Stages over a running serve's /api/machines: it
// polls while someone is subscribed and notifies on every change.
type servedStages struct {
	base   string
	client *http.Client
	every  time.Duration
	log    *slog.Logger

	mu     sync.Mutex
	byName map[string]inventory.Machine
}

func newServedStages(client *http.Client, base string, every time.Duration, log *slog.Logger) *servedStages {
	return &servedStages{base: base, client: client, every: every, log: log, byName: map[string]inventory.Machine{}}
}

// Stage implements bringup.Stages.
func (s *servedStages) Stage(name string) (string, string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, ok := s.byName[name]
	if !ok {
		return "", "", false
	}
	return m.Stage, m.Detail, m.Installed
}

// Subscribe implements bringup.Stages: it polls until stopped.
func (s *servedStages) Subscribe() (<-chan struct{}, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(s.every)
		defer t.Stop()
		for {
			if s.poll(ctx) {
				select {
				case ch <- struct{}{}:
				default:
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return ch, func() {
		cancel()
		<-done
	}
}

// poll reads the machine table once; changed says whether a stage moved.
func (s *servedStages) poll(ctx context.Context) bool {
	resp, err := status.Fetch(ctx, s.client, s.base)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Debug("read machine stages from serve", "err", err)
		}
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := false
	for _, m := range resp.Machines {
		if m.Name == "" {
			continue
		}
		old, ok := s.byName[m.Name]
		if !ok || old.Stage != m.Stage || old.Installed != m.Installed || old.Detail != m.Detail {
			changed = true
		}
		s.byName[m.Name] = m
	}
	return changed
}

// upDiskTimeout bounds reading one machine's disks in `up`.
const upDiskTimeout = 30 * time.Second

// talosCephDisks is bringup.CephDisks on `rackboot disks`' own reading
// (readMachineDisks) through each machine's Talos API, with the OSD
// deployments of a Rook already applied (a re-run after Rook): a disk one
// of them uses is Rook's (osdUsing, as `disks wipe` decides it).
type talosCephDisks struct {
	rack      *profiles.Rack
	tc        *clientconfig.Config
	endpoints map[string]string
	timeout   time.Duration
	// osds lists Rook's OSD deployments (none before Rook is applied).
	osds func(ctx context.Context) ([]appsv1.Deployment, error)
}

// CephDisks implements bringup.CephDisks.
func (t *talosCephDisks) CephDisks(ctx context.Context, machine string) ([]bringup.CephDisk, error) {
	m := t.rack.Machine(machine)
	if m == nil {
		return nil, fmt.Errorf("the rack has no machine %q", machine)
	}
	md := readMachineDisks(ctx, t.rack, m, t.tc, t.endpoints[machine], t.timeout)
	if md.Error != "" {
		return nil, errors.New(md.Error)
	}
	var names []string
	for _, d := range md.Disks {
		names = append(names, d.Name)
	}
	var osds []appsv1.Deployment
	var out []bringup.CephDisk
	asked := false
	for _, d := range md.Disks {
		if !d.Ceph {
			continue
		}
		cd := bringup.CephDisk{Name: d.Name, Serial: d.Serial, Size: humanBytes(d.Size), Clean: d.Verdict == "clean", What: d.What, Wipe: d.Wipe}
		if !cd.Clean {
			if !asked && t.osds != nil {
				var err error
				if osds, err = t.osds(ctx); err != nil {
					return nil, fmt.Errorf("cannot ask the cluster whether Rook's OSDs use %s's disks: %w", machine, err)
				}
				asked = true
			}
			cd.Rook = osdUsing(osds, machine, d, names)
		}
		out = append(out, cd)
	}
	return out, nil
}

// rookOSDs lists Rook's OSD deployments in rook-ceph; a missing namespace
// is none.
func rookOSDs(cs kubernetes.Interface) func(ctx context.Context) ([]appsv1.Deployment, error) {
	return func(ctx context.Context) ([]appsv1.Deployment, error) {
		l, err := cs.AppsV1().Deployments(rookNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=rook-ceph-osd"})
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return l.Items, nil
	}
}
