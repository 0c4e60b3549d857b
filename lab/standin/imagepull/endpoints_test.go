package imagepull

import (
	"slices"
	"testing"
)

func TestEndpoints(t *testing.T) {
	mirror := Endpoint{URL: "http://10.99.0.1:5000"}
	second := Endpoint{URL: "http://10.99.0.2:5000/cache", OverridePath: true}
	tests := []struct {
		name    string
		mirrors Mirrors
		host    string
		want    []Endpoint
	}{
		{"no mirrors: the registry itself", nil, "factory.talos.dev", []Endpoint{{URL: "https://factory.talos.dev"}}},
		{"docker.io goes to registry-1", nil, "docker.io", []Endpoint{{URL: "https://registry-1.docker.io"}}},
		{"a mirror, then the fallback", Mirrors{"factory.talos.dev": {Endpoints: []Endpoint{mirror}}}, "factory.talos.dev",
			[]Endpoint{mirror, {URL: "https://factory.talos.dev"}}},
		{"skipFallback: the mirrors only", Mirrors{"factory.talos.dev": {Endpoints: []Endpoint{mirror, second}, SkipFallback: true}}, "factory.talos.dev",
			[]Endpoint{mirror, second}},
		{"another host's mirror does not apply", Mirrors{"ghcr.io": {Endpoints: []Endpoint{mirror}, SkipFallback: true}}, "factory.talos.dev",
			[]Endpoint{{URL: "https://factory.talos.dev"}}},
		{"* catches the rest", Mirrors{"*": {Endpoints: []Endpoint{mirror}}}, "ghcr.io",
			[]Endpoint{mirror, {URL: "https://ghcr.io"}}},
		{"the host's own entry beats *", Mirrors{"*": {Endpoints: []Endpoint{second}}, "ghcr.io": {Endpoints: []Endpoint{mirror}, SkipFallback: true}}, "ghcr.io",
			[]Endpoint{mirror}},
		{"skipFallback without endpoints: nothing to try", Mirrors{"ghcr.io": {SkipFallback: true}}, "ghcr.io", nil},
		{"docker.io mirror falls back to registry-1", Mirrors{"docker.io": {Endpoints: []Endpoint{mirror}}}, "docker.io",
			[]Endpoint{mirror, {URL: "https://registry-1.docker.io"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Endpoints(tt.mirrors, tt.host); !slices.Equal(got, tt.want) {
				t.Errorf("Endpoints(%q) = %v, want %v", tt.host, got, tt.want)
			}
		})
	}
}

func TestRequestURL(t *testing.T) {
	installer := Ref{Host: "factory.talos.dev", Repo: "metal-installer/abc", Tag: "v1.13.0"}
	hub := Ref{Host: "docker.io", Repo: "library/alpine", Tag: "3"}
	local := Ref{Host: "127.0.0.1:5000", Repo: "x/y", Tag: "1"}
	const dg = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		ep           Endpoint
		ref          Ref
		kind, object string
		want         string
	}{
		// A mirror: /v2 added, ns names the image's registry.
		{Endpoint{URL: "http://10.99.0.1:5000"}, installer, "manifests", "v1.13.0",
			"http://10.99.0.1:5000/v2/metal-installer/abc/manifests/v1.13.0?ns=factory.talos.dev"},
		{Endpoint{URL: "http://10.99.0.1:5000/"}, installer, "blobs", dg,
			"http://10.99.0.1:5000/v2/metal-installer/abc/blobs/" + dg + "?ns=factory.talos.dev"},
		// A path: cleaned, /v2 appended unless it ends so.
		{Endpoint{URL: "https://mirror.example/cache//"}, installer, "manifests", "v1.13.0",
			"https://mirror.example/cache/v2/metal-installer/abc/manifests/v1.13.0?ns=factory.talos.dev"},
		{Endpoint{URL: "https://mirror.example/cache/v2"}, installer, "manifests", "v1.13.0",
			"https://mirror.example/cache/v2/metal-installer/abc/manifests/v1.13.0?ns=factory.talos.dev"},
		// OverridePath: the path as is (even none).
		{Endpoint{URL: "https://mirror.example/api/factory", OverridePath: true}, installer, "manifests", "v1.13.0",
			"https://mirror.example/api/factory/metal-installer/abc/manifests/v1.13.0?ns=factory.talos.dev"},
		{Endpoint{URL: "https://mirror.example", OverridePath: true}, installer, "manifests", "v1.13.0",
			"https://mirror.example/metal-installer/abc/manifests/v1.13.0?ns=factory.talos.dev"},
		// The registry itself: no ns.
		{Endpoint{URL: "https://factory.talos.dev"}, installer, "manifests", "v1.13.0",
			"https://factory.talos.dev/v2/metal-installer/abc/manifests/v1.13.0"},
		{Endpoint{URL: "https://registry-1.docker.io"}, hub, "manifests", "3",
			"https://registry-1.docker.io/v2/library/alpine/manifests/3"},
		{Endpoint{URL: "https://127.0.0.1:5000"}, local, "manifests", "1", "https://127.0.0.1:5000/v2/x/y/manifests/1"},
		// Same address, another port: a mirror.
		{Endpoint{URL: "http://127.0.0.1:5001"}, local, "manifests", "1", "http://127.0.0.1:5001/v2/x/y/manifests/1?ns=127.0.0.1%3A5000"},
		// A query or fragment in the endpoint is dropped.
		{Endpoint{URL: "http://10.99.0.1:5000?x=1#f"}, installer, "manifests", "v1.13.0",
			"http://10.99.0.1:5000/v2/metal-installer/abc/manifests/v1.13.0?ns=factory.talos.dev"},
	}
	for _, tt := range tests {
		got, err := RequestURL(tt.ep, tt.ref, tt.kind, tt.object)
		if err != nil || got != tt.want {
			t.Errorf("RequestURL(%+v, %s, %s) = %q, %v; want %q", tt.ep, tt.ref, tt.object, got, err, tt.want)
		}
	}
	for _, bad := range []string{"10.99.0.1:5000", "ftp://x", "http://", "http://a b"} {
		if got, err := RequestURL(Endpoint{URL: bad}, installer, "manifests", "v1"); err == nil {
			t.Errorf("RequestURL(%q) = %q, want an error", bad, got)
		}
	}
}

