//go:build linux

package lab

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/crypto/bcrypt"

	"github.com/dotfile/rackboot/bmc"
	"github.com/dotfile/rackboot/internal/selfsigned"
)

// sushyDebs are the Debian packages sushy-tools needs.
const sushyDebs = "python3-flask python3-tenacity python3-bcrypt python3-webob python3-pbr python3-requests"

// sushyRun is how to start sushy-tools' emulator: a source directory run
// by Debian's python3, or a sushy-emulator program.
type sushyRun struct {
	Path string
	Args []string
	Env  []string
}

// findSushy locates sushy-tools (see Tools.SushyTools).
func (l *Lab) findSushy() (sushyRun, error) {
	fromDir := func(dir string) (sushyRun, bool) {
		if _, err := os.Stat(filepath.Join(dir, "sushy_tools", "emulator", "main.py")); err != nil {
			return sushyRun{}, false
		}
		abs, _ := filepath.Abs(dir)
		return sushyRun{
			Path: l.tools.Python,
			Args: []string{"-m", "sushy_tools.emulator.main", "--fake"},
			Env:  []string{"PYTHONPATH=" + abs, "PBR_VERSION=1.0.0"},
		}, true
	}
	if d := l.tools.SushyTools; d != "" {
		if r, ok := fromDir(d); ok {
			return r, nil
		}
		if fi, err := os.Stat(d); err == nil && !fi.IsDir() {
			return sushyRun{Path: d, Args: []string{"--fake"}}, nil
		}
		return sushyRun{}, fmt.Errorf("sushy-tools not found at %s (a directory holding sushy_tools/, or the sushy-emulator program)", d)
	}
	var tried []string
	if d := os.Getenv("RACKBOOT_SUSHY_TOOLS"); d != "" {
		if r, ok := fromDir(d); ok {
			return r, nil
		}
		tried = append(tried, d+" ($RACKBOOT_SUSHY_TOOLS)")
	}
	var starts []string
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	if exe, err := os.Executable(); err == nil {
		starts = append(starts, filepath.Dir(exe))
	}
	for _, s := range starts {
		if root := moduleRootFrom(s); root != "" {
			d := filepath.Join(root, "..", "shared", "tools", "sushy-tools")
			if r, ok := fromDir(d); ok {
				return r, nil
			}
			tried = append(tried, filepath.Clean(d))
		}
	}
	if p, err := exec.LookPath("sushy-emulator"); err == nil {
		return sushyRun{Path: p, Args: []string{"--fake"}}, nil
	}
	tried = append(tried, "sushy-emulator on PATH")
	return sushyRun{}, fmt.Errorf("sushy-tools (the virtual Redfish BMC) not found: tried %v; set RACKBOOT_SUSHY_TOOLS to a directory holding sushy_tools/, or pip install sushy-tools", tried)
}

// moduleRootFrom is the nearest directory at or above dir with a go.mod.
func moduleRootFrom(dir string) string {
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return ""
		}
	}
}

// checkBMCTools reports what the plan's virtual BMCs need and is missing.
func (l *Lab) checkBMCTools(p *Plan) []error {
	var errs []error
	ipmi, redfish := false, false
	for _, vm := range p.VMs {
		if vm.BMC != nil {
			ipmi = ipmi || vm.BMC.Protocol == BMCIPMI
			redfish = redfish || vm.BMC.Protocol == BMCRedfish
		}
	}
	if ipmi {
		if _, err := exec.LookPath(l.tools.IPMISim); err != nil {
			errs = append(errs, fmt.Errorf("%s not found (the virtual IPMI BMC): apt-get install openipmi", l.tools.IPMISim))
		}
	}
	if redfish {
		r, err := l.findSushy()
		if err != nil {
			errs = append(errs, err)
		} else if r.Path == l.tools.Python {
			if _, err := os.Stat(l.tools.Python); err != nil {
				errs = append(errs, fmt.Errorf("%s not found (it runs sushy-tools, the virtual Redfish BMC): apt-get install python3 %s", l.tools.Python, sushyDebs))
			}
		}
	}
	return errs
}

// bmcDir is a VM's BMC directory: <labdir>/<vm>/bmc.
func (l *Lab) bmcDir(vm string) string { return filepath.Join(l.dir, vm, "bmc") }

