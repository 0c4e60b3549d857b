package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/lab"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/status"
)

// labServePort is serve's HTTP port inside the lab namespace.
const labServePort = 8080

// defaultStandinDir is where `make standin` puts the stand-in boot image.
const defaultStandinDir = "lab/standin/build"

// labFlags are shared by the lab subcommands.
type labFlags struct {
	name string
}

// labUpFlags are `lab up`'s (and, but for noWait, `lab demo`'s) flags.
type labUpFlags struct {
	machines int
	dhcp     string
	firmware string
	example  bool
	standin  string
	noServe  bool
	noWait   bool // lab up only: lab demo always waits
	// poweredOff: leave the machines that have a virtual BMC off (lab up
	// only; otherwise they are powered on through it, netboot once).
	poweredOff bool
	timeout    time.Duration
	// standinVersions: serve's --standin-version (for `rackboot upgrade`
	// in the lab).
	standinVersions []string
}

func (f *labUpFlags) register(cmd *cobra.Command, machines int) {
	fl := cmd.Flags()
	fl.IntVar(&f.machines, "machines", machines, "number of VMs: the first N machines of the rack file (0: the rack's lab.machines)")
	fl.StringVar(&f.dhcp, "dhcp", "full", "full (serve is the DHCP server) or proxy (dnsmasq in a router namespace hands out addresses, serve answers PXE)")
	fl.StringVar(&f.firmware, "firmware", "", "bios or uefi for every VM (default: the rack's lab.firmware, else bios)")
	fl.BoolVar(&f.example, "example", false, "use the embedded example rack (six servers, lab.machines: 3) instead of the rack file")
	fl.StringVar(&f.standin, "standin", "", "stand-in boot image directory for machines with no Talos in the asset cache (default "+defaultStandinDir+" when it exists)")
	fl.StringArrayVar(&f.standinVersions, "standin-version", nil, "also put the lab's installer image in serve's registry mirror at this Talos version (repeatable), so rackboot upgrade --talos can run in the lab")
	fl.BoolVar(&f.noServe, "no-serve", false, "do not start rackboot serve in the lab (the VMs then find no boot server)")
	fl.DurationVar(&f.timeout, "timeout", 20*time.Minute, "how long to wait for every machine to be installed")
}

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		lf := &labFlags{}
		cmd := &cobra.Command{
			Use:   "lab",
			Short: "A virtual rack: QEMU VMs with the rack's MACs on a private network, netbooting from rackboot",
			Long: `The lab builds a private network (network namespace rb-NAME with a bridge, a tap
per VM and, with --dhcp proxy, a home-router namespace running dnsmasq) and one
QEMU VM per machine with the MAC, UUID and serial of the rack file, an NVMe disk
and SATA disks. rackboot serve runs inside the namespace. Nothing reaches any
other network: no namespace has a default route, QEMU runs with -nodefaults.
Everything is recorded in <state>/lab/NAME/lab.json; ` + "`lab down`" + ` removes it.
Needs root, and the Debian packages qemu-system-x86 qemu-utils ovmf seabios
ipxe-qemu dnsmasq-base.`,
		}
		cmd.PersistentFlags().StringVar(&lf.name, "name", "demo", "the lab's name (its namespace is rb-NAME)")
		cmd.AddCommand(newLabUpCmd(a, lf), newLabStatusCmd(a, lf), newLabConsoleCmd(a, lf), newLabDownCmd(a, lf), newLabDemoCmd(a, lf), newLabExecCmd(a, lf))
		return cmd
	})
}

func openLab(a *app, lf *labFlags) (*lab.Lab, error) {
	return lab.New(a.StateDir(), lf.name, lab.WithLogger(a.log))
}

