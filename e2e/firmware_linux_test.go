//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/lab"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// The firmware's own boot paths: no iPXE option ROM on the NIC, so OVMF's
// own network stack (VirtioNetDxe, then UefiPxeBcDxe or HttpBootDxe) does
// DHCP and loads the iPXE binary rackboot serves, as a real server's
// firmware does. One lab per DHCP mode, two VMs in it: cp1 through OVMF's
// PXE client (DHCP, TFTP of ipxe.efi), w1 through UEFI HTTP boot (vendor
// class HTTPClient, ipxe.efi from a URL). Both must reach installed.

// TestFirmwareNetbootProxy: dnsmasq is the home router's DHCP, rackboot
// answers the boot part only (proxy DHCP, and the PXE boot server on port
// 4011 that OVMF asks for the boot file of a proxy offer).
func TestFirmwareNetbootProxy(t *testing.T) { firmwareNetboot(t, lab.DHCPProxy) }

// TestFirmwareNetbootFull: rackboot is the only DHCP server.
func TestFirmwareNetbootFull(t *testing.T) { firmwareNetboot(t, lab.DHCPFull) }

// firmwareVMs: which machine boots which way.
var firmwareVMs = []struct {
	name    string
	netboot lab.Netboot
}{
	{"cp1", lab.NetbootPXE},
	{"w1", lab.NetbootHTTP},
}

func firmwareNetboot(t *testing.T, mode lab.DHCPMode) {
	s := newScenario(t, "f"+string(mode[0]))
	ctx, cancel := context.WithTimeout(context.Background(), 14*time.Minute)
	defer cancel()
	l := s.lab()
	rack, err := profiles.Load("e2e rack", []byte(testRack))
	if err != nil {
		t.Fatal(err)
	}
	spec := lab.Spec{Rack: rack, Machines: 2, DHCP: mode, Firmware: lab.FirmwareUEFI, BootNICs: map[string]lab.BootNIC{}}
	for _, v := range firmwareVMs {
		spec.BootNICs[v.name] = lab.BootNIC{Netboot: v.netboot}
	}
	plan, err := lab.NewPlan(s.name, spec)
	if err != nil {
		t.Fatal(err)
	}
	spec.ServerAddr = plan.ServerAddr
	a := s.planAPI(plan)
	spec.Serve = s.serveSpec(plan, a, "-v")

	begin := time.Now()
	st, err := l.Up(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	logTiming(t, string(mode)+": lab up (2 VMs started)", time.Since(begin))
	for _, v := range firmwareVMs {
		vm := st.VM(v.name)
		if vm == nil || vm.Netboot != v.netboot || vm.NIC != lab.FirmwareNIC || vm.Firmware != lab.FirmwareUEFI {
			t.Fatalf("lab state for %s: %+v", v.name, vm)
		}
		cmd := strings.Join(vm.Command, " ")
		if !strings.Contains(cmd, lab.FirmwareNIC+",netdev=net0,mac="+vm.MAC+",romfile=,bootindex=1") {
			t.Errorf("%s's first NIC has an option ROM:\n%s", v.name, cmd)
		}
		if http := strings.Contains(cmd, "opt/org.tianocore/IPv4PXESupport,string=no"); http != (v.netboot == lab.NetbootHTTP) {
			t.Errorf("%s (%s): OVMF's PXE switched off: %v", v.name, v.netboot, http)
		}
	}

	// Both VMs boot at once; each is watched on its own.
	var wg sync.WaitGroup
	results := make([]inventory.Machine, len(firmwareVMs))
	errs := make([]error, len(firmwareVMs))
	for i, v := range firmwareVMs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = a.waitMachine(ctx, v.name, func(m inventory.Machine) (bool, error) {
				if ok, err := installed(m); ok || err != nil {
					return ok, err
				}
				if ls, err := l.Status(); err == nil {
					for _, vs := range ls.VMs {
						if vs.Name == v.name && !vs.Running {
							return false, fmt.Errorf("the VM powered off at stage %s", m.Stage)
						}
					}
				}
				return false, nil
			})
		}()
	}
	wg.Wait()
	serveLog := filepath.Join(l.Dir(), "serve.log")
	for i, v := range firmwareVMs {
		t.Run(string(v.netboot), func(t *testing.T) {
			m, err := results[i], errs[i]
			vm := st.VM(v.name)
			serial := lab.CleanSerial(readFile(t, vm.SerialLog))
			if err != nil {
				t.Fatalf("%s did not reach installed: %v\nconsole:\n%s", v.name, err, lastLines(serial, 30))
			}
			logTiming(t, fmt.Sprintf("%s/%s QEMU start → installed", mode, v.netboot), qemuToInstalled(t, st, m))
			want := append([]string{pxe.StageDHCP, pxe.StageIPXE}, netbootStages[1:]...)
			if !inOrder(stages(m), want) {
				t.Errorf("%s's timeline %v, want %v in this order", v.name, stages(m), want)
			}
			checkFirmwarePath(t, mode, v.netboot, m, serial, serveLog)
			rep := s.stoppedReport(ctx, t, vm, v.name)
			if mode == lab.DHCPProxy {
				lo, hi, _ := strings.Cut(st.DHCPRange, "-")
				ip, err := netip.ParseAddr(rep.IP)
				if err != nil || ip.Less(netip.MustParseAddr(lo)) || netip.MustParseAddr(hi).Less(ip) {
					t.Errorf("the stand-in's address %q is not in dnsmasq's pool %s", rep.IP, st.DHCPRange)
				}
			}
			if n := countLines(serveLog, "config served", "name="+v.name); n != 1 {
				t.Errorf("serve served %s's config %d times, want once", v.name, n)
			}
			checkInstallDisks(t, vm)
		})
	}
	if mode == lab.DHCPProxy {
		if n := countLines(serveLog, "DHCP lease"); n != 0 {
			t.Errorf("serve handed out %d DHCP lease(s) in proxy mode", n)
		}
	}
}

