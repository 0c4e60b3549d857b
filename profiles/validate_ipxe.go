package profiles

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/dotfile/rackboot/pxe"
)

// IPXEBuild is which iPXE build a machine's x64 UEFI firmware netboots
// (`ipxeBuild:` in the cluster, for every machine, or in a machine).
type IPXEBuild string

// The builds a rack file may name.
const (
	// IPXEFull is ipxe.efi with iPXE's own NIC drivers: the default.
	IPXEFull IPXEBuild = "full"
	// IPXESNPOnly is snponly.efi: iPXE drives the NIC through the UEFI
	// firmware's network driver (SNP), for NICs iPXE has no driver for.
	IPXESNPOnly IPXEBuild = "snponly"
)

// ipxeBuildHelp says what each value does, for messages.
const ipxeBuildHelp = "write full (ipxe.efi, iPXE's own NIC drivers; the default) or snponly (snponly.efi, the UEFI firmware's network driver, for NICs iPXE has no driver for)"

// UnmarshalYAML accepts full, snponly or nothing; anything else is reported
// at the value by Load, with the fix.
func (b *IPXEBuild) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ipxeBuild must be a single value: %s", n.Line, ipxeBuildHelp)}}
	}
	v := n.Value
	if n.Tag == "!!null" {
		v = ""
	}
	switch IPXEBuild(v) {
	case "", IPXEFull, IPXESNPOnly:
		*b = IPXEBuild(v)
		return nil
	}
	hint := ""
	switch strings.TrimSuffix(strings.ToLower(strings.TrimSpace(v)), ".efi") {
	case "snponly", "snp", "snp-only", "snp_only":
		hint = " (did you mean snponly?)"
	case "full", "ipxe", "default":
		hint = " (did you mean full?)"
	}
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: ipxeBuild `%s` is not an iPXE build%s: %s", n.Line, v, hint, ipxeBuildHelp)}}
}

// IPXEBuildFor is the iPXE build for a netbooting client (the DHCP
// server's pxe.DHCPConfig.IPXEBuild): the machine's ipxeBuild, else the
// cluster's, else full. The client is matched by what a DHCP request
// carries (MAC, option 97 UUID; no serial), so a machine selected by serial
// alone gets the cluster's choice.
func (r *Rack) IPXEBuildFor(c pxe.Client) pxe.IPXEBuild {
	b := r.Cluster.IPXEBuild
	if m, err := r.Match(c.MAC, c.UUID, ""); err == nil && m.IPXEBuild != "" {
		b = m.IPXEBuild
	}
	if b == IPXESNPOnly {
		return pxe.IPXESNPOnly
	}
	return pxe.IPXEFull
}
