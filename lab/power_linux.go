//go:build linux

package lab

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// The power agent.
//
// One process per lab that has virtual BMCs, in the lab namespace. It owns
// the QEMU processes of the BMC-managed VMs (its children: born in the lab
// namespace, killed by the kernel if the agent dies: Pdeathsig), starts
// each with the boot order of that power-on, reads QEMU's QMP events to
// tell a guest reboot (QEMU runs with -no-reboot: the process ends with a
// SHUTDOWN event, reason guest-reset, and the agent starts it again) from a
// power-off, and records every change in <labdir>/power.json. The BMC
// emulators reach it over HTTP on 127.0.0.1:PowerAgentPort inside the
// namespace: ipmi_sim through its chassis_control program (ChassisCommand),
// sushy-tools through its external notifier.

func init() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case PowerCommand:
			os.Exit(powerMain(os.Args[2:], os.Stderr))
		case ChassisCommand:
			os.Exit(chassisMain(os.Args[2:], os.Stdout, os.Stderr))
		}
	}
}

func powerMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(PowerCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("lab-dir", "", "the lab's state directory (its lab.json)")
	listen := fs.String("listen", fmt.Sprintf("127.0.0.1:%d", PowerAgentPort), "HTTP address")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	a, err := newPowerAgent(*dir, log)
	if err != nil {
		log.Error("power agent", "err", err)
		return 1
	}
	if err := a.serve(ctx, *listen); err != nil {
		log.Error("power agent", "err", err)
		return 1
	}
	return 0
}

// chassisMain forwards ipmi_sim's chassis_control arguments to the agent.
func chassisMain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(ChassisCommand, flag.ContinueOnError)
	fs.SetOutput(stderr)
	agent := fs.String("agent", fmt.Sprintf("http://127.0.0.1:%d", PowerAgentPort), "the power agent's URL")
	vm := fs.String("vm", "", "the VM")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	body, _ := json.Marshal(fs.Args())
	hc := &http.Client{Timeout: 30 * time.Second}
	resp, err := hc.Post(strings.TrimRight(*agent, "/")+"/ipmi/"+*vm, "application/json", bytes.NewReader(body))
	if err != nil {
		fmt.Fprintf(stderr, "chassis %s: %v\n", *vm, err)
		return 1
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "chassis %s %s: %s", *vm, strings.Join(fs.Args(), " "), out)
		return 1
	}
	_, _ = stdout.Write(out)
	return 0
}

type powerAgent struct {
	dir string
	log *slog.Logger
	mu  sync.Mutex // guards every agentVM's fields below the line and the file
	vms map[string]*agentVM
	ord []string
	// fork runs QEMU's start on one OS thread that lives as long as the
	// agent: Pdeathsig fires when the thread that forked the child exits,
	// not the process, so no QEMU may be forked from a thread Go could end.
	fork chan func()

	// qmu guards stopping: once it is set, the VMs' job channels are
	// closed and nothing may be queued (enqueue refuses instead).
	qmu      sync.RWMutex
	stopping bool
}

type agentVM struct {
	name    string
	proto   string
	exe     string   // QEMU, resolved
	base    []string // recorded arguments (network first), without the program
	qemuLog string
	qmpPath string
	jobs    chan powerJob // one worker per VM: operations in order
	bmc     BMCState      // the VM's BMC as lab.json records it
	bmcDir  string
	uuid    string

	// guarded by powerAgent.mu
	rec         VMPower
	cmd         *exec.Cmd
	done        chan struct{} // closed when the running QEMU has exited
	mon         *qmp.SocketMonitor
	hostStop    bool   // the host asked this QEMU to stop
	reason      string // the last SHUTDOWN event's reason
	wantOn      bool
	ipmiBoot    string // IPMI boot device: pxe (one-time, armed), default, cdrom, bios
	sushyBoot   string // Redfish boot_device as sushy last said
	sushyTarget string // the last sushy notification's power target
}

type powerJob struct {
	act  PowerAction
	done chan error // nil: nobody waits
}

// actGuestReboot starts a VM again after a guest reset (only while the
// host still wants it on and it is off).
const actGuestReboot PowerAction = "guest-reboot"

