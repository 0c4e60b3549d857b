// Command mkociimage builds rackboot's OCI image from the static Linux
// binaries `make release` builds, reproducibly (SOURCE_DATE_EPOCH, else
// 1970), and writes it as an OCI image layout:
//
//	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) go run ./cmd/mkociimage \
//	  --binary linux/amd64=dist/rackboot-v1-linux-amd64 \
//	  --binary linux/arm64=dist/rackboot-v1-linux-arm64 \
//	  --version v1 --revision $(git rev-parse HEAD) --out dist/oci
//
// `skopeo copy oci:dist/oci:v1 docker://ghcr.io/dotfile/rackboot:v1`
// publishes it; `skopeo inspect oci:dist/oci:v1` reads it.
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/dotfile/rackboot/ociimage"
)

type binaries []ociimage.Binary

func (b *binaries) String() string { return fmt.Sprint(*b) }

func (b *binaries) Set(v string) error {
	plat, path, ok := strings.Cut(v, "=")
	osName, arch, ok2 := strings.Cut(plat, "/")
	if !ok || !ok2 || path == "" || osName == "" || arch == "" {
		return fmt.Errorf("%q: write OS/ARCH=FILE, e.g. linux/amd64=dist/rackboot-linux-amd64", v)
	}
	*b = append(*b, ociimage.Binary{OS: osName, Arch: arch, Path: path})
	return nil
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkociimage:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkociimage", flag.ContinueOnError)
	var bins binaries
	fs.Var(&bins, "binary", "OS/ARCH=FILE: a static binary for that platform (repeatable)")
	version := fs.String("version", "", "the version: label and tag (required)")
	revision := fs.String("revision", "", "the commit the binaries are built from (label)")
	source := fs.String("source", ociimage.Source, "the source repository (label)")
	out := fs.String("out", "dist/oci", "OCI image layout directory to write (replaced)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version == "" {
		return fmt.Errorf("--version is required (make release passes $(VERSION))")
	}
	created, err := ociimage.Epoch(os.Getenv)
	if err != nil {
		return err
	}
	idx, err := ociimage.Build(ociimage.Config{Binaries: bins, Version: *version, Revision: *revision, Source: *source, Created: created})
	if err != nil {
		return err
	}
	tag := ociimage.Tag(*version)
	if err := ociimage.WriteLayout(*out, idx, tag); err != nil {
		return err
	}
	d, err := idx.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s (oci:%s:%s) %s\n", ociimage.ImageName(*version), d, *out, tag, created.Format("2006-01-02T15:04:05Z"))
	return nil
}
