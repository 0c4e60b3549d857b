package kubestate

import (
	"net"

	"github.com/dotfile/rackboot/inventory"
)

// Discovered machines (outside the rack file, keyed by MAC) are records
// like the rack's machines (same encoding, size limit and RetryOnConflict
// updates through Machines), in ConfigMaps of their own component so that
// they are told apart with kubectl and counted: the inventory writes one
// when the machine first appears and when what adopting it needs changes
// (inventory.WithDiscoveredSummary), deletes it when the machine is
// forgotten, adopted or evicted (inventory.WithMaxUnknown, default 256),
// and every replica's watch takes both in (Machines.WatchChanges).

// ComponentDiscovered labels discovered machines' records.
const ComponentDiscovered = "discovered"

// DiscoveredPrefix starts a discovered machine's ConfigMap name; the MAC
// follows in lower-case hex without separators.
const DiscoveredPrefix = "rackboot-discovered-"

// recordSelector selects machine records of both kinds.
var recordSelector = LabelManagedBy + "=" + ManagedBy + "," + LabelComponent + " in (" + ComponentMachine + "," + ComponentDiscovered + ")"

// DiscoveredObjectName is the ConfigMap name of the discovered machine
// whose key is mac (any form net.ParseMAC reads).
func DiscoveredObjectName(mac string) string {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return DiscoveredPrefix + "invalid"
	}
	const hexDigits = "0123456789abcdef"
	out := make([]byte, 0, len(DiscoveredPrefix)+2*len(hw))
	out = append(out, DiscoveredPrefix...)
	for _, b := range hw {
		out = append(out, hexDigits[b>>4], hexDigits[b&0xf])
	}
	return string(out)
}

// recordComponent is the component label of the record of key.
func recordComponent(key string) string {
	if inventory.IsDiscoveredKey(key) {
		return ComponentDiscovered
	}
	return ComponentMachine
}