func newPowerAgent(dir string, log *slog.Logger) (*powerAgent, error) {
	if dir == "" {
		return nil, errors.New("no --lab-dir")
	}
	b, err := os.ReadFile(filepath.Join(dir, "lab.json"))
	if err != nil {
		return nil, err
	}
	st, err := ParseState(b)
	if err != nil {
		return nil, err
	}
	a := &powerAgent{dir: dir, log: log, vms: map[string]*agentVM{}, fork: make(chan func())}
	go func() {
		runtime.LockOSThread() // never unlocked: this thread stays until the agent exits
		for f := range a.fork {
			f()
		}
	}()
	for _, vs := range st.VMs {
		if vs.BMC == nil || len(vs.Command) < 2 {
			continue
		}
		exe, err := exec.LookPath(vs.Command[0])
		if err != nil {
			return nil, fmt.Errorf("vm %s: %w", vs.Name, err)
		}
		vm := &agentVM{
			name: vs.Name, proto: vs.BMC.Protocol, exe: exe,
			base:     vs.Command[1:],
			qemuLog:  vs.QEMULog,
			qmpPath:  qmpPath(vs),
			jobs:     make(chan powerJob, 64),
			bmc:      *vs.BMC,
			bmcDir:   filepath.Join(filepath.Dir(vs.SerialLog), "bmc"),
			uuid:     vs.UUID,
			ipmiBoot: "default", sushyBoot: "Hdd", sushyTarget: "Off",
		}
		if len(vm.qmpPath) >= 108 {
			return nil, fmt.Errorf("vm %s: the QMP socket path %s is longer than a unix socket allows (107 bytes): use a shorter state directory", vs.Name, vm.qmpPath)
		}
		vm.rec = VMPower{Name: vs.Name, Protocol: vs.BMC.Protocol}
		a.refresh(vm)
		a.vms[vs.Name] = vm
		a.ord = append(a.ord, vs.Name)
	}
	return a, nil
}

// qmpPath is a BMC VM's QMP socket: <vmdir>/qmp.sock.
func qmpPath(vs VMState) string { return filepath.Join(filepath.Dir(vs.SerialLog), "qmp.sock") }

// refresh recomputes the derived fields of vm.rec. Called with a.mu held.
func (a *powerAgent) refresh(vm *agentVM) {
	vm.rec.NextBoot = BootDisk
	if vm.proto == BMCIPMI {
		vm.rec.BootDevice = vm.ipmiBoot
		if vm.ipmiBoot == "pxe" {
			vm.rec.NextBoot = BootNetwork
		}
	} else {
		vm.rec.BootDevice = vm.sushyBoot
		if strings.EqualFold(vm.sushyBoot, "Pxe") {
			vm.rec.NextBoot = BootNetwork
		}
	}
}

// save writes power.json. Called with a.mu held.
func (a *powerAgent) save() {
	f := &powerFile{AgentPID: os.Getpid()}
	for _, n := range a.ord {
		f.VMs = append(f.VMs, a.vms[n].rec)
	}
	if err := writePowerFile(a.dir, f); err != nil {
		a.log.Error("save power state", "err", err)
	}
}

