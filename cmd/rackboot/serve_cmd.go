package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/imager"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
	"github.com/dotfile/rackboot/registry"
	"github.com/dotfile/rackboot/status"
	"github.com/dotfile/rackboot/talosevents"
	"github.com/dotfile/rackboot/upgrade"
)

// serveFlags are `rackboot serve`'s flags (`rackboot up` and the lab reuse them).
type serveFlags struct {
	iface      string
	serverIP   string
	dhcpMode   string
	dhcpRange  string
	router     string
	httpPort   int
	tftpPort   int
	eventsPort int
	logPort    int
	ipxeDir    string
	standin    string
	extraArgs  []string
	listenAll  bool
	// kube is `serve --kube` (serve only).
	kube kubeFlags
	// discover boots unknown machines without a config (or discover: true).
	discover bool
	// registryPort is the registry mirror's port (0: off).
	registryPort int
	// standinVersions are more versions the lab's installer image is
	// tagged with (for `rackboot upgrade` in the lab).
	standinVersions []string
}

func (f *serveFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVarP(&f.iface, "interface", "i", "", "network interface facing the rack (default: the one whose address is in the rack's subnet, or the only LAN interface)")
	fl.StringVar(&f.serverIP, "server-ip", "", "address machines reach rackboot on (default: the interface's address)")
	fl.StringVar(&f.dhcpMode, "dhcp", "proxy", "DHCP mode: proxy (answer PXE clients only; the router keeps DHCP), full (a DHCP server, isolated networks only), off")
	fl.StringVar(&f.dhcpRange, "range", "", "address range for --dhcp full, e.g. 192.168.1.100-192.168.1.199")
	fl.StringVar(&f.router, "router", "", "default gateway handed out by --dhcp full (default: the rack's gateway; \"none\" for no route)")
	fl.IntVar(&f.httpPort, "http-port", 8080, "HTTP port (iPXE scripts, boot assets, configs, status page)")
	fl.IntVar(&f.tftpPort, "tftp-port", 69, "TFTP port (iPXE binaries); 0 turns TFTP off")
	fl.IntVar(&f.eventsPort, "events-port", 4002, "TCP port of the Talos events sink (gRPC); 0 turns it off")
	fl.IntVar(&f.logPort, "log-port", 4003, "UDP port of the Talos kernel log receiver; 0 turns it off")
	fl.StringVar(&f.ipxeDir, "ipxe-dir", "", "serve the iPXE binaries from this directory instead of the embedded ones")
	fl.StringVar(&f.standin, "standin", "", "directory with a stand-in vmlinuz + initramfs, booted when the asset cache has no Talos for a machine (the lab)")
	fl.StringArrayVar(&f.standinVersions, "standin-version", nil, "with --standin: also put the lab's installer image in the registry mirror at this Talos version (repeatable), for rackboot upgrade --talos in the lab")
	fl.StringArrayVar(&f.extraArgs, "kernel-arg", nil, "extra kernel argument for every machine, one per flag (repeatable; commas stay), e.g. console=ttyS0,115200n8")
	fl.IntVar(&f.registryPort, "registry-port", profiles.RegistryPort, "TCP port of the registry mirror (the rack's images from the asset cache; the machine configs name port "+strconv.Itoa(profiles.RegistryPort)+"); 0 turns it off")
	fl.BoolVar(&f.discover, "discover", false, "boot machines that are not in the rack file into Talos without a config (maintenance mode), to adopt them (rackboot machines; machine adopt); as discover: true in the rack file")
	fl.BoolVar(&f.listenAll, "listen-all", false, "listen on every address of this computer, not only the rack interface's (HTTP, TFTP, events, kernel logs)")
}

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		f := &serveFlags{}
		cmd := &cobra.Command{
			Use:   "serve",
			Short: "Netboot the rack: DHCP (proxy by default), TFTP and HTTP, with a status page",
			Long: `Runs DHCP, TFTP and HTTP together. Each machine of the rack file boots Talos
with its own config; unknown machines get no config and show up as discovered.
Open http://<server>:8080/ for the status page, or run ` + "`rackboot status`.",
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return runServe(cmd.Context(), a, cmd, f)
			},
		}
		f.register(cmd)
		f.kube.register(cmd)
		return cmd
	})
}

