package standin_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dotfile/rackboot/internal/netns"
	"github.com/dotfile/rackboot/internal/tcpproxy"
	"github.com/dotfile/rackboot/lab/standin/install"
	"github.com/dotfile/rackboot/lab/standin/installer"
	"github.com/dotfile/rackboot/lab/standin/report"
	"github.com/dotfile/rackboot/upgrade"
	mtype "github.com/siderolabs/talos/pkg/machinery/config/machine"
)

const (
	// upgradeRef is the upgrade's installer image: installerRef's
	// repository, the next version's tag.
	upgradeRef = "factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.13.1"
	ovmfCode   = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars   = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// TestUpgradeInQEMU: one UEFI (OVMF) machine installs from the stand-in
// image booted with -kernel (its config over HTTP, its installer image
// from the registry mirror), then boots from its disk (systemd-boot on
// the ESP) into configured mode and is upgraded by rackboot's rolling
// upgrade code (upgrade.TalosAPI: ImageService.Pull, the streamed
// LifecycleService.Upgrade, Reboot) with the talosconfig made from the
// config's secrets. QEMU runs without -no-reboot: the guest's reboot
// resets it and OVMF boots the disk again, as the lab's power agent
// restarts QEMU disk first. The new system must report the new version
// through Version, and the ESP must hold the upgrade image's boot files.
//
// The upgrade image is the install's image with its initramfs's gzip
// header naming the version (an FNAME field): another digest and other
// bytes on the ESP, the same system once unpacked.
func TestUpgradeInQEMU(t *testing.T) {
	for _, tool := range []struct{ bin, pkg string }{
		{"qemu-system-x86_64", "qemu-system-x86"}, {"qemu-img", "qemu-utils"}, {"ip", "iproute2"}, {"mtype", "mtools"},
	} {
		if _, err := exec.LookPath(tool.bin); err != nil {
			t.Fatalf("%s not found: apt-get install %s", tool.bin, tool.pkg)
		}
	}
	for _, f := range []string{ovmfCode, ovmfVars} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("no OVMF firmware: apt-get install ovmf (%v)", err)
		}
	}
	work := t.TempDir()
	ctx := context.Background()
	imgDir := filepath.Join(work, "image")
	img := buildImage(t, imgDir)
	inst, err := installer.Image(imgDir, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	// The upgrade's installer image.
	upDir := filepath.Join(work, "upgrade")
	newInitrd := markedInitramfs(t, img.Initramfs, "rackboot-standin-v1.13.1")
	if err := os.MkdirAll(upDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(img.Kernel, filepath.Join(upDir, installer.KernelFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(upDir, installer.InitramfsFile), newInitrd, 0o644); err != nil {
		t.Fatal(err)
	}
	up, err := installer.Image(upDir, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := inst.Digest()
	d2, _ := up.Digest()
	if d1 == d2 {
		t.Fatalf("the upgrade image has the install image's digest %s", d1)
	}

	// A control plane: a worker's API certificate comes from trustd, which
	// the stand-in does not run.
	cfg, tc := machineConfigAndTalosconfig(t, mtype.TypeControlPlane, "127.0.0.1")
	ns := netns.New(t, "standinup")
	ns.AddBridge("br0", netip.MustParsePrefix(serverIP+"/24"))
	for _, args := range [][]string{
		{"tuntap", "add", "dev", "tap0", "mode", "tap"},
		{"link", "set", "tap0", "master", "br0"},
		{"link", "set", "tap0", "up"},
	} {
		if out, err := ns.Exec(ctx, "ip", args...); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	srv := startServers(t, ns, cfg)
	push := startMirror(t, ns)
	push(installerRef, inst)
	push(upgradeRef, up)

	disk := filepath.Join(work, "nvme.img")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "raw", disk, "1G").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	vars := filepath.Join(work, "OVMF_VARS.fd")
	if b, err := os.ReadFile(ovmfVars); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(vars, b, 0o600); err != nil {
		t.Fatal(err)
	}
	qemu := func(serial string, extra ...string) []string {
		return append([]string{
			"-machine", "q35,graphics=off", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512",
			"-nodefaults", "-display", "none",
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + ovmfCode,
			"-drive", "if=pflash,format=raw,unit=1,file=" + vars,
			"-serial", "file:" + serial,
			"-smbios", "type=1,uuid=" + vmUUID + ",serial=" + vmSerial,
			"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
			"-device", "e1000,netdev=n0,romfile=,mac=" + vmMAC,
			"-drive", "if=none,id=nv,format=raw,file=" + disk,
			"-device", "nvme,drive=nv,serial=NVME-STANDIN-1,bootindex=1",
		}, extra...)
	}

	// Boot 1: the install, from -kernel; QEMU exits on the power off.
	start := time.Now()
	serial1 := filepath.Join(work, "install-serial.log")
	appendArgs := "console=ttyS0 talos.platform=metal panic=-1 loglevel=4 talos.config=http://" + srv.httpAddr + "/config talos.events.sink=" + srv.sinkAddr
	p := ns.Start("qemu-system-x86_64", qemu(serial1, "-no-reboot", "-kernel", img.Kernel, "-initrd", img.Initramfs, "-append", appendArgs)...)
	select {
	case <-p.Done():
	case <-time.After(bootLimit):
		_ = p.Cmd.Process.Kill()
		<-p.Done()
		keepLog(t, serial1)
		t.Fatalf("install: no power-off within %s", bootLimit)
	}
	log1, _ := os.ReadFile(serial1)
	rep, err := report.Find(log1)
	if err != nil || rep.Result != report.ResultInstalled || rep.BootEntry == "" {
		keepLog(t, serial1)
		t.Fatalf("install: %v, result %q, error %q, boot entry %q", err, rep.Result, rep.Error, rep.BootEntry)
	}
	t.Logf("installed in %s (boot entry %s)", time.Since(start).Round(100*time.Millisecond), rep.BootEntry)
	esp, err := install.FindESPPath(disk)
	if err != nil {
		t.Fatal(err)
	}
	oldInitrd := espFile(t, disk, esp, "::/initrd.img")

	// Boot 2: from the disk, running, until the test ends; resets reboot.
	serial2 := filepath.Join(work, "disk-serial.log")
	start = time.Now()
	p = ns.Start("qemu-system-x86_64", qemu(serial2)...)
	t.Cleanup(func() {
		_ = p.Cmd.Process.Kill()
		<-p.Done()
		if t.Failed() {
			keepLog(t, serial2)
		}
	})
	fwd := forward(t, ns, clientIP+":50000")
	api, err := upgrade.NewTalosAPI(ctx, tc, fwd)
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	version := func(want string, limit time.Duration) {
		t.Helper()
		deadline := time.Now().Add(limit)
		for {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			v, err := api.Version(cctx, clientIP)
			cancel()
			if err == nil && v == want {
				return
			}
			select {
			case <-p.Done():
				t.Fatalf("QEMU exited waiting for version %s: %v\n%s", want, p.Err(), p.Output())
			case <-time.After(time.Second):
			}
			if time.Now().After(deadline) {
				t.Fatalf("no version %s within %s: last %q, %v", want, limit, v, err)
			}
		}
	}
	version("v1.13.0", bootLimit)
	t.Logf("running from its disk %s after QEMU's start", time.Since(start).Round(100*time.Millisecond))

	start = time.Now()
	uctx, cancel := context.WithTimeout(ctx, bootLimit)
	defer cancel()
	if err := api.Upgrade(uctx, clientIP, upgradeRef); err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	t.Logf("upgrade installed in %s; rebooting", time.Since(start).Round(100*time.Millisecond))
	version("v1.13.1", bootLimit)
	t.Logf("upgrade to running v1.13.1: %s", time.Since(start).Round(100*time.Millisecond))

	log2, _ := os.ReadFile(serial2)
	if n := bytes.Count(log2, []byte(`msg="rackboot stand-in init starting"`)); n != 2 {
		t.Errorf("the disk's system started %d times, want 2 (the upgrade's reboot)", n)
	}
	for _, want := range []string{
		`msg="image pulled" image=` + upgradeRef,
		`msg="upgrade: upgrade of /dev/nvme0n1 done`,
		`msg="running an upgraded installation" image=` + upgradeRef + ` version=v1.13.1`,
	} {
		if !bytes.Contains(log2, []byte(want)) {
			t.Errorf("the console lacks %s", want)
		}
	}
	// The ESP holds the upgrade's initramfs, the first archive of its
	// image's initramfs.cpio.gz, as the installer image carries it.
	got := espFile(t, disk, esp, "::/initrd.img")
	if !bytes.Equal(got, newInitrd) || bytes.Equal(got, oldInitrd) {
		t.Errorf("the ESP's initrd.img (%d bytes) is not the upgrade image's (%d bytes)", len(got), len(newInitrd))
	}
	if k, _ := os.ReadFile(img.Kernel); !bytes.Equal(espFile(t, disk, esp, "::/vmlinuz"), k) {
		t.Error("the ESP's vmlinuz is not the upgrade image's")
	}
	if im, err := install.ReadUpgradedImagePath(disk); err != nil || im != upgradeRef {
		t.Errorf("STATE names %q (%v), want %s", im, err, upgradeRef)
	}
}

// markedInitramfs is the first gzip member of the boot image's initramfs
// (the installed system's initramfs) with an FNAME field in its header:
// other bytes, the same content (Linux's gunzip skips the name).
func markedInitramfs(t *testing.T, path, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := firstMember(t, b)
	member := b[:n]
	if member[3] != 0 {
		t.Fatalf("the initramfs's gzip header has flags %#x, want none", member[3])
	}
	out := append([]byte{}, member[:10]...)
	out[3] = 0x08 // FNAME
	out = append(out, name...)
	out = append(out, 0)
	return append(out, member[10:]...)
}

// firstMember is the length of the first gzip member of b.
func firstMember(t *testing.T, b []byte) int {
	t.Helper()
	cr := &countingReader{r: bytes.NewReader(b)}
	zr, err := gzip.NewReader(cr)
	if err != nil {
		t.Fatal(err)
	}
	zr.Multistream(false)
	if _, err := io.Copy(io.Discard, zr); err != nil {
		t.Fatal(err)
	}
	return cr.n
}

// countingReader is an io.ByteReader, so gzip reads through it without
// a buffer: n is what the member took.
type countingReader struct {
	r *bytes.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func (c *countingReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}

// espFile reads a file of the ESP on the disk image with mtools.
func espFile(t *testing.T, disk string, esp install.ESP, path string) []byte {
	t.Helper()
	out, err := exec.Command("mtype", "-i", fmt.Sprintf("%s@@%d", disk, esp.StartLBA*512), path).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("mtype %s: %v\n%s", path, err, ee.Stderr)
		}
		t.Fatalf("mtype %s: %v", path, err)
	}
	return out
}

// forward listens on the host's loopback and connects each connection to
// addr inside the namespace; it returns the listening address.
func forward(t *testing.T, ns *netns.NS, addr string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := tcpproxy.StartDial(ln, func() (up net.Conn, err error) {
		err = ns.Run(func() error {
			up, err = net.DialTimeout("tcp", addr, 5*time.Second)
			return err
		})
		return up, err
	})
	t.Cleanup(func() { p.Cut() })
	return ln.Addr().String()
}