// labRack is the rack the lab runs: the embedded example, or the rack file.
// The example's bytes are returned so serve can be given the same file.
func labRack(a *app, cmd *cobra.Command, example bool) (*profiles.Rack, []byte, error) {
	if example {
		r, err := profiles.Load("example rack (embedded)", profiles.ExampleRack)
		return r, profiles.ExampleRack, err
	}
	if _, err := os.Stat(a.rackPath); errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("no rack file %s: pass --example for the embedded example rack, or write one with `rackboot init`", a.rackPath)
	}
	r, err := a.loadRack(cmd)
	return r, nil, err
}

func newLabUpCmd(a *app, lf *labFlags) *cobra.Command {
	f := &labUpFlags{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Create the lab's network and VMs, start serve, wait until every machine is installed",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, st, err := labUp(cmd.Context(), a, cmd, lf, f)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if !st.Serve || f.noWait {
				fmt.Fprintf(out, "the lab stays up: `rackboot lab status`, `rackboot lab console NAME`, `rackboot lab down --name %s`\n", lf.name)
				return nil
			}
			err = labWaitInstalled(cmd.Context(), l, st, f.timeout, out)
			fmt.Fprintf(out, "the lab stays up: `rackboot lab down --name %s` removes it\n", lf.name)
			return err
		},
	}
	f.register(cmd, 0)
	cmd.Flags().BoolVar(&f.noWait, "no-wait", false, "do not wait for the machines to be installed")
	cmd.Flags().BoolVar(&f.poweredOff, "powered-off", false, "leave the machines that have a BMC in the lab powered off (then power them with: lab exec -- rackboot power on --netboot)")
	return cmd
}

// labUp plans the lab, prints what it is about to do, and brings it up.
func labUp(ctx context.Context, a *app, cmd *cobra.Command, lf *labFlags, f *labUpFlags) (*lab.Lab, *lab.State, error) {
	r, example, err := labRack(a, cmd, f.example)
	if err != nil {
		return nil, nil, err
	}
	l, err := openLab(a, lf)
	if err != nil {
		return nil, nil, err
	}
	mode, err := lab.ParseDHCPMode(f.dhcp)
	if err != nil {
		return nil, nil, err
	}
	spec := lab.Spec{Rack: r, Machines: f.machines, DHCP: mode, BMCPasswords: labBMCPasswords(r)}
	if f.firmware != "" {
		if spec.Firmware, err = lab.ParseFirmware(f.firmware); err != nil {
			return nil, nil, err
		}
	}
	plan, err := lab.NewPlan(lf.name, spec)
	if err != nil {
		return nil, nil, err
	}
	spec.ServerAddr = plan.ServerAddr
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "lab %s: namespace %s, bridge %s %s, DHCP %s, %d VM(s), %s\n",
		lf.name, plan.Namespace, lab.Bridge, plan.ServerAddr, plan.DHCP, len(plan.VMs), lab.DetectAccel().Name)
	if f.noServe {
		fmt.Fprintln(out, "serve: not started (--no-serve): the VMs will find no boot server")
	} else {
		// The lab has no route anywhere: machines install only if their
		// configs send them to serve's registry mirror for the installer.
		if r.Cluster.Network.Rackboot == "" {
			return nil, nil, fmt.Errorf("%s: cluster.network.rackboot is missing: the lab's machines have no internet and pull their installer image from rackboot's registry mirror, which their configs name only with it; write `rackboot: %s` under cluster.network",
				r.Path, plan.ServerAddr.Addr())
		}
		if spec.Serve, err = labServeSpec(a, l, r, plan, example, f.standin); err != nil {
			return nil, nil, err
		}
		for _, v := range f.standinVersions {
			spec.Serve.Args = append(spec.Serve.Args, "--standin-version", v)
		}
		if err := addBMCPasswords(spec.Serve, plan, spec.BMCPasswords); err != nil {
			return nil, nil, err
		}
		fmt.Fprintf(out, "serve: %s %s\n", spec.Serve.Path, strings.Join(spec.Serve.Args, " "))
	}
	st, err := l.Up(ctx, spec)
	if err != nil {
		return nil, nil, err
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VM\tMAC\tFIRMWARE\tBMC\tSERIAL LOG")
	var off []string
	for _, vm := range st.VMs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", vm.Name, vm.MAC, vm.Firmware, bmcWords(vm.BMC), vm.SerialLog)
		if vm.BMC != nil {
			off = append(off, vm.Name)
		}
	}
	if err := w.Flush(); err != nil {
		return nil, nil, err
	}
	if len(off) == 0 {
		return l, st, nil
	}
	if !st.Serve || f.poweredOff {
		fmt.Fprintf(out, "%s: powered off; their BMCs answer on the lab network: `rackboot lab exec --name %s -- rackboot power on --netboot %s`\n",
			strings.Join(off, ", "), lf.name, strings.Join(off, " "))
		return l, st, nil
	}
	if err := labPowerOn(ctx, l, st, off, out); err != nil {
		return l, st, err
	}
	return l, st, nil
}

