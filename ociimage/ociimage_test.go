package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/dotfile/rackboot/registry"
)

var epoch = time.Unix(1764806400, 0).UTC() // 2025-12-04

// binaries writes two different "binaries" (random bytes stand for the
// executables: the image does not run them here).
func binaries(t *testing.T) []Binary {
	t.Helper()
	dir := t.TempDir()
	var out []Binary
	for i, arch := range []string{"arm64", "amd64"} { // unsorted on purpose
		p := filepath.Join(dir, "rackboot-linux-"+arch)
		b := bytes.Repeat([]byte(arch), 100000+i*7)
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
		out = append(out, Binary{OS: "linux", Arch: arch, Path: p})
	}
	return out
}

func testConfig(t *testing.T) Config {
	return Config{Binaries: binaries(t), Version: "v0.9.0", Revision: "0123456789abcdef", Created: epoch}
}

// digests is the index digest and each platform's manifest digest.
func digests(t *testing.T, idx v1.ImageIndex) map[string]v1.Hash {
	t.Helper()
	out := map[string]v1.Hash{}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	out["index"] = d
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range im.Manifests {
		out[m.Platform.OS+"/"+m.Platform.Architecture] = m.Digest
	}
	return out
}

// tree is every file of dir with its content.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestReproducible: two builds of the same inputs, in separate layouts,
// are the same bytes; another epoch or binary gives another digest.
func TestReproducible(t *testing.T) {
	cfg := testConfig(t)
	var dirs []string
	var ds []map[string]v1.Hash
	for range 2 {
		idx, err := Build(cfg)
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), "oci")
		if err := WriteLayout(dir, idx, Tag(cfg.Version)); err != nil {
			t.Fatal(err)
		}
		dirs = append(dirs, dir)
		ds = append(ds, digests(t, idx))
	}
	if len(ds[0]) != 3 {
		t.Fatalf("digests %v: want the index and two platforms", ds[0])
	}
	for k, v := range ds[0] {
		if ds[1][k] != v {
			t.Errorf("%s: %s then %s", k, v, ds[1][k])
		}
	}
	a, b := tree(t, dirs[0]), tree(t, dirs[1])
	if len(a) != len(b) || len(a) < 8 { // oci-layout, index.json, index, 2×(manifest, config, layer)
		t.Errorf("layouts hold %d and %d files", len(a), len(b))
	}
	for p, c := range a {
		if b[p] != c {
			t.Errorf("%s differs between the two builds", p)
		}
	}
	t.Logf("index %s", ds[0]["index"])

	other := cfg
	other.Created = epoch.Add(time.Second)
	idx, err := Build(other)
	if err != nil {
		t.Fatal(err)
	}
	if d := digests(t, idx); d["index"] == ds[0]["index"] || d["linux/amd64"] == ds[0]["linux/amd64"] {
		t.Error("another SOURCE_DATE_EPOCH gave the same digests")
	}
}

// TestLayer: the layer holds the binary, byte for byte, alone, with fixed
// mtime, owners and mode; the config says entrypoint, user and labels.
func TestLayer(t *testing.T) {
	cfg := testConfig(t)
	idx, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := idx.IndexManifest()
	for _, m := range im.Manifests {
		img, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(filepath.Join(filepath.Dir(cfg.Binaries[0].Path), "rackboot-linux-"+m.Platform.Architecture))
		ls, err := img.Layers()
		if err != nil || len(ls) != 1 {
			t.Fatalf("%s: %d layers, %v", m.Platform.Architecture, len(ls), err)
		}
		rc, err := ls[0].Compressed()
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(rc)
		if err != nil {
			t.Fatal(err)
		}
		if !zr.ModTime.IsZero() || zr.Name != "" || zr.OS != 3 {
			t.Errorf("gzip header %+v: want no time, no name, OS Unix", zr.Header)
		}
		tr := tar.NewReader(zr)
		n := 0
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			n++
			if h.Name != "rackboot" || h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || h.Mode != 0o755 || !h.ModTime.Equal(epoch) {
				t.Errorf("tar entry %+v: want rackboot 0:0 0755 at %s", h, epoch)
			}
			got, _ := io.ReadAll(tr)
			if !bytes.Equal(got, want) {
				t.Errorf("%s: the binary in the layer differs from the input (%d vs %d bytes)", m.Platform.Architecture, len(got), len(want))
			}
		}
		if n != 1 {
			t.Errorf("%d tar entries, want 1", n)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.Architecture != m.Platform.Architecture || cf.OS != "linux" || cf.Config.User != User ||
			strings.Join(cf.Config.Entrypoint, " ") != "/rackboot" || cf.Config.Labels[LabelRevision] != cfg.Revision ||
			!cf.Created.Time.Equal(epoch) || len(cf.RootFS.DiffIDs) != 1 || len(cf.History) != 1 {
			t.Errorf("config %+v", cf)
		}
	}
}

