//go:build linux

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/dotfile/rackboot/internal/registrytest"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/registry"
)

// TestAssetsPullImages: every image the example rack needs is pulled from
// a real registry (Debian's docker-registry, standing in for every public
// registry through --upstream) into the image store; a second pull fetches
// nothing; assets list shows them verified; an offline rack validates only
// while the store holds them all, and a damaged blob is found.
func TestAssetsPullImages(t *testing.T) {
	reg := registrytest.Start(t, registrytest.Options{})
	dir := t.TempDir()
	rackPath := filepath.Join(dir, "rack.yaml")
	// The example rack, offline (no fallback to the internet).
	rackData := strings.Replace(string(profiles.ExampleRack), "\n  network:\n", "\n  offline: true\n  network:\n", 1)
	if rackData == string(profiles.ExampleRack) {
		t.Fatal("could not make the example rack offline")
	}
	must(t, os.WriteFile(rackPath, []byte(rackData), 0o644))
	r, err := profiles.LoadFile(rackPath)
	must(t, err)
	if !r.Cluster.Offline || r.Cluster.Network.Rackboot == "" {
		t.Fatalf("test rack: offline %v, rackboot %q", r.Cluster.Offline, r.Cluster.Network.Rackboot)
	}
	images, _, err := rackImages(r)
	must(t, err)
	if len(images) < 20 {
		t.Fatalf("the example rack needs only %d images?", len(images))
	}

	// The upstream holds each image under its own repository and tag; the
	// first is a multi-arch index of which only amd64 is wanted.
	hosts := map[string]bool{}
	for i, im := range images {
		ref, err := registry.ParseRef(im.Ref)
		must(t, err)
		if ref.Tag == "" {
			t.Fatalf("%s has no tag: the test cannot push it", im.Ref)
		}
		hosts[ref.Registry] = true
		tag, err := name.NewTag(reg.Addr+"/"+ref.Repo+":"+ref.Tag, name.Insecure)
		must(t, err)
		if i == 0 {
			must(t, remote.WriteIndex(tag, testIndex(t, "amd64", "arm64", "s390x")))
			continue
		}
		must(t, remote.Write(tag, testImage(t, "amd64")))
	}
	args := []string{"-f", rackPath, "--state", filepath.Join(dir, "state"), "assets", "pull", "--images-only"}
	for h := range hosts {
		args = append(args, "--upstream", h+"="+reg.Addr)
	}

	// Offline and nothing pulled yet: validate says what is missing.
	out, _, err := runRackboot(t, "-f", rackPath, "--state", filepath.Join(dir, "state"), "validate")
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("lacks %d of its %d images", len(images), len(images))) || !strings.Contains(err.Error(), "rackboot assets pull") {
		t.Fatalf("validate of an offline rack with no images: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
		t.Error("validate created the state directory")
	}

	out, errOut, err := runRackboot(t, args...)
	if err != nil {
		t.Fatalf("assets pull: %v\n%s\n%s", err, out, errOut)
	}
	n := len(images)
	if !strings.Contains(out, fmt.Sprintf("[%d/%d] ", n, n)) || strings.Count(out, ": fetched ") != n {
		t.Fatalf("assets pull did not fetch each of the %d images once:\n%s", n, out)
	}
	before := len(reg.Requests())

	// Again: nothing is fetched, the upstream is not even asked.
	out, errOut, err = runRackboot(t, args...)
	if err != nil {
		t.Fatalf("assets pull again: %v\n%s\n%s", err, out, errOut)
	}
	if strings.Count(out, ": already held") != n || !strings.Contains(out, "0 blobs fetched now") {
		t.Errorf("second pull fetched something:\n%s", out)
	}
	if after := len(reg.Requests()); after != before {
		t.Errorf("second pull sent %d requests to the upstream", after-before)
	}

	// assets list: every image, verified; the index holds amd64 only.
	out, errOut, err = runRackboot(t, "-f", rackPath, "--state", filepath.Join(dir, "state"), "assets", "list")
	if err != nil {
		t.Fatalf("assets list: %v\n%s\n%s", err, out, errOut)
	}
	for _, im := range images {
		line := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(im.Ref) + `\s+linux/amd64\s+\S+ MiB\s+sha256:[0-9a-f]{12}\s+ok$`)
		if !line.MatchString(out) {
			t.Errorf("assets list has no verified line for %s:\n%s", im.Ref, out)
		}
	}
	out, _, err = runRackboot(t, "-f", rackPath, "--state", filepath.Join(dir, "state"), "validate")
	if err != nil {
		t.Fatalf("validate of an offline rack with every image: %v\n%s", err, out)
	}

	// A flipped byte in a layer: list finds it and fails; validate (sizes
	// only) still passes, a truncated layer fails it.
	st, err := registry.Open(filepath.Join(dir, "state", "assets", "images"))
	must(t, err)
	desc, err := st.Resolve(strings.SplitN(images[1].Ref, ":", 2)[0], strings.SplitN(images[1].Ref, ":", 2)[1])
	must(t, err)
	layer := firstLayer(t, st, desc)
	p := st.BlobPath(layer)
	data, err := os.ReadFile(p)
	must(t, err)
	data[len(data)/2] ^= 1
	must(t, os.WriteFile(p, data, 0o644))
	out, _, err = runRackboot(t, "-f", rackPath, "--state", filepath.Join(dir, "state"), "assets", "list")
	if err == nil || !strings.Contains(out, "CORRUPT") {
		t.Errorf("assets list after a flipped byte: %v\n%s", err, out)
	}
	must(t, os.Truncate(p, int64(len(data)/2)))
	out, _, err = runRackboot(t, "-f", rackPath, "--state", filepath.Join(dir, "state"), "validate")
	if err == nil || !strings.Contains(err.Error(), "lacks 1 of its") || !strings.Contains(err.Error(), images[1].Ref) {
		t.Errorf("validate after a truncated layer: %v\n%s", err, out)
	}
}

// testImage is a small random image for linux/arch.
func testImage(t *testing.T, arch string) v1.Image {
	t.Helper()
	img, err := random.Image(32<<10, 2)
	must(t, err)
	cf, err := img.ConfigFile()
	must(t, err)
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	img, err = mutate.ConfigFile(img, cf)
	must(t, err)
	return img
}

// testIndex is a multi-arch index of small random images.
func testIndex(t *testing.T, archs ...string) v1.ImageIndex {
	t.Helper()
	var adds []mutate.IndexAddendum
	for _, a := range archs {
		adds = append(adds, mutate.IndexAddendum{Add: testImage(t, a),
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: a}}})
	}
	return mutate.AppendManifests(empty.Index, adds...)
}

// firstLayer is the first layer of the image desc names in the store.
func firstLayer(t *testing.T, st *registry.Store, desc v1.Descriptor) v1.Hash {
	t.Helper()
	f, err := st.OpenBlob(desc.Digest)
	must(t, err)
	defer f.Close()
	m, err := v1.ParseManifest(f)
	must(t, err)
	if len(m.Layers) == 0 {
		t.Fatal("image without layers")
	}
	return m.Layers[0].Digest
}
