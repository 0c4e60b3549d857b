package imager

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const testVersion = "v1.13.0"

// fakeKernel is a small x86 bzImage look-alike: boot flag and "HdrS".
func fakeKernel(size int, seed uint64) []byte {
	b := randomBytes(size, seed)
	copy(b[0x1fe:], "\x55\xaa") // boot_flag
	copy(b[0x202:], "HdrS")     // header magic
	return b
}

// fakeInitramfs starts with the xz magic.
func fakeInitramfs(size int, seed uint64) []byte {
	b := randomBytes(size, seed)
	copy(b, "\xfd7zXZ\x00")
	return b
}

func randomBytes(size int, seed uint64) []byte {
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}))
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// fakeFactory mimics the Image Factory (GET /image/<schematic>/<version>/<file>,
// POST /schematics) and GitHub releases (GET /releases/<version>/sha256sum.txt)
// on a real loopback HTTP server.
type fakeFactory struct {
	t   testing.TB
	srv *httptest.Server

	mu          sync.Mutex
	files       map[string][]byte // URL path → content
	sums        string            // sha256sum.txt, "" → 404
	cutAfter    map[string]int    // URL path → abort the connection after N body bytes, once
	hangAfter   map[string]int    // URL path → send N bytes, then wait for the client to go, once
	ignoreRange bool
	fail        int // answer 503 to this many file requests first
	served      map[string]int64
	ranges      map[string][]string
	requests    int
	schematics  []string
}

func newFakeFactory(t testing.TB) *fakeFactory {
	t.Helper()
	ff := &fakeFactory{
		t:         t,
		files:     map[string][]byte{},
		cutAfter:  map[string]int{},
		hangAfter: map[string]int{},
		served:    map[string]int64{},
		ranges:    map[string][]string{},
	}
	ff.srv = httptest.NewServer(http.HandlerFunc(ff.serve))
	t.Cleanup(ff.srv.Close)
	return ff
}

// addSet serves a kernel, initramfs and cmdline for the set and returns them.
func (ff *fakeFactory) addSet(s Set, kernel, initramfs []byte) {
	ff.mu.Lock()
	defer ff.mu.Unlock()
	base := fmt.Sprintf("/image/%s/%s/", s.Schematic, s.Version)
	ff.files[base+"kernel-"+s.Arch] = kernel
	ff.files[base+"initramfs-"+s.Arch+".xz"] = initramfs
	ff.files[base+"cmdline-metal-"+s.Arch] = []byte("talos.platform=metal console=tty0")
}

func (ff *fakeFactory) path(s Set, name string) string {
	return fmt.Sprintf("/image/%s/%s/%s", s.Schematic, s.Version, name)
}

func (ff *fakeFactory) setSums(kernel, initramfs []byte) {
	ff.mu.Lock()
	defer ff.mu.Unlock()
	ff.sums = fmt.Sprintf("%s  vmlinuz-amd64\n%s  initramfs-amd64.xz\n%s  metal-amd64.iso\n", sha(kernel), sha(initramfs), sha([]byte("iso")))
}

type countingWriter struct {
	http.ResponseWriter
	n     *int64
	limit int // abort after this many bytes (0: no limit)
	hang  bool
	ctx   context.Context
}

func (w *countingWriter) Write(b []byte) (int, error) {
	if w.limit > 0 && int(*w.n)+len(b) > w.limit {
		b = b[:w.limit-int(*w.n)]
		n, _ := w.ResponseWriter.Write(b)
		*w.n += int64(n)
		w.ResponseWriter.(http.Flusher).Flush()
		if w.hang {
			<-w.ctx.Done()
		}
		panic(http.ErrAbortHandler) // cut the connection
	}
	n, err := w.ResponseWriter.Write(b)
	*w.n += int64(n)
	return n, err
}

