// Package acpi waits for the ACPI power button the way Talos's machined does
// (internal/app/machined/pkg/runtime/v1alpha1/acpi/acpi.go,
// StartACPIListener): the kernel's "acpi_event" generic netlink family
// (drivers/acpi/event.c), its "acpi_mc_group" multicast group, and an
// attribute whose text starts with "button/power". QEMU's ACPI power button
// (QMP system_powerdown, a BMC's soft off) arrives this way.
package acpi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// Talos v1.13.0's names (acpi.go).
const (
	// PowerButtonEvent is the event prefix of the power button.
	PowerButtonEvent = "button/power"
	// FamilyName is the kernel's generic netlink family for ACPI events.
	FamilyName = "acpi_event"
	// GroupName is the family's multicast group.
	GroupName = "acpi_mc_group"
)

// ErrNotAvailable: the kernel has no acpi_event family (no ACPI, e.g. a
// device-tree boot, or acpi=off).
var ErrNotAvailable = errors.New(FamilyName + " not available")

// Listener is a generic netlink socket joined to the ACPI event group.
type Listener struct {
	conn *genetlink.Conn
	log  *slog.Logger
}

// Open joins the acpi_event family's multicast group, as Talos's
// StartACPIListener does before it reads: events sent before Open are not
// seen. A missing family is ErrNotAvailable. log gets the events that are
// not the power button (Talos: "ignoring ACPI event"); nil discards them.
func Open(log *slog.Logger) (*Listener, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	conn, err := genetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("open generic netlink: %w", err)
	}
	f, err := conn.GetFamily(FamilyName)
	if err != nil {
		conn.Close() //nolint:errcheck
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w", ErrNotAvailable, err)
		}
		return nil, fmt.Errorf("look up generic netlink family %s: %w", FamilyName, err)
	}
	// Talos joins the ID it found, 0 when the group is missing (which
	// JoinGroup then refuses): the same here.
	var id uint32
	for _, g := range f.Groups {
		if g.Name == GroupName {
			id = g.ID
		}
	}
	if err := conn.JoinGroup(id); err != nil {
		conn.Close() //nolint:errcheck
		return nil, fmt.Errorf("join %s/%s (group %d): %w", FamilyName, GroupName, id, err)
	}
	return &Listener{conn: conn, log: log}, nil
}

// Wait blocks until the power button is pressed (nil), the socket fails
// (Talos: "error reading from ACPI channel") or ctx ends. Messages that do
// not parse are logged and skipped, as in Talos.
func (l *Listener) Wait(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		// Wakes the blocked Receive.
		_ = l.conn.SetReadDeadline(time.Unix(1, 0))
	})
	defer stop()
	for {
		msgs, _, err := l.conn.Receive()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			return fmt.Errorf("error reading from ACPI channel: %w", err)
		}
		if len(msgs) == 0 {
			continue
		}
		ok, err := Parse(msgs, PowerButtonEvent, l.log)
		if err != nil {
			l.log.Warn("failed to parse netlink message", "err", err)
			continue
		}
		if ok {
			return nil
		}
	}
}

// Close releases the socket.
func (l *Listener) Close() error {
	return l.conn.Close()
}

// Parse says whether any attribute of msgs starts with event, as Talos's
// parse does: every attribute of every message is read as a string (the
// kernel's struct acpi_genl_event starts with its NUL-padded device_class,
// "button/power"); other events are logged and skipped.
// A message too short for an attribute header is an error, reported only
// when no message matched; an attribute longer than its message ends that
// message quietly (Talos does not check the decoder's Err).
func Parse(msgs []genetlink.Message, event string, log *slog.Logger) (bool, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var errs []error
	for _, msg := range msgs {
		ad, err := netlink.NewAttributeDecoder(msg.Data)
		if err != nil {
			errs = append(errs, fmt.Errorf("failed to create attribute decoder: %w", err))
			continue
		}
		for ad.Next() {
			s := ad.String()
			if strings.HasPrefix(s, event) {
				return true, nil
			}
			log.Info("ignoring ACPI event", "event", s)
		}
	}
	return false, errors.Join(errs...)
}
