package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/siderolabs/talos/pkg/machinery/api/storage"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/config/types/block/blockhelpers"
	"github.com/siderolabs/talos/pkg/machinery/config/types/v1alpha1"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/disks"
	"github.com/dotfile/rackboot/ociimage"
	"github.com/dotfile/rackboot/profiles"
)

func init() {
	subcommands = append(subcommands, disksCmd)
}

type disksFlags struct {
	asJSON     bool
	nodes      []string
	timeout    time.Duration
	serials    []string
	wwids      []string
	method     string
	yes        bool
	forceOther bool
	noCluster  bool
	kubeconfig string
	image      string
	jobTimeout time.Duration
}

func disksCmd(a *app) *cobra.Command {
	var f disksFlags
	cmd := &cobra.Command{
		Use:   "disks [NAME...]",
		Short: "Show what is on every machine's disks: the install disk, the Ceph candidates, and whether Rook would take them",
		Long: "Asks each named machine (all of them without names) through its Talos API, with the admin\n" +
			"talosconfig made from the state directory's secrets, for its disks and what Talos's blkid\n" +
			"finds on them (partition table, filesystems, a Ceph bluestore label). The install disk is\n" +
			"the one the rack's installDisk rule matches, the Ceph candidates those cephDisks matches.\n" +
			"A Ceph candidate holding anything is NOT CLEAN (Rook refuses it); the line says the command\n" +
			"that wipes it. Exit code 1 when any Ceph candidate is not clean.\n" +
			"Talos's blkid sees a bluestore label at offset 0 only: copies Ceph keeps at 1, 10, 100 and\n" +
			"1000 GiB stay invisible here (see `rackboot disks wipe --help`).",
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDisks(cmd, a, &f, args)
		},
	}
	fl := cmd.PersistentFlags()
	fl.StringArrayVar(&f.nodes, "node", nil, "reach machine NAME at HOST[:PORT] instead of its rack address: NAME=HOST[:PORT] (repeatable; needed for machines on DHCP)")
	fl.DurationVar(&f.timeout, "timeout", 15*time.Second, "how long to wait for each machine")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print JSON")

	wipe := &cobra.Command{
		Use:   "wipe NAME --serial S... [--wwid W...]",
		Short: "Wipe disks of one machine, named by serial (or WWID), through Talos's API",
		Long: "Wipes the disks with the given serials on machine NAME with Talos's BlockDeviceWipe, then\n" +
			"reads back what Talos sees on them. Never the install disk; a disk that is not a Ceph\n" +
			"candidate only with --force-non-ceph; never a disk a Rook OSD uses (asked of the cluster:\n" +
			"OSD deployments in rook-ceph on that node; without a cluster say --no-cluster).\n" +
			"--method fast (the default) is Talos's fast wipe: the signatures blkid finds and the first\n" +
			"and last MiB. It leaves the copies of a bluestore label that Ceph ≥ 19.2.1 keeps at 1, 10,\n" +
			"100 and 1000 GiB, which Rook (ceph-volume) still finds; so, with a cluster, rackboot then runs\n" +
			"a one-shot privileged Job on the machine (namespace rackboot-system, rackboot's own image\n" +
			"through the rack's mirror) that checks the disk's serial and zeroes 4 KiB at each copy and\n" +
			"both ends' MiB again. --method zeroes writes the whole disk (hours on a large HDD) and\n" +
			"leaves nothing.\n" +
			"Talos reports no serial for SATA disks on an AHCI controller (it runs no udev helper for\n" +
			"them); name those by their WWID with --wwid, quoted, as `rackboot disks NAME` prints it.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runDisksWipe(cmd, a, &f, args[0])
		},
	}
	wfl := wipe.Flags()
	wfl.StringArrayVar(&f.serials, "serial", nil, "serial of a disk to wipe (repeatable; rackboot disks NAME lists them)")
	wfl.StringArrayVar(&f.wwids, "wwid", nil, "WWID of a disk to wipe that has no serial, such as a SATA disk on AHCI (repeatable; rackboot disks NAME lists them)")
	wfl.StringVar(&f.method, "method", "fast", "fast (signatures, first and last MiB) or zeroes (the whole disk)")
	wfl.BoolVar(&f.yes, "yes", false, "do not ask for the machine's name before wiping")
	wfl.BoolVar(&f.forceOther, "force-non-ceph", false, "also wipe disks that cephDisks does not match")
	wfl.BoolVar(&f.noCluster, "no-cluster", false, "no Kubernetes cluster runs on this rack yet: do not ask it whether a Rook OSD uses the disks")
	wfl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: kubeconfig in the state directory, else $KUBECONFIG)")
	wfl.StringVar(&f.image, "image", "", "image the zeroing Job runs (default: rackboot's own, "+ociimage.ImageName(version)+", by digest from the laptop's registry mirror, put there from this binary if missing)")
	wfl.DurationVar(&f.jobTimeout, "job-timeout", 10*time.Minute, "how long to wait for the zeroing Job")
	cmd.AddCommand(wipe)
	return cmd
}

