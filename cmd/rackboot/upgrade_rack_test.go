package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/profiles"
)

// After an upgrade the rack file says the new version, and only that
// changed: comments, the file's mode and every other line are kept.
func TestSetRackTalosVersion(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rack.yaml")
	if err := os.WriteFile(path, profiles.ExampleRack, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := setRackTalosVersion(path, "v1.13.1"); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Replace(string(profiles.ExampleRack), "talosVersion: v1.13.0", "talosVersion: v1.13.1", 1); string(got) != want {
		t.Errorf("rack file after the upgrade:\n%s", got)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, %v; want 0640 kept", fi.Mode().Perm(), err)
	}
	if err := setRackTalosVersion(filepath.Join(t.TempDir(), "none.yaml"), "v1.13.1"); err == nil {
		t.Error("a missing rack file was not an error")
	}
}
