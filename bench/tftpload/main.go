// Command tftpload is the TFTP load generator of `make bench` (row P2): it
// downloads one file many times, a number of transfers at once, with
// pin/tftp's client at a fixed block size, checks every copy against the
// expected SHA-256, and prints one line in Go's benchmark format (for
// benchstat):
//
//	tftpload -server 10.98.0.1:69 -file ipxe.efi -expect pxe/ipxe/bin/ipxe.efi -n 400 -c 200 -name TFTP/c200
package main

import (
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pin/tftp/v3"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "tftpload:", err)
		os.Exit(1)
	}
}

// Config says what to download and how hard.
type Config struct {
	Server      string        // host:port
	File        string        // name asked for
	Want        [32]byte      // SHA-256 every copy must have
	Transfers   int           // in all
	Concurrency int           // at once
	BlockSize   int           // RFC 2348 blksize
	Timeout     time.Duration // per packet, before the client resends
	Retries     int
}

// Validate reports every problem of cfg at once.
func (c Config) Validate() error {
	var errs []error
	if c.Server == "" || c.File == "" {
		errs = append(errs, errors.New("server and file are required"))
	}
	if c.Transfers < 1 || c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("transfers %d, concurrency %d: want at least 1", c.Transfers, c.Concurrency))
	}
	if c.BlockSize < 8 || c.BlockSize > 65464 {
		errs = append(errs, fmt.Errorf("block size %d: want 8..65464 (RFC 2348)", c.BlockSize))
	}
	if c.Timeout <= 0 || c.Retries < 0 {
		errs = append(errs, fmt.Errorf("timeout %s, retries %d: want > 0 and >= 0", c.Timeout, c.Retries))
	}
	return errors.Join(errs...)
}

// Result is what a run measured.
type Result struct {
	Transfers, OK, Failed int
	Bytes                 int64
	Elapsed               time.Duration
	Latencies             []time.Duration // successful transfers, sorted
	FirstErr              error
}

// Rate is successful transfers per second.
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.OK) / r.Elapsed.Seconds()
}

// BenchLine formats r in Go's benchmark format.
func (r Result) BenchLine(name string) string {
	nsPerOp, p50 := 0.0, 0.0
	if r.OK > 0 {
		nsPerOp = float64(r.Elapsed.Nanoseconds()) / float64(r.OK)
		p50 = r.Latencies[(len(r.Latencies)-1)/2].Seconds() * 1e3
	}
	return fmt.Sprintf("Benchmark%s %d %.0f ns/op %.2f xfers/s %.2f MB/s %.1f p50-ms %d failed",
		name, r.Transfers, nsPerOp, r.Rate(), float64(r.Bytes)/1e6/max(r.Elapsed.Seconds(), 1e-9), p50, r.Failed)
}

// download fetches the file once and checks its digest.
func download(cfg Config) (int64, error) {
	c, err := tftp.NewClient(cfg.Server)
	if err != nil {
		return 0, fmt.Errorf("TFTP client for %s: %w", cfg.Server, err)
	}
	c.SetBlockSize(cfg.BlockSize)
	c.SetTimeout(cfg.Timeout)
	c.SetRetries(cfg.Retries)
	wt, err := c.Receive(cfg.File, "octet")
	if err != nil {
		return 0, fmt.Errorf("request %s: %w", cfg.File, err)
	}
	h := sha256.New()
	n, err := wt.WriteTo(h)
	if err != nil {
		return n, fmt.Errorf("receive %s after %d bytes: %w", cfg.File, n, err)
	}
	if got := [32]byte(h.Sum(nil)); got != cfg.Want {
		return n, fmt.Errorf("%s: %d bytes with SHA-256 %x, want %x", cfg.File, n, got, cfg.Want)
	}
	return n, nil
}

// Run does cfg.Transfers downloads, cfg.Concurrency at a time.
func Run(cfg Config, now func() time.Time) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{}, fmt.Errorf("load config: %w", err)
	}
	res := Result{Transfers: cfg.Transfers}
	var mu sync.Mutex
	var next atomic.Int64
	var wg sync.WaitGroup
	start := now()
	for range min(cfg.Concurrency, cfg.Transfers) {
		wg.Go(func() {
			for next.Add(1) <= int64(cfg.Transfers) {
				t0 := now()
				n, err := download(cfg)
				d := now().Sub(t0)
				mu.Lock()
				if err != nil {
					res.Failed++
					if res.FirstErr == nil {
						res.FirstErr = err
					}
				} else {
					res.OK++
					res.Bytes += n
					res.Latencies = append(res.Latencies, d)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.Elapsed = now().Sub(start)
	slices.Sort(res.Latencies)
	return res, nil
}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("tftpload", flag.ContinueOnError)
	fs.SetOutput(stderr)
	server := fs.String("server", "", "TFTP server host:port")
	file := fs.String("file", "ipxe.efi", "file name to ask for")
	expect := fs.String("expect", "", "local copy of the file: every download must match its SHA-256")
	n := fs.Int("n", 100, "transfers in all")
	c := fs.Int("c", 1, "transfers at once")
	blk := fs.Int("blksize", 1468, "block size (RFC 2348)")
	timeout := fs.Duration("timeout", time.Second, "wait for each block before the client asks again")
	retries := fs.Int("retries", 5, "resends before a transfer fails")
	name := fs.String("name", "TFTP", "benchmark name printed (Benchmark<name>)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *expect == "" {
		return errors.New("-expect FILE is required: downloads are checked against it")
	}
	want, err := os.ReadFile(*expect)
	if err != nil {
		return fmt.Errorf("read -expect: %w", err)
	}
	cfg := Config{Server: *server, File: *file, Want: sha256.Sum256(want), Transfers: *n, Concurrency: *c,
		BlockSize: *blk, Timeout: *timeout, Retries: *retries}
	res, err := Run(cfg, time.Now)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	log.Info("done", "ok", res.OK, "failed", res.Failed, "elapsed", res.Elapsed, "rate", fmt.Sprintf("%.1f/s", res.Rate()), "first_error", res.FirstErr)
	fmt.Fprintln(stdout, res.BenchLine(*name))
	if res.OK == 0 {
		return fmt.Errorf("every transfer failed: %v", res.FirstErr)
	}
	return nil
}
