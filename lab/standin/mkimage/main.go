// Command mkimage builds the stand-in boot image:
//
//	scripts/standin-kernel.sh lab/standin/build/kernel
//	go run ./lab/standin/mkimage -kernel-dir lab/standin/build/kernel -o lab/standin/build
//
// producing lab/standin/build/{vmlinuz,initramfs.cpio.gz,SOURCE}. Entry
// mtimes come from SOURCE_DATE_EPOCH when it is set. A kernel directory
// lacking a module the init needs (standin.RequiredModules) is
// materialized again first.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"time"

	"github.com/dotfile/rackboot/lab/standin"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run() error {
	kernelDir := flag.String("kernel-dir", "lab/standin/build/kernel", "output of scripts/standin-kernel.sh")
	out := flag.String("o", "lab/standin/build", "output directory")
	goarch := flag.String("arch", "amd64", "the kernel's architecture, the init's GOARCH (amd64 or arm64)")
	flag.Parse()

	var epoch time.Time
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", s, err)
		}
		epoch = time.Unix(n, 0)
	}
	root, err := standin.FindModuleRoot(".")
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *goarch == "amd64" {
		// scripts/standin-kernel.sh makes the amd64 kernel only.
		if err := standin.EnsureKernel(ctx, root, *kernelDir, log); err != nil {
			return err
		}
	}
	res, err := standin.Build(ctx, standin.BuildOptions{
		KernelDir:  *kernelDir,
		OutDir:     *out,
		ModuleRoot: root,
		Epoch:      epoch,
		GOARCH:     *goarch,
		Log:        log,
	})
	if err != nil {
		return err
	}
	fmt.Printf("%s\n%s (%d bytes, sha256 %s)\n", res.Kernel, res.Initramfs, res.InitramfsSize, res.InitramfsSHA256)
	return nil
}
