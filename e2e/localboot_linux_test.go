//go:build linux

package e2e

import (
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
)

// localBootRack is testRack with rackboot's address on the rack network
// (so every config carries EventSinkConfig and KmsgLogConfig pointing at
// serve) and w1's install disk rule matching none of a lab VM's disks (an
// NVMe and SATA disks; its NVMe has another serial).
func localBootRack(server string) string {
	r := strings.Replace(testRack, "    rackboot: 10.77.0.2\n", "    rackboot: "+server+"\n", 1)
	r = strings.Replace(r, "      mac: [\"52:54:00:e2:e0:02\"]\n    address: 10.77.0.12/24\n",
		"      mac: [\"52:54:00:e2:e0:02\"]\n    address: 10.77.0.12/24\n    installDisk:\n      serial: NO-SUCH-DISK\n", 1)
	return strings.Replace(r, "  machines: 1\n", "  machines: 2\n", 1)
}

// TestLocalBootUEFI: what rackboot's design takes from Talos, on one lab of
// two UEFI (OVMF) machines netbooting at once:
//
//   - w1's install disk rule matches none of its disks: like Talos v1.13
//     (RuntimeValidate in the config AcquireController), the stand-in
//     publishes a ConfigLoadErrorEvent "no disks matched the expression"
//     and installs nothing; serve shows config-error with the message.
//   - cp1 installs (ESP with systemd-boot, META, STATE with its config)
//     and, like Talos v1.13's systemd-boot installer, writes the UEFI boot
//     entry "Talos Linux UKI" (HD(<the ESP>)/File(\EFI\boot\BOOTX64.efi))
//     without touching BootOrder.
//   - cp1 boots again with its disk before the network (as a server whose
//     BootOrder has the disk first): OVMF boots the NVMe's ESP by the
//     removable-media path, the Talos entry is still there and still not in
//     BootOrder, and the installed system, whose command line has no events
//     sink any more, reports rebooted and running through the config's
//     EventSinkConfig alone, without a network boot, and streams its kernel
//     log to the KmsgLogConfig's destination.
//   - running, cp1 holds the VIP of its Layer2VIPConfig on the link its
//     LinkAliasConfig names, with its LinkConfig address: arping from the
//     lab namespace gets the answer from cp1's MAC.
func TestLocalBootUEFI(t *testing.T) {
	if _, err := exec.LookPath("arping"); err != nil {
		t.Fatal("arping not found: run `make deps` (Debian package iputils-arping)")
	}
	s := newScenario(t, "l")
	ctx, cancel := context.WithTimeout(context.Background(), 14*time.Minute)
	defer cancel()
	l := s.lab()
	rack0, err := profiles.Load("e2e rack", []byte(testRack))
	if err != nil {
		t.Fatal(err)
	}
	spec := lab.Spec{Rack: rack0, Machines: 2, DHCP: lab.DHCPFull, Firmware: lab.FirmwareUEFI}
	plan, err := lab.NewPlan(s.name, spec)
	if err != nil {
		t.Fatal(err)
	}
	server := plan.ServerAddr.Addr().String()
	text := localBootRack(server)
	if err := os.WriteFile(s.rack, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if spec.Rack, err = profiles.Load(s.rack, []byte(text)); err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	if plan, err = lab.NewPlan(s.name, spec); err != nil || plan.ServerAddr.Addr().String() != server || len(plan.VMs) != 2 {
		t.Fatalf("plan with rackboot %s: %v %+v", server, err, plan)
	}
	spec.ServerAddr = plan.ServerAddr
	a := s.planAPI(plan)
	spec.Serve = s.serveSpec(plan, a)

	begin := time.Now()
	st, err := l.Up(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	cp1, w1 := st.VM("cp1"), st.VM("w1")
	if cp1 == nil || w1 == nil || cp1.Firmware != lab.FirmwareUEFI || w1.Firmware != lab.FirmwareUEFI {
		t.Fatalf("lab state: VMs %+v", st.VMs)
	}

	t.Run("no-disk-matches", func(t *testing.T) {
		m, err := a.waitMachine(ctx, "w1", func(m inventory.Machine) (bool, error) {
			switch m.Stage {
			case inventory.StageConfigError:
				return true, nil
			case inventory.StageInstalling, inventory.StageInstalled, inventory.StageInstallFailed:
				return false, fmt.Errorf("reached %s (%s), want config-error before any install", m.Stage, m.Detail)
			}
			return false, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		logTiming(t, "w1 lab up → config-error", time.Since(begin))
		if !strings.Contains(m.Detail, "no disks matched the expression") || !strings.Contains(m.Detail, "runtime validate") {
			t.Errorf("w1's config-error detail %q, want Talos's runtime validation message", m.Detail)
		}
		if m.Installed {
			t.Error("w1 counts as installed")
		}
		wctx, wcancel := context.WithTimeout(ctx, 2*time.Minute)
		defer wcancel()
		if err := s.waitStopped(wctx, "w1"); err != nil {
			t.Fatal(err)
		}
		rep, err := standinReport(w1.SerialLog)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Result != report.ResultFailed || !strings.Contains(rep.Error, "no disks matched the expression") || rep.InstallDisk != "" {
			t.Errorf("w1's report: result %q install disk %q error %q", rep.Result, rep.InstallDisk, rep.Error)
		}
		for _, d := range rep.Disks {
			if d.HasMeta {
				t.Errorf("w1's %s has META", d.Dev)
			}
		}
	})

	m, err := a.waitMachine(ctx, "cp1", installed)
	if err != nil {
		t.Fatal(err)
	}
	logTiming(t, "cp1 lab up → installed", time.Since(begin))
	logTiming(t, "cp1 QEMU start → installed", qemuToInstalled(t, st, m))
	rep := s.stoppedReport(ctx, t, cp1, "cp1")
	if strings.Join(rep.Partitions, " ") == "" || !strings.HasPrefix(rep.Partitions[0], "EFI:") || !strings.HasPrefix(rep.Partitions[1], "META:") || !strings.HasPrefix(rep.Partitions[2], "STATE:") {
		t.Errorf("cp1's install partitions %v, want EFI, META, STATE", rep.Partitions)
	}
	if rep.EventSinkFrom != "config" || rep.EventSink != server+":4002" {
		t.Errorf("cp1's install sent its events to %q (from %s), want the config's EventSinkConfig %s:4002", rep.EventSink, rep.EventSinkFrom, server)
	}
	if !t.Run("nvme-only", func(t *testing.T) { checkInstallDisks(t, cp1) }) {
		return
	}
	entry := ""
	t.Run("uefi-boot-entry", func(t *testing.T) { entry = checkBootEntry(t, cp1, rep) })

	t.Run("boot-from-disk", func(t *testing.T) { bootFromDisk(t, s, cp1, server, entry) })
}

// checkBootEntry checks the UEFI boot entry cp1's install wrote (its
// report: efivarfs read back in the guest) against the ESP on its disk
// image (sfdisk on the host): Talos's description, the ESP's partition
// number, start, size and unique GUID, systemd-boot's path, and BootOrder
// left without it. It returns the entry's Boot#### name.
func checkBootEntry(t *testing.T, vm *lab.VMState, rep report.Report) string {
	raw := filepath.Join(t.TempDir(), vm.Name+"-nvme.raw")
	if out, err := exec.Command("qemu-img", "convert", "-f", lab.DiskFormat, "-O", "raw", vm.Disks[0], raw).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	out, err := exec.Command("sfdisk", "--json", raw).Output()
	if err != nil {
		t.Fatalf("sfdisk --json: %v", err)
	}
	var pt struct {
		PartitionTable struct {
			Partitions []struct {
				Start, Size int64
				UUID, Name  string
			} `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &pt); err != nil || len(pt.PartitionTable.Partitions) == 0 || pt.PartitionTable.Partitions[0].Name != "EFI" {
		t.Fatalf("sfdisk --json: %v\n%s", err, out)
	}
	esp := pt.PartitionTable.Partitions[0]
	t.Logf("Talos boot entry %s; BootOrder %s", rep.BootEntry, rep.BootOrder)
	want := fmt.Sprintf(`"Talos Linux UKI" HD(1,GPT,%s,0x%X,0x%X)/File(\EFI\boot\BOOTX64.efi)`, strings.ToUpper(esp.UUID), esp.Start, esp.Size)
	name, got, _ := strings.Cut(rep.BootEntry, " ")
	if got != want || !regexp.MustCompile(`^Boot[0-9A-F]{4}$`).MatchString(name) {
		t.Errorf("boot entry %q, want Boot#### %s", rep.BootEntry, want)
	}
	if rep.BootOrder == "" || strings.Contains(","+rep.BootOrder+",", ","+strings.TrimPrefix(name, "Boot")+",") {
		t.Errorf("BootOrder %q after the install: want the firmware's, without %s (Talos v1.13 leaves BootOrder alone)", rep.BootOrder, name)
	}
	return name
}

// bootFromDisk starts the installed cp1 again from its recorded QEMU
// command line (the console goes to a new file) with the disk before the
// network: the NVMe takes bootindex 1 and the NIC 2, so OVMF's
// SetBootOrderFromQemu puts its own option for the NVMe first. It follows
// the installed system to running. entry is the Talos boot entry the
// install wrote.
//
// With the network first, as the lab starts machines, OVMF runs the NIC's
// iPXE, serve answers exit, and OVMF goes on to its PXE option, whose
// ipxe.efi gets exit again and returns success: edk2's boot manager then
// stops at its menu (UiApp) instead of trying the NVMe (docs/DESIGN.md,
// "A stand-in for Talos").
func bootFromDisk(t *testing.T, s *scenario, vm *lab.VMState, server, entry string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a := s.api()
	before, err := a.machines(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m0, _ := machine(before, "cp1")
	serveLog := filepath.Join(s.lab().Dir(), "serve.log")
	configs := countLines(serveLog, "config served")

	console := filepath.Join(s.dir, "cp1-disk-boot-serial.log")
	args := append([]string(nil), vm.Command[1:]...)
	replaced, nic, disk := false, false, false
	for i, arg := range args {
		switch {
		case strings.HasPrefix(arg, "file,id=serial0,path="):
			args[i] = "file,id=serial0,path=" + strings.ReplaceAll(console, ",", ",,")
			replaced = true
		case strings.HasPrefix(arg, "nvme,") && strings.HasSuffix(arg, ",bootindex=2"):
			args[i] = strings.TrimSuffix(arg, "2") + "1"
			disk = true
		case strings.Contains(arg, ",mac="+vm.MAC) && strings.HasSuffix(arg, ",bootindex=1"):
			args[i] = strings.TrimSuffix(arg, "1") + "2"
			nic = true
		}
	}
	if !replaced || !nic || !disk {
		t.Fatalf("no serial chardev, NIC with bootindex=1 or NVMe with bootindex=2 in the recorded QEMU command line: %s", strings.Join(vm.Command, " "))
	}
	s.extra = append(s.extra, console)
	start := time.Now()
	qemu := s.startInLab("", filepath.Join(s.dir, "cp1-disk-boot-qemu.log"), vm.Command[0], args...)
	defer func() {
		if err := qemu.stop(10 * time.Second); err != nil {
			t.Error(err)
		}
	}()

	waitDiskBoot(ctx, t, a, "cp1", m0)
	logTiming(t, "disk boot QEMU start → running", time.Since(start))
	if n := countLines(serveLog, "config served"); n != configs {
		t.Errorf("serve served %d config(s) during the disk boot", n-configs)
	}

	// The console: OVMF started its option for the NVMe, no iPXE ran, the
	// kernel came from the disk, and the stand-in ran as the installed
	// system.
	line, err := waitFile(ctx, console, regexp.MustCompile(regexp.QuoteMeta(report.Prefix)))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := report.Parse(line)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cp1 running from its disk: %s", line)
	serial := lab.CleanSerial(readFile(t, console))
	if i, j := strings.Index(serial, `BdsDxe: starting Boot`), strings.Index(serial, "Linux version"); i < 0 || j < i || !strings.Contains(serial[i:j], `"UEFI QEMU NVMe Ctrl`) {
		t.Errorf("the console does not show OVMF starting the NVMe before the kernel (start at %d, kernel at %d)", i, j)
	}
	if strings.Contains(serial, "iPXE") {
		t.Error("iPXE ran during the disk boot")
	}
	if !strings.Contains(rep.BootCurrent, `"UEFI QEMU NVMe Ctrl`) {
		t.Errorf("report: BootCurrent %q, want OVMF's option for the NVMe", rep.BootCurrent)
	}
	if name, _, _ := strings.Cut(rep.BootEntry, " "); entry == "" || name != entry || strings.Contains(","+rep.BootOrder+",", ","+strings.TrimPrefix(entry, "Boot")+",") {
		t.Errorf("report: Talos boot entry %q, BootOrder %q; want %s kept by the firmware and still outside BootOrder", rep.BootEntry, rep.BootOrder, entry)
	}
	if rep.Result != report.ResultRunning || rep.ConfigSource != "state" || rep.InstallDisk != "/dev/nvme0n1" || rep.Error != "" {
		t.Errorf("report: result %q config from %q disk %q error %q; want running with the config from STATE on /dev/nvme0n1", rep.Result, rep.ConfigSource, rep.InstallDisk, rep.Error)
	}
	for _, k := range []string{"talos.config=", "talos.events.sink=", "talos.logging.kernel=", "initrd="} {
		if strings.Contains(rep.Cmdline, k) {
			t.Errorf("the installed system's command line has %s: %q", k, rep.Cmdline)
		}
	}
	if !strings.Contains(rep.Cmdline, "console=ttyS0") || !strings.Contains(rep.Cmdline, "talos.platform=metal") {
		t.Errorf("the installed system's command line %q lacks the console or talos.platform", rep.Cmdline)
	}
	if rep.EventSinkFrom != "config" || rep.EventSink != server+":4002" || rep.EventsSent != 4 {
		t.Errorf("report: %d events to %q from %q; want 4 to the EventSinkConfig endpoint %s:4002", rep.EventsSent, rep.EventSink, rep.EventSinkFrom, server)
	}
	if want := "udp://" + server + ":4003"; strings.Join(rep.KmsgLog, " ") != want {
		t.Errorf("report: kernel log destinations %v, want only the KmsgLogConfig's %s", rep.KmsgLog, want)
	}
	if len(rep.Aliases) != 1 || !strings.HasSuffix(rep.Aliases[0], "="+profiles.LinkAlias) || len(rep.NetWarnings) != 0 {
		t.Errorf("report: aliases %v warnings %v, want one link aliased %s", rep.Aliases, rep.NetWarnings, profiles.LinkAlias)
	}
	link := ""
	if len(rep.Aliases) > 0 {
		link, _, _ = strings.Cut(rep.Aliases[0], "=")
	}
	if strings.Join(rep.Addresses, " ") != "10.77.0.11/24@"+link || strings.Join(rep.VIPs, " ") != "10.77.0.10@"+link {
		t.Errorf("report: addresses %v VIPs %v, want 10.77.0.11/24 and the VIP 10.77.0.10 on %s", rep.Addresses, rep.VIPs, link)
	}

	// The KmsgLogConfig stream: the kernel's line for the link the
	// installed system brought up reaches serve (which keeps the last 200
	// lines; Talos sends the ring from its start, so the first lines are
	// gone from there by now).
	t.Run("kernel-log", func(t *testing.T) {
		wctx, wcancel := context.WithTimeout(ctx, time.Minute)
		defer wcancel()
		m, err := a.waitMachine(wctx, "cp1", func(m inventory.Machine) (bool, error) {
			for _, l := range m.Logs {
				if strings.Contains(l.Msg, "NIC Link is Up") {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("no kernel log line \"... NIC Link is Up ...\" from cp1 through its KmsgLogConfig: %v", err)
		}
		t.Logf("serve holds %d kernel log lines of cp1, the last: %q", len(m.Logs), m.Logs[len(m.Logs)-1].Msg)
	})

	t.Run("vip-answers", func(t *testing.T) {
		start := time.Now()
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", lab.Namespace(s.name), "arping", "-c", "3", "-w", "20", "-I", lab.Bridge, "10.77.0.10").CombinedOutput()
		logTiming(t, "arping the VIP", time.Since(start))
		t.Logf("arping 10.77.0.10:\n%s", out)
		if err != nil {
			t.Fatalf("arping the VIP from the lab namespace: %v", err)
		}
		want := "reply from 10.77.0.10 [" + strings.ToUpper(vm.MAC) + "]"
		if !strings.Contains(strings.ToUpper(string(out)), strings.ToUpper(want)) {
			t.Errorf("no ARP reply for the VIP from cp1's MAC %s", vm.MAC)
		}
	})
}
