//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/dotfile/rackboot/assetimage"
	"github.com/dotfile/rackboot/imager"
	"github.com/dotfile/rackboot/internal/containerdtest"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/registry"
)

// TestServeKubeAssetsFromContainerd: what the kubelet does with the
// Deployment's image volume, done by the real runtime. The laptop's asset
// cache (a boot file set and a stored image) becomes the assets image,
// put into the laptop's image store and served by its registry mirror; a
// private containerd pulls it through a hosts.toml for ghcr.io (as Talos
// writes it) and mounts it read-only (`ctr images mount`: unpack, a view
// snapshot, overlayfs, as containerd's CRI does for an image volume); a
// `serve --kube --assets-from <mount>` replica against the real API server
// serves the kernel and initramfs byte for byte as the laptop's cache holds
// them, and a blob of the stored image from its registry mirror.
func TestServeKubeAssetsFromContainerd(t *testing.T) {
	containerd := needTool(t, "containerd", "containerd")
	ctr := needTool(t, "ctr", "containerd")
	env := kubetest.Start(t)
	k := newKubeSegment(t, env, "rackboot-assets", 1, shortElection)

	// The laptop's asset cache.
	assets := filepath.Join(t.TempDir(), "assets")
	set := imager.Set{Version: "v1.13.0", Schematic: imager.VanillaSchematicID, Arch: "amd64"}
	kernel, initramfs := importTestSet(t, assets, set)
	store, err := registry.Open(filepath.Join(assets, assetimage.ImagesDir))
	must(t, err)
	img, err := random.Image(128<<10, 2)
	must(t, err)
	must(t, store.Put("registry.k8s.io/pause:3.10", img))
	layers, err := img.Layers()
	must(t, err)
	layerDigest, err := layers[0].Digest()
	must(t, err)
	rc, err := layers[0].Compressed()
	must(t, err)
	layerBytes, err := io.ReadAll(rc)
	must(t, err)
	rc.Close()

	t0 := time.Now()
	built, err := assetimage.Build(assetimage.Config{AssetsDir: assets, Images: store})
	must(t, err)
	must(t, assetimage.Put(store, built))
	t.Logf("measured: assets image %s built and put in %v (%d bytes of layers)", built.Ref(), time.Since(t0).Round(time.Millisecond), built.Bytes)
	mirror := startTestMirror(t, store)

	// A private containerd; ghcr.io through the laptop's mirror.
	tmp, err := os.MkdirTemp("", "rbassets")
	must(t, err)
	t.Cleanup(func() { os.RemoveAll(tmp) })
	sock := containerdtest.Start(t, containerd, tmp)
	hostsDir := filepath.Join(tmp, "certs.d")
	must(t, os.MkdirAll(filepath.Join(hostsDir, "ghcr.io"), 0o755))
	must(t, os.WriteFile(filepath.Join(hostsDir, "ghcr.io", "hosts.toml"), []byte(fmt.Sprintf(`[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, mirror)), 0o644))
	ref := assetimage.Repository + "@" + built.Digest.String()
	ctrRun := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, ctr, append([]string{"--address", sock, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	t0 = time.Now()
	ctrRun("images", "pull", "--hosts-dir", hostsDir, "--platform", "linux/amd64", ref)
	mnt := filepath.Join(tmp, "mnt")
	must(t, os.MkdirAll(mnt, 0o755))
	ctrRun("images", "mount", "--platform", "linux/amd64", ref, mnt)
	t.Cleanup(func() { ctrRun("images", "unmount", "--rm", mnt) })
	t.Logf("measured: containerd pulled and mounted it in %v", time.Since(t0).Round(time.Millisecond))
	if err := os.WriteFile(filepath.Join(mnt, "x"), nil, 0o644); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("writing into the mounted image: %v, want a read-only file system", err)
	}

	// One replica reading its boot files and images from the mount.
	r := k.Replicas[0]
	must(t, os.MkdirAll(r.State, 0o755)) // the pod's emptyDir
	r.Proc = r.NS.Start(k.Rackboot, "-f", k.RackFile, "--state", r.State, "serve",
		"--kube", "--kubeconfig", k.Env.Kubeconfig, "--namespace", k.KubeNamespace,
		"-i", "eth0", "--server-ip", r.IP, "--dhcp", "off", "--assets-from", mnt)
	k.WaitHTTP(t, r)
	for file, want := range map[string][]byte{imager.FileKernel: kernel, imager.FileInitramfs: initramfs} {
		got := filepath.Join(t.TempDir(), file)
		if out, err := k.Curl("-f", "-o", got, "http://"+r.IP+":8080/assets/"+set.ID(file)); err != nil {
			t.Fatalf("GET %s: %v %s", file, err, out)
		}
		if b, _ := os.ReadFile(got); !bytes.Equal(b, want) {
			t.Errorf("%s from the replica: %d bytes, differs from the laptop's cache (%d bytes)", file, len(b), len(want))
		}
	}
	got := filepath.Join(t.TempDir(), "blob")
	if out, err := k.Curl("-f", "-o", got, "http://"+r.IP+":5000/v2/registry.k8s.io/pause/blobs/"+layerDigest.String()); err != nil {
		t.Fatalf("GET the layer from the replica's mirror: %v %s", err, out)
	}
	if b, _ := os.ReadFile(got); !bytes.Equal(b, layerBytes) {
		t.Errorf("layer from the replica's mirror: %d bytes, differs from the image's (%d bytes)", len(b), len(layerBytes))
	}
	// A set the image does not hold is not found (nothing falls through to
	// the replica's empty state directory).
	other := imager.Set{Version: "v1.13.1", Schematic: imager.VanillaSchematicID, Arch: "amd64"}
	if c, _ := k.Code("http://" + r.IP + ":8080/assets/" + other.ID(imager.FileKernel)); c != "404" {
		t.Errorf("a kernel the image does not hold: HTTP %s, want 404", c)
	}
}

// needTool finds a program or fails naming its Debian package.
func needTool(t *testing.T, bin, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(bin)
	if err != nil {
		t.Fatalf("%s not found: install the Debian package %s (apt-get install %s)", bin, pkg, pkg)
	}
	return p
}

// importTestSet imports random boot files with a bzImage's and an xz
// initramfs's magic as set, and returns them.
func importTestSet(t *testing.T, dir string, set imager.Set) (kernel, initramfs []byte) {
	t.Helper()
	kernel = make([]byte, 300<<10)
	rand.Read(kernel)
	copy(kernel[0x1fe:], "\x55\xaa")
	copy(kernel[0x202:], "HdrS")
	initramfs = make([]byte, 700<<10)
	rand.Read(initramfs)
	copy(initramfs, "\xfd7zXZ\x00")
	tmp := t.TempDir()
	must(t, os.WriteFile(filepath.Join(tmp, "k"), kernel, 0o644))
	must(t, os.WriteFile(filepath.Join(tmp, "i"), initramfs, 0o644))
	c, err := imager.OpenCache(dir)
	must(t, err)
	defer c.Close()
	_, err = c.Import(set, filepath.Join(tmp, "k"), filepath.Join(tmp, "i"))
	must(t, err)
	return kernel, initramfs
}

// startTestMirror serves store on 127.0.0.1 (the laptop's mirror) and
// returns its host:port.
func startTestMirror(t *testing.T, store *registry.Store) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	srv, err := registry.New(registry.Config{Store: store, Log: slog.New(slog.DiscardHandler)}, registry.WithListener(ln))
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return srv.Addr().String()
}

// TestAssetsFromDir: an empty or missing --assets-from (an image volume a
// runtime without support mounted empty) is refused, saying why.
func TestAssetsFromDir(t *testing.T) {
	empty := t.TempDir()
	if err := assetsFromDir(empty); err == nil || !strings.Contains(err.Error(), "containerd 2.1") {
		t.Errorf("empty dir: %v, want a refusal naming containerd 2.1", err)
	}
	if err := assetsFromDir(filepath.Join(empty, "none")); err == nil || !strings.Contains(err.Error(), "not mounted") {
		t.Errorf("missing dir: %v", err)
	}
	must(t, os.Mkdir(filepath.Join(empty, "talos"), 0o755))
	if err := assetsFromDir(empty); err != nil {
		t.Errorf("with talos/: %v", err)
	}
}
