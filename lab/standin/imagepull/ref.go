package imagepull

import (
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Ref is a parsed image reference, named the way containerd names it:
// Host is the registry's namespace (docker.io for Docker Hub, as
// reference.ParseDockerRef gives it, not go-containerregistry's
// index.docker.io), the key of the mirror configuration.
type Ref struct {
	Host   string // "factory.talos.dev", "docker.io", "127.0.0.1:5000"
	Repo   string // "metal-installer/<schematic>", "library/alpine"
	Tag    string // "" when the reference has a digest only
	Digest string // "sha256:<hex>" when the reference pins one
}

// dockerHub is containerd's namespace for Docker Hub; go-containerregistry
// calls it index.docker.io.
const dockerHub = "docker.io"

// ParseRef parses an image reference (Talos normalizes with
// reference.ParseDockerRef: a reference without a tag gets "latest").
func ParseRef(s string) (Ref, error) {
	r, err := name.ParseReference(s, name.StrictValidation)
	if err != nil {
		// Strict validation wants a tag or a digest; accept a bare name
		// as Talos does, with "latest".
		r2, err2 := name.ParseReference(s)
		if err2 != nil {
			return Ref{}, fmt.Errorf("image %q: %w", s, err2)
		}
		r = r2
	}
	out := Ref{Host: r.Context().RegistryStr(), Repo: r.Context().RepositoryStr()}
	if out.Host == name.DefaultRegistry {
		out.Host = dockerHub
	}
	switch r := r.(type) {
	case name.Tag:
		out.Tag = r.TagStr()
	case name.Digest:
		out.Digest = r.DigestStr()
		if _, err := v1.NewHash(out.Digest); err != nil {
			return Ref{}, fmt.Errorf("image %q: %w", s, err)
		}
	}
	if out.Host == "" || out.Repo == "" || (out.Tag == "" && out.Digest == "") {
		return Ref{}, fmt.Errorf("image %q: no registry, repository or tag", s)
	}
	return out, nil
}

// Object is what the manifest request names: the digest when pinned (as
// containerd resolves "name@digest"), else the tag.
func (r Ref) Object() string {
	if r.Digest != "" {
		return r.Digest
	}
	return r.Tag
}

// String is the normalized reference.
func (r Ref) String() string {
	s := r.Host + "/" + r.Repo
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest
	}
	return s
}
