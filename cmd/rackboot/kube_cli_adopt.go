package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/constants"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
)

// adoptKube is machine adopt --kube: the machine goes into the rack file
// in the ConfigMap rackboot-rack (rackedit: comments and layout kept;
// checked as validate does, nothing written on errors; retried on the
// newer file when someone else changed it meanwhile); the replicas take
// it in through their watch (serve_kube_rack.go). What the replicas saw of
// the machine comes from its discovered record (kubestate: its arch, its
// address, whether it waits in the discovery boot), as the laptop's adopt
// takes it from its serve; a machine waiting in maintenance mode gets its
// config through Talos's maintenance API, built with the secrets bundle
// from the Secret rackboot-secrets.
func (a *app) adoptKube(ctx context.Context, stdout, stderr io.Writer, macArg string, f *adoptFlags) error {
	seen, _ := a.kubeDiscovered(ctx, macArg)
	m, err := adoptedMachine(macArg, f, seen.Arch)
	if err != nil {
		return err
	}
	where := a.rackWhere()
	var (
		ps       profiles.Problems
		rackText []byte
	)
	rctx, cancel := kubeCtx(ctx)
	defer cancel()
	err = a.kube.UpdateRackFile(rctx, func(src []byte) ([]byte, error) {
		out, p, err := adoptRack(where, src, m)
		ps, rackText = p, out
		return out, err
	})
	if len(ps) > 0 {
		fmt.Fprintln(stderr, ps.Error())
	}
	if err != nil {
		if ps.Errors() {
			return &exitError{code: 1, err: err}
		}
		return err
	}
	fmt.Fprintf(stdout, "adopted %s (%s, %s) into %s\n", m.Name, m.Select.MAC[0], m.Role, where)
	fmt.Fprintf(stdout, "the replicas of the rackboot in Kubernetes take the new rack in through their watch: %s's next network boot installs Talos with its own config\n", m.Name)
	switch {
	case seen.waiting && seen.Addr.IsValid() && !f.noApply:
		return applyAdopted(ctx, a, stdout, where, rackText, m, netip.AddrPortFrom(seen.Addr, constants.ApidPort))
	case seen.waiting:
		fmt.Fprintf(stdout, "%s is waiting in Talos's maintenance mode (at %s) and does not netboot again by itself: restart it\n"+
			"(its reset or power button, or its BMC once the rack file has one: rackboot machine reinstall %s --power --kube).\n",
			m.Name, addrOr(seen.Addr, "its address"), m.Name)
	default:
		fmt.Fprintln(stdout, "start it (or restart it) with a network boot.")
	}
	return nil
}

// kubeDiscovered is what the replicas saw of the machine with this MAC:
// its discovered record in the cluster (zero when there is none).
func (a *app) kubeDiscovered(ctx context.Context, macArg string) (discoveredMachine, error) {
	hw, err := net.ParseMAC(macArg)
	if err != nil {
		return discoveredMachine{}, err
	}
	ms, err := a.kubeMachines(ctx)
	if err != nil {
		return discoveredMachine{}, err
	}
	i := slices.IndexFunc(ms, func(m inventory.Machine) bool { return m.Name == "" && m.Key == hw.String() })
	if i < 0 {
		return discoveredMachine{}, nil
	}
	return discovered(ms[i]), nil
}

// adoptSecrets is the cluster's secrets bundle for an adopted machine's
// config: from the Secret rackboot-secrets under --kube, else the state
// directory's secrets.yaml. Neither is ever created here.
func adoptSecrets(a *app) (*secrets.Bundle, error) {
	if a.kube != nil {
		ctx, cancel := kubeCtx(context.Background())
		defer cancel()
		b, err := a.kube.Secrets(ctx)
		if err != nil {
			return nil, fmt.Errorf("--kube: %w", err)
		}
		return b, nil
	}
	file := filepath.Join(a.StateDir(), profiles.SecretsFile)
	if _, err := os.Stat(file); err != nil {
		return nil, fmt.Errorf("no cluster secrets (%s): run rackboot serve with this state dir first", file)
	}
	b, err := profiles.LoadSecrets(file)
	if err != nil {
		return nil, fmt.Errorf("cluster secrets: %w", err)
	}
	return b, nil
}

// addrOr is addr, or what to say when it is not known.
func addrOr(addr netip.Addr, unknown string) string {
	if addr.IsValid() {
		return addr.String()
	}
	return unknown
}
