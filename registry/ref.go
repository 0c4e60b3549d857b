package registry

import (
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// DockerHub is the registry host short image names (busybox, coredns/coredns)
// belong to, as the store and the server name it.
const DockerHub = "docker.io"

// Ref is a normalized image reference: the registry host, the repository
// path on it, and a tag, a digest or both.
type Ref struct {
	Registry string   // e.g. registry.k8s.io, docker.io, 127.0.0.1:5000
	Repo     string   // e.g. pause, library/busybox
	Tag      string   // "" when given only by digest
	Digest   *v1.Hash // nil when given only by tag
}

// Repository is the fully qualified repository, registry host included
// (registry.k8s.io/pause, docker.io/library/busybox).
func (r Ref) Repository() string { return r.Registry + "/" + r.Repo }

// Name is the name the store files the image under (the
// org.opencontainers.image.ref.name annotation): repository:tag, or
// repository@digest for a reference given only by digest.
func (r Ref) Name() string {
	if r.Tag != "" {
		return r.Repository() + ":" + r.Tag
	}
	return r.Repository() + "@" + r.Digest.String()
}

// String is the reference as given, normalized: tag and digest both when
// both were given.
func (r Ref) String() string {
	s := r.Repository()
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != nil {
		s += "@" + r.Digest.String()
	}
	return s
}

// ParseRef normalizes an image reference the way docker and containerd do:
// a first path element without a dot or a colon (and not "localhost") is a
// Docker Hub repository (docker.io, library/ for one-element names);
// index.docker.io is docker.io; no tag and no digest means :latest.
func ParseRef(s string) (Ref, error) {
	if s == "" {
		return Ref{}, errors.New("empty image reference")
	}
	var r Ref
	rest := s
	if i := strings.IndexByte(rest, '@'); i >= 0 {
		h, err := v1.NewHash(rest[i+1:])
		if err != nil {
			return Ref{}, fmt.Errorf("image reference %q: bad digest: %w", s, err)
		}
		if h.Algorithm != "sha256" {
			return Ref{}, fmt.Errorf("image reference %q: only sha256 digests are supported", s)
		}
		r.Digest = &h
		rest = rest[:i]
	}
	if i := strings.LastIndexByte(rest, ':'); i >= 0 && !strings.Contains(rest[i:], "/") {
		r.Tag = rest[i+1:]
		rest = rest[:i]
	}
	host, repo, ok := strings.Cut(rest, "/")
	if !ok || !isHost(host) {
		host, repo = DockerHub, rest
	}
	if host == "index.docker.io" || host == "registry-1.docker.io" {
		host = DockerHub
	}
	if host == DockerHub && !strings.Contains(repo, "/") {
		repo = "library/" + repo
	}
	r.Registry, r.Repo = host, repo
	if r.Tag == "" && r.Digest == nil {
		r.Tag = "latest"
	}
	// go-containerregistry's strict validation checks the characters
	// (lowercase repository path components, tag grammar, host:port).
	if _, err := name.NewRepository(r.Repository(), name.StrictValidation); err != nil {
		return Ref{}, fmt.Errorf("image reference %q: %w", s, err)
	}
	if r.Tag != "" {
		if _, err := name.NewTag(r.Repository()+":"+r.Tag, name.StrictValidation); err != nil {
			return Ref{}, fmt.Errorf("image reference %q: %w", s, err)
		}
	}
	return r, nil
}

// isHost reports whether the first element of a reference or of a request
// path names a registry host rather than a repository path component.
func isHost(s string) bool {
	return s == "localhost" || strings.ContainsAny(s, ".:")
}
