package bmc

import (
	"context"
	"errors"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func redfishConfig(t *testing.T, s *sushy, addr string) (Config, *syncBuffer) {
	log, buf := testLog(t)
	return Config{Address: addr, Protocol: ProtocolRedfish, User: s.User, Password: s.Password,
		PowerTimeout: 25 * time.Second, SoftTimeout: 15 * time.Second, Log: log}, buf
}

func openT(t *testing.T, cfg Config) Driver {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func noSecret(t *testing.T, secret string, texts ...string) {
	t.Helper()
	for _, s := range texts {
		if strings.Contains(s, secret) {
			t.Errorf("the password appears in: %s", s)
		}
	}
}

// Power on and off against sushy's fake system, which applies a change 1-11
// s later: the driver must poll, and a repeated request is a no-op.
func TestRedfishPowerOnOff(t *testing.T) {
	s := startSushy(t, sushyOpts{})
	cfg, logs := redfishConfig(t, s, s.URL)
	d := openT(t, cfg)
	ctx := context.Background()
	if st, err := d.PowerState(ctx); err != nil || st != StateOff {
		t.Fatalf("initial state %s, %v; want off", st, err)
	}
	if err := d.PowerOn(ctx); err != nil {
		t.Fatal(err)
	}
	if got := s.System(t)["PowerState"]; got != "On" {
		t.Fatalf("after PowerOn the emulator says %v", got)
	}
	if err := d.PowerOn(ctx); err != nil { // already on: nothing sent
		t.Fatal(err)
	}
	if n := strings.Count(logs.String(), "resetType=On"); n != 1 {
		t.Errorf("%d On resets sent, want 1 (the second PowerOn must see the machine on)", n)
	}
	if err := d.PowerOff(ctx); err != nil {
		t.Fatal(err)
	}
	if got := s.System(t)["PowerState"]; got != "Off" {
		t.Fatalf("after PowerOff the emulator says %v", got)
	}
	if !strings.Contains(logs.String(), "resetType=ForceOff") {
		t.Error("PowerOff did not use ForceOff")
	}
	noSecret(t, s.Password, logs.String())
}

// A cycle of a running machine: graceful shutdown (sushy applies it), then
// on. The emulator's external notifications show the machine really went off
// and came back.
func TestRedfishPowerCycle(t *testing.T) {
	s := startSushy(t, sushyOpts{PowerState: "On", Notify: true})
	cfg, logs := redfishConfig(t, s, s.URL)
	d := openT(t, cfg)
	if err := d.PowerCycle(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := s.System(t)["PowerState"]; got != "On" {
		t.Fatalf("after PowerCycle the emulator says %v", got)
	}
	var seq []string
	for len(s.Notes) > 0 {
		n := <-s.Notes
		if n["pending_power"] == nil {
			seq = append(seq, n["power_state"].(string))
		}
	}
	if strings.Join(seq, ",") != "Off,On" {
		t.Errorf("applied power states %v, want Off then On", seq)
	}
	if !strings.Contains(logs.String(), "resetType=GracefulShutdown") {
		t.Error("the cycle did not start with a graceful shutdown")
	}
}

// One-time PXE: the override is set and read back; sushy reads "Once" back
// as "Continuous", and the driver says so instead of hiding it.
func TestRedfishNetbootOnce(t *testing.T) {
	s := startSushy(t, sushyOpts{})
	cfg, logs := redfishConfig(t, s, s.URL)
	d := openT(t, cfg)
	for _, mode := range []BootMode{BootModeUEFI, BootModeBIOS} {
		got, err := d.SetNetbootOnce(context.Background(), mode)
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		if got.Target != "Pxe" || got.Mode != mode || !got.Netboots() {
			t.Errorf("%s: read back %s", mode, got)
		}
		if got.Enabled != EnabledContinuous || len(got.Differences) != 1 || !strings.Contains(got.Differences[0], "Continuous, not Once") {
			t.Errorf("%s: sushy's Once->Continuous not reported: %s", mode, got)
		}
		boot := s.System(t)["Boot"].(map[string]any)
		wantMode := map[BootMode]string{BootModeUEFI: "UEFI", BootModeBIOS: "Legacy"}[mode]
		if boot["BootSourceOverrideTarget"] != "Pxe" || boot["BootSourceOverrideMode"] != wantMode || boot["BootSourceOverrideEnabled"] != string(redfishEnabled(got.Enabled)) {
			t.Errorf("%s: the emulator holds %v, the driver reported %s", mode, boot, got)
		}
	}
	if !strings.Contains(logs.String(), "different boot override than asked") {
		t.Error("the difference was not logged")
	}
}

func redfishEnabled(e Enablement) string {
	return map[Enablement]string{EnabledOnce: "Once", EnabledContinuous: "Continuous", EnabledDisabled: "Disabled"}[e]
}

func TestRedfishAutoProbe(t *testing.T) {
	s := startSushy(t, sushyOpts{})
	cfg, _ := redfishConfig(t, s, s.Addr) // no scheme: https is tried first, then http
	cfg.Protocol = ProtocolAuto
	d := openT(t, cfg)
	info := d.Info()
	if info.Protocol != ProtocolRedfish || !info.Probed || info.Endpoint != s.URL || !strings.HasSuffix(info.System, s.UUID) {
		t.Errorf("info %+v", info)
	}
	if st, err := d.PowerState(context.Background()); err != nil || st != StateOff {
		t.Errorf("state %s, %v", st, err)
	}
}

func TestRedfishWrongPassword(t *testing.T) {
	s := startSushy(t, sushyOpts{})
	for _, p := range []Protocol{ProtocolRedfish, ProtocolAuto} {
		cfg, logs := redfishConfig(t, s, s.Addr)
		cfg.Protocol = p
		cfg.Password = "wrong-" + s.Password
		_, err := Open(context.Background(), cfg)
		if !errors.Is(err, ErrAuth) {
			t.Fatalf("%s: err = %v, want ErrAuth", p, err)
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "bmc "+s.Addr+" (redfish): ") || !strings.Contains(msg, "check the BMC user and password") {
			t.Errorf("%s: error %q", p, msg)
		}
		noSecret(t, cfg.Password, msg, logs.String())
		t.Logf("%s: %v", p, err)
	}
}

// TLS: sushy serves https with a certificate the test made. Not verifying
// (the default) works and says so; verifying against its CA works;
// verifying without it fails, naming the certificate, with no fallback to
// plain http.
func TestRedfishTLS(t *testing.T) {
	s := startSushy(t, sushyOpts{TLS: true})
	cfg, logs := redfishConfig(t, s, s.Addr)
	cfg.Protocol = ProtocolAuto
	d := openT(t, cfg)
	if info := d.Info(); info.Endpoint != s.URL || info.TLSVerified {
		t.Errorf("default: %+v", info)
	}
	if !strings.Contains(logs.String(), "TLS certificate not verified") {
		t.Error("accepting an unverified certificate was not logged")
	}
	if st, err := d.PowerState(context.Background()); err != nil || st != StateOff {
		t.Errorf("state %s, %v", st, err)
	}

	cfg.VerifyTLS, cfg.RootCAs = true, s.CAPool
	d = openT(t, cfg)
	if info := d.Info(); !info.TLSVerified {
		t.Errorf("verified: %+v", info)
	}
	if _, err := d.SetNetbootOnce(context.Background(), BootModeUEFI); err != nil {
		t.Error(err)
	}

	cfg.RootCAs = nil
	_, err := Open(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "http://") {
		t.Errorf("unknown CA: err = %v", err)
	}
	t.Logf("unknown CA: %v", err)
}

// Never more than one request in flight: eight goroutines share one
// driver; a proxy in front of sushy counts concurrent requests.
func TestRedfishOneRequestInFlight(t *testing.T) {
	s := startSushy(t, sushyOpts{})
	target, _ := url.Parse(s.URL)
	var inflight, peak, total atomic.Int32
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inflight.Add(1)
		defer inflight.Add(-1)
		total.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		proxy.ServeHTTP(w, r)
	})}
	l := listenLocal(t)
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })

	cfg, _ := redfishConfig(t, s, "http://"+l.Addr().String())
	d := openT(t, cfg)
	peak.Store(0)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := d.PowerState(context.Background()); err != nil {
				t.Error(err)
			}
			if i%4 == 0 {
				if _, err := d.SetNetbootOnce(context.Background(), BootModeUEFI); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if peak.Load() != 1 || total.Load() < 8 {
		t.Errorf("peak %d requests in flight over %d requests, want 1", peak.Load(), total.Load())
	}
}
