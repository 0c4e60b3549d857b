package imager

import (
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"
)

func sampleInitramfs(t *testing.T) []InitramfsFile {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "mod.ko")
	if err := os.WriteFile(src, bytes.Repeat([]byte("module"), 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	mod, err := InitramfsFromFile("lib/modules/e1000.ko", 0o644, src)
	if err != nil {
		t.Fatal(err)
	}
	return []InitramfsFile{
		InitramfsBytes("/init", 0o755, []byte("#!/bin/sh\necho hi\n")),
		mod,
		InitramfsCharDevice("dev/console", 0o600, 5, 1),
		InitramfsSymlink("bin/sh", "/init"),
		InitramfsDir("proc", 0o555),
		InitramfsBytes("etc/empty", 0o644, nil),
	}
}

func build(t *testing.T, files []InitramfsFile, opts InitramfsOptions) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteInitramfs(&buf, files, opts); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestInitramfsReproducible(t *testing.T) {
	files := sampleInitramfs(t)
	for _, gz := range []bool{false, true} {
		opts := InitramfsOptions{Gzip: gz, MTime: time.Unix(1700000000, 0)}
		a := build(t, files, opts)
		// Same entries in another order: same bytes.
		rev := append([]InitramfsFile(nil), files...)
		for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
			rev[i], rev[j] = rev[j], rev[i]
		}
		b := build(t, rev, opts)
		if !bytes.Equal(a, b) {
			t.Fatalf("gzip=%v: two builds differ (%d vs %d bytes)", gz, len(a), len(b))
		}
		c := build(t, files, InitramfsOptions{Gzip: gz, MTime: time.Unix(1700000001, 0)})
		if bytes.Equal(a, c) {
			t.Fatalf("gzip=%v: MTime did not change the output", gz)
		}
	}
}

func TestInitramfsReadBack(t *testing.T) {
	data := build(t, sampleInitramfs(t), InitramfsOptions{Gzip: true})
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !zr.ModTime.IsZero() || zr.Name != "" {
		t.Fatalf("gzip header carries time %v / name %q", zr.ModTime, zr.Name)
	}
	r := cpio.NewReader(zr)
	type got struct {
		mode cpio.FileMode
		size int64
		link string
		body string
	}
	entries := map[string]got{}
	var order []string
	for {
		h, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Guid != 0 || h.ModTime.Unix() != 0 {
			t.Errorf("%s: uid %d gid %d mtime %v", h.Name, h.Uid, h.Guid, h.ModTime)
		}
		entries[h.Name] = got{h.Mode, h.Size, h.Linkname, string(body)}
		order = append(order, h.Name)
	}
	wantOrder := "bin bin/sh dev dev/console etc etc/empty init lib lib/modules lib/modules/e1000.ko proc"
	if strings.Join(order, " ") != wantOrder {
		t.Fatalf("order:\n got %s\nwant %s", strings.Join(order, " "), wantOrder)
	}
	if e := entries["init"]; e.mode != cpio.TypeReg|0o755 || e.body != "#!/bin/sh\necho hi\n" {
		t.Errorf("init: %+v", e)
	}
	if e := entries["lib/modules/e1000.ko"]; e.size != 6000 || !strings.HasPrefix(e.body, "modulemodule") {
		t.Errorf("module: size %d", e.size)
	}
	if e := entries["bin/sh"]; e.mode != cpio.TypeSymlink|0o777 || e.link != "/init" {
		t.Errorf("symlink: %+v", e)
	}
	if e := entries["dev/console"]; e.mode != cpio.TypeChar|0o600 {
		t.Errorf("console: %+v", e)
	}
	if e := entries["proc"]; e.mode != cpio.TypeDir|0o555 {
		t.Errorf("proc: %+v", e)
	}
	if e := entries["lib"]; e.mode != cpio.TypeDir|0o755 {
		t.Errorf("implicit dir lib: %+v", e)
	}
}

// TestInitramfsCpioTool checks the archive with GNU cpio, including the
// device numbers of /dev/console (which the Go reader does not expose).
func TestInitramfsCpioTool(t *testing.T) {
	bin, err := exec.LookPath("cpio")
	if err != nil {
		t.Fatal("cpio not found: install the Debian package cpio (apt-get install cpio)")
	}
	data := build(t, sampleInitramfs(t), InitramfsOptions{})
	cmd := exec.Command(bin, "-t", "-v", "--quiet", "--numeric-uid-gid")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -tv: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 11 {
		t.Fatalf("cpio lists %d entries, want 11:\n%s", len(lines), out)
	}
	var console string
	for _, l := range lines {
		if strings.HasSuffix(l, " dev/console") {
			console = l
		}
	}
	// e.g. "crw-------   1 0        0          5,   1 Jan  1  1970 dev/console"
	if !strings.HasPrefix(console, "crw-------") || !strings.Contains(strings.Join(strings.Fields(console), " "), "5, 1") {
		t.Fatalf("dev/console line %q, want a char device 5, 1", console)
	}
	// Extract and compare a file's content.
	dir := t.TempDir()
	cmd = exec.Command(bin, "-i", "-d", "--quiet", "--no-absolute-filenames", "init", "lib/modules/e1000.ko")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "lib/modules/e1000.ko"))
	if err != nil || len(b) != 6000 {
		t.Fatalf("extracted module: %d bytes, %v", len(b), err)
	}
}

func TestInitramfsBadInput(t *testing.T) {
	okFile := InitramfsBytes("a", 0o644, []byte("x"))
	cases := map[string][]InitramfsFile{
		"dotdot":        {InitramfsBytes("../etc/passwd", 0o644, nil)},
		"unclean":       {InitramfsBytes("a//b", 0o644, nil)},
		"empty":         {InitramfsBytes("", 0o644, nil)},
		"duplicate":     {okFile, InitramfsBytes("/a", 0o644, nil)},
		"no content":    {{Path: "x", Mode: 0o644}},
		"no target":     {{Path: "x", Mode: fs.ModeSymlink}},
		"file parent":   {okFile, InitramfsBytes("a/b", 0o644, nil)},
		"unsupported":   {{Path: "x", Mode: fs.ModeNamedPipe}},
		"negative size": {{Path: "x", Size: -1, Open: func() (io.ReadCloser, error) { return nil, nil }}},
	}
	for name, files := range cases {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WriteInitramfs(&buf, files, InitramfsOptions{}); err == nil {
				t.Fatal("no error")
			}
			if buf.Len() != 0 {
				t.Fatalf("wrote %d bytes despite the error", buf.Len())
			}
		})
	}

	short := InitramfsFile{Path: "x", Size: 10, Open: func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader("abc")), nil
	}}
	if err := WriteInitramfs(io.Discard, []InitramfsFile{short}, InitramfsOptions{}); !errors.Is(err, ErrSizeChanged) {
		t.Fatalf("short file: %v, want ErrSizeChanged", err)
	}
	if _, err := InitramfsFromFile("x", 0o644, filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing source: %v", err)
	}
}
