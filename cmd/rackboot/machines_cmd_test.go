package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

var updateGolden = flag.Bool("update", false, "rewrite cmd/rackboot/testdata golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *updateGolden {
		must(t, os.MkdirAll("testdata", 0o755))
		must(t, os.WriteFile(path, got, 0o644))
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./cmd/rackboot -run %s -update to create it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (-update to accept):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

func runRoot(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRootCmd()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

var machinesT0 = time.Date(2026, 5, 4, 10, 0, 0, 0, time.UTC)

// machinesInventory is a state dir as serve leaves it: formula booting,
// a machine in its discovery boot (seen in DHCP as UEFI x64), one told
// to wait (BIOS), and one already adopted as amdusias-ii.
func machinesInventory(t *testing.T, dir string) {
	t.Helper()
	now := machinesT0
	st, err := inventory.Open(dir, inventory.WithClock(func() time.Time { return now }), inventory.WithFlushDelay(time.Hour))
	must(t, err)
	mac := func(s string) net.HardwareAddr { hw, err := net.ParseMAC(s); must(t, err); return hw }
	at := func(d time.Duration) time.Time { return machinesT0.Add(d) }
	st.Record(pxe.Event{Time: at(-3 * time.Hour), Name: "formula", MAC: mac("52:54:00:b0:00:01"), Addr: netip.MustParseAddr("192.168.1.11"), Stage: pxe.StageConfig})
	st.Record(pxe.Event{Time: at(-20 * time.Minute), MAC: mac("52:54:00:00:00:77"), Addr: netip.MustParseAddr("192.168.1.120"), Stage: pxe.StageDHCP,
		Detail: "proxy offer: arch efi-x64, ipxe false, boot tftp ipxe.efi"})
	st.Record(pxe.Event{Time: at(-19 * time.Minute), MAC: mac("52:54:00:00:00:77"), Addr: netip.MustParseAddr("192.168.1.120"), Stage: pxe.StageDHCP,
		Detail: "proxy offer: arch efi-x64, ipxe true, boot http http://192.168.1.2:8080/boot.ipxe"})
	st.Record(pxe.Event{Time: at(-2 * time.Minute), MAC: mac("52:54:00:00:00:77"), Addr: netip.MustParseAddr("192.168.1.120"), Stage: pxe.StageDiscoveryBoot,
		Detail: `uuid=8f5b2a8e-1c2d-4e5f-9a0b-1c2d3e4f5a6b serial="CZ 123" arch=efi-x64 kernel=talos/v1.13.0/x/amd64/kernel`})
	st.Record(pxe.Event{Time: at(-50 * time.Hour), MAC: mac("52:54:00:00:00:88"), Addr: netip.MustParseAddr("192.168.1.121"), Stage: pxe.StageDiscovered,
		Detail: `uuid= serial="" arch=bios`})
	st.Record(pxe.Event{Time: at(-30 * time.Second), MAC: mac("52:54:00:b0:00:06"), Addr: netip.MustParseAddr("192.168.1.122"), Stage: pxe.StageDiscoveryBoot,
		Detail: `uuid= serial="" arch=efi-arm64 kernel=k`})
	must(t, st.Close())
}

// TestMachinesTable: the table (golden) and the JSON of `rackboot
// machines` read from the state dir, with no serve running.
func TestMachinesTable(t *testing.T) {
	dir := t.TempDir()
	machinesInventory(t, dir)
	r, err := profiles.Load("rack.yaml", profiles.ExampleRack)
	must(t, err)
	st, err := inventory.Open(dir)
	must(t, err)
	rep := buildMachinesReport(r, st.Machines(), machinesT0, fromState)
	var b bytes.Buffer
	must(t, writeMachinesTable(&b, rep, "rack.yaml"))
	golden(t, "machines.txt", b.Bytes())

	if len(rep.Known) != 6 || rep.Known[0].Name != "formula" || rep.Known[0].Stage != pxe.StageConfig || rep.Known[1].Stage != "" {
		t.Errorf("known: %+v", rep.Known)
	}
	if len(rep.Discovered) != 3 {
		t.Fatalf("discovered: %+v", rep.Discovered)
	}
	d := rep.Discovered[1] // most recently seen first: the adopted one, then this
	if d.MAC != "52:54:00:00:00:77" || d.Firmware != "efi-x64" || d.Arch != "amd64" || d.Stage != pxe.StageDiscoveryBoot ||
		d.UUID != "8f5b2a8e-1c2d-4e5f-9a0b-1c2d3e4f5a6b" || d.Serial != "CZ 123" || !d.FirstSeen.Equal(machinesT0.Add(-20*time.Minute)) ||
		d.Addr != netip.MustParseAddr("192.168.1.120") || d.Hardware != nil || d.HardwareHint != "talosctl -n 192.168.1.120 get disks --insecure" {
		t.Errorf("discovered[1] = %+v", d)
	}
	if a := rep.Discovered[0]; a.AdoptedAs != "amdusias-ii" || a.Arch != "arm64" || a.Firmware != "efi-arm64" {
		t.Errorf("adopted machine: %+v", a)
	}
	if w := rep.Discovered[2]; w.Firmware != "bios" || w.Arch != "amd64" || w.Stage != pxe.StageDiscovered {
		t.Errorf("waiting machine: %+v", w)
	}
	if !rep.Discovered[0].waiting || !d.waiting || rep.Discovered[2].waiting {
		t.Errorf("in the discovery boot: %v %v %v, want true true false", rep.Discovered[0].waiting, d.waiting, rep.Discovered[2].waiting)
	}

	// With hardware read from the one in its discovery boot, and the
	// adopted one not answering.
	rep.Discovered[1].Hardware = &discoveredHardware{
		System: &hardwareSystem{UUID: d.UUID, Serial: "CZ 123", Manufacturer: "HPE", Product: "ProLiant DL20"},
		Disks: []hardwareDisk{
			{Name: "nvme0n1", Model: "Samsung SSD 980", Serial: "S64ANS0T1", Size: 500107862016, Transport: "nvme"},
			{Name: "sda", Model: "ST8000NM", Serial: "ZA1", Size: 8001563222016, Transport: "sata", Rotational: true},
			{Name: "sr0", Size: 1073741312, Transport: "sata", Readonly: true, CDROM: true},
		},
		Links: []hardwareLink{{Name: "lo", MAC: "00:00:00:00:00:00", Up: true}, {Name: "eno1", MAC: d.MAC, Up: true}, {Name: "eno2", MAC: "52:54:00:00:00:78"}},
	}
	rep.Discovered[1].HardwareHint = ""
	rep.Discovered[0].HardwareError = "machine at 192.168.1.122: Talos maintenance API: read disks: connection refused"
	b.Reset()
	must(t, writeMachinesTable(&b, rep, "rack.yaml"))
	golden(t, "machines-hardware.txt", b.Bytes())
}

// TestMachinesCommandReadsStateOnly: with no serve running, `machines`
// reads machines.json and writes nothing; a state dir that does not exist
// is not created.
func TestMachinesCommandReadsStateOnly(t *testing.T) {
	dir := t.TempDir()
	rack := filepath.Join(dir, "rack.yaml")
	must(t, os.WriteFile(rack, profiles.ExampleRack, 0o644))
	state := filepath.Join(dir, "state")
	machinesInventory(t, state)
	before, err := os.ReadFile(filepath.Join(state, inventory.FileName))
	must(t, err)
	out, _, err := runRoot(t, "-f", rack, "--state", state, "machines", "--json")
	must(t, err)
	var rep machinesReport
	must(t, json.Unmarshal([]byte(out), &rep))
	if rep.From != fromState || len(rep.Known) != 6 || len(rep.Discovered) != 3 {
		t.Fatalf("report: %+v", rep)
	}
	if !strings.Contains(out, `"hardware": null`) {
		t.Errorf("no hardware field in the JSON:\n%s", out)
	}
	after, err := os.ReadFile(filepath.Join(state, inventory.FileName))
	must(t, err)
	if !bytes.Equal(before, after) {
		t.Error("machines changed machines.json")
	}
	ents, _ := os.ReadDir(state)
	if len(ents) != 1 {
		t.Errorf("state dir holds %d files after machines, want only machines.json", len(ents))
	}

	missing := filepath.Join(dir, "nostate")
	out, _, err = runRoot(t, "-f", rack, "--state", missing, "machines")
	must(t, err)
	if !strings.Contains(out, "No machine outside the rack file") || !strings.Contains(out, "no rackboot serve is running") {
		t.Errorf("table without state:\n%s", out)
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("machines created the state dir %s (%v)", missing, err)
	}
}

func TestParseSeen(t *testing.T) {
	for _, tc := range []struct {
		stage, detail string
		want          seen
	}{
		{pxe.StageDHCP, "proxy offer: arch efi-x64, ipxe false, boot tftp ipxe.efi", seen{dhcpArch: "efi-x64"}},
		{pxe.StageDHCP, "proxy boot server ack: arch bios, ipxe false, boot tftp undionly.kpxe", seen{dhcpArch: "bios"}},
		{pxe.StageDHCP, "offer 10.77.0.100: arch http-arm64, ipxe false, boot http http://x/ipxe/ipxe-arm64.efi", seen{dhcpArch: "http-arm64"}},
		{pxe.StageDHCP, "offer 10.77.0.100: arch unknown, ipxe false", seen{}},
		{pxe.StageDHCP, "lease 10.0.0.1", seen{}},
		{pxe.StageDiscovered, `uuid=8f5b2a8e-1c2d-4e5f-9a0b-1c2d3e4f5a6b serial="SN \"1\"" arch=efi-arm64`, seen{ipxeArch: "efi-arm64", uuid: "8f5b2a8e-1c2d-4e5f-9a0b-1c2d3e4f5a6b", serial: `SN "1"`}},
		{pxe.StageDiscoveryBoot, `uuid= serial="" arch=bios kernel=k`, seen{ipxeArch: "bios"}},
		{pxe.StageDiscovered, `uuid= serial="" arch=unknown (no discovery boot: run rackboot assets pull)`, seen{}},
		{pxe.StageScript, `uuid=1 serial="" arch=bios`, seen{}},
	} {
		if got := parseSeen(tc.stage, tc.detail); got != tc.want {
			t.Errorf("parseSeen(%s, %q) = %+v, want %+v", tc.stage, tc.detail, got, tc.want)
		}
	}
}

func FuzzParseSeen(f *testing.F) {
	f.Add(pxe.StageDHCP, "proxy offer: arch efi-x64, ipxe false, boot tftp ipxe.efi")
	f.Add(pxe.StageDiscovered, `uuid=8f5b2a8e-1c2d-4e5f-9a0b-1c2d3e4f5a6b serial="a\"b" arch=bios`)
	f.Add(pxe.StageDiscoveryBoot, `uuid= serial="\xff" arch=efi-x64 kernel=k`)
	f.Fuzz(func(t *testing.T, stage, detail string) {
		s := parseSeen(stage, detail)
		for _, a := range []string{s.dhcpArch, s.ipxeArch} {
			if a != "" && pxe.ParseArch(a) == pxe.ArchUnknown {
				t.Fatalf("parseSeen gave firmware %q", a)
			}
		}
		if s.serial != "" && !strings.Contains(detail, "serial=") {
			t.Fatalf("serial %q from %q", s.serial, detail)
		}
	})
}
