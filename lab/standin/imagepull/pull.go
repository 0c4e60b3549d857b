// Package imagepull is the stand-in's small OCI distribution client: it
// pulls an image (Talos's installer image, machine.install.image) through
// the registry mirrors of the machine config the way Talos does, and
// unpacks its layers into a directory.
//
// What Talos v1.13 does, and what is kept here:
//   - internal/app/machined/pkg/runtime/v1alpha1/v1alpha1_sequencer_tasks.go
//     Install: when not installed, takes machine.install.image (default
//     images.DefaultInstallerImage), picks the disk, then
//     install.RunInstallerContainer; a failure fires "Talos install failed."
//     and fails the install sequence.
//   - internal/pkg/install/install.go RunInstallerContainer: image.Pull with
//     the CRI registries config (crires.RegistryBuilder), then runs
//     /bin/installer install --disk=... in a container, which writes the
//     boot assets the image carries under /usr/install/<arch>/ (machinery
//     constants KernelAssetPath, InitramfsAssetPath, SDBootAssetPath,
//     UKIAssetPath) to the disk.
//   - internal/pkg/containers/image/image.go Pull: reference.ParseDockerRef,
//     then retry.Exponential(PullTimeout = 20 min, units PullRetryInterval =
//     5 s), every error retried, "not found" at most MaxNotFoundRetries
//     (5 by default) times; containerd's client.Pull with the platform
//     matcher platforms.Default() and unpacking (which checks every
//     blob's digest and the layers' diff IDs).
//   - internal/pkg/containers/image/resolver.go RegistryHosts,
//     RegistryEndpoints: the endpoints per host (see Endpoints, base).
//   - containerd v2 core/remotes/docker/resolver.go: HEAD then GET of
//     manifests/<tag> on each host in order (404, errors and other 4xx/5xx
//     go to the next host), the Accept list, ns=<registry host> on a
//     mirror (addNamespace, RegistryHost.isProxy); blobs fetched from the
//     hosts in the same order.
//
// Not done here: the installer container itself (the stand-in installs from
// the unpacked files), image signature verification (verify.ImageSignature,
// off unless an ImageVerificationConfig exists), registry auth and TLS
// configs (RegistryAuthConfig/RegistryTLSConfig), zstd layers, whiteouts,
// links and device nodes in layers, and Talos's image cache (registryd).
package imagepull

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Talos's pull settings (internal/pkg/containers/image/image.go).
const (
	TalosPullTimeout        = 20 * time.Minute
	TalosPullRetryInterval  = 5 * time.Second
	TalosMaxNotFoundRetries = 5
)

// ErrNotFound: every endpoint answered 404 for the image.
var ErrNotFound = errors.New("not found")

// Config configures a Client. Zero values take the defaults said.
type Config struct {
	// HTTP makes the requests (default: no proxy, 30 s to headers).
	HTTP *http.Client
	Log  *slog.Logger
	// Arch is the platform's architecture picked from an index
	// (default runtime.GOARCH); the OS is linux.
	Arch string
	// Timeout bounds the pull with its retries (default TalosPullTimeout).
	Timeout time.Duration
	// MaxAttempts stops earlier (0: until Timeout).
	MaxAttempts int
	// MaxNotFound: "not found" ends the pull after this many retries
	// (default TalosMaxNotFoundRetries; -1: none).
	MaxNotFound int
	// Backoff is the wait after attempt n (from 0) failed (default
	// Talos's exponential from TalosPullRetryInterval, capped at a minute).
	Backoff func(n int) time.Duration
	// Sleep waits d or until ctx ends (default a timer): tests inject it.
	Sleep func(ctx context.Context, d time.Duration) error
	// MaxBytes bounds what a layer unpacks to (default 1 GiB).
	MaxBytes int64
}

// Client pulls images.
type Client struct{ cfg Config }

// New returns a client.
func New(cfg Config) *Client {
	if cfg.HTTP == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Proxy = nil
		tr.ResponseHeaderTimeout = 30 * time.Second
		cfg.HTTP = &http.Client{Transport: tr}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Arch == "" {
		cfg.Arch = runtime.GOARCH
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = TalosPullTimeout
	}
	if cfg.MaxNotFound == 0 {
		cfg.MaxNotFound = TalosMaxNotFoundRetries
	}
	if cfg.Backoff == nil {
		cfg.Backoff = func(n int) time.Duration { return Backoff(n, TalosPullRetryInterval, time.Minute) }
	}
	if cfg.Sleep == nil {
		cfg.Sleep = func(ctx context.Context, d time.Duration) error {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-t.C:
				return nil
			}
		}
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = 1 << 30
	}
	return &Client{cfg: cfg}
}