// diskRow is one disk of one machine, as `disks` shows it.
type diskRow struct {
	Name   string `json:"name"`
	Serial string `json:"serial,omitempty"`
	// WWID is Talos's Disk.WWID; it names a disk without a serial.
	WWID      string `json:"wwid,omitempty"`
	Model     string `json:"model,omitempty"`
	Size      uint64 `json:"size"`
	Transport string `json:"transport,omitempty"`
	Install   bool   `json:"install"`
	Ceph      bool   `json:"cephCandidate"`
	// PartitionTable is what blkid found on the whole disk when it is a
	// partition table ("gpt").
	PartitionTable string   `json:"partitionTable,omitempty"`
	Partitions     []string `json:"partitions,omitempty"`
	// Filesystems: "ext4 in sda1 (olddata)", "xfs on sdb".
	Filesystems []string `json:"filesystems,omitempty"`
	// CephLabels: where Talos's blkid sees a bluestore label ("sdb").
	CephLabels []string `json:"cephLabels,omitempty"`
	// Verdict, for Ceph candidates: "clean" or "not clean".
	Verdict string `json:"verdict,omitempty"`
	// What is on it, in words; Wipe the command that would wipe it.
	What string `json:"what"`
	Wipe string `json:"wipe,omitempty"`
}

// idText is what names the disk: "serial S", else "WWID W".
func (d diskRow) idText() string {
	if d.Serial == "" && d.WWID != "" {
		return fmt.Sprintf("WWID %q", d.WWID)
	}
	return "serial " + d.Serial
}

func (d diskRow) hasContent() bool {
	return d.PartitionTable != "" || len(d.Partitions) > 0 || len(d.Filesystems) > 0 || len(d.CephLabels) > 0
}

// machineDisks is one machine's answer, or why there is none.
type machineDisks struct {
	Machine string    `json:"machine"`
	Address string    `json:"address,omitempty"`
	Error   string    `json:"error,omitempty"`
	Disks   []diskRow `json:"disks,omitempty"`
}

// diskRows describes each disk from Talos's Disk and DiscoveredVolume
// resources: which is the install disk, which match the Ceph filter, what
// blkid found on each and on its partitions, and a verdict with the wipe
// command for each Ceph candidate.
func diskRows(machine string, ds []block.DiskSpec, vols map[string]block.DiscoveredVolumeSpec, install string, ceph *regexp.Regexp) []diskRow {
	var out []diskRow
	for _, d := range ds {
		name := path.Base(d.DevPath)
		row := diskRow{Name: name, Serial: d.Serial, WWID: d.WWID, Model: d.Model, Size: d.Size, Transport: d.Transport,
			Install: name == install, Ceph: ceph != nil && ceph.MatchString(name) && name != install}
		var parts []string
		for id, v := range vols {
			if v.Parent == name && v.Type == block.DeviceTypePartition {
				parts = append(parts, id)
			}
		}
		slices.Sort(parts)
		describe := func(where string, v block.DiscoveredVolumeSpec, whole bool) {
			switch v.Name {
			case "":
			case "gpt":
				row.PartitionTable = "gpt"
			case "bluestore":
				row.CephLabels = append(row.CephLabels, where)
			default:
				fs := v.Name
				if whole {
					fs += " on " + where
				} else {
					fs += " in " + where
				}
				if v.Label != "" {
					fs += " (" + v.Label + ")"
				}
				row.Filesystems = append(row.Filesystems, fs)
			}
		}
		describe(name, vols[name], true)
		for _, p := range parts {
			row.Partitions = append(row.Partitions, p)
			describe(p, vols[p], false)
		}
		row.What = describeDisk(row)
		if row.Ceph {
			row.Verdict = "clean"
			if row.hasContent() {
				row.Verdict = "not clean"
				row.Wipe = wipeCommand(machine, row)
			}
		}
		out = append(out, row)
	}
	return out
}

