package imagepull

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Accept is what containerd's resolver sends for a manifest
// (core/remotes/docker/resolver.go NewResolver): both manifest and both
// index types, then anything.
var Accept = strings.Join([]string{
	string(types.DockerManifestSchema2), string(types.DockerManifestList),
	string(types.OCIManifestSchema1), string(types.OCIImageIndex), "*/*",
}, ", ")

// maxManifest bounds a manifest or an index (containerd: 4 MiB).
const maxManifest = 4 << 20

// Manifest is a parsed manifest or index: exactly one of Index and Image
// is set.
type Manifest struct {
	MediaType types.MediaType
	Index     *v1.IndexManifest
	Image     *v1.Manifest
}

// ParseManifest parses a manifest or an index. contentType is the
// response's Content-Type: the body's mediaType wins when the header is
// missing or generic; both given and different is an error. Every
// descriptor must carry a valid digest and a size.
func ParseManifest(contentType string, body []byte) (*Manifest, error) {
	if len(body) > maxManifest {
		return nil, fmt.Errorf("manifest of %d bytes (limit %d)", len(body), maxManifest)
	}
	var probe struct {
		SchemaVersion int64           `json:"schemaVersion"`
		MediaType     types.MediaType `json:"mediaType"`
		Manifests     json.RawMessage `json:"manifests"`
		Config        json.RawMessage `json:"config"`
	}
	if err := json.Unmarshal(body, &probe); err != nil {
		return nil, fmt.Errorf("manifest: %w", err)
	}
	if probe.SchemaVersion != 2 {
		return nil, fmt.Errorf("manifest schemaVersion %d, want 2", probe.SchemaVersion)
	}
	header := types.MediaType("")
	if contentType != "" {
		if mt, _, err := mime.ParseMediaType(contentType); err == nil && isManifestType(types.MediaType(mt)) {
			header = types.MediaType(mt)
		}
	}
	mt := probe.MediaType
	switch {
	case mt == "" && header != "":
		mt = header
	case mt != "" && header != "" && mt != header:
		return nil, fmt.Errorf("manifest says %s, the registry sent %s", mt, header)
	case mt == "" && probe.Manifests != nil:
		mt = types.OCIImageIndex
	case mt == "" && probe.Config != nil:
		mt = types.OCIManifestSchema1
	}
	m := &Manifest{MediaType: mt}
	switch mt {
	case types.OCIImageIndex, types.DockerManifestList:
		idx, err := v1.ParseIndexManifest(bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("index: %w", err)
		}
		for i, d := range idx.Manifests {
			if err := checkDescriptor(d); err != nil {
				return nil, fmt.Errorf("index entry %d: %w", i, err)
			}
		}
		m.Index = idx
	case types.OCIManifestSchema1, types.DockerManifestSchema2:
		im, err := v1.ParseManifest(bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("manifest: %w", err)
		}
		if err := checkDescriptor(im.Config); err != nil {
			return nil, fmt.Errorf("manifest config: %w", err)
		}
		for i, d := range im.Layers {
			if err := checkDescriptor(d); err != nil {
				return nil, fmt.Errorf("layer %d: %w", i, err)
			}
			if _, err := layerCompression(d.MediaType); err != nil {
				return nil, fmt.Errorf("layer %d: %w", i, err)
			}
		}
		m.Image = im
	default:
		return nil, fmt.Errorf("unsupported manifest media type %q", mt)
	}
	return m, nil
}

func isManifestType(mt types.MediaType) bool {
	switch mt {
	case types.OCIImageIndex, types.DockerManifestList, types.OCIManifestSchema1, types.DockerManifestSchema2:
		return true
	}
	return false
}

func checkDescriptor(d v1.Descriptor) error {
	if d.Digest.Algorithm != "sha256" || len(d.Digest.Hex) != 64 {
		return fmt.Errorf("digest %q is not sha256", d.Digest)
	}
	if d.Size < 0 {
		return fmt.Errorf("%s: size %d", d.Digest, d.Size)
	}
	return nil
}

// ErrNoPlatform: the index has no manifest for the machine's platform.
var ErrNoPlatform = errors.New("no manifest for this platform")

// SelectPlatform picks the first image manifest of idx for linux/arch
// (containerd's platforms.Default() matcher, LimitManifests to 1; arm64's
// variant "" and "v8" are the same).
func SelectPlatform(idx *v1.IndexManifest, arch string) (v1.Descriptor, error) {
	var seen []string
	for _, d := range idx.Manifests {
		if d.Platform == nil {
			continue
		}
		p := d.Platform
		seen = append(seen, p.String())
		if !isManifestType(d.MediaType) || d.MediaType == types.OCIImageIndex || d.MediaType == types.DockerManifestList {
			continue
		}
		if p.OS == "linux" && p.Architecture == arch && (p.Variant == "" || arch == "arm64" && p.Variant == "v8") {
			return d, nil
		}
	}
	return v1.Descriptor{}, fmt.Errorf("%w linux/%s (index has %v)", ErrNoPlatform, arch, seen)
}

// compression of a layer blob.
type compression int

const (
	uncompressed compression = iota
	gzipped
)

// layerCompression is how a layer is stored: plain or gzip tar. zstd
// (Talos's own images may use it) is not supported by this small client.
func layerCompression(mt types.MediaType) (compression, error) {
	switch mt {
	case types.OCIUncompressedLayer, types.OCIUncompressedRestrictedLayer:
		return uncompressed, nil
	case types.OCILayer, types.DockerLayer, types.OCIRestrictedLayer:
		return gzipped, nil
	case types.OCILayerZStd:
		return 0, fmt.Errorf("zstd layer (%s): the stand-in reads tar and tar+gzip layers only", mt)
	}
	return 0, fmt.Errorf("unsupported layer media type %q", mt)
}
