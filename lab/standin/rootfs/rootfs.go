// Package rootfs lists the stand-in's initramfs: the same list on the host
// (lab/standin.Build, from the built init and the materialized modules) and
// in the guest (the init writes the installed system's initramfs from its
// own root filesystem, as Talos's installer copies its own boot assets).
package rootfs

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/dotfile/rackboot/imager"
)

// KernelPath is where the netboot initramfs carries the kernel the
// installer copies to the ESP (the installed initramfs does not have it).
const KernelPath = "usr/install/vmlinuz"

// InitrdPath is where the netboot initramfs carries the installed system's
// initramfs (the first of its two archives: Files, gzip-compressed).
const InitrdPath = "usr/install/initrd.img"

// Files are the initramfs entries of the stand-in: device nodes, mount
// points, /init from initPath, and each module in modulesDir/order
// (modulesDir/<name>.ko), in load order. It returns the module names too.
func Files(initPath, modulesDir string) ([]imager.InitramfsFile, []string, error) {
	order, err := os.ReadFile(filepath.Join(modulesDir, "order"))
	if err != nil {
		return nil, nil, fmt.Errorf("module load order: %w", err)
	}
	modules := strings.Fields(string(order))
	files := []imager.InitramfsFile{
		imager.InitramfsCharDevice("dev/console", 0o600, 5, 1),
		imager.InitramfsCharDevice("dev/null", 0o666, 1, 3),
		imager.InitramfsDir("proc", 0o555),
		imager.InitramfsDir("sys", 0o555),
		imager.InitramfsDir("run", 0o755),
		imager.InitramfsDir("tmp", 0o1777|os.ModeSticky),
		imager.InitramfsDir("etc", 0o755),
		imager.InitramfsBytes("lib/modules/order", 0o644, order),
	}
	f, err := imager.InitramfsFromFile("init", 0o755, initPath)
	if err != nil {
		return nil, nil, err
	}
	files = append(files, f)
	for _, m := range modules {
		f, err := imager.InitramfsFromFile("lib/modules/"+m+".ko", 0o644, filepath.Join(modulesDir, m+".ko"))
		if err != nil {
			return nil, nil, err
		}
		files = append(files, f)
	}
	return files, modules, nil
}
