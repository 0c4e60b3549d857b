package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/internal/atomicfile"
	"github.com/dotfile/rackboot/profiles"
)

func init() {
	subcommands = append(subcommands,
		clientConfigCmd("talosconfig", "Write the admin talosconfig (endpoints: the control planes' own addresses)",
			profiles.Talosconfig,
			"use it with talosctl --talosconfig %[1]s (or export TALOSCONFIG=%[1]s)"),
		clientConfigCmd("kubeconfig", "Write a cluster-admin kubeconfig for https://<vip>:6443 (valid one year)",
			func(r *profiles.Rack, b *secrets.Bundle) ([]byte, error) {
				return profiles.AdminKubeconfig(r, b, time.Now())
			},
			"use it with export KUBECONFIG=%[1]s (the VIP answers once etcd is bootstrapped)"),
	)
}

// clientConfigCmd is `rackboot NAME [-o FILE]`: generate a client config from
// the rack and its secrets, and write it 0600 (it holds admin credentials).
func clientConfigCmd(name, short string, gen func(*profiles.Rack, *secrets.Bundle) ([]byte, error), hint string) func(*app) *cobra.Command {
	return func(a *app) *cobra.Command {
		var out string
		cmd := &cobra.Command{
			Use:   name,
			Short: short,
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
				data, err := gen(r, b)
				if err != nil {
					return err
				}
				path := a.clientConfigPath(out, name)
				if err := atomicfile.Write(path, data, 0o600); err != nil {
					return fmt.Errorf("write %s: %w", name, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: "+hint+"\n", path)
				return nil
			},
		}
		cmd.Flags().StringVarP(&out, "output", "o", "", "file to write (default: "+name+" in the state directory)")
		return cmd
	}
}

// clientConfigPath is -o, or name in the state directory.
func (a *app) clientConfigPath(out, name string) string {
	if out != "" {
		return out
	}
	return filepath.Join(a.StateDir(), name)
}
