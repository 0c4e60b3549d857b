// Package netcfg evaluates a machine config's network documents over the
// machine's links the way Talos v1.13's network controllers do, as pure
// functions: LinkAliasConfig selectors (internal/app/machined/pkg/
// controllers/network/link_alias_config.go), the link names of LinkConfig
// and Layer2VIPConfig resolved through the aliases, static addresses and
// routes (LinkConfig), whether the default DHCP operators run
// (operator_config.go with container.RunDefaultDHCPOperators) and the
// layer-2 VIP (operator_vip_config.go: address with gratuitous ARP).
// The init applies the result with netlink.
package netcfg

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	networkpb "github.com/siderolabs/talos/pkg/machinery/api/resource/definitions/network"
	"github.com/siderolabs/talos/pkg/machinery/cel/celenv"
	"github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/nethelpers"
	"github.com/siderolabs/talos/pkg/machinery/proto"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
)

// Link is what the stand-in knows of one physical link (the fields of
// Talos's LinkStatus it can fill from sysfs and rtnetlink).
type Link struct {
	Name      string
	Index     int
	MAC       net.HardwareAddr
	PermMAC   net.HardwareAddr // IFLA_PERM_ADDRESS; empty when the driver has none
	Driver    string
	BusPath   string
	MTU       int
	Up        bool
	Broadcast net.HardwareAddr
}

// spec is the link as Talos's LinkStatus protobuf, the CEL object "link".
func (l Link) spec() (*networkpb.LinkStatusSpec, error) {
	res := network.NewLinkStatus(network.NamespaceName, l.Name)
	s := res.TypedSpec()
	s.Index = uint32(l.Index)
	s.Type = nethelpers.LinkEther
	s.HardwareAddr = nethelpers.HardwareAddr(l.MAC)
	s.PermanentAddr = nethelpers.HardwareAddr(l.PermMAC)
	s.BroadcastAddr = nethelpers.HardwareAddr(l.Broadcast)
	s.MTU = uint32(l.MTU)
	s.Driver = l.Driver
	s.BusPath = l.BusPath
	s.LinkState = l.Up
	if l.Up {
		s.OperationalState = nethelpers.OperStateUp
	} else {
		s.OperationalState = nethelpers.OperStateDown
	}
	out := &networkpb.LinkStatusSpec{}
	if err := proto.ResourceSpecToProto(res, out); err != nil {
		return nil, fmt.Errorf("convert link %s: %w", l.Name, err)
	}
	return out, nil
}

// Aliases evaluates the LinkAliasConfig documents like Talos's
// LinkAliasConfigController: physical links sorted by permanent (else
// current) MAC, configs by name; a fixed alias whose selector matches
// several links is skipped (warning with Talos's message), a link keeps
// the first alias it gets, a pattern alias ("%d") numbers its matches.
// It returns link name → alias and the warnings.
func Aliases(cfg config.Config, links []Link) (map[string]string, []string, error) {
	sorted := slices.Clone(links)
	slices.SortFunc(sorted, func(a, b Link) int {
		ka, kb := a.PermMAC, b.PermMAC
		if len(ka) == 0 {
			ka = a.MAC
		}
		if len(kb) == 0 {
			kb = b.MAC
		}
		return bytes.Compare(ka, kb)
	})
	specs := make([]*networkpb.LinkStatusSpec, len(sorted))
	for i, l := range sorted {
		s, err := l.spec()
		if err != nil {
			return nil, nil, err
		}
		specs[i] = s
	}
	lacs := slices.Clone(cfg.NetworkLinkAliasConfigs())
	slices.SortFunc(lacs, func(a, b config.NetworkLinkAliasConfig) int { return strings.Compare(a.Name(), b.Name()) })

	aliases := map[string]string{}
	var warnings []string
	for _, lac := range lacs {
		var matched []string
		for i, s := range specs {
			sel := lac.LinkSelector()
			ok, err := sel.EvalBool(celenv.LinkLocator(), map[string]any{"link": s})
			if err != nil {
				return nil, nil, fmt.Errorf("error evaluating link selector: %w", err)
			}
			if ok {
				matched = append(matched, sorted[i].Name)
			}
		}
		if len(matched) > 1 && !lac.IsPatternAlias() {
			sel := lac.LinkSelector()
			warnings = append(warnings, fmt.Sprintf("link selector matched multiple links, skipping: selector %s, alias %s, links %v",
				sel.String(), lac.Name(), matched))
			continue
		}
		matched = slices.DeleteFunc(matched, func(link string) bool {
			if prev, ok := aliases[link]; ok {
				warnings = append(warnings, fmt.Sprintf("link already has an alias, skipping: link %s, existing alias %s, new alias %s", link, prev, lac.Name()))
				return true
			}
			return false
		})
		if len(matched) == 0 {
			continue
		}
		if lac.IsPatternAlias() {
			for n, link := range matched {
				aliases[link] = strings.Replace(lac.Name(), "%d", strconv.Itoa(n), 1)
			}
		} else {
			aliases[matched[0]] = lac.Name()
		}
	}
	return aliases, warnings, nil
}