// runServe runs the netboot appliance until ctx ends.
func runServe(ctx context.Context, a *app, cmd *cobra.Command, f *serveFlags) error {
	if err := f.kube.check(cmd); err != nil {
		return err
	}
	var ks *kubeServe // --kube: state from the cluster, DHCP on the leader only
	if f.kube.enabled {
		var err error
		if ks, err = openKube(ctx, a, &f.kube); err != nil {
			return err
		}
	}
	r, bundle, err := serveRack(a, cmd, ks)
	if err != nil {
		return err
	}
	state := a.StateDir()
	subnet, err := netip.ParsePrefix(r.Cluster.Network.Subnet)
	if err != nil {
		return fmt.Errorf("rack subnet: %w", err)
	}
	iface, ip, err := serveInterface(r, f, subnet)
	if err != nil {
		return err
	}
	checkRackbootAddress(a, r, ip, f)
	rackFrom := a.rackPath
	if ks != nil {
		rackFrom = ks.rackSource()
	}
	a.log.Info("serving the rack", "rack", rackFrom, "interface", iface, "address", ip, "dhcp", f.dhcpMode, "machines", len(r.Machines))

	// The rack as `machine adopt` changes it (control socket: /rack/reload).
	live := newLiveRack(r, a.log)
	invOpts := []inventory.Option{inventory.WithLogger(a.log.With("service", "inventory")),
		inventory.WithNames(live.known), inventory.WithMACNames(live.macName)}
	var store *inventory.Store
	if ks != nil {
		store, err = ks.inventory(ctx, invOpts...)
	} else {
		store, err = inventory.Open(state, invOpts...)
	}
	if err != nil {
		return err
	}
	defer func() {
		if err := store.Close(); err != nil {
			a.log.Error("save machine states", "err", err)
		}
	}()

	for i := range r.Machines {
		store.Declare(r.Machines[i].Name)
	}

	cache, err := serveAssetCache(a, f)
	if err != nil {
		return err
	}
	defer cache.Close()
	assets, resolve, err := bootAssets(cache, f.standin)
	if err != nil {
		return err
	}
	for _, m := range r.Machines {
		id, err := profiles.SchematicID(r.Schematic(&m))
		if err != nil {
			return fmt.Errorf("schematic of %s: %w", m.Name, err)
		}
		if _, _, err := resolve(r.Cluster.TalosVersion, id, m.ArchOrDefault()); err != nil {
			a.log.Warn("machine cannot netboot yet", "machine", m.Name, "err", err)
		}
	}
	cfgOpts := lazyMirrorConfigOptions(r, a.log)
	live.start(func(r *profiles.Rack) *profiles.Booter {
		return profiles.NewBooter(r, bundle, resolve, profiles.WithConfigOptions(cfgOpts...),
			profiles.WithInstalled(store.Installed), profiles.WithExtraKernelArgs(f.extraArgs...))
	})

	mode := pxe.DHCPMode(f.dhcpMode)
	dcfg, err := dhcpConfig(r, mode, iface, ip, f, state)
	if err != nil {
		return err
	}
	dcfg.IPXEBuild = func(c pxe.Client) pxe.IPXEBuild { return live.Rack().IPXEBuildFor(c) }
	dopts := []pxe.DHCPOption{pxe.WithDHCPLogger(a.log.With("service", "dhcp")), pxe.WithDHCPRecorder(store)}
	if ks != nil {
		dopts = append(dopts, pxe.WithDHCPActive(ks.Active))
		if mode == pxe.DHCPFull {
			dcfg.LeaseStore = ks.state.Leases()
		}
	}
	dhcp, err := pxe.NewDHCP(dcfg, dopts...)
	if err != nil {
		return err
	}
	if ks != nil {
		ks.gateDHCP(dhcp)
	}

	// Only the NIC that owns a machine's MAC gets its boot script, and
	// events and logs count only from where the machine was seen.
	neigh, err := pxe.NewKernelNeighbors(iface)
	if err != nil {
		return err
	}
	attr := newAttribution(r, neigh)
	attr.rackMAC = live.macName
	if mode == pxe.DHCPFull {
		attr.leaseHolder = dhcp.LeaseHolder
	}
	warnUnverifiable(a, r)

	// Listen on the rack interface's address only, unless asked.
	host := ip.String()
	if f.listenAll {
		host = ""
		a.log.Warn("--listen-all: HTTP, TFTP, the registry mirror, the events sink and the kernel log receiver answer on every network of this computer")
	}
	mirrorMetrics := prometheus.NewRegistry()
	mirror, err := serveMirror(a, r, f, host, cache, attr, store, mirrorMetrics)
	if err != nil {
		return err
	}
	if mirror != nil {
		defer mirror.Close() // when Serve never ran
	}

	var (
		sink *talosevents.Server
		kmsg *talosevents.KmsgReceiver
	)
	statusHandler, err := status.Handler(store, status.WithLogger(a.log.With("service", "status")),
		status.WithGatherers(mirrorMetrics),
		status.WithDropCounters(
			func() map[string]uint64 {
				if sink == nil {
					return nil
				}
				return sink.Dropped()
			},
			func() map[string]uint64 {
				if kmsg == nil {
					return nil
				}
				return kmsg.Dropped()
			}))
	if err != nil {
		return err
	}
	var opts []pxe.Option
	cfg := pxe.Config{
		ServerIP:     ip,
		HTTPAddr:     net.JoinHostPort(host, strconv.Itoa(f.httpPort)),
		TFTPAddr:     net.JoinHostPort(host, strconv.Itoa(f.tftpPort)),
		DisableTFTP:  f.tftpPort == 0,
		StateDir:     state,
		Log:          a.log,
		Recorder:     attr.saw(store),
		Followed:     dhcp.Followed,
		FollowedAddr: dhcp.FollowedAddr,
		Neighbors:    neigh,
	}
	if mode == pxe.DHCPFull {
		cfg.LeaseOf = dhcp.LeaseOf
	}
	if ks != nil {
		cfg.Tokens = ks.tokens
		if err := ks.metrics(mirrorMetrics, dhcp); err != nil {
			return err
		}
		opts = append(opts, ks.options(store)...)
		opts = append(opts, ks.rackWatch(live, store))
	}
	if f.discover || r.Cluster.Discover {
		cfg.Discovery = live
		a.log.Info("discovery on: machines not in the rack file boot Talos without a config (maintenance mode); list them with `rackboot machines`")
	}
	if f.eventsPort != 0 {
		cfg.EventsAddr = net.JoinHostPort(ip.String(), strconv.Itoa(f.eventsPort))
	}
	if f.logPort != 0 {
		cfg.LogAddr = net.JoinHostPort(ip.String(), strconv.Itoa(f.logPort))
	}
	if f.ipxeDir != "" {
		if _, err := os.Stat(f.ipxeDir); err != nil {
			return fmt.Errorf("--ipxe-dir: %w", err)
		}
		cfg.IPXE = os.DirFS(f.ipxeDir)
	}

	var srv *pxe.Server
	opts = append(opts,
		pxe.WithHandler("GET /{$}", statusHandler),
		pxe.WithHandler("GET /app.js", statusHandler),
		pxe.WithHandler("GET /style.css", statusHandler),
		pxe.WithHandler("GET /api/", statusHandler),
		pxe.WithHandler("GET /metrics", statusHandler),
		pxe.WithService("dhcp", dhcp.Serve),
	)
	if mirror != nil {
		opts = append(opts, pxe.WithService("registry", mirror.Serve))
	}
	if f.eventsPort != 0 {
		sink, err = talosevents.New(talosevents.Config{
			Addr: net.JoinHostPort(host, strconv.Itoa(f.eventsPort)), Resolver: attr.resolve, Recorder: store,
			OnInstalled: func(name string) {
				a.log.Info("machine installed: its next boot goes to its disk", "machine", name)
				if srv != nil {
					if err := srv.Tokens().Consume(name); err != nil {
						a.log.Warn("could not record that the machine's config tokens are used up (they expire on their own)", "machine", name, "err", err)
					}
				}
			},
		}, talosevents.WithLogger(a.log.With("service", "events")))
		if err != nil {
			return err
		}
		opts = append(opts, pxe.WithService("events", sink.Serve))
	}
	if f.logPort != 0 {
		kmsg, err = talosevents.NewKmsgReceiver(talosevents.KmsgConfig{
			Addr: net.JoinHostPort(host, strconv.Itoa(f.logPort)), Resolver: attr.resolve, Recorder: store,
		}, talosevents.WithLogger(a.log.With("service", "kmsg")))
		if err != nil {
			return err
		}
		opts = append(opts, pxe.WithService("kernel-log", kmsg.Serve))
	}
	ctl, err := listenControl(state)
	if err != nil {
		return err
	}
	defer os.Remove(filepath.Join(state, ControlSocket))
	opts = append(opts, pxe.WithService("control", func(ctx context.Context) error {
		return serveControl(ctx, ctl, controlHandler(statusHandler, controlActions{
			reinstall: func(name string) error {
				if live.Rack().Machine(name) == nil {
					return fmt.Errorf("no machine named %q in the rack file: %w", name, inventory.ErrUnknownMachine)
				}
				return store.Reset(name)
			},
			forget: store.Forget,
			reload: func() (string, error) {
				if ks != nil {
					return ks.reload()
				}
				return live.reload(a.rackPath, store)
			},
		}), a.log.With("service", "control"))
	}))
	srv, err = pxe.New(cfg, live, assets, opts...)
	if err != nil {
		ctl.Close()
		return err
	}
	attr.tokens = srv.Tokens
	fmt.Fprintf(cmd.ErrOrStderr(), "rackboot: serving %d machines on %s (%s); status: http://%s/\n",
		len(r.Machines), iface, ip, net.JoinHostPort(ip.String(), strconv.Itoa(f.httpPort)))
	if ks != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "rackboot: one replica of %s: DHCP only while it holds the Lease (identity %s)\n", ks.where, ks.elector.Identity())
	}
	return srv.Serve(ctx)
}

