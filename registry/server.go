package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
)

// shutdownTimeout bounds how long Serve waits for downloads in flight after
// ctx is cancelled.
const shutdownTimeout = 5 * time.Second

// Event is one completed mirror response, for attribution (which machine
// pulled what) by the caller.
type Event struct {
	Remote    string // the client's address (host:port)
	Method    string // GET or HEAD
	Registry  string // upstream registry host the request was for
	Repo      string // repository path on it
	Kind      Kind
	Reference string  // tag or digest as asked
	Digest    v1.Hash // what was served (zero if nothing)
	Via       string  // how Registry was decided: "ns", "path", "default"
	Bytes     int64   // body bytes sent
	Status    int
}

// Config is the mirror server's configuration.
type Config struct {
	Addr     string // listen address, default ":5000"
	Store    *Store // required
	Log      *slog.Logger
	Now      func() time.Time // default time.Now
	Observer func(Event)      // called once per completed request; may be nil
	// Metrics, when set, gets the server's Prometheus collectors
	// (rackboot_registry_*).
	Metrics prometheus.Registerer
}

// ServerOption adds to a Server.
type ServerOption func(*Server)

// WithListener serves on l instead of listening on Config.Addr.
func WithListener(l net.Listener) ServerOption { return func(s *Server) { s.ln = l } }

// Server is a read-only Docker/OCI distribution API over a Store.
type Server struct {
	cfg     Config
	log     *slog.Logger
	ln      net.Listener
	handler *Handler
}

// New binds the listener (a port in use is reported now) and builds the
// handler; Serve runs it, Close releases it if Serve is never called.
func New(cfg Config, opts ...ServerOption) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("registry server: no image store")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Addr == "" {
		cfg.Addr = ":5000"
	}
	s := &Server{cfg: cfg, log: cfg.Log}
	for _, o := range opts {
		o(s)
	}
	h, err := NewHandler(cfg)
	if err != nil {
		return nil, err
	}
	s.handler = h
	if s.ln == nil {
		l, err := net.Listen("tcp", cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("registry mirror: listen on %s: %w (is another registry running? pick another port)", cfg.Addr, err)
		}
		s.ln = l
	}
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Handler is the HTTP handler (to mount it elsewhere, or test it).
func (s *Server) Handler() *Handler { return s.handler }

// Close releases the listener when Serve was never called.
func (s *Server) Close() error { return s.ln.Close() }

// Serve answers until ctx is cancelled, then waits up to shutdownTimeout
// for downloads in flight.
func (s *Server) Serve(ctx context.Context) error {
	hs := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	s.log.Info("registry mirror serving", "addr", s.ln.Addr().String(), "store", s.cfg.Store.Dir())
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			s.log.Warn("registry mirror shutdown: closing connections still open", "err", err)
			hs.Close()
		}
	}()
	err := hs.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		<-done
		return nil
	}
	return fmt.Errorf("registry mirror: %w", err)
}

// Handler serves the distribution API's read side from a Store.
type Handler struct {
	store    *Store
	log      *slog.Logger
	now      func() time.Time
	observer func(Event)

	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	corrupt  prometheus.Counter

	mu       sync.Mutex
	verified map[fileKey]error // blob files hashed once, by identity
}

// fileKey identifies a blob file's content without reading it: a changed
// file (rewritten, truncated, touched) gets a new key and is hashed again.
type fileKey struct {
	digest v1.Hash
	dev    uint64
	ino    uint64
	size   int64
	mtime  int64
}

// NewHandler builds the handler for cfg (New does this).
func NewHandler(cfg Config) (*Handler, error) {
	if cfg.Store == nil {
		return nil, errors.New("registry server: no image store")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Handler{
		store: cfg.Store, log: cfg.Log, now: cfg.Now, observer: cfg.Observer,
		verified: map[fileKey]error{},
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rackboot_registry_requests_total",
			Help: "Registry mirror requests by kind (base, manifest, blob, other) and HTTP status.",
		}, []string{"kind", "code"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "rackboot_registry_sent_bytes_total",
			Help: "Manifest and blob bytes the registry mirror served (2xx bodies), by kind.",
		}, []string{"kind"}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "rackboot_registry_corrupt_blobs_total",
			Help: "Requests refused because the stored file was truncated or did not match its digest.",
		}),
	}
	if cfg.Metrics != nil {
		for _, c := range []prometheus.Collector{h.requests, h.bytes, h.corrupt} {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, fmt.Errorf("registry server metrics: %w", err)
			}
		}
	}
	return h, nil
}

