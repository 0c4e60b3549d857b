// Package installer builds the lab's installer image: the boot image's
// kernel and initramfs at the paths Talos's installer image holds them,
// as an OCI image that serve puts in its registry mirror and the lab's
// machines pull before they install, as Talos pulls machine.install.image.
// It depends on no other rackboot package, so any test can build one.
package installer

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// KernelPath and InitramfsPath are where the installer
// image's layer holds the boot assets for arch: Talos's own paths
// (machinery constants KernelAssetPath, InitramfsAssetPath:
// /usr/install/<arch>/vmlinuz and /usr/install/<arch>/initramfs.xz, as
// Talos's Dockerfile install-artifacts stage and, before v1.10, the
// imager's installer artifacts layer place them), without the leading
// slash. The initramfs keeps Talos's name but is gzip (the kernel goes
// by the content, not the name). Talos v1.10+ metal installers carry a
// UKI (vmlinuz.efi) and systemd-boot.efi instead: the stand-in boots
// kernel + initramfs through its loader entry, so it ships those.
// KernelFile and InitramfsFile are the boot image directory's files, as
// `make standin` leaves them.
const (
	KernelFile    = "vmlinuz"
	InitramfsFile = "initramfs.cpio.gz"
)

func KernelPath(arch string) string {
	return strings.TrimPrefix(fmt.Sprintf(constants.KernelAssetPath, arch), "/")
}

// InitramfsPath: see KernelPath.
func InitramfsPath(arch string) string {
	return strings.TrimPrefix(fmt.Sprintf(constants.InitramfsAssetPath, arch), "/")
}

// Image is the stand-in's installer image for arch, built from
// dir as `make standin` leaves it (vmlinuz, initramfs.cpio.gz): one layer
// holding the kernel and the installed system's initramfs (the first,
// gzip, archive of initramfs.cpio.gz: what the stand-in's install writes
// to the ESP) at Talos's installer paths, the config for linux/arch.
// Like Talos's imager (pkg/imager/out.go outInstaller, filemap.Layer): an
// OCI manifest and config, a gzip tar layer with entries sorted by name;
// reproducible here (fixed mtimes and owners, no creation time), so the
// same files give the same digest.
func Image(dir, arch string) (v1.Image, error) {
	return image(dir, arch, "")
}

// VersionImage is Image with the installed initramfs's gzip header
// naming version (an FNAME field, "rackboot-standin-<version>"): other
// bytes and so another digest, the same system once unpacked (Linux's
// gunzip skips the name). The lab tags it with an upgrade's version, so
// that an upgrade really writes other boot files to the ESP.
func VersionImage(dir, arch, version string) (v1.Image, error) {
	if version == "" || strings.ContainsRune(version, 0) {
		return nil, fmt.Errorf("installer image: version %q", version)
	}
	return image(dir, arch, "rackboot-standin-"+version)
}

// image builds the installer image; a non-empty mark goes into the
// initramfs's gzip header as its file name.
func image(dir, arch, mark string) (v1.Image, error) {
	if arch != "amd64" && arch != "arm64" {
		return nil, fmt.Errorf("installer image: architecture %q (want amd64 or arm64)", arch)
	}
	kernel := filepath.Join(dir, KernelFile)
	initrd := filepath.Join(dir, InitramfsFile)
	for _, p := range []string{kernel, initrd} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("installer image: %w (run make standin)", err)
		}
	}
	baseLen, err := firstGzipMember(initrd)
	if err != nil {
		return nil, fmt.Errorf("installer image: %s: %w", initrd, err)
	}
	initramfs := layerFile{name: InitramfsPath(arch), src: initrd, size: baseLen}
	if mark != "" {
		if initramfs.head, err = markedHeader(initrd, mark); err != nil {
			return nil, fmt.Errorf("installer image: %s: %w", initrd, err)
		}
	}
	entries := []layerFile{{name: KernelPath(arch), src: kernel, size: -1}, initramfs}
	// Sorted by name, as Talos's filemap.Layer.
	slices.SortFunc(entries, func(a, b layerFile) int { return strings.Compare(a.name, b.name) })
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return tarLayer(entries), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("installer image: layer: %w", err)
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Labels = map[string]string{"org.opencontainers.image.title": "rackboot stand-in installer"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, fmt.Errorf("installer image: config: %w", err)
	}
	if img, err = mutate.AppendLayers(img, layer); err != nil {
		return nil, fmt.Errorf("installer image: %w", err)
	}
	return img, nil
}

// layerFile is one file of the layer: the first size bytes of src (all of
// it when size < 0), with head, when set, in place of src's first
// gzipHeaderLen bytes.
type layerFile struct {
	name string
	src  string
	size int64
	head []byte
}

// gzipHeaderLen is a gzip member's fixed header (RFC 1952 2.3): ID1 ID2
// CM FLG MTIME(4) XFL OS.
const gzipHeaderLen = 10

// markedHeader is the fixed header of path's first gzip member with the
// FNAME flag set, followed by name and its NUL: the header of a member
// that unpacks to the same bytes. The member must have no optional
// fields yet (flags 0: how `make standin` writes it).
func markedHeader(path, name string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := make([]byte, gzipHeaderLen, gzipHeaderLen+len(name)+1)
	if _, err := io.ReadFull(f, h); err != nil {
		return nil, fmt.Errorf("gzip header: %w", err)
	}
	if h[0] != 0x1f || h[1] != 0x8b || h[3] != 0 {
		return nil, fmt.Errorf("gzip header % x: want a member without optional fields (flags 0)", h)
	}
	h[3] = 0x08 // FNAME
	h = append(h, name...)
	return append(h, 0), nil
}

// tarLayer streams the tar of files (in the order given: sorted by name),
// mode 0644, owner 0, mtime 0.
func tarLayer(files []layerFile) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(func() error {
			tw := tar.NewWriter(pw)
			for _, f := range files {
				in, err := os.Open(f.src)
				if err != nil {
					return err
				}
				size := f.size
				if size < 0 {
					st, err := in.Stat()
					if err != nil {
						in.Close()
						return err
					}
					size = st.Size()
				}
				body := size
				if f.head != nil {
					body -= gzipHeaderLen
					size = body + int64(len(f.head))
				}
				err = tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: size, Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0), Format: tar.FormatPAX})
				if err == nil && f.head != nil {
					if _, err = tw.Write(f.head); err == nil {
						_, err = in.Seek(gzipHeaderLen, io.SeekStart)
					}
				}
				if err == nil {
					_, err = io.CopyN(tw, in, body)
				}
				in.Close()
				if err != nil {
					return fmt.Errorf("%s: %w", f.name, err)
				}
			}
			return tw.Close()
		}())
	}()
	return pr
}

// firstGzipMember is the length of the gzip member that starts path.
func firstGzipMember(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	cr := &byteCounter{r: bufio.NewReader(f)}
	zr, err := gzip.NewReader(cr)
	if err != nil {
		return 0, err
	}
	zr.Multistream(false)
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return 0, err
	}
	return cr.n, nil
}

// byteCounter counts what gzip consumed: it is an io.ByteReader, so
// gzip/flate read through it without a buffer of their own.
type byteCounter struct {
	r *bufio.Reader
	n int64
}

func (c *byteCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *byteCounter) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}
