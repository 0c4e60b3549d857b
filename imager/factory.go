package imager

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Defaults of the Factory client.
const (
	DefaultFactoryURL = "https://factory.talos.dev"
	// DefaultReleaseURL is where the Talos GitHub releases are; the sums of
	// version V are at <url>/V/sha256sum.txt.
	DefaultReleaseURL = "https://github.com/siderolabs/talos/releases/download"
	defaultAttempts   = 5
	defaultBackoff    = time.Second
	maxBackoff        = 30 * time.Second
)

// ErrChecksum is returned when a download does not match the release's
// published sha256.
var ErrChecksum = errors.New("sha256 mismatch")

// HTTPError is a non-success answer from the Image Factory or GitHub.
type HTTPError struct {
	URL    string
	Status int
	Body   string // the start of the body, for the message
}

// Error names the URL and the status.
func (e *HTTPError) Error() string {
	s := fmt.Sprintf("GET %s: %s", e.URL, http.StatusText(e.Status))
	if e.Status != 0 {
		s = fmt.Sprintf("GET %s: %d %s", e.URL, e.Status, http.StatusText(e.Status))
	}
	if e.Body != "" {
		s += ": " + e.Body
	}
	return s
}

// Temporary reports whether trying again may help (5xx, 429, 408).
func (e *HTTPError) Temporary() bool {
	return e.Status >= 500 || e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout
}

// FactoryOption configures a Factory.
type FactoryOption func(*Factory)

// WithFactoryURL sets the Image Factory base URL (a mirror, or a test server).
func WithFactoryURL(u string) FactoryOption {
	return func(f *Factory) { f.base = strings.TrimRight(u, "/") }
}

// WithReleaseURL sets the base URL of the Talos releases (for sha256sum.txt);
// "" disables the release sum check.
func WithReleaseURL(u string) FactoryOption {
	return func(f *Factory) { f.release = strings.TrimRight(u, "/") }
}

// WithHTTPClient sets the HTTP client (default: one with no overall timeout,
// downloads are long; cancel the context to stop).
func WithHTTPClient(c *http.Client) FactoryOption { return func(f *Factory) { f.client = c } }

// WithFactoryLogger sets the logger.
func WithFactoryLogger(l *slog.Logger) FactoryOption { return func(f *Factory) { f.log = l } }

// WithRetry sets how many times a request is tried in all (at least 1) and
// the first backoff, doubled after each failure up to 30 s.
func WithRetry(attempts int, backoff time.Duration) FactoryOption {
	return func(f *Factory) { f.attempts, f.backoff = max(attempts, 1), backoff }
}

// WithSleep replaces the wait between retries (tests pass one that records
// the delays and returns at once). It must return ctx.Err() when ctx ends.
func WithSleep(sleep func(ctx context.Context, d time.Duration) error) FactoryOption {
	return func(f *Factory) { f.sleep = sleep }
}

// Factory downloads boot assets from the Talos Image Factory into a Cache.
type Factory struct {
	cache    *Cache
	base     string
	release  string
	client   *http.Client
	log      *slog.Logger
	attempts int
	backoff  time.Duration
	sleep    func(context.Context, time.Duration) error
}

