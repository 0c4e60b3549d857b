//go:build !windows

package pxe

import (
	"fmt"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"golang.org/x/sys/unix"
)

// dhcpSockopts allows broadcast on a DHCP socket and binds it to iface.
func dhcpSockopts(fd uintptr, iface string) error {
	if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
		return fmt.Errorf("allow broadcast: %w", err)
	}
	if iface == "" {
		return nil
	}
	if err := dhcpv4.BindToInterface(int(fd), iface); err != nil {
		return fmt.Errorf("bind to interface %s: %w", iface, err)
	}
	return nil
}
