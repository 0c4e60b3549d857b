package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/internal/atomicfile"
	"github.com/dotfile/rackboot/profiles"
)

func init() {
	subcommands = append(subcommands,
		func(a *app) *cobra.Command {
			var out string
			cmd := &cobra.Command{
				Use:   "talosconfig",
				Short: "Write the admin talosconfig (endpoints: the control planes' own addresses)",
				Args:  cobra.NoArgs,
				RunE: func(cmd *cobra.Command, _ []string) error {
					r, err := a.loadRack(cmd)
					if err != nil {
						return err
					}
					b, err := a.clusterSecrets()
					if err != nil {
						return err
					}
					data, err := profiles.Talosconfig(r, b)
					if err != nil {
						return err
					}
					path := a.clientConfigPath(out, "talosconfig")
					if err := atomicfile.Write(path, data, 0o600); err != nil {
						return fmt.Errorf("write talosconfig: %w", err)
					}
					fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: use it with talosctl --talosconfig %s (or export TALOSCONFIG=%s)\n", path, path, path)
					return nil
				},
			}
			cmd.Flags().StringVarP(&out, "output", "o", "", "file to write (default: talosconfig in the state directory)")
			return cmd
		},
		func(a *app) *cobra.Command {
			var out string
			cmd := &cobra.Command{
				Use:   "kubeconfig",
				Short: "Write a cluster-admin kubeconfig for https://<vip>:6443 (valid one year)",
				Args:  cobra.NoArgs,
				RunE: func(cmd *cobra.Command, _ []string) error {
					r, err := a.loadRack(cmd)
					if err != nil {
						return err
					}
					b, err := a.clusterSecrets()
					if err != nil {
						return err
					}
					data, err := profiles.AdminKubeconfig(r, b, time.Now())
					if err != nil {
						return err
					}
					path := a.clientConfigPath(out, "kubeconfig")
					if err := atomicfile.Write(path, data, 0o600); err != nil {
						return fmt.Errorf("write kubeconfig: %w", err)
					}
					fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: use it with export KUBECONFIG=%s (the VIP answers once etcd is bootstrapped)\n", path, path)
					return nil
				},
			}
			cmd.Flags().StringVarP(&out, "output", "o", "", "file to write (default: kubeconfig in the state directory)")
			return cmd
		},
	)
}

// clientConfigPath is -o, or name in the state directory.
func (a *app) clientConfigPath(out, name string) string {
	if out != "" {
		return out
	}
	return filepath.Join(a.StateDir(), name)
}
