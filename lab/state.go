package lab

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

// StateVersion is the version of lab.json this code writes and reads.
const StateVersion = 1

// State is lab.json: everything a lab made, so that Down can remove exactly
// that, even from another process, days later.
type State struct {
	Version int       `json:"version"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	DHCP    DHCPMode  `json:"dhcp"`
	Accel   string    `json:"accel,omitempty"`
	// Namespaces in creation order (recorded before each is created).
	Namespaces []string `json:"namespaces"`
	Bridge     string   `json:"bridge,omitempty"`
	ServerAddr string   `json:"serverAddr,omitempty"`
	RouterAddr string   `json:"routerAddr,omitempty"`
	Taps       []string `json:"taps,omitempty"`
	Veths      []string `json:"veths,omitempty"`
	// Processes in start order: the RA responder, dnsmasq, serve, the VMs.
	Processes []Process `json:"processes,omitempty"`
	VMs       []VMState `json:"vms,omitempty"`
	// Files the lab created (recorded before each is created), removed by
	// Down; directories are removed when they end up empty.
	Files []string `json:"files,omitempty"`
	Dirs  []string `json:"dirs,omitempty"`
	// Trees are directories the lab made for a process (its WorkDir),
	// removed by Down with everything in them.
	Trees []string `json:"trees,omitempty"`
	// Serve says whether a serve process was started in the namespace.
	Serve bool `json:"serve"`
	// DHCPRange is the pool ("lo-hi"): dnsmasq's or serve's.
	DHCPRange string `json:"dhcpRange,omitempty"`
}

// Process is one process the lab started. A PID is only ever signalled when
// the process still has the recorded start time (clock ticks since boot,
// /proc/PID/stat field 22) and program, so a recycled PID is never killed.
type Process struct {
	Role      string   `json:"role"` // vm:<name>, dnsmasq, serve
	PID       int      `json:"pid"`
	StartTime uint64   `json:"startTime"`
	Exe       string   `json:"exe"`
	Args      []string `json:"args"`
	Namespace string   `json:"namespace"`
	Log       string   `json:"log,omitempty"` // stdout+stderr
}

// VMState is one VM as Status shows it.
type VMState struct {
	Name      string   `json:"name"`
	MAC       string   `json:"mac"`
	UUID      string   `json:"uuid"`
	Serial    string   `json:"serial"`
	Firmware  Firmware `json:"firmware"`
	Arch      string   `json:"arch,omitempty"` // "" is amd64
	Tap       string   `json:"tap"`
	NIC       string   `json:"nic,omitempty"`       // the first NIC's QEMU model
	Netboot   Netboot  `json:"netboot,omitempty"`   // who netboots the first NIC (Spec.BootNICs)
	ExtraNICs []NIC    `json:"extraNics,omitempty"` // the NICs after the first (Spec.ExtraNICs)
	Disks     []string `json:"disks"`
	SerialLog string   `json:"serialLog"`
	QEMULog   string   `json:"qemuLog"`
	OVMFVars  string   `json:"ovmfVars,omitempty"`
	// Command is the full QEMU command line, to rerun a VM by hand. For a
	// VM with a virtual BMC it is the network-first line the power agent
	// starts from (SetBootOrder, plus its QMP socket).
	Command []string `json:"command"`
	// BMC is the VM's virtual BMC (nil: none). Never its password.
	BMC *BMCState `json:"bmc,omitempty"`
}

// VM returns the VM with that name, or nil.
func (s *State) VM(name string) *VMState {
	for i := range s.VMs {
		if s.VMs[i].Name == name {
			return &s.VMs[i]
		}
	}
	return nil
}

// ParseState reads lab.json.
func ParseState(data []byte) (*State, error) {
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("parse lab state: %w", err)
	}
	if s.Version != StateVersion {
		return nil, fmt.Errorf("parse lab state: version %d, this rackboot reads version %d", s.Version, StateVersion)
	}
	if err := ValidName(s.Name); err != nil {
		return nil, fmt.Errorf("parse lab state: %w", err)
	}
	for _, p := range s.Processes {
		if p.PID <= 1 {
			return nil, fmt.Errorf("parse lab state: process %q has PID %d", p.Role, p.PID)
		}
	}
	return &s, nil
}

// State reads the lab's lab.json; ErrNotUp when there is none.
func (l *Lab) State() (*State, error) {
	data, err := os.ReadFile(l.StatePath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("lab %s (%s): %w", l.name, l.StatePath(), ErrNotUp)
	}
	if err != nil {
		return nil, fmt.Errorf("read lab state: %w", err)
	}
	s, err := ParseState(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", l.StatePath(), err)
	}
	if s.Name != l.name {
		return nil, fmt.Errorf("%s: holds lab %q, not %q", l.StatePath(), s.Name, l.name)
	}
	return s, nil
}

func (l *Lab) save(s *State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode lab state: %w", err)
	}
	if err := atomicfile.Write(l.StatePath(), append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	return nil
}

// Status is what `rackboot lab status` shows.
type Status struct {
	Name       string
	DHCP       DHCPMode
	Accel      string
	Namespaces []string
	ServerAddr string
	RouterAddr string
	Processes  []ProcessStatus // dnsmasq, serve
	VMs        []VMStatus
}

// ProcessStatus is a recorded process and whether it still runs.
type ProcessStatus struct {
	Role    string
	PID     int
	Running bool
	Log     string
}

// VMStatus is a VM, whether its QEMU still runs, and the last line of its
// serial console.
type VMStatus struct {
	VMState
	PID     int
	Running bool
	// Power is "on" or "off" (for a VM with a virtual BMC, as its power
	// agent says; off is the state of a lab VM whose QEMU is not running).
	Power    string
	LastLine string
}

// DownReport says what Down removed.
type DownReport struct {
	// NothingToDo is true when the lab had no state (already down).
	NothingToDo bool
	Stopped     []string // roles of processes signalled and gone
	Gone        []string // roles of processes that had already exited
	Namespaces  []string
	Files       int
}

// parseStatStartTime reads field 22 (starttime, in clock ticks since boot)
// of /proc/PID/stat. The command name (field 2) is in parentheses and may
// hold spaces and parentheses itself, so fields are counted from the last
// ')'.
func parseStatStartTime(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("proc stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	const idx = 22 - 3 // fields after ')' start at field 3 (state)
	if len(f) <= idx {
		return 0, fmt.Errorf("proc stat: %d fields after the command name, want more than %d", len(f), idx)
	}
	v, err := strconv.ParseUint(f[idx], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("proc stat: start time %q: %w", f[idx], err)
	}
	return v, nil
}
