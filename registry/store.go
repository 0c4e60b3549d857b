// Package registry keeps container images on disk and serves them: a Store
// is an OCI image layout directory (oci-layout, index.json, blobs/sha256)
// that Pull fills from upstream registries and Put from local images, and
// Server is a read-only Docker/OCI distribution API mirror over a Store, so
// a rack installs with the internet unplugged.
//
// Each stored image is one entry of index.json annotated
// org.opencontainers.image.ref.name with its normalized name
// (registry.k8s.io/pause:3.10, docker.io/library/busybox:1.36,
// repo@sha256:... for an image given only by digest). A multi-arch image
// keeps its upstream index manifest byte for byte (so its digest is the
// upstream one) but only the children for the platforms asked for.
package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

const (
	// AnnotationRefName names an entry of index.json.
	AnnotationRefName = "org.opencontainers.image.ref.name"
	// AnnotationPlatforms lists, comma-separated, the platforms an entry was
	// pulled for ("" or absent: all of them).
	AnnotationPlatforms = "dev.rackboot.platforms"

	ociLayoutFile    = "oci-layout"
	ociLayoutContent = `{"imageLayoutVersion":"1.0.0"}`
	indexFile        = "index.json"
	partialSuffix    = ".partial"
)

// ErrNotFound is wrapped by Resolve, Has and blob lookups when the store does
// not hold the image, manifest or blob asked for.
var ErrNotFound = errors.New("not in the image store")

// Store is an on-disk OCI image layout. Its methods are safe for concurrent
// use; writes from several processes are serialized with a lock file.
type Store struct {
	dir        string
	remoteOpts []remote.Option
	keychain   authn.Keychain    // for ranged blob requests (WithKeychain); nil: anonymous
	mirrors    map[string]string // upstream registry host -> plain-HTTP host:port
	refresh    bool
	log        *slog.Logger

	mu   sync.Mutex // serializes writers in this process
	snap snapshotCache
}

// Option configures a Store.
type Option func(*Store)

// WithRemoteOptions adds go-containerregistry remote options to every
// upstream request (transport, remote.WithAuthFromKeychain, user agent).
// The default is anonymous access over the default transport.
func WithRemoteOptions(opts ...remote.Option) Option {
	return func(s *Store) { s.remoteOpts = append(s.remoteOpts, opts...) }
}

// WithUpstream makes Pull fetch images of registry host (e.g. "docker.io",
// "registry.k8s.io") from hostport over plain HTTP instead: images are still
// named after host. Tests use it to stand a local registry in for a public
// one; so can a site with its own pull-through cache.
func WithUpstream(host, hostport string) Option {
	return func(s *Store) {
		if s.mirrors == nil {
			s.mirrors = map[string]string{}
		}
		s.mirrors[host] = hostport
	}
}

// WithRefresh makes Pull ask the upstream registry what a tag points to
// now, even when the store already holds that tag complete.
func WithRefresh() Option { return func(s *Store) { s.refresh = true } }

// WithLogger logs pulls and problems (default: discard).
func WithLogger(l *slog.Logger) Option { return func(s *Store) { s.log = l } }

// Open opens the image store in dir. It creates nothing: the directory and
// its layout files appear with the first Pull or Put, so read-only commands
// leave no state behind. A dir that exists but is not an OCI layout (no
// oci-layout file while other files are there) is an error.
func Open(dir string, opts ...Option) (*Store, error) {
	s := &Store{dir: dir, log: slog.New(slog.DiscardHandler)}
	for _, o := range opts {
		o(s)
	}
	b, err := os.ReadFile(filepath.Join(dir, ociLayoutFile))
	switch {
	case err == nil:
		var l struct {
			Version string `json:"imageLayoutVersion"`
		}
		if err := json.Unmarshal(b, &l); err != nil || l.Version == "" {
			return nil, fmt.Errorf("image store %s: %s is not an OCI layout file", dir, ociLayoutFile)
		}
	case errors.Is(err, fs.ErrNotExist):
		ents, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open image store %s: %w", dir, err)
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), ".") {
				return nil, fmt.Errorf("image store %s: the directory holds other files and no %s; point the store at an empty or new directory", dir, ociLayoutFile)
			}
		}
	default:
		return nil, fmt.Errorf("open image store %s: %w", dir, err)
	}
	return s, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// BlobPath is where the blob with digest d is (or would be) stored.