// Backoff is go-retry's exponential backoff as Talos uses it: unit,
// 2 unit, 4 unit... capped at limit.
func Backoff(n int, unit, limit time.Duration) time.Duration {
	if n < 0 {
		n = 0
	}
	if n > 20 {
		return limit
	}
	d := unit << n
	if d > limit || d <= 0 {
		return limit
	}
	return d
}

// Result is what a pull got.
type Result struct {
	Image string // the normalized reference
	// Digest is what the reference resolved to (an index or a manifest:
	// containerd's image target); Manifest the platform's manifest.
	Digest, Manifest string
	// Endpoint answered the resolve; Endpoints every endpoint a blob or
	// manifest came from, in order of first use.
	Endpoint  string
	Endpoints []string
	// Bytes is what the successful attempt downloaded (manifests, config,
	// layers, as sent); Unpacked the layers' tar bytes.
	Bytes, Unpacked int64
	Attempts        int
	// Dir holds the unpacked layers; the caller removes it.
	Dir string
}

// Pull pulls image for linux/Arch through mirrors, verifying every digest
// and size and the layers' diff IDs, and unpacks its layers into a new
// directory under parent (Result.Dir). Failed attempts are retried like
// Talos; nothing of a failed attempt is left in parent.
func (c *Client) Pull(ctx context.Context, image string, mirrors Mirrors, parent string) (*Result, error) {
	ref, err := ParseRef(image)
	if err != nil {
		return nil, fmt.Errorf("failed to parse image reference: %w", err)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	notFound := 0
	for attempt := 0; ; attempt++ {
		res, err := c.pullOnce(ctx, ref, Endpoints(mirrors, ref.Host), parent)
		if err == nil {
			res.Attempts = attempt + 1
			c.cfg.Log.Info("image pulled", "image", res.Image, "digest", res.Digest, "endpoint", res.Endpoint, "bytes", res.Bytes, "attempts", res.Attempts, "took", time.Since(start).Round(time.Millisecond))
			return res, nil
		}
		err = fmt.Errorf("failed to pull image %q: %w", ref.String(), err)
		if errors.Is(err, ErrNotFound) {
			notFound++
			if c.cfg.MaxNotFound >= 0 && notFound > c.cfg.MaxNotFound {
				return nil, err
			}
		}
		if ctx.Err() != nil {
			return nil, err
		}
		if c.cfg.MaxAttempts > 0 && attempt+1 >= c.cfg.MaxAttempts {
			return nil, fmt.Errorf("%w (gave up after %d attempts)", err, attempt+1)
		}
		d := c.cfg.Backoff(attempt)
		c.cfg.Log.Warn("image pull failed", "attempt", attempt+1, "err", err, "retry_in", d)
		if serr := c.cfg.Sleep(ctx, d); serr != nil {
			return nil, fmt.Errorf("%w (then %w)", err, serr)
		}
	}
}

// attempt is one pull's state.
type attempt struct {
	c   *Client
	ref Ref
	eps []Endpoint
	res *Result
}

func (c *Client) pullOnce(ctx context.Context, ref Ref, eps []Endpoint, parent string) (_ *Result, err error) {
	a := &attempt{c: c, ref: ref, eps: eps, res: &Result{Image: ref.String()}}
	desc, ep, err := a.resolve(ctx)
	if err != nil {
		return nil, err
	}
	a.res.Endpoint = ep
	a.res.Digest = desc.Digest.String()
	m, err := a.manifest(ctx, desc)
	if err != nil {
		return nil, err
	}
	if m.Index != nil {
		d, err := SelectPlatform(m.Index, c.cfg.Arch)
		if err != nil {
			// containerd: "no match for platform in manifest: not found".
			return nil, fmt.Errorf("%s: %w: %w", desc.Digest, err, ErrNotFound)
		}
		if m, err = a.manifest(ctx, d); err != nil {
			return nil, err
		}
		if m.Image == nil {
			return nil, fmt.Errorf("%s: the index entry for linux/%s is not an image manifest", d.Digest, c.cfg.Arch)
		}
		desc = d
	}
	a.res.Manifest = desc.Digest.String()

	cfgBytes, err := a.blobBytes(ctx, m.Image.Config, "config")
	if err != nil {
		return nil, err
	}
	var cf v1.ConfigFile
	if err := json.Unmarshal(cfgBytes, &cf); err != nil {
		return nil, fmt.Errorf("image config %s: %w", m.Image.Config.Digest, err)
	}
	if cf.OS != "linux" || cf.Architecture != c.cfg.Arch {
		return nil, fmt.Errorf("image %s is for %s/%s, this machine is linux/%s", desc.Digest, cf.OS, cf.Architecture, c.cfg.Arch)
	}
	if len(cf.RootFS.DiffIDs) != len(m.Image.Layers) {
		return nil, fmt.Errorf("image config lists %d diff IDs for %d layers", len(cf.RootFS.DiffIDs), len(m.Image.Layers))
	}

	dir, err := os.MkdirTemp(parent, ".pull-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	for i, l := range m.Image.Layers {
		if err := a.layer(ctx, l, cf.RootFS.DiffIDs[i], dir); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	a.res.Dir = dir
	return a.res, nil
}

// resolve finds what the reference names on the first endpoint that knows
// it: HEAD manifests/<tag or digest>, else GET when no digest came back.
func (a *attempt) resolve(ctx context.Context) (v1.Descriptor, string, error) {
	var errs []error
	all404 := true
	for _, ep := range a.eps {
		u, err := RequestURL(ep, a.ref, "manifests", a.ref.Object())
		if err != nil {
			return v1.Descriptor{}, "", err
		}
		desc, err := a.head(ctx, u)
		if err == nil {
			if a.ref.Digest != "" && desc.Digest.String() != a.ref.Digest {
				return v1.Descriptor{}, "", fmt.Errorf("HEAD %s: digest %s, the reference pins %s", u, desc.Digest, a.ref.Digest)
			}
			return desc, ep.URL, nil
		}
		if !errors.Is(err, ErrNotFound) {
			all404 = false
		}
		errs = append(errs, err)
	}
	if all404 && len(errs) > 0 {
		return v1.Descriptor{}, "", fmt.Errorf("%w: %w", ErrNotFound, errors.Join(errs...))
	}
	return v1.Descriptor{}, "", errors.Join(errs...)
}

func (a *attempt) head(ctx context.Context, u string) (v1.Descriptor, error) {
	resp, err := a.do(ctx, http.MethodHead, u)
	if err != nil {
		return v1.Descriptor{}, err
	}
	resp.Body.Close()
	dg := resp.Header.Get("Docker-Content-Digest")
	if dg == "" && a.ref.Digest != "" {
		dg = a.ref.Digest
	}
	if dg == "" {
		// containerd: no digest from a HEAD, GET the manifest and hash it.
		resp, err := a.do(ctx, http.MethodGet, u)
		if err != nil {
			return v1.Descriptor{}, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
		if err != nil {
			return v1.Descriptor{}, fmt.Errorf("GET %s: %w", u, err)
		}
		a.count(int64(len(b)))
		sum := sha256.Sum256(b)
		return v1.Descriptor{Digest: v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sum)}, Size: int64(len(b))}, nil
	}
	h, err := v1.NewHash(dg)
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("HEAD %s: Docker-Content-Digest %q: %w", u, dg, err)
	}
	return v1.Descriptor{Digest: h, Size: resp.ContentLength}, nil
}

