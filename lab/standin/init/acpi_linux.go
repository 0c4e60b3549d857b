//go:build linux

package main

import (
	"context"
	"errors"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"

	"github.com/dotfile/rackboot/lab/standin/acpi"
)

// startPowerButton powers the machine off when the ACPI power button is pressed
// (a BMC's soft off, QEMU's system_powerdown), at any stage, as Talos's
// machined does: main.go starts Controller.ListenForEvents, whose ACPI
// goroutine (v1alpha1_controller.go) waits in acpi.StartACPIListener, logs
// "shutdown via ACPI received" and runs the shutdown sequence with
// takeover (whatever sequence runs, an install included, is cancelled),
// ending in a power off. The stand-in has no services to stop: it syncs
// the disks and powers off.
//
// Without the acpi_event family (no ACPI: acpi=off, a device-tree boot)
// Talos's listener returns its error, ListenForEvents returns it and
// machined logs "WARNING: signals and ACPI events will be ignored" and
// goes on; so does the stand-in.
//
// startPowerButton joins the ACPI event group before it returns (events
// sent earlier are lost, as in Talos) and waits in the background.
func startPowerButton(log *slog.Logger) {
	l, err := acpi.Open(log)
	if err != nil {
		if errors.Is(err, acpi.ErrNotAvailable) {
			log.Warn("no ACPI power button: ACPI events will be ignored", "err", err)
		} else {
			log.Warn("ACPI events will be ignored", "err", err)
		}
		return
	}
	log.Info("listening for the ACPI power button", "family", acpi.FamilyName, "group", acpi.GroupName)
	go func() {
		err := l.Wait(context.Background())
		_ = l.Close()
		if err != nil {
			log.Warn("ACPI events will be ignored", "err", err)
			return
		}
		log.Info("shutdown via ACPI received")
		_ = os.Stdout.Sync()
		unix.Sync()
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
			log.Error("power off", "err", err)
		}
	}()
}