// standinDirs are where the lab looks for the stand-in boot image, in
// order: the source tree it runs in, the source tree the binary was built
// in (bin/rackboot), and the user's cache (`make standin` copies it there).
func standinDirs() []string {
	dirs := []string{defaultStandinDir}
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Join(filepath.Dir(exe), "..", defaultStandinDir))
	}
	if c, err := os.UserCacheDir(); err == nil {
		dirs = append(dirs, filepath.Join(c, "rackboot", "standin"))
	}
	return dirs
}

// labBootImage finds what the lab's VMs boot: the stand-in directory (given,
// or found in standinDirs), or real Talos in the asset cache for every
// machine. With neither it fails at once, saying how to get one.
func labBootImage(a *app, r *profiles.Rack, plan *lab.Plan, given string) (string, error) {
	if given != "" {
		abs, err := filepath.Abs(given)
		if err != nil {
			return "", fmt.Errorf("--standin: %w", err)
		}
		if _, _, err := findStandin(abs); err != nil {
			return "", fmt.Errorf("--standin: %w", err)
		}
		return abs, nil
	}
	for _, d := range standinDirs() {
		if _, _, err := findStandin(d); err == nil {
			return filepath.Abs(d)
		}
	}
	missing, err := labMissingTalos(a, r, plan)
	if err != nil {
		return "", err
	}
	if len(missing) == 0 {
		return "", nil // real Talos for every machine
	}
	return "", fmt.Errorf("no boot image for %s: no Talos %s in the asset cache (%s) and no lab boot image (looked in %s); "+
		"build the lab boot image with `make standin` in rackboot's source folder, or fetch Talos with `rackboot assets pull` (needs the internet), or pass --standin DIR",
		strings.Join(missing, ", "), r.Cluster.TalosVersion, assetsDir(a), strings.Join(standinDirs(), ", "))
}

// labMissingTalos lists the lab machines whose Talos boot assets the
// asset cache lacks.
func labMissingTalos(a *app, r *profiles.Rack, plan *lab.Plan) ([]string, error) {
	if _, err := os.Stat(assetsDir(a)); err != nil {
		var all []string
		for _, vm := range plan.VMs {
			all = append(all, vm.Name)
		}
		return all, nil
	}
	cache, err := openAssetCache(a)
	if err != nil {
		return nil, err
	}
	defer cache.Close()
	var missing []string
	for _, vm := range plan.VMs {
		m := r.Machine(vm.Name)
		if m == nil {
			continue
		}
		id, err := profiles.SchematicID(r.Schematic(m))
		if err != nil {
			return nil, fmt.Errorf("schematic of %s: %w", m.Name, err)
		}
		if cache.Has(r.Cluster.TalosVersion, id, m.ArchOrDefault()) != nil {
			missing = append(missing, vm.Name)
		}
	}
	return missing, nil
}

