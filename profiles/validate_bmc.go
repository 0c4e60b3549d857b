package profiles

import (
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// BMC protocols the rack file accepts.
var bmcProtocols = []string{"ipmi", "redfish", "auto"}

// bmc checks a machine's bmc: block (p is its field path).
func (c *checker) bmc(p, name string, b *BMC) {
	if b.Password {
		c.errf(p+".password", "a BMC password does not belong in the rack file (it is shared and committed): remove this line and run `rackboot bmc set-password %s`, or set RACKBOOT_BMC_PASSWORD_%s for scripts", name, BMCPasswordEnvName(name))
	}
	proto := strings.ToLower(b.Protocol)
	switch proto {
	case "", "ipmi", "redfish", "auto":
	default:
		c.errf(p+".protocol", "BMC protocol %q of %s is not known: write %s (auto tries Redfish, then IPMI)", b.Protocol, name, strings.Join(bmcProtocols, ", "))
	}
	if b.Address == "" {
		c.errf(p, "the bmc of %s has no address: write address: <the BMC's IP or name>[:port], e.g. address: 10.0.1.11", name)
	} else if msg := checkBMCAddress(b.Address, proto); msg != "" {
		c.errf(p+".address", "BMC address %q of %s %s", b.Address, name, msg)
	}
	if strings.TrimSpace(b.User) == "" {
		c.errf(p, "the bmc of %s has no user: write user: <the BMC login>, e.g. user: admin (the password goes in with `rackboot bmc set-password %s`)", name, name)
	}
	switch b.Firmware {
	case "", "uefi", "bios":
	default:
		c.errf(p+".firmware", "firmware %q for %s's network boot is not known: write uefi or bios", b.Firmware, name)
	}
	if b.CAFile != "" && proto == "ipmi" {
		c.warnf(p+".caFile", "caFile is for Redfish over https; IPMI does not use TLS, so it is ignored for %s", name)
	}
}

// checkBMCAddress returns what is wrong with a bmc address ("" if
// nothing), as the end of a sentence that says what to write.
func checkBMCAddress(addr, proto string) string {
	if strings.Contains(addr, "://") {
		u, err := url.Parse(addr)
		switch {
		case err != nil || (u.Scheme != "https" && u.Scheme != "http"):
			return "is not a URL rackboot can use: write https://HOST[:PORT], or just HOST[:PORT]"
		case proto == "ipmi":
			return "is a URL, but IPMI takes HOST[:PORT]: write " + u.Host + ", or protocol: redfish"
		case u.Host == "":
			return "has no host: write https://HOST[:PORT]"
		case u.Path != "" && u.Path != "/":
			return "has a path; rackboot finds /redfish/v1 itself: write " + u.Scheme + "://" + u.Host
		}
		return checkHostPort(u.Host)
	}
	return checkHostPort(addr)
}

// checkHostPort checks HOST[:PORT], HOST an IP (IPv6 in brackets with a
// port) or a DNS name.
func checkHostPort(hp string) string {
	host := hp
	if h, port, err := net.SplitHostPort(hp); err == nil {
		n, perr := strconv.Atoi(port)
		if perr != nil || n < 1 || n > 65535 {
			return fmt.Sprintf("has port %q, which is not a port number: write HOST:PORT with PORT from 1 to 65535, or leave the port out (443 for Redfish, 623 for IPMI)", port)
		}
		host = h
	}
	if host == "" {
		return "has no host: write the BMC's IP or DNS name, e.g. 10.0.1.11"
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	if len(validation.IsDNS1123Subdomain(strings.ToLower(host))) > 0 {
		return "is neither an IP address nor a DNS name: write HOST[:PORT], e.g. 10.0.1.11 or ilo-r1.example.net:443"
	}
	return ""
}

// BMCFirmware is the firmware mode of m's one-time network boot: bmc
// firmware, else lab.firmware, else uefi (guessed is then true).
func (r *Rack) BMCFirmware(m *Machine) (mode string, guessed bool) {
	if m.BMC != nil && m.BMC.Firmware != "" {
		return m.BMC.Firmware, false
	}
	if fw := r.Lab.Firmware[m.Name]; fw != "" {
		return fw, false
	}
	return "uefi", true
}

// bmcShared warns when machines share a BMC address without each naming
// its Redfish system: they would power the same server.
func (c *checker) bmcShared() {
	first := map[string]int{}
	for i := range c.r.Machines {
		m := &c.r.Machines[i]
		if m.BMC == nil || m.BMC.Address == "" {
			continue
		}
		key := strings.TrimSuffix(strings.ToLower(m.BMC.Address), "/")
		if j, ok := first[key]; !ok {
			first[key] = i
		} else if o := &c.r.Machines[j]; m.BMC.SystemID == "" || o.BMC.SystemID == "" || strings.EqualFold(m.BMC.SystemID, o.BMC.SystemID) {
			c.warnf(fmt.Sprintf("machines[%d].bmc.address", i), "%s and %s have the same BMC address %s, so they would power the same server: fix the address, or give each its own systemId (a Redfish BMC with several systems)", o.Name, m.Name, m.BMC.Address)
		}
	}
}
