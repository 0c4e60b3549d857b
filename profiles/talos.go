package profiles

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
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
	"github.com/siderolabs/talos/pkg/machinery/config/types/cri"
	"github.com/siderolabs/talos/pkg/machinery/config/types/meta"
	"github.com/siderolabs/talos/pkg/machinery/config/types/network"
	"github.com/siderolabs/talos/pkg/machinery/config/types/runtime"
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

// KernelArgs is the metal kernel command line of a Talos release, built the
// way Talos's imager builds it (pkg/imager/imager.go buildCmdline, with
// go-procfs v0.1.2 semantics): talos.platform, the platform's console, Talos's
// defaults for that version, then extra (a schematic's extraKernelArgs).
// Extra console= and talos.platform= replace ours where ours stand (all
// values of the key, as the factory and the installer do); "-name" removes
// every name=..., "-name=value" that value only; any other extra argument
// adds a value to its key (where the key first stands, else at the end).
// Netboot-only arguments (talos.config=, the events sink) and the ISO's
// talos.halt_if_installed=1 are not included.
func KernelArgs(talosVersion, arch string, extra []string) ([]string, error) {
	q := quirks.New(talosVersion)
	if q.Version() == nil {
		return nil, fmt.Errorf("kernel args: Talos version %q does not parse: write it like v1.13.0", talosVersion)
	}
	var c cmdline
	c.add("talos.platform", "metal")
	switch arch {
	case "", "amd64":
		if q.SupportsMetalPlatformConsoleTTYS0() {
			c.set(cmdParam{"console", []string{"ttyS0", "tty0"}})
		} else {
			c.set(cmdParam{"console", []string{"tty0"}})
		}
	case "arm64":
		c.set(cmdParam{"console", []string{"ttyAMA0", "tty0"}})
	default:
		return nil, fmt.Errorf("kernel args: architecture %q is not one Talos ships: write amd64 or arm64", arch)
	}
	for _, p := range parseCmdline(kernel.DefaultArgs(q)) {
		for _, v := range p.values {
			c.add(p.key, v)
		}
	}
	for _, a := range extra {
		if a = strings.TrimSpace(a); a == "" || a == "-" {
			return nil, fmt.Errorf("kernel args: empty argument in %q", extra)
		}
	}
	for _, p := range parseCmdline(extra) {
		switch {
		case len(p.key) > 1 && p.key[0] == '-':
			c.remove(p.key[1:], p.values)
		case p.key == "console" || p.key == "talos.platform":
			c.set(p)
		default:
			for _, v := range p.values {
				c.add(p.key, v)
			}
		}
	}
	return c.strings(), nil
}

// cmdParam is one key of a kernel command line with all its values, in
// order ("" for a flag such as slab_nomerge).
type cmdParam struct {
	key    string
	values []string
}

// cmdline is a kernel command line as go-procfs (which Talos uses) holds
// it: one entry per key, where the key first appeared.
type cmdline []cmdParam

// parseCmdline groups arguments by key, as procfs's parse does.
func parseCmdline(args []string) cmdline {
	var c cmdline
	for _, f := range strings.Fields(strings.Join(args, " ")) {
		k, v, _ := strings.Cut(f, "=")
		c.add(k, v)
	}
	return c
}

// add appends a value to key k (procfs Cmdline.Append).
func (c *cmdline) add(k, v string) {
	for i := range *c {
		if (*c)[i].key == k {
			(*c)[i].values = append((*c)[i].values, v)
			return
		}
	}
	*c = append(*c, cmdParam{k, []string{v}})
}

// set replaces key p.key with p where it stands, or appends it (procfs
// Cmdline.Set).
func (c *cmdline) set(p cmdParam) {
	for i := range *c {
		if (*c)[i].key == p.key {
			(*c)[i] = p
			return
		}
	}
	*c = append(*c, p)
}

// remove drops key k when the first value is "" ("-name"), else only the
// values given ("-name=value"), as procfs AppendAll with
// WithDeleteNegatedArgs does (DeleteAll and Delete).
func (c *cmdline) remove(k string, values []string) {
	for i := range *c {
		if (*c)[i].key != k {
			continue
		}
		if values[0] == "" {
			*c = slices.Delete(*c, i, i+1)
			return
		}
		(*c)[i].values = slices.DeleteFunc((*c)[i].values, func(v string) bool { return slices.Contains(values, v) })
		return
	}
}

