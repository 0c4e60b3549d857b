package main

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/profiles"
)

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		return &cobra.Command{
			Use:   "validate",
			Short: "Check the rack file and print every problem as file:line:col",
			Long: `Check the rack file and print every problem at once, one per line, as
FILE:LINE:COL: error|warning: what is wrong: what to write instead, then
notes on what the install-disk rules need. For a rack with offline: true,
also checks that the asset cache holds every container image the rack needs
(the machines have no other registry). Exits 1 when there is an error, 0
when there are only warnings.`,
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				return runValidate(cmd, a)
			},
		}
	})
}

func runValidate(cmd *cobra.Command, a *app) error {
	path := a.rackPath
	out := cmd.OutOrStdout()
	r, err := profiles.LoadFile(path)
	var ps profiles.Problems
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &exitError{code: 1, err: fmt.Errorf("validate %s: %w (write an example with `rackboot init`, or name the rack file with -f)", path, err)}
	case err != nil && !errors.As(err, &ps):
		return &exitError{code: 1, err: fmt.Errorf("validate %s: %w", path, err)}
	case err == nil:
		ps = r.Validate()
	}
	nerr, nwarn := 0, 0
	for _, p := range ps {
		fmt.Fprintln(out, p.String())
		if p.Warning {
			nwarn++
		} else {
			nerr++
		}
	}
	if nerr > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%s: %d error(s), %d warning(s)", path, nerr, nwarn)}
	}
	// What each install-disk rule needs: a machine without such a disk does
	// not install (Talos reports a config error).
	for _, n := range r.Notes() {
		fmt.Fprintf(out, "%s:%d:%d: note: %s\n", n.File, n.Pos.Line, n.Pos.Col, n.Msg)
	}
	if err := checkOfflineImages(a, r); err != nil {
		return &exitError{code: 1, err: fmt.Errorf("%s: %w", path, err)}
	}
	fmt.Fprintf(out, "%s: ok: %d machines, %d control plane(s), %d warning(s)\n", path, len(r.Machines), len(r.ControlPlanes()), nwarn)
	return nil
}
