package main

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/lab/standin/installer"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/registry"
)

// imageStoreDir is the registry mirror's image store: an OCI image layout
// inside the asset cache.
func imageStoreDir(a *app) string { return filepath.Join(assetsDir(a), "images") }

// openImageStore opens the image store; it creates nothing until an image
// is written.
func openImageStore(a *app, opts ...registry.Option) (*registry.Store, error) {
	opts = append([]registry.Option{registry.WithLogger(a.log.With("service", "images"))}, opts...)
	return registry.Open(imageStoreDir(a), opts...)
}

// rackImages is every image the rack needs: what Talos pulls (installers,
// Kubernetes, CNI, pause; read from the generated configs) and what the
// embedded bundles run (read from the rendered objects, with throwaway
// certificates). Bundle images are needed on every architecture of the
// rack. unlisted names config parts whose images cannot be known offline.
func rackImages(r *profiles.Rack) (images []profiles.Image, unlisted []string, err error) {
	images, unlisted, err = r.Images()
	if err != nil {
		return nil, nil, err
	}
	refs, err := bundleImages(r)
	if err != nil {
		return nil, nil, err
	}
	var platforms []string
	for i := range r.Machines {
		p := "linux/" + r.Machines[i].ArchOrDefault()
		if !slices.Contains(platforms, p) {
			platforms = append(platforms, p)
		}
	}
	slices.Sort(platforms)
	for _, ref := range refs {
		i := slices.IndexFunc(images, func(im profiles.Image) bool { return im.Ref == ref })
		if i < 0 {
			images = append(images, profiles.Image{Ref: ref, Platforms: platforms, Sources: []string{"the Rook-Ceph and CockroachDB bundles"}})
			continue
		}
		for _, p := range platforms {
			if !slices.Contains(images[i].Platforms, p) {
				images[i].Platforms = append(images[i].Platforms, p)
			}
		}
		slices.Sort(images[i].Platforms)
	}
	return images, unlisted, nil
}

// bundleImages lists the images the embedded bundles run for the rack:
// rendered with placeholder certificates and passwords, nothing written
// (the state directory given to rackParams is not used).
func bundleImages(r *profiles.Rack) ([]string, error) {
	refs, err := bundles.ListImages(rackParams(r, ""))
	if err != nil {
		return nil, fmt.Errorf("list the bundles' images: %w", err)
	}
	return refs, nil
}

// mirrorConfigOptions are the config options every generated config gets:
// the registries of the bundles' images are mirrored too.
func mirrorConfigOptions(r *profiles.Rack) ([]profiles.ConfigOption, error) {
	hosts, err := bundleRegistryHosts(r)
	if err != nil {
		return nil, err
	}
	return []profiles.ConfigOption{profiles.WithRegistryHosts(hosts...)}, nil
}

// lazyMirrorConfigOptions is mirrorConfigOptions for serve: the list is
// made in the background from the start, off serve's way to its first
// answer (DHCP and TFTP need no config; listing the images parses Rook's
// manifests, ~0.3 s on 2 cores), and a config waits for it. An error is
// logged at once and fails every config.
func lazyMirrorConfigOptions(r *profiles.Rack, log *slog.Logger) []profiles.ConfigOption {
	hosts := sync.OnceValues(func() ([]string, error) { return bundleRegistryHosts(r) })
	go func() {
		if _, err := hosts(); err != nil {
			log.Error("machine configs cannot be made", "err", err)
		}
	}()
	return []profiles.ConfigOption{profiles.WithRegistryHostsFunc(hosts)}
}

// bundleRegistryHosts is the registries of the bundles' images.
func bundleRegistryHosts(r *profiles.Rack) ([]string, error) {
	refs, err := bundleImages(r)
	if err != nil {
		return nil, err
	}
	var hosts []string
	for _, ref := range refs {
		p, err := registry.ParseRef(ref)
		if err != nil {
			return nil, err
		}
		hosts = append(hosts, p.Registry)
	}
	return hosts, nil
}

// parsePlatforms turns "linux/amd64" strings into OCI platforms.
func parsePlatforms(ss []string) ([]v1.Platform, error) {
	var out []v1.Platform
	for _, s := range ss {
		p, err := v1.ParsePlatform(s)
		if err != nil {
			return nil, fmt.Errorf("platform %q: %w", s, err)
		}
		out = append(out, *p)
	}
	return out, nil
}

// missingImages lists the rack's images the store does not hold complete,
// each with the reason.
func missingImages(st *registry.Store, images []profiles.Image) []string {
	var missing []string
	for _, im := range images {
		if err := st.Has(im.Ref); err != nil {
			missing = append(missing, fmt.Sprintf("%s (%v)", im.Ref, err))
		}
	}
	return missing
}

// checkOfflineImages: a rack with offline: true has no fallback to the
// internet, so every image must be in the store before anything boots.
func checkOfflineImages(a *app, r *profiles.Rack) error {
	if !r.Cluster.Offline {
		return nil
	}
	images, _, err := rackImages(r)
	if err != nil {
		return err
	}
	st, err := openImageStore(a)
	if err != nil {
		return err
	}
	if missing := missingImages(st, images); len(missing) > 0 {
		return fmt.Errorf("the rack is offline (offline: true) but the image store %s lacks %d of its %d images: run `rackboot assets pull` where there is internet, then come back:\n  %s",
			st.Dir(), len(missing), len(images), strings.Join(missing, "\n  "))
	}
	return nil
}

