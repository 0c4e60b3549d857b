//go:build linux

package imager

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dotfile/rackboot/lab/standin/installer"
	"github.com/dotfile/rackboot/lab/standin/report"
	"github.com/dotfile/rackboot/registry"
)

// OVMF firmware files (Debian package ovmf).
const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// bootTimeout bounds one boot; a TCG boot takes 10-25 s on an idle machine,
// much longer on a busy one.
const bootTimeout = 6 * time.Minute

// standinFiles returns the stand-in kernel and initramfs built by
// `make standin` (lab/standin/build/).
func standinFiles(t *testing.T) (string, string) {
	t.Helper()
	dir := filepath.Join(moduleRoot(), "lab", "standin", "build")
	kernel, initrd := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initramfs.cpio.gz")
	for _, p := range []string{kernel, initrd} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("stand-in boot image missing (%v): run `make standin` first", err)
		}
	}
	return kernel, initrd
}

// accel picks KVM only when /dev/kvm is writable and the CPU has vmx/svm
// (a paravirtual /dev/kvm crashes firmware); otherwise TCG with -cpu max.
func accel() []string {
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		f.Close()
		if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
			for _, line := range strings.Split(string(info), "\n") {
				if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
					for _, fl := range strings.Fields(v) {
						if fl == "vmx" || fl == "svm" {
							return []string{"-accel", "kvm", "-cpu", "host"}
						}
					}
				}
			}
		}
	}
	return []string{"-accel", "tcg", "-cpu", "max"}
}

// bootMedium is one QEMU boot of an image.
type bootMedium struct {
	name  string
	uefi  bool
	media []string // QEMU arguments attaching the image
}

// TestBootInQEMU builds the ISO and the USB image for machine cp1 around
// the stand-in boot image and boots them: the ISO under SeaBIOS (isolinux)
// and OVMF (El Torito EFI → systemd-boot), the USB image under OVMF as an
// xHCI usb-storage stick. Each boot must end with the stand-in's report
// naming cp1, read from config.yaml on the metal-iso volume, and installed
// on the NVMe disk the config selects.
func TestBootInQEMU(t *testing.T) {
	qemu := needTool(t, "qemu-system-x86_64", "qemu-system-x86")
	for _, p := range []string{ovmfCode, ovmfVars, "/usr/share/seabios/bios-256k.bin"} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%v: install the Debian packages ovmf and seabios", err)
		}
	}
	kernel, standin := standinFiles(t)
	// Pad the initramfs with zeros (the kernel skips zero padding between
	// cpio archives) so the ESP exceeds 32 MiB, as with a Talos initramfs:
	// its El Torito sector count no longer fits 16 bits and is written 0.
	initrd := filepath.Join(t.TempDir(), "initramfs.padded")
	data, err := os.ReadFile(standin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, append(data, make([]byte, 40<<20)...), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, cmdline := testConfig(t, "cp1")
	// Like Talos, the stand-in pulls its installer image before it
	// installs, through the config's registry mirror (rackboot's, at
	// cluster.network.rackboot 10.0.0.2:5000): the VM's only network is a
	// QEMU user network restricted to that address, forwarded to a
	// registry mirror on this computer's loopback.
	nic := installerMirror(t, cfg, kernel, standin)
	spec := ImageSpec{Name: "cp1", Cmdline: cmdline + " console=ttyS0", Config: cfg, Kernel: kernel, Initramfs: initrd}
	dir := t.TempDir()
	b := testBuilder(t)
	iso := filepath.Join(dir, "cp1.iso")
	usb := filepath.Join(dir, "cp1.img")
	if _, err := b.ISO(context.Background(), spec, iso); err != nil {
		t.Fatal(err)
	}
	if _, err := b.USB(context.Background(), spec, usb); err != nil {
		t.Fatal(err)
	}
	if rep := run(t, "xorriso", "-indev", iso, "-report_el_torito", "plain"); !regexpMatch("El Torito boot img : 2 UEFI y none 0x0000 0x00 0 ", rep) {
		t.Fatalf("the EFI boot image should be over 32 MiB (sector count 0) like a Talos one:\n%s", rep)
	}
	cd := []string{"-drive", "file=" + iso + ",if=none,id=cd,media=cdrom,readonly=on,format=raw", "-device", "ide-cd,drive=cd,bus=ide.0,bootindex=0"}
	for _, m := range []bootMedium{
		{name: "iso-bios", media: cd},
		{name: "iso-uefi", uefi: true, media: cd},
		{name: "usb-uefi", uefi: true, media: []string{"-device", "qemu-xhci,id=xhci",
			"-drive", "file=" + usb + ",if=none,id=stick,format=raw,snapshot=on", "-device", "usb-storage,bus=xhci.0,drive=stick,bootindex=0"}},
	} {
		t.Run(m.name, func(t *testing.T) {
			m.media = append(m.media, nic...)
			rep := bootOnce(t, qemu, m, sha256Hex(cfg))
			t.Logf("%s: %s reported %s after %.1f s of guest uptime", m.name, rep.Name, rep.Result, rep.Uptime)
		})
	}
}

