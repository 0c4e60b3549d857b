package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"

	"github.com/dotfile/rackboot/internal/atomicfile"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
	"github.com/dotfile/rackboot/rackedit"
)

// adoptFlags are `rackboot machine adopt`'s flags.
type adoptFlags struct {
	name, role, address, diskSerial string
	noApply                         bool
}

// newAdoptCmd is `rackboot machine adopt MAC`.
func newAdoptCmd(a *app) *cobra.Command {
	f := &adoptFlags{}
	cmd := &cobra.Command{
		Use:   "adopt MAC --name NAME --role controlplane|worker",
		Short: "Write a discovered machine into the rack file, so that it installs",
		Long: "Adds a machine selected by its MAC to the rack file, keeping your comments and layout\n" +
			"(written atomically, with the file's mode), after checking the new rack as\n" +
			"`rackboot validate` does: nothing is written when it has errors. A running rackboot\n" +
			"serve then reloads the rack. A machine waiting in Talos's maintenance mode (its last\n" +
			"network boot was the discovery boot) gets its config through Talos's maintenance API at\n" +
			"the address it was seen at, once it shows a NIC with this MAC, and installs without\n" +
			"another network boot; any other machine installs at its next network boot.\n" +
			"See the machines waiting to be adopted with `rackboot machines`.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runAdopt(cmd.Context(), a, cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0], f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.name, "name", "", "the machine's name (its hostname and Kubernetes node name)")
	fl.StringVar(&f.role, "role", "", "controlplane or worker")
	fl.StringVar(&f.address, "address", "", "static address in CIDR form, e.g. 192.168.1.16/24 (default: DHCP)")
	fl.StringVar(&f.diskSerial, "install-disk-serial", "", "install Talos on the disk with this serial (see: rackboot machines; default: the rack's installDisk rule)")
	fl.BoolVar(&f.noApply, "no-apply", false, "only write the rack file: do not send the config to a machine waiting in maintenance mode (it installs at its next network boot)")
	cmd.MarkFlagRequired("name")
	cmd.MarkFlagRequired("role")
	registerKube(cmd)
	return cmd
}

// adoptedMachine is the rack entry adopt writes.
func adoptedMachine(macArg string, f *adoptFlags, arch string) (profiles.Machine, error) {
	hw, err := net.ParseMAC(macArg)
	if err != nil || len(hw) != 6 {
		return profiles.Machine{}, fmt.Errorf("%q is not a MAC address: write it like 52:54:00:12:34:56", macArg)
	}
	role := profiles.Role(f.role)
	if role != profiles.RoleControlPlane && role != profiles.RoleWorker {
		return profiles.Machine{}, fmt.Errorf("--role %q: write controlplane or worker", f.role)
	}
	m := profiles.Machine{Name: f.name, Role: role, Select: profiles.Selector{MAC: []string{hw.String()}}, Address: f.address}
	if f.diskSerial != "" {
		m.InstallDisk = profiles.DiskRule{Serial: f.diskSerial}
	}
	if arch == "arm64" {
		m.Arch = arch
	}
	return m, nil
}

// adoptRack returns the rack file's new text with m added, checked: the
// problems of the new rack when it has errors (nothing may be written).
func adoptRack(path string, src []byte, m profiles.Machine) ([]byte, profiles.Problems, error) {
	out, err := rackedit.AddMachine(src, m)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	r, err := profiles.Load(path, out)
	if err != nil {
		return nil, nil, fmt.Errorf("%s with %s added does not load: %w", path, m.Name, err)
	}
	ps := r.Validate()
	if ps.Errors() {
		return nil, ps, fmt.Errorf("%s with %s added is not valid (nothing written): fix the problems above, or adopt with other flags", path, m.Name)
	}
	return out, ps, nil
}

// writeRack replaces the rack file with out, atomically and with the
// file's mode, unless the file changed since src was read.
func writeRack(path string, src, out []byte) error {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fmt.Errorf("rack file: %w", err)
	}
	st, err := os.Stat(real)
	if err != nil {
		return fmt.Errorf("rack file: %w", err)
	}
	now, err := os.ReadFile(real)
	if err != nil {
		return fmt.Errorf("rack file: %w", err)
	}
	if !bytes.Equal(now, src) {
		return fmt.Errorf("%s changed while rackboot was editing it: nothing written, run the command again", path)
	}
	return atomicfile.Write(real, out, st.Mode().Perm())
}

