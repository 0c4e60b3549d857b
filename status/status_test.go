package status

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/pxe"
)

var t0 = time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)

func store(t *testing.T) *inventory.Store {
	t.Helper()
	st, err := inventory.Open(t.TempDir(), inventory.WithFlushDelay(time.Hour), inventory.WithClock(func() time.Time { return t0 }))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func serve(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h) // binds 127.0.0.1:0
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestAPIAndPage(t *testing.T) {
	st := store(t)
	st.Record(pxe.Event{Name: "cp1", Addr: netip.MustParseAddr("10.99.0.10"), Stage: pxe.StageDHCP, Time: t0})
	if err := st.AddLog("cp1", inventory.LogLine{Msg: "<script>alert(1)</script>"}); err != nil {
		t.Fatal(err)
	}
	h, err := Handler(st, WithClock(func() time.Time { return t0 }))
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, h)

	resp, body := get(t, srv.URL+"/api/machines")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("api: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	var mr MachinesResponse
	if err := json.Unmarshal([]byte(body), &mr); err != nil {
		t.Fatal(err)
	}
	if !mr.Time.Equal(t0) || len(mr.Machines) != 1 || mr.Machines[0].Stage != pxe.StageDHCP || mr.Machines[0].Addr.String() != "10.99.0.10" || len(mr.Machines[0].Logs) != 1 || len(mr.Stages) != len(inventory.Stages()) {
		t.Fatalf("api body: %s", body)
	}

	resp, body = get(t, srv.URL+"/")
	if resp.StatusCode != 200 || !strings.Contains(body, `<script src="app.js"`) || !strings.Contains(resp.Header.Get("Content-Security-Policy"), "default-src 'self'") {
		t.Fatalf("page: %s %q", resp.Status, body)
	}
	if strings.Contains(body, "http://") || strings.Contains(body, "https://") {
		t.Fatal("page loads something from outside")
	}
	resp, body = get(t, srv.URL+"/app.js")
	if resp.StatusCode != 200 || !strings.Contains(body, "api/machines") || strings.Contains(body, "innerHTML") {
		t.Fatalf("app.js: %s", resp.Status)
	}
	if resp, _ := get(t, srv.URL+"/nope"); resp.StatusCode != 404 {
		t.Fatalf("/nope: %s", resp.Status)
	}
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/machines", nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST api: %v %v", resp, err)
	}
}

func TestMetrics(t *testing.T) {
	st := store(t)
	st.Record(pxe.Event{Name: "cp1", Stage: pxe.StageDHCP})
	st.Record(pxe.Event{Name: "cp2", Stage: pxe.StageDHCP})
	st.Record(pxe.Event{Name: "w1", Stage: pxe.StageDHCP})
	for _, s := range []string{inventory.StageInstalling, inventory.StageInstalled, inventory.StageRunning} {
		if err := st.MarkStage("w1", s, ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.AddLog("w1", inventory.LogLine{Msg: "x"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		image    string
		manifest bool
		n        int64
	}{{"registry.k8s.io/pause:3.10", true, 527}, {"", false, 4096}, {"ghcr.io/siderolabs/kubelet:v1.35.0", true, 1000}} {
		if err := st.AddPull("w1", p.image, p.manifest, p.n); err != nil {
			t.Fatal(err)
		}
	}
	extra := prometheus.NewCounter(prometheus.CounterOpts{Name: "rackboot_test_extra_total", Help: "x"})
	extra.Add(7)
	h, err := Handler(st, WithCollectors(extra))
	if err != nil {
		t.Fatal(err)
	}
	_, body := get(t, serve(t, h).URL+"/metrics")
	for _, want := range []string{
		`rackboot_machines{stage="dhcp"} 2`,
		`rackboot_machines{stage="running"} 1`,
		`rackboot_machines{stage="installing"} 0`,
		`rackboot_machines_installed 1`,
		`rackboot_events_total{stage="dhcp"} 3`,
		`rackboot_events_total{stage="installed"} 1`,
		`rackboot_kernel_log_lines_total 1`,
		`rackboot_registry_pulled_bytes_total{machine="w1"} 5623`,
		`rackboot_registry_pulled_images{machine="w1"} 2`,
		`rackboot_test_extra_total 7`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, "go_goroutines") {
		t.Error("the global registry leaked into the private one")
	}
	// A collector registered twice is an error, not a panic.
	if _, err := Handler(st, WithCollectors(extra, extra)); err == nil {
		t.Fatal("duplicate collector accepted")
	}
}

func TestFetchAndTable(t *testing.T) {
	st := store(t)
	st.Record(pxe.Event{Name: "cp1", MAC: mustMAC(t, "02:00:00:00:00:01"), Addr: netip.MustParseAddr("10.99.0.10"), Stage: pxe.StageConfig, Time: t0.Add(-90 * time.Second)})
	if err := st.MarkStage("cp1", inventory.StageInstalled, "install done,\trebooting\n"); err != nil {
		t.Fatal(err)
	}
	st.Record(pxe.Event{MAC: mustMAC(t, "02:00:00:00:00:99"), Stage: pxe.StageDiscovered, Time: t0.Add(-3 * time.Hour)})
	if err := st.AddPull("cp1", "factory.talos.dev/metal-installer/x:v1.13.0", true, 1024); err != nil {
		t.Fatal(err)
	}
	if err := st.AddPull("cp1", "", false, 3<<20); err != nil {
		t.Fatal(err)
	}
	h, err := Handler(st)
	if err != nil {
		t.Fatal(err)
	}
	srv := serve(t, h)
	mr, err := Fetch(context.Background(), srv.Client(), srv.URL+"/")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, mr.Machines, t0.Add(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	got := buf.String()
	want := "" +
		"NAME       MAC                ADDRESS     STAGE       INSTALLED  PULLED            LAST SEEN  DETAIL\n" +
		"(unknown)  02:00:00:00:00:99  -           discovered  no         -                 3h ago     \n" +
		"cp1        02:00:00:00:00:01  10.99.0.10  installed   yes        1 image, 3.0 MiB  10s ago    install done, rebooting \n"
	if got != want {
		t.Fatalf("table:\n%s\nwant:\n%s", got, want)
	}

	if _, err := Fetch(context.Background(), srv.Client(), "ftp://x"); err == nil || !strings.Contains(err.Error(), "not an http(s) URL") {
		t.Fatalf("bad URL: %v", err)
	}
	if _, err := Fetch(context.Background(), srv.Client(), srv.URL+"/nope/"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("404: %v", err)
	}
	srv.Close()
	if _, err := Fetch(context.Background(), http.DefaultClient, srv.URL); err == nil {
		t.Fatal("fetch from a closed server succeeded")
	}
}

func mustMAC(t *testing.T, s string) []byte {
	t.Helper()
	hw, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return hw
}
