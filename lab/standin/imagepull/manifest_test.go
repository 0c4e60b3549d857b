package imagepull

import (
	"errors"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	hexB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

const ociManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + hexA + `","size":10},
"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:` + hexB + `","size":20}]}`

const ociIndex = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + hexA + `","size":1,"platform":{"os":"linux","architecture":"amd64"}},
{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:` + hexB + `","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}]}`

func TestParseManifest(t *testing.T) {
	tests := []struct {
		name, contentType, body string
		want                    types.MediaType // "" = an error
		errSays                 string
	}{
		{"OCI manifest", "application/vnd.oci.image.manifest.v1+json", ociManifest, types.OCIManifestSchema1, ""},
		{"OCI index, generic header", "application/json", ociIndex, types.OCIImageIndex, ""},
		{"no mediaType in the body: the header's", string(types.DockerManifestSchema2),
			strings.Replace(ociManifest, `"mediaType":"application/vnd.oci.image.manifest.v1+json",`, "", 1), types.DockerManifestSchema2, ""},
		{"neither: an index by its manifests", "", `{"schemaVersion":2,"manifests":[]}`, types.OCIImageIndex, ""},
		{"header and body disagree", string(types.OCIImageIndex), ociManifest, "", "registry sent"},
		{"schema 1", "", `{"schemaVersion":1}`, "", "schemaVersion 1"},
		{"not JSON", "", `<html>`, "", "manifest"},
		{"zstd layer", "", strings.Replace(ociManifest, "tar+gzip", "tar+zstd", 1), "", "zstd"},
		{"sha512 digest", "", strings.Replace(ociManifest, "sha256:"+hexB, "sha512:"+hexB+hexB, 1), "", "not sha256"},
		{"short digest", "", strings.Replace(ociManifest, "sha256:"+hexB, "sha256:abc", 1), "", ""},
		{"negative size", "", strings.Replace(ociManifest, `"size":20`, `"size":-1`, 1), "", "size -1"},
		{"a config media type", "", `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.config.v1+json"}`, "", "unsupported manifest media type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := ParseManifest(tt.contentType, []byte(tt.body))
			if tt.want == "" {
				if err == nil {
					t.Fatalf("ParseManifest = %+v, want an error", m)
				}
				if !strings.Contains(err.Error(), tt.errSays) {
					t.Fatalf("error %q, want it to say %q", err, tt.errSays)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.MediaType != tt.want || (m.Index == nil) == (m.Image == nil) {
				t.Fatalf("media type %s (index %v, image %v), want %s", m.MediaType, m.Index != nil, m.Image != nil, tt.want)
			}
		})
	}
}

func TestSelectPlatform(t *testing.T) {
	m, err := ParseManifest("", []byte(ociIndex))
	if err != nil {
		t.Fatal(err)
	}
	for arch, want := range map[string]string{"amd64": hexA, "arm64": hexB} {
		d, err := SelectPlatform(m.Index, arch)
		if err != nil || d.Digest.Hex != want {
			t.Errorf("SelectPlatform(%s) = %s, %v; want %s", arch, d.Digest, err, want)
		}
	}
	if _, err := SelectPlatform(m.Index, "riscv64"); !errors.Is(err, ErrNoPlatform) || !strings.Contains(err.Error(), "linux/arm64/v8") {
		t.Errorf("riscv64: %v, want ErrNoPlatform listing the index's platforms", err)
	}
	// Windows and a nested index are not picked.
	idx := &v1.IndexManifest{Manifests: []v1.Descriptor{
		{MediaType: types.OCIManifestSchema1, Platform: &v1.Platform{OS: "windows", Architecture: "amd64"}},
		{MediaType: types.OCIImageIndex, Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}},
		{MediaType: types.OCIManifestSchema1, Platform: &v1.Platform{OS: "linux", Architecture: "amd64", Variant: "v3"}},
	}}
	if d, err := SelectPlatform(idx, "amd64"); err == nil {
		t.Errorf("picked %+v from an index with no plain linux/amd64 manifest", d.Platform)
	}
}