// serveRack is the rack and the cluster's secrets: from the cluster with
// --kube (read by openKube), else the rack file and the state directory.
func serveRack(a *app, cmd *cobra.Command, ks *kubeServe) (*profiles.Rack, *secrets.Bundle, error) {
	if ks != nil {
		return ks.rack, ks.bundle, nil
	}
	r, err := a.loadRack(cmd)
	if err != nil {
		return nil, nil, err
	}
	bundle, err := a.clusterSecrets()
	if err != nil {
		return nil, nil, err
	}
	return r, bundle, nil
}

// serveMirror opens the image store and the registry mirror on host
// (nil when --registry-port is 0). With --standin, the lab's installer
// image goes into the store first.
func serveMirror(a *app, r *profiles.Rack, f *serveFlags, host string, cache *imager.Cache, attr *attribution, inv *inventory.Store, metrics prometheus.Registerer) (*registry.Server, error) {
	if f.registryPort == 0 {
		return nil, nil
	}
	images, err := serveImageStore(a, f)
	if err != nil {
		return nil, err
	}
	if len(f.standinVersions) > 0 && f.standin == "" {
		return nil, errors.New("--standin-version tags the lab's installer image: it needs --standin DIR")
	}
	for _, v := range f.standinVersions {
		if _, err := upgrade.ParseVersion(v); err != nil {
			return nil, fmt.Errorf("--standin-version: %w", err)
		}
	}
	if f.standin != "" {
		fromStandin := func(version, schematic, arch string) bool { return cache.Has(version, schematic, arch) != nil }
		if err := seedStandinInstallers(a, images, r, f.standin, f.standinVersions, fromStandin); err != nil {
			a.log.Warn("the lab's installer image is not in the registry mirror: lab machines will fail to install", "err", err)
		}
	}
	return newMirror(a, images, mirrorAddr(host, f.registryPort), attr, inv, metrics)
}