// do sends one request; a non-2xx status is an error (ErrNotFound for 404)
// naming the URL.
func (a *attempt) do(ctx context.Context, method, u string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", Accept)
	resp, err := a.c.cfg.HTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, u, unwrapURLError(err))
	}
	if resp.StatusCode/100 != 2 {
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			return nil, fmt.Errorf("%s %s: %w (404)", method, u, ErrNotFound)
		}
		return nil, fmt.Errorf("%s %s: %s", method, u, resp.Status)
	}
	return resp, nil
}

// unwrapURLError drops *url.Error's repetition of the method and URL.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// fetch GETs kind/<digest> from the endpoints in order (containerd's
// fetcher): the first 2xx wins.
func (a *attempt) fetch(ctx context.Context, kind string, d v1.Descriptor) (*http.Response, string, error) {
	var errs []error
	all404 := true
	for _, ep := range a.eps {
		u, err := RequestURL(ep, a.ref, kind, d.Digest.String())
		if err != nil {
			return nil, "", err
		}
		resp, err := a.do(ctx, http.MethodGet, u)
		if err == nil {
			a.use(ep.URL)
			return resp, u, nil
		}
		if !errors.Is(err, ErrNotFound) {
			all404 = false
		}
		errs = append(errs, err)
	}
	if all404 && len(errs) > 0 {
		return nil, "", fmt.Errorf("%w: %w", ErrNotFound, errors.Join(errs...))
	}
	return nil, "", errors.Join(errs...)
}

func (a *attempt) use(ep string) {
	for _, e := range a.res.Endpoints {
		if e == ep {
			return
		}
	}
	a.res.Endpoints = append(a.res.Endpoints, ep)
}

func (a *attempt) count(n int64) { a.res.Bytes += n }

