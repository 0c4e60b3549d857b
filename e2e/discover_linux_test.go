//go:build linux

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/lab"
	"github.com/dotfile/rackboot/lab/standin/report"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// discoverRack is testRack with cp1 moved to a MAC no lab VM has: the
// lab's one VM (planned from testRack, so with cp1's old MAC) is not in
// the rack file serve reads. A comment in the machines list must survive
// the adoption.
func discoverRack() string {
	r := strings.Replace(testRack, "      mac: [\"52:54:00:e2:e0:01\"]\n", "      mac: [\"52:54:00:e2:e0:f1\"]\n", 1)
	return strings.Replace(r, "machines:\n  - name: cp1\n", "machines:\n  # cp1 is elsewhere; new servers are adopted below\n  - name: cp1\n", 1)
}

// serveCLI runs the rackboot binary inside the lab's namespace with serve's
// rack and state dir (its control socket), as a user on the rack network
// would; stdout is returned, both streams go to cli.log.
func (s *scenario) serveCLI(ctx context.Context, args ...string) (string, error) {
	args = append([]string{"-f", s.rack, "--state", s.lab().Path("serve")}, args...)
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", lab.Namespace(s.name), prepared.bin}, args...)...)
	cmd.Dir = s.dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	if f, ferr := os.OpenFile(filepath.Join(s.dir, "cli.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); ferr == nil {
		fmt.Fprintf(f, "$ (in %s) rackboot %s   (%.1fs, %v)\n%s%s\n", lab.Namespace(s.name), strings.Join(args, " "), time.Since(start).Seconds(), err, out.Bytes(), errb.Bytes())
		f.Close()
	}
	if err != nil {
		return out.String() + errb.String(), fmt.Errorf("rackboot %s: %w", strings.Join(args, " "), err)
	}
	return out.String(), nil
}

// machinesJSON is the part of `rackboot machines --json` the test reads.
type machinesJSON struct {
	From       string `json:"from"`
	Discovered []struct {
		MAC      string `json:"mac"`
		Addr     string `json:"addr"`
		Stage    string `json:"stage"`
		Hardware *struct {
			System *struct {
				UUID   string `json:"uuid"`
				Serial string `json:"serial"`
			} `json:"system"`
			Disks []struct {
				Name       string `json:"name"`
				Serial     string `json:"serial"`
				Size       uint64 `json:"size"`
				Transport  string `json:"transport"`
				Rotational bool   `json:"rotational"`
				WWID       string `json:"wwid"`
			} `json:"disks"`
			Links []struct {
				Name string `json:"name"`
				MAC  string `json:"mac"`
			} `json:"links"`
		} `json:"hardware"`
		HardwareError string `json:"hardwareError"`
	} `json:"discovered"`
}

// TestDiscoverAdopt: issue 15's "a discovered VM is adopted with a name
// and installs without a second netboot", on one BIOS VM whose MAC is not
// in the rack file, with serve --discover:
//
//   - it netboots into the discovery boot (stage discovery-boot) and the
//     stand-in waits in Talos's maintenance mode on :50000;
//   - `rackboot machines --json`, run on the rack network, shows it with
//     the disks (serials, sizes, transports) and the MAC that Talos's
//     maintenance API reports;
//   - `rackboot machine adopt MAC --name w9 --role worker` writes it into
//     rack.yaml (every line kept) and applies its config through the
//     maintenance API;
//   - it installs with that config (report: config_source maintenance,
//     name w9, the NVMe), serve sees w9 installed, and serve's log shows
//     one network boot for the MAC and no config fetched over HTTP.
func TestDiscoverAdopt(t *testing.T) {
	s := newScenario(t, "d")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	l := s.lab()
	rack0, err := profiles.Load("e2e rack", []byte(testRack))
	if err != nil {
		t.Fatal(err)
	}
	spec := lab.Spec{Rack: rack0, Machines: 1, DHCP: lab.DHCPFull, Firmware: lab.FirmwareBIOS}
	plan, err := lab.NewPlan(s.name, spec)
	if err != nil {
		t.Fatal(err)
	}
	rackText := discoverRack()
	if err := os.WriteFile(s.rack, []byte(rackText), 0o600); err != nil {
		t.Fatal(err)
	}
	vmPlan := plan.VMs[0]
	mac := vmPlan.MAC
	if strings.Contains(rackText, mac) {
		t.Fatalf("the VM's MAC %s is in the rack file", mac)
	}
	a := s.planAPI(plan)
	spec.Serve = s.serveSpec(plan, a, "--discover")

	begin := time.Now()
	st, err := l.Up(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	vm := st.VM(vmPlan.Name)
	if vm == nil {
		t.Fatalf("lab state: VMs %+v", st.VMs)
	}

	// The discovery boot, then Talos's maintenance mode on the console.
	if _, err := a.waitMachine(ctx, mac, func(m inventory.Machine) (bool, error) {
		if m.Name != "" {
			return false, fmt.Errorf("known as %s before adoption", m.Name)
		}
		_, ok := entry(m, pxe.StageDiscoveryBoot)
		return ok, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := waitFile(ctx, vm.SerialLog, regexp.MustCompile(`maintenance mode: waiting for a machine config`)); err != nil {
		t.Fatal(err)
	}
	logTiming(t, "lab up → maintenance mode", time.Since(begin))

	// What the maintenance API reports, through rackboot machines.
	out, err := s.serveCLI(ctx, "machines", "--json")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var rep machinesJSON
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("machines --json: %v\n%s", err, out)
	}
	found := false
	for _, d := range rep.Discovered {
		if !strings.EqualFold(d.MAC, mac) {
			continue
		}
		found = true
		if d.Hardware == nil {
			t.Fatalf("machines --json: no hardware for %s (%s)", mac, d.HardwareError)
		}
		serials, wwids := map[string]string{}, map[string]string{}
		for _, disk := range d.Hardware.Disks {
			serials[disk.Name] = disk.Serial + " " + disk.Transport
			wwids[disk.Name] = disk.WWID
		}
		// The lab's SATA disks are on AHCI: go-blockdevice's transport
		// "sata", for which Talos v1.13.0 runs no udev helper (T
		// internal/app/machined/pkg/controllers/block/disks.go
		// serialFromUdevdHelpers: ata_id for "ata", scsi_id for "scsi")
		// and reports no serial, though QEMU gives them one.
		want := map[string]string{"nvme0n1": vmPlan.NVMe.Serial + " nvme"}
		for i, sata := range vmPlan.SATA {
			if sata.Serial == "" {
				t.Fatalf("lab plan: SATA disk %d has no serial: the check below would not tell", i)
			}
			name := "sd" + string(rune('a'+i))
			want[name] = " sata"
			// What names such a disk instead (`disks wipe --wwid`): the
			// WWID go-blockdevice reads (device/wwid), for a SATA disk
			// the T10 identifier libata builds from its model and serial
			// (kernel drivers/ata/libata-scsi.c ata_scsiop_inq_83,
			// drivers/scsi/scsi_lib.c scsi_vpd_lun_id: "t10.ATA     ...").
			if w := wwids[name]; !strings.HasPrefix(w, "t10.ATA ") || !strings.HasSuffix(w, " "+sata.Serial) {
				t.Errorf("machines --json: disk %s has WWID %q, want libata's t10.ATA identifier ending in its serial %q", name, w, sata.Serial)
			}
		}
		for name, w := range want {
			if got := serials[name]; got != w {
				t.Errorf("machines --json: disk %s is %q, want %q (disks %+v)", name, got, w, d.Hardware.Disks)
			}
		}
		hasMAC := false
		for _, link := range d.Hardware.Links {
			hasMAC = hasMAC || strings.EqualFold(link.MAC, mac)
		}
		if !hasMAC {
			t.Errorf("machines --json: no link with %s: %+v", mac, d.Hardware.Links)
		}
		if d.Hardware.System == nil || !strings.EqualFold(d.Hardware.System.UUID, vm.UUID) || d.Hardware.System.Serial != vm.Serial {
			t.Errorf("machines --json: system %+v, want uuid %s serial %s", d.Hardware.System, vm.UUID, vm.Serial)
		}
	}
	if !found || rep.From != "serve" {
		t.Fatalf("machines --json (from %q) does not list %s:\n%s", rep.From, mac, out)
	}

	// Adopt it: the config goes through the maintenance API.
	out, err = s.serveCLI(ctx, "machine", "adopt", mac, "--name", "w9", "--role", "worker")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "sent w9 its config through Talos's maintenance API") {
		t.Errorf("adopt output:\n%s", out)
	}
	after := string(readFile(t, s.rack))
	rest := after
	for _, line := range strings.SplitAfter(rackText, "\n") {
		i := strings.Index(rest, line)
		if i < 0 {
			t.Errorf("adopt lost the rack file's line %q:\n%s", line, after)
			continue
		}
		rest = rest[i+len(line):]
	}

	m, err := a.waitMachine(ctx, "w9", installed)
	if err != nil {
		t.Fatal(err)
	}
	logTiming(t, "lab up → w9 installed", time.Since(begin))
	// Talos's events name w9 by address, without a MAC: the discovered
	// record under the MAC stays beside w9 ("adopted as w9") until the
	// MAC netboots again (inventory moves a MAC's history at a boot).
	t.Logf("w9's MACs after the install: %v", m.MACs)
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := s.waitStopped(wctx, vm.Name); err != nil {
		t.Fatal(err)
	}
	r, err := standinReport(vm.SerialLog)
	if err != nil {
		t.Fatal(err)
	}
	if r.Result != report.ResultInstalled || r.Name != "w9" || r.ConfigSource != "maintenance" || r.InstallDisk != "/dev/nvme0n1" || !strings.EqualFold(r.MAC, mac) {
		t.Errorf("report: result %q name %q config from %q install disk %q mac %s (error %q)", r.Result, r.Name, r.ConfigSource, r.InstallDisk, r.MAC, r.Error)
	}
	checkInstallDisks(t, vm)

	// One network boot, no config over HTTP.
	p, ok := process(s.labState(), "serve")
	if !ok {
		t.Fatal("no serve process in lab.json")
	}
	lmac := strings.ToLower(mac)
	if n := countLines(p.Log, "discovery boot", "mac="+lmac); n != 1 {
		t.Errorf("serve's log has %d discovery boots for %s, want 1", n, mac)
	}
	for _, what := range []string{"boot script served", "config served", "config refused"} {
		if n := countLines(p.Log, what); n != 0 {
			t.Errorf("serve's log has %d %q lines, want none (the config went through the maintenance API)", n, what)
		}
	}
}
