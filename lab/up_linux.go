//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// DetectAccel looks at this machine: KVM only when /dev/kvm opens for
// writing and /proc/cpuinfo has vmx or svm (see ChooseAccel).
func DetectAccel() Accel {
	writable := false
	if f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0); err == nil {
		writable = true
		f.Close()
	}
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	return ChooseAccel(writable, cpuinfo)
}

// checkTools reports every missing program or firmware file at once, each
// with the Debian package that has it.
func (l *Lab) checkTools(p *Plan) error {
	var errs []error
	need := func(prog, pkg string) {
		if _, err := exec.LookPath(prog); err != nil {
			errs = append(errs, fmt.Errorf("%s not found: apt-get install %s", prog, pkg))
		}
	}
	need(l.tools.QEMU, "qemu-system-x86 (and ipxe-qemu, seabios for the NIC ROM and BIOS)")
	need(l.tools.QEMUImg, "qemu-utils")
	if p.DHCP == DHCPProxy {
		need(l.tools.Dnsmasq, "dnsmasq-base")
	}
	for _, vm := range p.VMs {
		if vm.Arch == ArchARM64 {
			need(l.tools.QEMUArm64, "qemu-system-arm")
			for _, f := range []string{l.tools.AAVMFCode, l.tools.AAVMFVars} {
				if _, err := os.Stat(f); err != nil {
					errs = append(errs, fmt.Errorf("arm64 UEFI firmware %s missing: apt-get install qemu-efi-aarch64", f))
				}
			}
			break
		}
	}
	for _, vm := range p.VMs {
		if vm.Firmware == FirmwareUEFI && vm.Arch != ArchARM64 {
			for _, f := range []string{l.tools.OVMFCode, l.tools.OVMFVars} {
				if _, err := os.Stat(f); err != nil {
					errs = append(errs, fmt.Errorf("UEFI firmware %s missing: apt-get install ovmf", f))
				}
			}
			break
		}
	}
	errs = append(errs, l.checkBMCTools(p)...)
	return errors.Join(errs...)
}

