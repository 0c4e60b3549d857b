package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
	"github.com/dotfile/rackboot/status"
)

func init() {
	subcommands = append(subcommands, func(a *app) *cobra.Command {
		var (
			asJSON  bool
			timeout time.Duration
		)
		cmd := &cobra.Command{
			Use:   "machines",
			Short: "List the rack's machines and the unknown ones that netbooted (to adopt)",
			Long: "Lists the machines of the rack file with their stage, and the machines that are not in it\n" +
				"but asked to netboot (MAC, address, first and last seen, arch and firmware as their\n" +
				"network boot showed them, stage). With `serve --discover` (or discover: true in the rack\n" +
				"file) those boot Talos without a config and wait in its maintenance mode; adopt one with\n" +
				"`rackboot machine adopt MAC --name NAME --role ROLE`.\n" +
				"Asks the rackboot serve running for this state dir; without one, reads what it last saved\n" +
				"(machines.json) and changes nothing. With --kube, the machine records of the rackboot\n" +
				"running in Kubernetes (rackboot handoff).",
			Args: cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				r, err := a.loadRack(cmd)
				if err != nil {
					return err
				}
				parent := cmd.Context()
				if parent == nil {
					parent = context.Background()
				}
				ctx, cancel := context.WithTimeout(parent, timeout)
				defer cancel()
				ms, now, from, err := a.machinesSnapshot(ctx)
				if err != nil {
					return err
				}
				rep := buildMachinesReport(r, ms, now, from)
				if from == fromServe {
					// Only a running serve knows the machine is still there.
					fillHardware(ctx, &rep, readMaintenanceHardware)
				}
				if asJSON {
					enc := json.NewEncoder(cmd.OutOrStdout())
					enc.SetIndent("", "  ")
					return enc.Encode(rep)
				}
				return writeMachinesTable(cmd.OutOrStdout(), rep, a.rackPath)
			},
		}
		cmd.Flags().BoolVar(&asJSON, "json", false, "print the machines as JSON")
		cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Second, "how long to wait for the running serve")
		registerKube(cmd)
		return cmd
	})
}

// Where a machines report comes from.
const (
	fromServe = "serve"      // the running serve, through its control socket
	fromState = "state file" // machines.json, no serve running
	fromKube  = "kubernetes" // the records of the rackboot in Kubernetes (--kube)
)

// inventorySnapshot asks the running serve for its machines, or reads the
// state dir when none runs (read only: nothing is created or written).
func inventorySnapshot(ctx context.Context, stateDir string) ([]inventory.Machine, time.Time, string, error) {
	resp, err := status.Fetch(ctx, controlClient(stateDir, 10*time.Second), controlBase)
	if err == nil {
		return resp.Machines, resp.Time, fromServe, nil
	}
	if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
		return nil, time.Time{}, "", fmt.Errorf("ask the running rackboot serve: %w", err)
	}
	st, err := inventory.Open(stateDir)
	if err != nil {
		return nil, time.Time{}, "", err
	}
	return st.Machines(), time.Now(), fromState, nil
}

// machinesReport is `rackboot machines --json`.
type machinesReport struct {
	Time time.Time `json:"time"`
	// From is "serve" (the running serve), "kubernetes" (--kube: the
	// records in the cluster, discovered machines included) or "state file" (what serve last
	// saved; discovered machines reach it only along with other changes).
	From       string              `json:"from"`
	Known      []knownMachine      `json:"known"`
	Discovered []discoveredMachine `json:"discovered"`
}

// knownMachine is a machine of the rack file.
type knownMachine struct {
	Name string `json:"name"`
	Role string `json:"role"`
	// MACs and Address are the rack file's (Address: dhcp or CIDR).
	MACs    []string `json:"macs"`
	Address string   `json:"address"`
	// Addr is where it was last seen; Stage "" means never seen.
	Addr      netip.Addr `json:"addr,omitzero"`
	Stage     string     `json:"stage"`
	Installed bool       `json:"installed"`
	LastSeen  time.Time  `json:"lastSeen,omitzero"`
}

