package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/dotfile/rackboot/handoff"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/kubestate"
	"github.com/dotfile/rackboot/leader"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// kubeFlags are `rackboot serve --kube`'s flags.
type kubeFlags struct {
	enabled       bool
	kubeconfig    string
	namespace     string
	leaseName     string
	leaseDuration time.Duration
	renewDeadline time.Duration
	retryPeriod   time.Duration
	assetsFrom    string // serve_kube_assets.go
}

func (k *kubeFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.BoolVar(&k.enabled, "kube", false, "run as one replica of rackboot in Kubernetes: state (rack, secrets, config-token key, machine states, DHCP leases) from the namespace's objects, and DHCP only while this replica holds the Lease; TFTP, HTTP, the registry mirror and the events sink on every replica")
	fl.StringVar(&k.kubeconfig, "kubeconfig", "", "with --kube: the kubeconfig to reach the API server (default: the pod's in-cluster config, else $KUBECONFIG or ~/.kube/config)")
	fl.StringVar(&k.namespace, "namespace", "", "with --kube: the namespace holding rackboot's state and Lease (default $POD_NAMESPACE, else "+handoff.Namespace+")")
	fl.StringVar(&k.leaseName, "lease-name", "rackboot-dhcp", "with --kube: the Lease whose holder answers DHCP (one per network segment)")
	fl.DurationVar(&k.leaseDuration, "lease-duration", leader.DefaultLeaseDuration, "with --kube: how long the other replicas wait after the leader's last renewal before one takes over (whole seconds)")
	fl.DurationVar(&k.renewDeadline, "renew-deadline", leader.DefaultRenewDeadline, "with --kube: the leader stops answering DHCP when it could not renew the Lease for this long (shorter than --lease-duration)")
	fl.DurationVar(&k.retryPeriod, "retry-period", leader.DefaultRetryPeriod, "with --kube: how often replicas try to take or renew the Lease")
	fl.StringVar(&k.assetsFrom, "assets-from", "", assetsFromHelp)
}

// check reports flags given without --kube.
func (k *kubeFlags) check(cmd *cobra.Command) error {
	if k.enabled {
		return nil
	}
	for _, name := range []string{"kubeconfig", "namespace", "lease-name", "lease-duration", "renew-deadline", "retry-period", "assets-from"} {
		if cmd.Flags().Changed(name) {
			return fmt.Errorf("--%s is for --kube only: add --kube, or leave it out", name)
		}
	}
	return nil
}

// ns is the namespace: --namespace, else the pod's, else handoff.Namespace
// (rackboot-system, where `rackboot handoff` puts the appliance).
func (k *kubeFlags) ns() string {
	if k.namespace != "" {
		return k.namespace
	}
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	return handoff.Namespace
}

// restConfig is --kubeconfig, else the in-cluster config, else the usual
// kubeconfig files.
func (k *kubeFlags) restConfig() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		if clientcmd.IsEmptyConfig(err) {
			return nil, fmt.Errorf("--kube: not running in a pod (no in-cluster config) and no kubeconfig found: pass --kubeconfig PATH: %w", err)
		}
		return nil, fmt.Errorf("--kube: read the kubeconfig: %w", err)
	}
	return cfg, nil
}

// kubeServe is what `serve --kube` takes from the cluster: the state and
// the leader election.
type kubeServe struct {
	state   *kubestate.Store
	elector *leader.Elector
	rack    *profiles.Rack
	bundle  *secrets.Bundle
	tokens  *pxe.Tokens
	where   string // namespace/lease, for messages
	log     *slog.Logger
	retry   time.Duration

	// dhcp is the DHCP server the election gates (set by gateDHCP);
	// ready is the term whose lease table has been read (see Active).
	dhcp  atomic.Pointer[pxe.DHCPServer]
	ready atomic.Int64

	// rackIn takes the rack ConfigMap in (set by rackWatch; the control
	// socket's reload uses it too: serve_kube_rack.go).
	rackIn *rackIntake
}

// kubeStartTimeout bounds reading the state at start: an API server that
// does not answer is an error now, not a replica that hangs.
const kubeStartTimeout = 30 * time.Second

