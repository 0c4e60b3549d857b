//go:build linux

package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/dotfile/rackboot/internal/netns"
	"github.com/dotfile/rackboot/registry"
)

const serveTestRack = `cluster:
  name: nstest
  talosVersion: v1.13.0
  kubernetesVersion: 1.36.0
  vip: 10.77.0.10
  network:
    subnet: 10.77.0.0/24
    gateway: 10.77.0.254
    nameservers: [10.77.0.254]
    rackboot: 10.77.0.1
machines:
  - name: formula
    role: controlplane
    select: {mac: ["52:54:00:b0:00:01"]}
    address: 10.77.0.11/24
  - name: lailah
    role: worker
    select: {mac: ["52:54:00:b0:00:03"]}
`

// udhcpcScript applies the lease udhcpc got (busybox exports ip and mask).
const udhcpcScript = `#!/bin/sh
case "$1" in
bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface" ;;
esac
`

// built is the rackboot binary the namespace tests run, built once.
var built struct {
	sync.Once
	bin string
	err error
}

// buildRackboot builds the command once per test binary (the tests run the
// real binary: `serve` must bind its sockets inside a network namespace).
func buildRackboot(t *testing.T, _ string) string {
	t.Helper()
	built.Do(func() {
		dir, err := os.MkdirTemp("", "rackboot-bin-")
		if err != nil {
			built.err = err
			return
		}
		built.bin = filepath.Join(dir, "rackboot")
		if out, err := exec.Command("go", "build", "-o", built.bin, ".").CombinedOutput(); err != nil {
			built.err = fmt.Errorf("build rackboot: %v\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.bin
}

// TestServeInNamespace runs `rackboot serve --dhcp full` in a network
// namespace, with a client namespace whose NIC has a rack machine's MAC:
// real udhcpc gets the machine's reserved address, real curl fetches its
// boot script and its config (only from its own address), and a restart of
// serve in the middle of the boot keeps the config URL working and the
// secrets unchanged.
func TestServeInNamespace(t *testing.T) {
	for _, tool := range []string{"udhcpc", "curl", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run `make deps` (Debian packages udhcpc, curl, iproute2)", tool)
		}
	}
	dir := t.TempDir()
	bin := buildRackboot(t, dir)
	rack := filepath.Join(dir, "rack.yaml")
	standin := filepath.Join(dir, "standin")
	must(t, os.WriteFile(rack, []byte(serveTestRack), 0o644))
	must(t, os.MkdirAll(standin, 0o755))
	kernel := strings.Repeat("K", 100_000)
	must(t, os.WriteFile(filepath.Join(standin, "vmlinuz"), []byte(kernel), 0o644))
	must(t, os.WriteFile(filepath.Join(standin, "initramfs.cpio.gz"), []byte("initramfs"), 0o644))
	script := filepath.Join(dir, "udhcpc.sh")
	must(t, os.WriteFile(script, []byte(udhcpcScript), 0o755))

	srv := netns.New(t, "srv")
	cli := netns.New(t, "cli")
	srv.AddBridge("br0", netip.MustParsePrefix("10.77.0.1/24"))
	srv.AddVeth("s0", cli, "c0")
	srv.SetMaster("s0", "br0")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := cli.Exec(ctx, "ip", "link", "set", "c0", "address", "52:54:00:b0:00:01"); err != nil {
		t.Fatalf("set MAC: %v %s", err, out)
	}
	for _, ns := range []*netns.NS{srv, cli} {
		if r, err := ns.DefaultRoute(); err != nil || r != "" {
			t.Fatalf("namespace %s has a default route %q (%v): refusing to run", ns.Name(), r, err)
		}
	}

	// An image in the mirror's store, as `assets pull` leaves it.
	mirrored := putTestImage(t, filepath.Join(dir, ".rackboot", "assets", "images"), "registry.k8s.io/pause:3.10.1")

	serveArgs := []string{"-f", rack, "serve", "-i", "br0", "--dhcp", "full", "--range", "10.77.0.100-10.77.0.150",
		"--router", "none", "--standin", standin}
	serve := srv.Start(bin, serveArgs...)
	curl := func(ns *netns.NS, args ...string) (string, error) {
		out, err := ns.Exec(ctx, "curl", append([]string{"-sS", "--max-time", "5"}, args...)...)
		return string(out), err
	}
	waitHTTP := func(p *netns.Process) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := curl(srv, "-f", "http://10.77.0.1:8080/boot.ipxe"); err == nil {
				return
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
	waitHTTP(serve)

	// The machine's NIC gets its reserved (static) address by DHCP.
	if out, err := cli.Exec(ctx, "udhcpc", "-i", "c0", "-n", "-q", "-f", "-t", "5", "-T", "1", "-s", script); err != nil {
		t.Fatalf("udhcpc: %v\n%s\nserve:\n%s", err, out, serve.Output())
	}
	addrs, _ := cli.Exec(ctx, "ip", "-4", "-o", "addr", "show", "c0")
	if !strings.Contains(string(addrs), "10.77.0.11/24") {
		t.Fatalf("formula's NIC has %q, want its reserved 10.77.0.11/24", addrs)
	}

	// Its boot script names the kernel and a token-protected config URL.
	body, err := curl(cli, "-f", "http://10.77.0.1:8080/ipxe?mac=52-54-00-b0-00-01&arch=x86_64&platform=pcbios")
	if err != nil {
		t.Fatalf("boot script: %v %s", err, body)
	}
	if !strings.Contains(body, "kernel http://10.77.0.1:8080/assets/standin/vmlinuz") {
		t.Fatalf("boot script does not boot the stand-in kernel:\n%s", body)
	}
	m := regexp.MustCompile(`talos\.config=(\S+)`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no talos.config= in the script:\n%s", body)
	}
	configURL := m[1]
	for _, want := range []string{"talos.events.sink=10.77.0.1:4002", "talos.logging.kernel=udp://10.77.0.1:4003"} {
		if !strings.Contains(body, want) {
			t.Errorf("boot script lacks %s", want)
		}
	}
	if got, err := curl(cli, "-f", "http://10.77.0.1:8080/assets/standin/vmlinuz"); err != nil || got != kernel {
		t.Fatalf("kernel download: %d bytes, err %v", len(got), err)
	}

	code := func(ns *netns.NS, url string) string {
		out, _ := curl(ns, "-o", "/dev/null", "-w", "%{http_code}", url)
		return out
	}
	if c := code(cli, configURL); c != "200" {
		t.Fatalf("config from the machine's own address: HTTP %s", c)
	}
	cfg, _ := curl(cli, configURL)
	if !strings.Contains(cfg, "hostname: formula") {
		t.Errorf("the config served is not formula's")
	}
	if c := code(srv, configURL); c != "403" {
		t.Errorf("config from another address: HTTP %s, want 403", c)
	}
	if c := code(cli, strings.Replace(configURL, "t=", "t=A", 1)); c != "403" {
		t.Errorf("config with a forged token: HTTP %s, want 403", c)
	}
	if !strings.Contains(cfg, "kind: RegistryMirrorConfig\nname: registry.k8s.io\nendpoints:\n    - url: http://10.77.0.1:5000") {
		t.Errorf("formula's config does not send registry.k8s.io to the mirror:\n%s", cfg)
	}
	checkMirror(t, ctx, curl, code, srv, cli, mirrored)

	unknown, _ := curl(cli, "http://10.77.0.1:8080/ipxe?mac=52-54-00-99-99-99&arch=x86_64&platform=pcbios")
	if !strings.Contains(unknown, "unknown machine 52:54:00:99:99:99") {
		t.Errorf("unknown machine's script: %q", unknown)
	}

	var api struct {
		Machines []struct {
			Name, Stage, Addr string
		}
	}
	js, err := curl(srv, "-f", "http://10.77.0.1:8080/api/machines")
	if err != nil || json.Unmarshal([]byte(js), &api) != nil {
		t.Fatalf("/api/machines: %v %q", err, js)
	}
	stages := map[string]string{}
	for _, mc := range api.Machines {
		stages[mc.Name] = mc.Stage
	}
	if stages["formula"] != "config" || stages[""] != "discovered" {
		t.Errorf("status: %+v, want formula at config and one discovered machine", api.Machines)
	}

	// Restart serve in the middle of the boot: Talos retries its config
	// fetch, and the same URL must still work; secrets are kept.
	secretsPath := filepath.Join(dir, ".rackboot", "secrets.yaml")
	before := fileSHA(t, secretsPath)
	must(t, serve.Cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-serve.Done():
		if serve.Err() != nil {
			t.Fatalf("serve did not stop cleanly on SIGTERM: %v\n%s", serve.Err(), serve.Output())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop within 20 s of SIGTERM")
	}
	serve2 := srv.Start(bin, serveArgs...)
	waitHTTP(serve2)
	if c := code(cli, configURL); c != "200" {
		t.Errorf("config after a restart of serve: HTTP %s, want 200\n%s", c, serve2.Output())
	}
	if after := fileSHA(t, secretsPath); after != before {
		t.Error("secrets changed across a restart of serve")
	}
	if st, err := os.Stat(secretsPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("secrets file mode: %v %v", st.Mode(), err)
	}
	leases, err := os.ReadFile(filepath.Join(dir, ".rackboot", "dhcp-leases.json"))
	if err != nil || !strings.Contains(string(leases), "10.77.0.11") {
		t.Errorf("leases file after restart: %v %s", err, leases)
	}
	if strings.Contains(serve.Output()+serve2.Output(), strings.TrimPrefix(regexp.MustCompile(`t=[^&\s]+`).FindString(configURL), "t=")) {
		t.Error("serve logged a config token")
	}
}

// putTestImage puts a small random image (two layers) under ref in the
// image store at dir and returns it.
func putTestImage(t *testing.T, dir, ref string) v1.Image {
	t.Helper()
	img, err := random.Image(64<<10, 2)
	must(t, err)
	st, err := registry.Open(dir)
	must(t, err)
	must(t, st.Put(ref, img))
	return img
}

// checkMirror pulls img (registry.k8s.io/pause:3.10.1 in the store) from
// serve's registry mirror as containerd does for Talos (ns=, by tag, then
// by digest, then its blobs with a Range), from the machine formula (cli)
// and from the server's own namespace, then checks that only formula's
// bytes count on its status and that nothing can be pushed.
func checkMirror(t *testing.T, ctx context.Context, curl func(*netns.NS, ...string) (string, error), code func(*netns.NS, string) string, srv, cli *netns.NS, img v1.Image) {
	t.Helper()
	const base = "http://10.77.0.1:5000/v2/"
	accept := "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
	if out, err := curl(cli, "-f", "-D", "-", "-o", "/dev/null", base); err != nil || !strings.Contains(out, "Docker-Distribution-Api-Version: registry/2.0") {
		t.Fatalf("GET /v2/ from the machine: %v\n%s", err, out)
	}
	digest, err := img.Digest()
	must(t, err)
	raw, err := img.RawManifest()
	must(t, err)
	byTag, err := curl(cli, "-f", "-H", accept, base+"pause/manifests/3.10.1?ns=registry.k8s.io")
	if err != nil || byTag != string(raw) {
		t.Fatalf("manifest by tag through the mirror: %v\n%s", err, byTag)
	}
	if byDigest, err := curl(cli, "-f", "-H", accept, base+"pause/manifests/"+digest.String()+"?ns=registry.k8s.io"); err != nil || byDigest != string(raw) {
		t.Fatalf("manifest by digest: %v\n%s", err, byDigest)
	}
	layers, err := img.Layers()
	must(t, err)
	want := int64(2 * len(raw))
	for _, l := range layers {
		d, _ := l.Digest()
		n, _ := l.Size()
		got, err := curl(cli, "-f", "-o", "/dev/null", "-w", "%{size_download}", base+"pause/blobs/"+d.String()+"?ns=registry.k8s.io")
		if err != nil || got != fmt.Sprint(n) {
			t.Fatalf("blob %s through the mirror: %v, %s bytes, want %d", d, err, got, n)
		}
		want += n
	}
	d, _ := layers[0].Digest()
	part, err := curl(cli, "-f", "-r", "10-19", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", base+"pause/blobs/"+d.String()+"?ns=registry.k8s.io")
	if err != nil || part != "206 10" {
		t.Errorf("Range request: %v %q, want 206 10", err, part)
	}
	want += 10
	// The server's own namespace is no machine: its pull counts nowhere.
	if c := code(srv, base+"pause/blobs/"+d.String()+"?ns=registry.k8s.io"); c != "200" {
		t.Errorf("blob from the server's namespace: HTTP %s", c)
	}
	if c := code(cli, base+"nothere/manifests/1?ns=registry.k8s.io"); c != "404" {
		t.Errorf("unknown image: HTTP %s, want 404", c)
	}
	if out, _ := curl(cli, "-X", "PUT", "-o", "/dev/null", "-w", "%{http_code}", "--data-binary", "x", base+"pause/manifests/evil?ns=registry.k8s.io"); out != "405" {
		t.Errorf("push (PUT manifest): HTTP %s, want 405", out)
	}
	var api struct {
		Machines []struct {
			Name   string
			Pulled *struct {
				Bytes      int64
				ImageCount int
				Images     []string
			}
		}
	}
	js, err := curl(srv, "-f", "http://10.77.0.1:8080/api/machines")
	if err != nil || json.Unmarshal([]byte(js), &api) != nil {
		t.Fatalf("/api/machines: %v %q", err, js)
	}
	for _, m := range api.Machines {
		switch {
		case m.Name == "formula" && (m.Pulled == nil || m.Pulled.Bytes != want || m.Pulled.ImageCount != 1 || m.Pulled.Images[0] != "registry.k8s.io/pause"):
			t.Errorf("formula pulled %+v, want %d bytes of 1 image registry.k8s.io/pause", m.Pulled, want)
		case m.Name != "formula" && m.Pulled != nil:
			t.Errorf("machine %q was counted pulls it did not make: %+v", m.Name, m.Pulled)
		}
	}
	metrics, _ := curl(srv, "-f", "http://10.77.0.1:8080/metrics")
	if !strings.Contains(metrics, fmt.Sprintf("rackboot_registry_pulled_bytes_total{machine=\"formula\"} %d\n", want)) {
		t.Errorf("/metrics lacks formula's pulled bytes (%d)", want)
	}
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