// NewFactory returns an Image Factory client that stores into cache.
func NewFactory(cache *Cache, opts ...FactoryOption) (*Factory, error) {
	if cache == nil {
		return nil, errors.New("new factory client: no cache")
	}
	f := &Factory{
		cache:    cache,
		base:     DefaultFactoryURL,
		release:  DefaultReleaseURL,
		client:   &http.Client{},
		log:      slog.New(slog.DiscardHandler),
		attempts: defaultAttempts,
		backoff:  defaultBackoff,
		sleep:    sleepCtx,
	}
	for _, o := range opts {
		o(f)
	}
	if _, err := url.Parse(f.base); err != nil || !strings.HasPrefix(f.base, "http") {
		return nil, fmt.Errorf("new factory client: bad factory URL %q", f.base)
	}
	return f, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// ImageURL is the Image Factory URL of one file of a set.
func (f *Factory) ImageURL(s Set, name string) string {
	return fmt.Sprintf("%s/image/%s/%s/%s", f.base, s.Schematic, s.Version, name)
}

// factoryFile maps a cache file to the Image Factory's name and the
// release's name ("" when the release has no sum for it).
func factoryFile(file, arch string) (factory, release string) {
	switch file {
	case FileKernel:
		return "kernel-" + arch, "vmlinuz-" + arch
	case FileInitramfs:
		return "initramfs-" + arch + ".xz", "initramfs-" + arch + ".xz"
	default:
		return "cmdline-metal-" + arch, ""
	}
}

// Pull downloads the set's kernel, initramfs and metal cmdline from the Image
// Factory into the cache, unless the set is already there. Each file goes to
// a .part file first: an interrupted pull (error or ctx cancel) leaves it, and
// the next pull resumes it with a Range request. The sha256 is computed while
// streaming and recorded; for the vanilla schematic it is also checked against
// the release's sha256sum.txt when that is reachable, and a mismatch deletes
// the part and fails. The set appears in the cache only when all files are
// complete. progress may be nil.
func (f *Factory) Pull(ctx context.Context, version, schematic, arch string, progress Progress) (*Manifest, error) {
	s := Set{version, schematic, arch}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	if err := f.cache.Has(version, schematic, arch); err == nil {
		f.log.Info("boot assets already cached", "set", s.String())
		return f.cache.Manifest(s)
	}
	if progress == nil {
		progress = nopProgress{}
	}
	unlock, err := f.cache.lockSet(s)
	if err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	defer unlock()
	// A pull that finished between the check above and the lock.
	if err := f.cache.Has(version, schematic, arch); err == nil {
		return f.cache.Manifest(s)
	}
	var sums map[string]string
	sumsURL := ""
	if schematic == VanillaSchematicID && f.release != "" {
		sumsURL = fmt.Sprintf("%s/%s/sha256sum.txt", f.release, version)
		var err error
		sums, err = f.releaseSums(ctx, sumsURL)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("pull %s: %w", s, ctx.Err())
			}
			f.log.Warn("release sums not reachable: recording the computed sha256 only", "url", sumsURL, "err", err)
			sums = nil
		}
	}
	recs := map[string]FileRecord{}
	for _, file := range []string{FileKernel, FileInitramfs, FileCmdline} {
		name, relName := factoryFile(file, arch)
		u := f.ImageURL(s, name)
		part := f.cache.path(s, file) + partSuffix
		sum, size, err := f.download(ctx, u, part, name, progress)
		if err != nil {
			var he *HTTPError
			if file == FileCmdline && errors.As(err, &he) && he.Status == http.StatusNotFound {
				f.log.Warn("the factory has no metal cmdline for this set; going on without it", "url", u)
				continue
			}
			if errors.As(err, &he) && he.Status == http.StatusNotFound {
				return nil, fmt.Errorf("pull %s: the Image Factory has no %s for Talos %s with schematic %s: check the version and the schematic id: %w", s, name, version, schematic, err)
			}
			return nil, fmt.Errorf("pull %s: %w", s, err)
		}
		rec := FileRecord{SHA256: sum, Size: size, Source: u, Time: f.cache.now().UTC()}
		if relName != "" && sums != nil {
			want, ok := sums[relName]
			switch {
			case !ok:
				f.log.Warn("release sums do not list this file", "file", relName, "url", sumsURL)
			case want != sum:
				os.Remove(part)
				return nil, fmt.Errorf("pull %s: %s from %s: %w: got %s, %s says %s for %s; the download was deleted",
					s, name, u, ErrChecksum, sum, sumsURL, want, relName)
			default:
				rec.ReleaseSum = sumsURL
			}
		}
		if format, err := sniffFile(part, func(h []byte) (string, error) { return fileFormat(file, h, arch) }); err == nil {
			rec.Format = format
		} else if file != FileCmdline {
			f.log.Warn("downloaded file has an unexpected format", "file", name, "err", err)
		}
		recs[file] = rec
	}
	if _, ok := recs[FileCmdline]; !ok {
		if err := os.Remove(f.cache.path(s, FileCmdline)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("pull %s: %w", s, err)
		}
	}
	m, err := f.cache.commit(s, recs)
	if err != nil {
		return nil, fmt.Errorf("pull: %w", err)
	}
	f.log.Info("pulled boot assets", "set", s.String(), "kernel", recs[FileKernel].SHA256, "initramfs", recs[FileInitramfs].SHA256)
	return m, nil
}

func fileFormat(file string, head []byte, arch string) (string, error) {
	switch file {
	case FileKernel:
		return KernelFormat(head, arch)
	case FileInitramfs:
		return InitramfsFormat(head)
	}
	return "text", nil
}

