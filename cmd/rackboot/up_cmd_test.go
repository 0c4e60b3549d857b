package main

import (
	"bytes"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/bringup"
	"github.com/dotfile/rackboot/bringup/bringuptest"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
	"github.com/dotfile/rackboot/status"
)

// loopbackRack is a rack whose addresses are all on the loopback network,
// so that `rackboot up` sends nothing anywhere else.
const loopbackRack = `cluster:
  name: loop
  talosVersion: v1.13.0
  kubernetesVersion: 1.36.0
  vip: 127.0.10.10
  network:
    subnet: 127.0.10.0/24
    gateway: 127.0.10.1
    nameservers: [127.0.10.1]
  schematic:
    id: 376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba
machines:
  - name: cp1
    role: controlplane
    select:
      mac: ["52:54:00:c0:00:01"]
    address: 127.0.10.11/24
  - name: w1
    role: worker
    select:
      mac: ["52:54:00:c0:00:02"]
    address: 127.0.10.21/24
`

func runUpArgs(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// `rackboot up` bootstraps etcd through the first control plane's Talos API
// (a real gRPC MachineService over mTLS with the rack's secrets), records
// it, then waits for the VIP, which never answers here: the step times out
// with a clear message. A second run makes no Bootstrap call.
func TestUpBootstrapsOnceThenWaitsForTheVIP(t *testing.T) {
	dir := t.TempDir()
	rack := filepath.Join(dir, "rack.yaml")
	if err := os.WriteFile(rack, []byte(loopbackRack), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	b, _, err := profiles.LoadOrCreateSecrets(state, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	apid := bringuptest.Start(t, b, "127.0.10.11:0")
	args := []string{"up", "--rack", rack, "--state", state, "--serve=false", "--skip-bundles", "--timeout", "1s", "--bootstrap-endpoint", apid.Addr()}

	out, err := runUpArgs(t, args...)
	var se *bringup.StepError
	if !errors.As(err, &se) || se.Step != 3 || !se.Timeout {
		t.Fatalf("err = %v, want a timeout of step 3 (the VIP)\n%s", err, out)
	}
	for _, want := range []string{
		"[3/5] waiting for the VIP 127.0.10.10:6443: not done after 1s",
		"https://127.0.10.10:6443/readyz",
		// The last attempt's error: refused at once on loopback, or, on a
		// loaded machine, the step's deadline reached first.
		"last error: Get \"https://127.0.10.10:6443/readyz\"",
		"look at: a control plane takes the VIP once etcd is healthy; with TALOSCONFIG=" + filepath.Join(state, "talosconfig") + ": `talosctl -n 127.0.10.11 service etcd`",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	for _, want := range []string{
		"[1/5] waiting for the first control plane cp1 (127.0.10.11) to be installed: skipped (no inventory to watch)",
		"[2/5] bootstrapping etcd on cp1 (127.0.10.11) ...",
		"      bootstrapped on 127.0.10.11",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if apid.Calls() != 1 {
		t.Fatalf("%d Bootstrap calls, want 1", apid.Calls())
	}
	if nodes := apid.Nodes(); len(nodes) != 1 || nodes[0] != "127.0.10.11" {
		t.Fatalf("Bootstrap went to node %v, want the first control plane's own address", nodes)
	}
	for _, f := range []string{bringup.BootstrapFile, "talosconfig", "kubeconfig"} {
		fi, err := os.Stat(filepath.Join(state, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", f, fi, err)
		}
	}

	out, err = runUpArgs(t, args...)
	if !errors.As(err, &se) || se.Step != 3 {
		t.Fatalf("second run: err = %v\n%s", err, out)
	}
	if !strings.Contains(out, "skipped (etcd already bootstrapped on 127.0.10.11") || !strings.Contains(out, "already bootstrapped (recorded) on 127.0.10.11") {
		t.Errorf("second run output:\n%s", out)
	}
	if apid.Calls() != 1 {
		t.Fatalf("second run made a Bootstrap call (%d in all)", apid.Calls())
	}
}

// A control plane without a static address is refused before anything
// starts (by the rack's validation; the driver refuses it too).
func TestUpRefusesDHCPFirstControlPlane(t *testing.T) {
	dir := t.TempDir()
	rack := filepath.Join(dir, "rack.yaml")
	if err := os.WriteFile(rack, []byte(strings.Replace(loopbackRack, "    address: 127.0.10.11/24\n", "", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	out, err := runUpArgs(t, "up", "--rack", rack, "--state", state, "--serve=false", "--skip-bundles")
	if err == nil || !strings.Contains(out, "control plane cp1 has no static address") {
		t.Fatalf("err = %v\n%s", err, out)
	}
	if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state written after a refusal: %v", err)
	}
}

// servedStages follows a real inventory through serve's real status API.
func TestServedStages(t *testing.T) {
	store, err := inventory.Open(t.TempDir(), inventory.WithFlushDelay(0))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	h, err := status.Handler(store)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	mac, _ := net.ParseMAC("52:54:00:c0:00:01")
	store.Record(pxe.Event{Name: "cp1", MAC: mac, Stage: pxe.StageConfig})

	st := newServedStages(&http.Client{Timeout: 5 * time.Second}, srv.URL, 10*time.Millisecond, slog.New(slog.DiscardHandler))
	if stage, _, _ := st.Stage("cp1"); stage != "" {
		t.Fatalf("stage %q before any poll", stage)
	}
	ch, stop := st.Subscribe()
	defer stop()
	<-ch
	if stage, _, installed := st.Stage("cp1"); stage != pxe.StageConfig || installed {
		t.Fatalf("got %q installed=%v, want config, not installed", stage, installed)
	}
	if err := store.MarkStage("cp1", inventory.StageInstalled, ""); err != nil {
		t.Fatal(err)
	}
	for {
		<-ch
		if stage, _, installed := st.Stage("cp1"); installed {
			if stage != inventory.StageInstalled {
				t.Fatalf("installed at stage %q", stage)
			}
			break
		}
	}
}