func (s *Store) BlobPath(d v1.Hash) string {
	return filepath.Join(s.dir, "blobs", d.Algorithm, d.Hex)
}

// OpenBlob opens a stored blob for reading. The caller checks its size and
// digest against what it expects (the server does).
func (s *Store) OpenBlob(d v1.Hash) (*os.File, error) {
	if d.Algorithm != "sha256" || len(d.Hex) != 64 {
		return nil, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	f, err := os.Open(s.BlobPath(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", d, ErrNotFound)
	}
	return f, err
}

// Entry describes one stored image (an entry of index.json).
type Entry struct {
	Name      string // registry.k8s.io/pause:3.10
	Digest    v1.Hash
	MediaType types.MediaType
	// Size is the bytes on disk for this image: manifests, configs and
	// layers of the platforms held, each blob counted once.
	Size int64
	// Platforms are the platforms whose image is held (for a single-platform
	// image, the one its config names).
	Platforms []v1.Platform
	// Missing lists what a complete copy would need and is absent or of the
	// wrong size (nil when complete).
	Missing []string
}

// List returns the stored images, sorted by name. Only sizes are checked;
// Verify re-hashes.
func (s *Store) List() ([]Entry, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, d := range idx.Manifests {
		n := d.Annotations[AnnotationRefName]
		if n == "" {
			continue
		}
		c := s.closure(n, d, entryPlatforms(d))
		e := Entry{Name: n, Digest: d.Digest, MediaType: d.MediaType, Platforms: c.platforms}
		for _, b := range c.blobs {
			e.Size += b.Size
		}
		for _, p := range c.problems {
			e.Missing = append(e.Missing, p.Error())
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Has reports whether the store holds ref complete (every blob present
// with its size): nil if so, otherwise an error saying what is missing.
func (s *Store) Has(ref string) error {
	r, err := ParseRef(ref)
	if err != nil {
		return err
	}
	_, err = s.has(r)
	return err
}

func (s *Store) has(r Ref) (v1.Descriptor, error) {
	idx, err := s.readIndex()
	if err != nil {
		return v1.Descriptor{}, err
	}
	d, ok := findEntry(idx, r.Name())
	if !ok {
		return v1.Descriptor{}, fmt.Errorf("image %s: %w", r.Name(), ErrNotFound)
	}
	if r.Digest != nil && d.Digest != *r.Digest {
		return d, fmt.Errorf("image %s: the store holds %s, not %s: %w", r.Name(), d.Digest, r.Digest, ErrNotFound)
	}
	c := s.closure(r.Name(), d, entryPlatforms(d))
	if len(c.problems) > 0 {
		return d, fmt.Errorf("image %s is incomplete: %w (pull it again to complete it)", r.Name(), errors.Join(c.problems...))
	}
	return d, nil
}

// EntryBlobs returns the blobs of the image stored under name (an Entry's
// Name): its manifests, configs and layers on disk, each once, in walk
// order. An incomplete image is an error. (The assets image, package
// assetimage, packs them.)
func (s *Store) EntryBlobs(name string) ([]v1.Descriptor, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	d, ok := findEntry(idx, name)
	if !ok {
		return nil, fmt.Errorf("image %s: %w", name, ErrNotFound)
	}
	c := s.closure(name, d, entryPlatforms(d))
	if len(c.problems) > 0 {
		return nil, fmt.Errorf("image %s is incomplete: %w (pull it again to complete it)", name, errors.Join(c.problems...))
	}
	return c.blobs, nil
}

// Problem is a blob Verify found wrong.
type Problem struct {
	Image string // the image's name; several images can share a blob
	Blob  v1.Hash
	Err   error
}

func (p Problem) Error() string { return fmt.Sprintf("image %s: blob %s: %v", p.Image, p.Blob, p.Err) }

// Verify re-reads and re-hashes every blob of every stored image and
// returns the missing, truncated or corrupt ones (a blob shared by several
// images is reported for each). The error is for failures to read the store.
func (s *Store) Verify(ctx context.Context) ([]Problem, error) {
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	checked := map[v1.Hash]error{}
	var out []Problem
	for _, d := range idx.Manifests {
		n := d.Annotations[AnnotationRefName]
		c := s.closure(n, d, entryPlatforms(d))
		for _, p := range c.problems {
			var bp *blobProblem
			if errors.As(p, &bp) {
				out = append(out, Problem{Image: n, Blob: bp.digest, Err: bp.err})
			} else {
				out = append(out, Problem{Image: n, Err: p})
			}
		}
		for _, b := range c.blobs {
			if err := ctx.Err(); err != nil {
				return out, err
			}
			perr, done := checked[b.Digest]
			if !done {
				perr = checkFile(s.BlobPath(b.Digest), b.Digest, b.Size)
				checked[b.Digest] = perr
			}
			if perr != nil {
				out = append(out, Problem{Image: n, Blob: b.Digest, Err: perr})
			}
		}
	}
	return out, nil
}

// checkFile hashes the file at path against digest and size.
func checkFile(path string, d v1.Hash, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return errors.New("missing")
		}
		return err
	}
	defer f.Close()
	return checkReader(f, d, size)
}

func checkReader(r io.Reader, d v1.Hash, size int64) error {
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(r, size+1))
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("%d bytes, want %d (truncated or overwritten)", n, size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hex {
		return fmt.Errorf("content hashes to sha256:%s (corrupt)", got)
	}
	return nil
}

// Resolve finds a manifest of repository repo (fully qualified,
// "registry.k8s.io/pause") by tag or digest, or a blob by digest; a digest
// resolves only if it belongs to an image of that repository. It wraps
// ErrNotFound when there is no such thing.
func (s *Store) Resolve(repo, reference string) (v1.Descriptor, error) {
	sn, err := s.snapshot()
	if err != nil {
		return v1.Descriptor{}, err
	}
	return sn.resolve(repo, reference)
}

// readIndex reads index.json; a store not yet written is empty.
func (s *Store) readIndex() (*v1.IndexManifest, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, indexFile))
	if errors.Is(err, fs.ErrNotExist) {
		return &v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read image store index: %w", err)
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("image store %s: %s is damaged: %w", s.dir, indexFile, err)
	}
	return idx, nil
}

func findEntry(idx *v1.IndexManifest, n string) (v1.Descriptor, bool) {
	for _, d := range idx.Manifests {
		if d.Annotations[AnnotationRefName] == n {
			return d, true
		}
	}
	return v1.Descriptor{}, false
}

func entryPlatforms(d v1.Descriptor) []v1.Platform {
	var out []v1.Platform
	for _, p := range strings.Split(d.Annotations[AnnotationPlatforms], ",") {
		if pp, err := v1.ParsePlatform(p); err == nil && p != "" {
			out = append(out, *pp)
		}
	}
	return out
}

func platformsAnnotation(ps []v1.Platform) string {
	var ss []string
	for _, p := range ps {
		ss = append(ss, p.String())
	}
	return strings.Join(ss, ",")
}

// wanted reports whether an index child for platform p is to be fetched.
func wanted(p *v1.Platform, want []v1.Platform) bool {
	if len(want) == 0 {
		return true
	}
	if p == nil {
		return false
	}
	for _, w := range want {
		if p.OS == w.OS && p.Architecture == w.Architecture && (w.Variant == "" || w.Variant == p.Variant) {
			return true
		}
	}
	return false
}

// isManifest reports whether a media type is an image manifest or index.
func isIndex(mt types.MediaType) bool {
	return mt == types.OCIImageIndex || mt == types.DockerManifestList
}

func isImage(mt types.MediaType) bool {
	return mt == types.OCIManifestSchema1 || mt == types.DockerManifestSchema2
}

func distributable(d v1.Descriptor) bool { return d.MediaType.IsDistributable() }

type blobProblem struct {
	digest v1.Hash
	err    error
}

func (b *blobProblem) Error() string { return fmt.Sprintf("blob %s: %v", b.digest, b.err) }

// closureResult is what an index.json entry refers to on disk.
type closureResult struct {
	blobs     []v1.Descriptor // present with the right size; each digest once
	manifests []v1.Descriptor // the manifests among blobs, with media types
	platforms []v1.Platform
	problems  []error
}

// closure walks an entry: its manifest, the children of an index (the
// wanted ones must be there, others count when present), configs and
// layers. Sizes are checked with stat, not hashed.
func (s *Store) closure(image string, root v1.Descriptor, want []v1.Platform) closureResult {
	var c closureResult
	seen := map[v1.Hash]bool{}
	add := func(d v1.Descriptor) bool {
		if seen[d.Digest] {
			return true
		}
		fi, err := os.Stat(s.BlobPath(d.Digest))
		switch {
		case err != nil:
			c.problems = append(c.problems, &blobProblem{d.Digest, errors.New("missing")})
			return false
		case fi.Size() != d.Size:
			c.problems = append(c.problems, &blobProblem{d.Digest, fmt.Errorf("%d bytes, want %d (truncated)", fi.Size(), d.Size)})
			return false
		}
		seen[d.Digest] = true
		c.blobs = append(c.blobs, d)
		return true
	}
	var walk func(d v1.Descriptor, required bool, depth int)
	walk = func(d v1.Descriptor, required bool, depth int) {
		if depth > 4 {
			c.problems = append(c.problems, fmt.Errorf("manifest %s: indexes nested too deep", d.Digest))
			return
		}
		if !required {
			if _, err := os.Stat(s.BlobPath(d.Digest)); err != nil {
				return
			}
		}
		if !add(d) {
			return
		}
		c.manifests = append(c.manifests, d)
		b, err := os.ReadFile(s.BlobPath(d.Digest))
		if err != nil {
			c.problems = append(c.problems, &blobProblem{d.Digest, err})
			return
		}
		switch {
		case isIndex(d.MediaType):
			im, err := v1.ParseIndexManifest(bytes.NewReader(b))
			if err != nil {
				c.problems = append(c.problems, &blobProblem{d.Digest, err})
				return
			}
			any := false
			for _, ch := range im.Manifests {
				w := required && wanted(ch.Platform, want)
				any = any || w
				walk(ch, w, depth+1)
			}
			if required && !any && depth == 0 {
				c.problems = append(c.problems, fmt.Errorf("index %s has no image for %s", d.Digest, platformsAnnotation(want)))
			}
		case isImage(d.MediaType):
			m, err := v1.ParseManifest(bytes.NewReader(b))
			if err != nil {
				c.problems = append(c.problems, &blobProblem{d.Digest, err})
				return
			}
			add(m.Config)
			for _, l := range m.Layers {
				if distributable(l) {
					add(l)
				}
			}
			if d.Platform != nil {
				c.platforms = append(c.platforms, *d.Platform)
			} else if cb, err := os.ReadFile(s.BlobPath(m.Config.Digest)); err == nil {
				if cf, err := v1.ParseConfigFile(bytes.NewReader(cb)); err == nil && cf.Platform() != nil {
					c.platforms = append(c.platforms, *cf.Platform())
				}
			}
		default:
			c.problems = append(c.problems, fmt.Errorf("manifest %s: unsupported media type %q", d.Digest, d.MediaType))
		}
	}
	walk(root, true, 0)
	return c
}

// Pulled reports one Pull.
type Pulled struct {
	Name      string // the name the image is stored under
	Digest    v1.Hash
	MediaType types.MediaType
	// Fetched and FetchedBytes count the blobs downloaded (manifests
	// included); Present counts blobs already in the store.
	Fetched      int
	FetchedBytes int64
	Present      int
}

// Progress reports a blob being downloaded.
type Progress struct {
	Image    string
	Blob     v1.Hash
	Complete int64 // bytes of this blob so far
	Total    int64
}

// Pull copies ref (e.g. "registry.k8s.io/pause:3.10", "busybox:1.36",
// "ghcr.io/x/y@sha256:...") from its registry into the store, for the given
// platforms (all of them when empty). Blobs already present with their size
// are not fetched again, and a name already held complete is not looked up
// upstream at all unless the store was opened WithRefresh (a name given by
// digest never needs it). Every blob's size and digest is checked before it
// is written; a mismatch is an error naming the image and the blob.
// progress may be nil.
func (s *Store) Pull(ctx context.Context, ref string, platforms []v1.Platform, progress func(Progress)) (Pulled, error) {
	r, err := ParseRef(ref)
	if err != nil {
		return Pulled{}, err
	}
	if !s.refresh || r.Tag == "" {
		if d, err := s.has(r); err == nil && platformsAnnotation(entryPlatforms(d)) == platformsAnnotation(platforms) {
			return Pulled{Name: r.Name(), Digest: d.Digest, MediaType: d.MediaType}, nil
		}
	}
	unlock, err := s.lock()
	if err != nil {
		return Pulled{}, err
	}
	defer unlock()

	p := &puller{s: s, ctx: ctx, image: r.Name(), progress: progress, platforms: platforms}
	p.repo, p.opts, err = s.upstream(ctx, r)
	if err != nil {
		return Pulled{}, err
	}
	var target name.Reference = p.repo.Tag(r.Tag)
	if r.Digest != nil {
		target = p.repo.Digest(r.Digest.String())
	}
	rd, err := remote.Get(target, p.opts...)
	if err != nil {
		return Pulled{}, fmt.Errorf("pull %s: %w", r, err)
	}
	root := rd.Descriptor
	if r.Digest != nil && root.Digest != *r.Digest {
		return Pulled{}, fmt.Errorf("pull %s: the registry has %s for it", r, root.Digest)
	}
	if err := p.manifest(root, rd.Manifest, 0); err != nil {
		return Pulled{}, err
	}
	if err := atomicfile.SyncDir(filepath.Join(s.dir, "blobs", "sha256")); err != nil {
		return Pulled{}, err
	}
	entry := v1.Descriptor{MediaType: root.MediaType, Size: root.Size, Digest: root.Digest,
		Annotations: map[string]string{AnnotationRefName: r.Name()}}
	if len(platforms) > 0 {
		entry.Annotations[AnnotationPlatforms] = platformsAnnotation(platforms)
	}
	if err := s.setEntry(entry); err != nil {
		return Pulled{}, err
	}
	s.log.Info("pulled image", "image", r.Name(), "digest", root.Digest.String(), "fetched", p.res.Fetched, "bytes", p.res.FetchedBytes)
	p.res.Name, p.res.Digest, p.res.MediaType = r.Name(), root.Digest, root.MediaType
	return p.res, nil
}

// upstream is where r is fetched from, honouring WithUpstream.
func (s *Store) upstream(ctx context.Context, r Ref) (name.Repository, []remote.Option, error) {
	host := r.Registry
	var nopts []name.Option
	if hp, ok := s.mirrors[host]; ok {
		host = hp
		nopts = append(nopts, name.Insecure)
	}
	repo, err := name.NewRepository(host+"/"+r.Repo, nopts...)
	if err != nil {
		return name.Repository{}, nil, fmt.Errorf("image %s: %w", r, err)
	}
	opts := append(slices.Clone(s.remoteOpts), remote.WithContext(ctx))
	return repo, opts, nil
}

type puller struct {
	s         *Store
	ctx       context.Context
	image     string
	repo      name.Repository
	opts      []remote.Option
	platforms []v1.Platform
	progress  func(Progress)
	res       Pulled
}

// manifest stores a manifest (raw, as fetched) and what it refers to.
func (p *puller) manifest(d v1.Descriptor, raw []byte, depth int) error {
	if depth > 4 {
		return fmt.Errorf("pull %s: manifest %s: indexes nested too deep", p.image, d.Digest)
	}
	if err := p.blob(d, whole(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(raw)), nil })); err != nil {
		return err
	}
	switch {
	case isIndex(d.MediaType):
		im, err := v1.ParseIndexManifest(bytes.NewReader(raw))
		if err != nil {
			return fmt.Errorf("pull %s: index %s: %w", p.image, d.Digest, err)
		}
		n := 0
		for _, ch := range im.Manifests {
			if !wanted(ch.Platform, p.platforms) {
				continue
			}
			n++
			chRaw, err := p.fetchManifest(ch)
			if err != nil {
				return err
			}
			if err := p.manifest(ch, chRaw, depth+1); err != nil {
				return err
			}
		}
		if n == 0 && depth == 0 {
			return fmt.Errorf("pull %s: the image has no variant for %s", p.image, platformsAnnotation(p.platforms))
		}
	case isImage(d.MediaType):
		m, err := v1.ParseManifest(bytes.NewReader(raw))
		if err != nil {
			return fmt.Errorf("pull %s: manifest %s: %w", p.image, d.Digest, err)
		}
		for _, b := range append([]v1.Descriptor{m.Config}, m.Layers...) {
			if !distributable(b) {
				continue
			}
			if err := p.blob(b, p.rangeOpener(b.Digest)); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("pull %s: manifest %s has media type %q, which rackboot cannot store", p.image, d.Digest, d.MediaType)
	}
	return nil
}

// fetchManifest gets a child manifest by digest unless it is stored.
func (p *puller) fetchManifest(d v1.Descriptor) ([]byte, error) {
	if b, err := os.ReadFile(p.s.BlobPath(d.Digest)); err == nil && int64(len(b)) == d.Size {
		return b, nil
	}
	rd, err := remote.Get(p.repo.Digest(d.Digest.String()), p.opts...)
	if err != nil {
		return nil, fmt.Errorf("pull %s: manifest %s: %w", p.image, d.Digest, err)
	}
	return rd.Manifest, nil
}

func (p *puller) opener(d v1.Hash) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) {
		l, err := remote.Layer(p.repo.Digest(d.String()), p.opts...)
		if err != nil {
			return nil, err
		}
		return l.Compressed()
	}
}

