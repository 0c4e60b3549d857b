package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/dotfile/rackboot/internal/syncbuf"
)

type mirror struct {
	url     string
	store   *Store
	h       *Handler
	reg     *prometheus.Registry
	logs    *syncbuf.Buffer
	mu      sync.Mutex
	events  []Event
	stopped chan error
}

// startMirror serves store on a loopback port through New/Serve.
func startMirror(t *testing.T, store *Store) *mirror {
	t.Helper()
	m := &mirror{store: store, reg: prometheus.NewRegistry(), logs: &syncbuf.Buffer{}, stopped: make(chan error, 1)}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{
		Store:   store,
		Log:     slog.New(slog.NewTextHandler(m.logs, nil)),
		Metrics: m.reg,
		Observer: func(e Event) {
			m.mu.Lock()
			m.events = append(m.events, e)
			m.mu.Unlock()
		},
	}, WithListener(l))
	if err != nil {
		t.Fatal(err)
	}
	m.h = srv.Handler()
	m.url = "http://" + srv.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { m.stopped <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-m.stopped; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return m
}

func (m *mirror) eventsCopy() []Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Event(nil), m.events...)
}

func do(t *testing.T, method, url string, hdr ...string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func errCode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Errors []struct{ Code, Message string }
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) != 1 {
		t.Fatalf("error body %q: %v", body, err)
	}
	return e.Errors[0].Code
}

func TestServerAPI(t *testing.T) {
	s, _ := Open(t.TempDir())
	img, _ := random.Image(200<<10, 2)
	other, _ := random.Image(1000, 1)
	if err := s.Put("registry.k8s.io/pause:3.10", img); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("registry.k8s.io/other:1", other); err != nil {
		t.Fatal(err)
	}
	m := startMirror(t, s)
	dig, _ := img.Digest()
	raw, _ := img.RawManifest()
	mt, _ := img.MediaType()
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	lb, _ := os.ReadFile(s.BlobPath(ld))
	od, _ := other.Digest()

	resp, body := do(t, "GET", m.url+"/v2/")
	if resp.StatusCode != 200 || string(body) != "{}" || resp.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Fatalf("/v2/: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	// By tag with ns, by digest in path form.
	for _, u := range []string{"/v2/pause/manifests/3.10?ns=registry.k8s.io", "/v2/registry.k8s.io/pause/manifests/" + dig.String()} {
		resp, body = do(t, "GET", m.url+u)
		if resp.StatusCode != 200 || !bytes.Equal(body, raw) || resp.Header.Get("Content-Type") != string(mt) ||
			resp.Header.Get("Docker-Content-Digest") != dig.String() || resp.Header.Get("Content-Length") != itoa(len(raw)) ||
			resp.Header.Get("ETag") != `"`+dig.String()+`"` {
			t.Fatalf("GET %s: %d %v", u, resp.StatusCode, resp.Header)
		}
	}
	resp, body = do(t, "HEAD", m.url+"/v2/pause/manifests/3.10?ns=registry.k8s.io")
	if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("Content-Length") != itoa(len(raw)) {
		t.Fatalf("HEAD manifest: %d %v", resp.StatusCode, resp.Header)
	}
	// Blob, whole and a range.
	bu := m.url + "/v2/registry.k8s.io/pause/blobs/" + ld.String()
	resp, body = do(t, "GET", bu)
	if resp.StatusCode != 200 || !bytes.Equal(body, lb) {
		t.Fatalf("blob: %d, %d bytes", resp.StatusCode, len(body))
	}
	resp, body = do(t, "GET", bu, "Range", "bytes=100-199")
	if resp.StatusCode != 206 || !bytes.Equal(body, lb[100:200]) || resp.Header.Get("Content-Range") != "bytes 100-199/"+itoa(len(lb)) {
		t.Fatalf("range: %d %v", resp.StatusCode, resp.Header)
	}
	// Misses and refusals.
	for _, tc := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/v2/pause/manifests/3.9?ns=registry.k8s.io", 404, "MANIFEST_UNKNOWN"},
		{"GET", "/v2/nothere/manifests/1?ns=registry.k8s.io", 404, "NAME_UNKNOWN"},
		{"GET", "/v2/pause/manifests/3.10", 404, "NAME_UNKNOWN"}, // that is docker.io/library/pause
		// another repository's digest is not served here
		{"GET", "/v2/registry.k8s.io/pause/manifests/" + od.String(), 404, "MANIFEST_UNKNOWN"},
		{"GET", "/v2/registry.k8s.io/pause/blobs/sha256:" + strings.Repeat("0", 64), 404, "BLOB_UNKNOWN"},
		{"GET", "/v2/registry.k8s.io/pause/manifests/" + ld.String(), 404, "MANIFEST_UNKNOWN"}, // a layer is no manifest
		{"PUT", "/v2/registry.k8s.io/pause/manifests/3.10", 405, "UNSUPPORTED"},
		{"POST", "/v2/registry.k8s.io/pause/blobs/uploads/", 405, "UNSUPPORTED"},
		{"PATCH", "/v2/registry.k8s.io/pause/blobs/uploads/x", 405, "UNSUPPORTED"},
		{"DELETE", "/v2/registry.k8s.io/pause/manifests/" + dig.String(), 405, "UNSUPPORTED"},
		{"GET", "/v2/_catalog", 404, "NAME_INVALID"},
	} {
		resp, body := do(t, tc.method, m.url+tc.path)
		if resp.StatusCode != tc.status || errCode(t, body) != tc.code {
			t.Errorf("%s %s: %d %s, want %d %s", tc.method, tc.path, resp.StatusCode, body, tc.status, tc.code)
		}
	}
	// The observer saw the ns parameter and the bytes.
	ev := m.eventsCopy()
	if ev[1].Via != "ns" || ev[1].Registry != "registry.k8s.io" || ev[1].Repo != "pause" || ev[1].Digest != dig || ev[1].Bytes != int64(len(raw)) || ev[1].Status != 200 {
		t.Fatalf("event %+v", ev[1])
	}
	if got := counter(t, m.h.bytes.WithLabelValues("blob")); got != float64(len(lb)+100) {
		t.Fatalf("blob bytes counted %v, want %d", got, len(lb)+100)
	}
}