// discoveredMachine is a machine that is not in the rack file but asked to
// netboot.
type discoveredMachine struct {
	MAC       string     `json:"mac"`
	Addr      netip.Addr `json:"addr,omitzero"`
	FirstSeen time.Time  `json:"firstSeen"`
	LastSeen  time.Time  `json:"lastSeen"`
	// Arch is amd64 or arm64, from the firmware type.
	Arch string `json:"arch,omitempty"`
	// Firmware is the firmware type the machine's DHCP request gave
	// (option 93: bios, efi-x64, efi-arm64, http-x64, http-arm64), else
	// its iPXE's.
	Firmware string `json:"firmware,omitempty"`
	UUID     string `json:"uuid,omitempty"`
	Serial   string `json:"serial,omitempty"`
	// Stage is discovery-boot when it booted Talos without a config (it
	// waits in maintenance mode), discovered when it was told to wait.
	Stage string `json:"stage"`
	// waiting: its last network boot was the discovery boot (it may be
	// in Talos's maintenance mode).
	waiting bool
	// AdoptedAs names the rack machine that now has this MAC: adopted,
	// not booted since.
	AdoptedAs string `json:"adoptedAs,omitempty"`
	// Hardware is what Talos's maintenance API reports (disks, links,
	// system information), read live for a machine waiting in the
	// discovery boot at a known address; null otherwise. HardwareError
	// says why a machine that should answer did not; HardwareHint how to
	// look by hand.
	Hardware      *discoveredHardware `json:"hardware"`
	HardwareError string              `json:"hardwareError,omitempty"`
	HardwareHint  string              `json:"hardwareHint,omitempty"`
}

// discoveredHardware is a discovered machine's inventory from Talos's
// maintenance API.
type discoveredHardware struct {
	// System is SMBIOS's system information (absent without SMBIOS).
	System *hardwareSystem `json:"system,omitempty"`
	Disks  []hardwareDisk  `json:"disks"`
	Links  []hardwareLink  `json:"links"`
}

// hardwareSystem is Talos's hardware.SystemInformation.
type hardwareSystem struct {
	UUID         string `json:"uuid,omitempty"`
	Serial       string `json:"serial,omitempty"`
	Manufacturer string `json:"manufacturer,omitempty"`
	Product      string `json:"product,omitempty"`
}

// hardwareDisk is one of Talos's block.Disk resources.
type hardwareDisk struct {
	Name       string `json:"name"`
	Model      string `json:"model,omitempty"`
	Serial     string `json:"serial,omitempty"`
	WWID       string `json:"wwid,omitempty"`
	Size       uint64 `json:"size"`
	Transport  string `json:"transport,omitempty"`
	Rotational bool   `json:"rotational"`
	Readonly   bool   `json:"readonly,omitempty"`
	CDROM      bool   `json:"cdrom,omitempty"`
}

// hardwareLink is one of Talos's network.LinkStatus resources.
type hardwareLink struct {
	Name string `json:"name"`
	MAC  string `json:"mac"`
	// PermanentMAC is the NIC's own address when the link now has
	// another (a bond member).
	PermanentMAC string `json:"permanentMac,omitempty"`
	Up           bool   `json:"up"`
}

// hardwareHint is how to read a discovered machine's disks today.
func hardwareHint(addr netip.Addr) string {
	ip := "IP"
	if addr.IsValid() {
		ip = addr.String()
	}
	return "talosctl -n " + ip + " get disks --insecure"
}

// buildMachinesReport splits the inventory into the rack's machines (in
// rack file order) and the discovered ones (most recently seen first).
func buildMachinesReport(r *profiles.Rack, ms []inventory.Machine, now time.Time, from string) machinesReport {
	rep := machinesReport{Time: now, From: from, Known: []knownMachine{}, Discovered: []discoveredMachine{}}
	byName := map[string]inventory.Machine{}
	for _, m := range ms {
		if m.Name != "" {
			byName[m.Name] = m
		}
	}
	rackMAC := rackMACNames(r)
	for i := range r.Machines {
		rm := &r.Machines[i]
		k := knownMachine{Name: rm.Name, Role: string(rm.Role), MACs: []string{}, Address: rm.Address}
		if k.Address == "" {
			k.Address = "dhcp"
		}
		for _, mac := range rm.MACs() {
			k.MACs = append(k.MACs, mac.String())
		}
		if m, ok := byName[rm.Name]; ok {
			k.Addr, k.Stage, k.Installed, k.LastSeen = m.Addr, m.Stage, m.Installed, m.LastSeen
		}
		rep.Known = append(rep.Known, k)
	}
	for _, m := range ms {
		if m.Name != "" {
			continue
		}
		d := discovered(m)
		d.AdoptedAs, _ = rackMAC(d.MAC)
		if n, ok := byName[d.AdoptedAs]; ok && n.Stage != "" {
			// Adopted and seen under its name since (its config went
			// through the maintenance API): no longer waiting.
			d.waiting = false
		}
		rep.Discovered = append(rep.Discovered, d)
	}
	slices.SortStableFunc(rep.Discovered, func(a, b discoveredMachine) int { return b.LastSeen.Compare(a.LastSeen) })
	return rep
}

