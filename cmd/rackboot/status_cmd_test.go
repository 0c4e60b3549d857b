package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/pxe"
	"github.com/dotfile/rackboot/status"
)

func runStatus(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"status"}, args...))
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestStatusCommand(t *testing.T) {
	dir := t.TempDir()
	st, err := inventory.Open(dir, inventory.WithFlushDelay(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	st.Record(pxe.Event{Name: "cp1", Addr: netip.MustParseAddr("10.99.0.10"), Stage: pxe.StageConfig})
	if err := st.MarkStage("cp1", inventory.StageInstalled, "rebooting"); err != nil {
		t.Fatal(err)
	}
	h, err := status.Handler(st)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	out, err := runStatus(t, "--server", srv.URL)
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	if !strings.HasPrefix(out, "NAME ") || !strings.Contains(out, "cp1") || !strings.Contains(out, "10.99.0.10") || !strings.Contains(out, "installed") {
		t.Fatalf("table:\n%s", out)
	}

	out, err = runStatus(t, "--server", srv.URL, "--json")
	var ms []inventory.Machine
	if err != nil || json.Unmarshal([]byte(out), &ms) != nil || len(ms) != 1 || !ms[0].Installed {
		t.Fatalf("--json: %v\n%s", err, out)
	}

	// Offline reads the saved state.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	out, err = runStatus(t, "--offline", "--state", dir)
	if err != nil || !strings.Contains(out, "cp1") {
		t.Fatalf("--offline: %v\n%s", err, out)
	}

	srv.Close()
	if _, err := runStatus(t, "--server", srv.URL, "--timeout", "5s"); err == nil || !strings.Contains(err.Error(), "is rackboot running") {
		t.Fatalf("closed server: %v", err)
	}
}