// wipeCommand is the command that wipes one disk, naming it by its serial,
// else by its WWID (shell-quoted: a SATA disk's holds spaces); a disk with
// neither cannot be named safely.
func wipeCommand(machine string, d diskRow) string {
	switch {
	case d.Serial != "":
		return fmt.Sprintf("rackboot disks wipe %s --serial %s", machine, shellQuote(d.Serial))
	case d.WWID != "":
		return fmt.Sprintf("rackboot disks wipe %s --wwid %s", machine, shellQuote(d.WWID))
	}
	return fmt.Sprintf("(%s has no serial and no WWID: rackboot cannot name it safely; wipe it with talosctl wipe disk %s after checking it is the right one)", d.Name, d.Name)
}

// shellQuote is s as one word for a POSIX shell: as is when it holds only
// characters no shell treats specially, else in single quotes.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.,:/@+=") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func describeDisk(d diskRow) string {
	var parts []string
	if d.PartitionTable != "" {
		parts = append(parts, fmt.Sprintf("%s partition table with %d partition(s)", strings.ToUpper(d.PartitionTable), len(d.Partitions)))
	} else if len(d.Partitions) > 0 {
		parts = append(parts, fmt.Sprintf("%d partition(s)", len(d.Partitions)))
	}
	parts = append(parts, d.Filesystems...)
	for _, l := range d.CephLabels {
		parts = append(parts, "Ceph bluestore label on "+l)
	}
	if len(parts) == 0 {
		return "nothing Talos's blkid recognises"
	}
	return strings.Join(parts, "; ")
}

// machineEndpoints is where each machine's Talos API answers: --node
// NAME=HOST[:PORT], else its static address.
func machineEndpoints(r *profiles.Rack, nodes []string) (map[string]string, error) {
	out := map[string]string{}
	for _, n := range nodes {
		name, addr, ok := strings.Cut(n, "=")
		if !ok || name == "" || addr == "" {
			return nil, fmt.Errorf("--node %q: write NAME=HOST[:PORT]", n)
		}
		if r.Machine(name) == nil {
			return nil, fmt.Errorf("--node %q: the rack has no machine %q", n, name)
		}
		out[name] = addr
	}
	for _, m := range r.Machines {
		if _, ok := out[m.Name]; ok || m.IsDHCP() {
			continue
		}
		if p, err := netip.ParsePrefix(m.Address); err == nil {
			out[m.Name] = p.Addr().String()
		}
	}
	return out, nil
}

// adminTalosconfig is the admin talosconfig made from the state
// directory's secrets, in memory; a missing secrets file is an error, never
// created.
func adminTalosconfig(a *app, r *profiles.Rack) (*clientconfig.Config, error) {
	p := filepath.Join(a.StateDir(), profiles.SecretsFile)
	if _, err := os.Stat(p); err != nil {
		return nil, fmt.Errorf("no cluster secrets at %s: rackboot talks to the machines' Talos API with them; is --state right?", p)
	}
	b, err := profiles.LoadSecrets(p)
	if err != nil {
		return nil, err
	}
	return talosconfigOf(r, b)
}

// talosconfigOf is the rack's admin talosconfig from its secrets, in
// memory only.
func talosconfigOf(r *profiles.Rack, b *secrets.Bundle) (*clientconfig.Config, error) {
	data, err := profiles.Talosconfig(r, b)
	if err != nil {
		return nil, err
	}
	tc, err := clientconfig.FromBytes(data)
	if err != nil {
		return nil, fmt.Errorf("read back the talosconfig: %w", err)
	}
	return tc, nil
}

