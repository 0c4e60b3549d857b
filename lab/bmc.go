package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/dotfile/rackboot/profiles"
)

// Virtual BMCs.
//
// A rack machine whose bmc: address is an IPv4 address inside the lab's
// subnet gets a virtual BMC at that address, so rackboot's power commands
// work on the lab as on a rack: OpenIPMI's ipmi_sim for protocol ipmi,
// sushy-tools' Redfish emulator (fake driver) for redfish and auto. Both
// hand power and boot device changes to the lab's power agent (one process
// per lab, see power_linux.go), which owns those VMs' QEMU processes: a
// powered-off lab VM is one whose QEMU is not running, and each power-on
// chooses the boot order (network first with a network-boot override, disk
// first without).

// The BMC protocols a virtual BMC speaks.
const (
	BMCIPMI    = "ipmi"
	BMCRedfish = "redfish"
)

// DefaultBMCUser is the user a virtual BMC accepts when the rack file's
// bmc.user is empty (profiles requires one, so this is only a fallback).
const DefaultBMCUser = "admin"

// Default ports of the virtual BMCs.
const (
	IPMIPort     = 623 // UDP, RMCP+
	RedfishPort  = 443 // https
	RedfishHTTP  = 80  // http (an http:// URL without a port)
	maxIPMIPassw = 20  // IPMI 2.0 passwords are at most 20 bytes
)

// BMCPlan is a VM's virtual BMC, as decided from the rack file.
type BMCPlan struct {
	Protocol string     // BMCIPMI or BMCRedfish
	Addr     netip.Addr // on the lab bridge
	Port     int        // UDP for IPMI, TCP for Redfish
	User     string
	TLS      bool // Redfish over https
}

// AddrPort is the BMC's address and port.
func (b BMCPlan) AddrPort() netip.AddrPort { return netip.AddrPortFrom(b.Addr, uint16(b.Port)) }

// URL is the Redfish service's base URL ("" for IPMI).
func (b BMCPlan) URL() string {
	if b.Protocol != BMCRedfish {
		return ""
	}
	scheme := "http"
	if b.TLS {
		scheme = "https"
	}
	return scheme + "://" + b.AddrPort().String()
}

// BMCState is a VM's virtual BMC as lab.json records it (never its
// password).
type BMCState struct {
	Protocol string `json:"protocol"`
	Address  string `json:"address"`       // ip:port
	URL      string `json:"url,omitempty"` // Redfish: http(s)://ip:port
	User     string `json:"user"`
}

func (b BMCPlan) state() *BMCState {
	return &BMCState{Protocol: b.Protocol, Address: b.AddrPort().String(), URL: b.URL(), User: b.User}
}

// ParseBMCAddress reads a rack file's bmc.address for the lab. inLab is
// false for an address the lab does not emulate (an IP outside subnet, or
// IPv6): the machine keeps no virtual BMC. A host name is an error: inside
// the lab a BMC is an IP address.
func ParseBMCAddress(b *profiles.BMC, subnet netip.Prefix) (plan BMCPlan, inLab bool, err error) {
	proto := strings.ToLower(strings.TrimSpace(b.Protocol))
	switch proto {
	case "", "auto", BMCRedfish:
		plan.Protocol, plan.Port, plan.TLS = BMCRedfish, RedfishPort, true
	case BMCIPMI:
		plan.Protocol, plan.Port = BMCIPMI, IPMIPort
	default:
		return plan, false, fmt.Errorf("bmc.protocol %q: write ipmi, redfish or auto", b.Protocol)
	}
	plan.User = strings.TrimSpace(b.User)
	if plan.User == "" {
		plan.User = DefaultBMCUser
	}
	addr := strings.TrimSpace(b.Address)
	host, port := addr, ""
	if strings.Contains(addr, "://") {
		if plan.Protocol == BMCIPMI {
			return plan, false, fmt.Errorf("bmc.address %q: an IPMI BMC is HOST[:PORT], not a URL", addr)
		}
		u, err := url.Parse(addr)
		if err != nil || u.Host == "" || (u.Path != "" && u.Path != "/" && strings.TrimRight(u.Path, "/") != "/redfish/v1") {
			return plan, false, fmt.Errorf("bmc.address %q: write https://IP[:PORT]", addr)
		}
		switch u.Scheme {
		case "https":
		case "http":
			plan.TLS, plan.Port = false, RedfishHTTP
		default:
			return plan, false, fmt.Errorf("bmc.address %q: scheme %s: write https:// or http://", addr, u.Scheme)
		}
		host, port = u.Hostname(), u.Port()
	} else if h, p, err := net.SplitHostPort(addr); err == nil {
		host, port = h, p
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return plan, false, fmt.Errorf("bmc.address %q: port %q is not a number from 1 to 65535", addr, port)
		}
		plan.Port = n
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return plan, false, fmt.Errorf("bmc.address %q: inside the lab a BMC address is an IP address, not a host name", addr)
	}
	if a.Zone() != "" || !a.Is4() || !subnet.Contains(a) {
		return plan, false, nil
	}
	plan.Addr = a
	return plan, true, nil
}

