package profiles

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/siderolabs/talos/pkg/machinery/cel"
	"github.com/siderolabs/talos/pkg/machinery/cel/celenv"
	coreconfig "github.com/siderolabs/talos/pkg/machinery/config"
	docconfig "github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	"github.com/siderolabs/talos/pkg/machinery/config/container"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/config/types/network"
	"github.com/siderolabs/talos/pkg/machinery/config/types/v1alpha1"
	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"
	"github.com/siderolabs/talos/pkg/machinery/kernel"
	"github.com/siderolabs/talos/pkg/machinery/nethelpers"
)

// KubernetesAPIPort is the Kubernetes API server's port behind the VIP.
const KubernetesAPIPort = 6443

// metalMode is Talos's validation mode for bare metal: the config must say
// how to install.
type metalMode struct{}

func (metalMode) String() string        { return "metal" }
func (metalMode) RequiresInstall() bool { return true }
func (metalMode) InContainer() bool     { return false }

// KernelArgs is the metal kernel command line of a Talos release, in the
// order the Image Factory writes it (cmdline-metal-<arch>): talos.platform,
// the console, Talos's defaults for that version, then extra (a schematic's
// extraKernelArgs; "-name" removes an argument named name). Netboot-only
// arguments (talos.config=, the events sink) are not included.
func KernelArgs(talosVersion, arch string, extra []string) ([]string, error) {
	q := quirks.New(talosVersion)
	if q.Version() == nil {
		return nil, fmt.Errorf("kernel args: Talos version %q does not parse: write it like v1.13.0", talosVersion)
	}
	args := []string{"talos.platform=metal"}
	switch arch {
	case "", "amd64":
		if q.SupportsMetalPlatformConsoleTTYS0() {
			args = append(args, "console=ttyS0")
		}
		args = append(args, "console=tty0")
	case "arm64":
		args = append(args, "console=ttyAMA0", "console=tty0")
	default:
		return nil, fmt.Errorf("kernel args: architecture %q is not one Talos ships: write amd64 or arm64", arch)
	}
	for _, a := range kernel.DefaultArgs(q) {
		// Talos keeps "slab_nomerge=" as a flag; the command line shows it
		// without "=" (as procfs renders a parameter with no value).
		args = append(args, strings.TrimSuffix(a, "="))
	}
	for _, a := range extra {
		a = strings.TrimSpace(a)
		switch {
		case a == "" || a == "-":
			return nil, fmt.Errorf("kernel args: empty argument in %q", extra)
		case strings.HasPrefix(a, "-"):
			name := a[1:]
			args = slices.DeleteFunc(args, func(x string) bool {
				k, _, _ := strings.Cut(x, "=")
				return k == name
			})
		default:
			args = append(args, a)
		}
	}
	return args, nil
}

// machineByName returns the machine or an error listing the ones there are.
func (r *Rack) machineByName(name string) (*Machine, error) {
	if m := r.Machine(name); m != nil {
		return m, nil
	}
	names := make([]string, len(r.Machines))
	for i := range r.Machines {
		names[i] = r.Machines[i].Name
	}
	return nil, fmt.Errorf("no machine named %q in %s: the machines are %s", name, r.Path, strings.Join(names, ", "))
}

// GenerateConfig returns machine name's full Talos machine config (a
// multi-document YAML) made from the rack and the secrets bundle: the
// generated base, then the rack's settings, then the cluster's patches, then
// the machine's; it passes Talos's metal validation. The same inputs always
// give the same bytes.
func GenerateConfig(r *Rack, name string, b *secrets.Bundle) ([]byte, error) {
	m, err := r.machineByName(name)
	if err != nil {
		return nil, err
	}
	cfg, err := r.machineConfig(m, b)
	if err != nil {
		return nil, err
	}
	out, err := cfg.EncodeBytes(encoder.WithComments(encoder.CommentsDisabled))
	if err != nil {
		return nil, fmt.Errorf("encode config for %s: %w", m.Name, err)
	}
	return out, nil
}