// strings renders the command line, one argument per value.
func (c cmdline) strings() []string {
	var out []string
	for _, p := range c {
		for _, v := range p.values {
			if v == "" {
				out = append(out, p.key)
			} else {
				out = append(out, p.key+"="+v)
			}
		}
	}
	return out
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
func GenerateConfig(r *Rack, name string, b *secrets.Bundle, opts ...ConfigOption) ([]byte, error) {
	m, err := r.machineByName(name)
	if err != nil {
		return nil, err
	}
	cfg, err := r.machineConfig(m, b, opts...)
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
func (r *Rack) machineConfig(m *Machine, b *secrets.Bundle, opts ...ConfigOption) (coreconfig.Provider, error) {
	if _, ok := r.RegistryURL(); r.Cluster.Offline && !ok {
		// validate says the same at cluster.offline.
		return nil, fmt.Errorf("config for %s: cluster.offline is true but cluster.network.rackboot is not an address, so no image could be pulled: write rackboot: <this computer's address on the rack network> under cluster.network", m.Name)
	}
	cfg, err := r.baseConfig(m, b, opts...)
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
// VIP, labels and taints of the rack, and the documents pointing at
// rackboot (events, kernel log, registry mirror).
func (r *Rack) baseConfig(m *Machine, b *secrets.Bundle, opts ...ConfigOption) (coreconfig.Provider, error) {
	var o configOptions
	for _, opt := range opts {
		opt(&o)
	}
	for _, f := range o.hostFuncs {
		hosts, err := f()
		if err != nil {
			return nil, fmt.Errorf("config for %s: registries to mirror: %w", m.Name, err)
		}
		o.registryHosts = append(o.registryHosts, hosts...)
	}
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
			if err := r.pinRackSubnet(d, m); err != nil {
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
	rtDocs, err := r.runtimeDocs()
	if err != nil {
		return nil, fmt.Errorf("config for %s: %w", m.Name, err)
	}
	docs = append(docs, rtDocs...)
	regDocs, err := r.registryDocs(o.registryHosts)
	if err != nil {
		return nil, fmt.Errorf("config for %s: %w", m.Name, err)
	}
	docs = append(docs, regDocs...)
	cfg, err := container.New(docs...)
	if err != nil {
		return nil, fmt.Errorf("assemble config for %s: %w", m.Name, err)
	}
	return cfg, nil
}

// Ports of rackboot serve's events sink (gRPC, TCP), kernel log receiver
// (UDP) and registry mirror (OCI distribution API, plain HTTP, TCP): its
// --events-port and --log-port defaults and the mirror's port, which the
// EventSinkConfig, KmsgLogConfig and RegistryMirrorConfigs of every config
// point at.
const (
	EventsPort   = 4002
	LogPort      = 4003
	RegistryPort = 5000
)

// KmsgLogName names the KmsgLogConfig document rackboot writes.
const KmsgLogName = "rackboot"

// EventsAddr and LogURL are where a machine's config sends Talos's events
// and kernel log: rackboot's address on the rack network
// (cluster.network.rackboot). ok is false when the rack file does not give
// it. LogURL is written as talos.logging.kernel= is, so that Talos (which
// drops a config destination equal to the command line's) streams once.
func (r *Rack) EventsAddr() (addr string, ok bool) {
	a, err := netip.ParseAddr(r.Cluster.Network.Rackboot)
	if err != nil {
		return "", false
	}
	return net.JoinHostPort(a.String(), strconv.Itoa(EventsPort)), true
}

// LogURL: see EventsAddr.
func (r *Rack) LogURL() (u string, ok bool) {
	a, err := netip.ParseAddr(r.Cluster.Network.Rackboot)
	if err != nil {
		return "", false
	}
	return "udp://" + net.JoinHostPort(a.String(), strconv.Itoa(LogPort)), true
}

// runtimeDocs are the EventSinkConfig and KmsgLogConfig pointing at
// rackboot. After install Talos boots the UKI's own command line, without
// the netboot's talos.events.sink= and talos.logging.kernel=, and an ISO or
// USB boot never had them: only these documents keep events and kernel logs
// coming. None when the rack file does not say where rackboot is (validate
// warns).
func (r *Rack) runtimeDocs() ([]docconfig.Document, error) {
	ev, ok := r.EventsAddr()
	if !ok {
		return nil, nil
	}
	lu, _ := r.LogURL()
	sink := runtime.NewEventSinkV1Alpha1()
	sink.Endpoint = ev
	kmsg := runtime.NewKmsgLogV1Alpha1()
	kmsg.MetaName = KmsgLogName
	u, err := url.Parse(lu)
	if err != nil {
		return nil, fmt.Errorf("kernel log URL %q: %w", lu, err)
	}
	kmsg.KmsgLogURL.URL = u
	return []docconfig.Document{sink, kmsg}, nil
}

// DefaultRegistryHosts are the upstream registries every rack pulls from,
// whatever its bundles: the Image Factory (the installer,
// factory.talos.dev/metal-installer/...), ghcr.io (Talos's kubelet,
// installer and flannel images), registry.k8s.io (the control plane,
// etcd's pause, CoreDNS), quay.io and docker.io (Rook-Ceph, CloudNativePG and
// most charts). Sorted.
func DefaultRegistryHosts() []string {
	return []string{"docker.io", "factory.talos.dev", "ghcr.io", "quay.io", "registry.k8s.io"}
}

// ConfigOption changes how GenerateConfig writes a config.
type ConfigOption func(*configOptions)

type configOptions struct {
	registryHosts []string
	hostFuncs     []func() ([]string, error)
}

// WithRegistryHosts adds upstream registries to mirror, besides
// DefaultRegistryHosts: the registries of the bundles' images, which are
// listed elsewhere. A host is written as it stands first in an image name
// (ghcr.io, registry.example.com:5000); Docker Hub's aliases index.docker.io
// and registry-1.docker.io are docker.io (see NormalizeRegistryHost).
func WithRegistryHosts(hosts ...string) ConfigOption {
	return func(o *configOptions) { o.registryHosts = append(o.registryHosts, hosts...) }
}

// WithRegistryHostsFunc is WithRegistryHosts with hosts known later: f is
// called for each config (make it cheap after its first call, e.g.
// sync.OnceValues), and its error fails the config.
func WithRegistryHostsFunc(f func() ([]string, error)) ConfigOption {
	return func(o *configOptions) { o.hostFuncs = append(o.hostFuncs, f) }
}

// registryHostRE is a registry host as an image name starts with one
// (distribution's reference grammar: domain components and an optional
// port, or a bracketed IPv6 address and an optional port).
var registryHostRE = regexp.MustCompile(`^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?$`)

// NormalizeRegistryHost returns the name Talos and containerd give the
// registry of an image: the host as written, except Docker Hub, which
// containerd calls docker.io (index.docker.io is go-containerregistry's
// name for it, registry-1.docker.io its API host). It refuses anything
// that is not a bare host[:port] (a scheme, a path, the '*' wildcard).
func NormalizeRegistryHost(host string) (string, error) {
	switch host {
	case "index.docker.io", "registry-1.docker.io":
		return "docker.io", nil
	case "*":
		return "", fmt.Errorf("registry host %q: rackboot mirrors named registries only; write each one, such as ghcr.io", host)
	}
	if len(host) > 255 || !registryHostRE.MatchString(host) {
		return "", fmt.Errorf("registry host %q is not a registry name: write it as an image name starts, such as ghcr.io or registry.example.com:5000 (no scheme, no path)", host)
	}
	if h, port, err := net.SplitHostPort(host); err == nil {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("registry host %q: port %q is not a port number (1-65535)", host, port)
		}
		// SplitHostPort drops the brackets: "[0]:1" gives "0", which must
		// still be an IPv6 address because it was written in brackets.
		if strings.HasPrefix(host, "[") || strings.Contains(h, ":") {
			if a, err := netip.ParseAddr(h); err != nil || !a.Is6() {
				return "", fmt.Errorf("registry host %q: %q is not an IPv6 address", host, h)
			}
		}
	} else if strings.HasPrefix(host, "[") {
		if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err != nil || !a.Is6() {
			return "", fmt.Errorf("registry host %q: not an IPv6 address", host)
		}
	}
	return host, nil
}

// RegistryHosts is every registry a rack's configs mirror:
// DefaultRegistryHosts and extra, normalized, without duplicates, sorted.
func RegistryHosts(extra ...string) ([]string, error) {
	hosts := DefaultRegistryHosts()
	for _, h := range extra {
		n, err := NormalizeRegistryHost(h)
		if err != nil {
			return nil, err
		}
		hosts = append(hosts, n)
	}
	slices.Sort(hosts)
	return slices.Compact(hosts), nil
}

// RegistryURL is the endpoint of rackboot's registry mirror that every
// config names for every mirrored registry: http://<rackboot>:RegistryPort
// (plain HTTP; Talos accepts http and https endpoints). ok is false when the
// rack file does not say where rackboot is.
func (r *Rack) RegistryURL() (u string, ok bool) {
	a, err := netip.ParseAddr(r.Cluster.Network.Rackboot)
	if err != nil {
		return "", false
	}
	return "http://" + net.JoinHostPort(a.String(), strconv.Itoa(RegistryPort)), true
}

// registryDocs are the RegistryMirrorConfig documents sending every
// registry the rack uses to rackboot's mirror, in host order: Talos v1.13
// deprecates machine.registries for them (docs/DESIGN.md, "Registry
// mirror"). Without skipFallback Talos tries the upstream registry after
// the mirror; cluster.offline sets skipFallback, so nothing is pulled from
// the internet. None when the rack file does not say where rackboot is
// (validate warns, and with offline it is an error).
func (r *Rack) registryDocs(extra []string) ([]docconfig.Document, error) {
	hosts, err := RegistryHosts(extra...)
	if err != nil {
		return nil, err
	}
	endpoint, ok := r.RegistryURL()
	if !ok {
		return nil, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return nil, fmt.Errorf("registry mirror URL %q: %w", endpoint, err)
	}
	docs := make([]docconfig.Document, 0, len(hosts))
	for _, h := range hosts {
		d := cri.NewRegistryMirrorConfigV1Alpha1(h)
		d.RegistryEndpoints = []cri.RegistryEndpoint{{EndpointURL: meta.URL{URL: u}}}
		if r.Cluster.Offline {
			d.RegistrySkipFallback = new(true)
		}
		docs = append(docs, d)
	}
	return docs, nil
}

// pinRackSubnet keeps the node IP (kubelet) and, on control planes, etcd's
// advertised address on the rack subnet: Talos runs DHCP on every other
// link of a machine, and without these it may pick an address from
// another NIC. Talos itself keeps the VIP out of both.
func (r *Rack) pinRackSubnet(c *v1alpha1.Config, m *Machine) error {
	subnet, err := netip.ParsePrefix(r.Cluster.Network.Subnet)
	if err != nil {
		return fmt.Errorf("cluster.network.subnet %q: write the rack network in CIDR form, such as 192.168.1.0/24: %w", r.Cluster.Network.Subnet, err)
	}
	mc := c.MachineConfig
	if mc.MachineKubelet == nil {
		mc.MachineKubelet = &v1alpha1.KubeletConfig{}
	}
	mc.MachineKubelet.KubeletNodeIP = &v1alpha1.KubeletNodeIPConfig{KubeletNodeIPValidSubnets: []string{subnet.Masked().String()}}
	if m.Role != RoleControlPlane {
		return nil
	}
	if c.ClusterConfig == nil {
		return errors.New("the generated control-plane config has no cluster section")
	}
	if c.ClusterConfig.EtcdConfig == nil {
		c.ClusterConfig.EtcdConfig = &v1alpha1.EtcdConfig{}
	}
	c.ClusterConfig.EtcdConfig.EtcdAdvertisedSubnets = []string{subnet.Masked().String()}
	return nil
}

// InstallDiskSelector is the machine's install disk rule as the config's
// machine.install.diskSelector (`rackboot disks` matches it against the
// machine's disks the way Talos does).
func (r *Rack) InstallDiskSelector(m *Machine) (*v1alpha1.InstallDiskSelector, error) {
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
			return nil, fmt.Errorf("install disk size %q: write a condition such as \">= 100GB\": %w", d.Size, err)
		}
	}
	return sel, nil
}

// applyMachineSettings sets the install disk selector, node labels and
// taints.
func (r *Rack) applyMachineSettings(mc *v1alpha1.MachineConfig, m *Machine) error {
	sel, err := r.InstallDiskSelector(m)
	if err != nil {
		return err
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
// first MAC of select.mac: Talos 1.13 names interfaces predictably
// (enp3s0...), so a fixed "eth0" would match nothing on most servers. Only
// one MAC, because Talos skips an alias whose selector matches more than
// one link (a link that is down counts too): with "mac in [a, b]" a machine
// with both NICs would get no alias, hence no static address and no VIP
// (internal/app/machined/pkg/controllers/network/link_alias_config.go).
// validate warns when a machine lists several MACs.
func linkAlias(m *Machine) (*network.LinkAliasConfigV1Alpha1, error) {
	if len(m.Select.MAC) == 0 {
		return nil, fmt.Errorf("%s has a static address or the VIP but no MAC to find its NIC by: add select.mac, or name the interface with link", m.Name)
	}
	hw, err := NormalizeMAC(m.Select.MAC[0])
	if err != nil {
		return nil, fmt.Errorf("mac %q: %w", m.Select.MAC[0], err)
	}
	expr := "mac(link.permanent_addr) == " + strconv.Quote(hw.String())
	sel, err := cel.ParseBooleanExpression(expr, celenv.LinkLocator())
	if err != nil {
		return nil, fmt.Errorf("link selector for %s: %w", m.Name, err)
	}
	a := network.NewLinkAliasConfigV1Alpha1(LinkAlias)
	a.Selector.Match = sel
	return a, nil
}
