package main

import (
	"context"
	"fmt"
	"io"

	"github.com/dotfile/rackboot/profiles"
)

// adoptKube is machine adopt --kube: the machine goes into the rack file
// in the ConfigMap rackboot-rack (rackedit: comments and layout kept;
// checked as validate does, nothing written on errors; retried on the
// newer file when someone else changed it meanwhile); the replicas take
// it in through their watch (serve_kube_rack.go). Machines outside
// the rack file are known to the replicas only, so the machine's arch and
// address are not known here: it installs at its next network boot.
func (a *app) adoptKube(ctx context.Context, stdout, stderr io.Writer, macArg string, f *adoptFlags) error {
	m, err := adoptedMachine(macArg, f, "")
	if err != nil {
		return err
	}
	where := a.rackWhere()
	var ps profiles.Problems
	ctx, cancel := kubeCtx(ctx)
	defer cancel()
	err = a.kube.UpdateRackFile(ctx, func(src []byte) ([]byte, error) {
		out, p, err := adoptRack(where, src, m)
		ps = p
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
	if f.noApply {
		return nil
	}
	fmt.Fprintln(stdout, "start it (or restart it) with a network boot.")
	return nil
}