// machineConfig is GenerateConfig before encoding.
func (r *Rack) machineConfig(m *Machine, b *secrets.Bundle) (coreconfig.Provider, error) {
	cfg, err := r.baseConfig(m, b)
	if err != nil {
		return nil, err
	}
	for j, p := range r.Cluster.Patches {
		if cfg, err = applyPatch(cfg, p); err != nil {
			return nil, fmt.Errorf("config for %s: cluster.patches[%d] (line %d): %w", m.Name, j, p.Line(), err)
		}
	}
	for j, p := range m.Patches {
		if cfg, err = applyPatch(cfg, p); err != nil {
			return nil, fmt.Errorf("config for %s: patches[%d] (line %d): %w", m.Name, j, p.Line(), err)
		}
	}
	if _, err := cfg.Validate(metalMode{}); err != nil {
		return nil, fmt.Errorf("config for %s fails Talos's metal validation: %w", m.Name, err)
	}
	return cfg, nil
}

// applyPatch loads one rack patch and applies it.
func applyPatch(cfg coreconfig.Provider, p Patch) (coreconfig.Provider, error) {
	data, err := p.Bytes()
	if err != nil {
		return nil, fmt.Errorf("read patch: %w", err)
	}
	patch, err := configpatcher.LoadPatch(data)
	if err != nil {
		return nil, fmt.Errorf("load patch: %w", err)
	}
	out, err := configpatcher.Apply(configpatcher.WithConfig(cfg), []configpatcher.Patch{patch})
	if err != nil {
		return nil, fmt.Errorf("apply patch: %w", err)
	}
	cfg, err = out.Config()
	if err != nil {
		return nil, fmt.Errorf("load patched config: %w", err)
	}
	return cfg, nil
}

// clusterEndpoint is the Kubernetes API URL: the VIP.
func (r *Rack) clusterEndpoint() string {
	return "https://" + net.JoinHostPort(r.Cluster.VIP, fmt.Sprint(KubernetesAPIPort))
}

// controlPlaneIPs are the static addresses of the control planes, in file
// order (DHCP control planes have none known in advance).
func (r *Rack) controlPlaneIPs() []string {
	var ips []string
	for _, m := range r.ControlPlanes() {
		if m.IsDHCP() {
			continue
		}
		if p, err := netip.ParsePrefix(m.Address); err == nil {
			ips = append(ips, p.Addr().String())
		}
	}
	return ips
}

// versionContract is the config contract of the rack's Talos version.
func (r *Rack) versionContract() (*coreconfig.VersionContract, error) {
	c, err := coreconfig.ParseContractFromVersion(r.Cluster.TalosVersion)
	if err != nil {
		return nil, fmt.Errorf("cluster.talosVersion %q: write a Talos release such as v1.13.0: %w", r.Cluster.TalosVersion, err)
	}
	if !c.MultidocNetworkConfigSupported() {
		return nil, fmt.Errorf("cluster.talosVersion %s is too old: rackboot writes Talos v1.12+ network documents; write v1.13.0", r.Cluster.TalosVersion)
	}
	return c, nil
}

// newInput is what the machinery needs to generate configs for this rack.
func (r *Rack) newInput(b *secrets.Bundle, opts ...generate.Option) (*generate.Input, error) {
	if b == nil {
		return nil, errors.New("no secrets bundle")
	}
	if _, err := netip.ParseAddr(r.Cluster.VIP); err != nil {
		return nil, fmt.Errorf("cluster.vip %q is not an IP address: %w", r.Cluster.VIP, err)
	}
	contract, err := r.versionContract()
	if err != nil {
		return nil, err
	}
	cps := r.controlPlaneIPs()
	workers := len(r.Machines) - len(r.ControlPlanes())
	all := append([]generate.Option{
		generate.WithVersionContract(contract),
		generate.WithSecretsBundle(b),
		// talosctl talks to the nodes themselves: the VIP answers only once
		// etcd is up (see Talosconfig).
		generate.WithEndpointList(cps),
		generate.WithAdditionalSubjectAltNames(append([]string{r.Cluster.VIP}, cps...)),
		// Fewer than three workers cannot carry Ceph and the workloads
		// alone: let the control planes take pods too.
		generate.WithAllowSchedulingOnControlPlanes(workers < 3),
	}, opts...)
	in, err := generate.NewInput(r.Cluster.Name, r.clusterEndpoint(), strings.TrimPrefix(r.Cluster.KubernetesVersion, "v"), all...)
	if err != nil {
		return nil, fmt.Errorf("prepare config generation: %w", err)
	}
	return in, nil
}

