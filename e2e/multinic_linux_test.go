//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/lab"
	"github.com/dotfile/rackboot/lab/standin/cmdline"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// TestConfigFromSecondNIC: a multi-NIC server, as Talos runs one. cp1 has
// a second NIC on the same network (no boot ROM: the first NIC netboots as
// always). The stand-in, like Talos, runs DHCP on every link without a
// client identifier, so the second NIC gets an address of its own from
// rackboot's pool; the lab makes it fetch its config out of the second NIC
// (rackboot.lab.config_link=<its MAC>), from an address that is not the one
// that fetched the iPXE script. rackboot must serve the config once and the
// machine must reach installed.
func TestConfigFromSecondNIC(t *testing.T) {
	s := newScenario(t, "n")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	l := s.lab()
	rack, err := profiles.Load("e2e rack", []byte(testRack))
	if err != nil {
		t.Fatal(err)
	}
	spec := lab.Spec{Rack: rack, Machines: 1, DHCP: lab.DHCPFull, Firmware: lab.FirmwareBIOS, ExtraNICs: map[string]int{"cp1": 1}}
	plan, err := lab.NewPlan(s.name, spec)
	if err != nil {
		t.Fatal(err)
	}
	spec.ServerAddr = plan.ServerAddr
	if len(plan.VMs) != 1 || len(plan.VMs[0].Extra) != 1 {
		t.Fatalf("plan: %+v", plan.VMs)
	}
	mac1, mac2 := plan.VMs[0].MAC, plan.VMs[0].Extra[0].MAC
	a := s.planAPI(plan)
	spec.Serve = s.serveSpec(plan, a, "--kernel-arg", cmdline.KeyConfigLink+"="+mac2)

	begin := time.Now()
	st, err := l.Up(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	vm := st.VM("cp1")
	if vm == nil || vm.MAC != mac1 || len(vm.ExtraNICs) != 1 || vm.ExtraNICs[0].MAC != mac2 {
		t.Fatalf("lab state: VMs %+v", st.VMs)
	}
	cmd := strings.Join(vm.Command, " ")
	if !strings.Contains(cmd, "mac="+mac2+",romfile=") || strings.Count(cmd, "bootindex=") != 2 {
		t.Errorf("the second NIC is not a NIC without boot ROM and boot index:\n%s", cmd)
	}

	// Installed, or the VM powered off without it (its report says why).
	m, werr := a.waitMachine(ctx, "cp1", func(m inventory.Machine) (bool, error) {
		if ok, err := installed(m); ok || err != nil {
			return ok, err
		}
		if ls, err := l.Status(); err == nil {
			for _, v := range ls.VMs {
				if v.Name == "cp1" && !v.Running {
					return false, fmt.Errorf("the VM powered off at stage %s", m.Stage)
				}
			}
		}
		return false, nil
	})
	if werr == nil {
		logTiming(t, "second NIC: lab up → installed", time.Since(begin))
		logTiming(t, "second NIC: QEMU start → installed", qemuToInstalled(t, st, m))
		if !inOrder(stages(m), netbootStages) {
			t.Errorf("cp1's timeline %v, want %v in this order", stages(m), netbootStages)
		}
	} else {
		t.Errorf("cp1 did not reach installed: %v", werr)
		logTiming(t, "second NIC: lab up → gave up", time.Since(begin))
	}
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer wcancel()
	if err := s.waitStopped(wctx, "cp1"); err != nil {
		t.Fatal(err)
	}
	rep, err := standinReport(vm.SerialLog)
	if err != nil {
		t.Fatalf("cp1's console: %v", err)
	}

	// The guest's side: DHCP on both links, the config fetched from the
	// second one's address.
	if len(rep.Links) != 2 || !strings.EqualFold(rep.Links[0].MAC, mac1) || !strings.EqualFold(rep.Links[1].MAC, mac2) {
		t.Fatalf("report: links %+v, want %s then %s", rep.Links, mac1, mac2)
	}
	ip1, ip2 := rep.Links[0].IP, rep.Links[1].IP
	if ip1 != "10.77.0.11" || ip2 == "" || ip2 == ip1 {
		t.Errorf("report: addresses %q (first NIC) and %q (second NIC): want cp1's reservation 10.77.0.11 and another address", ip1, ip2)
	}
	if rep.ConfigFrom != ip2 {
		t.Errorf("report: the config was fetched from %q, want the second NIC's address %q", rep.ConfigFrom, ip2)
	}

	// rackboot's side: the script went to the first NIC's address, the
	// config to the second's, once, and nothing was refused.
	serveLog := filepath.Join(l.Dir(), "serve.log")
	t.Logf("cp1: first NIC %s at %s, second NIC %s at %s; serve's log:\n%s", mac1, ip1, mac2, ip2,
		strings.Join(append(logLines(serveLog, "boot script", "name=cp1"), logLines(serveLog, "config ")...), "\n"))
	scriptAddrs := logAddrs(serveLog, "boot script served", "name=cp1")
	if len(scriptAddrs) != 1 || scriptAddrs[0] != ip1 {
		t.Errorf("serve served cp1's boot script to %v, want once to %s", scriptAddrs, ip1)
	}
	refused := logLines(serveLog, "config refused")
	if len(refused) > 0 {
		t.Errorf("serve refused %d config request(s) (from the second NIC's address %s, the script's was %s); first: %s", len(refused), ip2, ip1, refused[0])
	}
	if configAddrs := logAddrs(serveLog, "config served", "name=cp1"); len(configAddrs) != 1 || configAddrs[0] != ip2 {
		t.Errorf("serve served cp1's config to %v, want once to the second NIC's address %s", configAddrs, ip2)
	}
	if werr != nil {
		t.Logf("the stand-in: result %s, error %q", rep.Result, rep.Error)
		return
	}
	checkReport(t, rep, vm, "cp1")
	if e, _ := entry(m, pxe.StageConfig); e.Time.IsZero() {
		t.Errorf("cp1's timeline has no config entry: %v", stages(m))
	}
	t.Run("nvme-only", func(t *testing.T) { checkInstallDisks(t, vm) })
}

var addrAttr = regexp.MustCompile(`(?:^|\s)addr=(\S+)`)

// logAddrs is the addr= attribute of every log line holding all of subs.
func logAddrs(path string, subs ...string) []string {
	var out []string
	for _, line := range logLines(path, subs...) {
		if m := addrAttr.FindStringSubmatch(line); m != nil {
			out = append(out, strings.Trim(m[1], `"`))
		} else {
			out = append(out, "(no addr)")
		}
	}
	return out
}

// logLines are the lines of a log file holding every one of subs.
func logLines(path string, subs ...string) []string {
	var out []string
	b, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(b), "\n") {
		all := line != ""
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			out = append(out, line)
		}
	}
	return out
}
