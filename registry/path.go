package registry

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Kind is what a distribution API request asks for.
type Kind string

const (
	KindBase     Kind = "base"     // GET /v2/
	KindManifest Kind = "manifest" // /v2/<name>/manifests/<reference>
	KindBlob     Kind = "blob"     // /v2/<name>/blobs/<digest>
)

// Request is a parsed distribution API path.
type Request struct {
	Kind      Kind
	Registry  string // the upstream registry host the image belongs to
	Repo      string // repository path on that registry (library/busybox)
	Reference string // tag or sha256:<hex> (manifests), sha256:<hex> (blobs)
	// Via says how Registry was found: "ns" (containerd's query parameter),
	// "path" (a /v2/<host>/<repo> path), or "default" (Docker Hub).
	Via string
}

// Repository is the fully qualified repository (registry.k8s.io/pause).
func (r Request) Repository() string { return r.Registry + "/" + r.Repo }

// ErrBadPath is wrapped by ParsePath for paths that are no distribution
// API read.
var ErrBadPath = errors.New("not a registry API path")

var (
	tagRE    = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	digestRE = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
)

// ParsePath decides which image a request is for, from the URL path and
// the ns query parameter.
//
// containerd, when it talks to a mirror configured in hosts.toml (as Talos
// writes it), keeps the upstream's path /v2/<repo>/... and names the
// upstream registry in ?ns=<host>: containerd v1.6.20
// remotes/docker/resolver.go (*request).addNamespace, called from
// resolver.go (resolve) and fetcher.go (fetch) with refspec.Hostname(),
// adds it whenever the host is not the image's own registry
// (remotes/docker/registry.go RegistryHost.isProxy; docker.io images get
// ns=docker.io). Talos's own image cache registry reads the same parameter:
// talos v1.13.0 internal/app/machined/pkg/system/services/registry/params.go
// (extractParams: req.URL.Query().Get("ns")).
//
// Clients that cannot send ns (skopeo, curl) may put the registry host first
// in the path instead: /v2/registry.k8s.io/pause/manifests/3.10; a first
// element counts as a host when it has a dot or a colon or is "localhost".
// Neither: Docker Hub, with library/ for one-element names.
func ParsePath(path, ns string) (Request, error) {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		if path == "/v2" {
			return Request{Kind: KindBase}, nil
		}
		return Request{}, fmt.Errorf("%q: %w", path, ErrBadPath)
	}
	if rest == "" {
		return Request{Kind: KindBase}, nil
	}
	var req Request
	var repo string
	switch i, j := strings.LastIndex(rest, "/manifests/"), strings.LastIndex(rest, "/blobs/"); {
	case i > 0 && i > j:
		req.Kind, repo, req.Reference = KindManifest, rest[:i], rest[i+len("/manifests/"):]
	case j > 0:
		req.Kind, repo, req.Reference = KindBlob, rest[:j], rest[j+len("/blobs/"):]
	default:
		return Request{}, fmt.Errorf("%q: %w", path, ErrBadPath)
	}
	switch {
	case digestRE.MatchString(req.Reference):
	case req.Kind == KindManifest && tagRE.MatchString(req.Reference):
	default:
		return Request{}, fmt.Errorf("%q: bad reference %q: %w", path, req.Reference, ErrBadPath)
	}
	host, tail, hasSlash := strings.Cut(repo, "/")
	switch {
	case ns != "":
		if !isHost(ns) || !validHost(ns) {
			return Request{}, fmt.Errorf("ns=%q is no registry host: %w", ns, ErrBadPath)
		}
		req.Registry, req.Repo, req.Via = ns, repo, "ns"
	case hasSlash && isHost(host):
		if !validHost(host) {
			return Request{}, fmt.Errorf("%q is no registry host: %w", host, ErrBadPath)
		}
		req.Registry, req.Repo, req.Via = host, tail, "path"
	default:
		req.Registry, req.Repo, req.Via = DockerHub, repo, "default"
	}
	if req.Registry == "index.docker.io" || req.Registry == "registry-1.docker.io" {
		req.Registry = DockerHub
	}
	if req.Registry == DockerHub && !strings.Contains(req.Repo, "/") {
		req.Repo = "library/" + req.Repo
	}
	if !validRepo(req.Repo) {
		return Request{}, fmt.Errorf("%q: bad repository name %q: %w", path, req.Repo, ErrBadPath)
	}
	return req, nil
}

var hostRE = regexp.MustCompile(`^(localhost|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$`)

func validHost(h string) bool { return len(h) <= 255 && hostRE.MatchString(h) }