// installerMirror serves the installer image cfg names (built from the
// stand-in's kernel and initramfs as serve builds it) from rackboot's
// registry mirror on loopback, and returns QEMU arguments for cp1's NIC whose
// user network reaches only that mirror, at 10.0.0.2:5000.
func installerMirror(t *testing.T, cfg []byte, kernel, initramfs string) []string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s+image: (factory\.talos\.dev/metal-installer/\S+)$`).FindSubmatch(cfg)
	if m == nil {
		t.Fatal("the config names no metal installer image")
	}
	dir := t.TempDir()
	for name, src := range map[string]string{installer.KernelFile: kernel, installer.InitramfsFile: initramfs} {
		if err := os.Symlink(src, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	img, err := installer.Image(dir, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	st, err := registry.Open(filepath.Join(dir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(string(m[1]), img); err != nil {
		t.Fatal(err)
	}
	srv, err := registry.New(registry.Config{Addr: "127.0.0.1:0", Store: st})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	// A cmd: forward runs once per guest connection (a tcp: chardev would
	// connect once, at start).
	nc, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal("busybox is missing: apt-get install busybox-static (make deps)")
	}
	host, port, _ := strings.Cut(srv.Addr().String(), ":")
	fwd := "guestfwd=tcp:10.0.0.2:5000-cmd:" + nc + " nc " + host + " " + port
	return []string{"-netdev", "user,id=n0,restrict=on,net=10.0.0.0/24,host=10.0.0.1,dhcpstart=10.0.0.50," + fwd,
		"-device", "virtio-net-pci,netdev=n0,romfile=,mac=52:54:00:00:00:01"} // cp1's MAC: its LinkConfig (10.0.0.11/24) applies
}

// bootOnce boots one medium with an empty NVMe disk and returns the
// stand-in's report, checked.
func bootOnce(t *testing.T, qemu string, m bootMedium, cfgSum string) report.Report {
	t.Helper()
	dir := t.TempDir()
	nvme := filepath.Join(dir, "nvme.img")
	if err := os.WriteFile(nvme, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(nvme, 256<<20); err != nil {
		t.Fatal(err)
	}
	serial := filepath.Join(dir, "serial.log")
	args := []string{"-machine", "q35,graphics=off"}
	args = append(args, accel()...)
	args = append(args, "-smp", "1", "-m", "512", "-nodefaults", "-display", "none", "-no-reboot",
		"-serial", "file:"+serial,
		"-drive", "file="+nvme+",if=none,id=nv,format=raw", "-device", "nvme,drive=nv,serial=RACKBOOTNVME0")
	if m.uefi {
		vars := filepath.Join(dir, "OVMF_VARS.fd")
		data, err := os.ReadFile(ovmfVars)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(vars, data, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+ovmfCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+vars)
	}
	args = append(args, m.media...)
	t.Logf("%s %s", qemu, strings.Join(args, " "))
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	log, _ := os.ReadFile(serial)
	fail := func(format string, a ...any) {
		t.Helper()
		t.Errorf(format, a...)
		t.Logf("QEMU stderr:\n%s\nserial log tail:\n%s", stderr.String(), tail(log, 60))
		t.FailNow()
	}
	if ctx.Err() != nil {
		fail("%s: no power-off within %v", m.name, bootTimeout)
	}
	if err != nil {
		fail("%s: QEMU: %v", m.name, err)
	}
	rep, err := report.Find(log)
	if err != nil {
		fail("%s: %v", m.name, err)
	}
	t.Logf("%s: QEMU ran %.1f s", m.name, took.Seconds())
	if rep.Name != "cp1" || rep.ConfigSource != "metal-iso" || rep.ConfigSHA256 != cfgSum {
		fail("%s: report names %q from %q (config sha256 %s), want cp1 from metal-iso (%s)", m.name, rep.Name, rep.ConfigSource, rep.ConfigSHA256, cfgSum)
	}
	if rep.Result != report.ResultInstalled || !strings.HasPrefix(rep.InstallDisk, "/dev/nvme") {
		fail("%s: result %q on %q (error %q), want installed on the NVMe disk", m.name, rep.Result, rep.InstallDisk, rep.Error)
	}
	return rep
}

func tail(b []byte, lines int) string {
	parts := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