func (ff *fakeFactory) serve(w http.ResponseWriter, r *http.Request) {
	ff.mu.Lock()
	ff.requests++
	if r.Method == http.MethodPost && r.URL.Path == "/schematics" {
		body, _ := io.ReadAll(r.Body)
		ff.schematics = append(ff.schematics, string(body))
		ff.mu.Unlock()
		sum := sha256.Sum256(body)
		w.WriteHeader(http.StatusCreated)
		fmt.Fprintf(w, `{"id":%q}`, hex.EncodeToString(sum[:]))
		return
	}
	if strings.HasPrefix(r.URL.Path, "/releases/") && strings.HasSuffix(r.URL.Path, "/sha256sum.txt") {
		sums := ff.sums
		ff.mu.Unlock()
		if sums == "" || r.URL.Path != "/releases/"+testVersion+"/sha256sum.txt" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, sums)
		return
	}
	content, ok := ff.files[r.URL.Path]
	if !ok {
		ff.mu.Unlock()
		http.Error(w, "image not found", http.StatusNotFound)
		return
	}
	if ff.fail > 0 {
		ff.fail--
		ff.mu.Unlock()
		http.Error(w, "try later", http.StatusServiceUnavailable)
		return
	}
	ff.ranges[r.URL.Path] = append(ff.ranges[r.URL.Path], r.Header.Get("Range"))
	limit, hang := ff.cutAfter[r.URL.Path], false
	delete(ff.cutAfter, r.URL.Path)
	if n, ok := ff.hangAfter[r.URL.Path]; ok {
		limit, hang = n, true
		delete(ff.hangAfter, r.URL.Path)
	}
	ignore := ff.ignoreRange
	ff.mu.Unlock()

	var n int64
	cw := &countingWriter{ResponseWriter: w, n: &n, limit: limit, hang: hang, ctx: r.Context()}
	defer func() {
		ff.mu.Lock()
		ff.served[r.URL.Path] += n
		ff.mu.Unlock()
	}()
	if ignore {
		w.Header().Set("Content-Length", fmt.Sprint(len(content)))
		cw.Write(content)
		return
	}
	http.ServeContent(cw, r, "", time.Time{}, bytes.NewReader(content))
}

func (ff *fakeFactory) servedBytes(p string) int64 {
	ff.mu.Lock()
	defer ff.mu.Unlock()
	return ff.served[p]
}

func (ff *fakeFactory) rangesOf(p string) []string {
	ff.mu.Lock()
	defer ff.mu.Unlock()
	return append([]string(nil), ff.ranges[p]...)
}

// sleeps records retry delays instead of sleeping.
type sleeps struct {
	mu sync.Mutex
	d  []time.Duration
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.d = append(s.d, d)
	return ctx.Err()
}

