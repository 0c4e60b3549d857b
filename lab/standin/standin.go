// Package standin builds the stand-in boot image the QEMU lab and the e2e
// tests boot instead of Talos (whose images cannot be downloaded here):
// Debian's 6.1 kernel (materialized by scripts/standin-kernel.sh) and a
// reproducible initramfs whose /init is the static Go program in
// lab/standin/init.
package standin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dotfile/rackboot/imager"
	"github.com/dotfile/rackboot/lab/standin/installer"
	"github.com/dotfile/rackboot/lab/standin/rootfs"
)

// Output file names in BuildOptions.OutDir (the installer image is made
// from the first two).
const (
	KernelFile    = installer.KernelFile
	InitramfsFile = installer.InitramfsFile
	SourceFile    = "SOURCE"
)

// RequiredModules are modules the init needs that older kernel directories
// (from an earlier scripts/standin-kernel.sh) may lack: efivarfs, to write
// the UEFI boot entry an install makes.
var RequiredModules = []string{"efivarfs"}

// RequiredModulesAMD64 are required of amd64 kernels only: button, the ACPI
// power button driver (Debian's arm64 kernel has it built in).
var RequiredModulesAMD64 = []string{"button"}

// KernelStale says why kernelDir (the output of scripts/standin-kernel.sh)
// must be materialized again, or returns nil.
func KernelStale(kernelDir string) error {
	order, err := os.ReadFile(filepath.Join(kernelDir, "modules", "order"))
	if err != nil {
		return fmt.Errorf("no module order: %w", err)
	}
	have := strings.Fields(string(order))
	need := RequiredModules
	if src, _ := os.ReadFile(filepath.Join(kernelDir, SourceFile)); strings.Contains(string(src), "-amd64\n") {
		need = append(slices.Clip(need), RequiredModulesAMD64...)
	}
	for _, m := range need {
		if !slices.Contains(have, m) {
			return fmt.Errorf("%s lacks module %s (made by an older scripts/standin-kernel.sh)", kernelDir, m)
		}
	}
	return nil
}

// EnsureKernel runs scripts/standin-kernel.sh (under moduleRoot) into
// kernelDir when KernelStale says so.
func EnsureKernel(ctx context.Context, moduleRoot, kernelDir string, log *slog.Logger) error {
	why := KernelStale(kernelDir)
	if why == nil {
		return nil
	}
	if log != nil {
		log.Info("materializing the stand-in kernel", "dir", kernelDir, "why", why)
	}
	out, err := exec.CommandContext(ctx, filepath.Join(moduleRoot, "scripts", "standin-kernel.sh"), kernelDir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("scripts/standin-kernel.sh %s (needs apt access to Debian's linux-image-6.1.0-*-amd64): %w\n%s", kernelDir, err, out)
	}
	return KernelStale(kernelDir)
}

// BuildOptions say where the inputs are and where the image goes.
type BuildOptions struct {
	// KernelDir is the output of scripts/standin-kernel.sh: vmlinuz,
	// modules/*.ko, modules/order, SOURCE.
	KernelDir string
	// OutDir receives vmlinuz, initramfs.cpio.gz and SOURCE.
	OutDir string
	// ModuleRoot is the rackboot module's root (holding go.mod); the init
	// is built from ModuleRoot/lab/standin/init.
	ModuleRoot string
	// Epoch is every archive entry's mtime (SOURCE_DATE_EPOCH); zero: 0.
	Epoch time.Time
	// Go is the go command (default "go" from PATH).
	Go string
	// GOARCH is the init's architecture, the kernel's (default amd64).
	GOARCH string
	Log    *slog.Logger
}

// Result describes a built image.
type Result struct {
	Kernel, Initramfs string
	InitramfsSHA256   string
	InitramfsSize     int64
	InitSize          int64
	Modules           []string
}

