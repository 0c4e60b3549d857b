// Package ociimage builds rackboot's own container image: one layer
// holding a static binary, no base image, for each platform, as an OCI
// image index. The build is reproducible: the same binaries, version and
// timestamp give the same bytes and so the same digests (fixed mtimes,
// owners and modes in the tar, a gzip header without a name or time, and
// JSON from fixed inputs).
package ociimage

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Repository is where rackboot's image is published and where the rack's
// machines look for it: ghcr.io is one of the registries every machine
// config sends to the laptop's mirror (profiles.DefaultRegistryHosts), so
// a cluster pulls this name from rackboot during handoff, and from ghcr.io
// itself once the image is published there.
const Repository = "ghcr.io/dotfile/rackboot"

// Source is the org.opencontainers.image.source label's default.
const Source = "https://github.com/dotfile/rackboot"

// BinaryPath is where the binary is inside the image; it is the
// entrypoint.
const BinaryPath = "/rackboot"

// User is the image's default user: 65532, distroless's "nonroot". A
// container that must be root (the disk-zeroing Job) says so in its
// securityContext.
const User = "65532:65532"

// Label keys of the OCI image spec's annotations, set as config labels.
const (
	LabelVersion  = "org.opencontainers.image.version"
	LabelSource   = "org.opencontainers.image.source"
	LabelRevision = "org.opencontainers.image.revision"
)

// ImageName is the reference of rackboot's image for a version:
// ghcr.io/dotfile/rackboot:<version>. A version that is not a valid tag
// (a dev build's "dev" is; "+" is not) has its other characters replaced
// by "-".
func ImageName(version string) string {
	return Repository + ":" + Tag(version)
}

// Tag turns a version into a valid image tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127};
// an empty version is "dev".
func Tag(version string) string {
	var b strings.Builder
	for i, r := range version {
		ok := r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || (i > 0 && (r == '.' || r == '-'))
		if !ok {
			r = '-'
			if i == 0 {
				r = '_'
			}
		}
		b.WriteRune(r)
		if b.Len() == 128 {
			break
		}
	}
	if b.Len() == 0 {
		return "dev"
	}
	return b.String()
}

// Binary is one platform's binary.
type Binary struct {
	OS, Arch string // "linux", "amd64"
	Path     string // the file to put in the image
}

// Config says what to build.
type Config struct {
	Binaries []Binary
	Version  string // the version label and, through Tag, the tag
	Revision string // the commit (label; may be empty)
	Source   string // the source label; default Source
	// Created is every timestamp in the image (the tar's mtimes and the
	// config's created): SOURCE_DATE_EPOCH's time, see Epoch.
	Created time.Time
}

// Epoch reads SOURCE_DATE_EPOCH (https://reproducible-builds.org/specs/source-date-epoch/)
// as a time; unset or empty is the Unix epoch.
func Epoch(getenv func(string) string) (time.Time, error) {
	v := getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: write the build's time as seconds since 1970 (git log -1 --format=%%ct)", v)
	}
	return time.Unix(n, 0).UTC(), nil
}

// Build makes the image index: one single-layer image per binary, sorted
// by platform.
func Build(cfg Config) (v1.ImageIndex, error) {
	if len(cfg.Binaries) == 0 {
		return nil, errors.New("no binaries: give at least one OS/ARCH=FILE")
	}
	if cfg.Source == "" {
		cfg.Source = Source
	}
	bins := slices.Clone(cfg.Binaries)
	slices.SortFunc(bins, func(a, b Binary) int { return strings.Compare(a.OS+"/"+a.Arch, b.OS+"/"+b.Arch) })
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var adds []mutate.IndexAddendum
	for i, b := range bins {
		if i > 0 && b.OS == bins[i-1].OS && b.Arch == bins[i-1].Arch {
			return nil, fmt.Errorf("two binaries for %s/%s", b.OS, b.Arch)
		}
		img, err := image(cfg, b)
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Platform:  &v1.Platform{OS: b.OS, Architecture: b.Arch},
		}})
	}
	return mutate.AppendManifests(idx, adds...), nil
}

// image is one platform's image.
func image(cfg Config, b Binary) (v1.Image, error) {
	data, err := os.ReadFile(b.Path)
	if err != nil {
		return nil, fmt.Errorf("binary for %s/%s: %w", b.OS, b.Arch, err)
	}
	gz, err := Layer(data, cfg.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(gz)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("layer for %s/%s: %w", b.OS, b.Arch, err)
	}
	diffID, err := layer.DiffID()
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: cfg.Created}
	labels := map[string]string{LabelVersion: cfg.Version, LabelSource: cfg.Source}
	if cfg.Revision != "" {
		labels[LabelRevision] = cfg.Revision
	}
	cf := &v1.ConfigFile{
		Architecture: b.Arch,
		OS:           b.OS,
		Created:      created,
		Config: v1.Config{
			Entrypoint: []string{BinaryPath},
			User:       User,
			Labels:     labels,
			Env:        []string{"PATH=/"},
		},
		RootFS:  v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{diffID}},
		History: []v1.History{{Created: created, CreatedBy: "rackboot ociimage: " + BinaryPath + " " + cfg.Version}},
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return nil, fmt.Errorf("image for %s/%s: %w", b.OS, b.Arch, err)
	}
	// The whole config, written last: it replaces the diff ids and
	// history AppendLayers made with the same diff id and a fixed history.
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image for %s/%s: %w", b.OS, b.Arch, err)
	}
	return img, nil
}

// Layer is the gzipped tar of the image's one file: BinaryPath, mode
// 0755, owned by 0:0, mtime t, USTAR/PAX without names of users or groups;
// the gzip header has no name and no time.
func Layer(binary []byte, t time.Time) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	zw.ModTime = time.Time{}
	zw.OS = 3 // Unix, whatever the building machine
	tw := tar.NewWriter(zw)
	hdr := &tar.Header{
		Typeflag: tar.TypeReg,
		Name:     strings.TrimPrefix(BinaryPath, "/"),
		Mode:     0o755,
		Size:     int64(len(binary)),
		ModTime:  t,
		Format:   tar.FormatPAX,
	}
	if t.Unix() < 1<<33 && t.Nanosecond() == 0 {
		hdr.Format = tar.FormatUSTAR
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, fmt.Errorf("layer tar: %w", err)
	}
	if _, err := tw.Write(binary); err != nil {
		return nil, fmt.Errorf("layer tar: %w", err)
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer tar: %w", err)
	}
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("layer gzip: %w", err)
	}
	return buf.Bytes(), nil
}

// WriteLayout writes idx as an OCI image layout in dir (created; an
// existing layout there is replaced), index.json holding one entry named
// ref (org.opencontainers.image.ref.name), so `skopeo inspect
// oci:DIR:REF` and `skopeo copy` find it.
func WriteLayout(dir string, idx v1.ImageIndex, ref string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("replace %s: %w", dir, err)
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("write OCI layout %s: %w", dir, err)
	}
	if err := p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": ref,
	})); err != nil {
		return fmt.Errorf("write OCI layout %s: %w", dir, err)
	}
	return nil
}
