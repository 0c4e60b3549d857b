package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/bmc"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/status"
)

// A network boot once through the BMC, then power: `machine reinstall
// NAME --power` (and watch it install) and `up --power` (every machine
// not installed).

// netbootMode is the firmware mode of m's network boot, and a note when
// it is a guess.
func netbootMode(r *profiles.Rack, m *profiles.Machine) (bmc.BootMode, string) {
	fw, guessed := r.BMCFirmware(m)
	if guessed {
		return bmc.BootModeUEFI, "firmware mode unknown, using UEFI (set bmc.firmware: bios or uefi in the rack file)"
	}
	return bmc.BootMode(fw), ""
}

// overrideNotes says, in words, what the read-back means for the user:
// nothing when the BMC holds exactly a one-time network boot.
func overrideNotes(ov bmc.BootOverride) []string {
	var ns []string
	said := strings.Join(ov.Differences, "; ")
	if said != "" {
		ns = append(ns, "warning: the BMC holds something else than what was asked: "+said)
	}
	// The advice; when the BMC's differences were printed they already
	// say what it holds, so the advice does not repeat it.
	if !ov.Netboots() {
		if said != "" {
			ns = append(ns, "so the machine may boot its disk: if it does, set a network boot in its BMC or boot menu")
		} else {
			ns = append(ns, "the BMC reports the override disabled, so the machine may boot its disk: if it does, set a network boot in its BMC or boot menu")
		}
	}
	if ov.Enabled == bmc.EnabledContinuous {
		if said == "" {
			ns = append(ns, "the machine will netboot at every boot until the override is cleared in its BMC")
		}
		ns = append(ns, "that is harmless: rackboot answers an installed machine's network boot with a local boot")
	}
	return ns
}

// powerUpPlan decides how to start a machine whose next boot is set:
// power on when off, power-cycle when on or unknown (a cycle of a machine
// that turns out off just powers it on).
func powerUpPlan(st bmc.State) (string, func(bmc.Driver) func(context.Context) error) {
	if st == bmc.StateOff {
		return "powered on", func(d bmc.Driver) func(context.Context) error { return d.PowerOn }
	}
	return "power-cycled", func(d bmc.Driver) func(context.Context) error { return d.PowerCycle }
}

// netbootNow sets a network boot once and powers m on or cycles it. The
// row says what was done, the override read back and the notes.
func netbootNow(ctx context.Context, a *app, r *profiles.Rack, m *profiles.Machine, pw *profiles.BMCPasswords) powerResult {
	var res powerResult
	d, _, ok := openBMC(ctx, a, m, pw, &res)
	if !ok {
		return res
	}
	defer d.Close()
	mode, note := netbootMode(r, m)
	ov, err := d.SetNetbootOnce(ctx, mode)
	if err != nil {
		res.Error = err.Error()
		if ov.Target != "" {
			res.Override = &ov
		}
		return res
	}
	res.Override = &ov
	notes := append([]string{"network boot once (" + string(mode) + "), read back: " + readBack(ov)}, overrideNotes(ov)...)
	if note != "" {
		notes = append(notes, note)
	}
	res.Note = strings.Join(notes, "; ")
	st, err := d.PowerState(ctx)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	say, act := powerUpPlan(st)
	if err := act(d)(ctx); err != nil {
		res.Error = err.Error()
		return res
	}
	res.State = say
	return res
}

// reinstallPower holds `machine reinstall`'s --power flags.
type reinstallPower struct {
	power   bool
	noWait  bool
	timeout time.Duration
}

func (rp *reinstallPower) register(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&rp.power, "power", false, "set a network boot once through the machine's BMC, power-cycle it (or power it on) and watch it install")
	cmd.Flags().BoolVar(&rp.noWait, "no-wait", false, "with --power: do not watch the install")
	cmd.Flags().DurationVar(&rp.timeout, "timeout", 20*time.Minute, "with --power: how long to watch for the install")
}

// preflight checks, before anything is changed, that --power can work:
// the machine has a bmc: and a password, and a serve answers its netboot.
func (rp *reinstallPower) preflight(ctx context.Context, a *app, m *profiles.Machine) error {
	if !rp.power {
		return nil
	}
	if m.BMC == nil {
		return fmt.Errorf("--power: %s has no bmc: in the rack file: add bmc: {address: <its BMC>, user: <login>} under it", m.Name)
	}
	pw, err := a.bmcPasswords(ctx)
	if err != nil {
		return err
	}
	if _, _, ok := pw.Get(m.Name); !ok {
		return pw.Missing(m.Name)
	}
	if rp.noWait {
		return nil
	}
	if _, err := fetchServed(ctx, a, 5*time.Second); err != nil {
		return fmt.Errorf("--power: no rackboot serve answers for %s, so nothing would answer %s's network boot: start `rackboot serve` (or `rackboot up`) first, or add --no-wait to power it anyway", a.StateDir(), m.Name)
	}
	return nil
}

