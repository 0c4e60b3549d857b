package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/profiles"
)

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		return &cobra.Command{
			Use:   "config MACHINE",
			Short: "Print MACHINE's Talos machine config (YAML) on stdout",
			Long: "Print the Talos machine config rackboot serves to MACHINE: generated from the rack file and the\n" +
				"cluster secrets in the state directory (created on first use), with the rack's patches applied.",
			Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				r, err := a.loadRack(cmd)
				if err != nil {
					return err
				}
				b, err := a.clusterSecrets()
				if err != nil {
					return err
				}
				data, err := profiles.GenerateConfig(r, args[0], b)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(data)
				return err
			},
		}
	})
}

// clusterSecrets loads the cluster's secrets bundle from the state directory,
// creating it on first use (and saying so: it must be backed up).
func (a *app) clusterSecrets() (*secrets.Bundle, error) {
	b, created, err := profiles.LoadOrCreateSecrets(a.StateDir(), time.Now)
	if err != nil {
		return nil, fmt.Errorf("cluster secrets: %w", err)
	}
	if created {
		a.log.Info("created the cluster secrets: back this file up, it holds every CA of the cluster",
			"file", filepath.Join(a.StateDir(), profiles.SecretsFile))
	}
	return b, nil
}
