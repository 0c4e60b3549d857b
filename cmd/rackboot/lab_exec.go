package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/lab"
)

// `rackboot lab exec -- PROGRAM [ARGS...]`: a program on the lab's rack
// network (inside its namespace), with -f and --state of a rackboot run
// there defaulting to the lab's rack file and serve's state directory, so
// `rackboot lab exec -- rackboot power status --all` talks to the lab's
// BMCs with the lab's passwords.

func newLabExecCmd(a *app, lf *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "exec -- PROGRAM [ARGS...]",
		Short: "Run a program on the lab's network (rackboot power, ipmitool, curl ...), with the lab's rack file and state",
		Long: `Runs PROGRAM inside the lab's network namespace, as a laptop plugged into the
rack would: it reaches the VMs, their BMCs and the lab's rackboot serve. A
rackboot run this way uses the lab's rack file and serve's state directory
(RACKBOOT_RACK, RACKBOOT_STATE), where the lab keeps its BMC passwords:

  sudo rackboot lab exec -- rackboot power status --all
  sudo rackboot lab exec -- rackboot machine reinstall formula --power`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := openLab(a, lf)
			if err != nil {
				return err
			}
			st, err := l.State()
			if err != nil {
				return err
			}
			prog := args[0]
			if prog == "rackboot" {
				// This very binary, not whichever one PATH finds.
				if exe, err := os.Executable(); err == nil {
					prog = exe
				}
			}
			c := exec.CommandContext(cmd.Context(), prog, args[1:]...)
			c.Env = append(os.Environ(), labServeEnv(st)...)
			c.Stdin, c.Stdout, c.Stderr = cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr()
			err = l.Run(c)
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return &exitError{code: ee.ExitCode(), err: err}
			}
			return err
		},
	}
}

// labServeEnv is RACKBOOT_RACK and RACKBOOT_STATE as the lab's serve
// process was started with (its -f and --state), when it was.
func labServeEnv(st *lab.State) []string {
	for _, p := range st.Processes {
		if p.Role != "serve" {
			continue
		}
		var env []string
		for i := 0; i+1 < len(p.Args); i++ {
			switch p.Args[i] {
			case "-f", "--rack":
				env = append(env, rackEnv+"="+p.Args[i+1])
			case "--state":
				env = append(env, stateEnv+"="+p.Args[i+1])
			}
		}
		return env
	}
	return nil
}

// labPowerOn powers the named lab machines on through their virtual
// BMCs with a network boot once: `rackboot power on --netboot NAMES`, run
// on the lab's network as a user would, its table printed to out.
func labPowerOn(ctx context.Context, l *lab.Lab, st *lab.State, names []string, out io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this rackboot binary: %w", err)
	}
	args := append([]string{"power", "on", "--netboot"}, names...)
	fmt.Fprintf(out, "powering on through their BMCs, network boot once: rackboot %s\n", strings.Join(args, " "))
	c := exec.CommandContext(ctx, exe, args...)
	c.Env = append(os.Environ(), labServeEnv(st)...)
	c.Stdout, c.Stderr = out, out
	if err := l.Run(c); err != nil {
		return fmt.Errorf("power on %s through their BMCs: %w", strings.Join(names, ", "), err)
	}
	return nil
}