// TestServerRefusesDamagedBlobs: a truncated file is caught by its size,
// a same-size altered one by its hash; neither is served, both are logged
// with the image's name and counted.
func TestServerRefusesDamagedBlobs(t *testing.T) {
	s, _ := Open(t.TempDir())
	img, _ := random.Image(64<<10, 2)
	s.Put("docker.io/library/busybox:1.36", img)
	m := startMirror(t, s)
	layers, _ := img.Layers()
	l0, _ := layers[0].Digest()
	l1, _ := layers[1].Digest()

	// l1 is served (and its hash verified) once before it is damaged.
	u1 := m.url + "/v2/library/busybox/blobs/" + l1.String() + "?ns=docker.io"
	if resp, _ := do(t, "GET", u1); resp.StatusCode != 200 {
		t.Fatalf("intact blob: %d", resp.StatusCode)
	}
	if err := os.Truncate(s.BlobPath(l0), 1000); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(s.BlobPath(l1))
	os.WriteFile(s.BlobPath(l1), flipped(b), 0o644) // same size, new mtime

	for _, d := range []v1.Hash{l0, l1} {
		resp, body := do(t, "GET", m.url+"/v2/busybox/blobs/"+d.String())
		if resp.StatusCode != 500 || errCode(t, body) != "BLOB_UNKNOWN" {
			t.Fatalf("damaged blob %s: %d %s", d, resp.StatusCode, body)
		}
		if !strings.Contains(m.logs.String(), "blob="+d.String()) {
			t.Errorf("no log line names blob %s:\n%s", d, m.logs)
		}
	}
	if !strings.Contains(m.logs.String(), "image=docker.io/library/busybox:1.36") {
		t.Errorf("log does not name the image:\n%s", m.logs)
	}
	if got := counter(t, m.h.corrupt); got != 2 {
		t.Fatalf("corrupt counter %v, want 2", got)
	}
}

// TestCountingWriterKeepsReaderFrom: the byte-counting wrapper must keep
// the connection's ReadFrom reachable, or ServeContent loses sendfile.
func TestCountingWriterKeepsReaderFrom(t *testing.T) {
	var w http.ResponseWriter = &countingWriter{}
	if _, ok := w.(io.ReaderFrom); !ok {
		t.Fatal("countingWriter does not implement io.ReaderFrom")
	}
	got := make(chan bool, 1)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, ok := w.(io.ReaderFrom)
		got <- ok
	})}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(l)
	defer srv.Close()
	http.Get("http://" + l.Addr().String())
	if !<-got {
		t.Fatal("net/http's ResponseWriter no longer implements io.ReaderFrom; the wrapper's delegation needs another way")
	}
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
func itoa(n int) string { return strconv.Itoa(n) }

// flipped returns b with one byte altered.
func flipped(b []byte) []byte {
	c := bytes.Clone(b)
	c[len(c)/2] ^= 0xff
	return c
}