// startBMCs brings up the virtual BMCs: their addresses on the bridge, the
// power agent, and one emulator per BMC VM, each answering before it
// returns. Passwords go only into the emulators' 0600 files.
func (l *Lab) startBMCs(ctx context.Context, st *State, p *Plan, passwords map[string]string) error {
	var addrs []netip.Addr
	for _, vm := range p.VMs {
		if vm.BMC != nil {
			addrs = append(addrs, vm.BMC.Addr)
		}
	}
	// /32: the addresses answer on the bridge, but add no route, so the
	// namespace's own traffic keeps the server address as its source.
	err := inNamespace(p.Namespace, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		br, err := h.LinkByName(Bridge)
		if err != nil {
			return fmt.Errorf("find %s: %w", Bridge, err)
		}
		for _, a := range addrs {
			if err := addAddr(h, br, netip.PrefixFrom(a, 32)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("lab %s: BMC addresses: %w", l.name, err)
	}

	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("power agent: find this binary: %w", err)
	}
	agentURL := fmt.Sprintf("http://127.0.0.1:%d", PowerAgentPort)
	logPath := filepath.Join(l.dir, "power.log")
	spec := ProcessSpec{Role: "power", Path: exe, Args: []string{PowerCommand, "--lab-dir", l.dir, "--listen", fmt.Sprintf("127.0.0.1:%d", PowerAgentPort)}}
	done, err := l.startWait(st, st.Namespaces[0], spec, logPath, "", powerPath(l.dir))
	if err != nil {
		return err
	}
	if err := l.waitLog(ctx, "power agent", logPath, powerReadyMsg, done, 10*time.Second); err != nil {
		return err
	}

	for _, vm := range p.VMs {
		if vm.BMC == nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		dir := l.bmcDir(vm.Name)
		st.Trees = append(st.Trees, dir)
		if err := l.save(st); err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Join(dir, "state"), 0o700); err != nil {
			return fmt.Errorf("vm %s BMC: %w", vm.Name, err)
		}
		switch vm.BMC.Protocol {
		case BMCIPMI:
			err = l.startIPMISim(ctx, st, vm, dir, exe, agentURL, passwords[vm.Name])
		default:
			err = l.startSushy(ctx, st, vm, dir, agentURL, passwords[vm.Name])
		}
		if err != nil {
			return fmt.Errorf("vm %s BMC (%s at %s): %w", vm.Name, vm.BMC.Protocol, vm.BMC.AddrPort(), err)
		}
		l.log.Info("virtual BMC ready", "lab", l.name, "vm", vm.Name, "protocol", vm.BMC.Protocol, "address", vm.BMC.AddrPort().String())
	}
	return nil
}

func writeFiles(dir string, files map[string]string, mode fs.FileMode) error {
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), mode); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) startIPMISim(ctx context.Context, st *State, vm VMPlan, dir, exe, agentURL, password string) error {
	chassis := filepath.Join(dir, "chassis")
	if err := writeFiles(dir, map[string]string{"chassis": ChassisScript(exe, agentURL, vm.Name)}, 0o700); err != nil {
		return err
	}
	if err := writeFiles(dir, map[string]string{
		"lan.conf": IPMILanConf(vm.Name, vm.UUID, *vm.BMC, password, chassis),
		"bmc.emu":  IPMIEmu,
	}, 0o600); err != nil {
		return err
	}
	spec := ProcessSpec{Role: "bmc:" + vm.Name, Path: l.tools.IPMISim, Args: []string{
		"-c", filepath.Join(dir, "lan.conf"), "-f", filepath.Join(dir, "bmc.emu"), "-s", filepath.Join(dir, "state"), "-n",
	}}
	logPath := filepath.Join(dir, "ipmi_sim.log")
	done, err := l.startWait(st, st.Namespaces[0], spec, logPath, dir)
	if err != nil {
		return err
	}
	return l.waitReady(ctx, logPath, done, 10*time.Second, func(ctx context.Context) error {
		return l.pingIPMI(ctx, vm.BMC.AddrPort().String())
	})
}

