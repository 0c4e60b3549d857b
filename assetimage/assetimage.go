// Package assetimage builds the assets image: the laptop's asset cache
// (Talos kernels and initramfs, <state>/assets/talos) and its registry
// mirror's image store (<state>/assets/images, an OCI layout) as one OCI
// image, so that `rackboot handoff` can give them to the in-cluster
// replicas as a read-only Kubernetes image volume (`serve --kube
// --assets-from DIR`).
//
// The image's filesystem is the asset cache's directory as it is on the
// laptop: talos/<version>/<schematic>/<arch>/{kernel,initramfs.xz,cmdline,
// manifest.json} and images/{oci-layout,index.json,blobs/sha256/...}. It is
// reproducible (fixed times, owners and modes, sorted entries, no base
// image), and its layers are split so that a later build with one more
// Talos version or image shares every unchanged layer: one layer per asset
// set, one per stored image (its blobs not already in an earlier image's
// layer, images sorted by name), and a last small one with the store's
// index.json. Layers are uncompressed tars: kernels, initramfs and image
// layers are compressed already, and an uncompressed layer's digest is the
// digest of its tar, which anyone holding the files can rebuild.
package assetimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/dotfile/rackboot/imager"
	"github.com/dotfile/rackboot/registry"
)

// Repository is the assets image's name without a tag. ghcr.io is mirrored
// by every machine config, so the nodes' containerd asks the laptop's
// mirror for it.
const Repository = "ghcr.io/dotfile/rackboot-assets"

// ImagesDir is the image store's directory inside the image (and inside the
// laptop's asset cache).
const ImagesDir = "images"

// ErrEmpty is returned by Build when there is nothing to carry: no asset set
// and no stored image.
var ErrEmpty = errors.New("the asset cache holds no boot files and no images")

// Platforms are the platforms the index names: the content is the same
// (files, not programs), but the kubelet's runtime picks an image by the
// node's platform.
var Platforms = []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}

// Config says what to build from.
type Config struct {
	// AssetsDir is the asset cache (<state>/assets).
	AssetsDir string
	// Images is the image store (<state>/assets/images); nil for none.
	Images *registry.Store
	// Created is every timestamp (SOURCE_DATE_EPOCH; zero: 1970).
	Created time.Time
}

// Built is the assets image and what went into it.
type Built struct {
	Index  v1.ImageIndex
	Digest v1.Hash
	// Sets and Images name what each layer holds, in layer order (the
	// store's index.json last).
	Sets   []imager.Set
	Images []string
	// Bytes is the layers' total size.
	Bytes int64
}

// Name is the image's name: Repository tagged with the first 12 hex digits
// of its digest, so that a different content is a different tag.
func (b *Built) Name() string { return Repository + ":" + b.Digest.Hex[:12] }

// Ref is Name pinned by digest, for the Deployment.
func (b *Built) Ref() string { return Name(b.Digest) }

// Name is Repository tagged by d, pinned by d.
func Name(d v1.Hash) string { return Repository + ":" + d.Hex[:12] + "@" + d.String() }

// Build builds the assets image from cfg. It reads only; nothing is written.
func Build(cfg Config) (*Built, error) {
	t := cfg.Created
	if t.IsZero() {
		t = time.Unix(0, 0)
	}
	t = t.UTC().Truncate(time.Second)
	b := &Built{}
	var layers []v1.Layer
	sets, err := setLayers(cfg.AssetsDir, t)
	if err != nil {
		return nil, err
	}
	for _, s := range sets {
		layers = append(layers, s.layer)
		b.Sets = append(b.Sets, s.set)
	}
	if cfg.Images != nil {
		ls, names, err := storeLayers(cfg.Images, t)
		if err != nil {
			return nil, err
		}
		layers = append(layers, ls...)
		b.Images = names
	}
	if len(layers) == 0 {
		return nil, fmt.Errorf("%w (%s): run `rackboot assets pull` first", ErrEmpty, cfg.AssetsDir)
	}
	for _, l := range layers {
		n, _ := l.Size()
		b.Bytes += n
	}
	if b.Index, err = index(layers, t); err != nil {
		return nil, err
	}
	if b.Digest, err = b.Index.Digest(); err != nil {
		return nil, err
	}
	return b, nil
}