// blob writes one blob unless it is present with its size: to a
// .partial file, checked against d's size and digest, fsynced, renamed.
func (p *puller) blob(d v1.Descriptor, open opener) error {
	n, err := p.s.writeBlob(d, open, func(done int64) {
		if p.progress != nil {
			p.progress(Progress{Image: p.image, Blob: d.Digest, Complete: done, Total: d.Size})
		}
	})
	if err != nil {
		return fmt.Errorf("pull %s: blob %s: %w", p.image, d.Digest, err)
	}
	if n < 0 {
		p.res.Present++
	} else {
		p.res.Fetched++
		p.res.FetchedBytes += n
	}
	return nil
}

// writeBlob returns the bytes fetched, or -1 when the blob was present.
// The bytes go to a .partial file, which an interrupted fetch (a cut
// connection, a cancelled pull, a kill -9) leaves in place: the next fetch
// hashes what it holds and asks open only for the rest. The whole is
// checked against d's size and digest before it is fsynced and renamed
// under its digest, so a .partial is never trusted, only continued: one
// whose bytes do not make the blob is dropped and the blob fetched whole
// once more. The caller holds the store lock.
func (s *Store) writeBlob(d v1.Descriptor, open opener, progress func(int64)) (int64, error) {
	if d.Digest.Algorithm != "sha256" || len(d.Digest.Hex) != 64 {
		return 0, fmt.Errorf("unsupported digest %q", d.Digest)
	}
	path := s.BlobPath(d.Digest)
	if fi, err := os.Stat(path); err == nil && fi.Mode().IsRegular() && fi.Size() == d.Size {
		return -1, nil
	}
	if err := s.init(); err != nil {
		return 0, err
	}
	tmp := path + partialSuffix
	tmp = filepath.Join(filepath.Dir(tmp), "."+filepath.Base(tmp))
	n, err := s.fetchInto(tmp, path, d, open, progress, true)
	if errors.Is(err, errBadPrefix) {
		s.log.Info("an interrupted download's bytes do not make the blob; fetching it whole", "blob", d.Digest.String())
		m, err := s.fetchInto(tmp, path, d, open, progress, false)
		return n + m, err
	}
	return n, err
}

