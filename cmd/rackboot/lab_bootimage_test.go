package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/lab"
	"github.com/dotfile/rackboot/profiles"
)

// The lab finds its boot image wherever it runs from, or stops at once
// saying how to get one; it never creates state to find out.
func TestLabBootImage(t *testing.T) {
	cache := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cache)
	dir := t.TempDir()
	a := &app{rackPath: filepath.Join(dir, "rack.yaml"), log: slog.New(slog.DiscardHandler)}
	r, err := profiles.Load("example", profiles.ExampleRack)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := lab.NewPlan("t", lab.Spec{Rack: r, DHCP: lab.DHCPProxy, BMCPasswords: labBMCPasswords(r)})
	if err != nil {
		t.Fatal(err)
	}

	_, err = labBootImage(a, r, plan, "")
	if err == nil {
		t.Fatal("no boot image anywhere, yet labBootImage succeeded")
	}
	for _, want := range []string{"make standin", "rackboot assets pull", "--standin", "formula", filepath.Join(cache, "rackboot", "standin")} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, err := os.Stat(a.StateDir()); err == nil {
		t.Error("looking for a boot image created the state dir")
	}

	// `make standin` puts a copy in the user's cache: found from anywhere.
	sc := filepath.Join(cache, "rackboot", "standin")
	must(t, os.MkdirAll(sc, 0o755))
	must(t, os.WriteFile(filepath.Join(sc, "vmlinuz"), []byte("k"), 0o644))
	must(t, os.WriteFile(filepath.Join(sc, "initramfs.cpio.gz"), []byte("i"), 0o644))
	got, err := labBootImage(a, r, plan, "")
	if err != nil || got != sc {
		t.Fatalf("with the cached boot image: %q, %v; want %s", got, err, sc)
	}

	// A --standin without the files is an error naming the fix.
	if _, err := labBootImage(a, r, plan, t.TempDir()); err == nil || !strings.Contains(err.Error(), "make standin") {
		t.Fatalf("empty --standin: %v", err)
	}
}
