package imagepull

import (
	"strings"
	"testing"
)

func FuzzParseRef(f *testing.F) {
	for _, s := range []string{
		"factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.13.0",
		"alpine", "127.0.0.1:5000/x/y@sha256:" + hexA, "ghcr.io/a/b:1@sha256:" + hexB, "a/b:", "::", "a@b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRef(s)
		if err != nil {
			return
		}
		if r.Host == "" || r.Repo == "" || r.Object() == "" {
			t.Fatalf("ParseRef(%q) = %+v: a part is empty", s, r)
		}
		// The normalized form parses to itself.
		r2, err := ParseRef(r.String())
		if err != nil || r2 != r {
			t.Fatalf("ParseRef(%q) = %+v; its String %q parses to %+v, %v", s, r, r.String(), r2, err)
		}
		// Every URL built from it stays under the endpoint's /v2.
		u, err := RequestURL(Endpoint{URL: "http://10.99.0.1:5000"}, r, "manifests", r.Object())
		if err != nil || !strings.HasPrefix(u, "http://10.99.0.1:5000/v2/") || strings.Contains(u, "/../") {
			t.Fatalf("RequestURL for %+v = %q, %v", r, u, err)
		}
	})
}

func FuzzParseManifest(f *testing.F) {
	f.Add("application/vnd.oci.image.manifest.v1+json", ociManifest)
	f.Add("", ociIndex)
	f.Add("application/json; charset=utf-8", `{"schemaVersion":2,"manifests":[{}]}`)
	f.Add("", `{"schemaVersion":2,"config":{},"layers":null}`)
	f.Fuzz(func(t *testing.T, contentType, body string) {
		m, err := ParseManifest(contentType, []byte(body))
		if err != nil {
			return
		}
		if (m.Index == nil) == (m.Image == nil) {
			t.Fatalf("index %v and image %v", m.Index != nil, m.Image != nil)
		}
		if m.Image != nil {
			if err := checkDescriptor(m.Image.Config); err != nil {
				t.Fatalf("config descriptor passed: %v", err)
			}
			for _, l := range m.Image.Layers {
				if _, err := layerCompression(l.MediaType); err != nil {
					t.Fatalf("layer passed: %v", err)
				}
			}
		}
		if m.Index != nil {
			for _, d := range m.Index.Manifests {
				if err := checkDescriptor(d); err != nil {
					t.Fatalf("index entry passed: %v", err)
				}
			}
			_, _ = SelectPlatform(m.Index, "amd64")
		}
	})
}

func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"usr/install/amd64/vmlinuz", "../x", "/a/./b/../../..", ".wh..wh..opq", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, ok := CleanPath(s)
		if !ok {
			return
		}
		if p == "" || strings.HasPrefix(p, "/") || p == ".." || strings.HasPrefix(p, "../") || strings.Contains(p, "/../") {
			t.Fatalf("CleanPath(%q) = %q leaves the root", s, p)
		}
	})
}