// labServeSpec is `rackboot serve` run by this same binary inside the lab
// namespace, on the bridge, with its own state directory in the lab's (own
// secrets, machines.json), the user's asset cache linked in (real Talos when
// it has it), and the stand-in boot image for everything else.
func labServeSpec(a *app, l *lab.Lab, r *profiles.Rack, plan *lab.Plan, example []byte, standin string) (*lab.ProcessSpec, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this rackboot binary to run serve: %w", err)
	}
	dir := l.Path("serve")
	s := &lab.ProcessSpec{Role: "serve", Path: exe, WorkDir: "serve", Links: map[string]string{}}
	rackArg := filepath.Join(dir, "rack.yaml")
	if example != nil {
		s.Files = map[string][]byte{"rack.yaml": example}
	} else if rackArg, err = filepath.Abs(a.rackPath); err != nil {
		return nil, fmt.Errorf("rack file: %w", err)
	}
	ip := plan.ServerAddr.Addr().String()
	s.Args = []string{"serve", "-f", rackArg, "--state", dir,
		"--interface", lab.Bridge, "--server-ip", ip, "--dhcp", string(plan.DHCP),
		"--http-port", strconv.Itoa(labServePort), "--kernel-arg", "console=ttyS0"}
	for _, vm := range plan.VMs {
		if vm.Arch == lab.ArchARM64 {
			// arm64's virt machine has its serial port on a PL011 UART.
			s.Args = append(s.Args, "--kernel-arg", "console=ttyAMA0")
			break
		}
	}
	if a.verbose {
		s.Args = append(s.Args, "-v")
	}
	if plan.DHCP == lab.DHCPFull {
		// Nothing routes out of the lab: hand out no gateway.
		s.Args = append(s.Args, "--range", plan.DHCPRange[0].String()+"-"+plan.DHCPRange[1].String(), "--router", "none")
	}
	standin, err = labBootImage(a, r, plan, standin)
	if err != nil {
		return nil, err
	}
	if standin != "" {
		s.Args = append(s.Args, "--standin", standin)
	}
	if assets, err := filepath.Abs(assetsDir(a)); err == nil {
		if _, err := os.Stat(assets); err == nil {
			s.Links["assets"] = assets
		}
	}
	base := "http://" + net.JoinHostPort(ip, strconv.Itoa(labServePort))
	client := &http.Client{Transport: &http.Transport{DialContext: l.DialContext}, Timeout: 5 * time.Second}
	s.Ready = func(ctx context.Context) error {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			_, err := status.Fetch(ctx, client, base)
			if err == nil {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s does not answer: %w", base, err)
			case <-t.C:
			}
		}
	}
	return s, nil
}

// labFetcher reads serve's machine table through the lab namespace.
func labFetcher(l *lab.Lab, st *lab.State) (func(context.Context) ([]inventory.Machine, error), error) {
	ip, _, ok := strings.Cut(st.ServerAddr, "/")
	if !ok {
		return nil, fmt.Errorf("lab %s has no server address", st.Name)
	}
	base := "http://" + net.JoinHostPort(ip, strconv.Itoa(labServePort))
	client := &http.Client{Transport: &http.Transport{DialContext: l.DialContext}, Timeout: 5 * time.Second}
	return func(ctx context.Context) ([]inventory.Machine, error) {
		resp, err := status.Fetch(ctx, client, base)
		if err != nil {
			return nil, err
		}
		return resp.Machines, nil
	}, nil
}

func labWaitInstalled(ctx context.Context, l *lab.Lab, st *lab.State, timeout time.Duration, out io.Writer) error {
	fetch, err := labFetcher(l, st)
	if err != nil {
		return err
	}
	names := make([]string, len(st.VMs))
	for i, vm := range st.VMs {
		names[i] = vm.Name
	}
	fmt.Fprintf(out, "waiting up to %s for %s to be installed (serve's /api/machines)...\n", timeout, strings.Join(names, ", "))
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return waitInstalled(ctx, fetch, names, 2*time.Second, out)
}