// serveInterface picks the rack interface and address: the rack file's
// cluster.network.rackboot when this computer has it (installed machines
// send their events there), else as chooseInterface decides.
func serveInterface(r *profiles.Rack, f *serveFlags, subnet netip.Prefix) (string, netip.Addr, error) {
	if f.serverIP == "" && r.Cluster.Network.Rackboot != "" {
		if iface, ip, err := chooseInterface(f.iface, r.Cluster.Network.Rackboot, subnet); err == nil {
			return iface, ip, nil
		}
	}
	return chooseInterface(f.iface, f.serverIP, subnet)
}

// checkRackbootAddress warns when installed machines will look for
// rackboot somewhere it does not listen: their configs carry the events and
// log endpoints from the rack file.
func checkRackbootAddress(a *app, r *profiles.Rack, ip netip.Addr, f *serveFlags) {
	want := r.Cluster.Network.Rackboot
	if want == "" {
		a.log.Warn("the rack file has no cluster.network.rackboot: installed machines will not report events or kernel logs; write rackboot: " + ip.String())
		return
	}
	if w, err := netip.ParseAddr(want); err == nil && w != ip {
		a.log.Warn("the rack file says rackboot is at " + want + " (cluster.network.rackboot) but this computer serves on " + ip.String() +
			": machines' configs send their events and kernel logs to " + want + "; give this computer that address or fix the rack file")
	}
	if f.eventsPort != 4002 || f.logPort != 4003 {
		a.log.Warn("machines' configs send events to port 4002 and kernel logs to port 4003, but serve listens on other ports: after install they will not reach it",
			"events-port", f.eventsPort, "log-port", f.logPort)
	}
}