// errBadPrefix: the bytes a .partial held, continued, do not hash to the
// blob's digest.
var errBadPrefix = errors.New("the bytes kept from an interrupted download do not make the blob")

// fetchInto fetches d into tmp (continuing what tmp holds when resume),
// checks it and renames it to path. It returns the bytes fetched.
func (s *Store) fetchInto(tmp, path string, d v1.Descriptor, open opener, progress func(int64), resume bool) (int64, error) {
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return 0, err
	}
	keep := true // a failed fetch keeps its bytes for the next one
	defer func() {
		f.Close()
		if !keep {
			os.Remove(tmp)
		}
	}()
	h := sha256.New()
	have, err := keptPrefix(f, h, d.Size, resume)
	if err != nil {
		return 0, err
	}
	resumed := have > 0
	var n int64
	if have < d.Size {
		rc, start, err := open(have)
		if err != nil {
			return 0, err
		}
		defer rc.Close()
		if start != have { // the whole blob came: start over
			h.Reset()
			have, resumed = 0, false
			if err := f.Truncate(0); err != nil {
				return 0, err
			}
		}
		if _, err := f.Seek(have, io.SeekStart); err != nil {
			return 0, err
		}
		w := &progressWriter{w: io.MultiWriter(f, h), n: have, fn: progress}
		n, err = io.Copy(w, io.LimitReader(rc, d.Size-have+1))
		if err != nil {
			return n, err
		}
		if have+n > d.Size {
			keep = false
			return n, fmt.Errorf("got more than the %d bytes its descriptor says", d.Size)
		}
		if have+n < d.Size {
			return n, fmt.Errorf("got %d bytes, want %d", have+n, d.Size)
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != d.Digest.Hex {
		keep = false
		if resumed {
			return n, errBadPrefix
		}
		return n, fmt.Errorf("content does not match its digest (it hashes to sha256:%s): the registry or the network altered it", got)
	}
	if err := f.Sync(); err != nil {
		return n, err
	}
	if err := os.Rename(tmp, path); err != nil {
		return n, err
	}
	keep = true
	return n, nil
}

// keptPrefix hashes what f holds from an interrupted download and returns
// its length; without resume, or when it holds more than the blob, f is
// emptied and 0 returned.
func keptPrefix(f *os.File, h hash.Hash, size int64, resume bool) (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	if !resume || fi.Size() > size {
		return 0, f.Truncate(0)
	}
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, fi.Size())); err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

