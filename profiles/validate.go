package profiles

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/dotfile/rackboot/pxe"
)

// Validate checks the rack's meaning and returns every problem at once, each
// with the place in the file and what to write instead. Problems come sorted
// by their place in the file.
func (r *Rack) Validate() Problems {
	c := &checker{r: r, machineErrs: map[int]bool{}}
	c.cluster()
	c.machines()
	c.lab()
	c.database()
	ps := c.ps
	// Talos's verdict on the whole config of a machine that has errors
	// above only repeats them (an invalid label, taint or disk type fails
	// Talos's validation too): leave it out until those are fixed.
	repeated := map[Pos]bool{}
	for i := range c.machineErrs {
		repeated[r.PosOf(fmt.Sprintf("machines[%d]", i))] = true
	}
	for _, p := range talosProblems(r) {
		if !p.Warning && repeated[p.Pos] {
			continue
		}
		ps = append(ps, p)
	}
	slices.SortStableFunc(ps, func(a, b Problem) int {
		if a.Pos.Line != b.Pos.Line {
			return a.Pos.Line - b.Pos.Line
		}
		return a.Pos.Col - b.Pos.Col
	})
	return ps
}

// installDiskTypes are the values Talos accepts for
// machine.install.diskSelector.type (machinery v1.13.0,
// config/types/v1alpha1 InstallConfig.DiskMatchExpression): nvme is
// transport nvme, sd is transport mmc (SD/MMC cards, not sd* disks), hdd is a
// rotational disk and ssd a non-rotational one (which includes NVMe).
func installDiskTypes() []string { return []string{"nvme", "ssd", "hdd", "sd"} }

// taintEffects are the effects Kubernetes knows.
func taintEffects() []string { return []string{"NoSchedule", "PreferNoSchedule", "NoExecute"} }

