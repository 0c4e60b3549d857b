package profiles

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/pxe"
)

// A discovery boot is the cluster's Talos for the client's arch, with the
// rack's kernel arguments and the receivers, and nothing that hands Talos
// a config: not the config URL, not an inline config smuggled in through
// an extra kernel argument.
func TestDiscoveryBoot(t *testing.T) {
	r := exampleRack(t)
	var asked []string
	assets := func(version, schematic, arch string) (string, string, error) {
		asked = append(asked, version+" "+schematic+" "+arch)
		if arch == "arm64" {
			return "", "", errors.New("no Talos v1.13.0 for arm64 in the cache:\nrun `rackboot assets pull --arch arm64`")
		}
		base := "talos/" + version + "/" + schematic + "/" + arch + "/"
		return base + "kernel", base + "initramfs.xz", nil
	}
	b := NewBooter(r, testBundle(t), assets, WithExtraKernelArgs("console=ttyS0", "talos.config=http://evil/", "talos.config.inline=c2VjcmV0"))
	ctx := context.Background()
	spec, err := b.DiscoveryBoot(ctx, pxe.Client{MAC: bootMAC(t, "52:54:00:99:99:99"), Arch: pxe.ArchX64UEFI})
	if err != nil {
		t.Fatal(err)
	}
	id, err := SchematicID(r.Cluster.Schematic)
	if err != nil {
		t.Fatal(err)
	}
	if want := "v1.13.0 " + id + " amd64"; len(asked) != 1 || asked[0] != want {
		t.Errorf("assets asked %q, want [%s]", asked, want)
	}
	if !strings.Contains(spec.Kernel, id) || len(spec.Initrd) != 1 || spec.Installed || len(spec.MACs) != 0 {
		t.Errorf("spec %+v", spec)
	}
	if strings.Contains(spec.Cmdline, "ConfigURL") {
		t.Fatalf("discovery command line names the config URL: %q", spec.Cmdline)
	}
	line, err := pxe.RenderCmdline(spec.Cmdline, struct{ EventsAddr, LogAddr, Server string }{"10.0.0.1:4002", "10.0.0.1:4003", "10.0.0.1:8080"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"talos.platform=metal", "console=ttyS0", "module.sig_enforce=1",
		"talos.events.sink=10.0.0.1:4002", "talos.logging.kernel=udp://10.0.0.1:4003"} {
		if !strings.Contains(line, want) {
			t.Errorf("discovery command line %q lacks %q", line, want)
		}
	}
	for _, bad := range []string{"talos.config", "evil", "c2VjcmV0"} {
		if strings.Contains(line, bad) {
			t.Errorf("discovery command line %q has %q", line, bad)
		}
	}
	// The same kernel arguments a rack machine gets, minus the config.
	known, err := b.BootSpec(ctx, pxe.Client{MAC: bootMAC(t, "52:54:00:b0:00:04"), Arch: pxe.ArchX64UEFI})
	if err != nil {
		t.Fatal(err)
	}
	kline, err := pxe.RenderCmdline(known.Cmdline, map[string]string{"ConfigURL": "URL", "EventsAddr": "10.0.0.1:4002", "LogAddr": "10.0.0.1:4003", "Server": "s"})
	if err != nil {
		t.Fatal(err)
	}
	for _, arg := range strings.Fields(kline) {
		if !strings.HasPrefix(arg, "talos.config") && !strings.Contains(line, arg) {
			t.Errorf("verus boots with %q, the discovery boot without", arg)
		}
	}

	// No assets for the arch: a BootError saying what to run, one line.
	_, err = b.DiscoveryBoot(ctx, pxe.Client{MAC: bootMAC(t, "52:54:00:99:99:98"), Arch: pxe.ArchARM64UEFI})
	var be *pxe.BootError
	if !errors.As(err, &be) || !strings.Contains(be.Msg, "rackboot assets pull --arch arm64") || strings.Contains(be.Msg, "\n") {
		t.Errorf("arm64 without assets: %v", err)
	}
}

func TestDiscoverSetting(t *testing.T) {
	src := strings.Replace(string(ExampleRack), "  cephDisks: ^sd[a-z]+$\n", "  cephDisks: ^sd[a-z]+$\n  discover: true\n", 1)
	r, err := Load("rack.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if !r.Cluster.Discover {
		t.Fatal("discover: true not read")
	}
	if ps := r.Validate(); ps.Errors() {
		t.Fatalf("a rack with discover: true does not validate:\n%v", ps)
	}
	if r := exampleRack(t); r.Cluster.Discover {
		t.Error("discovery is on in the example rack; it must be asked for")
	}
	if _, err := Load("rack.yaml", []byte(strings.Replace(src, "discover: true", "discover: maybe", 1))); err == nil {
		t.Error("discover: maybe was accepted")
	}
}