// checkBMCPassword reports a password ipmi_sim's lan.conf cannot hold
// (never the password itself).
func checkBMCPassword(machine, protocol, pw string) error {
	if pw == "" {
		return fmt.Errorf("machine %s: its virtual BMC needs a password (Spec.BMCPasswords has none for it)", machine)
	}
	if strings.ContainsFunc(pw, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("machine %s: the BMC password has control characters", machine)
	}
	if protocol == BMCIPMI {
		if len(pw) > maxIPMIPassw {
			return fmt.Errorf("machine %s: an IPMI password is at most %d bytes, this one has %d", machine, maxIPMIPassw, len(pw))
		}
		if strings.ContainsAny(pw, "\"\\") {
			return fmt.Errorf("machine %s: the virtual IPMI BMC (ipmi_sim) cannot take a password with \" or \\", machine)
		}
	}
	return nil
}

// planBMCs decides the virtual BMCs of the plan's VMs: vm.BMC for every
// machine whose bmc: address is in the lab subnet, and every collision
// (server, gateway, VIP, a machine address, another BMC, the DHCP pool).
func planBMCs(p *Plan, r *profiles.Rack, used map[netip.Addr]string, passwords map[string]string) []error {
	var errs []error
	bmcs := map[netip.Addr]string{}
	for i := range p.VMs {
		vm := &p.VMs[i]
		m := r.Machine(vm.Name)
		if m == nil || m.BMC == nil {
			continue
		}
		b, inLab, err := ParseBMCAddress(m.BMC, p.Subnet)
		if err != nil {
			errs = append(errs, fmt.Errorf("machine %s: %w", vm.Name, err))
			continue
		}
		if !inLab {
			continue
		}
		a := b.Addr
		switch {
		case a == p.Subnet.Addr() || a == broadcast(p.Subnet):
			errs = append(errs, fmt.Errorf("machine %s: bmc.address %s is not a host address of %s", vm.Name, a, p.Subnet))
		case p.ServerAddr.IsValid() && a == p.ServerAddr.Addr():
			errs = append(errs, fmt.Errorf("machine %s: bmc.address %s is the lab server's address", vm.Name, a))
		case used[a] != "":
			errs = append(errs, fmt.Errorf("machine %s: bmc.address %s is %s's address", vm.Name, a, used[a]))
		case bmcs[a] != "":
			errs = append(errs, fmt.Errorf("machines %s and %s: the same BMC address %s (a virtual BMC per machine needs its own)", bmcs[a], vm.Name, a))
		case p.DHCPRange[0].IsValid() && !a.Less(p.DHCPRange[0]) && !p.DHCPRange[1].Less(a):
			errs = append(errs, fmt.Errorf("machine %s: bmc.address %s is inside the DHCP pool %s-%s: pick one below %s", vm.Name, a, p.DHCPRange[0], p.DHCPRange[1], p.DHCPRange[0]))
		}
		bmcs[a] = vm.Name
		if err := checkBMCPassword(vm.Name, b.Protocol, passwords[vm.Name]); err != nil {
			errs = append(errs, err)
		}
		vm.BMC = &b
	}
	for name := range passwords {
		if !slices.ContainsFunc(p.VMs, func(vm VMPlan) bool { return vm.Name == name }) && r.Machine(name) == nil {
			errs = append(errs, fmt.Errorf("a BMC password for %q, which is not a machine of the rack file", name))
		}
	}
	return errs
}