// Put stores the image in the laptop's image store as b.Name(), so its
// mirror serves it to the nodes' containerd.
func Put(s *registry.Store, b *Built) error {
	if err := s.Put(b.Name(), b.Index); err != nil {
		return fmt.Errorf("put the assets image into the image store: %w", err)
	}
	return nil
}

type setLayer struct {
	set   imager.Set
	layer v1.Layer
}

// setLayers is one layer per complete asset set (a manifest lists its
// files), sorted as the cache lists them.
func setLayers(dir string, t time.Time) ([]setLayer, error) {
	if _, err := os.Stat(filepath.Join(dir, "talos")); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	cache, err := imager.OpenCache(dir)
	if err != nil {
		return nil, err
	}
	defer cache.Close()
	ms, err := cache.List()
	if err != nil {
		return nil, err
	}
	var out []setLayer
	for _, m := range ms {
		rel := path.Dir(m.ID(imager.FileKernel))
		files := []entry{}
		for name, rec := range m.Files {
			files = append(files, entry{name: path.Join(rel, name), src: filepath.Join(dir, filepath.FromSlash(m.ID(name))), size: rec.Size})
		}
		mf := filepath.Join(dir, filepath.FromSlash(rel), "manifest.json")
		st, err := os.Stat(mf)
		if err != nil {
			return nil, fmt.Errorf("asset set %s: %w", m.Set, err)
		}
		files = append(files, entry{name: path.Join(rel, "manifest.json"), src: mf, size: st.Size()})
		l, err := newLayer(files, t)
		if err != nil {
			return nil, fmt.Errorf("asset set %s: %w", m.Set, err)
		}
		out = append(out, setLayer{m.Set, l})
	}
	return out, nil
}

// storeLayers is one layer per stored image (its blobs not in an earlier
// layer), images sorted by name, then the store's oci-layout and
// index.json without this package's own images (a new assets image never
// holds an older one).
func storeLayers(s *registry.Store, t time.Time) ([]v1.Layer, []string, error) {
	entries, err := s.List()
	if err != nil {
		return nil, nil, err
	}
	seen := map[v1.Hash]bool{}
	var (
		layers []v1.Layer
		names  []string
	)
	for _, e := range entries {
		if own(e.Name) {
			continue
		}
		blobs, err := s.EntryBlobs(e.Name)
		if err != nil {
			return nil, nil, err
		}
		var files []entry
		for _, d := range blobs {
			if seen[d.Digest] {
				continue
			}
			seen[d.Digest] = true
			files = append(files, entry{name: path.Join(ImagesDir, "blobs", d.Digest.Algorithm, d.Digest.Hex), src: s.BlobPath(d.Digest), size: d.Size})
		}
		if len(files) == 0 {
			continue
		}
		l, err := newLayer(files, t)
		if err != nil {
			return nil, nil, fmt.Errorf("image %s: %w", e.Name, err)
		}
		layers = append(layers, l)
		names = append(names, e.Name)
	}
	if len(names) == 0 {
		return nil, nil, nil
	}
	idx, err := storeIndex(s.Dir())
	if err != nil {
		return nil, nil, err
	}
	l, err := newLayer([]entry{
		{name: path.Join(ImagesDir, "index.json"), data: idx},
		{name: path.Join(ImagesDir, "oci-layout"), data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
	}, t)
	if err != nil {
		return nil, nil, err
	}
	return append(layers, l), names, nil
}

// own reports whether name is an assets image.
func own(name string) bool {
	return strings.HasPrefix(name, Repository+":") || strings.HasPrefix(name, Repository+"@")
}

// storeIndex is the store's index.json without the assets images, written
// as the store writes it.
func storeIndex(dir string) ([]byte, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, fmt.Errorf("read the image store's index: %w", err)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("image store %s: index.json is damaged: %w", dir, err)
	}
	idx.Manifests = slices.DeleteFunc(idx.Manifests, func(d v1.Descriptor) bool { return own(d.Annotations[registry.AnnotationRefName]) })
	out, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// index is the image index: one manifest per platform over the same layers.
func index(layers []v1.Layer, t time.Time) (v1.ImageIndex, error) {
	created := v1.Time{Time: t}
	var diffIDs []v1.Hash
	for _, l := range layers {
		d, err := l.DiffID()
		if err != nil {
			return nil, err
		}
		diffIDs = append(diffIDs, d)
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var adds []mutate.IndexAddendum
	for _, p := range Platforms {
		img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
		img, err := mutate.AppendLayers(img, layers...)
		if err != nil {
			return nil, err
		}
		img, err = mutate.ConfigFile(img, &v1.ConfigFile{
			Architecture: p.Architecture,
			OS:           p.OS,
			Created:      created,
			Config:       v1.Config{Labels: map[string]string{"org.opencontainers.image.source": "https://github.com/dotfile/rackboot"}},
			RootFS:       v1.RootFS{Type: "layers", DiffIDs: diffIDs},
		})
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Platform:  &v1.Platform{OS: p.OS, Architecture: p.Architecture},
		}})
	}
	return mutate.AppendManifests(idx, adds...), nil
}