// openKube connects to the API server and reads the state serve needs
// before it can answer anything: the rack, the secrets bundle and the
// config-token key (made on first use and then shared by every replica).
func openKube(ctx context.Context, a *app, k *kubeFlags) (*kubeServe, error) {
	cfg, err := k.restConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("--kube: Kubernetes client: %w", err)
	}
	ns := k.ns()
	st, err := kubestate.New(cs, ns, kubestate.WithLogger(a.log.With("service", "kubestate")))
	if err != nil {
		return nil, err
	}
	ks := &kubeServe{state: st, where: ns + "/" + k.leaseName, log: a.log.With("service", "leader"), retry: k.retryPeriod}
	ks.elector, err = leader.New(leader.Config{Client: cs, Namespace: ns, Name: k.leaseName,
		LeaseDuration: k.leaseDuration, RenewDeadline: k.renewDeadline, RetryPeriod: k.retryPeriod,
		OnStart: ks.termStarted, Log: ks.log})
	if err != nil {
		return nil, fmt.Errorf("--kube: %w", err)
	}
	el := ks.elector
	sctx, cancel := context.WithTimeout(ctx, kubeStartTimeout)
	defer cancel()
	if ks.rack, err = st.Rack(sctx); err != nil {
		return nil, fmt.Errorf("--kube: %w (rackboot handoff puts it there)", err)
	}
	if ps := ks.rack.Validate(); ps.Errors() {
		return nil, fmt.Errorf("--kube: the rack file in configmap %s/%s is not valid; fix it there:\n%s", ns, kubestate.RackName, ps.Error())
	}
	if ks.bundle, err = st.Secrets(sctx); err != nil {
		return nil, fmt.Errorf("--kube: %w", err)
	}
	if ks.tokens, err = st.Tokens(sctx, pxe.TokenConfig{}); err != nil {
		return nil, fmt.Errorf("--kube: %w", err)
	}
	a.log.Info("state from Kubernetes", "namespace", ns, "lease", k.leaseName, "identity", el.Identity())
	return ks, nil
}

// gateDHCP makes dhcp answer only on the leader (pxe.WithDHCPActive with
// Active).
func (ks *kubeServe) gateDHCP(dhcp *pxe.DHCPServer) { ks.dhcp.Store(dhcp) }

// Active is the DHCP server's switch: this replica leads (the elector's
// fence) and, in this term, has read the lease table its predecessor left.
func (ks *kubeServe) Active() bool {
	return ks.elector.Leading() && ks.ready.Load() == int64(ks.elector.Terms())
}

// termStarted reads the lease table for the new term (full DHCP: the
// previous leader may have bound leases since this replica last read it),
// then opens the switch; it tries again every retry period while this
// replica leads.
func (ks *kubeServe) termStarted() {
	term := int64(ks.elector.Terms())
	go func() {
		for {
			var err error
			if dhcp := ks.dhcp.Load(); dhcp != nil {
				err = dhcp.ReloadLeases()
			}
			if err == nil {
				ks.ready.Store(term)
				return
			}
			ks.log.Warn("leading, but the DHCP lease table could not be read: not answering DHCP yet", "err", err)
			time.Sleep(ks.retry)
			if !ks.elector.Leading() || int64(ks.elector.Terms()) != term {
				return
			}
		}
	}()
}

// inventory opens the machine states kept in the cluster.
func (ks *kubeServe) inventory(ctx context.Context, opts ...inventory.Option) (*inventory.Store, error) {
	sctx, cancel := context.WithTimeout(ctx, kubeStartTimeout)
	defer cancel()
	store, err := ks.state.Inventory(sctx, append(opts, inventory.WithDiscoveredSummary(discoveredSummary))...)
	if err != nil {
		return nil, fmt.Errorf("--kube: %w", err)
	}
	return store, nil
}

// options are the services a replica runs besides serve's own: the
// election and the watch that brings other replicas' machine changes in.
func (ks *kubeServe) options(store *inventory.Store) []pxe.Option {
	return []pxe.Option{
		pxe.WithService("leader", ks.elector.Run),
		pxe.WithService("machine-watch", func(ctx context.Context) error {
			err := ks.state.Machines().WatchChanges(ctx, store.Observe, store.ObserveDeleted)
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}),
	}
}

// rackSource names where the rack came from, for the log.
func (ks *kubeServe) rackSource() string {
	return "configmap " + ks.state.Namespace() + "/" + kubestate.RackName
}

// metrics registers whether this replica leads and how many DHCP packets
// it left to the leader.
func (ks *kubeServe) metrics(reg prometheus.Registerer, dhcp *pxe.DHCPServer) error {
	leading := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "rackboot_dhcp_leader",
		Help: "1 while this replica holds the Lease and answers DHCP, else 0.",
	}, func() float64 {
		if ks.elector.Leading() {
			return 1
		}
		return 0
	})
	ignored := prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "rackboot_dhcp_not_leader_packets_total",
		Help: "DHCP packets this replica left unanswered because another replica leads.",
	}, func() float64 { return float64(dhcp.Inactive()) })
	for _, c := range []prometheus.Collector{leading, ignored} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register leader metrics: %w", err)
		}
	}
	return nil
}
