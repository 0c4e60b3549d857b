package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/dotfile/rackboot/profiles"
)

// assetsFactory is a loopback stand-in for the Image Factory: any image path
// gets a small kernel or initramfs, POST /schematics answers the sha256 of the
// body (as the real factory does).
type assetsFactory struct {
	mu         sync.Mutex
	posted     []string
	imagePaths []string
}

var imagePathRE = regexp.MustCompile(`^/image/([0-9a-f]{64})/(v[0-9.]+)/(kernel|initramfs|cmdline-metal)-(amd64|arm64)(\.xz)?$`)

func (af *assetsFactory) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	af.mu.Lock()
	defer af.mu.Unlock()
	if r.Method == http.MethodPost && r.URL.Path == "/schematics" {
		body, _ := io.ReadAll(r.Body)
		af.posted = append(af.posted, string(body))
		sum := sha256.Sum256(body)
		fmt.Fprintf(w, `{"id":%q}`, hex.EncodeToString(sum[:]))
		return
	}
	m := imagePathRE.FindStringSubmatch(r.URL.Path)
	if m == nil {
		http.NotFound(w, r)
		return
	}
	af.imagePaths = append(af.imagePaths, r.URL.Path)
	var body []byte
	switch m[3] {
	case "kernel":
		body = make([]byte, 4096)
		if m[4] == "arm64" {
			copy(body[0x38:], "ARM\x64")
		} else {
			copy(body[0x1fe:], "\x55\xaa")
			copy(body[0x202:], "HdrS")
		}
		copy(body[0x400:], r.URL.Path) // differs per set
	case "initramfs":
		body = append([]byte("\xfd7zXZ\x00"), r.URL.Path...)
	default:
		body = []byte("talos.platform=metal")
	}
	w.Write(body)
}

func runRackboot(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), errOut.String(), err
}