// discovered reads an unknown machine's inventory record.
func discovered(m inventory.Machine) discoveredMachine {
	d := discoveredMachine{MAC: m.Key, Addr: m.Addr, FirstSeen: m.FirstSeen, LastSeen: m.LastSeen, Stage: m.Stage}
	var ipxeArch string
	for _, e := range m.Timeline {
		s := parseSeen(e.Stage, e.Detail)
		if s.dhcpArch != "" {
			d.Firmware = s.dhcpArch
		}
		if s.ipxeArch != "" {
			ipxeArch = s.ipxeArch
		}
		if s.uuid != "" {
			d.UUID = s.uuid
		}
		if s.serial != "" {
			d.Serial = s.serial
		}
	}
	if d.Firmware == "" {
		d.Firmware = ipxeArch
	}
	if a := pxe.ParseArch(d.Firmware); a != pxe.ArchUnknown {
		d.Arch = a.CPU()
	} else {
		d.Firmware = ""
	}
	d.HardwareHint = hardwareHint(d.Addr)
	d.waiting = inDiscoveryBoot(m)
	return d
}

// inDiscoveryBoot reports whether the machine's last network boot was the
// discovery boot: the latest boot decision on its timeline (a boot
// script, the wait script, a local boot, or Talos's own progress) is
// discovery-boot. DHCP and downloads after it do not change that (the
// Talos it booted asks for an address too).
func inDiscoveryBoot(m inventory.Machine) bool {
	for i := len(m.Timeline) - 1; i >= 0; i-- {
		switch m.Timeline[i].Stage {
		case pxe.StageDiscoveryBoot:
			return true
		case pxe.StageDHCP, pxe.StageIPXE, pxe.StageKernel, pxe.StageInitrd, inventory.StageDenied:
			continue
		default:
			return false
		}
	}
	return false
}

// hardwareReader reads one machine's hardware (dialMaintenance's Hardware
// in the command; a loopback server in tests).
type hardwareReader func(ctx context.Context, addr netip.Addr) (*discoveredHardware, error)

// readMaintenanceHardware is hardwareReader through Talos's maintenance
// API on port 50000.
func readMaintenanceHardware(ctx context.Context, addr netip.Addr) (*discoveredHardware, error) {
	m, err := dialMaintenance(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	return m.Hardware(ctx)
}

// maxHardwareReads bounds the maintenance API reads in flight.
const maxHardwareReads = 8

// fillHardware reads, in parallel (at most maxHardwareReads at a time),
// the hardware of every discovered machine waiting in the discovery boot
// at a known address. One that does not answer gets HardwareError; the
// others are not held up by it beyond ctx.
func fillHardware(ctx context.Context, rep *machinesReport, read hardwareReader) {
	sem := make(chan struct{}, maxHardwareReads)
	var wg sync.WaitGroup
	for i := range rep.Discovered {
		d := &rep.Discovered[i]
		if !d.waiting || !d.Addr.IsValid() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				d.HardwareError = fmt.Sprintf("machine at %s: Talos maintenance API: not asked: %v", d.Addr, ctx.Err())
				return
			}
			defer func() { <-sem }()
			hw, err := read(ctx, d.Addr)
			if err != nil {
				d.HardwareError = err.Error()
				return
			}
			d.Hardware, d.HardwareHint = hw, ""
		}()
	}
	wg.Wait()
}

