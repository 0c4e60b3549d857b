// Package rackimage gives kubelet tests (kubetest.StartNode) rackboot's own
// image the way a cluster gets it: built by ociimage from a static build of
// cmd/rackboot, and served by rackboot's registry mirror inside the node's
// network namespace, where the node's containerd pulls it through
// hosts.toml (kubetest.WithMirror).
package rackimage

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/dotfile/rackboot/internal/netns"
	"github.com/dotfile/rackboot/ociimage"
	"github.com/dotfile/rackboot/registry"
)

// Version is the image's version: its tag is ociimage.ImageName(Version).
const Version = "dev"

var built struct {
	once sync.Once
	bin  string
	took time.Duration
	err  error
}

// Binary builds cmd/rackboot once per test binary, static (CGO_ENABLED=0)
// as make build does, and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "rackimage-")
		if err != nil {
			built.err = err
			return
		}
		built.bin = filepath.Join(dir, "rackboot")
		t0 := time.Now()
		cmd := exec.Command("go", "build", "-o", built.bin, "github.com/dotfile/rackboot/cmd/rackboot")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = err
			t.Logf("go build cmd/rackboot:\n%s", out)
		}
		built.took = time.Since(t0)
	})
	if built.err != nil {
		t.Fatalf("rackimage: build rackboot: %v", built.err)
	}
	t.Logf("rackimage: static rackboot built in %v", built.took.Round(time.Millisecond))
	return built.bin
}

// Serve builds the image for this machine's architecture, puts it into a
// new image store and serves the store with rackboot's registry server at
// addr (host:port) inside ns until the test ends. It returns the image's
// reference with its digest.
func Serve(t testing.TB, ns *netns.NS, addr string) string {
	t.Helper()
	idx, err := ociimage.Build(ociimage.Config{Binaries: []ociimage.Binary{{OS: "linux", Arch: runtime.GOARCH, Path: Binary(t)}}, Version: Version})
	if err != nil {
		t.Fatal(err)
	}
	store, err := registry.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	d, err := ociimage.Put(store, idx, Version)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := ns.Run(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
		t.Fatalf("rackimage: listen on %s in %s: %v", addr, ns.Name(), err)
	}
	srv, err := registry.New(registry.Config{Store: store, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, registry.WithListener(ln))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return ociimage.ImageName(Version) + "@" + d.String()
}