// waitInstalled polls fetch until every named machine is installed,
// printing each stage change. It fails at once when a machine's install
// fails or its config is rejected, and when ctx ends.
func waitInstalled(ctx context.Context, fetch func(context.Context) ([]inventory.Machine, error), names []string, every time.Duration, out io.Writer) error {
	seen := map[string]string{}
	t := time.NewTicker(every)
	defer t.Stop()
	var lastErr error
	var pending []string // from the last answer: what the timeout message names
	for {
		ms, err := fetch(ctx)
		if err != nil {
			lastErr = err
		} else {
			lastErr = nil
			byName := map[string]inventory.Machine{}
			for _, m := range ms {
				if m.Name != "" {
					byName[m.Name] = m
				}
			}
			done := 0
			pending = pending[:0]
			for _, n := range names {
				m, ok := byName[n]
				stage := "not seen yet"
				if ok {
					stage = m.Stage
				}
				if seen[n] != stage {
					seen[n] = stage
					if ok {
						fmt.Fprintf(out, "  %-12s %s %s\n", n, stage, m.Detail)
					}
				}
				switch {
				case ok && m.Installed:
					done++
				case stage == inventory.StageInstallFailed || stage == inventory.StageConfigError:
					return fmt.Errorf("machine %s: %s: %s", n, stage, m.Detail)
				default:
					pending = append(pending, n+" ("+stage+")")
				}
			}
			if done == len(names) {
				fmt.Fprintf(out, "all %d machine(s) installed\n", done)
				return nil
			}
			if ctx.Err() != nil {
				return fmt.Errorf("waiting for %s: %w", strings.Join(pending, ", "), ctx.Err())
			}
		}
		select {
		case <-ctx.Done():
			what := "the machines to be installed"
			if len(pending) > 0 {
				what = strings.Join(pending, ", ")
			}
			if lastErr != nil {
				return fmt.Errorf("waiting for %s: %w (last error: %v)", what, ctx.Err(), lastErr)
			}
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}

func newLabStatusCmd(a *app, lf *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "List the lab's VMs: running or not, PID, firmware, MAC, disks, serial log, last console line",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := openLab(a, lf)
			if err != nil {
				return err
			}
			s, err := l.Status()
			if errors.Is(err, lab.ErrNotUp) {
				fmt.Fprintf(cmd.OutOrStdout(), "lab %s is not up\n", lf.name)
				return nil
			}
			if err != nil {
				return err
			}
			return writeLabStatus(cmd.OutOrStdout(), s)
		},
	}
}

func writeLabStatus(out io.Writer, s *lab.Status) error {
	fmt.Fprintf(out, "lab %s: namespaces %s, server %s, DHCP %s, accel %s\n", s.Name, strings.Join(s.Namespaces, " "), s.ServerAddr, s.DHCP, s.Accel)
	for _, p := range s.Processes {
		fmt.Fprintf(out, "%s: pid %d %s, log %s\n", p.Role, p.PID, runningWord(p.Running), p.Log)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "VM\tSTATE\tPID\tFIRMWARE\tMAC\tBMC\tLAST CONSOLE LINE")
	for _, vm := range s.VMs {
		last := vm.LastLine
		if len(last) > 60 {
			last = last[:57] + "..."
		}
		state := runningWord(vm.Running)
		if vm.BMC != nil && !vm.Running {
			state = "off" // through its BMC, or never powered on
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", vm.Name, state, vm.PID, vm.Firmware, vm.MAC, bmcWords(vm.BMC), last)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, vm := range s.VMs {
		fmt.Fprintf(out, "%s: serial log %s; disks %s\n", vm.Name, vm.SerialLog, strings.Join(vm.Disks, " "))
	}
	return nil
}

func runningWord(r bool) string {
	if r {
		return "running"
	}
	return "stopped"
}

func newLabConsoleCmd(a *app, lf *labFlags) *cobra.Command {
	var noFollow bool
	cmd := &cobra.Command{
		Use:   "console VM",
		Short: "Print a VM's serial console and follow it (Ctrl-C stops)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := openLab(a, lf)
			if err != nil {
				return err
			}
			return l.Console(cmd.Context(), args[0], cmd.OutOrStdout(), !noFollow)
		},
	}
	cmd.Flags().BoolVar(&noFollow, "no-follow", false, "print what is there and stop")
	return cmd
}