// apiError is the distribution API's error body.
type apiError struct {
	status  int
	code    string
	message string
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cw := &countingWriter{ResponseWriter: w, status: http.StatusOK}
	ev := Event{Remote: r.RemoteAddr, Method: r.Method, Kind: "other"}
	defer func() {
		ev.Status, ev.Bytes = cw.status, cw.n
		h.requests.WithLabelValues(string(ev.Kind), strconv.Itoa(ev.Status)).Inc()
		if ev.Status < 300 {
			h.bytes.WithLabelValues(string(ev.Kind)).Add(float64(ev.Bytes))
		}
		if h.observer != nil {
			h.observer(ev)
		}
	}()
	cw.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeError(cw, r, apiError{http.StatusMethodNotAllowed, "UNSUPPORTED", "this registry is a read-only mirror: push images into rackboot's image store with rackboot, not to the mirror"})
		return
	}
	req, err := ParsePath(r.URL.Path, r.URL.Query().Get("ns"))
	if err != nil {
		writeError(cw, r, apiError{http.StatusNotFound, "NAME_INVALID", err.Error()})
		return
	}
	ev.Kind, ev.Registry, ev.Repo, ev.Reference, ev.Via = req.Kind, req.Registry, req.Repo, req.Reference, req.Via
	if req.Kind == KindBase {
		cw.Header().Set("Content-Type", "application/json")
		cw.Header().Set("Content-Length", "2")
		cw.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			io.WriteString(cw, "{}")
		}
		return
	}
	unknown := "MANIFEST_UNKNOWN"
	if req.Kind == KindBlob {
		unknown = "BLOB_UNKNOWN"
	}
	d, err := h.store.Resolve(req.Repository(), req.Reference)
	if err != nil {
		switch {
		case !errors.Is(err, ErrNotFound):
			h.log.Error("registry mirror: read image store", "err", err)
			writeError(cw, r, apiError{http.StatusInternalServerError, unknown, "the image store could not be read"})
		case !h.store.HasRepository(req.Repository()):
			writeError(cw, r, apiError{http.StatusNotFound, "NAME_UNKNOWN", fmt.Sprintf("repository %s is not in rackboot's image store", req.Repository())})
		default:
			writeError(cw, r, apiError{http.StatusNotFound, unknown, fmt.Sprintf("%s is not in rackboot's image store", req.Repository()+refSep(req.Reference)+req.Reference)})
		}
		return
	}
	if req.Kind == KindManifest && !isIndex(d.MediaType) && !isImage(d.MediaType) {
		writeError(cw, r, apiError{http.StatusNotFound, "MANIFEST_UNKNOWN", fmt.Sprintf("%s@%s is not a manifest", req.Repository(), d.Digest)})
		return
	}
	ev.Digest = d.Digest
	f, err := h.open(req, d)
	if err != nil {
		writeError(cw, r, apiError{http.StatusInternalServerError, unknown, err.Error()})
		return
	}
	defer f.Close()
	ct := string(d.MediaType)
	if req.Kind == KindBlob {
		ct = "application/octet-stream"
	}
	cw.Header().Set("Content-Type", ct)
	cw.Header().Set("Docker-Content-Digest", d.Digest.String())
	cw.Header().Set("ETag", `"`+d.Digest.String()+`"`)
	if req.Kind == KindBlob {
		// Blob content never changes under its digest.
		cw.Header().Set("Cache-Control", "max-age=31536000")
	}
	// ServeContent sets Content-Length, answers Range and HEAD, and
	// copies with io.Copy into cw, whose ReadFrom reaches the
	// connection's: sendfile(2) from f.
	http.ServeContent(cw, r, "", time.Time{}, f)
}

func refSep(ref string) string {
	if len(ref) > 7 && ref[:7] == "sha256:" {
		return "@"
	}
	return ":"
}

// open opens the blob file for d and checks it: size on every request,
// the sha256 once per file identity. A bad file is logged (naming the
// image), counted, and refused.
func (h *Handler) open(req Request, d v1.Descriptor) (*os.File, error) {
	f, err := h.store.OpenBlob(d.Digest)
	if err != nil {
		return nil, h.bad(req, d, fmt.Errorf("blob file: %w", err))
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, h.bad(req, d, err)
	}
	if fi.Size() != d.Size {
		f.Close()
		return nil, h.bad(req, d, fmt.Errorf("stored file has %d bytes, want %d (truncated)", fi.Size(), d.Size))
	}
	key := fileKey{digest: d.Digest, size: fi.Size(), mtime: fi.ModTime().UnixNano()}
	key.dev, key.ino = fileID(fi)
	h.mu.Lock()
	verr, done := h.verified[key]
	h.mu.Unlock()
	if !done {
		verr = checkReader(f, d.Digest, d.Size)
		if _, err := f.Seek(0, io.SeekStart); err != nil && verr == nil {
			verr = err
		}
		h.mu.Lock()
		h.verified[key] = verr
		h.mu.Unlock()
	}
	if verr != nil {
		f.Close()
		return nil, h.bad(req, d, verr)
	}
	return f, nil
}

func (h *Handler) bad(req Request, d v1.Descriptor, err error) error {
	if errors.Is(err, ErrNotFound) {
		err = errors.New("stored file is missing")
	}
	h.corrupt.Inc()
	image := h.store.owner(d.Digest)
	h.log.Error("registry mirror: stored blob is damaged; not serving it (run rackboot's image verify, then pull the image again)",
		"image", image, "repository", req.Repository(), "blob", d.Digest.String(), "err", err)
	return fmt.Errorf("blob %s of %s is damaged in rackboot's image store: %v", d.Digest, req.Repository(), err)
}

func writeError(w http.ResponseWriter, r *http.Request, e apiError) {
	body, _ := json.Marshal(map[string]any{"errors": []map[string]string{{"code": e.code, "message": e.message}}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(e.status)
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// countingWriter counts body bytes and keeps the status. It implements
// io.ReaderFrom by handing the copy to the connection's own ReadFrom, so
// http.ServeContent on an *os.File still uses sendfile(2).
type countingWriter struct {
	http.ResponseWriter
	status int
	n      int64
}

func (c *countingWriter) WriteHeader(code int) {
	c.status = code
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.ResponseWriter.(io.ReaderFrom); ok {
		n, err := rf.ReadFrom(r)
		c.n += n
		return n, err
	}
	return io.Copy(struct{ io.Writer }{c}, r)
}

func (c *countingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
