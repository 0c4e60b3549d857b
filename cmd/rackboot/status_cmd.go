package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/status"
)

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		var (
			server  string
			offline bool
			asJSON  bool
			timeout time.Duration
		)
		cmd := &cobra.Command{
			Use:   "status",
			Short: "Print every machine's stage, address and last event",
			Long: "Print the machine table of the rackboot serve running for this rack (through its control\n" +
				"socket in the state directory), of another one with --server URL, or with --offline the one\n" +
				"saved in the state directory (machines.json). With --kube, the machine records of the\n" +
				"rackboot running in Kubernetes (what all its replicas share).",
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				var ms []inventory.Machine
				now := time.Now()
				if a.kube != nil {
					var err error
					if ms, err = a.kubeStatus(cmd.Context(), offline, server); err != nil {
						return err
					}
				} else if offline {
					// Open only reads; the store is never flushed here.
					st, err := inventory.Open(a.StateDir(), inventory.WithLogger(a.log))
					if err != nil {
						return err
					}
					ms = st.Machines()
				} else {
					parent := cmd.Context()
					if parent == nil {
						parent = context.Background()
					}
					ctx, cancel := context.WithTimeout(parent, timeout)
					defer cancel()
					client, base := &http.Client{}, server
					if server == "" {
						client, base = controlClient(a.StateDir(), timeout), controlBase
					}
					resp, err := status.Fetch(ctx, client, base)
					if err != nil && server == "" {
						return fmt.Errorf("no rackboot serve answers for %s (%w): start one, or try --server URL or --offline", a.StateDir(), err)
					}
					if err != nil {
						return fmt.Errorf("%w (is rackboot running? try --offline)", err)
					}
					ms, now = resp.Machines, resp.Time
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					if err := enc.Encode(ms); err != nil {
						return fmt.Errorf("print machines: %w", err)
					}
					return nil
				}
				if len(ms) == 0 {
					fmt.Fprintln(cmd.OutOrStdout(), "no machine has asked to boot yet")
					return nil
				}
				return status.WriteTable(cmd.OutOrStdout(), ms, now)
			},
		}
		cmd.Flags().StringVar(&server, "server", "", "URL of a rackboot status page to read, e.g. http://192.168.1.2:8080 (default: the serve running for this rack)")
		cmd.Flags().BoolVar(&offline, "offline", false, "read machines.json from the state directory instead of asking a server")
		cmd.Flags().BoolVar(&asJSON, "json", false, "print the machines as JSON")
		cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the server")
		registerKube(cmd)
		return cmd
	})
}