// rackMACNames names a rack machine by one of its MACs (colon form).
func rackMACNames(r *profiles.Rack) func(string) (string, bool) {
	byMAC := map[string]string{}
	for i := range r.Machines {
		for _, mac := range r.Machines[i].MACs() {
			byMAC[mac.String()] = r.Machines[i].Name
		}
	}
	return func(mac string) (string, bool) { n, ok := byMAC[mac]; return n, ok }
}

// warnUnverifiable says which machines cannot be checked at layer 2.
func warnUnverifiable(a *app, r *profiles.Rack) {
	for i := range r.Machines {
		if len(r.Machines[i].MACs()) == 0 {
			a.log.Warn("machine is selected without a MAC: its config goes to any device that sends its UUID or serial; add select.mac", "machine", r.Machines[i].Name)
		}
	}
}

// staticAddrs maps each machine's static address to its name.
func staticAddrs(r *profiles.Rack) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for _, m := range r.Machines {
		if m.IsDHCP() {
			continue
		}
		if p, err := netip.ParsePrefix(m.Address); err == nil {
			out[p.Addr()] = m.Name
		}
	}
	return out
}

// dhcpConfig turns the flags and the rack into the DHCP server's config.
func dhcpConfig(r *profiles.Rack, mode pxe.DHCPMode, iface string, ip netip.Addr, f *serveFlags, state string) (pxe.DHCPConfig, error) {
	cfg := pxe.DHCPConfig{Mode: mode, Interface: iface, ServerIP: ip, HTTPPort: f.httpPort,
		IPXEBuild: r.IPXEBuildFor} // ipxeBuild: snponly for NICs iPXE has no driver for
	if mode != pxe.DHCPFull {
		if f.dhcpRange != "" {
			return cfg, errors.New("--range is only for --dhcp full")
		}
		return cfg, nil
	}
	if f.dhcpRange == "" {
		return cfg, errors.New("--dhcp full needs --range A-B: the addresses it may hand out")
	}
	var err error
	if cfg.RangeStart, cfg.RangeEnd, err = pxe.ParseDHCPRange(f.dhcpRange); err != nil {
		return cfg, fmt.Errorf("--range: %w", err)
	}
	if cfg.Subnet, err = netip.ParsePrefix(r.Cluster.Network.Subnet); err != nil {
		return cfg, fmt.Errorf("rack subnet: %w", err)
	}
	router := f.router
	if router == "" {
		router = r.Cluster.Network.Gateway
	}
	if router != "none" && router != "" {
		if cfg.Router, err = netip.ParseAddr(router); err != nil {
			return cfg, fmt.Errorf("router %q: %w", router, err)
		}
	}
	for _, ns := range r.Cluster.Network.Nameservers {
		a, err := netip.ParseAddr(ns)
		if err != nil {
			return cfg, fmt.Errorf("nameserver %q: %w", ns, err)
		}
		cfg.DNS = append(cfg.DNS, a)
	}
	cfg.LeasesFile = state + "/dhcp-leases.json"
	byMAC := map[string]netip.Addr{}
	reserved := map[netip.Addr]bool{}
	for addr, name := range staticAddrs(r) {
		reserved[addr] = true
		for _, s := range r.Machine(name).Select.MAC {
			if mac, err := profiles.NormalizeMAC(s); err == nil {
				byMAC[mac.String()] = addr
			}
		}
	}
	cfg.Reservations = func(mac net.HardwareAddr) (netip.Addr, bool) {
		a, ok := byMAC[mac.String()]
		return a, ok
	}
	cfg.Reserved = func(a netip.Addr) bool { return reserved[a] }
	return cfg, nil
}