func skopeo(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("skopeo")
	if err != nil {
		t.Fatal("skopeo not found: install the Debian package skopeo (apt-get install skopeo)")
	}
	return p
}

type inspected struct {
	Architecture string
	Os           string
	Labels       map[string]string
	Digest       string
}

func inspect(t *testing.T, args ...string) inspected {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, skopeo(t), append([]string{"inspect"}, args...)...).CombinedOutput()
	t.Logf("skopeo inspect %s\n%s", strings.Join(args, " "), out)
	if err != nil {
		t.Fatal(err)
	}
	var r inspected
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// TestSkopeoReadsLayout: skopeo reads the layout for both platforms, its
// labels, and (--config) the entrypoint and user.
func TestSkopeoReadsLayout(t *testing.T) {
	cfg := testConfig(t)
	idx, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "oci")
	if err := WriteLayout(dir, idx, "v0.9.0"); err != nil {
		t.Fatal(err)
	}
	ds := digests(t, idx)
	for _, arch := range []string{"amd64", "arm64"} {
		r := inspect(t, "--override-os", "linux", "--override-arch", arch, "oci:"+dir+":v0.9.0")
		if r.Architecture != arch || r.Os != "linux" || r.Labels[LabelVersion] != "v0.9.0" ||
			r.Labels[LabelSource] != Source || r.Labels[LabelRevision] != cfg.Revision || r.Digest != ds["index"].String() {
			t.Errorf("%s: skopeo says %+v", arch, r)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, skopeo(t), "inspect", "--config", "--override-arch", "arm64", "oci:"+dir+":v0.9.0").Output()
	if err != nil {
		t.Fatal(err)
	}
	var c v1.ConfigFile
	if err := json.Unmarshal(out, &c); err != nil {
		t.Fatal(err)
	}
	if strings.Join(c.Config.Entrypoint, " ") != "/rackboot" || c.Config.User != "65532:65532" {
		t.Errorf("skopeo --config: %s", out)
	}
}

// TestMirrorServesImage: the image put into an image store is served by
// the registry mirror as ghcr.io/dotfile/rackboot:<tag>: skopeo and
// go-containerregistry's remote client pull it by that name.
func TestMirrorServesImage(t *testing.T) {
	cfg := testConfig(t)
	dir := filepath.Join(t.TempDir(), "oci")
	idx, err := Build(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteLayout(dir, idx, Tag(cfg.Version)); err != nil {
		t.Fatal(err)
	}
	st, err := registry.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := PutLayout(st, dir, cfg.Version)
	if err != nil {
		t.Fatal(err)
	}
	if want := digests(t, idx)["index"]; d != want {
		t.Fatalf("stored %s, built %s", d, want)
	}
	if err := st.Has(ImageName(cfg.Version)); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := registry.New(registry.Config{Store: st, Log: slog.New(slog.DiscardHandler)}, registry.WithListener(l))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	host := srv.Addr().String()

	// skopeo, by the path form (mirror host, then the registry's name).
	r := inspect(t, "--tls-verify=false", "--no-tags", "--override-arch", "arm64", "docker://"+host+"/"+ImageName(cfg.Version))
	if r.Architecture != "arm64" || r.Labels[LabelVersion] != "v0.9.0" {
		t.Errorf("through the mirror skopeo says %+v", r)
	}
	// go-containerregistry, the index and the amd64 layer's bytes.
	ref, err := name.ParseReference(host+"/"+ImageName(cfg.Version), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.Index(ref, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	if gd, _ := got.Digest(); gd != d {
		t.Errorf("remote index %s, want %s", gd, d)
	}
}

func TestTag(t *testing.T) {
	for in, want := range map[string]string{
		"v1.2.3":                 "v1.2.3",
		"":                       "dev",
		"v1.2.3-4-gabc-dirty":    "v1.2.3-4-gabc-dirty",
		"1.0+meta":               "1.0-meta",
		".hidden":                "_hidden",
		strings.Repeat("a", 200): strings.Repeat("a", 128),
	} {
		if got := Tag(in); got != want {
			t.Errorf("Tag(%q) = %q, want %q", in, got, want)
		}
	}
	if got := ImageName("v1.0.0"); got != "ghcr.io/dotfile/rackboot:v1.0.0" {
		t.Errorf("ImageName = %q", got)
	}
}

func TestEpoch(t *testing.T) {
	env := func(v string) func(string) string { return func(string) string { return v } }
	if got, err := Epoch(env("")); err != nil || got.Unix() != 0 {
		t.Errorf("unset: %v %v", got, err)
	}
	if got, err := Epoch(env("1764806400")); err != nil || !got.Equal(epoch) {
		t.Errorf("set: %v %v", got, err)
	}
	if _, err := Epoch(env("yesterday")); err == nil || !strings.Contains(err.Error(), "git log -1 --format=%ct") {
		t.Errorf("bad: %v", err)
	}
}
