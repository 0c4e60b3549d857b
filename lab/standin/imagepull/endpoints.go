package imagepull

import (
	"fmt"
	"net/url"
	"path"
	"strings"

	"github.com/siderolabs/talos/pkg/machinery/config/config"
)

// Endpoint is one registry mirror endpoint of the machine config
// (RegistryMirrorConfig document or machine.registries.mirrors).
type Endpoint struct {
	URL string // "http://10.99.0.1:5000", "https://factory.talos.dev"
	// OverridePath: the URL's path is used as is, no /v2 appended.
	OverridePath bool
}

// Mirror is the mirror configuration of one registry host (or "*").
type Mirror struct {
	Endpoints    []Endpoint
	SkipFallback bool
}

// Mirrors are keyed by registry host, "*" catching every other one.
type Mirrors map[string]Mirror

// FromConfig takes the mirrors from the machine config the way Talos's
// RegistriesConfigController does (internal/app/machined/pkg/controllers/
// cri/registries_config.go: cfg.RegistryMirrorConfigs(), endpoints and
// skipFallback as given). Talos's image cache, when ready, adds
// http://127.0.0.1:65xxx (registryd) first for every host: the stand-in
// has no image cache.
func FromConfig(m map[string]config.RegistryMirrorConfig) Mirrors {
	out := Mirrors{}
	for host, c := range m {
		var mi Mirror
		for _, e := range c.Endpoints() {
			mi.Endpoints = append(mi.Endpoints, Endpoint{URL: e.Endpoint(), OverridePath: e.OverridePath()})
		}
		mi.SkipFallback = c.SkipFallback()
		out[host] = mi
	}
	return out
}

// DefaultHost is containerd's upstream host for a namespace
// (core/remotes/docker/resolver.go DefaultHost).
func DefaultHost(host string) string {
	if host == dockerHub {
		return "registry-1.docker.io"
	}
	return host
}

// Endpoints are the endpoints tried, in order, for an image on host, as
// Talos computes them (internal/pkg/containers/image/resolver.go
// RegistryEndpoints, RegistryEndpointEntriesFromConfig): the host's own
// mirror config, else "*"'s, else none; its endpoints in order; then
// https://<DefaultHost(host)> unless skipFallback.
func Endpoints(m Mirrors, host string) []Endpoint {
	mi, ok := m[host]
	if !ok {
		mi, ok = m["*"]
	}
	upstream := Endpoint{URL: "https://" + DefaultHost(host)}
	if !ok {
		return []Endpoint{upstream}
	}
	out := append([]Endpoint(nil), mi.Endpoints...)
	if !mi.SkipFallback {
		out = append(out, upstream)
	}
	return out
}

// base is the endpoint's API root (Talos's RegistryHosts): /v2 when the
// URL has no path, the cleaned path with /v2 appended unless it ends so,
// or the path as is with OverridePath.
func base(e Endpoint) (*url.URL, error) {
	u, err := url.Parse(e.URL)
	if err != nil {
		return nil, fmt.Errorf("registry endpoint %q: %w", e.URL, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("registry endpoint %q: want http(s)://host[:port][/path]", e.URL)
	}
	if u.Path == "" {
		if !e.OverridePath {
			u.Path = "/v2"
		}
	} else {
		u.Path = path.Clean(u.Path)
		if !strings.HasSuffix(u.Path, "/v2") && !e.OverridePath {
			u.Path += "/v2"
		}
	}
	u.RawQuery, u.Fragment, u.RawPath = "", "", ""
	return u, nil
}

// RequestURL is the URL containerd requests for kind ("manifests" or
// "blobs") and object (tag or digest) of r at endpoint e
// (core/remotes/docker/resolver.go request, addNamespace): the
// repository under the endpoint's root, and ns=<r.Host> when the endpoint
// is not the registry itself (RegistryHost.isProxy: any other host, except
// registry-1.docker.io for docker.io).
func RequestURL(e Endpoint, r Ref, kind, object string) (string, error) {
	u, err := base(e)
	if err != nil {
		return "", err
	}
	u.Path = path.Join(u.Path, r.Repo, kind, object)
	if isProxy(u.Host, r.Host) {
		u.RawQuery = url.Values{"ns": {r.Host}}.Encode()
	}
	return u.String(), nil
}

func isProxy(endpointHost, refHost string) bool {
	return refHost != endpointHost && (refHost != dockerHub || endpointHost != "registry-1.docker.io")
}