// entry is one file of a layer: its bytes (data) or a file (src, size).
type entry struct {
	name string
	src  string
	size int64
	data []byte
}

// layer is an uncompressed tar layer written from files on demand: its
// digest is computed once by writing it to a hash, and each read writes it
// again (the files are immutable: blobs and committed asset sets).
type layer struct {
	files  []entry
	t      time.Time
	digest v1.Hash
	size   int64
}

func newLayer(files []entry, t time.Time) (*layer, error) {
	slices.SortFunc(files, func(a, b entry) int { return strings.Compare(a.name, b.name) })
	l := &layer{files: files, t: t}
	h := sha256.New()
	n, err := l.write(h)
	if err != nil {
		return nil, err
	}
	l.digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
	l.size = n
	return l, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// write writes the tar: each parent directory once (0755), then the
// files (0644), owner 0:0, every time t, no user or group names.
func (l *layer) write(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	tw := tar.NewWriter(cw)
	dirs := map[string]bool{}
	format := tar.FormatUSTAR
	if l.t.Unix() >= 1<<33 {
		format = tar.FormatPAX
	}
	var mkdirs func(d string) error
	mkdirs = func(d string) error {
		if d == "." || dirs[d] {
			return nil
		}
		if err := mkdirs(path.Dir(d)); err != nil {
			return err
		}
		dirs[d] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d + "/", Mode: 0o755, ModTime: l.t, Format: format})
	}
	for _, f := range l.files {
		if err := mkdirs(path.Dir(f.name)); err != nil {
			return 0, err
		}
		size := f.size
		if f.src == "" {
			size = int64(len(f.data))
		}
		hf := format
		if size >= 1<<33 || len(f.name) > 100 {
			hf = tar.FormatPAX
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: size, ModTime: l.t, Format: hf}); err != nil {
			return 0, err
		}
		if err := f.copy(tw, size); err != nil {
			return 0, err
		}
	}
	if err := tw.Close(); err != nil {
		return 0, err
	}
	return cw.n, nil
}

// copy writes the entry's bytes; a file whose size changed is an error
// (the layer's digest would not match).
func (f entry) copy(w io.Writer, size int64) error {
	if f.src == "" {
		_, err := w.Write(f.data)
		return err
	}
	r, err := os.Open(f.src)
	if err != nil {
		return err
	}
	defer r.Close()
	n, err := io.Copy(w, io.LimitReader(r, size))
	if err != nil {
		return fmt.Errorf("read %s: %w", f.src, err)
	}
	if n != size {
		return fmt.Errorf("%s is %d bytes, expected %d: it changed while the assets image was built", f.src, n, size)
	}
	return nil
}

func (l *layer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l *layer) DiffID() (v1.Hash, error)             { return l.digest, nil }
func (l *layer) Size() (int64, error)                 { return l.size, nil }
func (l *layer) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }
func (l *layer) Compressed() (io.ReadCloser, error)   { return l.Uncompressed() }
func (l *layer) Uncompressed() (io.ReadCloser, error) { return l.open(), nil }

// open streams the tar through a pipe.
func (l *layer) open() io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		_, err := l.write(pw)
		pw.CloseWithError(err)
	}()
	return pr
}