// talosDisks reads one machine's disks and DiscoveredVolumes and finds its
// install disk the way Talos does (machinery's blockhelpers.MatchDisks of
// the selector's CEL expression over the Disk resources; the first match).
func talosDisks(ctx context.Context, c *client.Client, sel *v1alpha1.InstallDiskSelector) ([]block.DiskSpec, map[string]block.DiscoveredVolumeSpec, string, error) {
	dl, err := safe.StateListAll[*block.Disk](ctx, c.COSI)
	if err != nil {
		return nil, nil, "", fmt.Errorf("read disks: %w", err)
	}
	var ds []block.DiskSpec
	for d := range dl.All() {
		ds = append(ds, *d.TypedSpec())
	}
	vl, err := safe.StateListAll[*block.DiscoveredVolume](ctx, c.COSI)
	if err != nil {
		return nil, nil, "", fmt.Errorf("read discovered volumes: %w", err)
	}
	vols := map[string]block.DiscoveredVolumeSpec{}
	for v := range vl.All() {
		vols[v.Metadata().ID()] = *v.TypedSpec()
	}
	install := ""
	expr, err := (&v1alpha1.InstallConfig{InstallDiskSelector: sel}).DiskMatchExpression()
	if err != nil {
		return nil, nil, "", fmt.Errorf("install disk rule: %w", err)
	}
	if expr != nil {
		matched, err := blockhelpers.MatchDisks(ctx, c.COSI, expr)
		if err != nil {
			return nil, nil, "", fmt.Errorf("match the install disk rule: %w", err)
		}
		if len(matched) > 0 {
			install = matched[0].Metadata().ID()
		}
	}
	return ds, vols, install, nil
}

func dialTalos(ctx context.Context, tc *clientconfig.Config, addr string) (*client.Client, error) {
	c, err := client.New(ctx, client.WithConfig(tc), client.WithEndpoints(addr))
	if err != nil {
		return nil, fmt.Errorf("the Talos API client: %w", err)
	}
	return c, nil
}

// readMachineDisks asks one machine.
func readMachineDisks(ctx context.Context, r *profiles.Rack, m *profiles.Machine, tc *clientconfig.Config, addr string, timeout time.Duration) machineDisks {
	md := machineDisks{Machine: m.Name, Address: addr}
	if addr == "" {
		md.Error = "no address: the machine is on DHCP; give it with --node " + m.Name + "=IP"
		return md
	}
	ceph, err := regexp.Compile(r.CephDisks(m))
	if err != nil {
		md.Error = fmt.Sprintf("cephDisks %q: %v", r.CephDisks(m), err)
		return md
	}
	sel, err := r.InstallDiskSelector(m)
	if err != nil {
		md.Error = err.Error()
		return md
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := dialTalos(ctx, tc, addr)
	if err != nil {
		md.Error = err.Error()
		return md
	}
	defer c.Close()
	ds, vols, install, err := talosDisks(ctx, c, sel)
	if err != nil {
		md.Error = "not answering: " + err.Error()
		return md
	}
	md.Disks = diskRows(m.Name, ds, vols, install, ceph)
	return md
}

func runDisks(cmd *cobra.Command, a *app, f *disksFlags, names []string) error {
	r, err := a.loadRack(cmd)
	if err != nil {
		return err
	}
	var ms []*profiles.Machine
	for _, n := range names {
		m := r.Machine(n)
		if m == nil {
			return &exitError{code: 2, err: fmt.Errorf("the rack has no machine %q", n)}
		}
		ms = append(ms, m)
	}
	if len(names) == 0 {
		for i := range r.Machines {
			ms = append(ms, &r.Machines[i])
		}
	}
	eps, err := machineEndpoints(r, f.nodes)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	tc, err := adminTalosconfig(a, r)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	var rep []machineDisks
	for _, m := range ms {
		rep = append(rep, readMachineDisks(ctx, r, m, tc, eps[m.Name], f.timeout))
	}
	out := cmd.OutOrStdout()
	if f.asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else if err := writeDisks(out, rep); err != nil {
		return err
	}
	if n := notClean(rep); n > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d Ceph candidate disk(s) not clean: Rook would refuse them; wipe each with the command shown", n)}
	}
	return nil
}

func notClean(rep []machineDisks) int {
	n := 0
	for _, m := range rep {
		for _, d := range m.Disks {
			if d.Verdict == "not clean" {
				n++
			}
		}
	}
	return n
}

