// Command rackboot netboots a rack of servers into Talos Linux, brings the
// cluster up, and builds offline install images. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/kubestate"
	"github.com/dotfile/rackboot/profiles"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries an exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// app is what every subcommand shares: the global flags and the logger.
type app struct {
	rackPath   string
	stateDir   string
	verbose    bool
	cpuProfile string
	log        *slog.Logger
	// stopProfile ends --cpuprofile; main calls it after the command.
	stopProfile func()
	// kube is the cluster's state under --kube (kube_cli.go), once opened.
	kube *kubestate.Store
}

// StateDir is --state, or .rackboot/ beside the rack file.
func (a *app) StateDir() string {
	if a.stateDir != "" {
		return a.stateDir
	}
	return filepath.Join(filepath.Dir(a.rackPath), ".rackboot")
}

// loadRack reads and validates the rack file (under --kube the one in the
// cluster: loadKubeRack); problems are printed and make
// the command fail with exit code 1, warnings are printed and let it go on.
func (a *app) loadRack(cmd *cobra.Command) (*profiles.Rack, error) {
	if a.kube != nil {
		return a.loadKubeRack(cmd)
	}
	r, err := profiles.LoadFile(a.rackPath)
	if err != nil {
		var ps profiles.Problems
		if errors.As(err, &ps) {
			fmt.Fprintln(cmd.ErrOrStderr(), ps.Error())
			return nil, &exitError{code: 1, err: fmt.Errorf("%s has %d problem(s); fix them and run `rackboot validate`", a.rackPath, len(ps))}
		}
		return nil, err
	}
	if ps := r.Validate(); len(ps) > 0 {
		fmt.Fprintln(cmd.ErrOrStderr(), ps.Error())
		if ps.Errors() {
			return nil, &exitError{code: 1, err: fmt.Errorf("%s is not valid; fix the errors above", a.rackPath)}
		}
	}
	return r, nil
}

func newRootCmd() *cobra.Command {
	root, _ := newRoot()
	return root
}

// newRoot builds the command tree and the state its commands share.
func newRoot() (*cobra.Command, *app) {
	a := &app{stopProfile: func() {}}
	root := &cobra.Command{
		Use:           "rackboot",
		Short:         "Netboot a rack into Talos Linux, bring the cluster up, build install images",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			level := slog.LevelInfo
			if a.verbose {
				level = slog.LevelDebug
			}
			a.log = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			if err := a.openKube(cmd); err != nil {
				return err
			}
			if a.cpuProfile != "" {
				f, err := os.Create(a.cpuProfile)
				if err != nil {
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					f.Close()
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				a.stopProfile = func() {
					pprof.StopCPUProfile()
					f.Close()
				}
			}
			return nil
		},
	}
	root.PersistentFlags().StringVarP(&a.rackPath, "rack", "f", envOr(rackEnv, "rack.yaml"), "the rack file (or $"+rackEnv+")")
	root.PersistentFlags().StringVar(&a.stateDir, "state", os.Getenv(stateEnv), "state directory: secrets, leases, machine states (default $"+stateEnv+", else .rackboot/ beside the rack file)")
	root.PersistentFlags().BoolVarP(&a.verbose, "verbose", "v", false, "log at debug level")
	root.PersistentFlags().StringVar(&a.cpuProfile, "cpuprofile", "", "write a CPU profile to this file, for go tool pprof")
	for _, add := range subcommands {
		root.AddCommand(add(a))
	}
	return root, a
}

// The environment variables that give -f and --state their defaults (`lab
// exec` sets them to the lab's rack file and serve's state directory).
const (
	rackEnv  = "RACKBOOT_RACK"
	stateEnv = "RACKBOOT_STATE"
)

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// subcommands is filled by the init functions of this package's files, one
// file per subcommand.
var subcommands []func(*app) *cobra.Command

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root, a := newRoot()
	err := root.ExecuteContext(ctx)
	a.stopProfile()
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "rackboot:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}
