package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/resources/hardware"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
)

// How long rackboot waits for a machine's Talos maintenance API: a read
// of its inventory, and an apply (Talos validates the config against its
// disks before it answers).
const (
	maintenanceReadTimeout  = 5 * time.Second
	maintenanceApplyTimeout = 30 * time.Second
)

// maintenanceAPI is a machine's Talos API in maintenance mode (no config
// yet: port 50000, TLS with a certificate the machine made up, no client
// certificate, the Reader role plus ApplyConfiguration), reached with
// machinery's client the way `talosctl --insecure` does
// (cmd/talosctl/pkg/talos/global/client.go, WithClientMaintenance).
//
// The TLS does not authenticate the machine: anyone on the segment who
// holds the address answers. Apply therefore checks, before it sends a
// config, that the machine reports a link with the MAC it was adopted by.
type maintenanceAPI struct {
	ip       string // what errors name
	endpoint string // host:port
	c        *client.Client
}

// dialMaintenance prepares a client for the machine at addr (port 50000).
// The connection is lazy: the first call shows whether it answers.
func dialMaintenance(ctx context.Context, addr netip.Addr) (*maintenanceAPI, error) {
	return dialMaintenanceAt(ctx, netip.AddrPortFrom(addr, constants.ApidPort))
}

// dialMaintenanceAt is dialMaintenance with a port (tests serve on
// loopback).
func dialMaintenanceAt(ctx context.Context, ap netip.AddrPort) (*maintenanceAPI, error) {
	m := &maintenanceAPI{ip: ap.Addr().String(), endpoint: net.JoinHostPort(ap.Addr().String(), strconv.Itoa(int(ap.Port())))}
	c, err := client.New(ctx,
		client.WithDefaultGRPCDialOptions(),
		client.WithTLSConfig(&tls.Config{InsecureSkipVerify: true}), //nolint:gosec // Talos's maintenance mode has no verifiable certificate; see Apply's MAC check
		client.WithEndpoints(m.endpoint))
	if err != nil {
		return nil, m.errorf("%w", err)
	}
	m.c = c
	return m, nil
}

// Close closes the connection.
func (m *maintenanceAPI) Close() error { return m.c.Close() }

func (m *maintenanceAPI) errorf(format string, args ...any) error {
	return fmt.Errorf("machine at %s: Talos maintenance API: "+format, append([]any{m.ip}, args...)...)
}

// Hardware reads the machine's disks, links and system information
// (block.Disk, network.LinkStatus, hardware.SystemInformation: what
// `talosctl get disks|links|systeminformation --insecure` shows).
func (m *maintenanceAPI) Hardware(ctx context.Context) (*discoveredHardware, error) {
	ctx, cancel := context.WithTimeout(ctx, maintenanceReadTimeout)
	defer cancel()
	disks, err := safe.StateListAll[*block.Disk](ctx, m.c.COSI)
	if err != nil {
		return nil, m.errorf("read disks: %w", err)
	}
	hw := &discoveredHardware{Disks: []hardwareDisk{}}
	for d := range disks.All() {
		hw.Disks = append(hw.Disks, hardwareDiskOf(d.Metadata().ID(), d.TypedSpec()))
	}
	if hw.Links, err = m.links(ctx); err != nil {
		return nil, err
	}
	si, err := safe.StateGetByID[*hardware.SystemInformation](ctx, m.c.COSI, hardware.SystemInformationID)
	switch {
	case err == nil:
		s := si.TypedSpec()
		hw.System = &hardwareSystem{UUID: s.UUID, Serial: s.SerialNumber, Manufacturer: s.Manufacturer, Product: s.ProductName}
	case state.IsNotFoundError(err):
		// No SMBIOS on the machine: Talos has no such resource.
	default:
		return nil, m.errorf("read system information: %w", err)
	}
	return hw, nil
}

func (m *maintenanceAPI) links(ctx context.Context) ([]hardwareLink, error) {
	links, err := safe.StateListAll[*network.LinkStatus](ctx, m.c.COSI)
	if err != nil {
		return nil, m.errorf("read links: %w", err)
	}
	out := []hardwareLink{}
	for l := range links.All() {
		out = append(out, hardwareLinkOf(l.Metadata().ID(), l.TypedSpec()))
	}
	return out, nil
}

func hardwareDiskOf(id string, s *block.DiskSpec) hardwareDisk {
	name := id
	if s.DevPath != "" {
		name = path.Base(s.DevPath)
	}
	return hardwareDisk{
		Name: name, Model: s.Model, Serial: s.Serial, WWID: s.WWID, Size: s.Size, Transport: s.Transport,
		Rotational: s.Rotational, Readonly: s.Readonly, CDROM: s.CDROM,
	}
}

func hardwareLinkOf(id string, s *network.LinkStatusSpec) hardwareLink {
	l := hardwareLink{Name: id, MAC: net.HardwareAddr(s.HardwareAddr).String(), Up: s.OperationalState.String() == "up"}
	if len(s.PermanentAddr) > 0 && !slices.Equal(s.PermanentAddr, s.HardwareAddr) {
		l.PermanentMAC = net.HardwareAddr(s.PermanentAddr).String()
	}
	return l
}

// errWrongMachine: the machine at the address reports no link with the
// adopted MAC (another machine holds the address now, or someone answers
// for it).
var errWrongMachine = errors.New("not the machine that was discovered")

// hasMAC reports whether one of the links has mac as its address or its
// permanent address (a bond changes the address of its members).
func hasMAC(links []hardwareLink, mac net.HardwareAddr) bool {
	return slices.ContainsFunc(links, func(l hardwareLink) bool {
		return strings.EqualFold(l.MAC, mac.String()) || strings.EqualFold(l.PermanentMAC, mac.String())
	})
}

// Apply sends cfg to the machine as `talosctl apply-config --insecure`
// does (mode auto: in maintenance mode Talos applies it without a reboot
// and installs), but only after the machine's links show mac. It returns
// Talos's own words on what it did.
func (m *maintenanceAPI) Apply(ctx context.Context, mac net.HardwareAddr, cfg []byte) (string, error) {
	rctx, cancel := context.WithTimeout(ctx, maintenanceReadTimeout)
	links, err := m.links(rctx)
	cancel()
	if err != nil {
		return "", err
	}
	if !hasMAC(links, mac) {
		var macs []string
		for _, l := range links {
			if l.MAC != "" && l.MAC != "00:00:00:00:00:00" {
				macs = append(macs, l.MAC)
			}
		}
		return "", m.errorf("%w: it reports no link with MAC %s (its links: %s); the config was not sent", errWrongMachine, mac, dashIfEmpty(strings.Join(macs, ", ")))
	}
	actx, cancel := context.WithTimeout(ctx, maintenanceApplyTimeout)
	defer cancel()
	resp, err := m.c.ApplyConfiguration(actx, &machine.ApplyConfigurationRequest{Data: cfg, Mode: machine.ApplyConfigurationRequest_AUTO})
	if err != nil {
		return "", m.errorf("apply the config: %w", err)
	}
	var details []string
	for _, msg := range resp.GetMessages() {
		if d := strings.TrimSpace(msg.GetModeDetails()); d != "" {
			details = append(details, d)
		}
		for _, w := range msg.GetWarnings() {
			details = append(details, "warning: "+w)
		}
	}
	return strings.Join(details, "; "), nil
}
