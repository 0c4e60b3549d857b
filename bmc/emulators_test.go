package bmc

// The BMC emulators the tests run against live in internal/bmctest
// (sushy-tools' Redfish emulator and OpenIPMI's ipmi_sim); these are the
// short names this package's tests use.

import (
	"log/slog"
	"net"
	"testing"

	"github.com/dotfile/rackboot/internal/bmctest"
	"github.com/dotfile/rackboot/internal/syncbuf"
)

type (
	sushy      = bmctest.Sushy
	sushyOpts  = bmctest.SushyOpts
	ipmiSim    = bmctest.IPMISim
	syncBuffer = syncbuf.Buffer
)

func startSushy(t *testing.T, o sushyOpts) *sushy { return bmctest.StartSushy(t, o) }

func startIPMISim(t *testing.T, power string) *ipmiSim { return bmctest.StartIPMISim(t, power) }

func testLog(t *testing.T) (*slog.Logger, *syncBuffer) { return bmctest.TestLog(t) }

func listenLocal(t *testing.T) net.Listener { return bmctest.ListenLocal(t) }
