//go:build linux

package main

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dotfile/rackboot/internal/netns"
	"github.com/dotfile/rackboot/pxe"
)

// TestDiscoverAdoptInNamespace runs the real binary in network
// namespaces: without discovery an unknown machine (a client namespace
// whose NIC has a new MAC) is told to wait; `serve --discover` gives it the
// discovery boot (kernel, initrd, the rack's arguments, no config URL, no
// token); `rackboot machines --json` lists it from the running serve;
// `machine adopt` writes it into rack.yaml keeping every original line and
// serve reloads the rack; the same NIC then gets its own boot script with a
// config token, and its config.
func TestDiscoverAdoptInNamespace(t *testing.T) {
	for _, tool := range []string{"curl", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run `make deps` (Debian packages curl, iproute2)", tool)
		}
	}
	dir := t.TempDir()
	bin := buildRackboot(t, dir)
	rack := filepath.Join(dir, "rack.yaml")
	standin := filepath.Join(dir, "standin")
	// A comment in the machines list, to be kept.
	rackText := strings.Replace(serveTestRack, "machines:\n", "machines:\n  # the first two; more come later\n", 1)
	must(t, os.WriteFile(rack, []byte(rackText), 0o644))
	must(t, os.MkdirAll(standin, 0o755))
	must(t, os.WriteFile(filepath.Join(standin, "vmlinuz"), []byte("KERNEL"), 0o644))
	must(t, os.WriteFile(filepath.Join(standin, "initramfs.cpio.gz"), []byte("initramfs"), 0o644))

	const newMAC = "52:54:00:00:00:77"
	srv := netns.New(t, "srv")
	cli := netns.New(t, "cli")
	srv.AddBridge("br0", netip.MustParsePrefix("10.77.0.1/24"))
	srv.AddVeth("s0", cli, "c0")
	srv.SetMaster("s0", "br0")
	cli.AddAddr("c0", netip.MustParsePrefix("10.77.0.120/24"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := cli.Exec(ctx, "ip", "link", "set", "c0", "address", newMAC); err != nil {
		t.Fatalf("set MAC: %v %s", err, out)
	}
	for _, ns := range []*netns.NS{srv, cli} {
		if r, err := ns.DefaultRoute(); err != nil || r != "" {
			t.Fatalf("namespace %s has a default route %q (%v): refusing to run", ns.Name(), r, err)
		}
	}
	curl := func(ns *netns.NS, args ...string) (string, error) {
		out, err := ns.Exec(ctx, "curl", append([]string{"-sS", "--max-time", "5"}, args...)...)
		return string(out), err
	}
	start := func(extra ...string) *netns.Process {
		t.Helper()
		p := srv.Start(bin, append([]string{"-f", rack, "serve", "-i", "br0", "--dhcp", "off", "--tftp-port", "0",
			"--registry-port", "0", "--standin", standin}, extra...)...)
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := curl(srv, "-f", "http://10.77.0.1:8080/boot.ipxe"); err == nil {
				return p
			}
			select {
			case <-p.Done():
				t.Fatalf("serve exited: %v\n%s", p.Err(), p.Output())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("serve did not answer on :8080 within 30 s\n%s", p.Output())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	stop := func(p *netns.Process) {
		t.Helper()
		must(t, p.Cmd.Process.Signal(syscall.SIGTERM))
		select {
		case <-p.Done():
		case <-time.After(20 * time.Second):
			t.Fatal("serve did not stop within 20 s of SIGTERM")
		}
	}
	scriptURL := "http://10.77.0.1:8080/ipxe?mac=" + strings.ReplaceAll(newMAC, ":", "-") + "&arch=x86_64&platform=efi"
	noSecret := func(what, script string) {
		t.Helper()
		for _, bad := range []string{"talos.config", "/config", "?t=", "&t="} {
			if strings.Contains(script, bad) {
				t.Errorf("%s carries %q:\n%s", what, bad, script)
			}
		}
	}

	// Discovery off: the unknown machine waits.
	serve := start()
	wait, err := curl(cli, "-f", scriptURL)
	if err != nil || !strings.Contains(wait, "unknown machine "+newMAC+": add it to rack.yaml") || strings.Contains(wait, "kernel ") {
		t.Fatalf("without --discover: %v\n%s", err, wait)
	}
	noSecret("the wait script", wait)
	stop(serve)

	// Discovery on: the discovery boot, with no secret.
	serve = start("--discover")
	disc, err := curl(cli, "-f", scriptURL)
	if err != nil {
		t.Fatalf("discovery script: %v %s", err, disc)
	}
	for _, want := range []string{"kernel http://10.77.0.1:8080/assets/standin/vmlinuz initrd=initramfs.cpio.gz talos.platform=metal",
		"talos.events.sink=10.77.0.1:4002", "talos.logging.kernel=udp://10.77.0.1:4003",
		"initrd --name initramfs.cpio.gz http://10.77.0.1:8080/assets/standin/initramfs.cpio.gz", "\nboot\n"} {
		if !strings.Contains(disc, want) {
			t.Errorf("discovery script lacks %q:\n%s", want, disc)
		}
	}
	noSecret("the discovery script", disc)
	if got, err := curl(cli, "-f", "http://10.77.0.1:8080/assets/standin/vmlinuz"); err != nil || got != "KERNEL" {
		t.Errorf("kernel download: %q %v", got, err)
	}

	// `rackboot machines --json` from the running serve lists it.
	out, err := exec.CommandContext(ctx, bin, "-f", rack, "machines", "--json").Output()
	if err != nil {
		t.Fatalf("machines --json: %v\n%s", err, out)
	}
	var rep machinesReport
	must(t, json.Unmarshal(out, &rep))
	if rep.From != fromServe || len(rep.Known) != 2 || len(rep.Discovered) != 1 {
		t.Fatalf("machines: %s", out)
	}
	if d := rep.Discovered[0]; d.MAC != newMAC || d.Stage != pxe.StageDiscoveryBoot || d.Addr != netip.MustParseAddr("10.77.0.120") ||
		d.Arch != "amd64" || d.Firmware != "efi-x64" || d.Hardware != nil || d.AdoptedAs != "" {
		t.Errorf("discovered: %+v", d)
	}

	// Adopt it: rack.yaml keeps every line, serve reloads.
	cmd := exec.CommandContext(ctx, bin, "-f", rack, "machine", "adopt", newMAC, "--name", "urban", "--role", "controlplane", "--address", "10.77.0.12/24")
	adoptOut, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("adopt: %v\n%s", err, adoptOut)
	}
	for _, want := range []string{"adopted urban (" + newMAC + ", controlplane)", "the running rackboot serve reloaded the rack (3 machines, added urban): urban's next network boot",
		// Nothing answers on :50000 in the client namespace: the config
		// is not sent, the next network boot installs.
		"machine at 10.77.0.120: Talos maintenance API:", "urban did not take its config there: restart it with a network boot"} {
		if !strings.Contains(string(adoptOut), want) {
			t.Errorf("adopt output lacks %q:\n%s", want, adoptOut)
		}
	}
	after, err := os.ReadFile(rack)
	must(t, err)
	if m := missingLines(rackText, string(after)); len(m) > 0 {
		t.Errorf("adopt lost lines of rack.yaml: %q\n%s", m, after)
	}
	if !strings.Contains(serve.Output(), "rack reloaded: 3 machines, added urban") {
		t.Errorf("serve did not log the reload:\n%s", serve.Output())
	}

	// The same NIC now gets its own boot script and config.
	own, err := curl(cli, "-f", scriptURL)
	if err != nil || !strings.Contains(own, "echo rackboot: booting urban") {
		t.Fatalf("after adopt: %v\n%s", err, own)
	}
	m := regexp.MustCompile(`talos\.config=(\S+)`).FindStringSubmatch(own)
	if m == nil || !strings.Contains(m[1], "t=") {
		t.Fatalf("no config URL with a token after adopt:\n%s", own)
	}
	cfg, err := curl(cli, "-f", m[1])
	if err != nil || !strings.Contains(cfg, "hostname: urban") || !strings.Contains(cfg, "type: controlplane") {
		t.Fatalf("urban's config: %v\n%.300s", err, cfg)
	}

	// machines now shows it as urban, from the same serve.
	out, err = exec.CommandContext(ctx, bin, "-f", rack, "machines", "--json").Output()
	must(t, err)
	rep = machinesReport{}
	must(t, json.Unmarshal(out, &rep))
	if len(rep.Known) != 3 || rep.Known[2].Name != "urban" || rep.Known[2].Stage != pxe.StageConfig || len(rep.Discovered) != 0 {
		t.Errorf("machines after adopt: %s", out)
	}
	if tok := strings.TrimPrefix(regexp.MustCompile(`t=[^&\s]+`).FindString(m[1]), "t="); tok == "" || strings.Contains(serve.Output(), tok) {
		t.Error("serve logged urban's config token (or the URL had none)")
	}
	stop(serve)
}
