package ociimage

import (
	"fmt"
	"os"
	"runtime"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/dotfile/rackboot/registry"
)

// Put stores idx in the laptop's image store (the registry mirror's
// <state>/assets/images) as ImageName(version), so the mirror serves it
// to the machines as ghcr.io/dotfile/rackboot:<tag>.
func Put(s *registry.Store, idx v1.ImageIndex, version string) (v1.Hash, error) {
	d, err := idx.Digest()
	if err != nil {
		return v1.Hash{}, err
	}
	if err := s.Put(ImageName(version), idx); err != nil {
		return v1.Hash{}, fmt.Errorf("put rackboot's image into the image store: %w", err)
	}
	return d, nil
}

// PutLayout stores the image `make release` wrote (WriteLayout's dir,
// e.g. dist/oci) as ImageName(version).
func PutLayout(s *registry.Store, dir, version string) (v1.Hash, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("read rackboot's image at %s (make release writes it): %w", dir, err)
	}
	top, err := p.ImageIndex()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("read rackboot's image at %s: %w", dir, err)
	}
	im, err := top.IndexManifest()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("read rackboot's image at %s: %w", dir, err)
	}
	if len(im.Manifests) != 1 {
		return v1.Hash{}, fmt.Errorf("%s holds %d images, want the one index make release writes", dir, len(im.Manifests))
	}
	idx, err := top.ImageIndex(im.Manifests[0].Digest)
	if err != nil {
		return v1.Hash{}, fmt.Errorf("read rackboot's image at %s: %w", dir, err)
	}
	return Put(s, idx, version)
}

// PutSelf builds the image from the running binary (a static Linux build,
// as `make build` makes) for this machine's architecture only, and stores
// it as ImageName(version). It is for a laptop without `make release`'s
// image: a rack of another architecture needs PutLayout.
func PutSelf(s *registry.Store, version, revision string, created time.Time) (v1.Hash, error) {
	if runtime.GOOS != "linux" {
		return v1.Hash{}, fmt.Errorf("rackboot's image holds a Linux binary, and this one is for %s: put the image make release builds (dist/oci) instead", runtime.GOOS)
	}
	exe, err := os.Executable()
	if err != nil {
		return v1.Hash{}, fmt.Errorf("find the running binary: %w", err)
	}
	idx, err := Build(Config{
		Binaries: []Binary{{OS: "linux", Arch: runtime.GOARCH, Path: exe}},
		Version:  version, Revision: revision, Created: created,
	})
	if err != nil {
		return v1.Hash{}, err
	}
	return Put(s, idx, version)
}
