package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/internal/atomicfile"
	"github.com/dotfile/rackboot/profiles"
)

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		return &cobra.Command{
			Use:   "init [DIR]",
			Short: "Write an example rack.yaml (the seed's six-server rack) into DIR",
			Args:  cobra.MaximumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				dir := "."
				if len(args) == 1 {
					dir = args[0]
				}
				path := filepath.Join(dir, "rack.yaml")
				if err := atomicfile.WriteNew(path, profiles.ExampleRack, 0o644); err != nil {
					if errors.Is(err, atomicfile.ErrExists) {
						return fmt.Errorf("%s exists already; it was left as it is", path)
					}
					return fmt.Errorf("write example rack: %w", err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: edit the MACs and addresses, then run `rackboot validate`\n", path)
				return nil
			},
		}
	})
}