// Up builds the lab: namespaces, bridge, taps, (proxy mode) the router with
// dnsmasq, the serve process when the spec has one, disk files, and one QEMU
// per machine. Every resource is recorded in lab.json before it is made;
// when anything fails, Up removes what it made (as Down does) and returns
// the error. It needs root.
func (l *Lab) Up(ctx context.Context, spec Spec) (_ *State, err error) {
	p, err := NewPlan(l.name, spec)
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the lab needs root (network namespaces, taps): run it with sudo")
	}
	if err := l.checkTools(p); err != nil {
		return nil, fmt.Errorf("lab %s: %w", l.name, err)
	}
	if _, err := os.Stat(l.StatePath()); err == nil {
		return nil, fmt.Errorf("lab %s (%s): %w; run `rackboot lab down --name %s` first", l.name, l.StatePath(), ErrExists, l.name)
	}
	for _, ns := range []string{p.Namespace, p.RouterNamespace} {
		if ns != "" && namespaceExists(ns) {
			return nil, fmt.Errorf("namespace %s exists but no lab state records it: if it is a leftover, remove it with `ip netns del %s`", ns, ns)
		}
	}
	accel := DetectAccel()
	if l.accel != nil {
		accel = *l.accel
	}
	st := &State{
		Version:    StateVersion,
		Name:       l.name,
		Created:    l.now().UTC(),
		DHCP:       p.DHCP,
		Accel:      accel.Name,
		ServerAddr: p.ServerAddr.String(),
		DHCPRange:  p.DHCPRange[0].String() + "-" + p.DHCPRange[1].String(),
	}
	if p.RouterAddr.IsValid() && p.DHCP == DHCPProxy {
		st.RouterAddr = p.RouterAddr.String()
	}
	if _, err := os.Stat(l.dir); errors.Is(err, fs.ErrNotExist) {
		st.Dirs = append(st.Dirs, l.dir)
	}
	if err := os.MkdirAll(l.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create lab directory: %w", err)
	}
	if err := l.save(st); err != nil {
		return nil, err
	}
	defer func() {
		if err == nil {
			return
		}
		l.log.Warn("lab start failed: removing what was made", "lab", l.name, "err", err)
		if _, derr := l.Down(context.WithoutCancel(ctx)); derr != nil {
			err = errors.Join(err, fmt.Errorf("clean up after the failed start: %w", derr))
		}
	}()

	// The network.
	for _, ns := range []string{p.Namespace, p.RouterNamespace} {
		if ns == "" {
			continue
		}
		st.Namespaces = append(st.Namespaces, ns)
		if err := l.save(st); err != nil {
			return nil, err
		}
		if err := createNamespace(ns); err != nil {
			return nil, err
		}
		l.log.Info("namespace created", "lab", l.name, "namespace", ns)
	}
	err = setupLabNetwork(p, func(kind, name string) error {
		switch kind {
		case "bridge":
			st.Bridge = name
		case "tap":
			st.Taps = append(st.Taps, name)
		case "veth":
			st.Veths = append(st.Veths, name)
		}
		return l.save(st)
	})
	if err != nil {
		return nil, fmt.Errorf("lab %s network: %w", l.name, err)
	}
	if err := checkNoDefaultRoute(st.Namespaces); err != nil {
		return nil, err
	}
	l.log.Info("network ready", "lab", l.name, "bridge", Bridge, "server", p.ServerAddr, "taps", len(st.Taps))
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("lab %s: %w", l.name, err)
	}

	// The IPv6 router advertisement responder (see ra.go), before any VM.
	if !l.noRA {
		if err := l.startRA(ctx, st); err != nil {
			return nil, err
		}
	}

	// The home router (proxy mode).
	if p.DHCP == DHCPProxy {
		leases, logf := filepath.Join(l.dir, "dnsmasq.leases"), filepath.Join(l.dir, "dnsmasq.log")
		out := filepath.Join(l.dir, "dnsmasq.out")
		if err := l.start(st, p.RouterNamespace, ProcessSpec{Role: "dnsmasq", Path: l.tools.Dnsmasq, Args: DnsmasqArgs(p, leases, logf)}, out, leases, logf); err != nil {
			return nil, err
		}
	}

	// rackboot serve.
	if spec.Serve != nil {
		if err := l.startServe(ctx, st, *spec.Serve); err != nil {
			return nil, err
		}
	}

	// The VMs.
	for _, vm := range p.VMs {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("lab %s: %w", l.name, err)
		}
		if err := l.startVM(ctx, st, vm, accel); err != nil {
			return nil, err
		}
	}

	// The virtual BMCs: the VMs that have one are off until they say on.
	if p.HasBMCs() {
		if err := l.startBMCs(ctx, st, p, spec.BMCPasswords); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// startServe starts the serve process in the lab namespace, with its own
// working directory, and waits until it is ready.
func (l *Lab) startServe(ctx context.Context, st *State, s ProcessSpec) error {
	if s.Role == "" {
		s.Role = "serve"
	}
	var dir string
	if s.WorkDir != "" {
		if !vmNameRE.MatchString(s.WorkDir) || s.WorkDir != filepath.Base(s.WorkDir) || s.WorkDir == "lab.json" {
			return fmt.Errorf("%s: work directory %q must be one plain name", s.Role, s.WorkDir)
		}
		dir = filepath.Join(l.dir, s.WorkDir)
		st.Trees = append(st.Trees, dir)
		if err := l.save(st); err != nil {
			return err
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("%s: %w", s.Role, err)
		}
		for name, data := range s.Files {
			if name != filepath.Base(name) {
				return fmt.Errorf("%s: file name %q must be one plain name", s.Role, name)
			}
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				return fmt.Errorf("%s: %w", s.Role, err)
			}
		}
		for name, target := range s.Links {
			if name != filepath.Base(name) {
				return fmt.Errorf("%s: link name %q must be one plain name", s.Role, name)
			}
			if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
				return fmt.Errorf("%s: %w", s.Role, err)
			}
		}
	}
	done, err := l.startWait(st, st.Namespaces[0], s, filepath.Join(l.dir, s.Role+".log"), dir)
	if err != nil {
		return err
	}
	st.Serve = true
	if err := l.save(st); err != nil {
		return err
	}
	if s.Ready == nil {
		return nil
	}
	timeout := s.ReadyTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	exited := make(chan error, 1)
	go func() {
		select {
		case werr := <-done:
			exited <- werr
			cancel()
		case <-rctx.Done():
		}
	}()
	if err := s.Ready(rctx); err != nil {
		out, _ := os.ReadFile(filepath.Join(l.dir, s.Role+".log"))
		select {
		case werr := <-exited:
			err = fmt.Errorf("it exited (%v)", werr)
		default:
		}
		return fmt.Errorf("%s is not ready: %w\n%s", s.Role, err, tail(out, 20))
	}
	l.log.Info("ready", "lab", l.name, "role", s.Role)
	return nil
}

