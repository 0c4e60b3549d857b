package registry

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/dotfile/rackboot/internal/registrytest"
)

// need fails the test when a Debian tool is missing.
func need(t *testing.T, bin, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(bin)
	if err != nil {
		t.Fatalf("%s not found: install the Debian package %s (apt-get install %s)", bin, pkg, pkg)
	}
	return p
}

// startUpstream runs Debian's docker-registry (CNCF distribution 2.8) on
// loopback with filesystem storage until the test ends
// (internal/registrytest) and returns its host:port.
func startUpstream(t *testing.T) string {
	t.Helper()
	return registrytest.Start(t, registrytest.Options{}).Addr
}

// recorder is a reverse proxy in front of the upstream that counts
// requests, so a test can prove a pull fetched nothing. Its tamper hook
// (nil normally) may rewrite blob responses: the one fake, used to make
// the upstream serve altered bytes.
type recorder struct {
	mu     sync.Mutex
	reqs   []string
	tamper func(w http.ResponseWriter, r *http.Request, next http.Handler) bool
	srv    *httptest.Server
}

func newRecorder(t *testing.T, upstream string) *recorder {
	t.Helper()
	u, _ := url.Parse("http://" + upstream)
	rp := httputil.NewSingleHostReverseProxy(u)
	rec := &recorder{}
	rec.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		line := r.Method + " " + r.URL.Path
		if rg := r.Header.Get("Range"); rg != "" {
			line += " " + rg
		}
		rec.reqs = append(rec.reqs, line)
		tamper := rec.tamper
		rec.mu.Unlock()
		if tamper != nil && tamper(w, r, rp) {
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(rec.srv.Close)
	return rec
}

func (r *recorder) host() string { return strings.TrimPrefix(r.srv.URL, "http://") }

// requests are the requests so far: "GET /v2/pause/blobs/sha256:…",
// followed by the Range header's value when there is one.
func (r *recorder) requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

func (r *recorder) setTamper(f func(w http.ResponseWriter, r *http.Request, next http.Handler) bool) {
	r.mu.Lock()
	r.tamper = f
	r.mu.Unlock()
}

// image builds a random image for a platform (set in its config, as a
// real image's is), with extra layers appended after base's.
func image(t *testing.T, base v1.Image, p v1.Platform, size int64) v1.Image {
	t.Helper()
	if base == nil {
		base = empty.Image
	}
	l, err := random.Layer(size, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(base, l)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

var (
	amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64 = v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	s390x = v1.Platform{OS: "linux", Architecture: "s390x"}
)

// multiArch builds an index with one image per platform.
func multiArch(t *testing.T, size int64, ps ...v1.Platform) v1.ImageIndex {
	t.Helper()
	var idx v1.ImageIndex = empty.Index
	idx = mutate.IndexMediaType(idx, types.DockerManifestList)
	for _, p := range ps {
		img := image(t, image(t, nil, p, size), p, size)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	return idx
}

func push(t *testing.T, hostport, repoTag string, x any) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(hostport+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	var d v1.Hash
	switch v := x.(type) {
	case v1.Image:
		err = remote.Write(ref, v)
		d, _ = v.Digest()
	case v1.ImageIndex:
		err = remote.WriteIndex(ref, v)
		d, _ = v.Digest()
	}
	if err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	return d
}

func rawOf(t *testing.T, x interface{ RawManifest() ([]byte, error) }) []byte {
	t.Helper()
	b, err := x.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
