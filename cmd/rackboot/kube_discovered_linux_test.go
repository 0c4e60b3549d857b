package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/handoff"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/kubestate"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
	"github.com/dotfile/rackboot/rackedit"
)

// kubeReplica is one replica's inventory as serve --kube opens it (the
// discovered machines' summary, the watch taking other writers' changes
// and deletions in), on a client of its own.
func (l *kubeLab) kubeReplica(t *testing.T) (*kubestate.Store, *inventory.Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := kubestate.New(kubernetes.NewForConfigOrDie(l.env.Config), handoff.Namespace)
	if err != nil {
		t.Fatal(err)
	}
	ks := &kubeServe{state: st}
	inv, err := ks.inventory(ctx, inventory.WithFlushDelay(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- st.Machines().WatchChanges(ctx, inv.Observe, inv.ObserveDeleted) }()
	t.Cleanup(func() { cancel(); <-done })
	return st, inv
}

// checkDiscovered: a machine outside the rack file that netbooted on a
// replica (DHCP as arm64 UEFI, then the discovery boot) is listed by
// machines --kube with its arch, address and serial; machine adopt --kube
// writes arch: arm64 from its record and says it waits in maintenance
// mode; machine forget --kube (the MAC in capitals) deletes the record
// and the replica drops it; forgetting it again says it is not there.
func (l *kubeLab) checkDiscovered(t *testing.T) {
	const mac = "52:54:00:00:00:0b"
	hw, _ := net.ParseMAC(mac)
	_, replica := l.kubeReplica(t)
	addr := netip.MustParseAddr("10.0.0.31")
	replica.Record(pxe.Event{MAC: hw, Addr: addr, Stage: pxe.StageDHCP, Detail: "proxy offer: arch efi-arm64, ipxe false, boot ipxe-arm64.efi"})
	replica.Record(pxe.Event{MAC: hw, Addr: addr, Stage: pxe.StageDiscoveryBoot, Detail: `uuid=0c5e3a3e-0000-4000-8000-000000000031 serial="SN 31" arch=efi-arm64 kernel=k`})
	if err := replica.Flush(); err != nil {
		t.Fatal(err)
	}
	var rep machinesReport
	if err := json.Unmarshal([]byte(l.mustKube(t, "machines", "--json")), &rep); err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(rep.Discovered, func(d discoveredMachine) bool { return d.MAC == mac })
	if i < 0 {
		t.Fatalf("machines --kube lists no discovered %s: %+v", mac, rep.Discovered)
	}
	if d := rep.Discovered[i]; d.Arch != "arm64" || d.Addr != addr || d.Serial != "SN 31" || d.Stage != pxe.StageDiscoveryBoot {
		t.Errorf("machines --kube: %s as %+v", mac, d)
	}
	out := l.mustKube(t, "machine", "adopt", mac, "--name", "a1", "--role", "worker", "--no-apply")
	if !strings.Contains(out, "a1 is waiting in Talos's maintenance mode (at 10.0.0.31)") {
		t.Errorf("adopt --kube of a machine in its discovery boot:\n%s", out)
	}
	rackText, err := l.state.RackFile(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	r, err := profiles.Load("rack.yaml", rackText)
	if err != nil || r.Machine("a1") == nil || r.Machine("a1").Arch != "arm64" {
		t.Errorf("a1 in the rack after adopt --kube (%v): want arch arm64\n%s", err, rackText)
	}

	start := time.Now()
	out = l.mustKube(t, "machine", "forget", strings.ToUpper(mac))
	if !strings.Contains(out, "forgot "+mac) {
		t.Errorf("forget --kube:\n%s", out)
	}
	ms, err := l.state.Machines().Load(ctxT(t))
	if err != nil || slices.ContainsFunc(ms, func(m inventory.Machine) bool { return m.Key == mac }) {
		t.Errorf("the record is still there after forget --kube (%v)", err)
	}
	for {
		if _, ok := replica.Machine(mac); !ok {
			break
		}
		if time.Since(start) > 10*time.Second {
			t.Fatal("the replica still holds the forgotten machine after 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("measured: the replica dropped the forgotten machine %v after forget --kube began", time.Since(start).Round(time.Millisecond))
	if _, err := l.kube(t, false, "machine", "forget", mac); err == nil || !strings.Contains(err.Error(), "no discovered machine with this MAC") {
		t.Errorf("forget --kube of a machine not there: %v", err)
	}
}

// checkReload: the control socket's /rack/reload on a replica (no watch
// running, so only the reload can take it in) reads the rack ConfigMap and
// answers what changed; the same rack again is "unchanged"; a change of
// the cluster settings is refused with what to do.
func (l *kubeLab) checkReload(t *testing.T) {
	ctx := ctxT(t)
	r, err := l.state.Rack(ctx)
	if err != nil {
		t.Fatal(err)
	}
	live := newLiveRack(r, slog.New(slog.DiscardHandler))
	live.start(func(*profiles.Rack) *profiles.Booter { return nil })
	st, inv := l.kubeReplica(t)
	ks := &kubeServe{state: st, log: slog.New(slog.DiscardHandler)}
	ks.rackWatch(live, inv) // not run: the reload alone
	dir := t.TempDir()
	ln, err := listenControl(dir)
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- serveControl(sctx, ln, controlHandler(http.NotFoundHandler(), controlActions{reload: ks.reload}), slog.New(slog.DiscardHandler))
	}()
	defer func() { stop(); <-served }()
	post := func() (int, map[string]string) {
		resp, err := controlClient(dir, 20*time.Second).Post(controlBase+"/rack/reload", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]string
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	if code, body := post(); code != http.StatusOK || !strings.HasPrefix(body["message"], "rack reloaded:") {
		t.Errorf("first reload: %d %v", code, body)
	}
	edit := func(f func([]byte) ([]byte, error)) {
		if err := l.state.UpdateRackFile(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	edit(func(src []byte) ([]byte, error) {
		return rackedit.AddMachine(src, profiles.Machine{Name: "w4", Role: profiles.RoleWorker, Select: profiles.Selector{MAC: []string{"52:54:00:00:00:0c"}}})
	})
	code, body := post()
	if code != http.StatusOK || !strings.Contains(body["message"], "added w4") {
		t.Errorf("reload after w4 was added: %d %v", code, body)
	}
	if live.Rack().Machine("w4") == nil {
		t.Error("the replica's rack has no w4 after the reload")
	}
	if code, body := post(); code != http.StatusOK || !strings.HasPrefix(body["message"], "rack unchanged: configmap "+handoff.Namespace+"/rackboot-rack") {
		t.Errorf("reload of the same rack: %d %v", code, body)
	}
	edit(func(src []byte) ([]byte, error) {
		return []byte(strings.Replace(string(src), "vip: 10.0.0.10", "vip: 10.0.0.9", 1)), nil
	})
	if code, body := post(); code != http.StatusConflict || !strings.Contains(body["error"], "restart rackboot serve") {
		t.Errorf("reload with another VIP: %d %v", code, body)
	}
	if live.Rack().Cluster.VIP != r.Cluster.VIP {
		t.Error("a refused reload changed the replica's rack")
	}
	edit(func(src []byte) ([]byte, error) {
		return []byte(strings.Replace(string(src), "vip: 10.0.0.9", "vip: 10.0.0.10", 1)), nil
	})
}