// writeDisks prints the table.
func writeDisks(w io.Writer, rep []machineDisks) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MACHINE\tDISK\tSERIAL\tSIZE\tUSE\tON IT\tVERDICT")
	for _, m := range rep {
		if m.Error != "" {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t%s\t-\n", m.Machine, m.Error)
			continue
		}
		for _, d := range m.Disks {
			use := "-"
			switch {
			case d.Install:
				use = "install"
			case d.Ceph:
				use = "ceph"
			}
			verdict := "-"
			switch d.Verdict {
			case "clean":
				verdict = "clean"
			case "not clean":
				verdict = "NOT CLEAN: " + d.Wipe
			}
			serial := d.Serial
			if serial == "" {
				serial = "-" // a WWID is long: the JSON and the wipe command carry it
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Machine, d.Name, serial, humanBytes(d.Size), use, d.What, verdict)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w, "Talos sees a bluestore label at offset 0 only; copies at 1, 10, 100, 1000 GiB (Ceph ≥ 19.2.1) are not shown.")
	return err
}

func humanBytes(n uint64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %cB", float64(n)/float64(div), "kMGTPE"[exp])
}

// wipeMethods are --method's values.
var wipeMethods = map[string]storage.BlockDeviceWipeDescriptor_Method{
	"fast":   storage.BlockDeviceWipeDescriptor_FAST,
	"zeroes": storage.BlockDeviceWipeDescriptor_ZEROES,
}

// pickWipe resolves serials (and, for disks without one, WWIDs) to disks
// and refuses what must not be wiped: an unknown serial or WWID, a WWID
// given for a disk that has a serial (a serial names it), the install
// disk, a disk cephDisks does not match (unless forceOther).
func pickWipe(machine string, rows []diskRow, serials, wwids []string, forceOther bool) ([]diskRow, error) {
	type want struct{ kind, value string }
	var ws []want
	for _, s := range serials {
		ws = append(ws, want{"serial", s})
	}
	for _, w := range wwids {
		ws = append(ws, want{"WWID", w})
	}
	var out []diskRow
	for _, w := range ws {
		i := slices.IndexFunc(rows, func(d diskRow) bool {
			if w.kind == "serial" {
				return d.Serial != "" && d.Serial == w.value
			}
			return d.WWID != "" && d.WWID == w.value
		})
		if i < 0 {
			var have []string
			for _, d := range rows {
				if d.Serial != "" || d.WWID != "" {
					have = append(have, d.idText()+" ("+d.Name+")")
				}
			}
			return nil, fmt.Errorf("%s has no disk with %s %q; its disks: %s", machine, w.kind, w.value, strings.Join(have, ", "))
		}
		d := rows[i]
		switch {
		case w.kind == "WWID" && d.Serial != "":
			return nil, fmt.Errorf("%s has serial %s: name it with --serial %s (--wwid is for disks Talos reports no serial for)", d.Name, d.Serial, shellQuote(d.Serial))
		case d.Install:
			return nil, fmt.Errorf("%s (%s) is %s's install disk: rackboot never wipes it (reset the machine with Talos for that)", d.Name, d.idText(), machine)
		case !d.Ceph && !forceOther:
			return nil, fmt.Errorf("%s (%s) is not a Ceph candidate of %s (cephDisks does not match it): add --force-non-ceph to wipe it anyway", d.Name, d.idText(), machine)
		}
		if !slices.ContainsFunc(out, func(o diskRow) bool { return o.Name == d.Name }) {
			out = append(out, d)
		}
	}
	return out, nil
}

// osdNode is the node a Rook OSD deployment runs on: its pod template's
// kubernetes.io/hostname node selector, else Rook's
// topology-location-host label.
func osdNode(d appsv1.Deployment) string {
	if n := d.Spec.Template.Spec.NodeSelector["kubernetes.io/hostname"]; n != "" {
		return n
	}
	return d.Labels["topology-location-host"]
}

// osdBlockPath is ROOK_BLOCK_PATH of the OSD's containers: the device
// Rook prepared the OSD on.
func osdBlockPath(d appsv1.Deployment) string {
	spec := d.Spec.Template.Spec
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		for _, e := range c.Env {
			if e.Name == "ROOK_BLOCK_PATH" && e.Value != "" {
				return e.Value
			}
		}
	}
	return ""
}

