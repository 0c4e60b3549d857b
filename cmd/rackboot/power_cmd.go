package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/bmc"
	"github.com/dotfile/rackboot/kubestate"
	"github.com/dotfile/rackboot/profiles"
)

// `rackboot power status|on|off|cycle [NAME...|--all]`: the machines'
// power through their BMCs (rack file bmc:, passwords from the state dir
// or the environment). Machines are handled in parallel; machines that
// share a BMC address one after the other (one request in flight per BMC).

// powerActions are power's subcommands.
var powerActions = []string{"status", "on", "off", "cycle"}

type powerFlags struct {
	all     bool
	yes     bool
	asJSON  bool
	netboot bool // on only: a network boot once first
}

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		cmd := &cobra.Command{
			Use:   "power",
			Short: "Show or change machines' power through their BMCs (IPMI or Redfish)",
			Long: "Talks to each machine's BMC as the rack file's bmc: says; the password comes from\n" +
				"`rackboot bmc set-password NAME` or RACKBOOT_BMC_PASSWORD_<NAME> / RACKBOOT_BMC_PASSWORD.",
		}
		for _, action := range powerActions {
			cmd.AddCommand(powerCmd(a, action))
		}
		return cmd
	})
}

func powerCmd(a *app, action string) *cobra.Command {
	f := &powerFlags{}
	short := map[string]string{
		"status": "Print each machine's power state as its BMC reports it",
		"on":     "Power machines on (nothing for those already on)",
		"off":    "Power machines off, hard (asks first for more than one machine)",
		"cycle":  "Shut machines down (ACPI, then hard) and power them on (asks first for more than one)",
	}[action]
	cmd := &cobra.Command{
		Use:   action + " [NAME...|--all]",
		Short: short,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPower(cmd, a, action, args, f)
		},
	}
	cmd.Flags().BoolVar(&f.all, "all", false, "every machine with a bmc: in the rack file")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print the results as JSON")
	if action == "off" || action == "cycle" {
		cmd.Flags().BoolVarP(&f.yes, "yes", "y", false, "do not ask for confirmation")
	}
	registerKube(cmd)
	if action == "on" {
		cmd.Flags().BoolVar(&f.netboot, "netboot", false, "set a network boot once first (read back and reported), then power on; a machine that is on is power-cycled")
	}
	return cmd
}

func runPower(cmd *cobra.Command, a *app, action string, args []string, f *powerFlags) error {
	r, err := a.loadRack(cmd)
	if err != nil {
		return err
	}
	ms, skipped, err := selectTargets(r, args, f.all)
	if err != nil {
		return err
	}
	for _, name := range skipped {
		fmt.Fprintf(cmd.ErrOrStderr(), "%s has no bmc: in the rack file: skipped\n", name)
	}
	if err := confirmPower(cmd, action, machineNames(ms), f); err != nil {
		return err
	}
	pw, err := a.bmcPasswords(cmd.Context())
	if err != nil {
		return err
	}
	results := runOnBMCs(cmd.Context(), ms, func(ctx context.Context, m *profiles.Machine) powerResult {
		if f.netboot {
			return netbootNow(ctx, a, r, m, pw)
		}
		return powerOne(ctx, a, m, pw, action)
	})
	return printResults(cmd.OutOrStdout(), results, f.asJSON, false)
}

// selectTargets picks the machines named, or with all every machine that
// has a bmc: (skipped lists the others). A machine named without a bmc:
// is an error that says what to add.
func selectTargets(r *profiles.Rack, args []string, all bool) (ms []*profiles.Machine, skipped []string, err error) {
	switch {
	case all && len(args) > 0:
		return nil, nil, errors.New("name machines or use --all, not both")
	case !all && len(args) == 0:
		return nil, nil, fmt.Errorf("name the machines (one of %s) or use --all", strings.Join(rackNames(r), ", "))
	case all:
		for i := range r.Machines {
			if m := &r.Machines[i]; m.BMC != nil {
				ms = append(ms, m)
			} else {
				skipped = append(skipped, m.Name)
			}
		}
		if len(ms) == 0 {
			return nil, skipped, errors.New("no machine in the rack file has a bmc: add bmc: {address, user} to the machines rackboot should power")
		}
		return ms, skipped, nil
	}
	seen := map[string]bool{}
	for _, name := range args {
		m := r.Machine(name)
		switch {
		case m == nil:
			return nil, nil, fmt.Errorf("no machine named %q in the rack file: write one of %s", name, strings.Join(rackNames(r), ", "))
		case m.BMC == nil:
			return nil, nil, fmt.Errorf("%s has no bmc: in the rack file: add bmc: {address: <its BMC>, user: <login>} under it", name)
		case !seen[name]:
			seen[name] = true
			ms = append(ms, m)
		}
	}
	return ms, nil, nil
}

func rackNames(r *profiles.Rack) []string {
	var ns []string
	for _, m := range r.Machines {
		ns = append(ns, m.Name)
	}
	return ns
}

func machineNames(ms []*profiles.Machine) []string {
	var ns []string
	for _, m := range ms {
		ns = append(ns, m.Name)
	}
	return ns
}