// action is what to do with a download response.
type action int

// Download actions.
const (
	actRestart  action = iota // 200: the body is the whole file, from byte 0
	actAppend                 // 206 from the byte we have: append
	actComplete               // 416 and we already have the whole file
	actDiscard                // the part is unusable: delete it and ask again
	actRetry                  // temporary failure: back off and retry
	actFail                   // permanent failure
)

// decide is the pure protocol decision for a download response, given the
// bytes already in the part file. total is the whole file's size (-1 when
// unknown).
func decide(status int, contentRange string, contentLength, have int64) (action, int64) {
	switch {
	case status == http.StatusOK:
		return actRestart, contentLength
	case status == http.StatusPartialContent:
		first, _, total, err := ParseContentRange(contentRange)
		if err != nil || first != have || have == 0 {
			return actDiscard, -1
		}
		return actAppend, total
	case status == http.StatusRequestedRangeNotSatisfiable:
		_, _, total, err := ParseContentRange(contentRange)
		if err == nil && total >= 0 && total == have {
			return actComplete, total
		}
		return actDiscard, -1
	case status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout:
		return actRetry, -1
	default:
		return actFail, -1
	}
}

// ParseContentRange parses "bytes first-last/total" and "bytes */total"
// (first and last are -1 then); total is -1 for "*".
func ParseContentRange(v string) (first, last, total int64, err error) {
	bad := fmt.Errorf("bad Content-Range %q", v)
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, 0, 0, bad
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, bad
	}
	total = -1
	if tot != "*" {
		if total, err = parseNonNeg(tot); err != nil {
			return 0, 0, 0, bad
		}
	}
	if rng == "*" {
		if total < 0 {
			return 0, 0, 0, bad
		}
		return -1, -1, total, nil
	}
	a, b, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, bad
	}
	if first, err = parseNonNeg(a); err != nil {
		return 0, 0, 0, bad
	}
	if last, err = parseNonNeg(b); err != nil {
		return 0, 0, 0, bad
	}
	if last < first || (total >= 0 && last >= total) {
		return 0, 0, 0, bad
	}
	return first, last, total, nil
}

func parseNonNeg(s string) (int64, error) {
	if s == "" || s[0] == '+' || s[0] == '-' {
		return 0, errors.New("not a number")
	}
	return strconv.ParseInt(s, 10, 64)
}

// download fetches u into part, resuming what part holds, retrying
// temporary failures. It returns the sha256 and size of the whole file.
func (f *Factory) download(ctx context.Context, u, part, name string, progress Progress) (string, int64, error) {
	var lastErr error
	for attempt := 0; attempt < f.attempts; attempt++ {
		if attempt > 0 {
			d := min(f.backoff<<(attempt-1), maxBackoff)
			f.log.Warn("download failed; retrying", "url", u, "attempt", attempt+1, "of", f.attempts, "in", d, "err", lastErr)
			if err := f.sleep(ctx, d); err != nil {
				return "", 0, fmt.Errorf("download %s: %w (last error: %w)", u, err, lastErr)
			}
		}
		sum, size, retry, err := f.downloadOnce(ctx, u, part, name, progress)
		if err == nil {
			return sum, size, nil
		}
		if ctx.Err() != nil {
			return "", 0, fmt.Errorf("download %s: stopped, the partial file %s is kept for the next pull: %w", u, part, ctx.Err())
		}
		if !retry {
			return "", 0, err
		}
		lastErr = err
	}
	return "", 0, fmt.Errorf("gave up after %d attempts: %w", f.attempts, lastErr)
}