func (a *powerAgent) serve(ctx context.Context, listen string) error {
	a.mu.Lock()
	a.save()
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, n := range a.ord {
		vm := a.vms[n]
		wg.Add(1)
		go func() { defer wg.Done(); a.worker(vm) }()
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /ipmi/{vm}", a.handleIPMI)
	mux.HandleFunc("PUT /sushy/{vm}", a.handleSushy)
	mux.HandleFunc("POST /sushy/{vm}", a.handleSushy)
	mux.HandleFunc("GET /vms/{vm}", a.handleGet)
	mux.HandleFunc("GET /vms", a.handleList)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	a.log.Info(powerReadyMsg, "listen", ln.Addr().String(), "vms", strings.Join(a.ord, ","))
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	// Stop every VM before leaving, then close the workers' queues.
	for _, n := range a.ord {
		if err := a.run(a.vms[n], ActOff); err != nil {
			a.log.Warn("stop at exit", "vm", n, "err", err)
		}
	}
	a.qmu.Lock()
	a.stopping = true
	for _, n := range a.ord {
		close(a.vms[n].jobs)
	}
	a.qmu.Unlock()
	wg.Wait()
	a.log.Info("power agent stopped")
	return nil
}

func (a *powerAgent) worker(vm *agentVM) {
	for j := range vm.jobs {
		err := a.do(vm, j.act)
		if err != nil {
			a.log.Warn("power action failed", "vm", vm.name, "action", j.act, "err", err)
		}
		if j.done != nil {
			j.done <- err
		}
	}
}

// errAgentStopping is run's answer once the agent is shutting down.
var errAgentStopping = errors.New("the lab's power agent is stopping")

// enqueue queues a job on the VM's worker; false once the agent is
// stopping. The read lock is held while sending, so the queues cannot
// close under a sender (the workers drain them without taking it).
func (a *powerAgent) enqueue(vm *agentVM, j powerJob) bool {
	a.qmu.RLock()
	defer a.qmu.RUnlock()
	if a.stopping {
		return false
	}
	vm.jobs <- j
	return true
}

// run queues an action on the VM's worker and waits for it.
func (a *powerAgent) run(vm *agentVM, act PowerAction) error {
	done := make(chan error, 1)
	if !a.enqueue(vm, powerJob{act: act, done: done}) {
		return errAgentStopping
	}
	return <-done
}

// do performs one action (on the VM's worker, or at shutdown).
func (a *powerAgent) do(vm *agentVM, act PowerAction) error {
	a.log.Info("power action", "vm", vm.name, "action", act)
	switch act {
	case ActOn:
		return a.start(vm)
	case actGuestReboot:
		a.mu.Lock()
		want := vm.wantOn && vm.cmd == nil
		a.mu.Unlock()
		if !want {
			return nil
		}
		return a.start(vm)
	case ActOff:
		return a.stop(vm)
	case ActSoftOff:
		return a.softOff(vm)
	case ActReset:
		if err := a.stop(vm); err != nil {
			return err
		}
		return a.start(vm)
	}
	return nil
}

// start starts QEMU with the next boot (consuming a one-time override).
func (a *powerAgent) start(vm *agentVM) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	vm.wantOn = true
	if vm.cmd != nil {
		return nil
	}
	first := vm.rec.NextBoot
	if vm.ipmiBoot == "pxe" {
		vm.ipmiBoot = "default" // one-time: consumed by this power-on
	}
	args := append(SetBootOrder(vm.base, first), "-qmp", "unix:"+qopt(vm.qmpPath)+",server=on,wait=off")
	_ = os.Remove(vm.qmpPath)
	logf, err := os.OpenFile(vm.qemuLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- power on (%s first) %s\n", first, time.Now().UTC().Format(time.RFC3339))
	cmd := exec.Command(vm.exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	a.fork <- func() { started <- cmd.Start() }
	if err := <-started; err != nil {
		return fmt.Errorf("start QEMU: %w", err)
	}
	stt, err := procStartTime(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return fmt.Errorf("start QEMU: read its start time: %w", err)
	}
	vm.cmd, vm.done, vm.hostStop, vm.reason, vm.mon = cmd, make(chan struct{}), false, "", nil
	vm.rec.On, vm.rec.PID, vm.rec.StartTime, vm.rec.Exe, vm.rec.Args = true, cmd.Process.Pid, stt, vm.exe, args
	vm.rec.Boots++
	a.refresh(vm)
	a.save()
	a.log.Info("vm on", "vm", vm.name, "pid", cmd.Process.Pid, "first", first, "boots", vm.rec.Boots)
	go a.watch(vm, cmd, vm.done)
	return nil
}

// watch follows one QEMU process: its QMP events, then its exit.
func (a *powerAgent) watch(vm *agentVM, cmd *exec.Cmd, done chan struct{}) {
	exited := make(chan struct{})
	var werr error
	go func() { werr = cmd.Wait(); close(exited) }()
	mon := connectQMP(vm.qmpPath, exited)
	if mon == nil {
		a.log.Warn("no QMP connection: a guest reboot will leave the VM off", "vm", vm.name)
	}
	a.readShutdown(vm, mon, exited)
	a.exitDone(vm, werr, done)
}

// connectQMP connects to a starting QEMU's QMP socket (10 s at most), or
// gives up when QEMU exits first: nil.
func connectQMP(path string, exited <-chan struct{}) *qmp.SocketMonitor {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		m, err := qmp.NewSocketMonitor("unix", path, time.Second)
		if err == nil {
			if err = m.Connect(); err == nil {
				return m
			}
		}
		select {
		case <-exited:
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// readShutdown records the reason of QEMU's SHUTDOWN events in vm until
// QEMU has exited and its last events are read (2 s at most), then lets
// the monitor go.
func (a *powerAgent) readShutdown(vm *agentVM, mon *qmp.SocketMonitor, exited <-chan struct{}) {
	if mon == nil {
		<-exited
		return
	}
	events, _ := mon.Events(context.Background())
	a.mu.Lock()
	vm.mon = mon
	a.mu.Unlock()
	handle := func(ev qmp.Event) {
		if ev.Event != "SHUTDOWN" {
			return
		}
		r, _ := ev.Data["reason"].(string)
		a.mu.Lock()
		vm.reason = r
		a.mu.Unlock()
		a.log.Info("QEMU shutdown event", "vm", vm.name, "reason", r)
	}
	var last <-chan time.Time // armed once QEMU has exited
	for events != nil {
		select {
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			handle(ev)
		case <-exited:
			exited, last = nil, time.After(2*time.Second)
		case <-last:
			// The SHUTDOWN event comes before QEMU exits; whatever is
			// still queued is read and dropped.
			go func(ev <-chan qmp.Event) {
				for range ev {
				}
			}(events)
			events = nil
		}
	}
	if exited != nil {
		<-exited
	}
	go func() { _ = mon.Disconnect() }()
}

// exitDone records that vm's QEMU is gone, and restarts it after a guest
// reboot (QEMU runs with -no-reboot) or tells sushy the machine is off
// when it went off by itself.
func (a *powerAgent) exitDone(vm *agentVM, werr error, done chan struct{}) {
	a.mu.Lock()
	reason := vm.reason
	if reason == "" {
		reason = "exited"
		if werr != nil {
			reason = "exited (" + werr.Error() + ")"
		}
	}
	restart := RestartAfterExit(vm.hostStop, vm.reason) && vm.wantOn
	hostStop := vm.hostStop
	vm.cmd, vm.mon = nil, nil
	vm.rec.On, vm.rec.PID, vm.rec.StartTime, vm.rec.LastExit = false, 0, 0, reason
	a.refresh(vm)
	a.save()
	close(done)
	a.mu.Unlock()
	_ = os.Remove(vm.qmpPath)
	a.log.Info("vm off", "vm", vm.name, "reason", reason, "restart", restart)
	if vm.proto == BMCRedfish && !hostStop && !restart {
		go a.tellSushyOff(vm)
	}
	if restart {
		go a.enqueue(vm, powerJob{act: actGuestReboot})
	}
}

// stop is a hard power-off: QMP quit, else SIGTERM; SIGKILL after 5s.
func (a *powerAgent) stop(vm *agentVM) error {
	a.mu.Lock()
	vm.wantOn = false
	cmd, done, mon := vm.cmd, vm.done, vm.mon
	if cmd == nil {
		a.mu.Unlock()
		return nil
	}
	vm.hostStop = true
	a.mu.Unlock()
	asked := false
	if mon != nil {
		res := make(chan error, 1)
		go func() { _, err := mon.Run([]byte(`{"execute":"quit"}`)); res <- err }()
		select {
		case <-res:
			asked = true // QEMU may close the socket before it answers
		case <-done:
			return nil
		case <-time.After(2 * time.Second):
		}
	}
	if !asked {
		_ = cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-done:
		return nil
	case <-time.After(5 * time.Second):
	}
	_ = cmd.Process.Kill()
	select {
	case <-done:
		return nil
	case <-time.After(5 * time.Second):
		return fmt.Errorf("QEMU (pid %d) still runs 5s after SIGKILL", cmd.Process.Pid)
	}
}

// softOff presses the ACPI power button (QMP system_powerdown); the VM goes
// off only if the guest acts on it.
func (a *powerAgent) softOff(vm *agentVM) error {
	a.mu.Lock()
	mon, running := vm.mon, vm.cmd != nil
	a.mu.Unlock()
	if !running {
		return nil
	}
	if mon == nil {
		return errors.New("no QMP connection to press the power button")
	}
	_, err := mon.Run([]byte(`{"execute":"system_powerdown"}`))
	return err
}

func (a *powerAgent) lookup(w http.ResponseWriter, r *http.Request) *agentVM {
	vm := a.vms[r.PathValue("vm")]
	if vm == nil {
		http.Error(w, fmt.Sprintf("no BMC-managed VM %q in this lab\n", r.PathValue("vm")), http.StatusNotFound)
	}
	return vm
}

// handleIPMI answers ipmi_sim's chassis_control program.
func (a *powerAgent) handleIPMI(w http.ResponseWriter, r *http.Request) {
	vm := a.lookup(w, r)
	if vm == nil {
		return
	}
	var args []string
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&args); err != nil {
		http.Error(w, "want a JSON list of chassis_control arguments\n", http.StatusBadRequest)
		return
	}
	req, err := ParseChassisArgs(args)
	if err != nil {
		http.Error(w, err.Error()+"\n", http.StatusBadRequest)
		return
	}
	var out strings.Builder
	for _, p := range req.Get {
		a.mu.Lock()
		switch p {
		case "power":
			v := "0"
			if vm.cmd != nil {
				v = "1"
			}
			fmt.Fprintf(&out, "power:%s\n", v)
		case "boot":
			fmt.Fprintf(&out, "boot:%s\n", vm.ipmiBoot)
		}
		a.mu.Unlock()
	}
	for _, kv := range req.Set {
		var act PowerAction
		switch kv[0] {
		case "power":
			act = map[string]PowerAction{"1": ActOn, "0": ActOff}[kv[1]]
		case "shutdown":
			if kv[1] == "1" {
				act = ActSoftOff
			}
		case "reset":
			a.mu.Lock()
			on := vm.cmd != nil
			a.mu.Unlock()
			if kv[1] == "1" && on {
				act = ActReset
			}
		case "boot":
			a.mu.Lock()
			vm.ipmiBoot = kv[1]
			if kv[1] == "disk" {
				vm.ipmiBoot = "default"
			}
			a.refresh(vm)
			a.save()
			a.mu.Unlock()
			a.log.Info("ipmi boot device", "vm", vm.name, "boot", kv[1])
		}
		if act == ActNone {
			continue
		}
		if err := a.run(vm, act); err != nil {
			http.Error(w, err.Error()+"\n", http.StatusInternalServerError)
			return
		}
	}
	_, _ = io.WriteString(w, out.String())
}

// handleSushy takes sushy-tools' external notification: the whole fake
// system. The action runs on the VM's worker; sushy does not wait for it.
func (a *powerAgent) handleSushy(w http.ResponseWriter, r *http.Request) {
	vm := a.lookup(w, r)
	if vm == nil {
		return
	}
	var sys map[string]any
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&sys); err != nil {
		http.Error(w, "want sushy's system as JSON\n", http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	d, err := DecideSushy(sys, vm.sushyTarget)
	if err == nil {
		vm.sushyTarget = d.Target
		if bd, ok := sys["boot_device"].(string); ok {
			vm.sushyBoot = bd
		}
		a.refresh(vm)
		a.save()
	}
	a.mu.Unlock()
	if err != nil {
		http.Error(w, err.Error()+"\n", http.StatusBadRequest)
		return
	}
	a.log.Info("sushy notification", "vm", vm.name, "target", d.Target, "action", d.Action, "network_boot", d.NetworkBoot)
	if d.Action != ActNone && !a.enqueue(vm, powerJob{act: d.Action}) {
		http.Error(w, errAgentStopping.Error()+"\n", http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *powerAgent) handleGet(w http.ResponseWriter, r *http.Request) {
	vm := a.lookup(w, r)
	if vm == nil {
		return
	}
	a.mu.Lock()
	rec := vm.rec
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(rec)
}

func (a *powerAgent) handleList(w http.ResponseWriter, _ *http.Request) {
	a.mu.Lock()
	var out []VMPower
	for _, n := range a.ord {
		out = append(out, a.vms[n].rec)
	}
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// tellSushyOff tells sushy-tools that a VM went off by itself (the guest
// powered off, or QEMU ended): sushy's fake driver knows only what it is
// told, and would otherwise go on saying On and ignore the next Reset On.
// The agent sends the ForceOff a Redfish client would, with the BMC's own
// credentials (<bmc>/agent-password, 0600, written by Up).
func (a *powerAgent) tellSushyOff(vm *agentVM) {
	pw, err := os.ReadFile(filepath.Join(vm.bmcDir, agentPasswordFile))
	if err != nil {
		a.log.Warn("cannot tell sushy the VM is off", "vm", vm.name, "err", err)
		return
	}
	tlsConf := &tls.Config{MinVersion: tls.VersionTLS12}
	if pemBytes, err := os.ReadFile(filepath.Join(vm.bmcDir, "cert.pem")); err == nil {
		tlsConf.RootCAs = x509.NewCertPool()
		tlsConf.RootCAs.AppendCertsFromPEM(pemBytes)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConf}}
	defer hc.CloseIdleConnections()
	url := vm.bmc.URL + "/redfish/v1/Systems/" + vm.uuid + "/Actions/ComputerSystem.Reset"
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"ResetType":"ForceOff"}`))
	if err != nil {
		return
	}
	req.SetBasicAuth(vm.bmc.User, strings.TrimRight(string(pw), "\n"))
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		a.log.Warn("cannot tell sushy the VM is off", "vm", vm.name, "err", err)
		return
	}
	resp.Body.Close()
	a.log.Info("told sushy the VM is off", "vm", vm.name, "status", resp.StatusCode)
}