// powerNeedsConfirm decides: ask before acting, or refuse (--all off
// without --yes). off and cycle on more than one machine can take a
// cluster down.
func powerNeedsConfirm(action string, n int, all, yes bool) (ask bool, refuse error) {
	if yes || (action != "off" && action != "cycle") {
		return false, nil
	}
	if all && action == "off" {
		return false, errors.New("power off --all takes the whole rack down: add --yes if that is what you want")
	}
	return n > 1, nil
}

// confirmPower asks on the terminal; without one (a script), --yes is
// needed.
func confirmPower(cmd *cobra.Command, action string, ns []string, f *powerFlags) error {
	ask, err := powerNeedsConfirm(action, len(ns), f.all, f.yes)
	if err != nil || !ask {
		return err
	}
	in, ok := cmd.InOrStdin().(*os.File)
	if !ok || !isTerminal(in) {
		return fmt.Errorf("power %s on %d machines (%s) can take the cluster down: add --yes to do it without a question", action, len(ns), strings.Join(ns, ", "))
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "power %s %s? This can take the cluster down. [y/N] ", action, strings.Join(ns, ", "))
	line, _ := bufio.NewReader(in).ReadString('\n')
	if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
		return errors.New("nothing done")
	}
	return nil
}

// runOnBMCs runs fn for every machine: in parallel, except that machines
// behind the same BMC address go one after the other. Results come back
// in the order of ms.
func runOnBMCs(ctx context.Context, ms []*profiles.Machine, fn func(context.Context, *profiles.Machine) powerResult) []powerResult {
	if ctx == nil {
		ctx = context.Background()
	}
	out := make([]powerResult, len(ms))
	groups := map[string][]int{}
	var order []string
	for i, m := range ms {
		key := bmcKey(m.BMC.Address)
		if _, ok := groups[key]; !ok {
			order = append(order, key)
		}
		groups[key] = append(groups[key], i)
	}
	var wg sync.WaitGroup
	for _, key := range order {
		wg.Add(1)
		go func(idx []int) {
			defer wg.Done()
			for _, i := range idx {
				out[i] = fn(ctx, ms[i])
			}
		}(groups[key])
	}
	wg.Wait()
	return out
}

// bmcKey is a BMC address without scheme and case, to group machines.
func bmcKey(addr string) string {
	addr = strings.ToLower(addr)
	if i := strings.Index(addr, "://"); i >= 0 {
		addr = addr[i+3:]
	}
	return strings.TrimSuffix(addr, "/")
}

// powerResult is one machine's row.
type powerResult struct {
	Name     string `json:"name"`
	BMC      string `json:"bmc"`
	Protocol string `json:"protocol,omitempty"`
	// State is the power state (status, check) or what was done.
	State string `json:"state,omitempty"`
	// TLS: "verified", "not verified", or "" (IPMI, or not connected).
	TLS   string `json:"tls,omitempty"`
	Note  string `json:"note,omitempty"`
	Error string `json:"error,omitempty"`
	// Override is what the BMC read back after a network boot once.
	Override *bmc.BootOverride `json:"override,omitempty"`
}