// downloadOnce makes one request (two when the part must be discarded).
func (f *Factory) downloadOnce(ctx context.Context, u, part, name string, progress Progress) (sum string, size int64, retry bool, err error) {
	for range 2 {
		have := int64(0)
		if st, err := os.Stat(part); err == nil {
			have = st.Size()
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return "", 0, false, fmt.Errorf("download %s: %w", u, err)
		}
		if have > 0 {
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
		}
		resp, err := f.client.Do(req)
		if err != nil {
			return "", 0, true, err // a *url.Error: it names the URL
		}
		act, total := decide(resp.StatusCode, resp.Header.Get("Content-Range"), resp.ContentLength, have)
		switch act {
		case actRetry, actFail:
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
			resp.Body.Close()
			return "", 0, act == actRetry, &HTTPError{URL: u, Status: resp.StatusCode, Body: strings.TrimSpace(string(body))}
		case actDiscard:
			resp.Body.Close()
			f.log.Warn("partial download cannot be resumed; starting over", "file", part, "status", resp.StatusCode, "content_range", resp.Header.Get("Content-Range"))
			if err := os.Remove(part); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return "", 0, false, fmt.Errorf("download %s: %w", u, err)
			}
			continue
		case actComplete:
			resp.Body.Close()
			sum, n, err := hashPath(part)
			if err != nil {
				return "", 0, false, fmt.Errorf("download %s: %w", u, err)
			}
			progress.Begin(name, n, n)
			progress.End(nil)
			return sum, n, false, nil
		}
		sum, size, err := f.stream(resp, part, act == actAppend, have, total, name, progress)
		if err != nil {
			return "", 0, true, fmt.Errorf("download %s: %w", u, err)
		}
		return sum, size, false, nil
	}
	return "", 0, true, fmt.Errorf("download %s: the server does not honour the resume request", u)
}

// stream writes the response body to part (appending or from scratch),
// hashing the whole file.
func (f *Factory) stream(resp *http.Response, part string, appendTo bool, have, total int64, name string, progress Progress) (string, int64, error) {
	defer resp.Body.Close()
	h := sha256.New()
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if appendTo {
		if err := hashInto(h, part); err != nil {
			return "", 0, err
		}
		flags = os.O_WRONLY | os.O_APPEND
	} else {
		have = 0
	}
	out, err := os.OpenFile(part, flags, 0o644)
	if err != nil {
		return "", 0, fmt.Errorf("open %s: %w", part, err)
	}
	progress.Begin(name, have, total)
	n, err := io.Copy(io.MultiWriter(out, h, progressWriter{progress}), resp.Body)
	// Keep what arrived, even on error: the next attempt resumes from it.
	if serr := out.Sync(); err == nil {
		err = serr
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	size := have + n
	if err == nil && total >= 0 && size != total {
		err = fmt.Errorf("got %d of %d bytes", size, total)
	}
	progress.End(err)
	if err != nil {
		return "", 0, fmt.Errorf("receive %s: %w", name, err)
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

func hashInto(h hash.Hash, name string) error {
	in, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("hash %s: %w", name, err)
	}
	defer in.Close()
	if _, err := io.Copy(h, in); err != nil {
		return fmt.Errorf("hash %s: %w", name, err)
	}
	return nil
}

func hashPath(name string) (string, int64, error) {
	h := sha256.New()
	if err := hashInto(h, name); err != nil {
		return "", 0, err
	}
	st, err := os.Stat(name)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), st.Size(), nil
}

// releaseSums fetches and parses a release's sha256sum.txt. It is a best
// effort check (GitHub may be out of reach where the factory mirror is not),
// so it is tried once.
func (f *Factory) releaseSums(ctx context.Context, u string) (map[string]string, error) {
	sums, _, err := f.releaseSumsOnce(ctx, u)
	return sums, err
}

func (f *Factory) releaseSumsOnce(ctx context.Context, u string) (map[string]string, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, false, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, true, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		he := &HTTPError{URL: u, Status: resp.StatusCode}
		return nil, he.Temporary(), he
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, true, fmt.Errorf("read %s: %w", u, err)
	}
	sums, err := ParseSums(data)
	if err != nil {
		return nil, false, fmt.Errorf("parse %s: %w", u, err)
	}
	return sums, false, nil
}

// ParseSums parses sha256sum output ("<hex>  <name>" per line, "*" before
// the name in binary mode) into name → lower-case hex sum.
func ParseSums(data []byte) (map[string]string, error) {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		sum, name, ok := strings.Cut(text, " ")
		name = strings.TrimPrefix(strings.TrimLeft(name, " "), "*")
		sum = strings.ToLower(sum)
		if !ok || name == "" || !schematicRE.MatchString(sum) {
			return nil, fmt.Errorf("line %d: not \"<sha256>  <file>\"", line)
		}
		out[name] = sum
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return out, nil
}

