package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/lab/standin/apid"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// maintenanceMachine is the stand-in's Talos API in maintenance mode for
// the machine of lab/standin/apid/testdata (eth0 52:54:00:12:34:56; an
// NVMe with serial nvme-install-0, a SATA disk, a read-only virtio disk),
// served on loopback. Configs applied to it are collected.
type maintenanceMachine struct {
	ap      netip.AddrPort
	mu      sync.Mutex
	applied [][]byte
}

const maintenanceMAC = "52:54:00:12:34:56"

func startMaintenance(t *testing.T) *maintenanceMachine {
	t.Helper()
	inv, err := apid.ReadInventory("../../lab/standin/apid/testdata/sysfs")
	if err != nil {
		t.Fatal(err)
	}
	mm := &maintenanceMachine{}
	s, err := apid.New(apid.Config{
		Version: "v1.13.0", Inventory: inv, Addresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Hostname: "talos-maint",
		OnApply: func(_ context.Context, _ config.Provider, raw []byte) error {
			mm.mu.Lock()
			defer mm.mu.Unlock()
			mm.applied = append(mm.applied, raw)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mm.ap = netip.MustParseAddrPort(ln.Addr().String())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return mm
}

func (mm *maintenanceMachine) configs() [][]byte {
	mm.mu.Lock()
	defer mm.mu.Unlock()
	return slices.Clone(mm.applied)
}

// closedPort is a loopback address where nothing listens.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return ap
}

// TestMaintenanceHardware reads the machine's inventory with machinery's
// client over the maintenance TLS, as `rackboot machines` does.
func TestMaintenanceHardware(t *testing.T) {
	mm := startMaintenance(t)
	api, err := dialMaintenanceAt(context.Background(), mm.ap)
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	hw, err := api.Hardware(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := []hardwareDisk{
		// The WWIDs are the kernel's for QEMU's NVMe and AHCI disks: the
		// SATA disk has no serial in Talos, only its WWID.
		{Name: "nvme0n1", Model: "QEMU NVMe Ctrl", Serial: "nvme-install-0", WWID: "nvme.1b36-6e766d652d30-51454d55204e564d65204374726c-00000001", Size: 20971520 * 512, Transport: "nvme"},
		{Name: "sda", Model: "QEMU HARDDISK", WWID: "t10.ATA     QEMU HARDDISK                           QM00001", Size: 25165824 * 512, Transport: "sata", Rotational: true},
		{Name: "vda", Serial: "vd-config", Size: 2097152 * 512, Transport: "virtio", Rotational: true, Readonly: true},
	}
	if !slices.Equal(hw.Disks, want) {
		t.Errorf("disks:\n got %+v\nwant %+v", hw.Disks, want)
	}
	if !hasMAC(hw.Links, mustMAC(t, maintenanceMAC)) || len(hw.Links) != 2 {
		t.Errorf("links %+v, want lo and eth0 with %s", hw.Links, maintenanceMAC)
	}
	if hw.System == nil || hw.System.UUID != "8e2b6f7a-1c3d-4e5f-9a0b-1c2d3e4f5a6b" || hw.System.Serial != "LAB-URBAN-01" || hw.System.Manufacturer != "QEMU" {
		t.Errorf("system: %+v", hw.System)
	}
	if got := compactHardware(hw); got != "2 disks: nvme0n1 10.0 GiB, sda 12.0 GiB; 1 NIC" {
		t.Errorf("compact: %q", got)
	}
}

// TestMaintenanceNoAnswer: a machine that does not answer is named, with
// the API, in the error.
func TestMaintenanceNoAnswer(t *testing.T) {
	ap := closedPort(t)
	api, err := dialMaintenanceAt(context.Background(), ap)
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	_, err = api.Hardware(context.Background())
	if err == nil || !strings.HasPrefix(err.Error(), "machine at 127.0.0.1: Talos maintenance API: read disks: ") {
		t.Errorf("Hardware from a closed port: %v", err)
	}
}

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	hw, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

// adoptTestRack installs on the NVMe (the testdata machine has one).
const adoptTestRack = `# the lab rack
cluster:
  name: adopt
  talosVersion: v1.13.0
  kubernetesVersion: 1.36.0
  vip: 10.77.0.10
  network:
    subnet: 10.77.0.0/24
    gateway: 10.77.0.254
    nameservers: [10.77.0.254]
    rackboot: 10.77.0.1
  installDisk:
    type: nvme
machines:
  # the first control plane
  - name: cp1
    role: controlplane
    select: {mac: ["52:54:00:b0:00:01"]}
    address: 10.77.0.11/24
`

// adoptFixture is a rack file with the new machine added (as runAdopt
// writes it) and a state dir with the cluster's secrets.
func adoptFixture(t *testing.T, mac string) (*app, []byte, profiles.Machine) {
	t.Helper()
	dir := t.TempDir()
	a := &app{rackPath: filepath.Join(dir, "rack.yaml"), stateDir: filepath.Join(dir, "state"), log: slog.New(slog.DiscardHandler)}
	if _, _, err := profiles.LoadOrCreateSecrets(a.stateDir, time.Now); err != nil {
		t.Fatal(err)
	}
	m, err := adoptedMachine(mac, &adoptFlags{name: "w9", role: "worker"}, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := adoptRack(a.rackPath, []byte(adoptTestRack), m)
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(a.rackPath, out, 0o600))
	return a, out, m
}

// TestApplyAdopted: the adopted machine gets, through the maintenance
// API, exactly the config serve's Booter would serve it over HTTP, and
// Talos (the stand-in's apid: machinery's validation against the
// machine's disks) takes it.
func TestApplyAdopted(t *testing.T) {
	mm := startMaintenance(t)
	a, rackText, m := adoptFixture(t, maintenanceMAC)
	var out bytes.Buffer
	if err := applyAdopted(context.Background(), a, &out, a.rackPath, rackText, m, mm.ap); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "sent w9 its config through Talos's maintenance API at 127.0.0.1 (Applied configuration without a reboot)") {
		t.Errorf("output:\n%s", out.String())
	}
	got := mm.configs()
	if len(got) != 1 {
		t.Fatalf("%d configs applied, want 1", len(got))
	}
	// What serve would serve w9 (profiles.Booter.Config, as serve builds it).
	r, err := profiles.Load(a.rackPath, rackText)
	must(t, err)
	b, err := profiles.LoadSecrets(filepath.Join(a.stateDir, profiles.SecretsFile))
	must(t, err)
	opts, err := mirrorConfigOptions(r)
	must(t, err)
	served, err := profiles.NewBooter(r, b, nil, profiles.WithConfigOptions(opts...)).Config(context.Background(), "w9")
	must(t, err)
	if !bytes.Equal(got[0], served) {
		t.Error("the applied config is not the one serve serves w9")
	}
	cfg, err := configloader.NewFromBytes(got[0])
	must(t, err)
	if cfg.Machine().Type().String() != "worker" || cfg.NetworkHostnameConfig() == nil || cfg.NetworkHostnameConfig().Hostname() != "w9" {
		t.Errorf("applied config: type %s hostname %v", cfg.Machine().Type(), cfg.NetworkHostnameConfig())
	}
	if strings.Contains(out.String(), "BEGIN") || strings.Contains(out.String(), "token") {
		t.Errorf("output shows secrets:\n%s", out.String())
	}
}

// TestApplyAdoptedRefusesAnotherMachine: the machine at the address does
// not report the adopted MAC: no config is sent, the command fails.
func TestApplyAdoptedRefusesAnotherMachine(t *testing.T) {
	mm := startMaintenance(t)
	a, rackText, m := adoptFixture(t, "52:54:00:00:00:99")
	var out bytes.Buffer
	err := applyAdopted(context.Background(), a, &out, a.rackPath, rackText, m, mm.ap)
	if !errors.Is(err, errWrongMachine) || !strings.Contains(err.Error(), "no link with MAC 52:54:00:00:00:99 (its links: 52:54:00:12:34:56)") {
		t.Errorf("apply to another machine: %v", err)
	}
	if n := len(mm.configs()); n != 0 {
		t.Errorf("%d configs sent to the wrong machine", n)
	}
}

// TestApplyAdoptedNoAnswer: nothing answers at the address: adopt still
// succeeds (the rack is written) and says the machine installs at its
// next network boot.
func TestApplyAdoptedNoAnswer(t *testing.T) {
	a, rackText, m := adoptFixture(t, maintenanceMAC)
	var out bytes.Buffer
	if err := applyAdopted(context.Background(), a, &out, a.rackPath, rackText, m, closedPort(t)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "machine at 127.0.0.1: Talos maintenance API:") || !strings.Contains(out.String(), "restart it with a network boot") {
		t.Errorf("output:\n%s", out.String())
	}
}

// TestApplyAdoptedNeedsSecrets: without the cluster secrets nothing is
// sent, and none are created.
func TestApplyAdoptedNeedsSecrets(t *testing.T) {
	mm := startMaintenance(t)
	a, rackText, m := adoptFixture(t, maintenanceMAC)
	a.stateDir = filepath.Join(t.TempDir(), "empty")
	var out bytes.Buffer
	err := applyAdopted(context.Background(), a, &out, a.rackPath, rackText, m, mm.ap)
	if err == nil || !strings.Contains(err.Error(), "no cluster secrets") {
		t.Errorf("apply without secrets: %v", err)
	}
	if len(mm.configs()) != 0 {
		t.Error("a config was sent")
	}
	if _, err := os.Stat(a.stateDir); !os.IsNotExist(err) {
		t.Errorf("the state dir was created (%v)", err)
	}
}

// TestFillHardware: machines waiting in the discovery boot are read (one
// answers, one does not and gets a note); the others are not asked.
func TestFillHardware(t *testing.T) {
	mm := startMaintenance(t)
	closed := closedPort(t)
	answering, silent, waitScript := netip.MustParseAddr("10.77.0.120"), netip.MustParseAddr("10.77.0.121"), netip.MustParseAddr("10.77.0.122")
	rep := machinesReport{Discovered: []discoveredMachine{
		{MAC: "52:54:00:12:34:56", Addr: answering, waiting: true},
		{MAC: "52:54:00:00:00:02", Addr: silent, waiting: true},
		{MAC: "52:54:00:00:00:03", Addr: waitScript},
		{MAC: "52:54:00:00:00:04", waiting: true},
	}}
	var mu sync.Mutex
	var asked []netip.Addr
	fillHardware(context.Background(), &rep, func(ctx context.Context, addr netip.Addr) (*discoveredHardware, error) {
		mu.Lock()
		asked = append(asked, addr)
		mu.Unlock()
		ap := closed
		if addr == answering {
			ap = mm.ap
		}
		api, err := dialMaintenanceAt(ctx, ap)
		if err != nil {
			return nil, err
		}
		defer api.Close()
		return api.Hardware(ctx)
	})
	slices.SortFunc(asked, netip.Addr.Compare)
	if !slices.Equal(asked, []netip.Addr{answering, silent}) {
		t.Errorf("asked %v, want the two waiting machines with an address", asked)
	}
	d := rep.Discovered
	if d[0].Hardware == nil || len(d[0].Hardware.Disks) != 3 || d[0].HardwareError != "" {
		t.Errorf("answering machine: %+v", d[0])
	}
	if d[1].Hardware != nil || !strings.HasPrefix(d[1].HardwareError, "machine at 127.0.0.1: Talos maintenance API: ") {
		t.Errorf("silent machine: %+v", d[1])
	}
	if d[2].Hardware != nil || d[2].HardwareError != "" || d[3].Hardware != nil || d[3].HardwareError != "" {
		t.Errorf("machines not in the discovery boot or without an address were touched: %+v %+v", d[2], d[3])
	}
}

func TestInDiscoveryBoot(t *testing.T) {
	tl := func(stages ...string) inventory.Machine {
		m := inventory.Machine{}
		for _, s := range stages {
			m.Timeline = append(m.Timeline, inventory.Entry{Stage: s})
		}
		return m
	}
	for _, tc := range []struct {
		name string
		m    inventory.Machine
		want bool
	}{
		{"never seen", tl(), false},
		{"discovery boot", tl(pxe.StageDHCP, pxe.StageIPXE, pxe.StageDiscoveryBoot), true},
		{"its Talos asked for an address", tl(pxe.StageDiscoveryBoot, pxe.StageKernel, pxe.StageInitrd, pxe.StageDHCP), true},
		{"told to wait", tl(pxe.StageDHCP, pxe.StageDiscovered), false},
		{"waits after a discovery boot", tl(pxe.StageDiscoveryBoot, pxe.StageDHCP, pxe.StageDiscovered), false},
		{"installing", tl(pxe.StageDiscoveryBoot, inventory.StageInstalling), false},
		{"booted its disk", tl(pxe.StageDiscoveryBoot, pxe.StageLocalBoot), false},
	} {
		if got := inDiscoveryBoot(tc.m); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestSizeText(t *testing.T) {
	for in, want := range map[uint64]string{
		0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 2 << 30: "2.0 GiB", 1536 << 20: "1.5 GiB", 8 << 40: "8.0 TiB",
	} {
		if got := sizeText(in); got != want {
			t.Errorf("sizeText(%d) = %q, want %q", in, got, want)
		}
	}
}