// bmcAddrs are the in-subnet BMC addresses of the rack file's machines, so
// an automatically chosen server address avoids them.
func bmcAddrs(r *profiles.Rack, subnet netip.Prefix) map[netip.Addr]string {
	out := map[netip.Addr]string{}
	for _, m := range r.Machines {
		if m.BMC == nil {
			continue
		}
		if b, ok, err := ParseBMCAddress(m.BMC, subnet); err == nil && ok {
			out[b.Addr] = "the BMC of " + m.Name
		}
	}
	return out
}

// HasBMCs reports whether any VM of the plan has a virtual BMC.
func (p *Plan) HasBMCs() bool {
	return slices.ContainsFunc(p.VMs, func(vm VMPlan) bool { return vm.BMC != nil })
}

// Boot targets of a power-on.
const (
	BootNetwork = "network"
	BootDisk    = "disk"
)

// SetBootOrder returns a copy of a lab VM's QEMU command line (as QEMUArgs
// makes it, with or without the program) with the first NIC (netdev=net0)
// and the NVMe disk at boot indexes 1 and 2 in the order first asks for:
// BootNetwork puts the NIC first (as recorded), BootDisk the NVMe disk.
// Other arguments are untouched.
func SetBootOrder(args []string, first string) []string {
	nic, disk := "1", "2"
	if first == BootDisk {
		nic, disk = "2", "1"
	}
	out := slices.Clone(args)
	for i := 1; i < len(out); i++ {
		if out[i-1] != "-device" {
			continue
		}
		opts := strings.Split(out[i], ",")
		idx := -1
		isNIC, isDisk := false, false
		for j, o := range opts {
			switch {
			case o == "netdev=net0":
				isNIC = true
			case strings.HasPrefix(o, "drive=nvme"):
				isDisk = j > 0 && opts[0] == "nvme"
			case strings.HasPrefix(o, "bootindex="):
				idx = j
			}
		}
		if idx < 0 || !isNIC && !isDisk {
			continue
		}
		if isNIC {
			opts[idx] = "bootindex=" + nic
		} else {
			opts[idx] = "bootindex=" + disk
		}
		out[i] = strings.Join(opts, ",")
	}
	return out
}

// BootOrderOf reads which device a QEMU command line boots first:
// BootNetwork, BootDisk, or "" when neither is at boot index 1.
func BootOrderOf(args []string) string {
	for i := 1; i < len(args); i++ {
		if args[i-1] != "-device" || !slices.Contains(strings.Split(args[i], ","), "bootindex=1") {
			continue
		}
		if strings.Contains(args[i], "netdev=net0") {
			return BootNetwork
		}
		if strings.HasPrefix(args[i], "nvme,") {
			return BootDisk
		}
	}
	return ""
}

// ChassisRequest is one call of ipmi_sim's chassis_control program: it
// asks for values (Get) or sets them (Set, in order).
type ChassisRequest struct {
	Get []string    // power, boot
	Set [][2]string // (power 1|0), (boot pxe|default|cdrom|bios), (shutdown 1), (reset 1), (identify ...)
}

// ParseChassisArgs reads the arguments ipmi_sim 2.0.33 passes its
// chassis_control program (checked by experiment: no device argument):
//
//	get power boot
//	set power 1 | set power 0 | set boot pxe | set shutdown 1 | set reset 1
//
// A power cycle is "set power 0", then "get power" until off, then
// "set power 1". set identify takes two values (interval and force).
func ParseChassisArgs(args []string) (ChassisRequest, error) {
	var r ChassisRequest
	if len(args) == 0 {
		return r, errors.New("chassis: no operation (get or set)")
	}
	switch args[0] {
	case "get":
		if len(args) == 1 {
			return r, errors.New("chassis get: no parameter")
		}
		for _, p := range args[1:] {
			switch p {
			case "power", "boot":
				r.Get = append(r.Get, p)
			default:
				return r, fmt.Errorf("chassis get: unknown parameter %q", p)
			}
		}
	case "set":
		rest := args[1:]
		if len(rest) == 0 {
			return r, errors.New("chassis set: no parameter")
		}
		for len(rest) > 0 {
			p := rest[0]
			if len(rest) < 2 {
				return r, fmt.Errorf("chassis set %s: no value", p)
			}
			v := rest[1]
			switch p {
			case "power", "shutdown", "reset":
				if v != "0" && v != "1" {
					return r, fmt.Errorf("chassis set %s %q: want 0 or 1", p, v)
				}
			case "boot":
				switch v {
				case "pxe", "default", "cdrom", "bios", "disk":
				default:
					return r, fmt.Errorf("chassis set boot %q: want pxe, default, cdrom or bios", v)
				}
			case "identify":
				if len(rest) >= 3 {
					rest, v = rest[1:], rest[2] // interval, then force
				}
			default:
				return r, fmt.Errorf("chassis set: unknown parameter %q", p)
			}
			r.Set = append(r.Set, [2]string{p, v})
			rest = rest[2:]
		}
	default:
		return r, fmt.Errorf("chassis: unknown operation %q (want get or set)", args[0])
	}
	return r, nil
}

