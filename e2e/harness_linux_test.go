//go:build linux

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/lab"
	"github.com/dotfile/rackboot/lab/standin/report"
	"github.com/dotfile/rackboot/pxe"
	"github.com/dotfile/rackboot/status"
)

// servePort is the HTTP port `rackboot lab up` gives serve inside the lab
// namespace (labServePort in cmd/rackboot/lab_cmd.go).
const servePort = 8080

// suite is what TestMain prepares once for every test.
type suite struct {
	root    string // the module root
	bin     string // the rackboot binary built for this run
	standin string // the stand-in boot image directory (absolute)
	err     error  // why the tests cannot run; every test fails with it
}

// prepared is written once by TestMain before any test runs and only read
// afterwards.
var prepared suite

func TestMain(m *testing.M) {
	tmp, err := os.MkdirTemp("", "rackboot-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	prepared = prepare(tmp)
	code := m.Run()
	os.RemoveAll(tmp)
	os.Exit(code)
}

// prepare checks the machine (root, Debian tools, stand-in image) and builds
// the rackboot binary from this tree into dir, unless RACKBOOT_E2E_BIN names
// one already built.
func prepare(dir string) suite {
	var s suite
	var errs []error
	root, err := moduleRoot()
	if err != nil {
		return suite{err: err}
	}
	s.root = root
	if os.Geteuid() != 0 {
		errs = append(errs, errors.New("the e2e tests create network namespaces, taps and VMs: run them as root"))
	}
	for prog, pkg := range map[string]string{
		"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "dnsmasq": "dnsmasq-base",
		"ip": "iproute2", "sfdisk": "fdisk",
	} {
		if _, err := exec.LookPath(prog); err != nil {
			errs = append(errs, fmt.Errorf("%s not found: run `make deps` (Debian package %s)", prog, pkg))
		}
	}
	for file, pkg := range map[string]string{
		"/usr/share/OVMF/OVMF_CODE_4M.fd":  "ovmf",
		"/usr/share/OVMF/OVMF_VARS_4M.fd":  "ovmf",
		"/usr/share/seabios/bios-256k.bin": "seabios",
		"/usr/lib/ipxe/qemu/efi-e1000.rom": "ipxe-qemu",
	} {
		if _, err := os.Stat(file); err != nil {
			errs = append(errs, fmt.Errorf("%s missing: run `make deps` (Debian package %s)", file, pkg))
		}
	}
	s.standin = filepath.Join(root, "lab", "standin", "build")
	if d := os.Getenv("RACKBOOT_E2E_STANDIN"); d != "" { // a stand-in image built elsewhere (go run ./lab/standin/mkimage -o DIR)
		s.standin = d
	}
	for _, f := range []string{"vmlinuz", "initramfs.cpio.gz"} {
		if _, err := os.Stat(filepath.Join(s.standin, f)); err != nil {
			errs = append(errs, fmt.Errorf("stand-in boot image: %s missing: run `make standin`", filepath.Join(s.standin, f)))
		}
	}
	if bin := os.Getenv("RACKBOOT_E2E_BIN"); bin != "" {
		// A binary built beforehand from this tree (faster reruns).
		if s.bin, err = filepath.Abs(bin); err != nil {
			errs = append(errs, fmt.Errorf("RACKBOOT_E2E_BIN: %w", err))
		}
		s.err = errors.Join(errs...)
		return s
	}
	s.bin = filepath.Join(dir, "rackboot")
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtimeGOROOT(), "bin", "go")
	}
	build := exec.Command(gobin, "build", "-o", s.bin, "./cmd/rackboot")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("build rackboot (go build ./cmd/rackboot in %s; the embedded iPXE binaries come from `make ipxe`): %w\n%s", root, err, out))
	}
	s.err = errors.Join(errs...)
	return s
}

// runtimeGOROOT is the Go installation that built this test, for when go
// is not on PATH.
func runtimeGOROOT() string {
	if r := os.Getenv("GOROOT"); r != "" {
		return r
	}
	return "/usr/local/go"
}