// baseConfig is the machine's config before any patch from the rack file:
// generated by the machinery, with the install disk, hostname, addresses,
// VIP, labels and taints of the rack.
func (r *Rack) baseConfig(m *Machine, b *secrets.Bundle) (coreconfig.Provider, error) {
	schematicID, err := SchematicID(r.Schematic(m))
	if err != nil {
		return nil, fmt.Errorf("config for %s: %w", m.Name, err)
	}
	in, err := r.newInput(b, generate.WithInstallImage(InstallerImage(schematicID, r.Cluster.TalosVersion)))
	if err != nil {
		return nil, fmt.Errorf("config for %s: %w", m.Name, err)
	}
	typ := machine.TypeWorker
	if m.Role == RoleControlPlane {
		typ = machine.TypeControlPlane
	}
	gen, err := in.Config(typ)
	if err != nil {
		return nil, fmt.Errorf("generate config for %s: %w", m.Name, err)
	}

	var docs []docconfig.Document
	for _, d := range gen.Documents() {
		d = d.Clone()
		switch d := d.(type) {
		case *v1alpha1.Config:
			if err := r.applyMachineSettings(d.MachineConfig, m); err != nil {
				return nil, fmt.Errorf("config for %s: %w", m.Name, err)
			}
		case *network.HostnameConfigV1Alpha1:
			// generate asks for a stable random name; a rack machine is
			// called by its name.
			d.ConfigAuto = new(nethelpers.AutoHostnameKindOff)
			d.ConfigHostname = m.Name
		}
		docs = append(docs, d)
	}
	netDocs, err := r.networkDocs(m)
	if err != nil {
		return nil, fmt.Errorf("config for %s: %w", m.Name, err)
	}
	docs = append(docs, netDocs...)
	cfg, err := container.New(docs...)
	if err != nil {
		return nil, fmt.Errorf("assemble config for %s: %w", m.Name, err)
	}
	return cfg, nil
}

// applyMachineSettings sets the install disk selector, node labels and
// taints.
func (r *Rack) applyMachineSettings(mc *v1alpha1.MachineConfig, m *Machine) error {
	d := r.InstallDisk(m)
	sel := &v1alpha1.InstallDiskSelector{
		Type:    v1alpha1.InstallDiskType(d.Type),
		Model:   d.Model,
		Serial:  d.Serial,
		BusPath: d.BusPath,
	}
	if d.Size != "" {
		sel.Size = &v1alpha1.InstallDiskSizeMatcher{}
		err := sel.Size.UnmarshalYAML(func(v any) error {
			*(v.(*string)) = d.Size
			return nil
		})
		if err != nil {
			return fmt.Errorf("install disk size %q: write a condition such as \">= 100GB\": %w", d.Size, err)
		}
	}
	mc.MachineInstall.InstallDisk = ""
	mc.MachineInstall.InstallDiskSelector = sel

	if len(m.Labels) > 0 && mc.MachineNodeLabels == nil {
		mc.MachineNodeLabels = map[string]string{}
	}
	for k, v := range m.Labels {
		mc.MachineNodeLabels[k] = v
	}
	if len(m.Taints) > 0 {
		mc.MachineNodeTaints = map[string]string{}
	}
	for _, t := range m.Taints {
		if _, dup := mc.MachineNodeTaints[t.Key]; dup {
			return fmt.Errorf("taint %q is given twice: Talos keeps one effect per key", t.Key)
		}
		// Talos's format: "value:Effect", or "Effect" alone.
		v := t.Effect
		if t.Value != "" {
			v = t.Value + ":" + t.Effect
		}
		mc.MachineNodeTaints[t.Key] = v
	}
	return nil
}

