//go:build linux

package main

import (
	"bytes"
	"compress/gzip"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/registry"
)

// writeStandin writes a small boot image (vmlinuz, a gzip initramfs) to dir.
func writeStandin(t *testing.T, dir, kernel string) {
	t.Helper()
	must(t, os.MkdirAll(dir, 0o755))
	must(t, os.WriteFile(filepath.Join(dir, "vmlinuz"), []byte(kernel), 0o644))
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, err := zw.Write([]byte("070701 an initramfs"))
	must(t, err)
	must(t, zw.Close())
	must(t, os.WriteFile(filepath.Join(dir, "initramfs.cpio.gz"), b.Bytes(), 0o644))
}

// TestSeedStandinInstallers: serve --standin puts the lab's installer image
// under each stand-in schematic's installer name; a rebuilt boot image
// replaces it, an unchanged one is left as it is.
func TestSeedStandinInstallers(t *testing.T) {
	r, err := profiles.Load("rack.yaml", profiles.ExampleRack)
	must(t, err)
	dir := t.TempDir()
	standinDir := filepath.Join(dir, "standin")
	writeStandin(t, standinDir, "kernel one")
	st, err := registry.Open(filepath.Join(dir, "images"))
	must(t, err)
	a := &app{log: slog.New(slog.DiscardHandler)}
	all := func(string, string, string) bool { return true }

	must(t, seedStandinInstallers(a, st, r, standinDir, nil, all))
	es, err := st.List()
	must(t, err)
	if len(es) != 2 { // the vanilla schematic and the GPU node's
		t.Fatalf("store holds %d images, want the 2 schematics' installers: %+v", len(es), es)
	}
	vanilla := profiles.InstallerImage(profiles.VanillaSchematicID, r.Cluster.TalosVersion)
	if err := st.Has(vanilla); err != nil {
		t.Fatal(err)
	}
	first := es[0].Digest
	index := filepath.Join(dir, "images", "index.json")
	before, err := os.Stat(index)
	must(t, err)

	must(t, seedStandinInstallers(a, st, r, standinDir, nil, all))
	if after, _ := os.Stat(index); !after.ModTime().Equal(before.ModTime()) {
		t.Error("an unchanged boot image was written again")
	}

	writeStandin(t, standinDir, "kernel two")
	must(t, seedStandinInstallers(a, st, r, standinDir, nil, all))
	es, err = st.List()
	must(t, err)
	if len(es) != 2 || es[0].Digest == first {
		t.Errorf("a rebuilt boot image did not replace the installer image: %+v", es)
	}

	// Machines that boot real Talos from the cache get no stand-in installer.
	st2, err := registry.Open(filepath.Join(dir, "images2"))
	must(t, err)
	must(t, seedStandinInstallers(a, st2, r, standinDir, nil, func(string, string, string) bool { return false }))
	if es, _ := st2.List(); len(es) != 0 {
		t.Errorf("installer images put for machines with real Talos: %+v", es)
	}
}

// TestSeedStandinUpgradeVersions: serve --standin-version v1.13.1 also
// tags the lab's installer at that version, as another image (its own
// digest) under each stand-in schematic's installer name; a version whose
// machines boot real Talos from the cache gets none.
func TestSeedStandinUpgradeVersions(t *testing.T) {
	r, err := profiles.Load("rack.yaml", profiles.ExampleRack)
	must(t, err)
	dir := t.TempDir()
	standinDir := filepath.Join(dir, "standin")
	writeStandin(t, standinDir, "kernel one")
	st, err := registry.Open(filepath.Join(dir, "images"))
	must(t, err)
	a := &app{log: slog.New(slog.DiscardHandler)}
	notV2 := func(version, _, _ string) bool { return version != "v2.0.0" }
	must(t, seedStandinInstallers(a, st, r, standinDir, []string{"v1.13.1", r.Cluster.TalosVersion, "v2.0.0"}, notV2))
	es, err := st.List()
	must(t, err)
	if len(es) != 4 { // two schematics at two versions
		t.Fatalf("store holds %d images, want 2 schematics × (talosVersion, v1.13.1): %+v", len(es), es)
	}
	now, err := registry.ParseRef(profiles.InstallerImage(profiles.VanillaSchematicID, r.Cluster.TalosVersion))
	must(t, err)
	next, err := registry.ParseRef(profiles.InstallerImage(profiles.VanillaSchematicID, "v1.13.1"))
	must(t, err)
	d1, err := st.Resolve(now.Repository(), now.Tag)
	must(t, err)
	d2, err := st.Resolve(next.Repository(), next.Tag)
	must(t, err)
	if d1.Digest == d2.Digest {
		t.Errorf("v1.13.1's installer has the %s installer's digest %s", r.Cluster.TalosVersion, d1.Digest)
	}
	if err := st.Has(profiles.InstallerImage(profiles.VanillaSchematicID, "v2.0.0")); err == nil {
		t.Error("a stand-in installer put at a version the cache has real Talos for")
	}
}
