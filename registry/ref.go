package registry

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

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
		if !tagRE.MatchString(r.Tag) {
			return Ref{}, fmt.Errorf("image reference %q: bad tag %q", s, r.Tag)
		}
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
	if !validHost(r.Registry) {
		return Ref{}, fmt.Errorf("image reference %q: bad registry host %q", s, r.Registry)
	}
	if !validRepo(r.Repo) {
		return Ref{}, fmt.Errorf("image reference %q: bad repository %q (lowercase letters, digits and . _ - between them, / between path components)", s, r.Repo)
	}
	return r, nil
}

// repoComponentRE is one path component of a repository, as the
// distribution reference grammar has it.
var repoComponentRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$`)

func validRepo(repo string) bool {
	if repo == "" || len(repo) > 255 {
		return false
	}
	for _, c := range strings.Split(repo, "/") {
		if !repoComponentRE.MatchString(c) {
			return false
		}
	}
	return true
}

// isHost reports whether the first element of a reference or of a request
// path names a registry host rather than a repository path component.
func isHost(s string) bool {
	return s == "localhost" || strings.ContainsAny(s, ".:")
}
