package main

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/inventory"
)

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		cmd := &cobra.Command{
			Use:   "machine",
			Short: "Change what rackboot remembers of a machine (reinstall, forget, adopt)",
		}
		rp := &reinstallPower{}
		reinstall := &cobra.Command{
			Use:   "reinstall NAME",
			Short: "Install Talos again on a machine at its next network boot",
			Long: "Clears the machine's \"installed\" mark, so its next network boot gets Talos and its\n" +
				"config again (with a new config token) instead of being sent to its disk. Goes through\n" +
				"the running rackboot serve when there is one; with --kube, changes the machine's record\n" +
				"in the cluster, where every replica of the rackboot in Kubernetes sees it.",
			Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				r, err := a.loadRack(cmd)
				if err != nil {
					return err
				}
				name := args[0]
				m := r.Machine(name)
				if m == nil {
					return fmt.Errorf("no machine named %q in %s", name, a.rackWhere())
				}
				if err := rp.preflight(cmd.Context(), a, m); err != nil {
					return err
				}
				err = a.reinstallMachine(cmd.Context(), name)
				switch {
				case errors.Is(err, inventory.ErrUnknownMachine):
					fmt.Fprintf(cmd.OutOrStdout(), "%s has not booted from rackboot yet: its next network boot installs it\n", name)
				case err != nil:
					return err
				case rp.power:
					fmt.Fprintf(cmd.OutOrStdout(), "%s will install again at its next network boot\n", name)
				default:
					fmt.Fprintf(cmd.OutOrStdout(), "%s will install again at its next network boot (set it to boot from the network once, or use its boot menu)\n", name)
				}
				if rp.power {
					return rp.run(cmd.Context(), a, cmd.OutOrStdout(), r, m)
				}
				return nil
			},
		}
		rp.register(reinstall)
		registerKube(reinstall)
		cmd.AddCommand(reinstall)
		cmd.AddCommand(newAdoptCmd(a))
		cmd.AddCommand(newRemoveCmd(a))
		cmd.AddCommand(newForgetCmd(a))
		return cmd
	})
}

// newForgetCmd is `rackboot machine forget MAC`.
func newForgetCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "forget MAC",
		Short: "Drop a machine that is not in the rack file from the status page",
		Long: "Drops a discovered machine (one that netbooted but is not in the rack file) from what\n" +
			"rackboot remembers; if it netboots again it is recorded anew. Goes through the running\n" +
			"rackboot serve when there is one; with --kube, deletes its record in the cluster, and every\n" +
			"replica of the rackboot in Kubernetes drops it through its watch. A machine of the rack\n" +
			"file is refused: use `rackboot machine reinstall NAME` or `rackboot machine remove NAME`.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			hw, err := net.ParseMAC(args[0])
			if err != nil {
				return fmt.Errorf("%q is not a MAC address: write it like 52:54:00:12:34:56", args[0])
			}
			mac := hw.String()
			if err := a.forgetMachine(cmd.Context(), mac); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "forgot %s\n", mac)
			return nil
		},
	}
	registerKube(cmd)
	return cmd
}

// changeMachine asks the running serve to make a change (so one process
// writes the state files), or makes it in the state dir when none runs.
func changeMachine(ctx context.Context, stateDir, path string, local func(*inventory.Store) error) error {
	if ctx == nil {
		ctx = context.Background()
	}
	_, err := controlPost(ctx, stateDir, path)
	if !errors.Is(err, errNoServer) {
		return err
	}
	st, err := inventory.Open(stateDir)
	if err != nil {
		return err
	}
	if err := local(st); err != nil {
		return err
	}
	return st.Close()
}