func TestAssetsPullForRackThenList(t *testing.T) {
	af := &assetsFactory{}
	srv := httptest.NewServer(af)
	defer srv.Close()
	dir := t.TempDir()
	rack := filepath.Join(dir, "rack.yaml")
	if err := os.WriteFile(rack, profiles.ExampleRack, 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, err := runRackboot(t, "-f", rack, "assets", "pull", "--no-images", "--factory", srv.URL, "--release-url", "")
	if err != nil {
		t.Fatalf("assets pull: %v\n%s\n%s", err, out, errOut)
	}
	// The example rack: five vanilla machines and a GPU node with extensions.
	r, err := profiles.Load("rack.yaml", profiles.ExampleRack)
	if err != nil {
		t.Fatal(err)
	}
	gpuID, err := profiles.SchematicID(r.Schematic(r.Machine("amdusias-ii")))
	if err != nil {
		t.Fatal(err)
	}
	if len(af.posted) != 1 || !strings.Contains(af.posted[0], "siderolabs/nvidia-open-gpu-kernel-modules-production") {
		t.Errorf("posted schematics %q", af.posted)
	}
	if strings.Contains(errOut, "warning: the Image Factory names") {
		t.Errorf("offline and factory schematic ids differ:\n%s", errOut)
	}
	if len(af.imagePaths) != 6 {
		t.Errorf("fetched %d files, want 6 (2 sets × 3): %q", len(af.imagePaths), af.imagePaths)
	}
	for _, id := range []string{profiles.VanillaSchematicID, gpuID} {
		if !strings.Contains(out, "pulling Talos v1.13.0 (schematic "+id[:12]) {
			t.Errorf("pull output does not name %s:\n%s", id, out)
		}
		if _, err := os.Stat(filepath.Join(dir, ".rackboot", "assets", "talos", "v1.13.0", id, "amd64", "manifest.json")); err != nil {
			t.Error(err)
		}
	}

	out, errOut, err = runRackboot(t, "-f", rack, "assets", "list")
	if err != nil {
		t.Fatalf("assets list: %v\n%s", err, errOut)
	}
	boot, images, _ := strings.Cut(out, "\n\n")
	lines := strings.Split(strings.TrimSpace(boot), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "VERSION") {
		t.Fatalf("list:\n%s", out)
	}
	if !strings.HasPrefix(images, "no container images in ") {
		t.Errorf("list with --no-images pulled: the images part is\n%s", images)
	}
	u := strings.TrimPrefix(srv.URL, "http://")
	for _, l := range lines[1:] {
		if !strings.Contains(l, "v1.13.0") || !strings.Contains(l, u) || !strings.HasSuffix(l, "ok") {
			t.Errorf("list line %q", l)
		}
	}

	// Corrupt one kernel: list says so and fails.
	kp := filepath.Join(dir, ".rackboot", "assets", "talos", "v1.13.0", gpuID, "amd64", "kernel")
	data, _ := os.ReadFile(kp)
	data[0x500] ^= 1
	os.WriteFile(kp, data, 0o644)
	out, errOut, err = runRackboot(t, "-f", rack, "assets", "list")
	if err == nil || !strings.Contains(out, "CORRUPT") || !strings.Contains(errOut, "kernel: sha256") {
		t.Errorf("list after corruption: %v\n%s\n%s", err, out, errOut)
	}
}

func TestAssetsPullOneSetAndImport(t *testing.T) {
	af := &assetsFactory{}
	srv := httptest.NewServer(af)
	defer srv.Close()
	state := t.TempDir()
	sch := strings.Repeat("9", 64)
	out, errOut, err := runRackboot(t, "--state", state, "assets", "pull", "--version", "v1.12.4", "--schematic", sch, "--arch", "arm64", "--factory", srv.URL, "--release-url", "")
	if err != nil {
		t.Fatalf("pull: %v\n%s\n%s", err, out, errOut)
	}
	if len(af.imagePaths) != 3 || af.imagePaths[0] != "/image/"+sch+"/v1.12.4/kernel-arm64" {
		t.Errorf("fetched %q", af.imagePaths)
	}

	dir := t.TempDir()
	k := make([]byte, 2048)
	copy(k[0x1fe:], "\x55\xaa")
	copy(k[0x202:], "HdrS")
	os.WriteFile(filepath.Join(dir, "vmlinuz-amd64"), k, 0o644)
	os.WriteFile(filepath.Join(dir, "initramfs-amd64.xz"), []byte("\xfd7zXZ\x00data"), 0o644)
	os.WriteFile(filepath.Join(dir, "random"), bytes.Repeat([]byte{0x42}, 2048), 0o644)
	out, errOut, err = runRackboot(t, "--state", state, "assets", "import", filepath.Join(dir, "vmlinuz-amd64"), filepath.Join(dir, "initramfs-amd64.xz"), "--version", "v1.13.0")
	if err != nil || !strings.Contains(out, "imported Talos v1.13.0 (schematic 376567988ad3") {
		t.Fatalf("import: %v\n%s\n%s", err, out, errOut)
	}
	_, _, err = runRackboot(t, "--state", state, "assets", "import", filepath.Join(dir, "random"), filepath.Join(dir, "initramfs-amd64.xz"), "--version", "v1.13.1")
	if err == nil || !strings.Contains(err.Error(), "no Linux kernel header") {
		t.Errorf("import of random bytes: %v", err)
	}
	_, _, err = runRackboot(t, "--state", state, "assets", "import", "a", "b")
	if err == nil || !strings.Contains(err.Error(), "--version is required") {
		t.Errorf("import without --version: %v", err)
	}
	out, errOut, err = runRackboot(t, "--state", state, "assets", "list")
	if err != nil {
		t.Fatalf("list: %v\n%s", err, errOut)
	}
	if !regexp.MustCompile(`v1\.12\.4\s+999999999999\s+arm64\s+.*127\.0\.0\.1:\d+\s+ok\n`).MatchString(out) ||
		!regexp.MustCompile(`v1\.13\.0\s+376567988ad3\s+amd64\s+0\.0 MiB\s+0\.0 MiB\s+imported\s+ok\n`).MatchString(out) ||
		strings.Contains(out, "v1.13.1") {
		t.Errorf("list:\n%s", out)
	}
}
