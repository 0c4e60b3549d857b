package registry

import (
	"errors"
	"strings"
	"testing"
)

const dg = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParsePath(t *testing.T) {
	tests := []struct {
		path, ns string
		want     Request
		err      bool
	}{
		{path: "/v2/", want: Request{Kind: KindBase}},
		{path: "/v2", want: Request{Kind: KindBase}},
		// containerd's mirror form: ns names the registry.
		{path: "/v2/coredns/coredns/manifests/v1.12.1", ns: "registry.k8s.io",
			want: Request{KindManifest, "registry.k8s.io", "coredns/coredns", "v1.12.1", "ns"}},
		{path: "/v2/library/busybox/blobs/" + dg, ns: "docker.io",
			want: Request{KindBlob, "docker.io", "library/busybox", dg, "ns"}},
		{path: "/v2/pause/manifests/3.10", ns: "registry.k8s.io",
			want: Request{KindManifest, "registry.k8s.io", "pause", "3.10", "ns"}},
		{path: "/v2/siderolabs/installer/manifests/" + dg, ns: "ghcr.io",
			want: Request{KindManifest, "ghcr.io", "siderolabs/installer", dg, "ns"}},
		// ns with a port; a short docker.io name gets library/.
		{path: "/v2/busybox/manifests/1.36", ns: "index.docker.io",
			want: Request{KindManifest, "docker.io", "library/busybox", "1.36", "ns"}},
		{path: "/v2/x/manifests/1", ns: "127.0.0.1:5000",
			want: Request{KindManifest, "127.0.0.1:5000", "x", "1", "ns"}},
		// path form for skopeo and curl.
		{path: "/v2/registry.k8s.io/pause/manifests/3.10",
			want: Request{KindManifest, "registry.k8s.io", "pause", "3.10", "path"}},
		{path: "/v2/factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba/manifests/v1.13.0",
			want: Request{KindManifest, "factory.talos.dev", "metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba", "v1.13.0", "path"}},
		{path: "/v2/localhost/app/blobs/" + dg,
			want: Request{KindBlob, "localhost", "app", dg, "path"}},
		{path: "/v2/docker.io/busybox/manifests/latest",
			want: Request{KindManifest, "docker.io", "library/busybox", "latest", "path"}},
		{path: "/v2/127.0.0.1:5000/a/b/manifests/v1",
			want: Request{KindManifest, "127.0.0.1:5000", "a/b", "v1", "path"}},
		// neither: Docker Hub.
		{path: "/v2/busybox/manifests/1.36",
			want: Request{KindManifest, "docker.io", "library/busybox", "1.36", "default"}},
		{path: "/v2/coredns/coredns/manifests/1",
			want: Request{KindManifest, "docker.io", "coredns/coredns", "1", "default"}},
		// a repository may contain "blobs" or "manifests" as a component.
		{path: "/v2/a/blobs/manifests/1", ns: "r.io",
			want: Request{KindManifest, "r.io", "a/blobs", "1", "ns"}},
		// refused
		{path: "/v2/busybox/blobs/latest", err: true}, // blobs only by digest
		{path: "/v2/busybox/tags/list", err: true},
		{path: "/v2/_catalog", err: true},
		{path: "/v2/Busybox/manifests/1", err: true},
		{path: "/v2/busybox/manifests/", err: true},
		{path: "/v2/busybox/manifests/a/b", err: true},
		{path: "/v2/busybox/manifests/sha256:abc", err: true},
		{path: "/v2/busybox/manifests/.x", err: true},
		{path: "/v2/busybox/manifests/" + strings.Repeat("a", 129), err: true},
		{path: "/v2//manifests/1", err: true},
		{path: "/v2/a//b/manifests/1", err: true},
		{path: "/v2/../manifests/1", err: true},
		{path: "/v2/x/manifests/1", ns: "evil.io/x", err: true},
		{path: "/v2/x/manifests/1", ns: "a b", err: true},
		{path: "/v3/x/manifests/1", err: true},
		{path: "/", err: true},
	}
	for _, tc := range tests {
		got, err := ParsePath(tc.path, tc.ns)
		if tc.err {
			if err == nil || !errors.Is(err, ErrBadPath) {
				t.Errorf("ParsePath(%q, %q) = %+v, %v; want ErrBadPath", tc.path, tc.ns, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParsePath(%q, %q) = %+v, %v; want %+v", tc.path, tc.ns, got, err, tc.want)
		}
	}
}

func FuzzParsePath(f *testing.F) {
	for _, s := range []string{"/v2/", "/v2/coredns/coredns/manifests/v1.12.1", "/v2/registry.k8s.io/pause/manifests/3.10",
		"/v2/library/busybox/blobs/" + dg, "/v2/a/blobs/manifests/1", "/v2/localhost:5000/x/blobs/" + dg} {
		f.Add(s, "")
		f.Add(s, "registry.k8s.io")
	}
	f.Fuzz(func(t *testing.T, path, ns string) {
		r, err := ParsePath(path, ns)
		if err != nil {
			if !errors.Is(err, ErrBadPath) {
				t.Fatalf("error without ErrBadPath: %v", err)
			}
			return
		}
		if r.Kind == KindBase {
			return
		}
		// What the parser accepts is a valid, normalized image reference
		// that parses back to the same repository.
		sep := ":"
		if strings.HasPrefix(r.Reference, "sha256:") {
			sep = "@"
		}
		ref, err := ParseRef(r.Repository() + sep + r.Reference)
		if err != nil {
			t.Fatalf("ParsePath(%q, %q) = %+v, which ParseRef refuses: %v", path, ns, r, err)
		}
		if ref.Registry != r.Registry || ref.Repo != r.Repo {
			t.Fatalf("ParsePath(%q, %q) = %+v; ParseRef gives %+v", path, ns, r, ref)
		}
		if r.Kind == KindBlob && sep != "@" {
			t.Fatalf("blob by tag accepted: %+v", r)
		}
	})
}

func TestParseRef(t *testing.T) {
	tests := []struct{ in, name, str string }{
		{"busybox", "docker.io/library/busybox:latest", ""},
		{"busybox:1.36", "docker.io/library/busybox:1.36", ""},
		{"docker.io/busybox:1.36", "docker.io/library/busybox:1.36", ""},
		{"index.docker.io/library/busybox:1.36", "docker.io/library/busybox:1.36", ""},
		{"coredns/coredns:1.12.1", "docker.io/coredns/coredns:1.12.1", ""},
		{"registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10", ""},
		{"localhost/app", "localhost/app:latest", ""},
		{"127.0.0.1:5000/a/b:v1", "127.0.0.1:5000/a/b:v1", ""},
		{"registry.k8s.io/pause@" + dg, "registry.k8s.io/pause@" + dg, ""},
		{"ghcr.io/siderolabs/installer:v1.13.0@" + dg, "ghcr.io/siderolabs/installer:v1.13.0", "ghcr.io/siderolabs/installer:v1.13.0@" + dg},
		{"factory.talos.dev/metal-installer/abc123:v1.13.0", "factory.talos.dev/metal-installer/abc123:v1.13.0", ""},
	}
	for _, tc := range tests {
		r, err := ParseRef(tc.in)
		if err != nil {
			t.Errorf("ParseRef(%q): %v", tc.in, err)
			continue
		}
		if r.Name() != tc.name {
			t.Errorf("ParseRef(%q).Name() = %q, want %q", tc.in, r.Name(), tc.name)
		}
		if tc.str != "" && r.String() != tc.str {
			t.Errorf("ParseRef(%q).String() = %q, want %q", tc.in, r.String(), tc.str)
		}
	}
	for _, bad := range []string{"", "Busybox", "busybox:", "busybox@sha256:12", "a b", "busybox@md5:" + strings.Repeat("0", 32), "x/:1", "registry.k8s.io/"} {
		if r, err := ParseRef(bad); err == nil {
			t.Errorf("ParseRef(%q) = %+v, want an error", bad, r)
		}
	}
}

func FuzzParseRef(f *testing.F) {
	for _, s := range []string{"busybox", "busybox:1.36", "registry.k8s.io/pause:3.10", "localhost:5000/a/b@" + dg, "ghcr.io/x/y:v1@" + dg} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRef(s)
		if err != nil {
			return
		}
		// Normalization is idempotent.
		r2, err := ParseRef(r.String())
		if err != nil {
			t.Fatalf("ParseRef(%q) = %q, which does not parse again: %v", s, r.String(), err)
		}
		if r2.String() != r.String() || r2.Name() != r.Name() {
			t.Fatalf("ParseRef not idempotent: %q -> %q -> %q", s, r.String(), r2.String())
		}
	})
}