// tail is the last n lines of b.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// DialContext connects from inside the lab namespace (the socket is made
// there), so this process can reach the lab's serve on the bridge address.
func (l *Lab) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNamespace(Namespace(l.name), func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// start starts a process in a namespace and records it (and the files it
// will write, so Down removes them).
func (l *Lab) start(st *State, namespace string, spec ProcessSpec, logPath string, files ...string) error {
	_, err := l.startWait(st, namespace, spec, logPath, "", files...)
	return err
}

func (l *Lab) startWait(st *State, namespace string, spec ProcessSpec, logPath, dir string, files ...string) (<-chan error, error) {
	st.Files = append(st.Files, logPath)
	st.Files = append(st.Files, files...)
	if err := l.save(st); err != nil {
		return nil, err
	}
	proc, done, err := startProcess(namespace, spec, logPath, dir)
	if err != nil {
		return nil, err
	}
	st.Processes = append(st.Processes, proc)
	if err := l.save(st); err != nil {
		return nil, err
	}
	l.log.Info("started", "lab", l.name, "role", spec.Role, "pid", proc.PID, "namespace", namespace)
	return done, nil
}

// startVM makes a VM's disks (and UEFI variable store) and starts its QEMU;
// a VM with a virtual BMC is left off (the power agent starts it).
func (l *Lab) startVM(ctx context.Context, st *State, vm VMPlan, accel Accel) error {
	dir := filepath.Join(l.dir, vm.Name)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		st.Dirs = append(st.Dirs, dir)
	}
	f := VMFiles{
		SerialLog: filepath.Join(dir, "serial.log"),
		NVMe:      filepath.Join(dir, vm.NVMe.ID+"."+DiskFormat),
	}
	for _, d := range vm.SATA {
		f.SATA = append(f.SATA, filepath.Join(dir, d.ID+"."+DiskFormat))
	}
	vs := VMState{
		Name: vm.Name, MAC: vm.MAC, UUID: vm.UUID, Serial: vm.Serial, Firmware: vm.Firmware, Tap: vm.Tap,
		NIC: vm.NIC, Netboot: vm.Netboot,
		ExtraNICs: vm.Extra,
		Disks:     append([]string{f.NVMe}, f.SATA...),
		SerialLog: f.SerialLog,
		QEMULog:   filepath.Join(dir, "qemu.log"),
	}
	qemu, varsTemplate := l.tools.QEMU, l.tools.OVMFVars
	if vm.Firmware == FirmwareUEFI {
		f.OVMFCode = l.tools.OVMFCode
		f.OVMFVars = filepath.Join(dir, "OVMF_VARS.fd")
		vs.OVMFVars = f.OVMFVars
	}
	if vm.Arch == ArchARM64 {
		qemu, varsTemplate = l.tools.QEMUArm64, l.tools.AAVMFVars
		f.OVMFCode = l.tools.AAVMFCode
		f.OVMFVars = filepath.Join(dir, "AAVMF_VARS.fd")
		vs.OVMFVars = f.OVMFVars
		vs.Arch = vm.Arch
	}
	st.Files = append(st.Files, vs.Disks...)
	st.Files = append(st.Files, vs.SerialLog)
	if vs.OVMFVars != "" {
		st.Files = append(st.Files, vs.OVMFVars)
	}
	args := QEMUArgs(vm, f, accel)
	vs.Command = append([]string{qemu}, args...)
	if vm.BMC != nil {
		vs.BMC = vm.BMC.state()
		st.Files = append(st.Files, vs.QEMULog, qmpPath(vs))
	}
	st.VMs = append(st.VMs, vs)
	if err := l.save(st); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	disks := append([]Disk{vm.NVMe}, vm.SATA...)
	for i, d := range disks {
		out, err := exec.CommandContext(ctx, l.tools.QEMUImg, "create", "-q", "-f", DiskFormat, vs.Disks[i], fmt.Sprint(d.Bytes)).CombinedOutput()
		if err != nil {
			return fmt.Errorf("vm %s: create disk %s: %w: %s", vm.Name, vs.Disks[i], err, strings.TrimSpace(string(out)))
		}
	}
	if vs.OVMFVars != "" {
		if err := copyFile(varsTemplate, vs.OVMFVars); err != nil {
			return fmt.Errorf("vm %s: UEFI variable store: %w", vm.Name, err)
		}
	}
	if vm.BMC != nil {
		l.log.Info("vm ready, powered off (virtual BMC)", "lab", l.name, "vm", vm.Name, "bmc", vm.BMC.Protocol, "address", vm.BMC.AddrPort().String())
		return nil
	}
	done, err := l.startWait(st, st.Namespaces[0], ProcessSpec{Role: "vm:" + vm.Name, Path: qemu, Args: args}, vs.QEMULog, "")
	if err != nil {
		return fmt.Errorf("vm %s: %w", vm.Name, err)
	}
	// QEMU rejects a bad command line or tap within a moment: wait until the
	// firmware has written to the serial console, QEMU exits, or 5s pass.
	t := time.NewTicker(l.poll)
	defer t.Stop()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		select {
		case werr := <-done:
			out, _ := os.ReadFile(vs.QEMULog)
			return fmt.Errorf("vm %s: QEMU exited at once (%v): %s\ncommand: %s", vm.Name, werr, strings.TrimSpace(string(out)), strings.Join(vs.Command, " "))
		case <-t.C:
		}
		if fi, err := os.Stat(vs.SerialLog); err == nil && fi.Size() > 0 {
			break
		}
	}
	l.log.Info("vm started", "lab", l.name, "vm", vm.Name, "mac", vm.MAC, "firmware", vm.Firmware, "netboot", vm.Netboot, "accel", accel.Name)
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Down removes everything the lab recorded: it stops the recorded processes
// (only those PIDs, and only while they have the recorded start time and
// program), deletes the namespaces (and with them the bridge, taps and
// veths), removes the files and then the state. A lab that is not up is not
// an error: the report says there was nothing to do.
func (l *Lab) Down(ctx context.Context) (*DownReport, error) {
	st, err := l.State()
	if errors.Is(err, ErrNotUp) {
		return &DownReport{NothingToDo: true}, nil
	}
	if err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 && len(st.Namespaces) > 0 {
		return nil, errors.New("taking the lab down needs root (network namespaces): run it with sudo")
	}
	rep := &DownReport{}
	var errs []error
	for i := len(st.Processes) - 1; i >= 0; i-- {
		p := st.Processes[i]
		signalled, err := stopProcess(p, l.stop)
		switch {
		case err != nil:
			errs = append(errs, err)
		case signalled:
			rep.Stopped = append(rep.Stopped, p.Role)
			l.log.Info("stopped", "lab", l.name, "role", p.Role, "pid", p.PID)
		default:
			rep.Gone = append(rep.Gone, p.Role)
		}
	}
	stopped, perrs := l.stopPowerLeftovers()
	rep.Stopped = append(rep.Stopped, stopped...)
	errs = append(errs, perrs...)
	for i := len(st.Namespaces) - 1; i >= 0; i-- {
		ns := st.Namespaces[i]
		existed := namespaceExists(ns)
		if err := deleteNamespace(ns); err != nil {
			errs = append(errs, err)
		} else if existed {
			rep.Namespaces = append(rep.Namespaces, ns)
			l.log.Info("namespace deleted", "lab", l.name, "namespace", ns)
		}
	}
	for i := len(st.Files) - 1; i >= 0; i-- {
		err := os.Remove(st.Files[i])
		switch {
		case err == nil:
			rep.Files++
		case !errors.Is(err, fs.ErrNotExist):
			errs = append(errs, fmt.Errorf("remove %s: %w", st.Files[i], err))
		}
	}
	for i := len(st.Trees) - 1; i >= 0; i-- {
		tree := st.Trees[i]
		if rel, err := filepath.Rel(l.dir, tree); err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			errs = append(errs, fmt.Errorf("not removing %s: it is not inside the lab directory %s", tree, l.dir))
			continue
		}
		if err := os.RemoveAll(tree); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", tree, err))
		}
	}
	if len(errs) > 0 {
		return rep, fmt.Errorf("lab %s down: %w (the state is kept: run down again)", l.name, errors.Join(errs...))
	}
	if err := os.Remove(l.StatePath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return rep, fmt.Errorf("lab %s down: remove state: %w", l.name, err)
	}
	for i := len(st.Dirs) - 1; i >= 0; i-- {
		if err := os.Remove(st.Dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			l.log.Warn("directory left in place", "dir", st.Dirs[i], "err", err)
		}
	}
	return rep, ctx.Err()
}

