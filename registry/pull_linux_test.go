package registry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestPullFromDistribution pulls from a real registry (docker-registry)
// standing in for registry.k8s.io and docker.io: multi-arch with only
// the platforms asked, shared layers stored once, a second pull that
// sends no request at all, a moved tag with WithRefresh, by digest.
func TestPullFromDistribution(t *testing.T) {
	up := startUpstream(t)
	rec := newRecorder(t, up)

	multi := multiArch(t, 2000, amd64, arm64, s390x)
	multiDigest := push(t, up, "multi:1", multi)
	base := image(t, nil, amd64, 4000)
	app1 := image(t, base, amd64, 1000)
	app2 := image(t, base, amd64, 1500) // shares base's layer with app1
	push(t, up, "library/app1:v1", app1)
	push(t, up, "library/app2:v1", app2)

	dir := t.TempDir()
	s, err := Open(dir, WithUpstream("registry.k8s.io", rec.host()), WithUpstream("docker.io", rec.host()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	plats := []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}
	p, err := s.Pull(ctx, "registry.k8s.io/multi:1", plats, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Digest != multiDigest || p.Name != "registry.k8s.io/multi:1" || p.Fetched == 0 {
		t.Fatalf("Pulled %+v, want digest %s", p, multiDigest)
	}
	// The index blob is the upstream's, byte for byte.
	b, err := os.ReadFile(s.BlobPath(multiDigest))
	if err != nil || !bytes.Equal(b, rawOf(t, multi)) {
		t.Fatalf("stored index differs from upstream's (%v)", err)
	}
	im, _ := multi.IndexManifest()
	for _, ch := range im.Manifests {
		_, err := os.Stat(s.BlobPath(ch.Digest))
		if ch.Platform.Architecture == "s390x" {
			if err == nil {
				t.Errorf("s390x child %s was fetched; only amd64 and arm64 were asked", ch.Digest)
			}
			if _, err := s.Resolve("registry.k8s.io/multi", ch.Digest.String()); !errors.Is(err, ErrNotFound) {
				t.Errorf("Resolve of the absent s390x child: %v", err)
			}
		} else if err != nil {
			t.Errorf("%s child missing: %v", ch.Platform, err)
		}
	}

	p1, err := s.Pull(ctx, "app1:v1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := s.Pull(ctx, "docker.io/library/app2:v1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p1.Name != "docker.io/library/app1:v1" || p2.Present != 1 {
		t.Fatalf("app1 %+v, app2 %+v: want app2's shared base layer already present", p1, p2)
	}

	list, err := s.List()
	if err != nil || len(list) != 3 {
		t.Fatalf("List = %+v, %v", list, err)
	}
	for _, e := range list {
		if e.Missing != nil {
			t.Errorf("%s incomplete: %v", e.Name, e.Missing)
		}
		if e.Name == "registry.k8s.io/multi:1" && len(e.Platforms) != 2 {
			t.Errorf("multi platforms = %v", e.Platforms)
		}
	}

	// Pull again: complete, so not a single request upstream.
	before := rec.count()
	for _, ref := range []string{"registry.k8s.io/multi:1", "app1:v1", "app2:v1"} {
		var pl []v1.Platform
		if strings.Contains(ref, "multi") {
			pl = plats
		}
		p, err := s.Pull(ctx, ref, pl, nil)
		if err != nil || p.Fetched != 0 {
			t.Fatalf("second pull of %s: %+v, %v", ref, p, err)
		}
	}
	// A new Store on the same directory (the next run) agrees.
	s2, _ := Open(dir, WithUpstream("docker.io", rec.host()))
	if _, err := s2.Pull(ctx, "app1:v1", nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := rec.count() - before; n != 0 {
		t.Fatalf("second pulls sent %d requests upstream, want 0", n)
	}

	// The tag moves upstream; WithRefresh follows it, the entry is
	// replaced (one entry with that name).
	app1b := image(t, base, amd64, 1200)
	newDigest := push(t, up, "library/app1:v1", app1b)
	s3, _ := Open(dir, WithUpstream("docker.io", rec.host()), WithRefresh())
	p, err = s3.Pull(ctx, "app1:v1", nil, nil)
	if err != nil || p.Digest != newDigest {
		t.Fatalf("refresh pull: %+v, %v, want %s", p, err, newDigest)
	}
	idx, _ := s.readIndex()
	n := 0
	for _, d := range idx.Manifests {
		if d.Annotations[AnnotationRefName] == "docker.io/library/app1:v1" {
			n++
			if d.Digest != newDigest {
				t.Errorf("entry digest %s, want %s", d.Digest, newDigest)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d entries named docker.io/library/app1:v1", n)
	}

	// By digest: named repo@digest.
	p, err = s.Pull(ctx, "docker.io/library/app2@"+p2.Digest.String(), nil, nil)
	if err != nil || p.Name != "docker.io/library/app2@"+p2.Digest.String() {
		t.Fatalf("by digest: %+v %v", p, err)
	}
	if probs, err := s.Verify(ctx); err != nil || len(probs) != 0 {
		t.Fatalf("Verify: %v %v", probs, err)
	}
}

// interruptedPull pushes an image with a small and a 3 MiB layer and
// pulls it through rec, whose upstream sends half of the big layer and
// then stalls until the pull is cancelled. It returns the store's
// directory, the big layer's digest and bytes, and the path of the
// .partial file the cut download left.
func interruptedPull(t *testing.T, up string, rec *recorder) (dir string, big v1.Hash, bigBytes []byte, partial string) {
	t.Helper()
	img := image(t, image(t, nil, amd64, 100<<10), amd64, 3<<20)
	push(t, up, "pause:3.10", img)
	layers, _ := img.Layers()
	big, _ = layers[1].Digest()
	rc, err := layers[1].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	bigBytes, err = io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rec.setTamper(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if !strings.HasSuffix(r.URL.Path, "/blobs/"+big.String()) || r.Method != http.MethodGet {
			return false
		}
		rr := httptest.NewRecorder()
		next.ServeHTTP(rr, r)
		body := rr.Body.Bytes()
		w.Header().Set("Content-Length", itoa(len(body)))
		w.WriteHeader(rr.Code)
		w.Write(body[:len(body)/2])
		w.(http.Flusher).Flush()
		<-r.Context().Done() // stall until the client gives up
		return true
	})
	dir = t.TempDir()
	s, _ := Open(dir, WithUpstream("registry.k8s.io", rec.host()))
	_, err = s.Pull(ctx, "registry.k8s.io/pause:3.10", nil, func(p Progress) {
		if p.Blob == big && p.Complete > 0 {
			cancel()
		}
	})
	if err == nil {
		t.Fatal("interrupted pull succeeded")
	}
	if _, err := os.Stat(s.BlobPath(big)); err == nil {
		t.Fatal("a half-fetched layer is in the store under its digest")
	}
	if err := s.Has("registry.k8s.io/pause:3.10"); err == nil {
		t.Fatal("interrupted image listed as complete")
	}
	rec.setTamper(nil)
	return dir, big, bigBytes, filepath.Join(filepath.Dir(s.BlobPath(big)), "."+big.Hex+partialSuffix)
}

// TestPullInterruptedResumes: a pull cut in the middle of a layer keeps
// the bytes it got; the next pull (another process, as after a kill -9)
// asks only for the rest (Range: bytes=N-, which docker-registry answers
// with 206) and stores the layer whole and checked.
func TestPullInterruptedResumes(t *testing.T) {
	up := startUpstream(t)
	rec := newRecorder(t, up)
	dir, big, bigBytes, partial := interruptedPull(t, up, rec)
	kept, err := os.ReadFile(partial)
	if err != nil || len(kept) == 0 || len(kept) >= len(bigBytes) {
		t.Fatalf("after the cut the download kept %d of %d bytes (%v): want part of the layer", len(kept), len(bigBytes), err)
	}
	if !bytes.Equal(kept, bigBytes[:len(kept)]) {
		t.Fatal("the kept bytes are not the layer's first bytes")
	}

	before := len(rec.requests())
	s2, _ := Open(dir, WithUpstream("registry.k8s.io", rec.host()))
	p, err := s2.Pull(context.Background(), "registry.k8s.io/pause:3.10", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	reqs := rec.requests()[before:]
	blobPath := "GET /v2/pause/blobs/" + big.String()
	ranged := blobPath + " bytes=" + itoa(len(kept)) + "-"
	if !slices.Contains(reqs, ranged) || slices.Contains(reqs, blobPath) {
		t.Errorf("requests of the resumed pull %q: want %q and no request for the whole layer", reqs, ranged)
	}
	t.Logf("resumed at byte %d of %d: the pull fetched %d bytes in all", len(kept), len(bigBytes), p.FetchedBytes)
	if p.Present < 1 || p.FetchedBytes >= int64(len(bigBytes)) || p.FetchedBytes < int64(len(bigBytes)-len(kept)) {
		t.Errorf("resumed pull %+v: want the small layer present and only the rest of the big one fetched", p)
	}
	if _, err := os.Stat(partial); err == nil {
		t.Error(".partial file left behind")
	}
	if probs, err := s2.Verify(context.Background()); err != nil || len(probs) != 0 {
		t.Fatalf("Verify: %v %v", probs, err)
	}
}

// TestPullResumeBadPrefix: a .partial whose bytes are not the layer's (a
// disk error, another blob's bytes) is continued, fails the digest check,
// and is dropped; the same pull then fetches the layer whole and succeeds.
func TestPullResumeBadPrefix(t *testing.T) {
	up := startUpstream(t)
	rec := newRecorder(t, up)
	dir, big, bigBytes, partial := interruptedPull(t, up, rec)
	if err := os.WriteFile(partial, []byte("not the layer's first bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := len(rec.requests())
	s2, _ := Open(dir, WithUpstream("registry.k8s.io", rec.host()))
	p, err := s2.Pull(context.Background(), "registry.k8s.io/pause:3.10", nil, nil)
	if err != nil {
		t.Fatalf("pull over a bad .partial: %v", err)
	}
	reqs := rec.requests()[before:]
	blobPath := "GET /v2/pause/blobs/" + big.String()
	if !slices.Contains(reqs, blobPath+" bytes=27-") || !slices.Contains(reqs, blobPath) {
		t.Errorf("requests %q: want the ranged request, then the whole layer", reqs)
	}
	if p.FetchedBytes < int64(len(bigBytes)) {
		t.Errorf("pull %+v: want the whole layer fetched again", p)
	}
	if probs, err := s2.Verify(context.Background()); err != nil || len(probs) != 0 {
		t.Fatalf("Verify: %v %v", probs, err)
	}
}

// TestPullResumeRangeIgnored: a registry that ignores Range (its answer is
// 200 with the whole blob) gets the layer written from its first byte.
func TestPullResumeRangeIgnored(t *testing.T) {
	up := startUpstream(t)
	rec := newRecorder(t, up)
	dir, _, bigBytes, partial := interruptedPull(t, up, rec)
	rec.setTamper(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		r.Header.Del("Range")
		next.ServeHTTP(w, r)
		return true
	})
	s2, _ := Open(dir, WithUpstream("registry.k8s.io", rec.host()))
	p, err := s2.Pull(context.Background(), "registry.k8s.io/pause:3.10", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.FetchedBytes < int64(len(bigBytes)) {
		t.Errorf("pull %+v: want the whole layer fetched", p)
	}
	if _, err := os.Stat(partial); err == nil {
		t.Error(".partial file left behind")
	}
	if probs, err := s2.Verify(context.Background()); err != nil || len(probs) != 0 {
		t.Fatalf("Verify: %v %v", probs, err)
	}
}

// TestPullDigestMismatch: an upstream that alters a layer's bytes (a proxy
// flipping one byte: the only fake here) makes Pull fail naming the image
// and the blob, and nothing is stored under that digest.
func TestPullDigestMismatch(t *testing.T) {
	up := startUpstream(t)
	rec := newRecorder(t, up)
	img := image(t, nil, amd64, 50<<10)
	push(t, up, "library/busybox:1.36", img)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	rec.setTamper(func(w http.ResponseWriter, r *http.Request, next http.Handler) bool {
		if !strings.Contains(r.URL.Path, "/blobs/"+ld.String()) || r.Method != http.MethodGet {
			return false
		}
		rr := httptest.NewRecorder()
		next.ServeHTTP(rr, r)
		w.WriteHeader(rr.Code)
		w.Write(flipped(rr.Body.Bytes()))
		return true
	})
	s, _ := Open(t.TempDir(), WithUpstream("docker.io", rec.host()))
	_, err := s.Pull(context.Background(), "busybox:1.36", nil, nil)
	if err == nil {
		t.Fatal("pull of altered bytes succeeded")
	}
	for _, want := range []string{"docker.io/library/busybox:1.36", ld.String()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if _, err := os.Stat(s.BlobPath(ld)); err == nil {
		t.Fatal("altered layer stored")
	}
	if l, _ := s.List(); len(l) != 0 {
		t.Fatalf("List after a failed pull: %+v", l)
	}
}