// Resolve maps a configured link name to a link: an alias to its link,
// anything else unchanged (Talos's link name resolver).
func Resolve(name string, aliases map[string]string) string {
	for link, alias := range aliases {
		if alias == name {
			return link
		}
	}
	return name
}

// Address is a static address on a link.
type Address struct {
	Link   string
	Prefix netip.Prefix
}

// Route is a static route on a link (Dst invalid: the default route).
type Route struct {
	Link    string
	Dst     netip.Prefix
	Gateway netip.Addr
	Metric  uint32
}

// VIP is a layer-2 shared address held on a link.
type VIP struct {
	Link string
	IP   netip.Addr
}

// Plan is the network configuration the config asks for on these links.
type Plan struct {
	Aliases     map[string]string // link → alias
	DefaultDHCP bool              // DHCP on every physical link (no link configs at all)
	DHCP        []string          // links with a DHCPv4Config
	Addresses   []Address
	Routes      []Route
	VIPs        []VIP    // control planes only
	Missing     []string // configured link names no link has (nothing applied there)
	Warnings    []string
}

// Configure builds the plan for cfg over links. controlPlane says whether
// Layer2VIPConfig applies (Talos runs the VIP operator on control planes).
func Configure(cfg config.Config, links []Link, controlPlane bool) (Plan, error) {
	aliases, warnings, err := Aliases(cfg, links)
	if err != nil {
		return Plan{}, err
	}
	p := Plan{Aliases: aliases, Warnings: warnings}
	have := map[string]bool{}
	for _, l := range links {
		have[l.Name] = true
	}
	resolve := func(name string) (string, bool) {
		link := Resolve(name, aliases)
		if !have[link] {
			if !slices.Contains(p.Missing, name) {
				p.Missing = append(p.Missing, name)
			}
			return "", false
		}
		return link, true
	}
	for _, lc := range cfg.NetworkCommonLinkConfigs() {
		link, ok := resolve(lc.Name())
		if !ok {
			continue
		}
		for _, a := range lc.Addresses() {
			p.Addresses = append(p.Addresses, Address{Link: link, Prefix: a.Address()})
		}
		for _, r := range lc.Routes() {
			rt := Route{Link: link, Metric: r.Metric().ValueOr(network.DefaultRouteMetric)}
			if d, ok := r.Destination().Get(); ok {
				rt.Dst = d
			}
			if g, ok := r.Gateway().Get(); ok {
				rt.Gateway = g
			}
			p.Routes = append(p.Routes, rt)
		}
	}
	for _, d := range cfg.NetworkDHCPv4Configs() {
		if link, ok := resolve(d.Name()); ok {
			p.DHCP = append(p.DHCP, link)
		}
	}
	p.DefaultDHCP = cfg.RunDefaultDHCPOperators()
	if controlPlane {
		for _, v := range cfg.NetworkVirtualIPConfigs() {
			if _, ok := v.(config.NetworkLayer2VIPConfig); !ok {
				continue
			}
			if link, ok := resolve(v.Link()); ok {
				p.VIPs = append(p.VIPs, VIP{Link: link, IP: v.VIP()})
			}
		}
	}
	return p, nil
}
