//go:build windows

package pxe

import (
	"errors"
	"fmt"
	"syscall"
)

// dhcpSockopts allows broadcast on a DHCP socket. Windows cannot bind a
// socket to an interface by name: DHCP there needs a laptop with the rack's
// network as its only LAN (or --dhcp off with the router's next-server).
func dhcpSockopts(fd uintptr, iface string) error {
	if err := syscall.SetsockoptInt(syscall.Handle(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1); err != nil {
		return fmt.Errorf("allow broadcast: %w", err)
	}
	if iface != "" {
		return errors.New("binding DHCP to an interface is not supported on Windows: leave --interface empty, or use --dhcp off")
	}
	return nil
}