func (l *Lab) startSushy(ctx context.Context, st *State, vm VMPlan, dir, agentURL, password string) error {
	run, err := l.findSushy()
	if err != nil {
		return err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.DefaultCost)
	if err != nil {
		return fmt.Errorf("hash the password: %w", err)
	}
	f := SushyFiles{StateDir: filepath.Join(dir, "state"), AuthFile: filepath.Join(dir, "htpasswd")}
	files := map[string]string{
		"htpasswd":        vm.BMC.User + ":" + string(hash) + "\n",
		agentPasswordFile: password, // the agent's, to tell sushy of a guest power-off
	}
	var pool *x509.CertPool
	if vm.BMC.TLS {
		// A CA of its own for the BMC's IP, so a client trusts exactly it.
		certPEM, keyPEM, err := selfsigned.Cert("rackboot lab BMC "+vm.Name, []string{vm.BMC.Addr.String()}, time.Now(), 365*24*time.Hour)
		if err != nil {
			return err
		}
		f.Cert, f.Key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		files["cert.pem"], files["key.pem"] = string(certPEM), string(keyPEM)
		pool = x509.NewCertPool()
		pool.AppendCertsFromPEM(certPEM)
	}
	conf := filepath.Join(dir, "emulator.conf")
	files["emulator.conf"] = SushyConf(vm, f, agentURL+"/sushy/"+vm.Name)
	if err := writeFiles(dir, files, 0o600); err != nil {
		return err
	}
	spec := ProcessSpec{Role: "bmc:" + vm.Name, Path: run.Path, Args: run.Args, Env: append(run.Env, "SUSHY_EMULATOR_CONFIG="+conf)}
	logPath := filepath.Join(dir, "sushy.log")
	done, err := l.startWait(st, st.Namespaces[0], spec, logPath, dir)
	if err != nil {
		return err
	}
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext:     l.DialContext,
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
	defer hc.CloseIdleConnections()
	err = l.waitReady(ctx, logPath, done, 30*time.Second, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, vm.BMC.URL()+"/redfish/v1/", nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("GET /redfish/v1/: HTTP %d", resp.StatusCode)
		}
		return nil
	})
	if err != nil {
		if b, _ := os.ReadFile(logPath); bytes.Contains(b, []byte("ModuleNotFoundError")) {
			return fmt.Errorf("%w\na Python module sushy-tools needs is missing: apt-get install %s", err, sushyDebs)
		}
	}
	return err
}

// pingIPMI asks the BMC at addr, from inside the lab, for its
// authentication capabilities (bmc.ProbeIPMI: no session needed).
func (l *Lab) pingIPMI(ctx context.Context, addr string) error {
	conn, err := l.DialContext(ctx, "udp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	return bmc.ProbeIPMI(ctx, conn)
}

// waitReady calls ready until it returns nil, the process exits or
// timeout passes.
func (l *Lab) waitReady(ctx context.Context, logPath string, done <-chan error, timeout time.Duration, ready func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(l.poll)
	defer t.Stop()
	var err error
	for {
		if err = ready(ctx); err == nil {
			return nil
		}
		select {
		case werr := <-done:
			b, _ := os.ReadFile(logPath)
			return fmt.Errorf("it exited at once (%v):\n%s", werr, tail(b, 20))
		case <-ctx.Done():
			b, _ := os.ReadFile(logPath)
			return fmt.Errorf("not answering after %s (%v):\n%s", timeout, err, tail(b, 20))
		case <-t.C:
		}
	}
}

// waitLog waits until logPath holds msg.
func (l *Lab) waitLog(ctx context.Context, what, logPath, msg string, done <-chan error, timeout time.Duration) error {
	return l.waitReady(ctx, logPath, done, timeout, func(context.Context) error {
		if b, _ := os.ReadFile(logPath); bytes.Contains(b, []byte(msg)) {
			return nil
		}
		return fmt.Errorf("%s not ready", what)
	})
}

// stopPowerLeftovers stops any QEMU the power agent recorded and that still
// runs (the agent was killed before it could stop them), by PID and start
// time only.
func (l *Lab) stopPowerLeftovers() (stopped []string, errs []error) {
	f, err := readPowerFile(l.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, []error{err}
	}
	for _, v := range f.VMs {
		if !v.On || v.PID <= 1 {
			continue
		}
		signalled, err := stopProcess(v.process(), l.stop)
		if err != nil {
			errs = append(errs, err)
		} else if signalled {
			stopped = append(stopped, "vm:"+v.Name)
		}
	}
	return stopped, errs
}

// VMPower is a VM's power: for a VM with a virtual BMC, what its power
// agent recorded (On only while that QEMU still runs); for another VM, its
// QEMU process.
func (l *Lab) VMPower(_ context.Context, name string) (VMPower, error) {
	st, err := l.State()
	if err != nil {
		return VMPower{}, err
	}
	vs := st.VM(name)
	if vs == nil {
		return VMPower{}, fmt.Errorf("lab %s: vm %q: %w", l.name, name, ErrUnknownVM)
	}
	if vs.BMC == nil {
		out := VMPower{Name: name, Boots: 1, NextBoot: BootNetwork}
		for _, p := range st.Processes {
			if p.Role == "vm:"+name {
				out.Args, out.Exe = p.Args, p.Exe
				if running(p) {
					out.On, out.PID, out.StartTime = true, p.PID, p.StartTime
				}
			}
		}
		return out, nil
	}
	f, err := readPowerFile(l.dir)
	if err != nil {
		return VMPower{}, fmt.Errorf("lab %s: the power agent's state: %w", l.name, err)
	}
	v := f.vm(name)
	if v == nil {
		return VMPower{}, fmt.Errorf("lab %s: the power agent does not know vm %s", l.name, name)
	}
	out := *v
	if out.On && !running(out.process()) {
		out.On, out.PID, out.StartTime = false, 0, 0
	}
	return out, nil
}