func newLabDownCmd(a *app, lf *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Remove everything the lab made: its processes (by PID), namespaces, disks and logs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := openLab(a, lf)
			if err != nil {
				return err
			}
			return labDown(cmd.Context(), l, cmd.OutOrStdout())
		},
	}
}

func labDown(ctx context.Context, l *lab.Lab, out io.Writer) error {
	rep, err := l.Down(ctx)
	if rep != nil {
		if rep.NothingToDo {
			fmt.Fprintf(out, "lab %s is not up: nothing to do\n", l.Name())
		} else {
			fmt.Fprintf(out, "lab %s down: stopped %d process(es) %v, %d already gone, deleted namespaces %v, removed %d file(s)\n",
				l.Name(), len(rep.Stopped), rep.Stopped, len(rep.Gone), rep.Namespaces, rep.Files)
		}
	}
	return err
}

func newLabDemoCmd(a *app, lf *labFlags) *cobra.Command {
	f := &labUpFlags{}
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Up (the example rack's 3 machines unless -f is given), wait until installed, summary, down",
		Long: `Brings a lab up, waits until every machine is installed, prints a summary and
takes the lab down again, always, also on an error or Ctrl-C. Without -f the
embedded example rack is used.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			if fl := cmd.Flag("rack"); fl == nil || !fl.Changed {
				f.example = true
			}
			ctx := cmd.Context()
			out := cmd.OutOrStdout()
			start := time.Now()
			l, st, err := labUp(ctx, a, cmd, lf, f)
			if st == nil {
				return err
			}
			defer func() {
				if ctx.Err() != nil {
					fmt.Fprintln(out, "interrupted: taking the lab down")
				}
				if derr := labDown(context.WithoutCancel(ctx), l, out); derr != nil {
					err = errors.Join(err, derr)
				}
			}()
			switch {
			case err != nil:
				// Up, but the machines could not be powered on: the
				// summary shows where they are.
			case st.Serve:
				err = labWaitInstalled(ctx, l, st, f.timeout, out)
			default:
				// Without serve, show at least that every VM reached iPXE on its NIC.
				for _, vm := range st.VMs {
					if vm.BMC != nil {
						fmt.Fprintf(out, "  %-12s powered off (no serve to boot from; its BMC: %s)\n", vm.Name, bmcWords(vm.BMC))
						continue
					}
					wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
					line, werr := l.WaitSerial(wctx, vm.Name, regexp.MustCompile(`net0: `+regexp.QuoteMeta(vm.MAC)))
					cancel()
					if werr != nil {
						err = errors.Join(err, werr)
						continue
					}
					fmt.Fprintf(out, "  %-12s iPXE up: %s\n", vm.Name, line)
				}
			}
			fmt.Fprintf(out, "\nsummary after %s:\n", time.Since(start).Round(time.Second))
			if st.Serve {
				if fetch, ferr := labFetcher(l, st); ferr == nil {
					fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
					ms, ferr := fetch(fctx)
					cancel()
					if ferr == nil {
						_ = status.WriteTable(out, ms, time.Now())
					}
				}
			}
			if s, serr := l.Status(); serr == nil {
				_ = writeLabStatus(out, s)
			}
			return err
		},
	}
	f.register(cmd, 0) // the example rack's lab.machines is 3
	return cmd
}
