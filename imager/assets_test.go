package imager

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// updateAssets rewrites the golden files of this file (its own name, so it
// cannot clash with other golden switches of the package).
var updateAssets = flag.Bool("update-assets", false, "rewrite testdata/assets golden files")

func newTestCache(t *testing.T) *Cache {
	t.Helper()
	c, err := OpenCache(t.TempDir(), WithCacheLogger(testLogger(t)),
		WithCacheClock(func() time.Time { return time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestImport(t *testing.T) {
	c := newTestCache(t)
	kernel, initramfs := fakeKernel(70_000, 20), fakeInitramfs(90_000, 21)
	kp, ip := writeTemp(t, "vmlinuz", kernel), writeTemp(t, "initramfs.xz", initramfs)
	m, err := c.Import(vanilla, kp, ip)
	if err != nil {
		t.Fatal(err)
	}
	if r := m.Files[FileKernel]; r.Source != SourceImported || r.SHA256 != sha(kernel) || r.Size != 70_000 || r.Format != "bzImage" {
		t.Errorf("kernel record %+v", r)
	}
	if r := m.Files[FileInitramfs]; r.Source != SourceImported || r.SHA256 != sha(initramfs) || r.Format != "xz" {
		t.Errorf("initramfs record %+v", r)
	}
	if err := c.Has(vanilla.Version, vanilla.Schematic, vanilla.Arch); err != nil {
		t.Error(err)
	}
	if err := c.Verify(vanilla.Version, vanilla.Schematic, vanilla.Arch); err != nil {
		t.Error(err)
	}
	if !bytes.Equal(readAll(t, c, c.Kernel(vanilla.Version, vanilla.Schematic, vanilla.Arch)), kernel) {
		t.Error("kernel differs")
	}
	// The manifest's format is stable (other tools may read it): golden file.
	data, err := os.ReadFile(filepath.Join(c.Dir(), "talos", vanilla.Version, vanilla.Schematic, "amd64", "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "assets", "imported-manifest.json")
	if *updateAssets {
		if err := os.WriteFile(golden, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run TestImport -update-assets to write it)", err)
	}
	if !bytes.Equal(data, want) {
		t.Errorf("manifest.json differs from %s:\n%s", golden, data)
	}
}

func TestImportRefusesWhatIsNotABootImage(t *testing.T) {
	kernel, initramfs := fakeKernel(70_000, 22), fakeInitramfs(90_000, 23)
	arm := randomBytes(4096, 24)
	copy(arm[0x38:], "ARM\x64")
	tests := []struct {
		name              string
		set               Set
		kernel, initramfs []byte
		want              string
	}{
		{"random kernel", vanilla, randomBytes(70_000, 25), initramfs, "no Linux kernel header"},
		{"empty kernel", vanilla, nil, initramfs, "no Linux kernel header"},
		{"random initramfs", vanilla, kernel, randomBytes(90_000, 26), "not an initramfs"},
		{"arm64 kernel as amd64", vanilla, arm, initramfs, "pass --arch arm64"},
		{"amd64 kernel as arm64", Set{testVersion, VanillaSchematicID, "arm64"}, kernel, initramfs, "pass --arch amd64"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newTestCache(t)
			_, err := c.Import(tt.set, writeTemp(t, "k", tt.kernel), writeTemp(t, "i", tt.initramfs))
			if !errors.Is(err, ErrBadImage) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Import = %v, want ErrBadImage mentioning %q", err, tt.want)
			}
			if err := c.Has(tt.set.Version, tt.set.Schematic, tt.set.Arch); !errors.Is(err, ErrMissing) {
				t.Errorf("Has after refused import = %v", err)
			}
			left, _ := filepath.Glob(filepath.Join(c.Dir(), "talos", "*", "*", "*", "*"))
			if len(left) != 0 {
				t.Errorf("files left: %v", left)
			}
		})
	}
	c := newTestCache(t)
	if _, err := c.Import(vanilla, filepath.Join(t.TempDir(), "nope"), writeTemp(t, "i", initramfs)); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("Import of a missing file = %v", err)
	}
	if _, err := c.Import(Set{"1.13", "x", "riscv"}, "k", "i"); !errors.Is(err, ErrBadID) {
		t.Errorf("Import with a bad set = %v", err)
	}
}

func TestOpenServesOSFileWithRanges(t *testing.T) {
	c := newTestCache(t)
	kernel := fakeKernel(100_000, 27)
	if _, err := c.Import(vanilla, writeTemp(t, "k", kernel), writeTemp(t, "i", fakeInitramfs(1000, 28))); err != nil {
		t.Fatal(err)
	}
	id := c.Kernel(vanilla.Version, vanilla.Schematic, vanilla.Arch)
	if id != "talos/v1.13.0/"+VanillaSchematicID+"/amd64/kernel" {
		t.Errorf("kernel id %q", id)
	}
	f, err := c.Open(id)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.(*os.File); !ok {
		t.Errorf("Open returned %T, want *os.File", f)
	}
	f.Close()
	// Serve it the way pxe does, on a real loopback server.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := c.Open(strings.TrimPrefix(r.URL.Path, "/assets/"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		defer f.Close()
		http.ServeContent(w, r, "", time.Time{}, f)
	}))
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/assets/"+id, nil)
	req.Header.Set("Range", "bytes=1000-1999")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, kernel[1000:2000]) {
		t.Errorf("range GET: %s, %d bytes", resp.Status, len(body))
	}
	resp, err = http.Get(srv.URL + "/assets/talos/v1.13.0/" + VanillaSchematicID + "/amd64/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("cmdline of an imported set: %s", resp.Status)
	}
}

