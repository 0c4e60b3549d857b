package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

// PowerCommand as the first argument makes any binary that imports this
// package run the lab's power agent instead of its main (Linux only):
//
//	<binary> __rackboot-lab-power --lab-dir DIR --listen 127.0.0.1:PORT
//
// Up starts it in the lab namespace when any VM has a virtual BMC; it runs
// until SIGTERM and then stops the QEMU processes it started.
const PowerCommand = "__rackboot-lab-power"

// ChassisCommand as the first argument makes any binary that imports this
// package act as ipmi_sim's chassis_control program for one VM, forwarding
// ipmi_sim's arguments to the power agent and printing its answer:
//
//	<binary> __rackboot-lab-chassis --agent URL --vm NAME get power boot
const ChassisCommand = "__rackboot-lab-chassis"

// PowerAgentPort is the agent's HTTP port on 127.0.0.1 inside the lab
// namespace (whose loopback is private to the lab).
const PowerAgentPort = 6239

// agentPasswordFile, in a Redfish VM's BMC directory, holds the password
// the power agent uses to tell sushy-tools of a guest power-off (0600,
// removed by Down with the directory).
const agentPasswordFile = "agent-password"

// powerReadyMsg is what the agent logs once it listens; Up waits for it.
const powerReadyMsg = "power agent ready"

// VMPower is a BMC-managed VM's power as the agent sees it (and records in
// <labdir>/power.json), or for a VM without a BMC, its QEMU.
type VMPower struct {
	Name string `json:"name"`
	// On: QEMU runs.
	On bool `json:"on"`
	// PID and StartTime of the running QEMU (0 when off).
	PID       int    `json:"pid,omitempty"`
	StartTime uint64 `json:"startTime,omitempty"`
	Exe       string `json:"exe,omitempty"`
	// Args are the running QEMU's arguments (without the program), or the
	// last ones.
	Args []string `json:"args,omitempty"`
	// Boots counts the QEMU starts (for a VM without a BMC: 1).
	Boots int `json:"boots"`
	// NextBoot is what the next power-on boots first: BootNetwork while a
	// network-boot override is armed (IPMI one-time pxe, Redfish
	// boot_device Pxe), else BootDisk.
	NextBoot string `json:"nextBoot"`
	// BootDevice is the BMC's boot device: IPMI's chassis value (pxe,
	// default, cdrom, bios), Redfish's boot_device (Pxe, Hdd, ...).
	BootDevice string `json:"bootDevice,omitempty"`
	// LastExit is why QEMU last exited: QEMU's SHUTDOWN reason
	// (guest-reset, guest-shutdown, host-qmp-quit, ...) or "exited".
	LastExit string `json:"lastExit,omitempty"`
	// Protocol is the VM's BMC protocol ("" for a VM without one).
	Protocol string `json:"protocol,omitempty"`
}

// process is the running QEMU as a recorded lab process.
func (v VMPower) process() Process {
	return Process{Role: "vm:" + v.Name, PID: v.PID, StartTime: v.StartTime, Exe: v.Exe, Args: v.Args}
}

// powerFile is <labdir>/power.json, written by the agent on every change.
type powerFile struct {
	AgentPID int       `json:"agentPid"`
	VMs      []VMPower `json:"vms"`
}

func powerPath(labDir string) string { return filepath.Join(labDir, "power.json") }

func readPowerFile(labDir string) (*powerFile, error) {
	b, err := os.ReadFile(powerPath(labDir))
	if err != nil {
		return nil, err
	}
	var f powerFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("parse %s: %w", powerPath(labDir), err)
	}
	return &f, nil
}

func writePowerFile(labDir string, f *powerFile) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(powerPath(labDir), append(b, '\n'), 0o600)
}

func (f *powerFile) vm(name string) *VMPower {
	for i := range f.VMs {
		if f.VMs[i].Name == name {
			return &f.VMs[i]
		}
	}
	return nil
}