func TestParseRef(t *testing.T) {
	const dg = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		in   string
		want Ref
	}{
		{"factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.13.0",
			Ref{Host: "factory.talos.dev", Repo: "metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba", Tag: "v1.13.0"}},
		{"ghcr.io/siderolabs/installer:v1.13.0", Ref{Host: "ghcr.io", Repo: "siderolabs/installer", Tag: "v1.13.0"}},
		{"alpine", Ref{Host: "docker.io", Repo: "library/alpine", Tag: "latest"}},
		{"docker.io/library/alpine:3", Ref{Host: "docker.io", Repo: "library/alpine", Tag: "3"}},
		{"127.0.0.1:5000/x/y@" + dg, Ref{Host: "127.0.0.1:5000", Repo: "x/y", Digest: dg}},
	}
	for _, tt := range tests {
		got, err := ParseRef(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseRef(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "http://factory.talos.dev/x:1", "x@sha256:12", "x:", "docker.io/UPPER/x:1", "docker.io//..", "a/../b", "a/./b:1"} {
		if got, err := ParseRef(bad); err == nil {
			t.Errorf("ParseRef(%q) = %+v, want an error", bad, got)
		}
	}
}

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{
		"usr/install/amd64/vmlinuz": "usr/install/amd64/vmlinuz",
		"./usr/x":                   "usr/x",
		"/usr/x":                    "usr/x",
		"../../etc/passwd":          "etc/passwd",
		"usr/../../x":               "x",
		"usr/.wh.x":                 "",
		"/":                         "",
		".":                         "",
	} {
		got, ok := CleanPath(in)
		if got != want || ok != (want != "") {
			t.Errorf("CleanPath(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