// newMirror is serve's registry mirror on addr. Every response a machine
// gets counts on its status (attributed like events: only from where the
// machine was seen); others count only in the mirror's own metrics.
func newMirror(a *app, st *registry.Store, addr string, attr *attribution, inv *inventory.Store, reg prometheus.Registerer) (*registry.Server, error) {
	log := a.log.With("service", "registry")
	return registry.New(registry.Config{
		Addr: addr, Store: st, Log: log, Metrics: reg,
		Observer: func(ev registry.Event) {
			if (ev.Status != 200 && ev.Status != 206) || (ev.Kind != registry.KindManifest && ev.Kind != registry.KindBlob) {
				return
			}
			ap, err := netip.ParseAddrPort(ev.Remote)
			if err != nil {
				return
			}
			name, ok := attr.resolve(ap.Addr().Unmap())
			if !ok {
				return
			}
			manifest := ev.Kind == registry.KindManifest
			// One image per repository: a pull asks for the tag, then the
			// index and the platform's manifest by digest.
			image := ""
			if manifest {
				image = ev.Registry + "/" + ev.Repo
			}
			if err := inv.AddPull(name, image, manifest, ev.Bytes); err != nil {
				log.Debug("count a pull", "machine", name, "err", err)
			}
		},
	})
}

// seedStandinInstallers puts the lab's installer image (the boot image's
// kernel and initramfs, as Talos's installer image carries its boot files)
// into the store under the installer name of every schematic whose
// machines boot the stand-in, so lab machines pull it from the mirror as
// Talos pulls its installer. The image is built every time (well under a
// second) and replaces a stored one with another digest: a boot image
// rebuilt since (make standin) is what a reused state dir installs.
//
// upgrades are more Talos versions to tag it with (serve's
// --standin-version), for `rackboot upgrade --talos` in the lab: each is
// installer.VersionImage, the same system with the version in its
// initramfs's gzip header, so every version has its own digest and an
// upgrade writes other bytes to the ESP. A version whose machines would
// boot real Talos from the asset cache gets no stand-in image.
func seedStandinInstallers(a *app, st *registry.Store, r *profiles.Rack, standinDir string, upgrades []string, fromStandin func(version, schematic, arch string) bool) error {
	type seed struct {
		version string // "" for the rack's talosVersion: the plain image
		archs   []string
	}
	seeds := map[string]*seed{} // installer reference → what to put there
	add := func(ref, version, arch string) {
		if seeds[ref] == nil {
			seeds[ref] = &seed{version: version}
		}
		if !slices.Contains(seeds[ref].archs, arch) {
			seeds[ref].archs = append(seeds[ref].archs, arch)
		}
	}
	for i := range r.Machines {
		m := &r.Machines[i]
		id, err := profiles.SchematicID(r.Schematic(m))
		if err != nil {
			return fmt.Errorf("schematic of %s: %w", m.Name, err)
		}
		arch := m.ArchOrDefault()
		if !fromStandin(r.Cluster.TalosVersion, id, arch) {
			continue
		}
		add(profiles.InstallerImage(id, r.Cluster.TalosVersion), "", arch)
		for _, v := range upgrades {
			if v != r.Cluster.TalosVersion && fromStandin(v, id, arch) {
				add(profiles.InstallerImage(id, v), v, arch)
			}
		}
	}
	for ref, sd := range seeds {
		img, digest, err := standinInstaller(standinDir, sd.version, sd.archs)
		if err != nil {
			return err
		}
		if held(st, ref, digest) {
			continue
		}
		if err := st.Put(ref, img); err != nil {
			return fmt.Errorf("put the lab's installer image in the image store: %w", err)
		}
		a.log.Info("the lab's installer image is in the registry mirror", "image", ref, "arch", strings.Join(sd.archs, ","), "digest", digest.String())
	}
	return nil
}

// held reports whether the store holds ref complete at digest.
func held(st *registry.Store, ref string, digest v1.Hash) bool {
	r, err := registry.ParseRef(ref)
	if err != nil {
		return false
	}
	d, err := st.Resolve(r.Repository(), r.Tag)
	return err == nil && d.Digest == digest && st.Has(ref) == nil
}

// standinInstaller is the lab's installer image for the architectures: an
// image for one, an index for several; version "" is the plain image,
// another the image marked with that version (installer.VersionImage).
func standinInstaller(standinDir, version string, archs []string) (any, v1.Hash, error) {
	slices.Sort(archs)
	build := func(arch string) (v1.Image, error) {
		if version == "" {
			return installer.Image(standinArchDir(standinDir, arch), arch)
		}
		return installer.VersionImage(standinArchDir(standinDir, arch), arch, version)
	}
	if len(archs) == 1 {
		i, err := build(archs[0])
		if err != nil {
			return nil, v1.Hash{}, err
		}
		d, err := i.Digest()
		return i, d, err
	}
	idx := v1.ImageIndex(empty.Index)
	for _, arch := range archs {
		i, err := build(arch)
		if err != nil {
			return nil, v1.Hash{}, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: i,
			Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}
	d, err := idx.Digest()
	return idx, d, err
}

func standinArchDir(dir, arch string) string {
	if arch == "arm64" {
		return filepath.Join(dir, standinArm64)
	}
	return dir
}

// mirrorAddr is where serve's registry mirror listens: the rack address
// (host "" with --listen-all) and port.
func mirrorAddr(host string, port int) string {
	return net.JoinHostPort(host, fmt.Sprint(port))
}
