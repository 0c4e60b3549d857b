package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/profiles"
)

// treeOf lists every entry under root with its mode and, for files, a hash
// of its content: equal listings mean nothing was created or changed.
func treeOf(t *testing.T, root string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		line := fmt.Sprintf("%s %v", rel, fi.Mode())
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			line += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		out = append(out, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestReadOnlyCommandsCreateNothing runs commands that only read, or that
// fail on their arguments, on an empty state directory: it stays empty and
// nothing appears beside it.
func TestReadOnlyCommandsCreateNothing(t *testing.T) {
	kernel, initrd := fakeTalos(t)
	loaders := imageTestLoaders(t)
	for _, c := range []struct {
		name    string
		args    []string
		wantErr string // "" when the command succeeds
	}{
		{"validate", []string{"validate"}, ""},
		{"status offline", []string{"status", "--offline"}, ""},
		{"status no server", []string{"status", "--server", "http://127.0.0.1:1", "--timeout", "2s"}, "is rackboot running"},
		{"config unknown machine", []string{"config", "nosuch"}, `no machine named "nosuch"`},
		{"image iso unknown machine", []string{"image", "iso", "nosuch", "--kernel", kernel, "--initrd", initrd, "--bootloaders", loaders}, `no machine named "nosuch"`},
		{"image usb unknown machine", []string{"image", "usb", "nosuch", "-o", "x.img", "--kernel", kernel, "--initrd", initrd, "--bootloaders", loaders}, `no machine named "nosuch"`},
		{"image bad bootloaders", []string{"image", "iso", "formula", "--kernel", kernel, "--initrd", initrd, "--bootloaders", "/nonexistent"}, "nonexistent"},
		{"secrets import missing file", []string{"secrets", "import", "/nonexistent/secrets.yaml"}, "no such file"},
		{"config broken rack", []string{"config", "formula"}, "problem"},
		{"kubeconfig broken rack", []string{"kubeconfig"}, "problem"},
		{"machines without serve", []string{"machines", "--json"}, ""},
		{"disks without secrets", []string{"disks", "formula"}, "secrets"},
		{"lab status", []string{"lab", "status", "--name", "nosuch"}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			rack, _ := writeExampleRack(t)
			if c.name == "config broken rack" || c.name == "kubeconfig broken rack" {
				if err := os.WriteFile(rack, []byte("cluster: {name: x}\nmachines: [{name: formula, bogus: 1}]\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			root := filepath.Dir(rack)
			state := filepath.Join(root, "state")
			if err := os.Mkdir(state, 0o700); err != nil {
				t.Fatal(err)
			}
			before := treeOf(t, root)
			t.Chdir(root) // image's default output is relative
			_, errOut, err := runCmd(t, append([]string{"-f", rack, "--state", state}, c.args...)...)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("%v\n%s", err, errOut)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("err = %v, want %q\n%s", err, c.wantErr, errOut)
			}
			if after := treeOf(t, root); !slices.Equal(before, after) {
				t.Errorf("the command changed the directory:\nbefore %q\nafter  %q", before, after)
			}
		})
	}
}

// TestLostStateRefused: with the state of a cluster but no secrets.yaml, the
// commands that would otherwise create the secrets refuse, say how to
// restore them, and create nothing; after `secrets import` they work.
func TestLostStateRefused(t *testing.T) {
	kernel, initrd := fakeTalos(t)
	loaders := imageTestLoaders(t)
	// A bundle to restore from, made in a new state directory.
	backupRack, backupState := writeExampleRack(t)
	if _, errOut, err := runCmd(t, "-f", backupRack, "config", "formula"); err != nil {
		t.Fatalf("config on a new state directory: %v\n%s", err, errOut)
	}
	backup := filepath.Join(backupState, profiles.SecretsFile)

	commands := map[string][]string{
		"config":      {"config", "formula"},
		"kubeconfig":  {"kubeconfig"},
		"talosconfig": {"talosconfig"},
		"image":       {"image", "iso", "formula", "-o", "formula.iso", "--kernel", kernel, "--initrd", initrd, "--bootloaders", loaders},
	}
	for _, left := range clusterState {
		for name, args := range commands {
			t.Run(left+"/"+name, func(t *testing.T) {
				rack, state := writeExampleRack(t)
				root := filepath.Dir(rack)
				if err := os.MkdirAll(state, 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(state, left), []byte("{}\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				before := treeOf(t, root)
				t.Chdir(root)
				stdout, errOut, err := runCmd(t, append([]string{"-f", rack}, args...)...)
				if !errors.Is(err, profiles.ErrSecretsLost) {
					t.Fatalf("err = %v, want the cluster's keys missing\n%s%s", err, stdout, errOut)
				}
				for _, want := range []string{state + " has " + left + " but no secrets.yaml", "Restore secrets.yaml from your backup", "rackboot secrets import FILE", "will not make new keys"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("message %q does not say %q", err, want)
					}
				}
				if after := treeOf(t, root); !slices.Equal(before, after) {
					t.Errorf("a refused command changed the directory:\nbefore %q\nafter  %q", before, after)
				}

				if _, errOut, err := runCmd(t, "-f", rack, "secrets", "import", backup); err != nil {
					t.Fatalf("secrets import: %v\n%s", err, errOut)
				}
				if _, errOut, err := runCmd(t, append([]string{"-f", rack}, args...)...); err != nil || strings.Contains(errOut, "created") {
					t.Fatalf("after the import: %v\n%s", err, errOut)
				}
			})
		}
	}
}

// TestNewStateWithoutClusterStateCreatesSecrets: what other commands leave
// in a state directory before any cluster exists (the asset cache, the
// lab's own state, CockroachDB certificates from `bundles render`) does not
// make it look lost.
func TestNewStateWithoutClusterStateCreatesSecrets(t *testing.T) {
	rack, state := writeExampleRack(t)
	for _, d := range []string{"assets", "lab/demo", cockroachCertsDir} {
		if err := os.MkdirAll(filepath.Join(state, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	_, errOut, err := runCmd(t, "-f", rack, "talosconfig")
	if err != nil || !strings.Contains(errOut, "created the cluster secrets") {
		t.Fatalf("talosconfig: %v\n%s", err, errOut)
	}
	if _, err := os.Stat(filepath.Join(state, profiles.SecretsFile)); err != nil {
		t.Fatal(err)
	}
}
