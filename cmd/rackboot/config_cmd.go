package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/bringup"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
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
				// Before the secrets: a typo must not create them.
				if err := a.knownMachine(r, args[0]); err != nil {
					return err
				}
				b, err := a.clusterSecrets()
				if err != nil {
					return err
				}
				opts, err := mirrorConfigOptions(r)
				if err != nil {
					return err
				}
				data, err := profiles.GenerateConfig(r, args[0], b, opts...)
				if err != nil {
					return err
				}
				_, err = cmd.OutOrStdout().Write(data)
				return err
			},
		}
	})
}

// clusterState names what the state directory holds only once a cluster has
// been made with its secrets: machine states and leases (serve creates the
// secrets before them), the config-token key, the bootstrap record, and the
// client configs signed with the cluster's CAs. Not the asset cache, the
// lab's own state or the CockroachDB certificates: `assets pull`, `lab` and
// `bundles` make those without the cluster's secrets (bundles go to any
// cluster).
var clusterState = []string{
	inventory.FileName, "dhcp-leases.json", pxe.TokenKeyFile, pxe.SpentFile, bringup.BootstrapFile, "talosconfig", "kubeconfig",
}

// clusterSecrets loads the cluster's secrets bundle from the state directory.
//
// Which commands create the secrets: the ones that make something for the
// cluster (config and image for a machine of the rack, talosconfig,
// kubeconfig, up; serve on its own), and only in a new state directory, the
// first step of a new cluster, saying so (the file must be backed up). When
// the state directory shows a cluster whose secrets are gone they refuse and
// say how to restore them: new keys would not open that cluster. Commands
// that only read (validate, status) never create them.
func (a *app) clusterSecrets() (*secrets.Bundle, error) {
	b, created, err := profiles.LoadOrCreateSecretsIfNew(a.StateDir(), time.Now, clusterState)
	if err != nil {
		return nil, fmt.Errorf("cluster secrets: %w", err)
	}
	if created {
		a.log.Info("created the cluster secrets: back this file up, it holds every CA of the cluster",
			"file", filepath.Join(a.StateDir(), profiles.SecretsFile))
	}
	return b, nil
}

// knownMachine fails, naming the rack's machines, when name is not one of them.
func (a *app) knownMachine(r *profiles.Rack, name string) error {
	if r.Machine(name) != nil {
		return nil
	}
	names := make([]string, len(r.Machines))
	for i := range r.Machines {
		names[i] = r.Machines[i].Name
	}
	return fmt.Errorf("no machine named %q in %s: the machines are %s", name, a.rackPath, strings.Join(names, ", "))
}