// checkFirmwarePath checks that the machine came the firmware's way: OVMF's
// own client on the console, no iPXE ROM, the offer rackboot made for that
// client, and the iPXE binary fetched over TFTP (PXE) or HTTP (HTTP boot).
func checkFirmwarePath(t *testing.T, mode lab.DHCPMode, netboot lab.Netboot, m inventory.Machine, serial, serveLog string) {
	t.Helper()
	var firstDHCP, ipxe inventory.Entry
	for _, e := range m.Timeline {
		if e.Stage == pxe.StageDHCP && firstDHCP.Stage == "" {
			firstDHCP = e
		}
		if e.Stage == pxe.StageIPXE && ipxe.Stage == "" {
			ipxe = e
		}
	}
	offer := "offer "
	if mode == lab.DHCPProxy {
		offer = "proxy "
	}
	t.Logf("%s: first DHCP entry %q, iPXE entry %q", m.Name, firstDHCP.Detail, ipxe.Detail)
	switch netboot {
	case lab.NetbootPXE:
		if !strings.Contains(serial, ">>Start PXE over IPv4") || strings.Contains(serial, "Start HTTP Boot") {
			t.Errorf("%s's console does not show OVMF's PXE client alone:\n%s", m.Name, lastLines(serial, 30))
		}
		if !strings.HasPrefix(firstDHCP.Detail, offer) || !strings.Contains(firstDHCP.Detail, "arch efi-x64, ipxe false, boot tftp "+pxe.BootFileX64EFI) {
			t.Errorf("%s's first DHCP entry %q: want a %sto OVMF's PXE client (efi-x64, tftp %s)", m.Name, firstDHCP.Detail, offer, pxe.BootFileX64EFI)
		}
		if ipxe.Detail != "tftp "+pxe.BootFileX64EFI {
			t.Errorf("%s's iPXE entry %q: want ipxe.efi over TFTP", m.Name, ipxe.Detail)
		}
	case lab.NetbootHTTP:
		if !strings.Contains(serial, ">>Start HTTP Boot over IPv4") || strings.Contains(serial, "Start PXE") {
			t.Errorf("%s's console does not show OVMF's HTTP boot client alone:\n%s", m.Name, lastLines(serial, 30))
		}
		if !strings.HasPrefix(firstDHCP.Detail, offer) || !strings.Contains(firstDHCP.Detail, "arch http-x64, ipxe false, boot http http://") ||
			!strings.HasSuffix(firstDHCP.Detail, pxe.BootHTTPDir+pxe.BootFileX64EFI) {
			t.Errorf("%s's first DHCP entry %q: want a %sto OVMF's HTTP boot client (http-x64, URL of %s)", m.Name, firstDHCP.Detail, offer, pxe.BootFileX64EFI)
		}
		if ipxe.Detail != "http "+pxe.BootFileX64EFI {
			t.Errorf("%s's iPXE entry %q: want ipxe.efi over HTTP", m.Name, ipxe.Detail)
		}
	}
	// iPXE names the driver it runs the NIC with: the 2025 ipxe.efi,
	// started by OVMF from this NIC, uses SNP (OVMF's own virtio-net
	// driver already holds the NIC), as snponly.efi would.
	using := ""
	for _, line := range strings.Split(serial, "\n") {
		if i := strings.Index(line, "net0: "); i >= 0 && strings.Contains(line, " using ") {
			using = strings.TrimSpace(line[i:])
			break
		}
	}
	t.Logf("%s: iPXE says %q", m.Name, using)
	if using == "" {
		t.Errorf("%s's console has no iPXE NIC line (net0: ... using ...)", m.Name)
	}
	// No iPXE ROM: the only iPXE that ran is the one rackboot served.
	if strings.Count(serial, "iPXE initialising devices") > 1 || strings.Contains(serial, "Press Ctrl-B") && strings.Count(serial, "Press Ctrl-B") > 1 {
		t.Errorf("%s's console shows more than one iPXE start", m.Name)
	}
}
