package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/profiles"
)

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		sec := &cobra.Command{
			Use:   "secrets",
			Short: "Manage the cluster secrets bundle in the state directory",
		}
		sec.AddCommand(&cobra.Command{
			Use:   "import FILE",
			Short: "Adopt an existing `talosctl gen secrets` bundle (refused if the state directory has secrets)",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if err := profiles.ImportSecrets(a.StateDir(), args[0]); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "imported %s into %s\n", args[0], filepath.Join(a.StateDir(), profiles.SecretsFile))
				return nil
			},
		})
		return sec
	})
}
