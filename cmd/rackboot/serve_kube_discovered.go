package main

import (
	"encoding/json"

	"github.com/dotfile/rackboot/inventory"
)

// discoveredSummary is what of a discovered machine is worth a write of
// its record under serve --kube (inventory.WithDiscoveredSummary): what
// `rackboot machines --kube` shows and `machine adopt --kube` takes (its
// address, arch and firmware type, UUID and serial, whether its last
// network boot was the discovery boot). Its DHCP retries, downloads and
// wait-script loops change none of it, so a machine that keeps probing
// costs no writes (only the hourly last-seen refresh).
func discoveredSummary(m inventory.Machine) string {
	d := discovered(m)
	b, _ := json.Marshal(struct {
		MACs                           []string
		Addr, Arch, Firmware, UUID, SN string
		Waiting                        bool
	}{m.MACs, d.Addr.String(), d.Arch, d.Firmware, d.UUID, d.Serial, d.waiting})
	return string(b)
}