type progressWriter struct {
	w    io.Writer
	n    int64
	fn   func(int64)
	last int64
}

func (p *progressWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	p.n += int64(n)
	if p.fn != nil && (p.n-p.last >= 1<<20 || p.last == 0) {
		p.last = p.n
		p.fn(p.n)
	}
	return n, err
}

var _ hash.Hash = sha256.New()

// init creates the layout files and blob directory on the first write.
func (s *Store) init() error {
	if err := os.MkdirAll(filepath.Join(s.dir, "blobs", "sha256"), 0o755); err != nil {
		return fmt.Errorf("create image store %s: %w", s.dir, err)
	}
	lp := filepath.Join(s.dir, ociLayoutFile)
	if _, err := os.Stat(lp); errors.Is(err, fs.ErrNotExist) {
		if err := atomicfile.Write(lp, []byte(ociLayoutContent), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// setEntry replaces (or adds) the index.json entry with e's name,
// atomically. The caller holds the store lock.
func (s *Store) setEntry(e v1.Descriptor) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.init(); err != nil {
		return err
	}
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	n := e.Annotations[AnnotationRefName]
	idx.Manifests = slices.DeleteFunc(idx.Manifests, func(d v1.Descriptor) bool { return d.Annotations[AnnotationRefName] == n })
	idx.Manifests = append(idx.Manifests, e)
	slices.SortStableFunc(idx.Manifests, func(a, b v1.Descriptor) int {
		return strings.Compare(a.Annotations[AnnotationRefName], b.Annotations[AnnotationRefName])
	})
	idx.SchemaVersion = 2
	idx.MediaType = types.OCIImageIndex
	b, err := json.MarshalIndent(idx, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(s.dir, indexFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("update image store index: %w", err)
	}
	return nil
}

// Put stores a local image or index (the lab's own images) under ref, every
// platform of an index included.
func (s *Store) Put(ref string, img any) error {
	r, err := ParseRef(ref)
	if err != nil {
		return err
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	var root v1.Descriptor
	switch x := img.(type) {
	case v1.Image:
		root, err = s.putImage(x)
	case v1.ImageIndex:
		root, err = s.putIndex(x, 0)
	default:
		return fmt.Errorf("put %s: %T is neither a v1.Image nor a v1.ImageIndex", r.Name(), img)
	}
	if err != nil {
		return fmt.Errorf("put %s: %w", r.Name(), err)
	}
	if r.Digest != nil && *r.Digest != root.Digest {
		return fmt.Errorf("put %s: the image's digest is %s", r, root.Digest)
	}
	if err := atomicfile.SyncDir(filepath.Join(s.dir, "blobs", "sha256")); err != nil {
		return err
	}
	root.Annotations = map[string]string{AnnotationRefName: r.Name()}
	return s.setEntry(root)
}

func (s *Store) putBytes(d v1.Descriptor, b []byte) error {
	_, err := s.writeBlob(d, whole(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }), nil)
	if err != nil {
		return fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	return nil
}

func rawDescriptor(mt types.MediaType, b []byte) v1.Descriptor {
	h, n, _ := v1.SHA256(bytes.NewReader(b))
	return v1.Descriptor{MediaType: mt, Size: n, Digest: h}
}

func (s *Store) putImage(img v1.Image) (v1.Descriptor, error) {
	m, err := img.Manifest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return v1.Descriptor{}, err
	}
	if err := s.putBytes(m.Config, cfg); err != nil {
		return v1.Descriptor{}, err
	}
	for _, ld := range m.Layers {
		if !distributable(ld) {
			continue
		}
		l, err := img.LayerByDigest(ld.Digest)
		if err != nil {
			return v1.Descriptor{}, err
		}
		if _, err := s.writeBlob(ld, whole(l.Compressed), nil); err != nil {
			return v1.Descriptor{}, fmt.Errorf("layer %s: %w", ld.Digest, err)
		}
	}
	raw, err := img.RawManifest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	mt, err := img.MediaType()
	if err != nil {
		return v1.Descriptor{}, err
	}
	d := rawDescriptor(mt, raw)
	return d, s.putBytes(d, raw)
}

func (s *Store) putIndex(idx v1.ImageIndex, depth int) (v1.Descriptor, error) {
	if depth > 4 {
		return v1.Descriptor{}, errors.New("indexes nested too deep")
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	for _, ch := range im.Manifests {
		switch {
		case isIndex(ch.MediaType):
			ci, err := idx.ImageIndex(ch.Digest)
			if err != nil {
				return v1.Descriptor{}, err
			}
			if _, err := s.putIndex(ci, depth+1); err != nil {
				return v1.Descriptor{}, err
			}
		case isImage(ch.MediaType):
			ci, err := idx.Image(ch.Digest)
			if err != nil {
				return v1.Descriptor{}, err
			}
			if _, err := s.putImage(ci); err != nil {
				return v1.Descriptor{}, err
			}
		}
	}
	raw, err := idx.RawManifest()
	if err != nil {
		return v1.Descriptor{}, err
	}
	mt, err := idx.MediaType()
	if err != nil {
		return v1.Descriptor{}, err
	}
	d := rawDescriptor(mt, raw)
	return d, s.putBytes(d, raw)
}
