package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/profiles"
)

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		return &cobra.Command{
			Use:   "validate",
			Short: "Check the rack file and print every problem as file:line:col",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				r, err := profiles.LoadFile(a.rackPath)
				var ps profiles.Problems
				if err != nil && !errors.As(err, &ps) {
					return err
				}
				if err == nil {
					ps = r.Validate()
				}
				for _, p := range ps {
					fmt.Fprintln(cmd.OutOrStdout(), p.String())
				}
				if ps.Errors() {
					return &exitError{code: 1, err: fmt.Errorf("%s: %d problem(s)", a.rackPath, len(ps))}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%d machines)\n", a.rackPath, len(r.Machines))
				return nil
			},
		}
	})
}