// manifest GETs and parses the manifest or index d names.
func (a *attempt) manifest(ctx context.Context, d v1.Descriptor) (*Manifest, error) {
	resp, u, err := a.fetch(ctx, "manifests", d)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if d.Size > maxManifest {
		return nil, fmt.Errorf("GET %s: manifest of %d bytes (limit %d)", u, d.Size, maxManifest)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxManifest+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	a.count(int64(len(b)))
	if err := verify(b, d); err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	m, err := ParseManifest(resp.Header.Get("Content-Type"), b)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	return m, nil
}

// verify checks b against d's digest and, when d has one, its size.
func verify(b []byte, d v1.Descriptor) error {
	if d.Size > 0 && int64(len(b)) != d.Size {
		return fmt.Errorf("got %d bytes, the descriptor says %d", len(b), d.Size)
	}
	sum := sha256.Sum256(b)
	if got := fmt.Sprintf("sha256:%x", sum); got != d.Digest.String() {
		return fmt.Errorf("digest mismatch: got %s, want %s", got, d.Digest)
	}
	return nil
}

// blobBytes GETs a small blob (the image config) and verifies it.
func (a *attempt) blobBytes(ctx context.Context, d v1.Descriptor, what string) ([]byte, error) {
	if d.Size > maxManifest {
		return nil, fmt.Errorf("%s %s of %d bytes (limit %d)", what, d.Digest, d.Size, maxManifest)
	}
	resp, u, err := a.fetch(ctx, "blobs", d)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, d.Size+1))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	a.count(int64(len(b)))
	if err := verify(b, d); err != nil {
		return nil, fmt.Errorf("GET %s (%s): %w", u, what, err)
	}
	return b, nil
}

// layer streams one layer blob through its size and digest checks,
// decompresses it through the diff ID check and unpacks it into dir.
func (a *attempt) layer(ctx context.Context, d v1.Descriptor, diffID v1.Hash, dir string) error {
	comp, err := layerCompression(d.MediaType)
	if err != nil {
		return err
	}
	resp, u, err := a.fetch(ctx, "blobs", d)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw := &hashReader{r: io.LimitReader(resp.Body, d.Size+1), h: sha256.New()}
	var tr io.Reader = raw
	if comp == gzipped {
		zr, err := gzip.NewReader(raw)
		if err != nil {
			return fmt.Errorf("GET %s: gzip: %w", u, err)
		}
		defer zr.Close()
		tr = zr
	}
	plain := &hashReader{r: tr, h: sha256.New()}
	uerr := untar(plain, dir, a.c.cfg.MaxBytes)
	if uerr == nil {
		// The tar's end-of-archive blocks and padding count too.
		_, uerr = io.Copy(io.Discard, plain)
	}
	// The whole blob goes through the digest, whatever the tar held.
	if _, err := io.Copy(io.Discard, raw); err != nil && uerr == nil {
		uerr = err
	}
	a.count(raw.n)
	switch {
	case raw.n != d.Size:
		return fmt.Errorf("GET %s: got %d bytes, the manifest says %d", u, raw.n, d.Size)
	case raw.sum() != d.Digest.String():
		return fmt.Errorf("GET %s: digest mismatch: got %s, want %s", u, raw.sum(), d.Digest)
	case uerr != nil:
		return fmt.Errorf("GET %s: unpack: %w", u, uerr)
	case plain.sum() != diffID.String():
		return fmt.Errorf("GET %s: diff ID mismatch: got %s, the image config says %s", u, plain.sum(), diffID)
	}
	a.res.Unpacked += plain.n
	return nil
}

type hashReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	h.n += int64(n)
	return n, err
}

func (h *hashReader) sum() string { return fmt.Sprintf("sha256:%x", h.h.Sum(nil)) }

// untar writes the regular files and directories of a tar stream under
// dir (later entries replace earlier ones, as a later layer does); other
// entry types are skipped. Names cannot leave dir.
func untar(r io.Reader, dir string, maxBytes int64) error {
	tr := tar.NewReader(r)
	var total int64
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name, ok := CleanPath(h.Name)
		if !ok {
			continue
		}
		dst := filepath.Join(dir, filepath.FromSlash(name))
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			total += h.Size
			if total > maxBytes {
				return fmt.Errorf("layer unpacks to more than %d bytes", maxBytes)
			}
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			f, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, os.FileMode(h.Mode&0o755|0o600))
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
}

// CleanPath is a tar entry name as a relative slash path inside the
// image's root, or false for the root itself and for whiteouts.
func CleanPath(name string) (string, bool) {
	p := strings.TrimPrefix(path.Clean("/"+name), "/")
	if p == "" || strings.HasPrefix(path.Base(p), ".wh.") {
		return "", false
	}
	return p, true
}
