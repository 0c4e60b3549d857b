//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dotfile/rackboot/lab/standin"
	"github.com/dotfile/rackboot/lab/standin/report"
)

// Generous bounds for TCG on a loaded machine (no KVM here).
const (
	upLimit   = 3 * time.Minute
	downLimit = 4 * time.Minute
)

// TestACPIPowerButton boots the stand-in image in QEMU (TCG) with one NIC
// on a hub nobody else is on, so it waits for a DHCP lease (the netbooted
// stage, before any config), and presses QEMU's ACPI power button (QMP
// system_powerdown, what a BMC's soft off becomes). The guest must log
// Talos's "shutdown via ACPI received" and power itself off: QEMU reports
// SHUTDOWN with reason guest-shutdown and exits on its own, with no
// stand-in report on the console (the stand-in's own power off comes only
// after its report, when the config wait gives up minutes later). On amd64
// (q35) the button's driver is a module the image must carry and load; on
// arm64 (virt under AAVMF, as the lab boots it) the firmware gives the
// kernel ACPI tables and the button (behind the GED) is built in.
//
// With acpi=off the kernel has no acpi_event family: the stand-in logs it
// once and goes on to its DHCP attempt, as Talos goes on without ACPI.
func TestACPIPowerButton(t *testing.T) {
	for _, tool := range []struct{ bin, pkg string }{
		{"qemu-system-x86_64", "qemu-system-x86"}, {"qemu-system-aarch64", "qemu-system-arm"},
	} {
		if _, err := exec.LookPath(tool.bin); err != nil {
			t.Fatalf("%s not found: apt-get install %s", tool.bin, tool.pkg)
		}
	}
	if _, err := os.Stat(aavmfCode); err != nil {
		t.Fatalf("no AAVMF firmware: apt-get install qemu-efi-aarch64 (%v)", err)
	}
	amd64, arm64 := buildImage(t, "amd64"), buildImage(t, "arm64")

	pressPowerButton := func(t *testing.T, vm *vm) {
		vm.waitConsole(t, upLimit, `msg="listening for the ACPI power button" family=acpi_event group=acpi_mc_group`, `msg="modules loaded"`, `msg=links`)
		t.Logf("up %s after QEMU's start; pressing the power button", time.Since(vm.start).Round(100*time.Millisecond))
		pressed := time.Now()
		if err := vm.qmp.execute("system_powerdown"); err != nil {
			t.Fatal(err)
		}
		reason, err := vm.qmp.waitEvent("SHUTDOWN", downLimit)
		if err != nil {
			t.Fatalf("no SHUTDOWN event: %v", err)
		}
		if reason != "guest-shutdown" {
			t.Fatalf("SHUTDOWN reason %q, want guest-shutdown (the guest powering itself off)", reason)
		}
		select {
		case <-vm.done:
		case <-time.After(downLimit):
			t.Fatalf("QEMU still running %s after the guest's shutdown", downLimit)
		}
		t.Logf("powered off %s after the button", time.Since(pressed).Round(100*time.Millisecond))
		log := vm.console()
		if !bytes.Contains(log, []byte(`msg="shutdown via ACPI received"`)) {
			t.Fatalf("the console has no \"shutdown via ACPI received\"")
		}
		if _, err := report.Find(log); err == nil {
			t.Fatalf("the stand-in printed its report: it powered off on its own, not on the button")
		}
	}
	t.Run("amd64", func(t *testing.T) { pressPowerButton(t, startVM(t, amd64, "")) })
	t.Run("arm64 AAVMF", func(t *testing.T) { pressPowerButton(t, startVM(t, arm64, "")) })

	t.Run("no ACPI", func(t *testing.T) {
		vm := startVM(t, amd64, "acpi=off")
		vm.waitConsole(t, upLimit, `msg="no ACPI power button: ACPI events will be ignored"`, `msg=links`)
		if n := bytes.Count(vm.console(), []byte("ACPI events will be ignored")); n != 1 {
			t.Fatalf("logged %d times, want once", n)
		}
	})
}

const (
	aavmfCode = "/usr/share/AAVMF/AAVMF_CODE.fd"
	aavmfVars = "/usr/share/AAVMF/AAVMF_VARS.fd"
)

type image struct {
	*standin.Result
	arch string
}

// buildImage builds the stand-in image for arch from this checkout (the
// amd64 kernel materialized first when it lacks a module the init needs;
// the arm64 kernel comes from make standin-arm64).
func buildImage(t *testing.T, arch string) image {
	t.Helper()
	root, err := standin.FindModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	kernelDir := filepath.Join(root, "lab", "standin", "build", "kernel")
	if arch == "arm64" {
		kernelDir = filepath.Join(root, "lab", "standin", "build", "arm64", "kernel")
		if _, err := os.Stat(filepath.Join(kernelDir, standin.SourceFile)); err != nil {
			t.Fatalf("no arm64 stand-in kernel (run make standin-arm64): %v", err)
		}
	} else if err := standin.EnsureKernel(context.Background(), root, kernelDir, nil); err != nil {
		t.Fatal(err)
	}
	img, err := standin.Build(context.Background(), standin.BuildOptions{KernelDir: kernelDir, OutDir: filepath.Join(t.TempDir(), "image"), ModuleRoot: root, GOARCH: arch})
	if err != nil {
		t.Fatal(err)
	}
	return image{Result: img, arch: arch}
}

type vm struct {
	start  time.Time
	serial string
	qmp    *qmpConn
	done   chan struct{}
	out    bytes.Buffer
}

