package imagepull_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/dotfile/rackboot/internal/registrytest"
	"github.com/dotfile/rackboot/lab/standin"
	"github.com/dotfile/rackboot/lab/standin/imagepull"
	"github.com/dotfile/rackboot/lab/standin/installer"
)

const (
	upstream = "factory.talos.dev"
	repo     = "metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
	tag      = "v1.13.0"
)

// standinDir writes a small stand-in build (vmlinuz; initramfs.cpio.gz as
// make standin lays it out: a gzip archive, then an uncompressed one) and
// returns the dir, the kernel and the installed initramfs (the gzip part).
func standinDir(t *testing.T) (dir string, kernel, initrd []byte) {
	t.Helper()
	dir = t.TempDir()
	kernel = randBytes(t, 300<<10)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(randBytes(t, 200<<10))
	zw.Close()
	initrd = gz.Bytes()
	full := append(append(append([]byte(nil), initrd...), 0, 0), []byte("070701")...)
	full = append(full, randBytes(t, 100<<10)...)
	if err := os.WriteFile(filepath.Join(dir, standin.KernelFile), kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, standin.InitramfsFile), full, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, kernel, initrd
}

func randBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func installerImage(t *testing.T, dir, arch string) v1.Image {
	t.Helper()
	img, err := installer.Image(dir, arch)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// push writes img (or an index) to reg as repo:tag with go-containerregistry.
func push(t *testing.T, reg *registrytest.Registry, obj remote.Taggable) {
	t.Helper()
	ref, err := name.ParseReference(reg.Addr+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	opt := remote.WithTransport(reg.Client().Transport)
	switch o := obj.(type) {
	case v1.ImageIndex:
		err = remote.WriteIndex(ref, o, opt)
	case v1.Image:
		err = remote.Write(ref, o, opt)
	}
	if err != nil {
		t.Fatalf("push to %s: %v", reg.Addr, err)
	}
}

func client(hc *http.Client, o ...func(*imagepull.Config)) *imagepull.Client {
	cfg := imagepull.Config{
		HTTP: hc, Arch: "amd64", Timeout: time.Minute,
		Sleep: func(ctx context.Context, _ time.Duration) error { return ctx.Err() },
	}
	for _, f := range o {
		f(&cfg)
	}
	return imagepull.New(cfg)
}

func digestOf(t *testing.T, d interface{ Digest() (v1.Hash, error) }) string {
	t.Helper()
	h, err := d.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

func wantFile(t *testing.T, dir, rel string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(dir, rel))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s: %d bytes, not the %d bytes pushed", rel, len(got), len(want))
	}
}

func mirrorOf(host string, skip bool, urls ...string) imagepull.Mirrors {
	m := imagepull.Mirror{SkipFallback: skip}
	for _, u := range urls {
		m.Endpoints = append(m.Endpoints, imagepull.Endpoint{URL: u})
	}
	return imagepull.Mirrors{host: m}
}

// TestPullFromMirror: the installer image pushed to a real registry,
// pulled by tag and by digest as factory.talos.dev's through it as a
// mirror (skipFallback: no upstream here): ns=factory.talos.dev on every
// request, the files unpacked byte for byte, the bytes counted.
func TestPullFromMirror(t *testing.T) {
	dir, kernel, initrd := standinDir(t)
	img := installerImage(t, dir, "amd64")
	reg := registrytest.Start(t, registrytest.Options{})
	push(t, reg, img)

	mirrors := mirrorOf(upstream, true, reg.URL)
	want := digestOf(t, img)
	for _, ref := range []string{upstream + "/" + repo + ":" + tag, upstream + "/" + repo + "@" + want} {
		t.Run(ref[len(ref)-10:], func(t *testing.T) {
			// Only the pull's requests carry ns= (the push's, whose log
			// lines may come late, do not).
			pulls := func(all []string) []string {
				var out []string
				for _, r := range all {
					if strings.Contains(r, "?ns=") {
						out = append(out, r)
					}
				}
				return out
			}
			before := len(pulls(reg.Requests()))
			res, err := client(reg.Client()).Pull(context.Background(), ref, mirrors, t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if res.Digest != want || res.Manifest != want || res.Endpoint != reg.URL || res.Attempts != 1 {
				t.Errorf("result %+v, want digest %s from %s in one attempt", res, want, reg.URL)
			}
			wantFile(t, res.Dir, installer.KernelPath("amd64"), kernel)
			wantFile(t, res.Dir, installer.InitramfsPath("amd64"), initrd)

			// Bytes: the manifest, the config and the layer, each once.
			raw, _ := img.RawManifest()
			cfg, _ := img.RawConfigFile()
			layers, _ := img.Layers()
			size, _ := layers[0].Size()
			if wantBytes := int64(len(raw)+len(cfg)) + size; res.Bytes != wantBytes {
				t.Errorf("bytes %d, want %d (manifest %d + config %d + layer %d)", res.Bytes, wantBytes, len(raw), len(cfg), size)
			}
			reqs := pulls(reg.WaitRequests(func(r []string) bool { return len(pulls(r)) >= before+4 }))[before:]
			if len(reqs) < 4 || !strings.HasPrefix(reqs[0], "HEAD /v2/"+repo+"/manifests/") {
				t.Fatalf("registry saw %q, want a HEAD of the manifest first", reqs)
			}
			for _, r := range reqs {
				if !strings.Contains(r, "?ns="+upstream+" ") {
					t.Errorf("request %q lacks ns=%s", r, upstream)
				}
			}
		})
	}
}

// TestPullIndex: an index with linux/amd64 and linux/arm64; each machine
// gets its own platform's files.
func TestPullIndex(t *testing.T) {
	dir, kernel, _ := standinDir(t)
	amd, arm := installerImage(t, dir, "amd64"), installerImage(t, dir, "arm64")
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	idx = mutate.AppendManifests(idx,
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
	reg := registrytest.Start(t, registrytest.Options{})
	push(t, reg, idx)
	for arch, img := range map[string]v1.Image{"amd64": amd, "arm64": arm} {
		res, err := client(reg.Client(), func(c *imagepull.Config) { c.Arch = arch }).
			Pull(context.Background(), upstream+"/"+repo+":"+tag, mirrorOf(upstream, true, reg.URL), t.TempDir())
		if err != nil {
			t.Fatalf("%s: %v", arch, err)
		}
		if res.Digest != digestOf(t, idx) || res.Manifest != digestOf(t, img) {
			t.Errorf("%s: digest %s manifest %s, want the index %s and %s", arch, res.Digest, res.Manifest, digestOf(t, idx), digestOf(t, img))
		}
		wantFile(t, res.Dir, installer.KernelPath(arch), kernel)
		if _, err := os.Stat(filepath.Join(res.Dir, "usr/install", map[string]string{"amd64": "arm64", "arm64": "amd64"}[arch])); err == nil {
			t.Errorf("%s: the other platform's files were unpacked too", arch)
		}
	}
	_, err := client(reg.Client(), func(c *imagepull.Config) { c.Arch = "riscv64" }).
		Pull(context.Background(), upstream+"/"+repo+":"+tag, mirrorOf(upstream, true, reg.URL), t.TempDir())
	if !errors.Is(err, imagepull.ErrNoPlatform) {
		t.Errorf("riscv64: %v, want ErrNoPlatform", err)
	}
}

// TestMirrorsThenFallback: a mirror that is down, one without the image
// (404), then the upstream itself (TLS, no ns); and when a mirror has it,
// the upstream is not asked.
func TestMirrorsThenFallback(t *testing.T) {
	dir, kernel, _ := standinDir(t)
	img := installerImage(t, dir, "amd64")
	up := registrytest.Start(t, registrytest.Options{TLS: true})
	push(t, up, img)
	empty := registrytest.Start(t, registrytest.Options{})
	down := "http://" + registrytest.FreeAddr(t)
	ref := up.Addr + "/" + repo + ":" + tag

	res, err := client(up.Client()).Pull(context.Background(), ref, mirrorOf(up.Addr, false, down, empty.URL), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if res.Endpoint != up.URL || len(res.Endpoints) != 1 {
		t.Errorf("endpoint %s (all %v), want the upstream %s", res.Endpoint, res.Endpoints, up.URL)
	}
	wantFile(t, res.Dir, installer.KernelPath("amd64"), kernel)
	head := "HEAD /v2/" + repo + "/manifests/" + tag + "?ns=" + url.QueryEscape(up.Addr) + " "
	if reqs := empty.WaitRequests(func(r []string) bool { return registrytest.Count(r, head) > 0 }); registrytest.Count(reqs, head) != 1 {
		t.Errorf("the empty mirror saw %q, want one %q", reqs, head)
	}
	for _, r := range up.Requests() {
		if strings.Contains(r, "ns=") && strings.Contains(r, "/"+repo+"/") {
			t.Errorf("the upstream got ns: %q", r)
		}
	}

	// A mirror with the image comes first: the upstream is not asked.
	mirror := registrytest.Start(t, registrytest.Options{})
	push(t, mirror, img)
	before := len(up.Requests())
	res, err = client(up.Client()).Pull(context.Background(), ref, mirrorOf(up.Addr, false, mirror.URL), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if res.Endpoint != mirror.URL || len(up.Requests()) != before {
		t.Errorf("endpoint %s; upstream requests %q; want the mirror only", res.Endpoint, up.Requests()[before:])
	}
}

// TestSkipFallback: the mirror lacks the image and skipFallback is set:
// not found, the error names the image and the mirror, the upstream (which
// has it) is never asked.
func TestSkipFallback(t *testing.T) {
	dir, _, _ := standinDir(t)
	up := registrytest.Start(t, registrytest.Options{TLS: true})
	push(t, up, installerImage(t, dir, "amd64"))
	empty := registrytest.Start(t, registrytest.Options{})
	before := len(up.Requests())
	ref := up.Addr + "/" + repo + ":" + tag
	parent := t.TempDir()
	_, err := client(up.Client(), func(c *imagepull.Config) { c.MaxNotFound = 1 }).
		Pull(context.Background(), ref, mirrorOf(up.Addr, true, empty.URL), parent)
	if !errors.Is(err, imagepull.ErrNotFound) || !strings.Contains(err.Error(), ref) || !strings.Contains(err.Error(), empty.URL+"/v2/") {
		t.Fatalf("error %v; want not found naming %s and %s", err, ref, empty.URL)
	}
	head := "HEAD /v2/" + repo + "/manifests/" + tag + "?ns="
	if n := registrytest.Count(empty.WaitRequests(func(r []string) bool { return registrytest.Count(r, head) >= 2 }), head); n != 2 {
		t.Errorf("the mirror was asked for the manifest %d times, want 2 (one attempt, one retry after not found)", n)
	}
	if reqs := up.Requests()[before:]; len(reqs) != 0 {
		t.Errorf("the upstream was asked: %q", reqs)
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Errorf("a failed pull left %d entries", len(ents))
	}
}

// flipByteProxy is the one fake here: a reverse proxy in front of a real
// registry that flips one byte in the middle of every layer blob it
// passes while corrupt is set (a bad cache, a bad disk, a bad network).
type flipByteProxy struct {
	layer   string // the blob digest to corrupt
	corrupt atomic.Int32
	srv     *http.Server
	url     string
}

func startFlipByteProxy(t *testing.T, target *registrytest.Registry, layer string, times int32) *flipByteProxy {
	t.Helper()
	u, _ := url.Parse(target.URL)
	p := &flipByteProxy{layer: layer}
	p.corrupt.Store(times)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodGet && strings.HasSuffix(resp.Request.URL.Path, "/blobs/"+layer) && p.corrupt.Add(-1) >= 0 {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			b[len(b)/2] ^= 0xff
			resp.Body = io.NopCloser(bytes.NewReader(b))
		}
		return nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.url = "http://" + ln.Addr().String()
	p.srv = &http.Server{Handler: rp, ReadHeaderTimeout: 10 * time.Second}
	go p.srv.Serve(ln) //nolint:errcheck
	t.Cleanup(func() { p.srv.Close() })
	return p
}

// TestCorruptLayer: a layer that does not match its digest fails the pull
// (no fallback to a good upstream, as containerd), the error names the
// image and the endpoint, nothing is left; a retry after one bad transfer
// succeeds, as Talos retries.
func TestCorruptLayer(t *testing.T) {
	dir, kernel, _ := standinDir(t)
	img := installerImage(t, dir, "amd64")
	reg := registrytest.Start(t, registrytest.Options{})
	push(t, reg, img)
	layers, _ := img.Layers()
	ld := digestOf(t, layers[0])
	ref := upstream + "/" + repo + ":" + tag

	bad := startFlipByteProxy(t, reg, ld, 1000)
	parent := t.TempDir()
	_, err := client(reg.Client(), func(c *imagepull.Config) { c.MaxAttempts = 2 }).
		Pull(context.Background(), ref, mirrorOf(upstream, true, bad.url), parent)
	if err == nil || !strings.Contains(err.Error(), "digest mismatch") || !strings.Contains(err.Error(), ref) || !strings.Contains(err.Error(), bad.url+"/v2/"+repo+"/blobs/"+ld) {
		t.Fatalf("error %v; want a digest mismatch naming %s and the proxy's blob URL", err, ref)
	}
	if ents, _ := os.ReadDir(parent); len(ents) != 0 {
		t.Errorf("a corrupt pull left %d entries", len(ents))
	}

	once := startFlipByteProxy(t, reg, ld, 1)
	res, err := client(reg.Client(), func(c *imagepull.Config) { c.MaxAttempts = 3 }).
		Pull(context.Background(), ref, mirrorOf(upstream, true, once.url), parent)
	if err != nil {
		t.Fatal(err)
	}
	if res.Attempts != 2 {
		t.Errorf("attempts %d, want 2 (one corrupt transfer, then a good one)", res.Attempts)
	}
	wantFile(t, res.Dir, installer.KernelPath("amd64"), kernel)
}

// TestPullHonoursContext: a cancelled context ends the retries.
func TestPullHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c := imagepull.New(imagepull.Config{Arch: "amd64"})
	_, err := c.Pull(ctx, upstream+"/"+repo+":"+tag, mirrorOf(upstream, true, "http://"+registrytest.FreeAddr(t)), t.TempDir())
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if !strings.Contains(err.Error(), upstream+"/"+repo) {
		t.Errorf("error %q does not name the image", err)
	}
}
