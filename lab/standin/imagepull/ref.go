package imagepull

import (
	"fmt"

	"github.com/distribution/reference"
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

// dockerHub is containerd's namespace for Docker Hub.
const dockerHub = "docker.io"

// ParseRef parses an image reference the way Talos does, with
// reference.ParseDockerRef (distribution/reference, which containerd and
// Talos's image pulls use): Docker Hub names get docker.io and library/, a
// reference without a tag gets "latest", and one with both a tag and a
// digest keeps the digest. Its grammar refuses what a registry path cannot
// hold ("..", empty components, upper case).
func ParseRef(s string) (Ref, error) {
	named, err := reference.ParseDockerRef(s)
	if err != nil {
		return Ref{}, fmt.Errorf("image %q: %w", s, err)
	}
	out := Ref{Host: reference.Domain(named), Repo: reference.Path(named)}
	if t, ok := named.(reference.Tagged); ok {
		out.Tag = t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		out.Digest = d.Digest().String()
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
