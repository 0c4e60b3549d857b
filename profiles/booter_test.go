package profiles

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/pxe"
)

func testBooter(t *testing.T, installed map[string]bool) *Booter {
	t.Helper()
	assets := func(version, schematic, arch string) (string, string, error) {
		if schematic == "" || version == "" {
			return "", "", errors.New("no schematic or version")
		}
		base := "talos/" + version + "/" + schematic + "/" + arch + "/"
		return base + "kernel", base + "initramfs.xz", nil
	}
	return NewBooter(exampleRack(t), testBundle(t), assets,
		WithInstalled(func(n string) bool { return installed[n] }),
		WithExtraKernelArgs("console=ttyS0"))
}

func TestBooterKnownMachineGetsTalosNetboot(t *testing.T) {
	b := testBooter(t, nil)
	spec, err := b.BootSpec(context.Background(), pxe.Client{MAC: bootMAC(t, "52:54:00:B0:00:06"), Arch: pxe.ArchX64UEFI})
	if err != nil {
		t.Fatal(err)
	}
	if spec.Name != "amdusias-ii" || spec.Installed {
		t.Fatalf("spec = %+v", spec)
	}
	nvidia, err := SchematicID(exampleRack(t).Machine("amdusias-ii").Schematic)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(spec.Kernel, nvidia) || len(spec.Initrd) != 1 || !strings.Contains(spec.Initrd[0], nvidia) {
		t.Errorf("amdusias-ii boots %s %v, want its NVIDIA schematic %s", spec.Kernel, spec.Initrd, nvidia)
	}
	line, err := pxe.RenderCmdline(spec.Cmdline, map[string]string{
		"ConfigURL": "http://10.0.0.1:8080/config?t=x", "EventsAddr": "10.0.0.1:4002", "LogAddr": "10.0.0.1:4003", "Server": "10.0.0.1:8080",
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"talos.platform=metal", "console=ttyS0", "talos.config=http://10.0.0.1:8080/config?t=x",
		"talos.events.sink=10.0.0.1:4002", "talos.logging.kernel=udp://10.0.0.1:4003", "module.sig_enforce=1"} {
		if !strings.Contains(line, want) {
			t.Errorf("cmdline %q lacks %q", line, want)
		}
	}
	// Without receivers the parameters are left out, not left empty.
	line, err = pxe.RenderCmdline(spec.Cmdline, map[string]string{"ConfigURL": "u", "EventsAddr": "", "LogAddr": "", "Server": "s"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(line, "talos.events.sink") || strings.Contains(line, "talos.logging.kernel") {
		t.Errorf("cmdline %q names receivers that do not run", line)
	}
}

func TestBooterUnknownInstalledAndArch(t *testing.T) {
	b := testBooter(t, map[string]bool{"formula": true})
	ctx := context.Background()
	_, err := b.BootSpec(ctx, pxe.Client{MAC: bootMAC(t, "52:54:00:ff:ff:ff")})
	if !errors.Is(err, pxe.ErrUnknownMachine) {
		t.Errorf("unknown MAC: err = %v, want pxe.ErrUnknownMachine", err)
	}
	spec, err := b.BootSpec(ctx, pxe.Client{MAC: bootMAC(t, "52:54:00:b0:00:01")})
	if err != nil || !spec.Installed || spec.Name != "formula" || spec.Kernel != "" {
		t.Errorf("installed formula: spec = %+v, err = %v", spec, err)
	}
	if _, err := b.BootSpec(ctx, pxe.Client{MAC: bootMAC(t, "52:54:00:b0:00:02"), Arch: pxe.ArchARM64UEFI}); err == nil {
		t.Error("an arm64 client matched to an amd64 machine got a boot spec")
	}
}

func TestBooterConfigOnlyForRackMachines(t *testing.T) {
	b := testBooter(t, nil)
	cfg, err := b.Config(context.Background(), "urban")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg), "hostname: urban") {
		t.Errorf("urban's config does not set its hostname")
	}
	again, _ := b.Config(context.Background(), "urban")
	if string(again) != string(cfg) {
		t.Error("config changed between two calls")
	}
	if _, err := b.Config(context.Background(), "intruder"); !errors.Is(err, pxe.ErrUnknownMachine) {
		t.Errorf("config for a machine not in the rack: err = %v", err)
	}
}

func bootMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestBooterConfigOptions: the netboot configs carry WithConfigOptions'
// extra registries beside the default ones, and equal GenerateConfig's with
// the same options (netboot and ISO/USB configs agree).
func TestBooterConfigOptions(t *testing.T) {
	r := exampleRack(t)
	opt := WithRegistryHosts("nvcr.io")
	b := NewBooter(r, testBundle(t), nil, WithConfigOptions(opt))
	got, err := b.Config(context.Background(), "amdusias-ii")
	if err != nil {
		t.Fatal(err)
	}
	want, err := GenerateConfig(r, "amdusias-ii", testBundle(t), opt)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("the Booter's config differs from GenerateConfig's with the same options\n%s", firstDiff(string(want), string(got)))
	}
	hosts := append(DefaultRegistryHosts(), "nvcr.io")
	slices.Sort(hosts)
	wantMirrors(t, loadConfig(t, got), hosts, "http://192.168.1.2:5000", false)
}
