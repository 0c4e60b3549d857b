package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// The lab's IPv6 router advertisement responder.
//
// QEMU's iPXE ROM runs its IPv6 configurator next to DHCP and only says
// "Configuring ... ok" (and asks for its boot script) when both are done.
// With no router on the link the IPv6 one keeps soliciting until it gives
// up, ~15 s into every netboot. iPXE's ndp.c (ipv6conf_rx_router_advertisement,
// the same in the 2019 Debian build as today) ends the configurator on the
// first router advertisement that arrives while it is soliciting: with the
// M and O flags clear it starts no DHCPv6 and finishes at once. A router
// lifetime of 0 makes the sender "not a router" (iPXE's gateway6 then stays
// unset, and Linux hosts add no default route); with no prefix information
// nothing gets an address. So the RA carries nothing but the sender's MAC.

// ICMPv6 message types of router discovery (RFC 4861).
const (
	icmpRouterSolicitation  = 133
	icmpRouterAdvertisement = 134
)

// Neighbor discovery option types (RFC 4861 4.6).
const (
	ndOptSourceLL = 1
	ndOptPrefix   = 3
)

// ndHopLimit is the hop limit every router discovery packet carries, so a
// receiver knows it was not forwarded.
const ndHopLimit = 255

// RAMessage is the ICMPv6 router advertisement (from the type field on,
// checksum left zero: the kernel fills it for raw ICMPv6 sockets) that tells
// hosts there is nothing to configure: no current hop limit, M=0, O=0,
// router lifetime 0 (not a default router), no reachable or retransmit
// time, no prefix; only a source link-layer address option with mac (left
// out when mac is not 6 bytes long).
func RAMessage(mac net.HardwareAddr) []byte {
	b := make([]byte, 16, 24)
	b[0] = icmpRouterAdvertisement
	// b[1] code 0, b[2:4] checksum, b[4] cur hop limit 0, b[5] flags 0,
	// b[6:8] router lifetime 0, b[8:12] reachable 0, b[12:16] retrans 0.
	if len(mac) == 6 {
		b = append(b, ndOptSourceLL, 1)
		b = append(b, mac...)
	}
	return b
}

// RouterSolicitation is a router solicitation worth answering.
type RouterSolicitation struct {
	// SourceLL is the solicitor's MAC from its source link-layer address
	// option (nil when it sent none).
	SourceLL net.HardwareAddr
}

// CheckRS validates a received ICMPv6 message (from the type field on) as a
// router solicitation the way RFC 4861 6.1.1 asks: hop limit 255 (a
// negative hopLimit means the socket did not say, and is not checked), code
// 0, at least 8 bytes, well-formed options (none of length 0, none past the
// end), and no source link-layer address option when the source is the
// unspecified address. Any error means: ignore the packet.
func CheckRS(src netip.Addr, hopLimit int, msg []byte) (RouterSolicitation, error) {
	var rs RouterSolicitation
	if len(msg) < 8 {
		return rs, fmt.Errorf("router solicitation: %d bytes, want at least 8", len(msg))
	}
	if msg[0] != icmpRouterSolicitation {
		return rs, fmt.Errorf("ICMPv6 type %d is not a router solicitation (%d)", msg[0], icmpRouterSolicitation)
	}
	if msg[1] != 0 {
		return rs, fmt.Errorf("router solicitation: code %d, want 0", msg[1])
	}
	if hopLimit >= 0 && hopLimit != ndHopLimit {
		return rs, fmt.Errorf("router solicitation: hop limit %d, want %d (forwarded?)", hopLimit, ndHopLimit)
	}
	if src.IsMulticast() {
		return rs, fmt.Errorf("router solicitation from multicast address %s", src)
	}
	opts, err := parseNDOptions(msg[8:])
	if err != nil {
		return rs, fmt.Errorf("router solicitation: %w", err)
	}
	for _, o := range opts {
		if o.typ != ndOptSourceLL {
			continue
		}
		if src.IsValid() && src.IsUnspecified() {
			return rs, errors.New("router solicitation from the unspecified address carries a source link-layer address")
		}
		if len(o.data) >= 6 {
			rs.SourceLL = net.HardwareAddr(append([]byte(nil), o.data[:6]...))
		}
	}
	return rs, nil
}

// routerAdvert is a parsed router advertisement (tests read what the
// responder sends, and what a real client makes of it, with it).
type routerAdvert struct {
	hopLimit  uint8
	managed   bool
	other     bool
	lifetime  time.Duration
	prefixes  int
	sourceLL  net.HardwareAddr
	optionLen int
}

// parseRA reads an ICMPv6 router advertisement (from the type field on).
func parseRA(msg []byte) (routerAdvert, error) {
	var ra routerAdvert
	if len(msg) < 16 {
		return ra, fmt.Errorf("router advertisement: %d bytes, want at least 16", len(msg))
	}
	if msg[0] != icmpRouterAdvertisement || msg[1] != 0 {
		return ra, fmt.Errorf("ICMPv6 type %d code %d is not a router advertisement", msg[0], msg[1])
	}
	ra.hopLimit = msg[4]
	ra.managed = msg[5]&0x80 != 0
	ra.other = msg[5]&0x40 != 0
	ra.lifetime = time.Duration(binary.BigEndian.Uint16(msg[6:8])) * time.Second
	opts, err := parseNDOptions(msg[16:])
	if err != nil {
		return ra, fmt.Errorf("router advertisement: %w", err)
	}
	ra.optionLen = len(msg) - 16
	for _, o := range opts {
		switch o.typ {
		case ndOptPrefix:
			ra.prefixes++
		case ndOptSourceLL:
			if len(o.data) >= 6 {
				ra.sourceLL = net.HardwareAddr(append([]byte(nil), o.data[:6]...))
			}
		}
	}
	return ra, nil
}

// ndOption is one neighbor discovery option: its type and the bytes after
// the type and length fields.
type ndOption struct {
	typ  uint8
	data []byte
}

// parseNDOptions splits neighbor discovery options (RFC 4861 4.6: type,
// length in units of 8 bytes, never 0).
func parseNDOptions(b []byte) ([]ndOption, error) {
	var out []ndOption
	for len(b) > 0 {
		if len(b) < 2 {
			return nil, fmt.Errorf("option header cut short (%d byte left)", len(b))
		}
		n := int(b[1]) * 8
		if n == 0 {
			return nil, fmt.Errorf("option type %d has length 0", b[0])
		}
		if n > len(b) {
			return nil, fmt.Errorf("option type %d is %d bytes long, only %d left", b[0], n, len(b))
		}
		out = append(out, ndOption{typ: b[0], data: b[2:n]})
		b = b[n:]
	}
	return out, nil
}

// RAStats counts what the responder did.
type RAStats struct {
	Solicitations int64 // valid router solicitations received
	Ignored       int64 // received packets that were not a valid solicitation
	Adverts       int64 // router advertisements sent (the unsolicited one included)
}

// WithoutRA starts no router advertisement responder in the lab, so iPXE
// waits for IPv6 autoconfiguration as it would on a link with no IPv6
// router (to measure that wait, or when something else on the bridge sends
// router advertisements).
func WithoutRA() Option { return func(x *Lab) { x.noRA = true } }