// PowerAction is what the power agent does to a VM.
type PowerAction string

// The power actions.
const (
	ActNone    PowerAction = ""
	ActOn      PowerAction = "on"       // start QEMU (if not running) with the next boot
	ActOff     PowerAction = "off"      // hard off: QMP quit
	ActSoftOff PowerAction = "soft-off" // ACPI power button: QMP system_powerdown
	ActReset   PowerAction = "reset"    // stop, then start with the next boot
)

// SushyDecision is what a sushy-tools notification asks of the agent.
type SushyDecision struct {
	Action PowerAction
	// Target is the power state the notification asks for ("On", "Off"),
	// remembered to tell the next notification's change from a repeat.
	Target string
	// NetworkBoot is true while the system's boot_device is Pxe: sushy
	// keeps it persistently, so every power-on is then network-first.
	NetworkBoot bool
}

// DecideSushy turns sushy-tools' fake system dict (what its external
// notifier PUTs on every change: power_state, boot_device, pending_power,
// ...) into an action, given the target of the last notification (prev).
//
// The fake driver applies a power change lazily: the notification of a
// Reset carries the old power_state and pending_power {power_state: the new
// one}, and a later one (sent when a read applies it) the new power_state
// and no pending_power. So the target is pending_power's state when there
// is one, else power_state; the agent acts when the target changes (a
// boot-device PATCH on an unchanged power state starts or stops nothing).
// Restart targets (ForceRestart, GracefulRestart, PowerCycle) reset the
// VM. GracefulShutdown and ForceOff arrive alike (pending Off): hard off.
func DecideSushy(sys map[string]any, prev string) (SushyDecision, error) {
	power, _ := sys["power_state"].(string)
	if power == "" {
		return SushyDecision{}, errors.New("sushy notification: no power_state")
	}
	d := SushyDecision{Target: power}
	if bd, _ := sys["boot_device"].(string); strings.EqualFold(bd, "Pxe") {
		d.NetworkBoot = true
	}
	if pp, ok := sys["pending_power"].(map[string]any); ok && pp != nil {
		ps, _ := pp["power_state"].(string)
		switch {
		case strings.Contains(ps, "Restart") || ps == "PowerCycle":
			d.Target, d.Action = "On", ActReset
			return d, nil
		case strings.Contains(ps, "On"):
			d.Target = "On"
		case ps == "Off":
			d.Target = "Off"
		case ps == "":
		default:
			return d, fmt.Errorf("sushy notification: pending power state %q", ps)
		}
	}
	switch {
	case d.Target == prev:
	case d.Target == "On":
		d.Action = ActOn
	case d.Target == "Off":
		d.Action = ActOff
	default:
		return d, fmt.Errorf("sushy notification: power state %q", d.Target)
	}
	return d, nil
}

// RestartAfterExit decides, when a BMC-managed VM's QEMU has exited,
// whether the agent starts it again at once: only after a guest reset
// (QEMU runs with -no-reboot, so a reboot ends the process with a SHUTDOWN
// event whose reason is guest-reset) that the host did not ask for. A
// guest power-off (guest-shutdown), a host quit or signal, a panic or a
// crash leave the machine off.
func RestartAfterExit(hostStopped bool, shutdownReason string) bool {
	return !hostStopped && shutdownReason == "guest-reset"
}

// withBMCs is used plus the rack's in-subnet BMC addresses (a copy).
func withBMCs(used map[netip.Addr]string, r *profiles.Rack, subnet netip.Prefix) map[netip.Addr]string {
	out := bmcAddrs(r, subnet)
	for a, who := range used {
		out[a] = who
	}
	return out
}

