//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/lab"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// The arm64 UEFI netboot (issue #12): one arm64 machine under
// qemu-system-aarch64 (virt, TCG, -cpu max) with Debian's AAVMF, a
// virtio-net NIC with no ROM, AAVMF's own PXE client: DHCP (client arch
// 11) → TFTP ipxe-arm64.efi → iPXE → rackboot's script → the arm64
// stand-in (lab/standin/build/arm64: Debian's arm64 kernel and our /init
// built for arm64) → installed.
//
// Under TCG on 2 cores QEMU start → installed took 63.5 s (an amd64 UEFI
// VM: 20-45 s), within the suite's budget, so `make test` runs it;
// `make test-arm64` runs it alone. The test logs the measured time (TIMING).

// arm64Rack is testRack with cp1 an arm64 machine.
func arm64Rack() string {
	return strings.Replace(testRack, "    role: controlplane\n", "    role: controlplane\n    arch: arm64\n", 1)
}

func TestArm64UEFINetboot(t *testing.T) {
	s := newScenario(t, "a64")
	standin64 := filepath.Join(prepared.standin, "arm64")
	for _, f := range []string{"vmlinuz", "initramfs.cpio.gz"} {
		if _, err := os.Stat(filepath.Join(standin64, f)); err != nil {
			t.Fatalf("arm64 stand-in boot image: %v: run `make standin-arm64`", err)
		}
	}
	r := arm64Rack()
	if err := os.WriteFile(s.rack, []byte(r), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	l := s.lab()
	rack, err := profiles.Load("e2e arm64 rack", []byte(r))
	if err != nil {
		t.Fatal(err)
	}
	spec := lab.Spec{Rack: rack, Machines: 1, DHCP: lab.DHCPFull}
	plan, err := lab.NewPlan(s.name, spec)
	if err != nil {
		t.Fatal(err)
	}
	vp := plan.VMs[0]
	if vp.Arch != lab.ArchARM64 || vp.Firmware != lab.FirmwareUEFI || vp.Netboot != lab.NetbootPXE || vp.NIC != lab.FirmwareNIC {
		t.Fatalf("plan for cp1: %+v, want arm64, uefi, firmware-pxe, %s", vp, lab.FirmwareNIC)
	}
	spec.ServerAddr = plan.ServerAddr
	a := s.planAPI(plan)
	// The arm64 console is the virt machine's PL011 (ttyAMA0); the lab's
	// console=ttyS0 stays first, ttyAMA0 last becomes /dev/console.
	spec.Serve = s.serveSpec(plan, a, "-v", "--kernel-arg", "console=ttyAMA0")

	st, err := l.Up(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	vm := st.VM("cp1")
	if vm == nil {
		t.Fatal("no cp1 in the lab state")
	}
	cmd := strings.Join(vm.Command, " ")
	t.Logf("QEMU: %s", cmd)
	for _, want := range []string{"qemu-system-aarch64 ", "-machine virt ", "-accel tcg -cpu max ",
		"file=/usr/share/AAVMF/AAVMF_CODE.fd", lab.FirmwareNIC + ",netdev=net0,mac=" + vm.MAC + ",romfile=,bootindex=1",
		"-device nvme,", "-device ich9-ahci,id=ahci", "bus=ahci.0"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("cp1's QEMU command line lacks %q", want)
		}
	}

	m, err := a.waitMachine(ctx, "cp1", func(m inventory.Machine) (bool, error) {
		if ok, err := installed(m); ok || err != nil {
			return ok, err
		}
		if ls, err := l.Status(); err == nil {
			for _, vs := range ls.VMs {
				if vs.Name == "cp1" && !vs.Running {
					return false, fmt.Errorf("the VM powered off at stage %s", m.Stage)
				}
			}
		}
		return false, nil
	})
	serial := lab.CleanSerial(readFile(t, vm.SerialLog))
	if err != nil {
		t.Fatalf("cp1 (arm64) did not reach installed: %v\nconsole:\n%s", err, lastLines(serial, 40))
	}
	logTiming(t, "arm64 UEFI (AAVMF PXE) QEMU start → installed", qemuToInstalled(t, st, m))
	want := append([]string{pxe.StageDHCP, pxe.StageIPXE}, netbootStages[1:]...)
	if !inOrder(stages(m), want) {
		t.Errorf("cp1's timeline %v, want %v in this order", stages(m), want)
	}
	var firstDHCP, ipxe inventory.Entry
	for _, e := range m.Timeline {
		if e.Stage == pxe.StageDHCP && firstDHCP.Stage == "" {
			firstDHCP = e
		}
		if e.Stage == pxe.StageIPXE && ipxe.Stage == "" {
			ipxe = e
		}
	}
	t.Logf("first DHCP entry %q, iPXE entry %q", firstDHCP.Detail, ipxe.Detail)
	if !strings.Contains(firstDHCP.Detail, "arch efi-arm64, ipxe false, boot tftp "+pxe.BootFileARM64EFI) {
		t.Errorf("first DHCP entry %q: want an offer to AAVMF's PXE client (efi-arm64, tftp %s)", firstDHCP.Detail, pxe.BootFileARM64EFI)
	}
	if ipxe.Detail != "tftp "+pxe.BootFileARM64EFI {
		t.Errorf("iPXE entry %q: want %s over TFTP", ipxe.Detail, pxe.BootFileARM64EFI)
	}
	if !strings.Contains(serial, ">>Start PXE over IPv4") {
		t.Errorf("cp1's console does not show AAVMF's PXE client:\n%s", lastLines(serial, 30))
	}
	rep := s.stoppedReport(ctx, t, vm, "cp1")
	t.Logf("stand-in report: result %s, install disk %s, ip %s", rep.Result, rep.InstallDisk, rep.IP)
	serveLog := filepath.Join(l.Dir(), "serve.log")
	if n := countLines(serveLog, "config served", "name=cp1"); n != 1 {
		t.Errorf("serve served cp1's config %d times, want once", n)
	}
	checkInstallDisks(t, vm)
}