func TestOpenRefusesBadIDs(t *testing.T) {
	c := newTestCache(t)
	if _, err := c.Import(vanilla, writeTemp(t, "k", fakeKernel(1000, 29)), writeTemp(t, "i", fakeInitramfs(1000, 30))); err != nil {
		t.Fatal(err)
	}
	good := vanilla.ID(FileKernel)
	for _, id := range []string{
		"",
		"kernel",
		"../../../etc/passwd",
		"talos/v1.13.0/" + VanillaSchematicID + "/amd64/../../../../../etc/passwd",
		"talos/v1.13.0/" + VanillaSchematicID + "/amd64/manifest.json",
		"talos/v1.13.0/" + VanillaSchematicID + "/amd64/kernel.part",
		"talos/../" + VanillaSchematicID + "/amd64/kernel",
		"talos/v1.13.0/" + strings.ToUpper(VanillaSchematicID) + "/amd64/kernel",
		"talos/v1.13.0/" + VanillaSchematicID + "/x86_64/kernel",
		"/" + good,
		good + "/",
		"talos//v1.13.0/" + VanillaSchematicID + "/amd64/kernel",
		"talos/v1.13.0/" + VanillaSchematicID + "/amd64/kernel\x00",
		"talos\\v1.13.0\\" + VanillaSchematicID + "\\amd64\\kernel",
	} {
		if f, err := c.Open(id); !errors.Is(err, ErrBadID) {
			if f != nil {
				f.Close()
			}
			t.Errorf("Open(%q) = %v, want ErrBadID", id, err)
		}
	}
	missing := Set{"v1.12.0", VanillaSchematicID, "amd64"}.ID(FileKernel)
	if _, err := c.Open(missing); !errors.Is(err, ErrMissing) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(%q) = %v, want ErrMissing", missing, err)
	}
}

func TestVerifyFindsCorruption(t *testing.T) {
	c := newTestCache(t)
	kernel := fakeKernel(5000, 31)
	if _, err := c.Import(vanilla, writeTemp(t, "k", kernel), writeTemp(t, "i", fakeInitramfs(1000, 32))); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(c.Dir(), filepath.FromSlash(vanilla.ID(FileKernel)))
	kernel[4000] ^= 0xff
	if err := os.WriteFile(p, kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	err := c.Verify(vanilla.Version, vanilla.Schematic, vanilla.Arch)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "kernel: sha256") {
		t.Errorf("Verify = %v, want ErrCorrupt on the kernel", err)
	}
	// A truncated file is caught by Has and Open without re-hashing.
	if err := os.WriteFile(p, kernel[:100], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Has(vanilla.Version, vanilla.Schematic, vanilla.Arch); !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "rackboot assets import") {
		t.Errorf("Has = %v", err)
	}
	if _, err := c.Open(vanilla.ID(FileKernel)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Open = %v, want ErrCorrupt", err)
	}
}

