//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/internal/netns"
)

// TestTFTPUnderPacketLoss downloads the iPXE binary from `rackboot serve`
// with the real atftp and tftp-hpa clients through a path that loses one UDP
// packet in 20 each way (DATA and ACKs). This kernel has no netem qdisc, so
// the loss comes from nftables rules (numgen) on each side's input hook.
// Every download must be byte-identical.
//
// The loss is periodic, not random: atftp answers only the first duplicate
// DATA block with an extra ACK and ignores the next ones, so when an ACK and
// its extra ACK are both lost it stalls whatever the server does (seen with
// random 5% loss, about one download in eight). No real firmware client
// behaves like that; one-in-20 never drops two packets in a row.
func TestTFTPUnderPacketLoss(t *testing.T) {
	for tool, pkg := range map[string]string{"atftp": "atftp", "tftp": "tftp-hpa", "nft": "nftables", "ip": "iproute2"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run `make deps` (Debian package %s)", tool, pkg)
		}
	}
	const file = "undionly.kpxe"
	want, err := os.ReadFile(filepath.Join("/usr/lib/ipxe", file))
	if err != nil {
		t.Fatalf("%v: run `make deps` (Debian package ipxe)", err)
	}
	dir := t.TempDir()
	bin := buildRackboot(t, dir)
	rack := filepath.Join(dir, "rack.yaml")
	must(t, os.WriteFile(rack, []byte(serveTestRack), 0o644))

	srv := netns.New(t, "tftps")
	cli := netns.New(t, "tftpc")
	srv.AddBridge("br0", netip.MustParsePrefix("10.77.0.1/24"))
	srv.AddVeth("s0", cli, "c0")
	srv.SetMaster("s0", "br0")
	cli.AddAddr("c0", netip.MustParsePrefix("10.77.0.50/24"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Drops on the input hook of each side look like loss on the wire to
	// the sender (a drop on output would fail its sendto with EPERM).
	for _, ns := range []*netns.NS{srv, cli} {
		for _, args := range [][]string{
			{"add", "table", "inet", "loss"},
			{"add", "chain", "inet", "loss", "in", "{ type filter hook input priority 0; }"},
			{"add", "rule", "inet", "loss", "in", "ip", "saddr", "10.77.0.0/24", "meta", "l4proto", "udp", "numgen", "inc", "mod", "20", "0", "counter", "drop"},
		} {
			if out, err := ns.Exec(ctx, "nft", args...); err != nil {
				t.Fatalf("nft %v in %s: %v %s", args, ns.Name(), err, out)
			}
		}
	}
	serve := srv.Start(bin, "-f", rack, "serve", "-i", "br0", "--dhcp", "off", "--events-port", "0", "--log-port", "0",
		"--ipxe-dir", "/usr/lib/ipxe")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := srv.Exec(ctx, "curl", "-sf", "-o", "/dev/null", "http://10.77.0.1:8080/boot.ipxe"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start:\n%s", serve.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}

	get := func(name string, args ...string) {
		t.Helper()
		out := filepath.Join(dir, name)
		log, err := cli.Exec(ctx, args[0], append(args[1:], out)...)
		got, _ := os.ReadFile(out)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d of %d bytes, identical=%v, err %v\n%s", name, len(got), len(want), bytes.Equal(got, want), err, log)
		}
	}
	start := time.Now()
	get("atftp", "atftp", "--option", "blksize 1468", "--option", "tsize 0", "-g", "-r", file, "10.77.0.1", "69", "-l")
	// tftp-hpa takes its commands on stdin: binary mode, a short client
	// retransmit, then the download.
	out := filepath.Join(dir, "hpa")
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", cli.Name(), "tftp", "10.77.0.1")
	cmd.Stdin = strings.NewReader(fmt.Sprintf("binary\nrexmt 1\ntimeout 60\nget %s %s\nquit\n", file, out))
	log, err := cmd.CombinedOutput()
	if got, _ := os.ReadFile(out); err != nil || !bytes.Equal(got, want) {
		t.Errorf("tftp-hpa: %d of %d bytes, err %v\n%s", len(got), len(want), err, log)
	}
	var counters string
	for _, ns := range []*netns.NS{srv, cli} {
		out, _ := ns.Exec(ctx, "nft", "list", "table", "inet", "loss")
		if strings.Contains(string(out), "packets 0 ") {
			t.Errorf("nftables in %s dropped nothing: the loss path was not exercised", ns.Name())
		}
		counters += string(out)
	}
	t.Logf("2 downloads of %s (%d bytes) through 1-in-20 loss each way in %v; nftables:\n%s", file, len(want), time.Since(start).Round(time.Millisecond), counters)
}
