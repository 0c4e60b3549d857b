package bringup

import (
	"testing"
	"time"

	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"

	"github.com/dotfile/rackboot/bringup/bringuptest"
)

// answer is a reply of the test apid.
type answer = bringuptest.Answer

// talosPKI is a rack's secrets bundle and its admin talosconfig.
type talosPKI struct {
	bundle      *secrets.Bundle
	talosconfig *clientconfig.Config
}

func newTalosPKI(t *testing.T) talosPKI {
	t.Helper()
	b, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersion1_13)
	if err != nil {
		t.Fatal(err)
	}
	in, err := generate.NewInput("test", "https://192.0.2.10:6443", "1.36.0",
		generate.WithVersionContract(config.TalosVersion1_13),
		generate.WithSecretsBundle(b),
		generate.WithEndpointList([]string{"127.0.0.1"}))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := in.Talosconfig()
	if err != nil {
		t.Fatal(err)
	}
	return talosPKI{bundle: b, talosconfig: tc}
}

// startApid serves a real Talos MachineService on 127.0.0.1:0 for pki.
func startApid(t *testing.T, pki talosPKI, answers ...answer) (*bringuptest.Apid, string) {
	t.Helper()
	a := bringuptest.Start(t, pki.bundle, "127.0.0.1:0", answers...)
	return a, a.Addr()
}
