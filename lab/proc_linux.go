//go:build linux

package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStatStartTime(b)
}

func procArgv0(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return ""
	}
	a0, _, _ := bytes.Cut(b, []byte{0})
	return string(a0)
}

// errNotOurs is returned by openProcess when the PID is gone or now belongs
// to another process.
var errNotOurs = errors.New("process gone (or its PID now belongs to another process)")

// openProcess returns a pidfd for p when p is still the process the lab
// started and has not exited: same start time and program. The pidfd is
// opened first, so the identity check reads the process the pidfd holds.
func openProcess(p Process) (int, error) {
	fd, err := unix.PidfdOpen(p.PID, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return -1, errNotOurs
		}
		return -1, fmt.Errorf("pidfd_open %d: %w", p.PID, err)
	}
	st, err := procStartTime(p.PID)
	if err != nil || st != p.StartTime || procArgv0(p.PID) != p.Exe || exited(fd, 0) {
		unix.Close(fd)
		return -1, errNotOurs
	}
	return fd, nil
}

// exited waits up to timeout for the pidfd's process to exit.
func exited(fd int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		ms := int(time.Until(deadline) / time.Millisecond)
		if ms < 0 {
			ms = 0
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0
	}
}

// running reports whether the recorded process still runs.
func running(p Process) bool {
	fd, err := openProcess(p)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// stopProcess sends SIGTERM to the recorded process (only if it is still the
// one the lab started), waits up to grace, then sends SIGKILL. It reports
// whether it signalled anything.
func stopProcess(p Process, grace time.Duration) (bool, error) {
	fd, err := openProcess(p)
	if errors.Is(err, errNotOurs) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return true, fmt.Errorf("stop %s (pid %d): %w", p.Role, p.PID, err)
	}
	if exited(fd, grace) {
		return true, nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return true, fmt.Errorf("kill %s (pid %d): %w", p.Role, p.PID, err)
	}
	if !exited(fd, 5*time.Second) {
		return true, fmt.Errorf("kill %s (pid %d): still running 5s after SIGKILL", p.Role, p.PID)
	}
	return true, nil
}

// startProcess starts spec inside the named namespace, in its own process
// group (a Ctrl-C in the terminal does not reach it; it outlives the
// command), with stdout and stderr appended to logPath, in dir ("": this
// process's working directory). The returned Process
// is what the state records. The child is reaped in the background while
// this process lives; afterwards init reaps it.
func startProcess(namespace string, spec ProcessSpec, logPath, dir string) (Process, <-chan error, error) {
	exe, err := exec.LookPath(spec.Path)
	if err != nil {
		return Process{}, nil, fmt.Errorf("start %s: %w", spec.Role, err)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return Process{}, nil, fmt.Errorf("start %s: log file: %w", spec.Role, err)
	}
	defer logf.Close()
	cmd := exec.Command(exe, spec.Args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := inNamespace(namespace, cmd.Start); err != nil {
		return Process{}, nil, fmt.Errorf("start %s in namespace %s: %w", spec.Role, namespace, err)
	}
	p := Process{
		Role:      spec.Role,
		PID:       cmd.Process.Pid,
		Exe:       exe,
		Args:      spec.Args,
		Namespace: namespace,
		Log:       logPath,
	}
	// Read the start time before anything reaps the child: a child that
	// already exited is a zombie whose /proc entry stays until Wait.
	if p.StartTime, err = procStartTime(p.PID); err != nil {
		// Without its start time it could never be stopped safely later.
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return Process{}, nil, fmt.Errorf("start %s: read its start time: %w", spec.Role, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	return p, done, nil
}

// sameNetNamespace reports whether a process is in the named network
// namespace (same device and inode).
func sameNetNamespace(pid int, namespace string) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Stat("/proc/"+strconv.Itoa(pid)+"/ns/net", &a); err != nil {
		return false, fmt.Errorf("namespace of pid %d: %w", pid, err)
	}
	if err := unix.Stat(netnsDir+"/"+namespace, &b); err != nil {
		return false, fmt.Errorf("namespace %s: %w", namespace, err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}
