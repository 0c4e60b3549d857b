package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/dotfile/rackboot/pxe"
)

// startRackbootTFTP runs rackboot's real TFTP server on loopback, serving
// data as ipxe.efi.
func startRackbootTFTP(t *testing.T, data []byte) string {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := pxe.NewTFTP(pxe.TFTPConfig{Files: fstest.MapFS{"ipxe.efi": {Data: data}}}, pxe.TFTPConn(conn))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("TFTP server: %v", err)
		}
	})
	return conn.LocalAddr().String()
}

// TestRunAgainstRackbootTFTP downloads through rackboot's TFTP server:
// every copy is checked, a wrong digest or a missing file fails every
// transfer.
func TestRunAgainstRackbootTFTP(t *testing.T) {
	data := bytes.Repeat([]byte("iPXE-"), 60_001) // 300 kB: several blocks, a short last one
	addr := startRackbootTFTP(t, data)
	cfg := Config{Server: addr, File: "ipxe.efi", Want: sha256.Sum256(data), Transfers: 12, Concurrency: 4,
		BlockSize: 1468, Timeout: time.Second, Retries: 3}
	res, err := Run(cfg, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if res.OK != 12 || res.Failed != 0 || res.Bytes != 12*int64(len(data)) {
		t.Fatalf("ok %d failed %d bytes %d (first error %v)", res.OK, res.Failed, res.Bytes, res.FirstErr)
	}
	if line := res.BenchLine("TFTP/c4"); !strings.HasPrefix(line, "BenchmarkTFTP/c4 12 ") || !strings.HasSuffix(line, " 0 failed") {
		t.Errorf("bench line %q", line)
	}

	bad := cfg
	bad.Want[0] ^= 1
	bad.Transfers = 2
	if res, _ := Run(bad, time.Now); res.OK != 0 || res.Failed != 2 || !strings.Contains(res.FirstErr.Error(), "SHA-256") {
		t.Errorf("wrong digest: ok %d failed %d err %v", res.OK, res.Failed, res.FirstErr)
	}
	missing := cfg
	missing.File = "nope.efi"
	missing.Transfers = 1
	if res, _ := Run(missing, time.Now); res.Failed != 1 {
		t.Errorf("missing file: ok %d failed %d", res.OK, res.Failed)
	}
}

func TestRunCommand(t *testing.T) {
	data := []byte(strings.Repeat("x", 5000))
	addr := startRackbootTFTP(t, data)
	expect := filepath.Join(t.TempDir(), "ipxe.efi")
	if err := os.WriteFile(expect, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if err := run([]string{"-server", addr, "-expect", expect, "-n", "3", "-c", "2", "-name", "T"}, &out, &errb); err != nil {
		t.Fatalf("%v\n%s", err, errb.String())
	}
	if !strings.HasPrefix(out.String(), "BenchmarkT 3 ") {
		t.Errorf("output %q", out.String())
	}
	for _, args := range [][]string{
		{"-server", addr},                               // no -expect
		{"-server", addr, "-expect", expect, "x"},       // stray argument
		{"-server", addr, "-expect", expect, "-c", "0"}, // bad config
	} {
		if err := run(args, &out, &errb); err == nil {
			t.Errorf("run(%q) succeeded", args)
		}
	}
	if err := (Config{}).Validate(); err == nil || strings.Count(err.Error(), "\n") != 3 {
		t.Errorf("Validate: want four problems, got %v", err)
	}
}