var (
	talosVersionRE = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$`)
	schematicIDRE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	// diskSizeRE is what Talos's InstallDiskSizeMatcher accepts: an optional
	// comparison and a size that go-humanize parses.
	diskSizeRE = regexp.MustCompile(`^(>=|<=|>|<|==)?\s*[0-9]+(\.[0-9]+)?\s*([kKmMgGtTpPeE][iI]?[bB]?|[bB])?$`)
	labSizeRE  = regexp.MustCompile(`^([0-9]+)([bBkKmMgGtT]?)$`)
)

// checker collects problems.
type checker struct {
	r  *Rack
	ps Problems
	// subnet is the parsed cluster subnet, if valid.
	subnet    netip.Prefix
	subnetOK  bool
	gateway   netip.Addr
	gatewayOK bool
	vip       netip.Addr
	vipOK     bool
	// machineErrs holds the indexes of machines with an error.
	machineErrs map[int]bool
	// cmdlineDone holds the kernelArgs paths already checked (machines
	// share the cluster's schematic).
	cmdlineDone map[string]bool
}

func (c *checker) errf(path, format string, args ...any) {
	var i int
	if _, err := fmt.Sscanf(path, "machines[%d]", &i); err == nil && c.machineErrs != nil {
		c.machineErrs[i] = true
	}
	c.ps = append(c.ps, Problem{File: c.r.Path, Pos: c.r.PosOf(path), Msg: fmt.Sprintf(format, args...)})
}

func (c *checker) warnf(path, format string, args ...any) {
	c.ps = append(c.ps, Problem{File: c.r.Path, Pos: c.r.PosOf(path), Warning: true, Msg: fmt.Sprintf(format, args...)})
}

func (c *checker) cluster() {
	cl := &c.r.Cluster
	switch {
	case cl.Name == "":
		c.errf("cluster.name", "cluster.name is missing: write a short DNS label such as name: lab")
	case len(validation.IsDNS1123Label(cl.Name)) > 0:
		c.errf("cluster.name", "cluster name %q is not a DNS label (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit): write e.g. %q", cl.Name, suggestLabel(cl.Name))
	}

	switch {
	case cl.TalosVersion == "":
		c.errf("cluster.talosVersion", "cluster.talosVersion is missing: write talosVersion: v1.13.0")
	case !talosVersionRE.MatchString(cl.TalosVersion):
		want := "v1.13.0"
		if talosVersionRE.MatchString("v" + cl.TalosVersion) {
			want = "v" + cl.TalosVersion
		}
		c.errf("cluster.talosVersion", "talosVersion %q is not of the form vX.Y.Z: write %s", cl.TalosVersion, want)
	}

	c.network()
	c.schematic("cluster.schematic", cl.Schematic)
	c.diskRule("cluster.installDisk", cl.InstallDisk)
	switch {
	case cl.CephDisks != "":
		c.cephOverlap("cluster.cephDisks", c.cephForm("cluster.cephDisks", cl.CephDisks), c.r.InstallDisk(&Machine{}))
	case !cl.InstallDisk.IsZero():
		c.cephOverlap("cluster.installDisk", regexp.MustCompile(DefaultCephDisks), c.r.InstallDisk(&Machine{}))
	}
	if cl.Network.Link != "" {
		c.link("cluster.network.link", cl.Network.Link)
	}
}

func (c *checker) network() {
	cl := &c.r.Cluster
	n := &cl.Network
	switch p, err := netip.ParsePrefix(n.Subnet); {
	case n.Subnet == "":
		c.errf("cluster.network.subnet", "cluster.network.subnet is missing: write the rack's network in CIDR form, e.g. subnet: 192.168.1.0/24")
	case err != nil:
		hint := "e.g. 192.168.1.0/24"
		if a, aerr := netip.ParseAddr(n.Subnet); aerr == nil && a.Is4() {
			hint = netip.PrefixFrom(a, 24).Masked().String()
		}
		c.errf("cluster.network.subnet", "subnet %q is not in CIDR form: write the network and its prefix length, %s", n.Subnet, hint)
	case p != p.Masked():
		c.errf("cluster.network.subnet", "subnet %s has host bits set: write %s", n.Subnet, p.Masked())
	default:
		c.subnet, c.subnetOK = p, true
	}

	anyStatic := slices.ContainsFunc(c.r.Machines, func(m Machine) bool { return !m.IsDHCP() })
	switch a, err := netip.ParseAddr(n.Gateway); {
	case n.Gateway == "":
		if anyStatic {
			c.errf("cluster.network.gateway", "cluster.network.gateway is missing and machines have static addresses: write the router's address, e.g. gateway: %s", c.example(1))
		}
	case err != nil:
		c.errf("cluster.network.gateway", "gateway %q is not an IP address: write the router's address, e.g. %s", n.Gateway, c.example(1))
	default:
		c.gateway, c.gatewayOK = a, true
		if c.subnetOK {
			if !c.subnet.Contains(a) {
				c.errf("cluster.network.gateway", "gateway %s is outside the subnet %s: write the router's address in %s", a, c.subnet, c.subnet)
			} else if what := c.special(a); what != "" {
				c.errf("cluster.network.gateway", "gateway %s is the subnet's %s address: write the router's address, e.g. %s", a, what, c.example(1))
			}
		}
	}

	for i, ns := range n.Nameservers {
		if _, err := netip.ParseAddr(ns); err != nil {
			c.errf(fmt.Sprintf("cluster.network.nameservers[%d]", i), "nameserver %q is not an IP address: write one, e.g. %s", ns, c.example(1))
		}
	}
	if len(n.Nameservers) == 0 && anyStatic {
		c.warnf("cluster.network", "no nameservers: machines with static addresses get none from DHCP and Talos falls back to 1.1.1.1 and 8.8.8.8; write nameservers: [%s] (your router) if that is not what you want", c.example(1))
	}

	c.rackbootAddr()

	switch a, err := netip.ParseAddr(cl.VIP); {
	case cl.VIP == "":
		c.errf("cluster.vip", "cluster.vip is missing: write a free address in the subnet for the Kubernetes API, e.g. vip: %s", c.free())
	case err != nil:
		c.errf("cluster.vip", "vip %q is not an IP address: write a free address in the subnet, e.g. %s", cl.VIP, c.free())
	default:
		c.vip, c.vipOK = a, true
		if !c.subnetOK {
			break
		}
		switch {
		case !c.subnet.Contains(a):
			c.vipOK = false
			c.errf("cluster.vip", "vip %s is outside the subnet %s: pick a free address in %s, e.g. %s", a, c.subnet, c.subnet, c.free())
		case c.gatewayOK && a == c.gateway:
			c.errf("cluster.vip", "vip %s is the gateway: pick a free address in %s, e.g. %s", a, c.subnet, c.free())
		case cl.Network.Rackboot != "" && a.String() == cl.Network.Rackboot:
			c.errf("cluster.vip", "vip %s is rackboot's own address (cluster.network.rackboot): pick a free address in %s, e.g. %s", a, c.subnet, c.free())
		default:
			if what := c.special(a); what != "" {
				c.errf("cluster.vip", "vip %s is the subnet's %s address: pick a free address in %s, e.g. %s", a, what, c.subnet, c.free())
			}
		}
	}
}

// rackbootAddr checks cluster.network.rackboot, where every config sends
// Talos's events and kernel log (talos.go, runtimeDocs) and pulls its
// images from (registryDocs), and that cluster.offline has it. It runs before the
// VIP is parsed; the VIP and machine addresses are compared with it there.
func (c *checker) rackbootAddr() {
	n := &c.r.Cluster.Network
	const path = "cluster.network.rackboot"
	if n.Rackboot == "" {
		if c.r.Cluster.Offline {
			c.errf("cluster.offline", "offline: true needs cluster.network.rackboot: an offline rack pulls every image from rackboot's registry mirror, "+
				"and without rackboot's address the configs name no mirror, so no machine could pull its installer or Kubernetes images; "+
				"write rackboot: <this computer's address on the rack network> under cluster.network, e.g. rackboot: %s, or remove offline: true", c.free())
			return
		}
		c.warnf("cluster.network", "cluster.network.rackboot is missing, so the configs carry no EventSinkConfig or KmsgLogConfig and no registry mirror: "+
			"once installed, Talos boots its own kernel command line without the netboot's talos.events.sink= and talos.logging.kernel=, "+
			"and an ISO or USB install never had them, so rackboot hears nothing from the machine (not even that it installed, for ISO/USB); "+
			"and every machine pulls its images from the internet, not from rackboot's registry mirror (port %d); "+
			"write rackboot: <this computer's address on the rack network>, e.g. rackboot: %s", RegistryPort, c.free())
		return
	}
	a, err := netip.ParseAddr(n.Rackboot)
	if err != nil {
		c.errf(path, "rackboot %q is not an IP address: write this computer's address on the rack network, e.g. %s", n.Rackboot, c.free())
		return
	}
	if !c.subnetOK {
		return
	}
	switch {
	case !c.subnet.Contains(a):
		c.errf(path, "rackboot %s is outside the subnet %s: rackboot serves the rack from its address in the subnet; write that address, e.g. %s", a, c.subnet, c.free())
	case c.gatewayOK && a == c.gateway:
		c.errf(path, "rackboot %s is the gateway: write this computer's own address on the rack network, e.g. %s", a, c.free())
	case c.special(a) != "":
		c.errf(path, "rackboot %s is the subnet's %s address: write this computer's address on the rack network, e.g. %s", a, c.special(a), c.free())
	}
}

// special names a subnet address no host may take: the network or broadcast
// address of an IPv4 subnet.
func (c *checker) special(a netip.Addr) string {
	if !c.subnetOK || !a.Is4() || c.subnet.Bits() >= 31 {
		return ""
	}
	if a == c.subnet.Addr() {
		return "network"
	}
	if a == lastAddr(c.subnet) {
		return "broadcast"
	}
	return ""
}

// example is the n-th host address of the subnet, for messages.
func (c *checker) example(n int) string {
	if !c.subnetOK {
		return "192.168.1." + strconv.Itoa(n)
	}
	a := c.subnet.Addr()
	for range n {
		a = a.Next()
	}
	return a.String()
}

// free is the first host address of the subnet that the rack does not use,
// for messages.
func (c *checker) free() string {
	if !c.subnetOK {
		return "an unused address in the subnet"
	}
	used := map[netip.Addr]bool{}
	if a, err := netip.ParseAddr(c.r.Cluster.Network.Gateway); err == nil {
		used[a] = true
	}
	if a, err := netip.ParseAddr(c.r.Cluster.VIP); err == nil {
		used[a] = true
	}
	if a, err := netip.ParseAddr(c.r.Cluster.Network.Rackboot); err == nil {
		used[a] = true
	}
	for _, m := range c.r.Machines {
		if p, err := netip.ParsePrefix(m.Address); err == nil {
			used[p.Addr()] = true
		}
	}
	last := lastAddr(c.subnet)
	for a, i := c.subnet.Addr().Next(), 0; c.subnet.Contains(a) && a != last && i < 1<<16; a, i = a.Next(), i+1 {
		if !used[a] {
			return a.String()
		}
	}
	return "an unused address in " + c.subnet.String()
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a.Unmap()
}

func (c *checker) machines() {
	ms := c.r.Machines
	if len(ms) == 0 {
		c.errf("machines", "the rack has no machines: add at least one control plane under machines:")
		return
	}
	names := map[string]int{}
	macs := map[string]int{}
	serials := map[string]int{}
	addrs := map[netip.Addr]int{}
	var uuids []struct {
		u uuid.UUID
		i int
	}
	cps := 0
	for i := range ms {
		m := &ms[i]
		p := fmt.Sprintf("machines[%d]", i)
		name := m.Name
		if name == "" {
			name = fmt.Sprintf("machine #%d", i+1)
		}

		switch {
		case m.Name == "":
			c.errf(p+".name", "%s has no name: write name: <hostname>", name)
		case len(validation.IsDNS1123Label(m.Name)) > 0:
			c.errf(p+".name", "machine name %q is not a valid hostname (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit): write e.g. %q", m.Name, suggestLabel(m.Name))
		default:
			if j, dup := names[m.Name]; dup {
				c.errf(p+".name", "machine name %q is used twice (also machines[%d]): give each machine its own name", m.Name, j)
			} else {
				names[m.Name] = i
			}
		}

		switch m.Role {
		case RoleControlPlane:
			cps++
		case RoleWorker:
		case "":
			c.errf(p+".role", "%s has no role: write role: controlplane or role: worker", name)
		default:
			c.errf(p+".role", "role %q of %s is not known: write controlplane or worker", m.Role, name)
		}

		// Selectors.
		s := m.Select
		if len(s.MAC) == 0 && s.UUID == "" && s.Serial == "" {
			c.errf(p+".select", "%s has no selector, so no booting machine can be recognised as it: write select.mac (the MAC of the NIC it netboots from), select.uuid or select.serial", name)
		} else if len(s.MAC) == 0 {
			c.warnf(p+".select", "%s is selected without a MAC: rackboot checks that a boot request comes from the NIC that owns a listed MAC, and a UUID or serial cannot be checked that way, so any device on the network that sends them could get %s's config and the cluster's keys; add select.mac (the MAC of the NIC it netboots from)", name, name)
		}
		own := map[string]bool{}
		for k, raw := range s.MAC {
			mp := fmt.Sprintf("%s.select.mac[%d]", p, k)
			hw, err := NormalizeMAC(raw)
			if err != nil {
				c.errf(mp, "%s: write six bytes in hex such as 52:54:00:12:34:56", err)
				continue
			}
			key := hw.String()
			switch j, dup := macs[key]; {
			case own[key]:
				c.warnf(mp, "MAC %s is listed twice for %s: remove one", key, name)
			case dup:
				c.errf(mp, "MAC %s of %s is also selected by %s: a NIC belongs to one machine, fix one of them", key, name, ms[j].Name)
			default:
				macs[key] = i
			}
			own[key] = true
		}
		if s.UUID != "" {
			u, err := parseUUID(s.UUID)
			switch {
			case err != nil:
				c.errf(p+".select.uuid", "%s: write the SMBIOS UUID as dmidecode -s system-uuid prints it, e.g. 4c4c4544-0042-3510-8052-b4c04f4e4e32", err)
			case placeholderUUID(u):
				c.errf(p+".select.uuid", "uuid %s is a placeholder that boards without a real UUID report, so it cannot tell machines apart: select %s by mac or serial instead", u, name)
			default:
				for _, o := range uuids {
					if uuidEqual(o.u, u) {
						c.errf(p+".select.uuid", "uuid %s of %s is also selected by %s: fix one of them (dmidecode -s system-uuid)", u, name, ms[o.i].Name)
						break
					}
				}
				uuids = append(uuids, struct {
					u uuid.UUID
					i int
				}{u, i})
			}
		}
		if s.Serial != "" {
			serial := strings.TrimSpace(s.Serial)
			key := strings.ToLower(serial)
			switch j, dup := serials[key]; {
			case serial == "":
				c.errf(p+".select.serial", "serial of %s is blank: write the serial number (dmidecode -s system-serial-number) or remove it", name)
			case dup:
				c.errf(p+".select.serial", "serial %q of %s is also selected by %s: serials must tell machines apart; select one of them by uuid or mac", serial, name, ms[j].Name)
			default:
				serials[key] = i
				if placeholderSerial(serial) {
					c.warnf(p+".select.serial", "serial %q looks like a vendor placeholder that other boards report too: prefer select.mac or select.uuid for %s", serial, name)
				}
			}
		}

		// Address.
		c.address(i, p, name, m, addrs)
		c.linkMACs(p, name, m)

		if m.Link != "" {
			c.link(p+".link", m.Link)
		}
		c.diskRule(p+".installDisk", m.InstallDisk)
		switch {
		case m.CephDisks != "":
			c.cephOverlap(p+".cephDisks", c.cephForm(p+".cephDisks", m.CephDisks), c.r.InstallDisk(m))
		case !m.InstallDisk.IsZero():
			// The cluster's filter against this machine's install disk; a
			// filter that does not compile is reported at the cluster.
			if re, err := regexp.Compile(c.r.CephDisks(m)); err == nil {
				c.cephOverlap(p+".installDisk", re, c.r.InstallDisk(m))
			}
		}
		c.schematic(p+".schematic", m.Schematic)
		c.cmdline(p, name, m)
		c.labelsAndTaints(p, m)

		switch m.Arch {
		case "", "amd64", "arm64":
		default:
			c.errf(p+".arch", "arch %q of %s is not supported: write amd64 or arm64", m.Arch, name)
		}
		switch m.LocalBoot {
		case "", LocalBootExit, LocalBootSanboot:
		default:
			c.errf(p+".localBoot", "localBoot %q of %s is not known: write exit (hand back to the firmware's next boot device) or sanboot (boot the first disk)", m.LocalBoot, name)
		}
		if m.BMC != nil {
			c.bmc(p+".bmc", name, m.BMC)
		}
	}

	c.bmcShared()
	switch {
	case cps == 0:
		c.errf("machines", "the rack has no control plane: give one machine (or three) role: controlplane")
	case cps%2 == 0:
		if cps == 2 {
			c.warnf("machines", "2 control planes cannot lose either etcd member (etcd needs a majority of 2, so one down stops the cluster): add a third or go to one")
		} else {
			c.warnf("machines", "%d control planes tolerate no more etcd failures than %d (etcd needs a majority): add one more or go to %d", cps, cps-1, cps-1)
		}
	}
}

func (c *checker) address(i int, p, name string, m *Machine, addrs map[netip.Addr]int) {
	ap := p + ".address"
	if m.IsDHCP() {
		if m.Role == RoleControlPlane {
			// An error, not a warning: the talosconfig endpoints and the etcd
			// bootstrap are generated before the machine ever boots, so its
			// address must be known then; a DHCP lease is not.
			c.errf(ap, "control plane %s has no static address: talosconfig endpoints and the etcd bootstrap need it before it boots; write address: %s/%d (a free one in the subnet)", name, c.free(), c.bits())
		}
		return
	}
	pfx, err := netip.ParsePrefix(m.Address)
	if err != nil {
		if a, aerr := netip.ParseAddr(m.Address); aerr == nil {
			c.errf(ap, "address %q of %s has no prefix length: write %s/%d", m.Address, name, a, c.bits())
		} else {
			c.errf(ap, "address %q of %s is neither dhcp nor an address in CIDR form: write e.g. %s/%d or dhcp", m.Address, name, c.free(), c.bits())
		}
		return
	}
	a := pfx.Addr()
	if c.subnetOK {
		switch {
		case !c.subnet.Contains(a):
			c.errf(ap, "address %s of %s is outside the subnet %s: write a free address in it, e.g. %s/%d", m.Address, name, c.subnet, c.free(), c.bits())
			return
		case pfx.Bits() != c.subnet.Bits():
			c.errf(ap, "address %s of %s has prefix length /%d but the subnet is %s: write %s/%d", m.Address, name, pfx.Bits(), c.subnet, a, c.subnet.Bits())
		}
		if what := c.special(a); what != "" {
			c.errf(ap, "address %s of %s is the subnet's %s address: write a free address, e.g. %s/%d", m.Address, name, what, c.free(), c.bits())
		}
	}
	switch {
	case c.gatewayOK && a == c.gateway:
		c.errf(ap, "address %s of %s is the gateway: write a free address, e.g. %s/%d", m.Address, name, c.free(), c.bits())
	case c.vipOK && a == c.vip:
		c.errf(ap, "address %s of %s is the cluster VIP, which the control planes share: write a free address, e.g. %s/%d", m.Address, name, c.free(), c.bits())
	case c.r.Cluster.Network.Rackboot != "" && a.String() == c.r.Cluster.Network.Rackboot:
		c.errf(ap, "address %s of %s is rackboot's own address (cluster.network.rackboot): write a free address, e.g. %s/%d", m.Address, name, c.free(), c.bits())
	}
	if j, dup := addrs[a]; dup {
		c.errf(ap, "address %s of %s is also given to %s: write a free address, e.g. %s/%d", a, name, c.r.Machines[j].Name, c.free(), c.bits())
	} else {
		addrs[a] = i
	}
}

// linkMACs warns when a machine that needs the rack0 alias (a static
// address or the VIP, no link named) lists several MACs: the alias selects
// the first one only, because Talos skips an alias whose selector matches
// more than one link (see linkAlias).
func (c *checker) linkMACs(p, name string, m *Machine) {
	if _, aliased := c.r.Link(m); !aliased || (m.IsDHCP() && m.Role != RoleControlPlane) || len(m.Select.MAC) < 2 {
		return
	}
	first := m.Select.MAC[0]
	if hw, err := NormalizeMAC(first); err == nil {
		first = hw.String()
	}
	c.warnf(p+".select.mac", "%s lists %d MACs, and its config finds the rack NIC (for its address and the VIP) by the first only, %s: "+
		"Talos drops a link alias that matches more than one NIC, and the address with it; "+
		"list the MAC of the NIC cabled to the rack network first, or name that NIC with link: (e.g. link: enp1s0)", name, len(m.Select.MAC), first)
}

// cmdlineSlack covers what the netboot adds to a kernel command line beyond
// the template: iPXE's initrd=<name> and, under UEFI, the kernel image's
// name in front.
const cmdlineSlack = 64

// worstCmdline is a netboot template's data at its longest: the config URL
// with a token for a machine of that name (pxe/tokens.go: 35 bytes of
// header, the name, a 16-byte tag, base64url), MAC and UUID, and IPv4
// host:port addresses at full length.
type worstCmdline struct{ ConfigURL, EventsAddr, LogAddr, Server string }

// cmdline checks that the machine's netboot kernel command line (Talos's
// arguments, the schematic's, talos.config= and the events and log
// parameters) fits Linux's limit; the ISO/USB line is shorter.
func (c *checker) cmdline(p, name string, m *Machine) {
	sch := c.r.Schematic(m)
	at := "cluster.schematic.kernelArgs"
	if !m.Schematic.IsZero() {
		at = p + ".schematic.kernelArgs"
	}
	if !talosVersionRE.MatchString(c.r.Cluster.TalosVersion) || c.cmdlineDone[at] {
		return // the version is reported at cluster.talosVersion
	}
	if c.cmdlineDone == nil {
		c.cmdlineDone = map[string]bool{}
	}
	c.cmdlineDone[at] = true
	args, err := KernelArgs(c.r.Cluster.TalosVersion, m.ArchOrDefault(), sch.KernelArgs)
	if err != nil {
		if len(sch.KernelArgs) > 0 && !strings.Contains(err.Error(), "architecture") {
			c.errf(at, "%v: write one kernel argument per list item, such as net.ifnames=0", err)
		}
		return
	}
	host := "255.255.255.255:65535"
	mac, _ := net.ParseMAC("ff:ff:ff:ff:ff:ff")
	token := strings.Repeat("A", base64.RawURLEncoding.EncodedLen(35+len(m.Name)+16))
	line, err := pxe.RenderCmdline(NetbootCmdline(args), worstCmdline{
		ConfigURL:  pxe.ConfigURL(host, token, mac, "00000000-0000-0000-0000-000000000000"),
		EventsAddr: host, LogAddr: host, Server: host,
	})
	if err != nil {
		return
	}
	if n := len(line) + cmdlineSlack; n > pxe.MaxCmdline {
		c.errf(at, "the netboot kernel command line of %s would be up to %d bytes, and Linux keeps %d (COMMAND_LINE_SIZE is 2048 on x86-64, with its NUL): "+
			"it would cut off talos.config= and the events sink; remove schematic kernelArgs (%d bytes of them now)",
			name, n, pxe.MaxCmdline, len(strings.Join(sch.KernelArgs, " ")))
	}
}

func (c *checker) bits() int {
	if c.subnetOK {
		return c.subnet.Bits()
	}
	return 24
}

// link checks a Linux interface name.
func (c *checker) link(path, link string) {
	if len(link) > 15 || link == "." || link == ".." || strings.ContainsAny(link, "/: \t\n") {
		c.errf(path, "link %q is not a Linux interface name (at most 15 characters, no '/', ':' or spaces): write e.g. eth0 or enp1s0", link)
	}
}

func (c *checker) diskRule(path string, d DiskRule) {
	if d.Type != "" && !slices.Contains(installDiskTypes(), d.Type) {
		hint := "write one of " + strings.Join(installDiskTypes(), ", ")
		switch strings.ToLower(d.Type) {
		case "sata", "scsi", "sas", "ata", "usb", "virtio":
			hint = "Talos's disk selector has no transport " + d.Type + " type: write ssd or hdd (rotation), or select the disk by model, serial or busPath"
		case "nvme", "ssd", "hdd", "sd":
			hint = "write " + strings.ToLower(d.Type) + " in lower case"
		}
		c.errf(path+".type", "install disk type %q is not one Talos knows (nvme, ssd, hdd, sd): %s", d.Type, hint)
	}
	if d.Type == "sd" {
		c.warnf(path+".type", "install disk type sd means SD/MMC cards (mmcblk*), not sd* disks: for a SATA or SAS disk write ssd or hdd, or select it by model, serial or busPath")
	}
	if d.Size != "" && !diskSizeRE.MatchString(strings.TrimSpace(d.Size)) {
		c.errf(path+".size", "install disk size %q is not a Talos size condition: write e.g. \">= 100GB\" or \"<= 2TB\"", d.Size)
	}
}

// InstallDiskNeeds says in words what a machine needs for an install-disk
// rule to match, and what happens when nothing does: Talos checks the rule
// against the machine's disks when it loads the config (RuntimeValidate,
// config/types/v1alpha1/v1alpha1_validation.go: "no disks matched the
// expression"), refuses the config and publishes a ConfigLoadErrorEvent
// (internal/app/machined/pkg/controllers/config/acquire.go); v1.13 never
// sends ConfigValidationErrorEvent.
func InstallDiskNeeds(d DiskRule) string {
	if d.Type == "" {
		d.Type = DefaultInstallType
	}
	var what string
	switch d.Type {
	case "nvme":
		what = "an NVMe drive (transport nvme)"
	case "ssd":
		what = "a non-rotational disk (SATA/SAS SSD or NVMe; the first in name order)"
	case "hdd":
		what = "a rotational disk (the first in name order)"
	case "sd":
		what = "an SD/MMC card (mmcblk*)"
	default:
		what = "a disk of type " + d.Type
	}
	var with []string
	if d.Model != "" {
		with = append(with, "model "+d.Model)
	}
	if d.Serial != "" {
		with = append(with, "serial "+d.Serial)
	}
	if d.Size != "" {
		with = append(with, "size "+d.Size)
	}
	if d.BusPath != "" {
		with = append(with, "bus path "+d.BusPath)
	}
	if len(with) > 0 {
		what += " with " + strings.Join(with, ", ")
	}
	return fmt.Sprintf("install disk type %s needs %s: a machine without one does not install; Talos refuses its config (\"no disks matched the expression\") and reports a config load error", d.Type, what)
}

// Notes are what the install-disk rules need, one per rule and where it is
// written (the cluster's, when a machine uses it, and each machine's own),
// as warnings that are not problems: Validate leaves them out so that a
// correct rack validates clean; `rackboot validate` can print them on
// request.
func (r *Rack) Notes() Problems {
	var ps Problems
	clusterUsed := false
	for i := range r.Machines {
		m := &r.Machines[i]
		if m.InstallDisk.IsZero() {
			clusterUsed = true
			continue
		}
		ps = append(ps, Problem{File: r.Path, Pos: r.PosOf(fmt.Sprintf("machines[%d].installDisk", i)), Warning: true,
			Msg: fmt.Sprintf("%s: %s", m.Name, InstallDiskNeeds(r.InstallDisk(m)))})
	}
	if clusterUsed {
		ps = append(ps, Problem{File: r.Path, Pos: r.PosOf("cluster.installDisk"), Warning: true, Msg: InstallDiskNeeds(r.Cluster.InstallDisk)})
	}
	slices.SortStableFunc(ps, func(a, b Problem) int {
		if a.Pos.Line != b.Pos.Line {
			return a.Pos.Line - b.Pos.Line
		}
		return a.Pos.Col - b.Pos.Col
	})
	return ps
}

// cephForm checks that a Ceph device filter compiles and matches whole
// disk names only; it returns the compiled filter, or nil.
func (c *checker) cephForm(path, expr string) *regexp.Regexp {
	re, err := regexp.Compile(expr)
	if err != nil {
		c.errf(path, "cephDisks %q is not a regular expression (%v): write e.g. %s", expr, regexpErr(err), DefaultCephDisks)
		return nil
	}
	if !anchored(expr) {
		c.warnf(path, "cephDisks %q is not anchored, so it also matches names that merely contain it (^sd. matches the partition sda1): write it as ^...$, e.g. %s", expr, DefaultCephDisks)
	} else if re.MatchString("sda1") || re.MatchString("nvme0n1p1") {
		c.warnf(path, "cephDisks %q matches partition names such as sda1: Rook needs whole disks; write e.g. %s", expr, DefaultCephDisks)
	}
	return re
}

// cephOverlap checks a Ceph device filter against the names the install
// disk can have: Rook must never be given the Talos disk.
func (c *checker) cephOverlap(path string, re *regexp.Regexp, install DiskRule) {
	if re == nil {
		return
	}
	expr := re.String()
	pinned := install.Serial != "" || install.Model != "" || install.BusPath != ""
	switch install.Type {
	case "nvme":
		if re.MatchString("nvme0n1") {
			c.errf(path, "cephDisks %q matches nvme0n1, the name of the NVMe install disk: Rook would take the Talos disk; exclude it, e.g. %s", expr, DefaultCephDisks)
		} else if re.MatchString("nvme1n1") && !pinned {
			c.warnf(path, "cephDisks %q matches nvme1n1, and with several NVMe disks Talos installs to the first that matches type nvme, whatever its name: pin the install disk with serial or model", expr)
		}
	case "sd":
		if re.MatchString("mmcblk0") {
			c.errf(path, "cephDisks %q matches mmcblk0, the name of the SD/MMC install disk: Rook would take the Talos disk; exclude it, e.g. %s", expr, DefaultCephDisks)
		}
	case "ssd", "hdd":
		if pinned {
			return
		}
		for _, n := range []string{"sda", "vda", "nvme0n1"} {
			if re.MatchString(n) && (n != "nvme0n1" || install.Type == "ssd") {
				c.warnf(path, "cephDisks %q matches %s, which the install disk (type %s) may be: pin the install disk with serial or model, and make sure cephDisks cannot match it", expr, n, install.Type)
				return
			}
		}
	}
}

// anchored reports whether a regular expression must match a whole name:
// it starts with ^ (or \A) and ends with $ (or \z) at its top level.
func anchored(expr string) bool {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return false
	}
	re = re.Simplify()
	if re.Op != syntax.OpConcat || len(re.Sub) < 2 {
		return false
	}
	first, last := re.Sub[0].Op, re.Sub[len(re.Sub)-1].Op
	return (first == syntax.OpBeginText || first == syntax.OpBeginLine) &&
		(last == syntax.OpEndText || last == syntax.OpEndLine)
}

func regexpErr(err error) string {
	var se *syntax.Error
	if errors.As(err, &se) {
		return string(se.Code) + " " + strconv.Quote(se.Expr)
	}
	return err.Error()
}

func (c *checker) schematic(path string, s Schematic) {
	if s.ID != "" && (len(s.Extensions) > 0 || len(s.KernelArgs) > 0) {
		c.errf(path+".id", "schematic has both an id and extensions/kernelArgs: the id is computed from them, so write either the id alone or the extensions and kernelArgs alone")
	}
	if s.ID != "" && !schematicIDRE.MatchString(s.ID) {
		want := "the 64 hex digits the Image Factory returned"
		if schematicIDRE.MatchString(strings.ToLower(s.ID)) {
			want = strings.ToLower(s.ID)
		}
		c.errf(path+".id", "schematic id %q is not 64 lower-case hex digits: write %s (vanilla Talos is %s)", s.ID, want, VanillaSchematicID)
	}
	seen := map[string]bool{}
	for i, e := range s.Extensions {
		ep := fmt.Sprintf("%s.extensions[%d]", path, i)
		switch {
		case strings.TrimSpace(e) == "" || strings.ContainsAny(e, " \t"):
			c.errf(ep, "extension %q is not an extension name: write e.g. siderolabs/iscsi-tools", e)
		case seen[e]:
			c.warnf(ep, "extension %s is listed twice: remove one", e)
		case !strings.Contains(e, "/"):
			c.warnf(ep, "extension %q has no owner: official extensions are written siderolabs/%s", e, e)
		}
		seen[e] = true
	}
}

func (c *checker) labelsAndTaints(p string, m *Machine) {
	for _, k := range sortedKeys(m.Labels) {
		lp := p + ".labels." + k
		if errs := validation.IsQualifiedName(k); len(errs) > 0 {
			c.errf(lp, "label key %q of %s is not a Kubernetes label key (%s): write [prefix/]name, e.g. example.com/rack", k, m.Name, strings.Join(errs, "; "))
		}
		if errs := validation.IsValidLabelValue(m.Labels[k]); len(errs) > 0 {
			c.errf(lp, "label value %q of %s is not a Kubernetes label value (%s): write at most 63 letters, digits, '-', '_' or '.', quoted if it looks like a number or boolean", m.Labels[k], m.Name, strings.Join(errs, "; "))
		}
	}
	type ke struct{ k, e string }
	seen := map[ke]bool{}
	for i, t := range m.Taints {
		tp := fmt.Sprintf("%s.taints[%d]", p, i)
		if errs := validation.IsQualifiedName(t.Key); len(errs) > 0 {
			c.errf(tp+".key", "taint key %q of %s is not a Kubernetes key (%s): write [prefix/]name, e.g. example.com/gpu", t.Key, m.Name, strings.Join(errs, "; "))
		}
		if t.Value != "" {
			if errs := validation.IsValidLabelValue(t.Value); len(errs) > 0 {
				c.errf(tp+".value", "taint value %q of %s is not valid (%s): write at most 63 letters, digits, '-', '_' or '.'", t.Value, m.Name, strings.Join(errs, "; "))
			}
		}
		if !slices.Contains(taintEffects(), t.Effect) {
			c.errf(tp+".effect", "taint effect %q of %s is not known: write %s", t.Effect, m.Name, strings.Join(taintEffects(), ", "))
		}
		if seen[ke{t.Key, t.Effect}] {
			c.errf(tp, "taint %s:%s of %s is given twice: keep one", t.Key, t.Effect, m.Name)
		}
		seen[ke{t.Key, t.Effect}] = true
	}
}

func (c *checker) lab() {
	l := &c.r.Lab
	n := len(c.r.Machines)
	if l.Machines < 0 || l.Machines > n {
		c.errf("lab.machines", "lab.machines is %d but the rack has %d machines: write a number from 1 to %d (or 0 for all)", l.Machines, n, n)
	}
	if l.MemoryMiB < 0 {
		c.errf("lab.memoryMiB", "lab.memoryMiB is %d: write a size in MiB such as %d", l.MemoryMiB, DefaultLabMemoryMiB)
	} else if l.MemoryMiB > 0 && l.MemoryMiB < 256 {
		c.warnf("lab.memoryMiB", "lab.memoryMiB %d is too little for firmware and a netbooted kernel: write at least %d", l.MemoryMiB, DefaultLabMemoryMiB)
	}
	if l.NVMeSize != "" {
		if _, err := ParseLabSize(l.NVMeSize); err != nil {
			c.errf("lab.nvmeSize", "%v", err)
		}
	}
	for i, s := range l.SATASizes {
		if _, err := ParseLabSize(s); err != nil {
			c.errf(fmt.Sprintf("lab.sataSizes[%d]", i), "%v", err)
		}
	}
	names := make([]string, 0, n)
	for _, m := range c.r.Machines {
		names = append(names, m.Name)
	}
	inLab := n
	if l.Machines > 0 && l.Machines <= n {
		inLab = l.Machines
	}
	for _, name := range sortedKeys(l.Firmware) {
		fp := "lab.firmware." + name
		switch fw := l.Firmware[name]; fw {
		case "bios", "uefi":
		default:
			c.errf(fp, "firmware %q for %s is not known: write bios or uefi", fw, name)
		}
		i := slices.Index(names, name)
		switch {
		case i < 0:
			c.errf(fp, "lab.firmware names %q, which is not a machine in the rack: write one of %s", name, strings.Join(names, ", "))
		case i >= inLab:
			c.warnf(fp, "lab.firmware names %s, but lab.machines: %d leaves it out of the lab: raise lab.machines or drop this line", name, inLab)
		}
	}
}

// ParseLabSize parses a virtual disk size the way qemu-img does: a number of
// bytes, or a number with a binary suffix K, M, G or T (case-insensitive).
func ParseLabSize(s string) (int64, error) {
	m := labSizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("size %q is not a disk size: write a whole number with K, M, G or T, e.g. 4G", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q is too large: write e.g. 4G", s)
	}
	shift := strings.Index("BKMGT", strings.ToUpper(m[2])) * 10
	if shift < 0 {
		shift = 0
	}
	if n == 0 || n > (1<<62)>>shift {
		return 0, fmt.Errorf("size %q is out of range: write e.g. 4G", s)
	}
	return n << shift, nil
}

// NormalizeMAC parses an Ethernet MAC address in any common notation
// (52:54:00:12:34:56, 52-54-00-12-34-56, 5254.0012.3456, 525400123456).
// The result prints in lower-case colon form.
func NormalizeMAC(s string) (net.HardwareAddr, error) {
	t := strings.TrimSpace(s)
	if len(t) == 12 && !strings.ContainsAny(t, ":-.") {
		var b strings.Builder
		for i := 0; i < 12; i += 2 {
			if i > 0 {
				b.WriteByte(':')
			}
			b.WriteString(t[i : i+2])
		}
		t = b.String()
	}
	hw, err := net.ParseMAC(t)
	if err != nil {
		return nil, fmt.Errorf("MAC %q is not a MAC address", s)
	}
	if len(hw) != 6 {
		return nil, fmt.Errorf("MAC %q has %d bytes, not the 6 of an Ethernet MAC", s, len(hw))
	}
	return hw, nil
}

// parseUUID parses an SMBIOS UUID in any case, with or without dashes or
// braces.
func parseUUID(s string) (uuid.UUID, error) {
	u, err := uuid.Parse(strings.TrimSpace(s))
	if err != nil {
		return uuid.UUID{}, fmt.Errorf("uuid %q is not a UUID", s)
	}
	return u, nil
}

// uuidEqual compares two SMBIOS UUIDs, also in the mixed-endian form (first
// three fields byte-swapped) that some PXE firmware reports.
func uuidEqual(a, b uuid.UUID) bool {
	return a == b || a == swapUUID(b)
}

func swapUUID(u uuid.UUID) uuid.UUID {
	u[0], u[1], u[2], u[3] = u[3], u[2], u[1], u[0]
	u[4], u[5] = u[5], u[4]
	u[6], u[7] = u[7], u[6]
	return u
}

// placeholderUUID reports the UUIDs boards without one report.
func placeholderUUID(u uuid.UUID) bool {
	all := func(b byte) bool {
		for _, x := range u {
			if x != b {
				return false
			}
		}
		return true
	}
	return all(0) || all(0xff)
}

func placeholderSerial(s string) bool {
	switch strings.ToLower(s) {
	case "to be filled by o.e.m.", "default string", "system serial number", "not specified",
		"0123456789", "none", "n/a", "0", "chassis serial number", "not applicable":
		return true
	}
	return false
}

// suggestLabel turns a name into a DNS label for messages.
func suggestLabel(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			if b.Len() > 0 && !strings.HasSuffix(b.String(), "-") {
				b.WriteByte('-')
			}
		}
	}
	out := strings.Trim(b.String(), "-")
	if len(out) > 63 {
		out = strings.Trim(out[:63], "-")
	}
	if out == "" {
		return "node-1"
	}
	return out
}