// bmcGUID is the IPMI device GUID of a VM's BMC: its SMBIOS UUID's hex.
func bmcGUID(uuid string) string {
	g := strings.ReplaceAll(strings.ToLower(uuid), "-", "")
	if len(g) != 32 || strings.Trim(g, "0123456789abcdef") != "" {
		return "a123456789abcdefa123456789abcdef"
	}
	return g
}

// IPMILanConf is ipmi_sim's lan.conf for a VM's virtual BMC: one LAN
// channel on the BMC's address, the user with its password (RMCP+, and
// IPMI 1.5 with md2, md5 or straight authentication: never none), and the
// chassis_control program. The password must have passed
// checkBMCPassword.
func IPMILanConf(vm string, uuid string, b BMCPlan, password, chassis string) string {
	return fmt.Sprintf(`# rackboot lab: the virtual BMC of %s (written by lab up, removed by lab down)
name "rackboot-%s"
set_working_mc 0x20
  startlan 1
    addr %s %d
    priv_limit admin
    allowed_auths_callback md2 md5 straight
    allowed_auths_user md2 md5 straight
    allowed_auths_operator md2 md5 straight
    allowed_auths_admin md2 md5 straight
    guid %s
  endlan
  chassis_control "%s"
  user 2 true "%s" "%s" admin 10 md2 md5 straight
`, vm, vm, b.Addr, b.Port, bmcGUID(uuid), chassis, b.User, password)
}

// IPMIEmu is ipmi_sim's command file: one BMC management controller.
const IPMIEmu = "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n"

// ChassisScript is the chassis_control program ipmi_sim runs for a VM:
// this binary (exe) as ChassisCommand, for the VM, at the agent.
func ChassisScript(exe, agentURL, vm string) string {
	return "#!/bin/sh\n# ipmi_sim's chassis_control for " + vm + ": ask the lab's power agent\nexec " +
		shQuote(exe) + " " + ChassisCommand + " --agent " + shQuote(agentURL) + " --vm " + shQuote(vm) + ` "$@"` + "\n"
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// SushyFiles are the files of a VM's sushy-tools emulator.
type SushyFiles struct {
	StateDir, AuthFile, Cert, Key string // Cert and Key: "" without TLS
}

// SushyConf is sushy-tools' emulator.conf (Python) for a VM's virtual
// Redfish BMC: the fake driver with one system named after the machine
// (its UUID and MAC), powered off, its changes notified to notifyURL.
func SushyConf(vm VMPlan, f SushyFiles, notifyURL string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# rackboot lab: the virtual BMC of %s (written by lab up, removed by lab down)\n", vm.Name)
	fmt.Fprintf(&b, "SUSHY_EMULATOR_LISTEN_IP = %s\n", strconv.Quote(vm.BMC.Addr.String()))
	fmt.Fprintf(&b, "SUSHY_EMULATOR_LISTEN_PORT = %d\n", vm.BMC.Port)
	b.WriteString("SUSHY_EMULATOR_FAKE_DRIVER = True\n")
	fmt.Fprintf(&b, "SUSHY_EMULATOR_STATE_DIR = %s\n", strconv.Quote(f.StateDir))
	fmt.Fprintf(&b, "SUSHY_EMULATOR_AUTH_FILE = %s\n", strconv.Quote(f.AuthFile))
	if vm.BMC.TLS {
		fmt.Fprintf(&b, "SUSHY_EMULATOR_SSL_CERT = %s\n", strconv.Quote(f.Cert))
		fmt.Fprintf(&b, "SUSHY_EMULATOR_SSL_KEY = %s\n", strconv.Quote(f.Key))
	}
	fmt.Fprintf(&b, "SUSHY_EMULATOR_FAKE_SYSTEMS = [{'uuid': %s, 'name': %s, 'power_state': 'Off',\n    'external_notifier': True, 'nics': [{'mac': %s}]}]\n",
		strconv.Quote(vm.UUID), strconv.Quote(vm.Name), strconv.Quote(vm.MAC))
	fmt.Fprintf(&b, "EXTERNAL_NOTIFICATION_URL = %s\n", strconv.Quote(notifyURL))
	return b.String()
}
