package ipxe

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// materialize runs scripts/materialize-ipxe.sh OUT with env added and
// returns its combined output and error.
func materialize(t *testing.T, out string, env ...string) (string, error) {
	t.Helper()
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "materialize-ipxe.sh"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(script, out)
	cmd.Env = append(os.Environ(), env...)
	b, err := cmd.CombinedOutput()
	return string(b), err
}

// pinnedDeb is the verified .deb in the script's default cache, fetched
// through trixie's signed index by a first run when absent (`make ipxe`
// leaves it there).
func pinnedDeb(t *testing.T) string {
	t.Helper()
	script, err := os.ReadFile(filepath.Join("..", "..", "scripts", "materialize-ipxe.sh"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^PIN_VERSION=(\S+)$`).FindSubmatch(script)
	if m == nil {
		t.Fatal("no PIN_VERSION= in materialize-ipxe.sh")
	}
	deb := filepath.Join("..", "..", ".cache", "ipxe", "ipxe_"+string(m[1])+"_all.deb")
	if _, err := os.Stat(deb); err != nil {
		if out, err := materialize(t, filepath.Join(t.TempDir(), "bin")); err != nil {
			t.Fatalf("materialize-ipxe.sh (needs apt access to Debian trixie): %v\n%s", err, out)
		}
	}
	if _, err := os.Stat(deb); err != nil {
		t.Fatalf("the script left no cached .deb: %v", err)
	}
	return deb
}

type stamp struct {
	ino   uint64
	mtime int64
	data  []byte
}

func stamps(t *testing.T, dir string) map[string]stamp {
	t.Helper()
	got := map[string]stamp{}
	for _, n := range []string{BIOS, EFI, SNP, ARM64EFI, "SOURCE"} {
		p := filepath.Join(dir, n)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatalf("after materialize: %v", err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		got[n] = stamp{st.Sys().(*syscall.Stat_t).Ino, st.ModTime().UnixNano(), b}
	}
	return got
}

// A second run over an up-to-date folder changes nothing (same files, same
// inodes and times: make and go build see no change); a file changed by
// hand is put back.
func TestMaterializeIdempotent(t *testing.T) {
	pinnedDeb(t)
	out := filepath.Join(t.TempDir(), "bin")
	if msg, err := materialize(t, out); err != nil {
		t.Fatalf("first run: %v\n%s", err, msg)
	}
	first := stamps(t, out)
	msg, err := materialize(t, out)
	if err != nil {
		t.Fatalf("second run: %v\n%s", err, msg)
	}
	if !strings.Contains(msg, "nothing to do") {
		t.Errorf("second run did not say it had nothing to do:\n%s", msg)
	}
	second := stamps(t, out)
	for n, a := range first {
		if b := second[n]; a.ino != b.ino || a.mtime != b.mtime || !bytes.Equal(a.data, b.data) {
			t.Errorf("second run rewrote %s", n)
		}
	}
	// The embedded build is the same bytes.
	for _, n := range []string{BIOS, EFI, SNP, ARM64EFI} {
		emb, err := content.ReadFile("bin/" + n)
		if err != nil || !bytes.Equal(emb, first[n].data) {
			t.Errorf("embedded %s differs from a fresh materialization (rerun `make ipxe`)", n)
		}
	}

	if err := os.WriteFile(filepath.Join(out, SNP), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if msg, err := materialize(t, out); err != nil || strings.Contains(msg, "nothing to do") {
		t.Fatalf("run after a change: %v\n%s", err, msg)
	}
	if b, _ := os.ReadFile(filepath.Join(out, SNP)); !bytes.Equal(b, first[SNP].data) {
		t.Error("a changed snponly.efi was not put back")
	}
}

// A .deb whose SHA-256 is not the pin is refused with both sums named, and
// the output folder is left as it was: a corrupt cached download, and a
// wrong pin.
func TestMaterializeChecksumMismatch(t *testing.T) {
	good, err := os.ReadFile(pinnedDeb(t))
	if err != nil {
		t.Fatal(err)
	}
	version := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(pinnedDeb(t)), "ipxe_"), "_all.deb")
	bad := append([]byte(nil), good...)
	bad[len(bad)/2] ^= 0xff
	wrongPin := strings.Repeat("0", 64)
	tests := []struct {
		name string
		deb  []byte
		env  []string
		want []string // in the error output
	}{
		{"corrupt cached deb", bad, nil, []string{"sha256 ", "the pin says ", "refusing"}},
		{"wrong pin", good, []string{"IPXE_VERSION=" + version, "IPXE_SHA256=" + wrongPin}, []string{"the pin says " + wrongPin, "refusing"}},
		{"pin without its version", good, []string{"IPXE_SHA256=" + wrongPin}, []string{"IPXE_VERSION and IPXE_SHA256 together"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cache := t.TempDir()
			if err := os.WriteFile(filepath.Join(cache, filepath.Base(pinnedDeb(t))), tt.deb, 0o644); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "bin")
			if err := os.MkdirAll(out, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(out, EFI), []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
			msg, err := materialize(t, out, append([]string{"IPXE_CACHE=" + cache}, tt.env...)...)
			if err == nil {
				t.Fatalf("accepted:\n%s", msg)
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Errorf("exit: %v, want status 1", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("output lacks %q:\n%s", w, msg)
				}
			}
			if !strings.HasPrefix(msg, "materialize-ipxe: ") {
				t.Errorf("the error does not name the script:\n%s", msg)
			}
			entries, _ := os.ReadDir(out)
			if b, _ := os.ReadFile(filepath.Join(out, EFI)); len(entries) != 1 || string(b) != "old" {
				t.Errorf("the output folder changed: %d entries, %s = %q", len(entries), EFI, b)
			}
		})
	}
}