func (s *sleeps) get() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Duration(nil), s.d...)
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func newTestFactory(t *testing.T, ff *fakeFactory, sl *sleeps, opts ...FactoryOption) (*Factory, *Cache) {
	t.Helper()
	c, err := OpenCache(t.TempDir(), WithCacheLogger(testLogger(t)),
		WithCacheClock(func() time.Time { return time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC) }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	all := append([]FactoryOption{
		WithFactoryURL(ff.srv.URL),
		WithReleaseURL(ff.srv.URL + "/releases"),
		WithFactoryLogger(testLogger(t)),
		WithRetry(4, time.Second),
		WithSleep(sl.sleep),
	}, opts...)
	f, err := NewFactory(c, all...)
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

var vanilla = Set{testVersion, VanillaSchematicID, "amd64"}

func readAll(t *testing.T, c *Cache, id string) []byte {
	t.Helper()
	f, err := c.Open(id)
	if err != nil {
		t.Fatalf("Open(%s): %v", id, err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPullVanillaCheckedAgainstReleaseSums(t *testing.T) {
	ff := newFakeFactory(t)
	kernel, initramfs := fakeKernel(300<<10, 1), fakeInitramfs(500<<10, 2)
	ff.addSet(vanilla, kernel, initramfs)
	ff.setSums(kernel, initramfs)
	sl := &sleeps{}
	f, c := newTestFactory(t, ff, sl)

	if err := c.Has(vanilla.Version, vanilla.Schematic, vanilla.Arch); !errors.Is(err, ErrMissing) ||
		!strings.Contains(err.Error(), "rackboot assets pull --version v1.13.0 --schematic "+VanillaSchematicID+" --arch amd64") {
		t.Fatalf("Has before pull = %v, want ErrMissing naming the pull command", err)
	}
	var out bytes.Buffer
	clock := time.Unix(0, 0)
	prog := NewProgress(&out, false, func() time.Time { clock = clock.Add(time.Second); return clock }, 10*time.Second)
	m, err := f.Pull(context.Background(), vanilla.Version, vanilla.Schematic, vanilla.Arch, prog)
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string][]byte{FileKernel: kernel, FileInitramfs: initramfs} {
		rec := m.Files[file]
		if rec.SHA256 != sha(want) || rec.Size != int64(len(want)) {
			t.Errorf("%s: manifest %+v, want sha %s size %d", file, rec, sha(want), len(want))
		}
		if rec.ReleaseSum != ff.srv.URL+"/releases/v1.13.0/sha256sum.txt" {
			t.Errorf("%s: release sum not recorded: %+v", file, rec)
		}
		if !strings.HasPrefix(rec.Source, ff.srv.URL+"/image/"+VanillaSchematicID+"/v1.13.0/") {
			t.Errorf("%s: source %q", file, rec.Source)
		}
		if got := readAll(t, c, vanilla.ID(file)); !bytes.Equal(got, want) {
			t.Errorf("%s: cached content differs", file)
		}
	}
	if m.Files[FileKernel].Format != "bzImage" || m.Files[FileInitramfs].Format != "xz" {
		t.Errorf("formats: %+v", m.Files)
	}
	if got := string(readAll(t, c, vanilla.ID(FileCmdline))); got != "talos.platform=metal console=tty0" {
		t.Errorf("cmdline = %q", got)
	}
	if err := c.Has(vanilla.Version, vanilla.Schematic, vanilla.Arch); err != nil {
		t.Errorf("Has after pull: %v", err)
	}
	if err := c.Verify(vanilla.Version, vanilla.Schematic, vanilla.Arch); err != nil {
		t.Errorf("Verify: %v", err)
	}
	if len(sl.get()) != 0 {
		t.Errorf("retried without failures: %v", sl.get())
	}
	if !strings.Contains(out.String(), "kernel-amd64: done, 0.3 MiB") || !strings.Contains(out.String(), "initramfs-amd64.xz: done, 0.5 MiB") {
		t.Errorf("progress output:\n%s", out.String())
	}
	parts, _ := filepath.Glob(filepath.Join(c.Dir(), "talos", "*", "*", "*", "*.part"))
	if len(parts) != 0 {
		t.Errorf("parts left: %v", parts)
	}

	// A second pull is a no-op: nothing is fetched again.
	before := ff.requests
	if _, err := f.Pull(context.Background(), vanilla.Version, vanilla.Schematic, vanilla.Arch, nil); err != nil {
		t.Fatal(err)
	}
	if ff.requests != before {
		t.Errorf("second pull made %d requests", ff.requests-before)
	}
	ms, err := c.List()
	if err != nil || len(ms) != 1 || ms[0].Set != vanilla {
		t.Errorf("List = %v, %v", ms, err)
	}
}

func TestPullWithoutReleaseSums(t *testing.T) {
	ff := newFakeFactory(t) // sums "" → 404
	kernel, initramfs := fakeKernel(64<<10, 3), fakeInitramfs(64<<10, 4)
	ff.addSet(vanilla, kernel, initramfs)
	f, c := newTestFactory(t, ff, &sleeps{})
	m, err := f.Pull(context.Background(), vanilla.Version, vanilla.Schematic, vanilla.Arch, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Files[FileKernel].ReleaseSum != "" || m.Files[FileKernel].SHA256 != sha(kernel) {
		t.Errorf("kernel record %+v", m.Files[FileKernel])
	}
	if err := c.Has(vanilla.Version, vanilla.Schematic, vanilla.Arch); err != nil {
		t.Error(err)
	}
}

func TestPullRefusesChecksumMismatch(t *testing.T) {
	ff := newFakeFactory(t)
	kernel, initramfs := fakeKernel(64<<10, 5), fakeInitramfs(128<<10, 6)
	ff.addSet(vanilla, kernel, initramfs)
	ff.setSums(kernel, fakeInitramfs(128<<10, 7)) // the release's initramfs is another one
	f, c := newTestFactory(t, ff, &sleeps{})
	_, err := f.Pull(context.Background(), vanilla.Version, vanilla.Schematic, vanilla.Arch, nil)
	if !errors.Is(err, ErrChecksum) {
		t.Fatalf("Pull = %v, want ErrChecksum", err)
	}
	for _, want := range []string{sha(initramfs), "initramfs-amd64.xz", "sha256sum.txt", "deleted"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if err := c.Has(vanilla.Version, vanilla.Schematic, vanilla.Arch); !errors.Is(err, ErrMissing) {
		t.Errorf("Has = %v, want ErrMissing", err)
	}
	dir := filepath.Join(c.Dir(), "talos", vanilla.Version, vanilla.Schematic, vanilla.Arch)
	for _, name := range []string{FileKernel, FileInitramfs, FileInitramfs + partSuffix, manifestName} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is in the cache after a refused pull (%v)", name, err)
		}
	}
	if _, err := c.Open(vanilla.ID(FileKernel)); !errors.Is(err, ErrMissing) {
		t.Errorf("Open after refused pull = %v", err)
	}
}

func TestPullResumesAcrossPulls(t *testing.T) {
	ff := newFakeFactory(t)
	s := Set{testVersion, strings.Repeat("ab", 32), "amd64"}
	kernel, initramfs := fakeKernel(1<<20, 8), fakeInitramfs(256<<10, 9)
	ff.addSet(s, kernel, initramfs)
	kpath := ff.path(s, "kernel-amd64")
	ff.cutAfter[kpath] = 300_000
	sl := &sleeps{}
	f, c := newTestFactory(t, ff, sl, WithRetry(1, time.Second))

	_, err := f.Pull(context.Background(), s.Version, s.Schematic, s.Arch, nil)
	if err == nil {
		t.Fatal("first pull succeeded though the connection was cut")
	}
	part := filepath.Join(c.Dir(), filepath.FromSlash(s.ID(FileKernel))) + partSuffix
	st, serr := os.Stat(part)
	if serr != nil || st.Size() == 0 || st.Size() > 300_000 {
		t.Fatalf("part after cut: %v %v", st, serr)
	}
	have := st.Size()
	t.Logf("first pull: %v; part holds %d bytes", err, have)

	m, err := f.Pull(context.Background(), s.Version, s.Schematic, s.Arch, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := ff.rangesOf(kpath); len(got) != 2 || got[0] != "" || got[1] != fmt.Sprintf("bytes=%d-", have) {
		t.Errorf("Range headers = %q, want none then bytes=%d-", got, have)
	}
	// Resumed, not restarted: the server sent the kernel's bytes once in all.
	if got := ff.servedBytes(kpath); got != int64(len(kernel)) {
		t.Errorf("server sent %d kernel bytes, want %d", got, len(kernel))
	}
	if m.Files[FileKernel].SHA256 != sha(kernel) {
		t.Errorf("kernel sha %s, want %s", m.Files[FileKernel].SHA256, sha(kernel))
	}
	if !bytes.Equal(readAll(t, c, s.ID(FileKernel)), kernel) {
		t.Error("kernel content differs")
	}
	if len(sl.get()) != 0 {
		t.Errorf("sleeps %v with one attempt", sl.get())
	}
}

func TestPullRetriesAndResumesWithinOnePull(t *testing.T) {
	ff := newFakeFactory(t)
	s := Set{testVersion, strings.Repeat("cd", 32), "amd64"}
	kernel, initramfs := fakeKernel(512<<10, 10), fakeInitramfs(512<<10, 11)
	ff.addSet(s, kernel, initramfs)
	ipath := ff.path(s, "initramfs-amd64.xz")
	ff.cutAfter[ipath] = 100_000
	sl := &sleeps{}
	f, _ := newTestFactory(t, ff, sl)
	m, err := f.Pull(context.Background(), s.Version, s.Schematic, s.Arch, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Files[FileInitramfs].SHA256 != sha(initramfs) {
		t.Error("initramfs sha differs")
	}
	if got := ff.servedBytes(ipath); got != int64(len(initramfs)) {
		t.Errorf("server sent %d initramfs bytes, want %d (a restart would send more)", got, len(initramfs))
	}
	if r := ff.rangesOf(ipath); len(r) != 2 || !strings.HasPrefix(r[1], "bytes=") {
		t.Errorf("ranges %q", r)
	}
	if got := sl.get(); len(got) != 1 || got[0] != time.Second {
		t.Errorf("backoffs %v, want [1s]", got)
	}
}

func TestPullRestartsWhenServerIgnoresRange(t *testing.T) {
	ff := newFakeFactory(t)
	s := Set{testVersion, strings.Repeat("ef", 32), "amd64"}
	kernel, initramfs := fakeKernel(200<<10, 12), fakeInitramfs(100<<10, 13)
	ff.addSet(s, kernel, initramfs)
	ff.ignoreRange = true
	f, c := newTestFactory(t, ff, &sleeps{})
	// A stale part that does not even belong to this kernel.
	part := filepath.Join(c.Dir(), filepath.FromSlash(s.ID(FileKernel))) + partSuffix
	if err := os.MkdirAll(filepath.Dir(part), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(part, randomBytes(50_000, 99), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := f.Pull(context.Background(), s.Version, s.Schematic, s.Arch, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := ff.rangesOf(ff.path(s, "kernel-amd64")); len(r) != 1 || r[0] != "bytes=50000-" {
		t.Errorf("ranges %q", r)
	}
	if m.Files[FileKernel].SHA256 != sha(kernel) || m.Files[FileKernel].Size != int64(len(kernel)) {
		t.Errorf("kernel record %+v, want sha %s", m.Files[FileKernel], sha(kernel))
	}
	if !bytes.Equal(readAll(t, c, s.ID(FileKernel)), kernel) {
		t.Error("kernel content differs: the 200 was appended to the stale part")
	}
}

func TestPullCompletePartGets416(t *testing.T) {
	ff := newFakeFactory(t)
	s := Set{testVersion, strings.Repeat("01", 32), "amd64"}
	kernel, initramfs := fakeKernel(100<<10, 14), fakeInitramfs(100<<10, 15)
	ff.addSet(s, kernel, initramfs)
	f, c := newTestFactory(t, ff, &sleeps{})
	part := filepath.Join(c.Dir(), filepath.FromSlash(s.ID(FileKernel))) + partSuffix
	os.MkdirAll(filepath.Dir(part), 0o755)
	if err := os.WriteFile(part, kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := f.Pull(context.Background(), s.Version, s.Schematic, s.Arch, nil)
	if err != nil {
		t.Fatal(err)
	}
	kpath := ff.path(s, "kernel-amd64")
	if r := ff.rangesOf(kpath); len(r) != 1 || r[0] != fmt.Sprintf("bytes=%d-", len(kernel)) {
		t.Errorf("ranges %q", r)
	}
	if n := ff.servedBytes(kpath); n > 200 { // only the 416 error text
		t.Errorf("server sent %d kernel bytes for a complete part", n)
	}
	if m.Files[FileKernel].SHA256 != sha(kernel) {
		t.Error("kernel sha differs")
	}
}

func TestPullRetries5xx(t *testing.T) {
	ff := newFakeFactory(t)
	s := Set{testVersion, strings.Repeat("23", 32), "arm64"}
	kernel := randomBytes(64<<10, 16)
	copy(kernel[0x38:], "ARM\x64")
	ff.addSet(s, kernel, fakeInitramfs(64<<10, 17))
	ff.fail = 3
	sl := &sleeps{}
	f, _ := newTestFactory(t, ff, sl)
	m, err := f.Pull(context.Background(), s.Version, s.Schematic, s.Arch, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Files[FileKernel].Format != "arm64-image" {
		t.Errorf("format %q", m.Files[FileKernel].Format)
	}
	if got := sl.get(); fmt.Sprint(got) != "[1s 2s 4s]" {
		t.Errorf("backoffs %v, want [1s 2s 4s]", got)
	}

	// More failures than attempts: a clear error naming the URL and the status.
	ff2 := newFakeFactory(t)
	ff2.addSet(s, kernel, fakeInitramfs(64<<10, 17))
	ff2.fail = 10
	f2, c2 := newTestFactory(t, ff2, &sleeps{})
	_, err = f2.Pull(context.Background(), s.Version, s.Schematic, s.Arch, nil)
	if err == nil || !strings.Contains(err.Error(), "gave up after 4 attempts") || !strings.Contains(err.Error(), "503") ||
		!strings.Contains(err.Error(), ff2.srv.URL+ff2.path(s, "kernel-arm64")) {
		t.Fatalf("Pull = %v", err)
	}
	if err := c2.Has(s.Version, s.Schematic, s.Arch); !errors.Is(err, ErrMissing) {
		t.Error(err)
	}
}

func TestPull404NamesURLVersionSchematic(t *testing.T) {
	ff := newFakeFactory(t)
	sl := &sleeps{}
	f, _ := newTestFactory(t, ff, sl)
	s := Set{"v1.99.0", strings.Repeat("45", 32), "amd64"}
	_, err := f.Pull(context.Background(), s.Version, s.Schematic, s.Arch, nil)
	var he *HTTPError
	if !errors.As(err, &he) || he.Status != http.StatusNotFound {
		t.Fatalf("Pull = %v, want an HTTPError 404", err)
	}
	for _, want := range []string{ff.srv.URL + "/image/" + s.Schematic + "/v1.99.0/kernel-amd64", "v1.99.0", s.Schematic} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	if len(sl.get()) != 0 {
		t.Errorf("a 404 was retried: %v", sl.get())
	}
}

// cancelProgress cancels the pull once some bytes arrived.
type cancelProgress struct {
	nopProgress
	cancel context.CancelFunc
	got    int
}

func (p *cancelProgress) Advance(n int) {
	p.got += n
	p.cancel()
}

func TestPullCancelLeavesResumablePart(t *testing.T) {
	ff := newFakeFactory(t)
	s := Set{testVersion, strings.Repeat("67", 32), "amd64"}
	kernel, initramfs := fakeKernel(400<<10, 18), fakeInitramfs(64<<10, 19)
	ff.addSet(s, kernel, initramfs)
	kpath := ff.path(s, "kernel-amd64")
	ff.hangAfter[kpath] = 150_000
	sl := &sleeps{}
	f, c := newTestFactory(t, ff, sl)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := f.Pull(ctx, s.Version, s.Schematic, s.Arch, &cancelProgress{cancel: cancel})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "kept for the next pull") {
		t.Fatalf("Pull = %v, want context.Canceled", err)
	}
	if len(sl.get()) != 0 {
		t.Errorf("retried after cancel: %v", sl.get())
	}
	part := filepath.Join(c.Dir(), filepath.FromSlash(s.ID(FileKernel))) + partSuffix
	st, serr := os.Stat(part)
	if serr != nil || st.Size() == 0 {
		t.Fatalf("no part kept: %v", serr)
	}
	m, err := f.Pull(context.Background(), s.Version, s.Schematic, s.Arch, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Files[FileKernel].SHA256 != sha(kernel) {
		t.Error("kernel sha differs after resume")
	}
	if r := ff.rangesOf(kpath); len(r) != 2 || r[1] != fmt.Sprintf("bytes=%d-", st.Size()) {
		t.Errorf("ranges %q, want a resume from %d", r, st.Size())
	}
}

func TestEnsureSchematic(t *testing.T) {
	ff := newFakeFactory(t)
	f, _ := newTestFactory(t, ff, &sleeps{})
	doc := []byte("customization:\n    systemExtensions:\n        officialExtensions:\n            - siderolabs/nvidia-container-toolkit-production\n")
	id, err := f.EnsureSchematic(context.Background(), doc)
	if err != nil {
		t.Fatal(err)
	}
	if id != sha(doc) || len(ff.schematics) != 1 || ff.schematics[0] != string(doc) {
		t.Errorf("id %s, posted %q", id, ff.schematics)
	}
	// A factory that refuses the schematic: a clear error, no retry.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "unknown extension siderolabs/nope", http.StatusBadRequest)
	}))
	defer srv.Close()
	sl := &sleeps{}
	f2, _ := newTestFactory(t, ff, sl, WithFactoryURL(srv.URL))
	if _, err := f2.EnsureSchematic(context.Background(), doc); err == nil || !strings.Contains(err.Error(), "unknown extension siderolabs/nope") || len(sl.get()) != 0 {
		t.Errorf("EnsureSchematic on a 400 = %v (sleeps %v)", err, sl.get())
	}
}

func TestDecide(t *testing.T) {
	tests := []struct {
		name   string
		status int
		cr     string
		cl     int64
		have   int64
		want   action
		total  int64
	}{
		{"full body", 200, "", 1000, 0, actRestart, 1000},
		{"server ignored range", 200, "", 1000, 400, actRestart, 1000},
		{"resume", 206, "bytes 400-999/1000", 600, 400, actAppend, 1000},
		{"resume, total unknown", 206, "bytes 400-999/*", 600, 400, actAppend, -1},
		{"wrong start", 206, "bytes 0-999/1000", 1000, 400, actDiscard, -1},
		{"206 without our range", 206, "bytes 0-999/1000", 1000, 0, actDiscard, -1},
		{"bad content-range", 206, "items 1-2/3", 2, 1, actDiscard, -1},
		{"complete", 416, "bytes */1000", 0, 1000, actComplete, 1000},
		{"part larger than file", 416, "bytes */1000", 0, 1200, actDiscard, -1},
		{"416 without range", 416, "", 0, 1000, actDiscard, -1},
		{"unavailable", 503, "", 0, 0, actRetry, -1},
		{"rate limited", 429, "", 0, 0, actRetry, -1},
		{"not found", 404, "", 0, 0, actFail, -1},
		{"forbidden", 403, "", 0, 0, actFail, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, total := decide(tt.status, tt.cr, tt.cl, tt.have)
			if got != tt.want || total != tt.total {
				t.Errorf("decide = %v, %d; want %v, %d", got, total, tt.want, tt.total)
			}
		})
	}
}

func TestParseContentRange(t *testing.T) {
	tests := []struct {
		in                 string
		first, last, total int64
		ok                 bool
	}{
		{"bytes 0-499/1234", 0, 499, 1234, true},
		{"bytes 500-1233/*", 500, 1233, -1, true},
		{"bytes */1234", -1, -1, 1234, true},
		{"bytes */*", 0, 0, 0, false},
		{"bytes 5-4/10", 0, 0, 0, false},
		{"bytes 0-10/10", 0, 0, 0, false},
		{"bytes -1-4/10", 0, 0, 0, false},
		{"bytes +1-4/10", 0, 0, 0, false},
		{"0-4/10", 0, 0, 0, false},
		{"bytes 0-4", 0, 0, 0, false},
		{"", 0, 0, 0, false},
	}
	for _, tt := range tests {
		f, l, tot, err := ParseContentRange(tt.in)
		if (err == nil) != tt.ok || (tt.ok && (f != tt.first || l != tt.last || tot != tt.total)) {
			t.Errorf("ParseContentRange(%q) = %d, %d, %d, %v", tt.in, f, l, tot, err)
		}
	}
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-499/1234", "bytes */1234", "bytes 1-2/*", "bytes 9-8/7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		first, last, total, err := ParseContentRange(s)
		if err != nil {
			return
		}
		if total < -1 || (first == -1) != (last == -1) || (first >= 0 && last < first) || (total >= 0 && last >= total) {
			t.Errorf("ParseContentRange(%q) = %d, %d, %d", s, first, last, total)
		}
	})
}

func TestParseSums(t *testing.T) {
	k, i := strings.Repeat("a", 64), strings.Repeat("B", 64)
	got, err := ParseSums([]byte(k + "  vmlinuz-amd64\n\n" + i + " *initramfs-amd64.xz\n"))
	if err != nil || got["vmlinuz-amd64"] != k || got["initramfs-amd64.xz"] != strings.ToLower(i) || len(got) != 2 {
		t.Errorf("ParseSums = %v, %v", got, err)
	}
	for _, bad := range []string{"abc  vmlinuz-amd64\n", k + "\n", "<html>not found</html>"} {
		if _, err := ParseSums([]byte(bad)); err == nil {
			t.Errorf("ParseSums(%q) accepted", bad)
		}
	}
}

func FuzzParseSums(f *testing.F) {
	f.Add([]byte(strings.Repeat("0", 64) + "  vmlinuz-amd64\n"))
	f.Add([]byte("x y\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		sums, err := ParseSums(data)
		if err != nil {
			return
		}
		for name, sum := range sums {
			if name == "" || !schematicRE.MatchString(sum) {
				t.Errorf("ParseSums gave %q → %q", name, sum)
			}
		}
	})
}

func TestLineProgress(t *testing.T) {
	var out bytes.Buffer
	now := time.Unix(0, 0)
	p := NewProgress(&out, false, func() time.Time { return now }, 5*time.Second)
	p.Begin("kernel-amd64", 1<<20, 4<<20)
	p.Advance(1 << 20) // no time passed: no line
	now = now.Add(5 * time.Second)
	p.Advance(1 << 20)
	p.End(nil)
	want := "kernel-amd64: resuming at 1.0 MiB of 4.0 MiB (25%)\nkernel-amd64: 3.0 MiB of 4.0 MiB (75%)\nkernel-amd64: done, 3.0 MiB\n"
	if out.String() != want {
		t.Errorf("progress =\n%s\nwant\n%s", out.String(), want)
	}
}

func TestBarProgressWrites(t *testing.T) {
	var out bytes.Buffer
	p := NewProgress(&out, true, time.Now, time.Second)
	p.Begin("initramfs-amd64.xz", 0, 2<<20)
	p.Advance(2 << 20)
	p.End(nil)
	if !strings.Contains(out.String(), "initramfs-amd64.xz") || !strings.Contains(out.String(), "100%") {
		t.Errorf("bar output %q", out.String())
	}
}

func TestPullRefusesWhileAnotherHoldsTheSet(t *testing.T) {
	ff := newFakeFactory(t)
	s := Set{testVersion, strings.Repeat("89", 32), "amd64"}
	ff.addSet(s, fakeKernel(8<<10, 40), fakeInitramfs(8<<10, 41))
	f, c := newTestFactory(t, ff, &sleeps{})
	unlock, err := c.lockSet(s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Pull(context.Background(), s.Version, s.Schematic, s.Arch, nil); !errors.Is(err, ErrBusy) {
		t.Errorf("Pull while locked = %v, want ErrBusy", err)
	}
	if ff.requests != 0 {
		t.Errorf("%d requests while locked", ff.requests)
	}
	unlock()
	if _, err := f.Pull(context.Background(), s.Version, s.Schematic, s.Arch, nil); err != nil {
		t.Errorf("Pull after unlock: %v", err)
	}
}

// BenchmarkPull pulls a 16 MiB kernel and a 48 MiB initramfs over loopback
// HTTP: hashing, writing, fsync and rename included.
func BenchmarkPull(b *testing.B) {
	ff := newFakeFactory(b)
	s := Set{testVersion, strings.Repeat("ba", 32), "amd64"}
	kernel, initramfs := fakeKernel(16<<20, 50), fakeInitramfs(48<<20, 51)
	ff.addSet(s, kernel, initramfs)
	b.SetBytes(int64(len(kernel) + len(initramfs)))
	for b.Loop() {
		c, err := OpenCache(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		f, _ := NewFactory(c, WithFactoryURL(ff.srv.URL), WithReleaseURL(""))
		if _, err := f.Pull(context.Background(), s.Version, s.Schematic, s.Arch, nil); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}