// compactHardware is the table's HARDWARE cell: the disks (read-only ones
// and CD drives left out) with name and size, then how many links.
func compactHardware(hw *discoveredHardware) string {
	var disks []string
	for _, d := range hw.Disks {
		if d.Readonly || d.CDROM || d.Size == 0 {
			continue
		}
		disks = append(disks, d.Name+" "+sizeText(d.Size))
	}
	links := 0
	for _, l := range hw.Links {
		if l.MAC != "" && l.MAC != "00:00:00:00:00:00" {
			links++
		}
	}
	return fmt.Sprintf("%s: %s; %s", plural(len(disks), "disk"), dashIfEmpty(strings.Join(disks, ", ")), plural(links, "NIC"))
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// sizeText is a byte count in binary units with one decimal (2.0 GiB).
func sizeText(b uint64) string {
	const unit = 1024
	if b < unit {
		return strconv.FormatUint(b, 10) + " B"
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit && exp < 5; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// seen is what one timeline entry tells of a machine.
type seen struct {
	dhcpArch     string // firmware type from its DHCP request
	ipxeArch     string // firmware type its iPXE reported
	uuid, serial string
}

var (
	dhcpArchRE = regexp.MustCompile(`^(?:proxy offer|proxy boot server ack|offer \S+): arch ([a-z0-9-]+),`)
	identRE    = regexp.MustCompile(`^uuid=([0-9a-f-]*) serial=("(?:[^"\\]|\\.)*") arch=([a-z0-9-]+)`)
)

// parseSeen reads the details pxe writes: DHCP offers ("proxy offer: arch
// efi-x64, ipxe false, ...") and the identity of an unknown machine's
// script request (`uuid=... serial="..." arch=...`). Anything else tells
// nothing; an unknown firmware name is dropped.
func parseSeen(stage, detail string) seen {
	var s seen
	switch stage {
	case pxe.StageDHCP:
		if m := dhcpArchRE.FindStringSubmatch(detail); m != nil && pxe.ParseArch(m[1]) != pxe.ArchUnknown {
			s.dhcpArch = m[1]
		}
	case pxe.StageDiscovered, pxe.StageDiscoveryBoot:
		m := identRE.FindStringSubmatch(detail)
		if m == nil {
			break
		}
		s.uuid = m[1]
		if v, err := strconv.Unquote(m[2]); err == nil {
			s.serial = v
		}
		if pxe.ParseArch(m[3]) != pxe.ArchUnknown {
			s.ipxeArch = m[3]
		}
	}
	return s
}

// writeMachinesTable prints the report as two tables and what to do next.
func writeMachinesTable(w io.Writer, rep machinesReport, rackPath string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "In %s:\n", rackPath)
	fmt.Fprintln(tw, "NAME\tROLE\tMAC\tADDRESS\tSEEN AT\tSTAGE\tLAST SEEN")
	for _, k := range rep.Known {
		stage := k.Stage
		if stage == "" {
			stage = "not seen yet"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Name, k.Role, dashIfEmpty(strings.Join(k.MACs, ",")), k.Address,
			addrText(k.Addr), stage, agoText(rep.Time, k.LastSeen))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	if len(rep.Discovered) == 0 {
		fmt.Fprintln(w, "No machine outside the rack file has asked to netboot.")
		fmt.Fprintln(w, "With `rackboot serve --discover` (or discover: true in the rack file), one that does boots Talos without a config and shows up here.")
	} else {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "Not in the rack file (discovered):")
		fmt.Fprintln(tw, "MAC\tIP\tFIRST SEEN\tLAST SEEN\tARCH\tFIRMWARE\tSTAGE\tHARDWARE")
		for _, d := range rep.Discovered {
			stage := d.Stage
			if d.AdoptedAs != "" {
				stage += " (adopted as " + d.AdoptedAs + ")"
			}
			hw := "-"
			switch {
			case d.Hardware != nil:
				hw = compactHardware(d.Hardware)
			case d.HardwareError != "":
				hw = "no answer (below)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.MAC, addrText(d.Addr), agoText(rep.Time, d.FirstSeen), agoText(rep.Time, d.LastSeen),
				dashIfEmpty(d.Arch), dashIfEmpty(d.Firmware), stage, hw)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w)
		for _, d := range rep.Discovered {
			if d.HardwareError != "" {
				fmt.Fprintf(w, "%s: %s\n", d.MAC, d.HardwareError)
			}
		}
		fmt.Fprintln(w, "HARDWARE is read from Talos's maintenance API of the machines waiting in the discovery boot, while rackboot serve runs (all of it: --json).")
		fmt.Fprintln(w, "Adopt one: rackboot machine adopt MAC --name NAME --role controlplane|worker [--address CIDR] [--install-disk-serial S]")
	}
	if rep.From == fromState {
		fmt.Fprintln(w, "(no rackboot serve is running: this is what it last saved)")
	}
	if rep.From == fromKube {
		fmt.Fprintln(w, "(the machine states of the rackboot in Kubernetes; machines outside the rack file are known to its replicas only, on their status pages)")
	}
	return nil
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func addrText(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

// agoText is how long before now t was, to the second ("-" for never).
func agoText(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t).Round(time.Second)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	}
}