// bmcConfig is how to reach m's BMC; an error when it has no password.
func bmcConfig(a *app, m *profiles.Machine, pw *profiles.BMCPasswords) (bmc.Config, string, error) {
	b := m.BMC
	password, from, ok := pw.Get(m.Name)
	if !ok {
		return bmc.Config{}, "", pw.Missing(m.Name)
	}
	proto, err := bmc.ParseProtocol(b.Protocol)
	if err != nil {
		return bmc.Config{}, "", err
	}
	cfg := bmc.Config{Address: b.Address, Protocol: proto, User: b.User, Password: password,
		SystemID: b.SystemID, VerifyTLS: b.VerifyTLS || b.CAFile != "", Log: a.log.With("machine", m.Name)}
	if b.CAFile != "" {
		path := b.CAFile
		if !filepath.IsAbs(path) {
			path = filepath.Join(filepath.Dir(a.rackPath), path)
		}
		pem, err := os.ReadFile(path)
		if err != nil {
			return bmc.Config{}, "", fmt.Errorf("bmc caFile: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return bmc.Config{}, "", fmt.Errorf("bmc caFile %s holds no PEM certificate", path)
		}
	}
	return cfg, a.passwordSource(from, m.Name), nil
}

// passwordSource says in words where a password came from (never what):
// under --kube the file is the cluster's Secret.
func (a *app) passwordSource(from, name string) string {
	if from == profiles.BMCPasswordFromFile && a.kube != nil {
		return "password from secret " + a.kube.Namespace() + "/" + kubestate.BMCPasswordsName
	}
	return passwordSource(from, name)
}

// passwordSource says in words where a password came from (never what).
func passwordSource(from, name string) string {
	switch from {
	case profiles.BMCPasswordFromEnvMachine:
		return "password from " + profiles.BMCPasswordEnv + "_" + profiles.BMCPasswordEnvName(name)
	case profiles.BMCPasswordFromEnv:
		return "password from " + profiles.BMCPasswordEnv
	}
	return "password from " + profiles.BMCPasswordsFile
}

// openBMC opens m's BMC and fills the row's BMC, protocol and TLS; on
// failure the row carries the error.
func openBMC(ctx context.Context, a *app, m *profiles.Machine, pw *profiles.BMCPasswords, res *powerResult) (bmc.Driver, string, bool) {
	res.Name, res.BMC = m.Name, m.BMC.Address
	cfg, source, err := bmcConfig(a, m, pw)
	if err != nil {
		res.Error = err.Error()
		return nil, "", false
	}
	d, err := bmc.Open(ctx, cfg)
	if err != nil {
		res.Error = redactErr(err, cfg.Password)
		var certErr *tls.CertificateVerificationError
		if errors.As(err, &certErr) {
			res.Error += "; in the rack file, write caFile: <the CA's PEM file> under bmc:, or drop verifyTLS and caFile to accept it unverified"
		}
		return nil, source, false
	}
	info := d.Info()
	res.Protocol = string(info.Protocol)
	if info.Protocol == bmc.ProtocolRedfish {
		res.TLS = tlsWords(info)
	}
	return d, source, true
}

func tlsWords(info bmc.Info) string {
	switch {
	case strings.HasPrefix(info.Endpoint, "http://"):
		return "none (plain http)"
	case info.TLSVerified:
		return "verified"
	}
	return "not verified"
}

// redactErr is err's text without the password (bmc errors never hold
// it; this is the last guard).
func redactErr(err error, password string) string {
	s := err.Error()
	if password != "" {
		s = strings.ReplaceAll(s, password, "[redacted]")
	}
	return s
}

// powerOne does action on m and returns its row.
func powerOne(ctx context.Context, a *app, m *profiles.Machine, pw *profiles.BMCPasswords, action string) powerResult {
	var res powerResult
	d, _, ok := openBMC(ctx, a, m, pw, &res)
	if !ok {
		return res
	}
	defer d.Close()
	before, err := d.PowerState(ctx)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	done, err := doPower(ctx, d, action, before)
	res.State = done
	if err != nil {
		res.Error = err.Error()
	}
	return res
}

// doPower acts and says what was done, given the state before.
func doPower(ctx context.Context, d bmc.Driver, action string, before bmc.State) (string, error) {
	say, act := powerPlan(action, before)
	if act == nil {
		return say, nil
	}
	return say, act(d)(ctx)
}

// powerPlan decides what an action does from the state before: the words
// for the result, and the driver call (nil: nothing to do).
func powerPlan(action string, before bmc.State) (string, func(bmc.Driver) func(context.Context) error) {
	switch {
	case action == "status":
		return string(before), nil
	case action == "on" && before == bmc.StateOn:
		return "already on", nil
	case action == "on":
		return "powered on", func(d bmc.Driver) func(context.Context) error { return d.PowerOn }
	case action == "off" && before == bmc.StateOff:
		return "already off", nil
	case action == "off":
		return "powered off", func(d bmc.Driver) func(context.Context) error { return d.PowerOff }
	case action == "cycle" && before == bmc.StateOff:
		return "was off: powered on", func(d bmc.Driver) func(context.Context) error { return d.PowerOn }
	case action == "cycle":
		return "power-cycled", func(d bmc.Driver) func(context.Context) error { return d.PowerCycle }
	}
	return "", nil
}

// printResults prints the rows as a table or JSON; an error (exit code 1)
// when any machine failed.
func printResults(w io.Writer, rs []powerResult, asJSON, withTLS bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		if err := enc.Encode(rs); err != nil {
			return err
		}
	} else if err := writePowerTable(w, rs, withTLS); err != nil {
		return err
	}
	failed := slices.DeleteFunc(slices.Clone(rs), func(r powerResult) bool { return r.Error == "" })
	if len(failed) > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d of %d machine(s) failed: %s", len(failed), len(rs), strings.Join(resultNames(failed), ", "))}
	}
	return nil
}

func resultNames(rs []powerResult) []string {
	var ns []string
	for _, r := range rs {
		ns = append(ns, r.Name)
	}
	return ns
}

// writePowerTable: NAME, BMC, PROTOCOL, STATE/RESULT, (TLS,) NOTE; an
// error goes in NOTE.
func writePowerTable(w io.Writer, rs []powerResult, withTLS bool) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "NAME\tBMC\tPROTOCOL\tSTATE/RESULT\t"
	if withTLS {
		head += "TLS\t"
	}
	fmt.Fprintln(tw, head+"NOTE")
	for _, r := range rs {
		state, note := orDash(r.State), r.Note
		if r.Error != "" {
			state, note = "FAILED", joinNote(r.Error, note)
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t", r.Name, r.BMC, orDash(r.Protocol), state)
		if withTLS {
			line += orDash(r.TLS) + "\t"
		}
		fmt.Fprintln(tw, line+note)
	}
	return tw.Flush()
}

func joinNote(a, b string) string {
	if b == "" {
		return a
	}
	return a + "; " + b
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