// osdUsing says which Rook OSD deployment uses disk d of node, from
// what Rook puts in each OSD deployment: its node and ROOK_BLOCK_PATH
// (/dev/sdX, or a /dev/disk/by-id path holding the serial or the NAA
// WWID as wwn-0x…). An OSD on the node whose device is unknown, names a
// disk the machine no longer has under that name (Rook's raw OSDs find
// their disk again by OSD id after a reboot renames it), or names a by-id
// path while the disk has no serial to match it with, blocks every disk
// with a bluestore label.
func osdUsing(deps []appsv1.Deployment, node string, d diskRow, names []string) string {
	for _, dep := range deps {
		if osdNode(dep) != node {
			continue
		}
		bp := osdBlockPath(dep)
		id := dep.Labels["ceph-osd-id"]
		who := dep.Name
		if id != "" {
			who = "OSD " + id + " (" + dep.Name + ")"
		}
		switch {
		case bp == "":
			if len(d.CephLabels) > 0 {
				return who + " runs on " + node + " and its device is not recorded"
			}
		case path.Base(bp) == d.Name, d.Serial != "" && strings.Contains(bp, d.Serial),
			strings.HasPrefix(d.WWID, "naa.") && strings.Contains(bp, "wwn-0x"+d.WWID[len("naa."):]):
			return who + " uses " + bp
		case strings.Contains(bp, "/by-") && d.Serial == "" && len(d.CephLabels) > 0:
			return who + " runs on " + node + " and names its disk " + bp + ", which cannot be matched to " + d.Name + " (it has no serial) and may be it"
		case strings.HasPrefix(bp, "/dev/") && !strings.Contains(bp, "/by-") && !slices.Contains(names, path.Base(bp)) && len(d.CephLabels) > 0:
			return who + " was prepared on " + bp + ", which " + node + " no longer has under that name"
		}
	}
	return ""
}

func runDisksWipe(cmd *cobra.Command, a *app, f *disksFlags, name string) error {
	out := cmd.OutOrStdout()
	method, ok := wipeMethods[f.method]
	if !ok {
		return &exitError{code: 2, err: fmt.Errorf("--method %q: use fast or zeroes", f.method)}
	}
	if len(f.serials) == 0 && len(f.wwids) == 0 {
		return &exitError{code: 2, err: fmt.Errorf("say which disks to wipe: --serial S, or --wwid W for a disk without a serial (see `rackboot disks %s`)", name)}
	}
	r, err := a.loadRack(cmd)
	if err != nil {
		return err
	}
	m := r.Machine(name)
	if m == nil {
		return &exitError{code: 2, err: fmt.Errorf("the rack has no machine %q", name)}
	}
	eps, err := machineEndpoints(r, f.nodes)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	tc, err := adminTalosconfig(a, r)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	md := readMachineDisks(ctx, r, m, tc, eps[name], f.timeout)
	if md.Error != "" {
		return &exitError{code: 1, err: fmt.Errorf("%s: %s", name, md.Error)}
	}
	picked, err := pickWipe(name, md.Disks, f.serials, f.wwids, f.forceOther)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	cs, err := checkRook(ctx, a, f, name, picked, md.Disks, out)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	for _, d := range picked {
		fmt.Fprintf(out, "%s: %s (%s, %s): %s\n", name, d.Name, d.idText(), humanBytes(d.Size), d.What)
	}
	if !f.yes {
		fmt.Fprintf(out, "wipe these disks of %s with the %s method? Type the machine's name to go on: ", name, f.method)
		line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
		if strings.TrimSpace(line) != name {
			return &exitError{code: 1, err: errors.New("not confirmed: nothing was wiped")}
		}
	}
	req := &storage.BlockDeviceWipeRequest{}
	for _, d := range picked {
		req.Devices = append(req.Devices, &storage.BlockDeviceWipeDescriptor{Device: d.Name, Method: method})
	}
	wctx := ctx
	if method == storage.BlockDeviceWipeDescriptor_FAST {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, f.timeout+time.Minute)
		defer cancel()
	}
	c, err := dialTalos(wctx, tc, eps[name])
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	defer c.Close()
	if err := c.BlockDeviceWipe(wctx, req); err != nil {
		return &exitError{code: 1, err: fmt.Errorf("the wipe on %s was refused or failed in Talos: %w", name, err)}
	}
	jobRan := false
	if method == storage.BlockDeviceWipeDescriptor_FAST && cs != nil {
		image, err := zeroImage(a, f.image, out)
		if err != nil {
			return &exitError{code: 1, err: fmt.Errorf("the fast wipe through Talos is done; rackboot's image for the zeroing Job: %w (or name one with --image)", err)}
		}
		if err := zeroLabelCopies(ctx, cs, name, image, picked, f.jobTimeout, out); err != nil {
			return &exitError{code: 1, err: fmt.Errorf("the fast wipe through Talos is done, the label copies are not zeroed: %w", err)}
		}
		jobRan = true
	}
	after := readMachineDisks(ctx, r, m, tc, eps[name], f.timeout)
	if after.Error != "" {
		return &exitError{code: 1, err: fmt.Errorf("wiped; reading %s's disks back failed: %s", name, after.Error)}
	}
	left := 0
	for _, d := range picked {
		i := slices.IndexFunc(after.Disks, func(x diskRow) bool { return x.Name == d.Name })
		if i < 0 {
			fmt.Fprintf(out, "%s: %s is gone from Talos's disk list after the wipe\n", name, d.Name)
			continue
		}
		now := after.Disks[i]
		if now.hasContent() {
			left++
			fmt.Fprintf(out, "%s: %s wiped (%s), Talos still sees: %s\n", name, d.Name, f.method, now.What)
		} else {
			fmt.Fprintf(out, "%s: %s wiped (%s): Talos sees nothing on it now\n", name, d.Name, f.method)
		}
		if len(d.CephLabels) > 0 && method == storage.BlockDeviceWipeDescriptor_FAST && !jobRan {
			fmt.Fprintf(out, "  %s had a Ceph bluestore label. Talos's fast wipe clears the one at offset 0 only: Ceph ≥ 19.2.1 keeps copies at %s,\n"+
				"  which Talos cannot see and Rook's ceph-volume still finds, so Rook may refuse the disk. With --no-cluster\n"+
				"  rackboot cannot run the Job that zeroes them: once Kubernetes runs, wipe again without --no-cluster, or now\n"+
				"  `%s --method zeroes` (writes all %s: hours on a large HDD).\n",
				d.Name, copiesText(d.Size), wipeCommand(name, d), humanBytes(d.Size))
		}
	}
	if left > 0 {
		return &exitError{code: 1, err: fmt.Errorf("%d disk(s) still hold something after the wipe", left)}
	}
	return nil
}