// EnsureSchematic registers a schematic (its YAML, as profiles.SchematicYAML
// makes it) with the Image Factory and returns the id the factory gives it
// (POST /schematics; the same schematic always gets the same id, so this is
// idempotent). The factory serves images only for schematics it has stored.
func (f *Factory) EnsureSchematic(ctx context.Context, schematic []byte) (string, error) {
	u := f.base + "/schematics"
	var lastErr error
	for attempt := 0; attempt < f.attempts; attempt++ {
		if attempt > 0 {
			if err := f.sleep(ctx, min(f.backoff<<(attempt-1), maxBackoff)); err != nil {
				return "", fmt.Errorf("create schematic at %s: %w (last error: %w)", u, err, lastErr)
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(schematic))
		if err != nil {
			return "", fmt.Errorf("create schematic: %w", err)
		}
		req.Header.Set("Content-Type", "application/yaml")
		resp, err := f.client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return "", fmt.Errorf("create schematic at %s: %w", u, ctx.Err())
			}
			lastErr = err
			continue
		}
		body, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
			he := &HTTPError{URL: u, Status: resp.StatusCode, Body: strings.TrimSpace(string(body[:min(len(body), 200)]))}
			if he.Temporary() {
				lastErr = he
				continue
			}
			return "", fmt.Errorf("create schematic: %w", he)
		}
		if rerr != nil {
			lastErr = rerr
			continue
		}
		var r struct {
			ID string `json:"id"`
		}
		if err := json.Unmarshal(body, &r); err != nil {
			return "", fmt.Errorf("create schematic at %s: bad answer: %w", u, err)
		}
		if !schematicRE.MatchString(r.ID) {
			return "", fmt.Errorf("create schematic at %s: bad id %q in the answer", u, r.ID)
		}
		return r.ID, nil
	}
	return "", fmt.Errorf("create schematic at %s: gave up after %d attempts: %w", u, f.attempts, lastErr)
}

// Progress is told how a download goes. Begin and End bracket each transfer
// (an attempt of one file); have is what a resumed part already holds, total
// is -1 when unknown.
type Progress interface {
	Begin(name string, have, total int64)
	Advance(n int)
	End(err error)
}

type nopProgress struct{}

func (nopProgress) Begin(string, int64, int64) {}
func (nopProgress) Advance(int)                {}
func (nopProgress) End(error)                  {}

type progressWriter struct{ p Progress }

func (w progressWriter) Write(b []byte) (int, error) {
	w.p.Advance(len(b))
	return len(b), nil
}

// NewProgress returns a progress display on w: a progress bar when w is a
// terminal, otherwise a plain line every interval (by the now clock) and one
// at the end of each file.
func NewProgress(w io.Writer, terminal bool, now func() time.Time, interval time.Duration) Progress {
	if terminal {
		return &barProgress{w: w}
	}
	return &lineProgress{w: w, now: now, every: interval}
}

type barProgress struct {
	w   io.Writer
	bar *progressbar.ProgressBar
}

func (p *barProgress) Begin(name string, have, total int64) {
	p.bar = progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(p.w),
		progressbar.OptionSetDescription(name),
		progressbar.OptionShowBytes(true),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(p.w) }),
	)
	if have > 0 {
		_ = p.bar.Set64(have)
	}
}

func (p *barProgress) Advance(n int) {
	if p.bar != nil {
		_ = p.bar.Add(n)
	}
}

func (p *barProgress) End(err error) {
	if p.bar == nil {
		return
	}
	if err == nil {
		_ = p.bar.Finish()
	} else {
		_ = p.bar.Exit()
		fmt.Fprintln(p.w)
	}
	p.bar = nil
}

type lineProgress struct {
	w     io.Writer
	now   func() time.Time
	every time.Duration

	mu          sync.Mutex
	name        string
	done, total int64
	last        time.Time
}

func (p *lineProgress) Begin(name string, have, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.name, p.done, p.total, p.last = name, have, total, p.now()
	if have > 0 {
		fmt.Fprintf(p.w, "%s: resuming at %s\n", name, p.status())
	}
}

func (p *lineProgress) Advance(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += int64(n)
	if t := p.now(); t.Sub(p.last) >= p.every {
		p.last = t
		fmt.Fprintf(p.w, "%s: %s\n", p.name, p.status())
	}
}

func (p *lineProgress) End(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		fmt.Fprintf(p.w, "%s: interrupted at %s: %v\n", p.name, p.status(), err)
		return
	}
	fmt.Fprintf(p.w, "%s: done, %s\n", p.name, mib(p.done))
}

func (p *lineProgress) status() string {
	if p.total <= 0 {
		return mib(p.done)
	}
	return fmt.Sprintf("%s of %s (%d%%)", mib(p.done), mib(p.total), p.done*100/p.total)
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