func runAdopt(ctx context.Context, a *app, stdout, stderr io.Writer, macArg string, f *adoptFlags) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if a.kube != nil {
		return a.adoptKube(ctx, stdout, stderr, macArg, f)
	}
	path := a.rackPath
	src, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read the rack file: %w", err)
	}
	// What rackboot saw of the machine (its arch and where it waits).
	seen, _ := findDiscovered(ctx, a, macArg)
	m, err := adoptedMachine(macArg, f, seen.Arch)
	if err != nil {
		return err
	}
	out, ps, err := adoptRack(path, src, m)
	if len(ps) > 0 {
		fmt.Fprintln(stderr, ps.Error())
	}
	if err != nil {
		if ps.Errors() {
			return &exitError{code: 1, err: err}
		}
		return err
	}
	if err := writeRack(path, src, out); err != nil {
		return err
	}
	mac := m.Select.MAC[0]
	fmt.Fprintf(stdout, "adopted %s (%s, %s) into %s\n", m.Name, mac, m.Role, path)
	reportServeReload(ctx, a.StateDir(), stdout,
		m.Name+"'s next network boot installs Talos with its own config",
		"once one runs, "+m.Name+"'s next network boot installs Talos with its own config")
	switch {
	case seen.waiting && seen.Addr.IsValid() && !f.noApply:
		return applyAdopted(ctx, a, stdout, path, out, m, netip.AddrPortFrom(seen.Addr, constants.ApidPort))
	case seen.waiting:
		at := "its address"
		if seen.Addr.IsValid() {
			at = seen.Addr.String()
		}
		fmt.Fprintf(stdout, "%s is waiting in Talos's maintenance mode (at %s) and does not netboot again by itself: restart it\n"+
			"(its reset or power button, or its BMC once rack.yaml has one: rackboot machine reinstall %s --power).\n", m.Name, at, m.Name)
	default:
		fmt.Fprintf(stdout, "start it (or restart it) with a network boot.\n")
	}
	return nil
}

// applyAdopted sends the adopted machine's config (the one serve would
// serve it: the rack just written, the cluster's secrets, the registry
// mirror) through Talos's maintenance API at addr, where it waits. The
// config holds every key of the cluster and the maintenance TLS does not
// authenticate the machine: it goes only to the address the discovered
// MAC was seen at, and only when the machine there reports a link with
// that MAC. When it does not answer, the machine installs at its next
// network boot (said so); a wrong machine fails the command. ap is
// addr:50000 (another port in tests).
func applyAdopted(ctx context.Context, a *app, stdout io.Writer, path string, rackText []byte, m profiles.Machine, ap netip.AddrPort) error {
	addr := ap.Addr()
	cfg, err := adoptedConfig(a, path, rackText, m.Name)
	if err != nil {
		return fmt.Errorf("%s is in the rack file, but its config could not be made (%w): it installs at its next network boot", m.Name, err)
	}
	mac, _ := net.ParseMAC(m.Select.MAC[0])
	api, err := dialMaintenanceAt(ctx, ap)
	if err == nil {
		defer api.Close()
		var details string
		details, err = api.Apply(ctx, mac, cfg)
		if err == nil {
			fmt.Fprintf(stdout, "sent %s its config through Talos's maintenance API at %s (%s): it installs Talos now, without another network boot; follow it with rackboot status\n",
				m.Name, addr, dashIfEmpty(details))
			return nil
		}
	}
	if errors.Is(err, errWrongMachine) {
		return fmt.Errorf("%w\n%s is in the rack file: it installs at its next network boot (check which machine holds %s)", err, m.Name, addr)
	}
	fmt.Fprintf(stdout, "%v\n%s did not take its config there: restart it with a network boot (its reset or power button, or rackboot machine reinstall %s --power once rack.yaml has its BMC); it then installs with its config\n",
		err, m.Name, m.Name)
	return nil
}

// adoptedConfig is the adopted machine's Talos config as serve makes it
// (profiles.Booter.Config: GenerateConfig with the registry mirror's
// hosts), from the cluster secrets already in the state dir: adopt never
// creates them.
func adoptedConfig(a *app, path string, rackText []byte, name string) ([]byte, error) {
	r, err := profiles.Load(path, rackText)
	if err != nil {
		return nil, err
	}
	b, err := adoptSecrets(a)
	if err != nil {
		return nil, err
	}
	opts, err := mirrorConfigOptions(r)
	if err != nil {
		return nil, err
	}
	return profiles.GenerateConfig(r, name, b, opts...)
}

// liveRack is the rack a running serve answers from; `machine adopt`
// makes serve reload it through the control socket. A reload may change
// the machines, not the cluster settings (those need a restart).
type liveRack struct {
	log       *slog.Logger
	newBooter func(*profiles.Rack) *profiles.Booter

	mu     sync.RWMutex
	rack   *profiles.Rack
	booter *profiles.Booter
	macs   func(string) (string, bool)
}

func newLiveRack(r *profiles.Rack, log *slog.Logger) *liveRack {
	return &liveRack{rack: r, macs: rackMACNames(r), log: log}
}

// start sets how Booters are made and makes the first.
func (l *liveRack) start(newBooter func(*profiles.Rack) *profiles.Booter) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.newBooter = newBooter
	l.booter = newBooter(l.rack)
}