// moduleRoot walks up from the working directory to rackboot's go.mod.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find the module root: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(b, []byte("module github.com/dotfile/rackboot\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find the module root: no go.mod of github.com/dotfile/rackboot above the working directory")
		}
		dir = parent
	}
}

// testRack is the rack file the scenarios netboot: two machines on a
// private subnet (only the first becomes a VM), NVMe install disk, sd*
// disks for Ceph. rackboot's address (the lab's server, the subnet's first
// free host) is in it: the lab has no route anywhere, so machines pull
// their installer image from serve's registry mirror, which every config
// names only then.
const testRack = `# rack.yaml for the e2e tests
cluster:
  name: e2e
  talosVersion: v1.13.0
  kubernetesVersion: 1.36.0
  vip: 10.77.0.10
  network:
    subnet: 10.77.0.0/24
    gateway: 10.77.0.1
    nameservers: [10.77.0.1]
    rackboot: 10.77.0.2
  schematic:
    id: 376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba
  installDisk:
    type: nvme
  cephDisks: ^sd[a-z]+$
machines:
  - name: cp1
    role: controlplane
    select:
      mac: ["52:54:00:e2:e0:01"]
    address: 10.77.0.11/24
  - name: w1
    role: worker
    select:
      mac: ["52:54:00:e2:e0:02"]
    address: 10.77.0.12/24
lab:
  machines: 1
  memoryMiB: 512
  nvmeSize: 2G
  sataSizes: [1G, 1G]
`

// scenario is one lab brought up by one test, with everything needed to
// inspect it and to tear it down.
type scenario struct {
	t     *testing.T
	name  string // the lab's name (namespace rb-<name>)
	dir   string // the test's own files: rack, state, its extra logs
	state string // --state
	rack  string // -f
	// extra are logs the test wrote itself (a restarted serve, a second
	// boot's console), kept with the lab's on failure.
	extra []string
	// env is added to the CLI's environment.
	env []string
}

// newScenario makes a uniquely named lab (nothing is created yet) and
// registers its teardown: on failure the logs are copied first, then
// `rackboot lab down` runs whatever happened, and the test fails if a
// namespace or a recorded process is left behind.
func newScenario(t *testing.T, tag string) *scenario {
	t.Helper()
	if prepared.err != nil {
		t.Fatalf("the e2e tests cannot run here:\n%v", prepared.err)
	}
	var b [2]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	s := &scenario{t: t, name: "e2e" + tag + "-" + hex.EncodeToString(b[:]), dir: t.TempDir()}
	s.state = filepath.Join(s.dir, "state")
	s.rack = filepath.Join(s.dir, "rack.yaml")
	if err := os.WriteFile(s.rack, []byte(testRack), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.teardown)
	t.Cleanup(s.keepOnFailure)
	return s
}

// lab opens the scenario's lab (reads its lab.json on demand).
func (s *scenario) lab() *lab.Lab {
	l, err := lab.New(s.state, s.name, lab.WithPollInterval(100*time.Millisecond))
	if err != nil {
		s.t.Fatal(err)
	}
	return l
}

// labState reads lab.json.
func (s *scenario) labState() *lab.State {
	s.t.Helper()
	st, err := s.lab().State()
	if err != nil {
		s.t.Fatal(err)
	}
	return st
}

// cli runs the rackboot binary with the scenario's rack and state, as a
// user would; its output is returned and appended to cli.log.
func (s *scenario) cli(ctx context.Context, args ...string) (string, error) {
	args = append([]string{"-f", s.rack, "--state", s.state}, args...)
	cmd := exec.CommandContext(ctx, prepared.bin, args...)
	// Run from the test's own folder, outside the source tree, as a user
	// would: nothing may be found relative to the working directory.
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), s.env...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	start := time.Now()
	err := cmd.Run()
	if f, ferr := os.OpenFile(filepath.Join(s.dir, "cli.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); ferr == nil {
		fmt.Fprintf(f, "$ rackboot %s   (%.1fs, %v)\n%s\n", strings.Join(args, " "), time.Since(start).Seconds(), err, out.Bytes())
		f.Close()
	}
	if err != nil {
		return out.String(), fmt.Errorf("rackboot %s: %w", strings.Join(args, " "), err)
	}
	return out.String(), nil
}

