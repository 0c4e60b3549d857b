package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
)

// Startup starts cmd and sends a DISCOVER for mac every interval until the
// first OFFER arrives, and returns the time from just before the exec to
// that OFFER. cmd is stopped (SIGTERM, then SIGKILL after stopWait) before
// Startup returns. Receive must be running.
func (l *Loader) Startup(ctx context.Context, cmd *exec.Cmd, mac net.HardwareAddr, interval, limit, stopWait time.Duration) (time.Duration, error) {
	disc, err := dhcpv4.NewDiscovery(mac, dhcpv4.WithTransactionID(l.xid()), dhcpv4.WithBroadcast(true))
	if err != nil {
		return 0, fmt.Errorf("build DISCOVER: %w", err)
	}
	ch := make(chan *dhcpv4.DHCPv4, 16)
	l.mu.Lock()
	l.pending[disc.TransactionID] = ch
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		delete(l.pending, disc.TransactionID)
		l.mu.Unlock()
	}()
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	b := disc.ToBytes()

	start := l.now()
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer stop(cmd, exited, stopWait)

	tick := time.NewTicker(interval)
	defer tick.Stop()
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for {
		if _, err := l.conn.WriteTo(b, l.dst); err != nil {
			// The interface is there before the server starts; a send
			// error is ours, not the server's.
			return 0, fmt.Errorf("send DISCOVER: %w", err)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case err := <-exited:
			exited <- err // for stop
			return 0, fmt.Errorf("%s exited before answering: %v", cmd.Path, err)
		case <-deadline.C:
			return 0, fmt.Errorf("no OFFER within %s of starting %s", limit, cmd.Path)
		case m := <-ch:
			if m.MessageType() == dhcpv4.MessageTypeOffer {
				return l.now().Sub(start), nil
			}
		case <-tick.C:
		}
	}
}

// stop ends cmd: SIGTERM, then SIGKILL after wait.
func stop(cmd *exec.Cmd, exited chan error, wait time.Duration) {
	select {
	case <-exited:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(wait):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// errNoCommand is returned when -startup is given without a command.
var errNoCommand = errors.New("-startup needs the server command after --")
