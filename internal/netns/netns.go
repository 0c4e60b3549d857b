// Package netns gives tests private network namespaces: a namespace per
// role (router, server, client), bridges and veth pairs between them, all
// removed again by t.Cleanup. (No netem: the kernel the tests run on has no
// netem qdisc. Loss is made with nftables, see cmd/rackboot's
// tftp_loss_test.go; delay with bench/delaylink.)
//
// Nothing here touches the host's own interfaces or routes, and no default
// route is ever added: a packet sent inside these namespaces cannot leave
// them. Creating namespaces needs root (CAP_SYS_ADMIN) and the `ip` command
// from the Debian package iproute2.
//
//	a := netns.New(t, "router")
//	b := netns.New(t, "client")
//	a.AddVeth("eth0", b, "eth0")
//	a.AddAddr("eth0", netip.MustParsePrefix("10.99.0.1/24"))
//	err := b.Run(func() error { /* sockets opened here live in b */ })
package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dotfile/rackboot/internal/syncbuf"
)

// NS is a network namespace that lives as long as the test that made it.
type NS struct {
	t    testing.TB
	name string
}

// Requirements returns an error naming what is missing to create namespaces
// on this machine (root, the iproute2 tools), or nil.
func Requirements() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root (CAP_SYS_ADMIN): run the tests as root")
	}
	for _, tool := range []string{"ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found: apt-get install iproute2: %w", tool, err)
		}
	}
	return nil
}

// New creates a namespace for the test, with its loopback up, and removes
// it (with everything inside) when the test ends. name is a short role
// ("router", "client"); the real name gets a unique prefix, see Name.
func New(t testing.TB, name string) *NS {
	t.Helper()
	if err := Requirements(); err != nil {
		t.Fatal(err)
	}
	// The PID and a random part keep names unique between tests and
	// between test binaries running at the same time.
	var r [4]byte
	if _, err := rand.Read(r[:]); err != nil {
		t.Fatalf("random namespace name: %v", err)
	}
	full := fmt.Sprintf("rbt%d-%x-%s", os.Getpid(), r, name)
	if _, err := run(context.Background(), "ip", "netns", "add", full); err != nil {
		t.Fatalf("create network namespace %s: %v", full, err)
	}
	n := &NS{t: t, name: full}
	t.Cleanup(func() {
		if _, err := run(context.Background(), "ip", "netns", "del", full); err != nil {
			t.Errorf("delete network namespace %s: %v", full, err)
		}
	})
	n.ip("link", "set", "lo", "up")
	return n
}

// Name is the namespace's name as `ip netns` knows it.
func (n *NS) Name() string { return n.name }

// Path is the namespace's bind-mount file (for setns or `nsenter --net=`).
func (n *NS) Path() string { return filepath.Join("/run/netns", n.name) }

// ip runs `ip -n NS args...` and fails the test on error.
func (n *NS) ip(args ...string) {
	n.t.Helper()
	if _, err := run(context.Background(), "ip", append([]string{"-n", n.name}, args...)...); err != nil {
		n.t.Fatalf("in namespace %s: %v", n.name, err)
	}
}

// AddBridge creates a bridge in the namespace, sets it up and gives it the
// addresses.
func (n *NS) AddBridge(name string, addrs ...netip.Prefix) {
	n.t.Helper()
	n.ip("link", "add", name, "type", "bridge")
	// No STP, no forwarding delay: ports forward as soon as they are up.
	n.ip("link", "set", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
	n.ip("link", "set", name, "up")
	for _, a := range addrs {
		n.AddAddr(name, a)
	}
}

// AddVeth creates a veth pair: name in this namespace, peerName in peer
// (which may be this namespace too), both up.
func (n *NS) AddVeth(name string, peer *NS, peerName string) {
	n.t.Helper()
	n.ip("link", "add", name, "type", "veth", "peer", "name", peerName, "netns", peer.name)
	n.ip("link", "set", name, "up")
	peer.ip("link", "set", peerName, "up")
}

// SetMaster enslaves the device dev to the bridge.
func (n *NS) SetMaster(dev, bridge string) {
	n.t.Helper()
	n.ip("link", "set", dev, "master", bridge)
}

// AddAddr adds an address with its prefix length (10.99.0.1/24) to dev.
func (n *NS) AddAddr(dev string, addr netip.Prefix) {
	n.t.Helper()
	n.ip("addr", "add", addr.String(), "dev", dev)
}

// DefaultRoute returns the namespace's IPv4 and IPv6 default routes as `ip
// route` prints them; empty when there are none, as there should be.
func (n *NS) DefaultRoute() (string, error) {
	var all []string
	for _, fam := range []string{"-4", "-6"} {
		out, err := run(context.Background(), "ip", "-n", n.name, fam, "route", "show", "default")
		if err != nil {
			return "", fmt.Errorf("list default routes in %s: %w", n.name, err)
		}
		if s := strings.TrimSpace(string(out)); s != "" {
			all = append(all, s)
		}
	}
	return strings.Join(all, "\n"), nil
}

// Exec runs a command in the namespace (`ip netns exec`) and returns its
// combined output; a failure's error includes that output.
func (n *NS) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	return run(ctx, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// Start starts a long-running command in the namespace. It is killed by
// its PID and reaped when the test ends (and gets SIGKILL from the kernel
// should the test binary die first). Its output is kept (Output) and
// logged if the test failed.
func (n *NS) Start(name string, args ...string) *Process {
	n.t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.name, name}, args...)...)
	p := &Process{Cmd: cmd, done: make(chan struct{})}
	cmd.Stdout = &p.out
	cmd.Stderr = &p.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("start %s in %s: %v", name, n.name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	n.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if n.t.Failed() {
			n.t.Logf("output of %s in %s:\n%s", name, n.name, p.Output())
		}
	})
	return p
}

// Process is a command started with Start.
type Process struct {
	Cmd  *exec.Cmd
	out  syncbuf.Buffer
	done chan struct{}
	err  error
}

// Output is what the process wrote so far (stdout and stderr together).
func (p *Process) Output() string { return p.out.String() }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the process's exit error, valid after Done is closed.
func (p *Process) Err() error { return p.err }

// Run calls fn on an OS thread switched into the namespace. Sockets fn
// opens stay in the namespace after Run returns and may be used from any
// goroutine; goroutines fn starts do NOT run in the namespace. The thread
// is switched back afterwards, or discarded when that fails.
func (n *NS) Run(fn func() error) error {
	target, err := os.Open(n.Path())
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", n.name, err)
	}
	defer target.Close()
	type result struct {
		err   error
		panic any
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		// Not unlocked on a failed restore: the goroutine then exits
		// locked and the runtime throws the thread away.
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- result{err: fmt.Errorf("open current namespace: %w", err)}
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("enter namespace %s: %w", n.name, err)}
			return
		}
		var res result
		func() {
			defer func() { res.panic = recover() }()
			res.err = fn()
		}()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			if res.err == nil {
				res.err = fmt.Errorf("leave namespace %s: %w", n.name, err)
			}
		} else {
			runtime.UnlockOSThread()
		}
		ch <- res
	}()
	res := <-ch
	if res.panic != nil {
		panic(res.panic)
	}
	return res.err
}

// run runs a command and returns its combined output; the error names the
// command and includes the output.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}