// startVM boots img with a QMP socket; QEMU is killed when the test ends.
func startVM(t *testing.T, img image, extra string) *vm {
	t.Helper()
	dir := t.TempDir()
	v := &vm{serial: filepath.Join(dir, "serial.log"), done: make(chan struct{})}
	sock := filepath.Join(dir, "qmp.sock")
	bin, console, machine, nic := "qemu-system-x86_64", "ttyS0", []string{"-machine", "q35,graphics=off", "-m", "512"}, "e1000"
	if img.arch == "arm64" {
		vars := filepath.Join(dir, "vars.fd")
		b, err := os.ReadFile(aavmfVars)
		if err == nil {
			err = os.WriteFile(vars, b, 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
		bin, console, nic = "qemu-system-aarch64", "ttyAMA0", "virtio-net-pci"
		machine = []string{"-machine", "virt", "-m", "1024",
			"-drive", "if=pflash,format=raw,readonly=on,file=" + aavmfCode, "-drive", "if=pflash,format=raw,file=" + vars}
	}
	appendArgs := strings.TrimSpace("console=" + console + " panic=-1 loglevel=4 talos.platform=metal talos.config=http://10.0.2.2/config " + extra)
	args := append(machine,
		"-accel", "tcg", "-cpu", "max", "-smp", "1",
		"-nodefaults", "-display", "none", "-no-reboot",
		"-serial", "file:"+v.serial,
		"-qmp", "unix:"+sock+",server=on,wait=off",
		"-kernel", img.Kernel, "-initrd", img.Initramfs, "-append", appendArgs,
		// A NIC on a hub of its own: no DHCP answers, the stand-in waits.
		"-netdev", "hubport,id=n0,hubid=0",
		"-device", nic+",netdev=n0,romfile=",
	)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &v.out, &v.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	v.start = time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		_ = cmd.Wait()
		close(v.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-v.done
		if t.Failed() {
			t.Logf("%s %s\nQEMU output: %s\nconsole:\n%s", bin, strings.Join(args, " "), v.out.String(), tail(v.console(), 6000))
		}
	})
	var err error
	deadline := time.Now().Add(30 * time.Second)
	for {
		if v.qmp, err = dialQMP(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("QMP on %s: %v", sock, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() { v.qmp.close() })
	return v
}

func (v *vm) console() []byte {
	b, _ := os.ReadFile(v.serial)
	return b
}

// waitConsole waits until the console has every one of lines.
func (v *vm) waitConsole(t *testing.T, limit time.Duration, lines ...string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		log := v.console()
		missing := ""
		for _, l := range lines {
			if !bytes.Contains(log, []byte(l)) {
				missing = l
				break
			}
		}
		if missing == "" {
			return
		}
		select {
		case <-v.done:
			t.Fatalf("QEMU exited before the console showed %s", missing)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the console has no %s after %s", missing, limit)
		}
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// qmpConn is QEMU's machine protocol over its unix socket: a greeting,
// qmp_capabilities, then commands answered by "return" or "error", with
// asynchronous events in between.
type qmpConn struct {
	c      net.Conn
	r      *bufio.Reader
	events []qmpMessage
}

type qmpMessage struct {
	Event  string          `json:"event"`
	Data   json.RawMessage `json:"data"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	QMP json.RawMessage `json:"QMP"`
}

func dialQMP(sock string) (*qmpConn, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	q := &qmpConn{c: c, r: bufio.NewReader(c)}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	greeting, err := q.read()
	if err == nil && greeting.QMP == nil {
		err = fmt.Errorf("QMP greeting expected, got %+v", greeting)
	}
	if err == nil {
		err = q.execute("qmp_capabilities")
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmpConn) read() (qmpMessage, error) {
	line, err := q.r.ReadBytes('\n')
	if err != nil {
		return qmpMessage{}, fmt.Errorf("read QMP: %w", err)
	}
	var m qmpMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return qmpMessage{}, fmt.Errorf("QMP message %q: %w", line, err)
	}
	return m, nil
}

// execute runs a command without arguments; events read meanwhile are kept.
func (q *qmpConn) execute(cmd string) error {
	_ = q.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(q.c, "{\"execute\":%q}\n", cmd); err != nil {
		return fmt.Errorf("QMP %s: %w", cmd, err)
	}
	for {
		m, err := q.read()
		if err != nil {
			return fmt.Errorf("QMP %s: %w", cmd, err)
		}
		switch {
		case m.Event != "":
			q.events = append(q.events, m)
		case m.Error != nil:
			return fmt.Errorf("QMP %s: %s: %s", cmd, m.Error.Class, m.Error.Desc)
		case m.Return != nil:
			return nil
		}
	}
}

// waitEvent returns the reason of the first event named name.
func (q *qmpConn) waitEvent(name string, limit time.Duration) (string, error) {
	_ = q.c.SetDeadline(time.Now().Add(limit))
	for {
		var m qmpMessage
		if len(q.events) > 0 {
			m, q.events = q.events[0], q.events[1:]
		} else {
			var err error
			if m, err = q.read(); err != nil {
				return "", err
			}
		}
		if m.Event != name {
			continue
		}
		var data struct {
			Guest  bool   `json:"guest"`
			Reason string `json:"reason"`
		}
		if err := json.Unmarshal(m.Data, &data); err != nil {
			return "", fmt.Errorf("%s data %s: %w", name, m.Data, err)
		}
		return data.Reason, nil
	}
}

func (q *qmpConn) close() { _ = q.c.Close() }