// run sets the network boot, powers the machine and (unless --no-wait)
// watches it install through the running serve.
func (rp *reinstallPower) run(ctx context.Context, a *app, out io.Writer, r *profiles.Rack, m *profiles.Machine) error {
	pw, err := a.bmcPasswords(ctx)
	if err != nil {
		return err
	}
	res := netbootNow(ctx, a, r, m, pw)
	printNetbootResult(out, res)
	if res.Error != "" {
		return &exitError{code: 1, err: fmt.Errorf("%s: %s", m.Name, res.Error)}
	}
	if rp.noWait {
		fmt.Fprintf(out, "not watching (--no-wait): follow it with `rackboot status`\n")
		return nil
	}
	return watchInstall(ctx, a, out, m.Name, rp.timeout, 2*time.Second)
}

// readBack is the override as read back, without its differences (the
// notes say them).
func readBack(ov bmc.BootOverride) string {
	ov.Differences = nil
	return ov.String()
}

// printNetbootResult prints one machine's netbootNow as lines.
func printNetbootResult(out io.Writer, res powerResult) {
	if res.Override != nil {
		fmt.Fprintf(out, "%s: BMC %s (%s): network boot once, read back: %s\n", res.Name, res.BMC, orDash(res.Protocol), readBack(*res.Override))
		for _, n := range overrideNotes(*res.Override) {
			fmt.Fprintf(out, "%s: %s\n", res.Name, n)
		}
	}
	switch {
	case res.Error != "":
		fmt.Fprintf(out, "%s: FAILED: %s\n", res.Name, res.Error)
	default:
		fmt.Fprintf(out, "%s: %s\n", res.Name, res.State)
	}
}

// fetchServed reads the running serve's machine table through the
// control socket.
func fetchServed(ctx context.Context, a *app, timeout time.Duration) (*status.MachinesResponse, error) {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if a.kube != nil {
		return a.kubeServed(ctx)
	}
	return status.Fetch(ctx, controlClient(a.StateDir(), timeout), controlBase)
}

// watchInstall prints name's stages as the running serve sees them until
// it reports installed, or timeout.
func watchInstall(ctx context.Context, a *app, out io.Writer, name string, timeout, every time.Duration) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	fmt.Fprintf(out, "watching %s (up to %s; Ctrl-C stops watching, not the install)\n", name, timeout)
	last := ""
	for {
		resp, err := fetchServed(ctx, a, 10*time.Second)
		if err == nil {
			if m, ok := findMachine(resp.Machines, name); ok {
				if line := stageLine(m); line != last {
					fmt.Fprintf(out, "  %s  %s\n", time.Now().Format("15:04:05"), line)
					last = line
				}
				if m.Installed {
					fmt.Fprintf(out, "%s is installed\n", name)
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return &exitError{code: 1, err: fmt.Errorf("%s did not report installed within %s (last: %s): look at `rackboot status` and at its console", name, timeout, orDash(last))}
			}
			return ctx.Err()
		case <-time.After(every):
		}
	}
}

func findMachine(ms []inventory.Machine, name string) (inventory.Machine, bool) {
	for _, m := range ms {
		if m.Name == name {
			return m, true
		}
	}
	return inventory.Machine{}, false
}

// stageLine is a machine's stage as watchInstall prints it.
func stageLine(m inventory.Machine) string {
	if m.Detail == "" {
		return m.Stage
	}
	return m.Stage + " (" + m.Detail + ")"
}

// powerUp is `up --power`: once serve answers, every machine that is not
// installed gets a network boot once and power; a line each.
func powerUp(ctx context.Context, a *app, out io.Writer, r *profiles.Rack) {
	resp, err := waitServed(ctx, a)
	if err != nil {
		fmt.Fprintf(out, "--power: %v: power the machines on by hand\n", err)
		return
	}
	installed := map[string]bool{}
	for _, m := range resp.Machines {
		installed[m.Name] = m.Installed
	}
	pw, err := profiles.LoadBMCPasswords(a.StateDir(), nil)
	if err != nil {
		fmt.Fprintf(out, "--power: %v\n", err)
		return
	}
	var ms []*profiles.Machine
	for i := range r.Machines {
		m := &r.Machines[i]
		switch {
		case installed[m.Name]:
			fmt.Fprintf(out, "%s: installed already: left as it is\n", m.Name)
		case m.BMC == nil:
			fmt.Fprintf(out, "%s: no bmc: in the rack file: power it on (it netboots)\n", m.Name)
		default:
			ms = append(ms, m)
		}
	}
	for _, res := range runOnBMCs(ctx, ms, func(ctx context.Context, m *profiles.Machine) powerResult {
		return netbootNow(ctx, a, r, m, pw)
	}) {
		printNetbootResult(out, res)
	}
}

// waitServed polls the control socket until serve answers (up to a minute).
func waitServed(ctx context.Context, a *app) (*status.MachinesResponse, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := fetchServed(ctx, a, 5*time.Second)
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return nil, fmt.Errorf("rackboot serve did not answer: %w", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}