// labUp runs `rackboot lab up` for one machine with the stand-in image.
func (s *scenario) labUp(ctx context.Context, extra ...string) string {
	s.t.Helper()
	args := append([]string{"lab", "up", "--name", s.name, "--machines", "1", "--standin", prepared.standin}, extra...)
	return s.labUpArgs(ctx, args)
}

// labUpFound runs `rackboot lab up` with no --standin, from the test's
// folder (outside the source tree, the binary built elsewhere): the stand-in
// must be found in the user's cache, where `make standin` copies it
// (XDG_CACHE_HOME points at a cache holding only that).
func (s *scenario) labUpFound(ctx context.Context, extra ...string) string {
	s.t.Helper()
	cache := filepath.Join(s.dir, "cache")
	if err := os.MkdirAll(filepath.Join(cache, "rackboot"), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.Symlink(prepared.standin, filepath.Join(cache, "rackboot", "standin")); err != nil {
		s.t.Fatal(err)
	}
	s.env = append(s.env, "XDG_CACHE_HOME="+cache)
	args := append([]string{"lab", "up", "--name", s.name, "--machines", "1"}, extra...)
	out := s.labUpArgs(ctx, args)
	if !strings.Contains(out, "--standin "+filepath.Join(cache, "rackboot", "standin")) {
		s.t.Errorf("lab up did not take the stand-in from the user's cache:\n%s", out)
	}
	return out
}

func (s *scenario) labUpArgs(ctx context.Context, args []string) string {
	s.t.Helper()
	out, err := s.cli(ctx, args...)
	if err != nil {
		s.t.Fatalf("%v\n%s", err, out)
	}
	return out
}

// teardown takes the lab down with the CLI and checks nothing is left.
func (s *scenario) teardown() {
	t := s.t
	st, err := s.lab().State()
	if errors.Is(err, lab.ErrNotUp) {
		return
	}
	if err != nil {
		t.Errorf("teardown: %v (trying lab down anyway)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := s.cli(ctx, "lab", "down", "--name", s.name); err != nil {
		t.Errorf("teardown: %v\n%s", err, out)
	}
	if st == nil {
		return
	}
	for _, ns := range st.Namespaces {
		if _, err := os.Stat(filepath.Join("/run/netns", ns)); err == nil {
			t.Errorf("teardown: namespace %s left behind", ns)
		}
	}
	for _, p := range st.Processes {
		if stillOurs(p) {
			t.Errorf("teardown: %s (pid %d) still runs", p.Role, p.PID)
		}
	}
}

// keepOnFailure copies the lab's logs, lab.json (with every QEMU command
// line) and the test's own logs to $TMPDIR/rackboot-e2e-<test>, and prints
// where they are, the QEMU command lines and the end of each console. The
// secrets and the token key are never copied.
func (s *scenario) keepOnFailure() {
	t := s.t
	if !t.Failed() {
		return
	}
	dst := filepath.Join(os.TempDir(), "rackboot-e2e-"+strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()))
	if err := os.RemoveAll(dst); err != nil {
		t.Logf("keep logs: %v", err)
		return
	}
	keep := func(src, rel string) {
		b, err := os.ReadFile(src)
		if err != nil {
			return
		}
		p := filepath.Join(dst, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err == nil {
			_ = os.WriteFile(p, b, 0o600)
		}
	}
	labDir := s.lab().Dir()
	_ = filepath.WalkDir(labDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !d.Type().IsRegular() {
			return nil
		}
		name := d.Name()
		if strings.HasSuffix(name, ".log") || strings.HasSuffix(name, ".json") || strings.HasPrefix(name, "dnsmasq.") {
			rel, _ := filepath.Rel(labDir, p)
			keep(p, filepath.Join("lab", rel))
		}
		return nil
	})
	keep(filepath.Join(s.dir, "cli.log"), "cli.log")
	keep(s.rack, "rack.yaml")
	for _, p := range s.extra {
		keep(p, filepath.Base(p))
	}
	t.Logf("logs kept in %s", dst)
	st, err := s.lab().State()
	if err != nil {
		return
	}
	for _, vm := range st.VMs {
		t.Logf("vm %s: QEMU command line:\n%s", vm.Name, strings.Join(vm.Command, " "))
		b, _ := os.ReadFile(vm.SerialLog)
		t.Logf("vm %s: end of the serial console:\n%s", vm.Name, lastLines(lab.CleanSerial(b), 25))
	}
	for _, p := range st.Processes {
		if !strings.HasPrefix(p.Role, "vm:") {
			b, _ := os.ReadFile(p.Log)
			t.Logf("%s log (end):\n%s", p.Role, lastLines(string(b), 25))
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// api reads serve's status API through the lab namespace.
type api struct {
	base   string
	client *http.Client
}

func (s *scenario) api() api {
	s.t.Helper()
	st := s.labState()
	ip, _, ok := strings.Cut(st.ServerAddr, "/")
	if !ok {
		s.t.Fatalf("lab state has no server address: %q", st.ServerAddr)
	}
	return api{
		base:   "http://" + net.JoinHostPort(ip, strconv.Itoa(servePort)),
		client: &http.Client{Transport: &http.Transport{DialContext: s.lab().DialContext}, Timeout: 3 * time.Second},
	}
}

// planAPI is serve's status API at the planned server address, for a test
// that brings the lab up itself (before lab.json exists).
func (s *scenario) planAPI(plan *lab.Plan) api {
	return api{
		base:   "http://" + net.JoinHostPort(plan.ServerAddr.Addr().String(), strconv.Itoa(servePort)),
		client: &http.Client{Transport: &http.Transport{DialContext: s.lab().DialContext}, Timeout: 3 * time.Second},
	}
}

// serveSpec is rackboot serve as `rackboot lab up --dhcp full|proxy` runs
// it (labServeSpec in cmd/rackboot/lab_cmd.go; the plan's DHCP mode) with
// the scenario's rack file, for a test that calls lab.Up itself; extra are
// more serve flags.
func (s *scenario) serveSpec(plan *lab.Plan, a api, extra ...string) *lab.ProcessSpec {
	ip := plan.ServerAddr.Addr().String()
	args := []string{"serve", "-f", s.rack, "--state", s.lab().Path("serve"),
		"--interface", lab.Bridge, "--server-ip", ip, "--dhcp", string(plan.DHCP),
		"--http-port", strconv.Itoa(servePort), "--kernel-arg", "console=ttyS0"}
	if plan.DHCP == lab.DHCPFull {
		args = append(args, "--range", plan.DHCPRange[0].String()+"-"+plan.DHCPRange[1].String(), "--router", "none")
	}
	args = append(args, "--standin", prepared.standin)
	return &lab.ProcessSpec{
		Role: "serve", Path: prepared.bin, WorkDir: "serve",
		Args: append(args, extra...),
		Ready: func(ctx context.Context) error {
			for {
				_, err := a.machines(ctx)
				if err == nil {
					return nil
				}
				select {
				case <-ctx.Done():
					return errors.Join(err, ctx.Err())
				case <-time.After(100 * time.Millisecond):
				}
			}
		},
	}
}

func (a api) machines(ctx context.Context) ([]inventory.Machine, error) {
	r, err := status.Fetch(ctx, a.client, a.base)
	if err != nil {
		return nil, err
	}
	return r.Machines, nil
}

// machine returns the machine with that name (known) or key (a MAC).
// seenMachines drops the rack's machines that never asked for anything
// (serve lists every machine of the rack file by name from the start).
func seenMachines(ms []inventory.Machine) []inventory.Machine {
	var out []inventory.Machine
	for _, m := range ms {
		if m.Stage != "" {
			out = append(out, m)
		}
	}
	return out
}

func machine(ms []inventory.Machine, key string) (inventory.Machine, bool) {
	for _, m := range ms {
		if m.Name == key || m.Key == key {
			return m, true
		}
	}
	return inventory.Machine{}, false
}

// waitMachine polls the status API every 100ms until done says the
// machine is where the test wants it. done may return an error to stop at
// once (an install failure).
func (a api) waitMachine(ctx context.Context, key string, done func(inventory.Machine) (bool, error)) (inventory.Machine, error) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	last, lastErr := "not seen yet", error(nil)
	for {
		ms, err := a.machines(ctx)
		if err != nil {
			lastErr = err
		} else if m, ok := machine(ms, key); ok {
			last = m.Stage + " " + m.Detail
			ok, err := done(m)
			if err != nil {
				return m, fmt.Errorf("machine %s: %w", key, err)
			}
			if ok {
				return m, nil
			}
		}
		select {
		case <-ctx.Done():
			return inventory.Machine{}, fmt.Errorf("machine %s: last stage %q (last API error: %v): %w", key, last, lastErr, ctx.Err())
		case <-t.C:
		}
	}
}

// installed is a waitMachine condition: installed, or fail at once on an
// install or config failure.
func installed(m inventory.Machine) (bool, error) {
	switch m.Stage {
	case inventory.StageInstallFailed, inventory.StageConfigError:
		return false, fmt.Errorf("%s: %s", m.Stage, m.Detail)
	}
	return m.Installed && m.Stage == inventory.StageInstalled, nil
}

// stages is the machine's timeline as stage names.
func stages(m inventory.Machine) []string {
	out := make([]string, len(m.Timeline))
	for i, e := range m.Timeline {
		out[i] = e.Stage
	}
	return out
}

// entry is the first timeline entry with that stage.
func entry(m inventory.Machine, stage string) (inventory.Entry, bool) {
	for _, e := range m.Timeline {
		if e.Stage == stage {
			return e, true
		}
	}
	return inventory.Entry{}, false
}

// inOrder reports whether want appears in have in this order (other
// stages may come between).
func inOrder(have, want []string) bool {
	i := 0
	for _, s := range have {
		if i < len(want) && s == want[i] {
			i++
		}
	}
	return i == len(want)
}

// waitStopped waits until the VM's QEMU has exited (the stand-in powers
// off, and the lab runs QEMU with -no-reboot).
func (s *scenario) waitStopped(ctx context.Context, vm string) error {
	l := s.lab()
	for {
		st, err := l.Status()
		if err != nil {
			return err
		}
		for _, v := range st.VMs {
			if v.Name == vm && !v.Running {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm %s: QEMU still runs after the install: %w", vm, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// stoppedReport waits (30 s at most) for the VM to power off after its
// install, then reads and checks the stand-in's report line from its console.
func (s *scenario) stoppedReport(ctx context.Context, t *testing.T, vm *lab.VMState, name string) report.Report {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := s.waitStopped(wctx, name); err != nil {
		t.Fatal(err)
	}
	rep, err := standinReport(vm.SerialLog)
	if err != nil {
		t.Fatalf("%s's console: %v", name, err)
	}
	checkReport(t, rep, vm, name)
	return rep
}

// standinReport is the stand-in's report line on a VM's console.
func standinReport(serialLog string) (report.Report, error) {
	b, err := os.ReadFile(serialLog)
	if err != nil {
		return report.Report{}, err
	}
	return report.Find([]byte(lab.CleanSerial(b)))
}

// process is the recorded process with that role.
func process(st *lab.State, role string) (lab.Process, bool) {
	for _, p := range st.Processes {
		if p.Role == role {
			return p, true
		}
	}
	return lab.Process{}, false
}

// startWall is when a recorded process started: the boot time plus its
// start time in clock ticks (USER_HZ is 100 on Linux).
func startWall(p lab.Process) (time.Time, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			sec, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, fmt.Errorf("/proc/stat btime %q: %w", v, err)
			}
			return time.Unix(sec, 0).Add(time.Duration(p.StartTime) * 10 * time.Millisecond), nil
		}
	}
	return time.Time{}, errors.New("/proc/stat has no btime")
}

// procStartTicks reads field 22 of /proc/PID/stat.
func procStartTicks(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("no command name in /proc/PID/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// openRecorded returns a pidfd for a recorded process only while it is
// still that process (same start time), else -1.
func openRecorded(p lab.Process) int {
	fd, err := unix.PidfdOpen(p.PID, 0)
	if err != nil {
		return -1
	}
	if st, err := procStartTicks(p.PID); err != nil || st != p.StartTime {
		unix.Close(fd)
		return -1
	}
	return fd
}

func stillOurs(p lab.Process) bool {
	fd := openRecorded(p)
	if fd < 0 {
		return false
	}
	defer unix.Close(fd)
	return !pidfdExited(fd, 0)
}

func pidfdExited(fd int, timeout time.Duration) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, int(timeout/time.Millisecond))
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0
	}
}

// terminate sends SIGTERM to a process the lab recorded (only while it is
// that process) and waits until it has exited.
func terminate(p lab.Process, wait time.Duration) error {
	fd := openRecorded(p)
	if fd < 0 {
		return fmt.Errorf("%s (pid %d) is not running", p.Role, p.PID)
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0); err != nil {
		return fmt.Errorf("SIGTERM %s (pid %d): %w", p.Role, p.PID, err)
	}
	if !pidfdExited(fd, wait) {
		return fmt.Errorf("%s (pid %d) still runs %s after SIGTERM", p.Role, p.PID, wait)
	}
	return nil
}

// child is a process the test started itself inside the lab namespace.
type child struct {
	cmd  *exec.Cmd
	done chan error
	log  string
}

// startInLab runs exe with args inside the lab's namespace (ip netns exec
// execs it, so the PID is the program's), in dir, output to logPath. It is
// stopped when the test ends (SIGTERM, then SIGKILL), and killed by the
// kernel if the test binary dies.
func (s *scenario) startInLab(dir, logPath, exe string, args ...string) *child {
	s.t.Helper()
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", lab.Namespace(s.name), exe}, args...)...)
	cmd.Dir = dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start %s in %s: %v", exe, lab.Namespace(s.name), err)
	}
	c := &child{cmd: cmd, done: make(chan error, 1), log: logPath}
	go func() { c.done <- cmd.Wait() }()
	s.extra = append(s.extra, logPath)
	s.t.Cleanup(func() {
		if err := c.stop(10 * time.Second); err != nil {
			s.t.Errorf("cleanup: %v", err)
		}
	})
	return c
}

// stop ends the child: SIGTERM, then SIGKILL after grace. Stopping a
// child that already exited is not an error.
func (c *child) stop(grace time.Duration) error {
	select {
	case <-c.done:
		c.done <- nil // keep it readable for a second stop
		return nil
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		c.done <- nil
		return nil
	case <-time.After(grace):
	}
	_ = c.cmd.Process.Kill()
	select {
	case <-c.done:
		c.done <- nil
		return fmt.Errorf("%s (pid %d) needed SIGKILL", c.cmd.Path, c.cmd.Process.Pid)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("%s (pid %d) survives SIGKILL", c.cmd.Path, c.cmd.Process.Pid)
	}
}

// waitFile polls a file until re matches one of its (cleaned) complete
// lines.
func waitFile(ctx context.Context, path string, re *regexp.Regexp) (string, error) {
	for {
		b, _ := os.ReadFile(path)
		// Only whole lines: QEMU may be writing the last one right now.
		whole := b[:bytes.LastIndexByte(b, '\n')+1]
		for _, line := range strings.Split(lab.CleanSerial(whole), "\n") {
			if re.MatchString(line) {
				return line, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("wait for %q in %s (last line %q): %w", re, path, lab.LastLine(b), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// countLines counts the lines of a log file holding every one of subs.
func countLines(path string, subs ...string) int {
	b, _ := os.ReadFile(path)
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		all := true
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all && line != "" {
			n++
		}
	}
	return n
}

// sfdiskTable is the part of `sfdisk --json` the disk check reads.
type sfdiskTable struct {
	PartitionTable struct {
		Label      string `json:"label"`
		SectorSize int64  `json:"sectorsize"`
		Partitions []struct {
			Start int64  `json:"start"`
			Size  int64  `json:"size"`
			Name  string `json:"name"`
		} `json:"partitions"`
	} `json:"partitiontable"`
}

// checkInstallDisks fails the test with every problem installDiskProblems
// finds.
func checkInstallDisks(t *testing.T, vm *lab.VMState) {
	t.Helper()
	for _, p := range installDiskProblems(vm, t.TempDir()) {
		t.Error(p)
	}
}

// installDiskProblems reads a stopped VM's disk images back on the host:
// the NVMe (the first disk) must hold a GPT with one 1 MiB partition named
// META (read by util-linux sfdisk from a raw copy made in tmp), and no SATA
// disk may ever have been written: qemu-img map shows no allocated data
// and the first MiB reads as zeros (the lab creates them empty).
func installDiskProblems(vm *lab.VMState, tmp string) []string {
	var probs []string
	bad := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }
	if len(vm.Disks) < 2 || !strings.Contains(filepath.Base(vm.Disks[0]), "nvme") {
		bad("vm %s has disks %v, want the NVMe first and SATA disks", vm.Name, vm.Disks)
		return probs
	}
	nvme, satas := vm.Disks[0], vm.Disks[1:]
	raw := filepath.Join(tmp, vm.Name+"-nvme.raw")
	defer os.Remove(raw)
	if out, err := exec.Command("qemu-img", "convert", "-f", lab.DiskFormat, "-O", "raw", nvme, raw).CombinedOutput(); err != nil {
		bad("qemu-img convert %s: %v\n%s", nvme, err, out)
		return probs
	}
	out, err := exec.Command("sfdisk", "--json", raw).Output()
	var pt sfdiskTable
	switch {
	case err != nil:
		bad("NVMe of %s: sfdisk --json: %v (no partition table: nothing was installed)", vm.Name, err)
	case json.Unmarshal(out, &pt) != nil:
		bad("NVMe of %s: sfdisk --json printed %s", vm.Name, out)
	default:
		if pt.PartitionTable.Label != "gpt" {
			bad("NVMe of %s: partition table %q, want gpt", vm.Name, pt.PartitionTable.Label)
		}
		meta := 0
		for _, p := range pt.PartitionTable.Partitions {
			if p.Name != "META" {
				continue
			}
			meta++
			if got := p.Size * pt.PartitionTable.SectorSize; got != 1<<20 {
				bad("NVMe of %s: META partition is %d bytes, want 1 MiB", vm.Name, got)
			}
		}
		if meta != 1 {
			bad("NVMe of %s: %d partitions named META, want 1: %s", vm.Name, meta, out)
		}
	}
	for _, sata := range satas {
		name := filepath.Base(sata)
		out, err := exec.Command("qemu-img", "map", "--output=json", "-f", lab.DiskFormat, sata).Output()
		if err != nil {
			bad("qemu-img map %s: %v", sata, err)
			continue
		}
		var extents []struct {
			Start  int64 `json:"start"`
			Length int64 `json:"length"`
			Data   bool  `json:"data"`
		}
		if err := json.Unmarshal(out, &extents); err != nil || len(extents) == 0 {
			bad("qemu-img map %s: %v %s", sata, err, out)
			continue
		}
		for _, e := range extents {
			if e.Data {
				bad("SATA disk %s of %s was written: %d bytes at %d", name, vm.Name, e.Length, e.Start)
			}
		}
		first := filepath.Join(tmp, vm.Name+"-"+name+".first")
		out, err = exec.Command("qemu-img", "dd", "-f", lab.DiskFormat, "-O", "raw", "bs=1M", "count=1", "if="+sata, "of="+first).CombinedOutput()
		if err != nil {
			bad("qemu-img dd %s: %v\n%s", sata, err, out)
			continue
		}
		b, err := os.ReadFile(first)
		os.Remove(first)
		switch {
		case err != nil:
			bad("first MiB of %s: %v", sata, err)
		case len(b) != 1<<20:
			bad("first MiB of %s: read %d bytes", sata, len(b))
		default:
			if i := slices.IndexFunc(b, func(c byte) bool { return c != 0 }); i >= 0 {
				bad("SATA disk %s of %s: byte %d of the first MiB is %#x, want the zeros the lab created", name, vm.Name, i, b[i])
			}
		}
	}
	return probs
}

// checkReport fails the test with every problem reportProblems finds.
func checkReport(t *testing.T, rep report.Report, vm *lab.VMState, name string) {
	t.Helper()
	for _, p := range reportProblems(rep, vm, name) {
		t.Error(p)
	}
}

// reportProblems checks the stand-in's report line: the machine it names,
// its config from HTTP, the install on /dev/nvme0n1 with META there, and
// every SATA disk seen as sd* and left without META.
func reportProblems(rep report.Report, vm *lab.VMState, name string) []string {
	var probs []string
	bad := func(format string, args ...any) { probs = append(probs, fmt.Sprintf(format, args...)) }
	if rep.Result != report.ResultInstalled || rep.Error != "" {
		bad("report: result %q error %q, want installed", rep.Result, rep.Error)
	}
	if rep.Name != name || !strings.EqualFold(rep.MAC, vm.MAC) || rep.UUID != vm.UUID || rep.Serial != vm.Serial {
		bad("report names %q mac %s uuid %s serial %q, want %s %s %s %q", rep.Name, rep.MAC, rep.UUID, rep.Serial, name, vm.MAC, vm.UUID, vm.Serial)
	}
	if rep.ConfigSource != "http" || len(rep.ConfigSHA256) != 64 {
		bad("report: config from %q (sha256 %q), want http", rep.ConfigSource, rep.ConfigSHA256)
	}
	if rep.InstallDisk != "/dev/nvme0n1" || !rep.SDUntouched {
		bad("report: install disk %q, sd untouched %v; want /dev/nvme0n1, true", rep.InstallDisk, rep.SDUntouched)
	}
	sd, nvme := 0, 0
	for _, d := range rep.Disks {
		switch {
		case strings.HasPrefix(d.Dev, "/dev/sd"):
			sd++
			if d.HasMeta || d.Transport != "sata" {
				bad("report: %s transport %q has_meta %v, want sata without META", d.Dev, d.Transport, d.HasMeta)
			}
		case d.Dev == "/dev/nvme0n1":
			nvme++
			if !d.HasMeta || d.Transport != "nvme" {
				bad("report: %s transport %q has_meta %v, want nvme with META", d.Dev, d.Transport, d.HasMeta)
			}
		}
	}
	if nvme != 1 || sd != len(vm.Disks)-1 {
		bad("report lists %d NVMe and %d sd* disks, the VM has 1 and %d: %+v", nvme, sd, len(vm.Disks)-1, rep.Disks)
	}
	return append(probs, installerProblems(rep)...)
}

// readFile reads a file or fails the test.
func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waitDiskBoot waits until name, whose timeline was m0's before its QEMU
// started again, reports running after it, and checks that this boot came
// from its disk: rebooted then running, and no network boot stage (no
// DHCP, iPXE, kernel, config, local-boot answer or install). It returns
// the machine.
func waitDiskBoot(ctx context.Context, t *testing.T, a api, name string, m0 inventory.Machine) inventory.Machine {
	t.Helper()
	m, err := a.waitMachine(ctx, name, func(m inventory.Machine) (bool, error) {
		return len(m.Timeline) > len(m0.Timeline) && m.Stage == inventory.StageRunning, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	newer := stages(m)[len(m0.Timeline):]
	if !inOrder(newer, []string{inventory.StageRebooted, inventory.StageRunning}) {
		t.Errorf("%s's new timeline %v, want rebooted, running", name, newer)
	}
	for _, st := range newer {
		switch st {
		case pxe.StageDHCP, pxe.StageIPXE, pxe.StageScript, pxe.StageKernel, pxe.StageInitrd, pxe.StageConfig, pxe.StageLocalBoot, inventory.StageInstalling:
			t.Errorf("%s's disk boot reached stage %s (new timeline %v)", name, st, newer)
		}
	}
	return m
}