func TestKernelAndInitramfsFormat(t *testing.T) {
	for _, tt := range []struct {
		head []byte
		want string
	}{
		{[]byte("\xfd7zXZ\x00rest"), "xz"},
		{[]byte("\x28\xb5\x2f\xfdrest"), "zstd"},
		{[]byte("\x1f\x8b\x08"), "gzip"},
		{[]byte("070701000000"), "cpio"},
		{[]byte("070702000000"), "cpio"},
		{[]byte("07070"), ""},
		{[]byte("\x7fELF"), ""},
		{nil, ""},
	} {
		got, err := InitramfsFormat(tt.head)
		if got != tt.want || (err == nil) != (tt.want != "") {
			t.Errorf("InitramfsFormat(%q) = %q, %v", tt.head, got, err)
		}
	}
	zboot := make([]byte, 64)
	copy(zboot, "MZ\x00\x00zimg")
	for _, tt := range []struct {
		head []byte
		arch string
		want string
	}{
		{fakeKernel(sniffLen, 1), "amd64", "bzImage"},
		{fakeKernel(0x206, 1), "amd64", "bzImage"},
		{fakeKernel(sniffLen, 1)[:0x205], "amd64", ""},
		{zboot, "arm64", "efi-zboot"},
		{zboot, "amd64", ""},
		{make([]byte, sniffLen), "amd64", ""},
	} {
		got, err := KernelFormat(tt.head, tt.arch)
		if got != tt.want || (err == nil) != (tt.want != "") {
			t.Errorf("KernelFormat(%d bytes, %s) = %q, %v", len(tt.head), tt.arch, got, err)
		}
	}
}

func FuzzImageFormat(f *testing.F) {
	f.Add([]byte("\xfd7zXZ\x00"))
	f.Add([]byte("MZ\x00\x00zimg"))
	f.Fuzz(func(t *testing.T, head []byte) {
		if got, err := InitramfsFormat(head); (err == nil) == (got == "") {
			t.Errorf("InitramfsFormat = %q, %v", got, err)
		}
		for _, arch := range []string{"amd64", "arm64"} {
			if got, err := KernelFormat(head, arch); (err == nil) == (got == "") {
				t.Errorf("KernelFormat = %q, %v", got, err)
			}
		}
	})
}

func TestParseAssetIDRoundTrip(t *testing.T) {
	for _, s := range []Set{vanilla, {"v1.13.0-beta.1", strings.Repeat("0", 64), "arm64"}} {
		for _, file := range []string{FileKernel, FileInitramfs, FileCmdline} {
			got, gotFile, err := ParseAssetID(s.ID(file))
			if err != nil || got != s || gotFile != file {
				t.Errorf("ParseAssetID(%q) = %v, %q, %v", s.ID(file), got, gotFile, err)
			}
		}
	}
	for _, v := range []string{"1.13.0", "v1.13", "v1.13.0-", "v1.13.0-..", "v1.13.0-a..b", "v1.13.0/x", ".."} {
		if err := (Set{v, VanillaSchematicID, "amd64"}).Validate(); !errors.Is(err, ErrBadID) {
			t.Errorf("version %q accepted", v)
		}
	}
}

func FuzzAssetID(f *testing.F) {
	f.Add(vanilla.ID(FileKernel))
	f.Add("talos/v1.13.0-alpha.0/" + strings.Repeat("f", 64) + "/arm64/initramfs.xz")
	f.Add("talos/../../etc/passwd/kernel")
	f.Fuzz(func(t *testing.T, id string) {
		s, file, err := ParseAssetID(id)
		if err != nil {
			if !errors.Is(err, ErrBadID) {
				t.Errorf("ParseAssetID(%q) error not ErrBadID: %v", id, err)
			}
			return
		}
		// Whatever is accepted is the canonical form of a set's file, and
		// stays inside the cache.
		if s.ID(file) != id {
			t.Errorf("ParseAssetID(%q) not canonical: %q", id, s.ID(file))
		}
		if !filepath.IsLocal(filepath.FromSlash(id)) || strings.Contains(id, "..") || strings.ContainsAny(id, "\\\x00") {
			t.Errorf("ParseAssetID accepted a non-local path %q", id)
		}
	})
}