// Status reads the state and looks at the recorded processes.
func (l *Lab) Status() (*Status, error) {
	st, err := l.State()
	if err != nil {
		return nil, err
	}
	s := &Status{
		Name: st.Name, DHCP: st.DHCP, Accel: st.Accel, Namespaces: st.Namespaces,
		ServerAddr: st.ServerAddr, RouterAddr: st.RouterAddr,
	}
	procs := map[string]Process{}
	for _, p := range st.Processes {
		procs[p.Role] = p
		if !strings.HasPrefix(p.Role, "vm:") {
			s.Processes = append(s.Processes, ProcessStatus{Role: p.Role, PID: p.PID, Running: running(p), Log: p.Log})
		}
	}
	var power *powerFile
	for _, vm := range st.VMs {
		vs := VMStatus{VMState: vm, LastLine: lastLineOfFile(vm.SerialLog)}
		if p, ok := procs["vm:"+vm.Name]; ok {
			vs.PID = p.PID
			vs.Running = running(p)
		}
		if vm.BMC != nil {
			if power == nil {
				power, _ = readPowerFile(l.dir)
			}
			if power != nil {
				if v := power.vm(vm.Name); v != nil && v.On && running(v.process()) {
					vs.PID, vs.Running = v.PID, true
				}
			}
		}
		vs.Power = "off"
		if vs.Running {
			vs.Power = "on"
		}
		s.VMs = append(s.VMs, vs)
	}
	return s, nil
}

// InNamespace reports whether the process with this PID runs in the lab's
// namespace (tests use it to check that QEMU is not on the host network).
func (l *Lab) InNamespace(pid int) (bool, error) {
	return sameNetNamespace(pid, Namespace(l.name))
}