// Build compiles the init (CGO_ENABLED=0, -trimpath, no build ID: the same
// sources give the same binary) and writes the image into OutDir. Outputs
// are replaced atomically.
func Build(ctx context.Context, o BuildOptions) (*Result, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Go == "" {
		o.Go = "go"
	}
	if o.KernelDir == "" || o.OutDir == "" || o.ModuleRoot == "" {
		return nil, errors.New("build stand-in: KernelDir, OutDir and ModuleRoot are required")
	}
	vmlinuz := filepath.Join(o.KernelDir, KernelFile)
	if _, err := os.Stat(vmlinuz); err != nil {
		return nil, fmt.Errorf("build stand-in: no kernel (run scripts/standin-kernel.sh %s): %w", o.KernelDir, err)
	}
	if err := KernelStale(o.KernelDir); err != nil {
		return nil, fmt.Errorf("build stand-in: run scripts/standin-kernel.sh %s: %w", o.KernelDir, err)
	}
	if err := os.MkdirAll(o.OutDir, 0o755); err != nil {
		return nil, fmt.Errorf("build stand-in: %w", err)
	}

	tmp, err := os.MkdirTemp(o.OutDir, ".build-")
	if err != nil {
		return nil, fmt.Errorf("build stand-in: %w", err)
	}
	defer os.RemoveAll(tmp)

	initBin := filepath.Join(tmp, "init")
	cmd := exec.CommandContext(ctx, o.Go, "build", "-trimpath", "-buildvcs=false", "-ldflags", "-s -w -buildid=", "-o", initBin, "./lab/standin/init")
	cmd.Dir = o.ModuleRoot
	goarch := o.GOARCH
	if goarch == "" {
		goarch = "amd64"
	}
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build stand-in init: %w\n%s", err, out)
	}
	st, err := os.Stat(initBin)
	if err != nil {
		return nil, fmt.Errorf("build stand-in init: %w", err)
	}
	o.Log.Info("built stand-in init", "bytes", st.Size(), "took", time.Since(start).Round(time.Millisecond))

	// Two archives, concatenated (the kernel unpacks each in turn): the
	// image's own files (gzip), then, uncompressed, the payload the
	// installer copies to the install disk's ESP: the kernel and that first
	// archive byte for byte, the installed system's initramfs. The guest
	// cannot compress 30 MB in reasonable time under TCG (44 s).
	files, modules, err := rootfs.Files(initBin, filepath.Join(o.KernelDir, "modules"))
	if err != nil {
		return nil, fmt.Errorf("build stand-in: %w", err)
	}
	baseTmp := filepath.Join(tmp, "base.cpio.gz")
	base, err := os.Create(baseTmp)
	if err != nil {
		return nil, fmt.Errorf("build stand-in: %w", err)
	}
	if err := imager.WriteInitramfs(base, files, imager.InitramfsOptions{Gzip: true, MTime: o.Epoch}); err != nil {
		base.Close()
		return nil, fmt.Errorf("build stand-in initramfs: %w", err)
	}
	if err := base.Close(); err != nil {
		return nil, fmt.Errorf("build stand-in initramfs: %w", err)
	}
	kf, err := imager.InitramfsFromFile(rootfs.KernelPath, 0o644, vmlinuz)
	if err != nil {
		return nil, fmt.Errorf("build stand-in: %w", err)
	}
	bf, err := imager.InitramfsFromFile(rootfs.InitrdPath, 0o644, baseTmp)
	if err != nil {
		return nil, fmt.Errorf("build stand-in: %w", err)
	}

	initrdTmp := filepath.Join(tmp, InitramfsFile)
	out, err := os.Create(initrdTmp)
	if err != nil {
		return nil, fmt.Errorf("build stand-in: %w", err)
	}
	h := sha256.New()
	cw := &countWriter{w: io.MultiWriter(out, h)}
	err = copyFileTo(cw, baseTmp)
	if err == nil && cw.n%4 != 0 {
		// An uncompressed archive must start 4-byte aligned; the kernel
		// skips the zeros.
		_, err = cw.Write(make([]byte, 4-cw.n%4))
	}
	if err == nil {
		err = imager.WriteInitramfs(cw, []imager.InitramfsFile{kf, bf}, imager.InitramfsOptions{MTime: o.Epoch})
	}
	if err != nil {
		out.Close()
		return nil, fmt.Errorf("build stand-in initramfs: %w", err)
	}
	if err := out.Close(); err != nil {
		return nil, fmt.Errorf("build stand-in initramfs: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))

	kernelTmp := filepath.Join(tmp, KernelFile)
	if err := copyFile(kernelTmp, vmlinuz); err != nil {
		return nil, fmt.Errorf("build stand-in: copy kernel: %w", err)
	}
	kernelSource, _ := os.ReadFile(filepath.Join(o.KernelDir, SourceFile))
	source := fmt.Sprintf("# rackboot stand-in boot image\n%sinitramfs_sha256=%s\ninitramfs_bytes=%d\ninit_bytes=%d\nsource_date_epoch=%d\n",
		kernelSource, sum, cw.n, st.Size(), o.Epoch.Unix()*boolInt(!o.Epoch.IsZero()))
	if err := os.WriteFile(filepath.Join(tmp, SourceFile), []byte(source), 0o644); err != nil {
		return nil, fmt.Errorf("build stand-in: %w", err)
	}
	for _, name := range []string{KernelFile, InitramfsFile, SourceFile} {
		if err := os.Rename(filepath.Join(tmp, name), filepath.Join(o.OutDir, name)); err != nil {
			return nil, fmt.Errorf("build stand-in: %w", err)
		}
	}
	o.Log.Info("built stand-in image", "dir", o.OutDir, "initramfs_bytes", cw.n, "sha256", sum)
	return &Result{
		Kernel:          filepath.Join(o.OutDir, KernelFile),
		Initramfs:       filepath.Join(o.OutDir, InitramfsFile),
		InitramfsSHA256: sum,
		InitramfsSize:   cw.n,
		InitSize:        st.Size(),
		Modules:         modules,
	}, nil
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func copyFileTo(w io.Writer, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	_, err = io.Copy(w, in)
	return err
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// FindModuleRoot walks up from dir to the directory holding go.mod.
func FindModuleRoot(dir string) (string, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the current directory")
		}
		dir = parent
	}
}