// networkDocs are the machine's v1.12+ network documents: its static address
// with a default route and the nameservers (DHCP machines keep Talos's
// default DHCP), and on control planes the shared layer-2 VIP.
func (r *Rack) networkDocs(m *Machine) ([]docconfig.Document, error) {
	link, aliased := r.Link(m)
	var docs []docconfig.Document
	if aliased && (!m.IsDHCP() || m.Role == RoleControlPlane) {
		alias, err := linkAlias(m)
		if err != nil {
			return nil, err
		}
		docs = append(docs, alias)
	}
	if !m.IsDHCP() {
		addr, err := netip.ParsePrefix(m.Address)
		if err != nil {
			return nil, fmt.Errorf("address %q: write dhcp or an address with its prefix length, such as 192.168.1.11/24: %w", m.Address, err)
		}
		lc := network.NewLinkConfigV1Alpha1(link)
		lc.LinkUp = new(true)
		lc.LinkAddresses = []network.AddressConfig{{AddressAddress: addr}}
		if gw := r.Cluster.Network.Gateway; gw != "" {
			gwAddr, err := netip.ParseAddr(gw)
			if err != nil {
				return nil, fmt.Errorf("cluster.network.gateway %q is not an IP address: %w", gw, err)
			}
			lc.LinkRoutes = []network.RouteConfig{{RouteGateway: network.Addr{Addr: gwAddr}}}
		}
		docs = append(docs, lc)
		if len(r.Cluster.Network.Nameservers) > 0 {
			rc := network.NewResolverConfigV1Alpha1()
			for _, ns := range r.Cluster.Network.Nameservers {
				a, err := netip.ParseAddr(ns)
				if err != nil {
					return nil, fmt.Errorf("nameserver %q is not an IP address: %w", ns, err)
				}
				rc.ResolverNameservers = append(rc.ResolverNameservers, network.NameserverConfig{Address: network.Addr{Addr: a}})
			}
			docs = append(docs, rc)
		}
	}
	if m.Role == RoleControlPlane {
		vip := network.NewLayer2VIPConfigV1Alpha1(r.Cluster.VIP)
		vip.LinkName = link
		docs = append(docs, vip)
	}
	return docs, nil
}

// linkAlias names the machine's rack-facing NIC LinkAlias, selected by the
// MACs the rack file knows it by: Talos 1.13 names interfaces predictably
// (enp3s0...), so a fixed "eth0" would match nothing on most servers.
func linkAlias(m *Machine) (*network.LinkAliasConfigV1Alpha1, error) {
	var macs []string
	for _, s := range m.Select.MAC {
		hw, err := NormalizeMAC(s)
		if err != nil {
			return nil, fmt.Errorf("mac %q: %w", s, err)
		}
		macs = append(macs, strconv.Quote(hw.String()))
	}
	if len(macs) == 0 {
		return nil, fmt.Errorf("%s has a static address or the VIP but no MAC to find its NIC by: add select.mac, or name the interface with link", m.Name)
	}
	expr := "mac(link.permanent_addr) == " + macs[0]
	if len(macs) > 1 {
		expr = "mac(link.permanent_addr) in [" + strings.Join(macs, ", ") + "]"
	}
	sel, err := cel.ParseBooleanExpression(expr, celenv.LinkLocator())
	if err != nil {
		return nil, fmt.Errorf("link selector for %s: %w", m.Name, err)
	}
	a := network.NewLinkAliasConfigV1Alpha1(LinkAlias)
	a.Selector.Match = sel
	return a, nil
}
