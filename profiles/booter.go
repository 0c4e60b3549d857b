package profiles

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"

	"github.com/dotfile/rackboot/pxe"
)

// AssetResolver names the kernel and initramfs asset IDs for a Talos
// version, schematic and arch, or says which command fetches them.
type AssetResolver func(version, schematic, arch string) (kernel, initrd string, err error)

// Booter answers pxe's questions from the rack file: which machine is
// booting, what it boots, and its config. It implements pxe.Booter.
type Booter struct {
	rack      *Rack
	secrets   *secrets.Bundle
	installed func(name string) bool
	assets    AssetResolver
	extraArgs []string
	configOpt []ConfigOption

	mu      sync.Mutex
	configs map[string][]byte // generated configs, by machine name
}

// BooterOption changes a Booter.
type BooterOption func(*Booter)

// WithInstalled tells the Booter which machines have installed Talos (they
// are sent to their local disk).
func WithInstalled(f func(name string) bool) BooterOption {
	return func(b *Booter) { b.installed = f }
}

// WithExtraKernelArgs appends arguments to every kernel command line (the
// lab adds a serial console).
func WithExtraKernelArgs(args ...string) BooterOption {
	return func(b *Booter) { b.extraArgs = append(b.extraArgs, args...) }
}

// WithConfigOptions passes options to every config the Booter generates
// (WithRegistryHosts: the bundles' registries).
func WithConfigOptions(opts ...ConfigOption) BooterOption {
	return func(b *Booter) { b.configOpt = append(b.configOpt, opts...) }
}

// NewBooter returns a Booter for the rack, with the cluster's secrets.
func NewBooter(r *Rack, b *secrets.Bundle, assets AssetResolver, opts ...BooterOption) *Booter {
	bt := &Booter{rack: r, secrets: b, assets: assets, installed: func(string) bool { return false }, configs: map[string][]byte{}}
	for _, o := range opts {
		o(bt)
	}
	return bt
}

var _ pxe.Booter = (*Booter)(nil)

// BootSpec implements pxe.Booter.
func (b *Booter) BootSpec(_ context.Context, c pxe.Client) (*pxe.BootSpec, error) {
	m, err := b.rack.Match(c.MAC, c.UUID, c.Serial)
	if errors.Is(err, ErrNoMatch) {
		return nil, fmt.Errorf("%w: %v", pxe.ErrUnknownMachine, err)
	}
	if err != nil {
		return nil, err
	}
	spec := &pxe.BootSpec{Name: m.Name, LocalBoot: pxe.LocalBoot(m.LocalBoot), MACs: m.MACs()}
	if b.installed(m.Name) {
		spec.Installed = true
		return spec, nil
	}
	arch := m.ArchOrDefault()
	if c.Arch != pxe.ArchUnknown && c.Arch.CPU() != arch {
		return nil, &pxe.BootError{Name: m.Name, Msg: fmt.Sprintf("it boots as %s but the rack file says arch %s: write arch: %s for %s in the rack file", c.Arch.CPU(), arch, c.Arch.CPU(), m.Name)}
	}
	sch := b.rack.Schematic(m)
	id, err := SchematicID(sch)
	if err != nil {
		return nil, fmt.Errorf("schematic of %s: %w", m.Name, err)
	}
	version := b.rack.Cluster.TalosVersion
	kernel, initrd, err := b.assets(version, id, arch)
	if err != nil {
		return nil, &pxe.BootError{Name: m.Name, Msg: oneLine(err)}
	}
	spec.Kernel, spec.Initrd = kernel, []string{initrd}
	args, err := KernelArgs(version, arch, sch.KernelArgs)
	if err != nil {
		return nil, fmt.Errorf("kernel arguments for %s: %w", m.Name, err)
	}
	spec.Cmdline = NetbootCmdline(append(args, b.extraArgs...))
	return spec, nil
}

// NetbootCmdline adds the netboot parameters to kernel arguments, as a
// pxe.BootSpec.Cmdline template: where Talos fetches its config, and where
// it sends its events and kernel log (when rackboot runs those receivers).
func NetbootCmdline(args []string) string {
	return strings.Join(args, " ") +
		" talos.config={{.ConfigURL}}" +
		"{{if .EventsAddr}} talos.events.sink={{.EventsAddr}}{{end}}" +
		"{{if .LogAddr}} talos.logging.kernel=udp://{{.LogAddr}}{{end}}"
}

var _ pxe.Discoverer = (*Booter)(nil)

// DiscoveryBoot implements pxe.Discoverer: a machine that is not in the
// rack boots the cluster's Talos (version, schematic) for the arch its
// firmware says, with the rack's kernel arguments and no talos.config=,
// so Talos comes up in maintenance mode and waits to be configured. Its
// events and kernel log still come to rackboot.
func (b *Booter) DiscoveryBoot(_ context.Context, c pxe.Client) (*pxe.BootSpec, error) {
	arch := c.Arch.CPU()
	sch := b.rack.Schematic(&Machine{})
	id, err := SchematicID(sch)
	if err != nil {
		return nil, fmt.Errorf("cluster schematic: %w", err)
	}
	version := b.rack.Cluster.TalosVersion
	kernel, initrd, err := b.assets(version, id, arch)
	if err != nil {
		return nil, &pxe.BootError{Msg: oneLine(err)}
	}
	args, err := KernelArgs(version, arch, sch.KernelArgs)
	if err != nil {
		return nil, fmt.Errorf("kernel arguments for a discovery boot: %w", err)
	}
	return &pxe.BootSpec{Name: "discovery", Kernel: kernel, Initrd: []string{initrd},
		Cmdline: DiscoveryCmdline(withoutConfig(append(args, b.extraArgs...)))}, nil
}

// withoutConfig drops the arguments that would hand Talos a config (a URL
// or the config itself): a discovery boot goes to anyone on the LAN.
func withoutConfig(args []string) []string {
	var out []string
	for _, a := range args {
		key, _, _ := strings.Cut(a, "=")
		if key == "talos.config" || strings.HasPrefix(key, "talos.config.") {
			continue
		}
		out = append(out, a)
	}
	return out
}

// DiscoveryCmdline is NetbootCmdline without talos.config=: Talos finds no
// config and enters maintenance mode.
func DiscoveryCmdline(args []string) string {
	return strings.Join(args, " ") +
		"{{if .EventsAddr}} talos.events.sink={{.EventsAddr}}{{end}}" +
		"{{if .LogAddr}} talos.logging.kernel=udp://{{.LogAddr}}{{end}}"
}

// Config implements pxe.Booter: the machine's full Talos config. Configs are
// generated once per Booter (the rack and secrets do not change under it).
func (b *Booter) Config(_ context.Context, name string) ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if cfg, ok := b.configs[name]; ok {
		return cfg, nil
	}
	if b.rack.Machine(name) == nil {
		return nil, fmt.Errorf("%w: %q", pxe.ErrUnknownMachine, name)
	}
	cfg, err := GenerateConfig(b.rack, name, b.secrets, b.configOpt...)
	if err != nil {
		return nil, err
	}
	b.configs[name] = cfg
	return cfg, nil
}
