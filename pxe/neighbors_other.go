//go:build !linux

package pxe

import (
	"errors"
	"net"
	"net/netip"
)

// KernelNeighbors needs Linux's neighbour table.
type KernelNeighbors struct{}

// NewKernelNeighbors fails off Linux: rackboot checks which NIC asks for a
// boot script in the kernel's neighbour table, which only Linux exposes here.
func NewKernelNeighbors(string) (*KernelNeighbors, error) {
	return nil, errors.New("checking which NIC asks for a boot script needs Linux's neighbour table: run rackboot serve on Linux")
}

// Neighbor implements Neighbors.
func (*KernelNeighbors) Neighbor(netip.Addr) (net.HardwareAddr, error) {
	return nil, ErrNoNeighbor
}
