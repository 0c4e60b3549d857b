package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/dotfile/rackboot/assetimage"
	"github.com/dotfile/rackboot/imager"
	"github.com/dotfile/rackboot/registry"
)

// `serve --kube --assets-from DIR`: the boot files and the mirror's images
// come from DIR, the assets image `rackboot handoff` mounts read-only as an
// image volume (handoff.AssetsDir), instead of <state>/assets. serve never
// writes to either: boot files are downloaded by `assets pull`, images put
// by `assets pull` and handoff, both on the laptop.

// assetsFromHelp is the flag's help.
const assetsFromHelp = "with --kube: read the boot files and the registry mirror's images from this directory (read-only; the assets image rackboot handoff mounts) instead of <state>/assets"

// serveAssetCache opens the asset cache serve reads: --assets-from's, else
// the state directory's.
func serveAssetCache(a *app, f *serveFlags) (*imager.Cache, error) {
	if f.kube.assetsFrom == "" {
		return openAssetCache(a)
	}
	if err := assetsFromDir(f.kube.assetsFrom); err != nil {
		return nil, err
	}
	return imager.OpenCache(f.kube.assetsFrom, imager.WithCacheLogger(a.log))
}

// serveImageStore opens the image store serve's mirror reads.
func serveImageStore(a *app, f *serveFlags) (*registry.Store, error) {
	if f.kube.assetsFrom == "" {
		return openImageStore(a)
	}
	return registry.Open(filepath.Join(f.kube.assetsFrom, assetimage.ImagesDir), registry.WithLogger(a.log.With("service", "images")))
}

// assetsFromDir checks that --assets-from is a directory holding boot
// files or images: a volume that is not mounted, or one a container runtime
// without image volume support mounted empty (containerd before 2.1 does:
// k3s-io/k3s#14323), would otherwise look like an empty cache.
func assetsFromDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("--assets-from %s: %w (the assets image's volume is not mounted there)", dir, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("--assets-from %s: not a directory", dir)
	}
	for _, sub := range []string{"talos", assetimage.ImagesDir} {
		if _, err := os.Stat(filepath.Join(dir, sub)); err == nil {
			return nil
		}
	}
	return fmt.Errorf("--assets-from %s holds neither talos/ nor %s/: the assets image's volume is empty; the node's container runtime must support image volumes (containerd 2.1 or later; Talos v1.13 ships 2.2.3)", dir, assetimage.ImagesDir)
}