// Rack is the current rack.
func (l *liveRack) Rack() *profiles.Rack {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.rack
}

func (l *liveRack) current() *profiles.Booter {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.booter
}

// known says whether name is a machine of the rack (inventory.WithNames).
func (l *liveRack) known(name string) bool { return l.Rack().Machine(name) != nil }

// macName names a rack machine by MAC (inventory.WithMACNames, attribution).
func (l *liveRack) macName(mac string) (string, bool) {
	l.mu.RLock()
	f := l.macs
	l.mu.RUnlock()
	return f(mac)
}

// BootSpec implements pxe.Booter.
func (l *liveRack) BootSpec(ctx context.Context, c pxe.Client) (*pxe.BootSpec, error) {
	return l.current().BootSpec(ctx, c)
}

// Config implements pxe.Booter.
func (l *liveRack) Config(ctx context.Context, name string) ([]byte, error) {
	return l.current().Config(ctx, name)
}

// DiscoveryBoot implements pxe.Discoverer.
func (l *liveRack) DiscoveryBoot(ctx context.Context, c pxe.Client) (*pxe.BootSpec, error) {
	return l.current().DiscoveryBoot(ctx, c)
}

// reload reads the rack file again. It refuses a rack with errors or with
// other cluster settings, keeping the one it has. New machines are
// declared to the inventory unless one of their MACs is there as a
// discovered machine (its history then moves to the name at its next
// boot).
func (l *liveRack) reload(path string, store *inventory.Store) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reload %s: %w", path, err)
	}
	return l.reloadData(path, data, store)
}

// reloadData is reload from the rack file's bytes (serve --kube: the
// ConfigMap's); path names it in messages.
func (l *liveRack) reloadData(path string, data []byte, store *inventory.Store) (string, error) {
	nr, err := profiles.Load(path, data)
	if err != nil {
		return "", fmt.Errorf("reload %s: %w", path, err)
	}
	if ps := nr.Validate(); ps.Errors() {
		return "", fmt.Errorf("reload %s: it is not valid, serve keeps the rack it has:\n%s", path, ps.Error())
	}
	old := l.Rack()
	if same, err := sameCluster(old, nr); err != nil || !same {
		return "", fmt.Errorf("reload %s: the cluster settings changed; serve reloads only machines and the Talos and Kubernetes versions: restart rackboot serve", path)
	}
	b := l.newBooter(nr)
	l.mu.Lock()
	l.rack, l.booter, l.macs = nr, b, rackMACNames(nr)
	l.mu.Unlock()
	var added, removed []string
	for i := range nr.Machines {
		m := &nr.Machines[i]
		if old.Machine(m.Name) != nil {
			continue
		}
		added = append(added, m.Name)
		seen := false
		for _, mac := range m.MACs() {
			if _, ok := store.Machine(mac.String()); ok {
				seen = true
			}
		}
		if !seen {
			store.Declare(m.Name)
		}
	}
	for i := range old.Machines {
		if nr.Machine(old.Machines[i].Name) == nil {
			removed = append(removed, old.Machines[i].Name)
		}
	}
	msg := fmt.Sprintf("rack reloaded: %d machines", len(nr.Machines))
	if len(added) > 0 {
		msg += ", added " + strings.Join(added, ", ")
	}
	if len(removed) > 0 {
		msg += ", removed " + strings.Join(removed, ", ")
	}
	l.log.Info(msg)
	return msg, nil
}

// sameCluster compares the cluster settings of two racks by meaning.
func sameCluster(a, b *profiles.Rack) (bool, error) {
	// The versions may change (rackboot upgrade writes them at its end):
	// the booter is rebuilt from the new rack, so new and reinstalled
	// machines get configs for them. Everything else is set up at start.
	ca, cb := a.Cluster, b.Cluster
	ca.TalosVersion, cb.TalosVersion = "", ""
	ca.KubernetesVersion, cb.KubernetesVersion = "", ""
	x, err := yaml.Marshal(ca)
	if err != nil {
		return false, err
	}
	y, err := yaml.Marshal(cb)
	if err != nil {
		return false, err
	}
	return bytes.Equal(x, y), nil
}

// findDiscovered is what rackboot saw of the machine with this MAC, from
// the running serve or the state dir (zero when never seen).
func findDiscovered(ctx context.Context, a *app, macArg string) (discoveredMachine, error) {
	hw, err := net.ParseMAC(macArg)
	if err != nil {
		return discoveredMachine{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ms, _, _, err := inventorySnapshot(ctx, a.StateDir())
	if err != nil {
		return discoveredMachine{}, err
	}
	i := slices.IndexFunc(ms, func(m inventory.Machine) bool { return m.Name == "" && m.Key == hw.String() })
	if i < 0 {
		return discoveredMachine{}, nil
	}
	return discovered(ms[i]), nil
}