// copiesText lists the label copies beyond offset 0 a disk of that size
// holds.
func copiesText(size uint64) string {
	var s []string
	for _, off := range disks.LabelCopies(int64(size)) {
		if off > 0 {
			s = append(s, disks.FormatOffset(off))
		}
	}
	if len(s) == 0 {
		return "no offset beyond 0 on a disk this small"
	}
	return strings.Join(s, ", ")
}

// checkRook refuses disks a Rook OSD uses, asking the cluster for the OSD
// deployments in rook-ceph, and returns the client (the zeroing Job uses
// it). With --no-cluster it does not ask and returns nil.
func checkRook(ctx context.Context, a *app, f *disksFlags, node string, picked, all []diskRow, out io.Writer) (kubernetes.Interface, error) {
	if f.noCluster {
		fmt.Fprintln(out, "--no-cluster: not asking Kubernetes whether a Rook OSD uses these disks (and not zeroing the label copies)")
		return nil, nil
	}
	cantAsk := func(err error) error {
		return fmt.Errorf("cannot ask the cluster whether a Rook OSD uses these disks (%w); if no cluster runs on this rack yet, add --no-cluster", err)
	}
	cfg, _, err := a.restConfig(f.kubeconfig)
	if err != nil {
		return nil, cantAsk(err)
	}
	cfg.Timeout = f.timeout
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, cantAsk(err)
	}
	deps, err := cs.AppsV1().Deployments(rookNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=rook-ceph-osd"})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, cantAsk(err)
	}
	var items []appsv1.Deployment
	if deps != nil {
		items = deps.Items
	}
	var names []string
	for _, d := range all {
		names = append(names, d.Name)
	}
	for _, d := range picked {
		if why := osdUsing(items, node, d, names); why != "" {
			return nil, fmt.Errorf("%s on %s is Rook's: %s; take the OSD out and remove it first (Rook's OSD removal guide), then wipe", d.Name, node, why)
		}
	}
	return cs, nil
}

// rookNamespace is where the rook bundle runs the Ceph cluster.
const rookNamespace = "rook-ceph"
