package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/dotfile/rackboot/profiles"
)

// `rackboot bmc set-password NAME` and `rackboot bmc check [NAME...]`.

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		cmd := &cobra.Command{
			Use:   "bmc",
			Short: "Set BMC passwords and check that rackboot reaches the machines' BMCs",
		}
		cmd.AddCommand(setPasswordCmd(a), bmcCheckCmd(a))
		return cmd
	})
}

func setPasswordCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "set-password NAME",
		Short: "Store a machine's BMC password in the state directory (bmc-passwords.yaml, mode 0600)",
		Long: "Reads the password from the terminal without echo, or from standard input when it is not a\n" +
			"terminal (one line). Scripts can instead set RACKBOOT_BMC_PASSWORD_<NAME> (upper case, - as _)\n" +
			"or RACKBOOT_BMC_PASSWORD for every machine; these win over the file.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := a.loadRack(cmd)
			if err != nil {
				return err
			}
			name := args[0]
			m := r.Machine(name)
			if m == nil {
				return fmt.Errorf("no machine named %q in the rack file: write one of %s", name, strings.Join(rackNames(r), ", "))
			}
			if m.BMC == nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: %s has no bmc: in the rack file yet; add bmc: {address, user} to use this password\n", name)
			}
			pw, err := readPassword(cmd, name)
			if err != nil {
				return err
			}
			if err := profiles.SetBMCPassword(a.StateDir(), name, pw); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "stored the BMC password of %s in %s (mode 0600)\n", name, profiles.BMCPasswordsFile)
			return nil
		},
	}
}

// readPassword reads a password without echo from a terminal (twice), or
// one line from a non-terminal standard input.
func readPassword(cmd *cobra.Command, name string) (string, error) {
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok && isTerminal(f) {
		ask := func(prompt string) (string, error) {
			fmt.Fprint(cmd.ErrOrStderr(), prompt)
			b, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(cmd.ErrOrStderr())
			return string(b), err
		}
		p1, err := ask("BMC password for " + name + ": ")
		if err != nil {
			return "", fmt.Errorf("read the password: %w", err)
		}
		p2, err := ask("again: ")
		if err != nil {
			return "", fmt.Errorf("read the password: %w", err)
		}
		if p1 != p2 {
			return "", errors.New("the two passwords differ: nothing stored")
		}
		return nonEmpty(p1)
	}
	b, err := io.ReadAll(io.LimitReader(in, 4097))
	if err != nil {
		return "", fmt.Errorf("read the password from standard input: %w", err)
	}
	if len(b) > 4096 {
		return "", errors.New("standard input holds more than 4096 bytes: give the password alone, on one line")
	}
	return nonEmpty(firstLine(string(b)))
}

// firstLine is s up to its first line end (\n or \r\n), without it.
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSuffix(s, "\r")
}

func nonEmpty(pw string) (string, error) {
	if pw == "" {
		return "", errors.New("empty password: nothing stored (give it on standard input or at the prompt)")
	}
	return pw, nil
}

func isTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

func bmcCheckCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "check [NAME...]",
		Short: "Connect to each machine's BMC: protocol, power state, whether TLS was verified",
		Long:  "Without names, checks every machine that has a bmc: in the rack file. Changes nothing.",
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := a.loadRack(cmd)
			if err != nil {
				return err
			}
			ms, skipped, err := selectTargets(r, args, len(args) == 0)
			if err != nil {
				return err
			}
			for _, name := range skipped {
				fmt.Fprintf(cmd.ErrOrStderr(), "%s has no bmc: in the rack file: not checked\n", name)
			}
			pw, err := a.bmcPasswords(cmd.Context())
			if err != nil {
				return err
			}
			rs := runOnBMCs(cmd.Context(), ms, func(ctx context.Context, m *profiles.Machine) powerResult {
				return checkOne(ctx, a, m, pw)
			})
			return printResults(cmd.OutOrStdout(), rs, asJSON, true)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the results as JSON")
	registerKube(cmd)
	return cmd
}

// checkOne opens m's BMC and reads its power state.
func checkOne(ctx context.Context, a *app, m *profiles.Machine, pw *profiles.BMCPasswords) powerResult {
	var res powerResult
	d, source, ok := openBMC(ctx, a, m, pw, &res)
	res.Note = source
	if !ok {
		return res
	}
	defer d.Close()
	if d.Info().Probed {
		res.Note = joinNote("protocol found by probing", res.Note)
	}
	st, err := d.PowerState(ctx)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	res.State = string(st)
	return res
}
