package bringup

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var testNow = time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC)

// sleeps records the waits of a Bootstrapper; after limit waits it ends the
// context (as a step timeout would).
type sleeps struct {
	mu     sync.Mutex
	waits  []time.Duration
	limit  int
	cancel context.CancelFunc
}

func (s *sleeps) sleep(ctx context.Context, d time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.waits = append(s.waits, d)
	if s.limit > 0 && len(s.waits) >= s.limit {
		s.cancel()
		return ctx.Err()
	}
	return ctx.Err()
}

func newTestBootstrapper(t *testing.T, pki talosPKI, dir, endpoint string, sl *sleeps) *Bootstrapper {
	t.Helper()
	b, err := NewBootstrapper(BootstrapConfig{
		StateDir:    dir,
		Talosconfig: pki.talosconfig,
		Node:        "127.0.0.1",
		VIP:         "192.0.2.10",
		Endpoint:    endpoint,
	}, WithClock(func() time.Time { return testNow }), WithSleep(sl.sleep), WithBackoff(time.Second, 4*time.Second), WithAttemptTimeout(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBootstrap runs the Bootstrapper against a real gRPC Talos
// MachineService over mutual TLS. Secrets bundles take seconds to generate
// (a 4096-bit RSA key), so the cases share two.
func TestBootstrap(t *testing.T) {
	pki, other := newTalosPKI(t), newTalosPKI(t)
	t.Run("answers", func(t *testing.T) { testBootstrapAgainstApid(t, pki) })
	t.Run("restart makes no call", func(t *testing.T) { testBootstrapRestartMakesNoCall(t, pki) })
	t.Run("crash window", func(t *testing.T) { testBootstrapCrashWindow(t, pki) })
	t.Run("record write fails", func(t *testing.T) { testBootstrapRecordWriteFails(t, pki) })
	t.Run("wrong secrets", func(t *testing.T) { testBootstrapWrongSecrets(t, pki, other) })
	t.Run("bad record is kept", func(t *testing.T) { testBootstrapBadRecordIsKept(t, pki) })
}

func testBootstrapAgainstApid(t *testing.T, pki talosPKI) {
	for _, tc := range []struct {
		name      string
		answers   []answer
		calls     int
		outcome   Outcome
		waits     []time.Duration
		wantErr   string // empty: success
		recorded  bool
		already   bool
		sleepsCap int
	}{
		{name: "once", calls: 1, outcome: Bootstrapped, recorded: true},
		{
			name:    "unavailable twice then ok",
			answers: []answer{{Err: status.Error(codes.Unavailable, "apid not ready")}, {Err: status.Error(codes.Unavailable, "apid not ready")}, {}},
			calls:   3, outcome: Bootstrapped, recorded: true, waits: []time.Duration{time.Second, 2 * time.Second},
		},
		{
			name:    "failed precondition backs off to the cap",
			answers: []answer{{Err: status.Error(codes.FailedPrecondition, "bootstrap is not available yet")}, {Err: status.Error(codes.FailedPrecondition, "x")}, {Err: status.Error(codes.FailedPrecondition, "x")}, {Err: status.Error(codes.FailedPrecondition, "x")}, {}},
			calls:   5, outcome: Bootstrapped, recorded: true, waits: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second},
		},
		{
			name:    "already exists is done",
			answers: []answer{{Err: status.Error(codes.AlreadyExists, "etcd data directory is not empty")}},
			calls:   1, outcome: AlreadyBootstrapped, recorded: true, already: true,
		},
		{
			name:    "already exists inside the node metadata",
			answers: []answer{{Err: status.Error(codes.AlreadyExists, "etcd data directory is not empty"), InMetadata: true}},
			calls:   1, outcome: AlreadyBootstrapped, recorded: true, already: true,
		},
		{
			name:    "permission denied fails fast",
			answers: []answer{{Err: status.Error(codes.PermissionDenied, "not authorized")}},
			calls:   1, wantErr: "the node refused (PermissionDenied)",
		},
		{
			name:    "unimplemented fails fast",
			answers: []answer{{Err: status.Error(codes.Unimplemented, "no such method")}},
			calls:   1, wantErr: "does not serve the Talos machine API",
		},
		{
			name:    "never ready gives up when the step ends",
			answers: []answer{{Err: status.Error(codes.Unavailable, "etcd service not running")}},
			calls:   3, sleepsCap: 3, wantErr: "gave up after 3 attempt(s)",
			waits: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, addr := startApid(t, pki, tc.answers...)
			dir := t.TempDir()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			sl := &sleeps{limit: tc.sleepsCap, cancel: cancel}
			res, err := newTestBootstrapper(t, pki, dir, addr, sl).Bootstrap(ctx)
			if got := srv.Calls(); got != tc.calls {
				t.Errorf("apid got %d Bootstrap calls, want %d", got, tc.calls)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if tc.waits != nil && !slices.Equal(sl.waits, tc.waits) {
				t.Errorf("waits %v, want %v", sl.waits, tc.waits)
			}
			rec, rerr := ReadRecord(dir)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if !tc.recorded {
				if rec != nil {
					t.Fatalf("a record was written after a failure: %+v", rec)
				}
				return
			}
			if res.Outcome != tc.outcome || res.Attempts != tc.calls {
				t.Errorf("result %+v, want outcome %v after %d attempts", res, tc.outcome, tc.calls)
			}
			want := Record{Node: "127.0.0.1", Time: testNow, Already: tc.already}
			if rec == nil || *rec != want || res.Record != want {
				t.Fatalf("record %+v (result %+v), want %+v", rec, res.Record, want)
			}
			// Every call went to the node by its own address, with an
			// admin client certificate from the rack's talosconfig.
			for i, n := range srv.Nodes() {
				if n != "127.0.0.1" {
					t.Errorf("call %d: node metadata %q, want 127.0.0.1", i, n)
				}
			}
			orgs := srv.Orgs()
			if len(orgs) != tc.calls {
				t.Fatalf("%d client certificates seen, want %d", len(orgs), tc.calls)
			}
			for _, o := range orgs {
				if !slices.Contains(o, "os:admin") {
					t.Errorf("client certificate organizations %v, want os:admin", o)
				}
			}
		})
	}
}

func testBootstrapRestartMakesNoCall(t *testing.T, pki talosPKI) {
	srv, addr := startApid(t, pki)
	dir := t.TempDir()
	sl := &sleeps{}
	if _, err := newTestBootstrapper(t, pki, dir, addr, sl).Bootstrap(t.Context()); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, BootstrapFile))
	if err != nil {
		t.Fatal(err)
	}
	// A restarted rackboot: a new Bootstrapper on the same state directory.
	for range 2 {
		res, err := newTestBootstrapper(t, pki, dir, addr, sl).Bootstrap(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if res.Outcome != Recorded || res.Attempts != 0 {
			t.Fatalf("restart: %+v, want Recorded with no attempt", res)
		}
	}
	if got := srv.Calls(); got != 1 {
		t.Fatalf("apid got %d Bootstrap calls over a run and two restarts, want 1", got)
	}
	after, _ := os.ReadFile(filepath.Join(dir, BootstrapFile))
	if string(after) != string(data) {
		t.Fatalf("record changed on restart:\n%s\nthen\n%s", data, after)
	}
	fi, err := os.Stat(filepath.Join(dir, BootstrapFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("record mode: %v %v, want 0600", fi.Mode(), err)
	}
}

// The crash window: the node accepted Bootstrap, rackboot died before the
// record was written. The next run is told AlreadyExists, which is success,
// and writes the record; the run after that makes no call.
func testBootstrapCrashWindow(t *testing.T, pki talosPKI) {
	srv, addr := startApid(t, pki, answer{}, answer{Err: status.Error(codes.AlreadyExists, "etcd data directory is not empty")})
	dir := t.TempDir()
	sl := &sleeps{}
	if _, err := newTestBootstrapper(t, pki, dir, addr, sl).Bootstrap(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, BootstrapFile)); err != nil { // the lost write
		t.Fatal(err)
	}
	res, err := newTestBootstrapper(t, pki, dir, addr, sl).Bootstrap(t.Context())
	if err != nil || res.Outcome != AlreadyBootstrapped {
		t.Fatalf("after the crash: %+v, %v; want AlreadyBootstrapped", res, err)
	}
	res, err = newTestBootstrapper(t, pki, dir, addr, sl).Bootstrap(t.Context())
	if err != nil || res.Outcome != Recorded {
		t.Fatalf("third run: %+v, %v; want Recorded", res, err)
	}
	if got := srv.Calls(); got != 2 {
		t.Fatalf("apid got %d calls, want 2", got)
	}
}

// A record that cannot be written makes Bootstrap fail even though the node
// accepted: success is only reported once it is recorded.
func testBootstrapRecordWriteFails(t *testing.T, pki talosPKI) {
	srv, addr := startApid(t, pki)
	dir := t.TempDir()
	// A dangling symlink where the record goes: reads see no record, the
	// write finds the name taken (root ignores file modes, so a read-only
	// directory would not do).
	if err := os.Symlink(filepath.Join(dir, "nowhere"), filepath.Join(dir, BootstrapFile)); err != nil {
		t.Fatal(err)
	}
	_, err := newTestBootstrapper(t, pki, dir, addr, &sleeps{}).Bootstrap(t.Context())
	if err == nil || !strings.Contains(err.Error(), "etcd is bootstrapped on 127.0.0.1, but") || !strings.Contains(err.Error(), "AlreadyExists") {
		t.Fatalf("err = %v, want the record failure explained", err)
	}
	if srv.Calls() != 1 {
		t.Fatalf("calls %d, want 1", srv.Calls())
	}
}

// A talosconfig from other secrets is refused in the TLS handshake; the
// Bootstrapper keeps trying (a node still in maintenance mode looks the
// same) and its final error says what to look at.
func testBootstrapWrongSecrets(t *testing.T, pki, other talosPKI) {
	srv, addr := startApid(t, pki)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	sl := &sleeps{limit: 2, cancel: cancel}
	_, err := newTestBootstrapper(t, other, t.TempDir(), addr, sl).Bootstrap(ctx)
	if err == nil || !strings.Contains(err.Error(), "not from this rack's secrets") {
		t.Fatalf("err = %v, want the certificate hint", err)
	}
	if srv.Calls() != 0 {
		t.Fatalf("a call got through with the wrong client certificate (%d)", srv.Calls())
	}
}

func testBootstrapBadRecordIsKept(t *testing.T, pki talosPKI) {
	srv, addr := startApid(t, pki)
	dir := t.TempDir()
	path := filepath.Join(dir, BootstrapFile)
	if err := os.WriteFile(path, []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := newTestBootstrapper(t, pki, dir, addr, &sleeps{}).Bootstrap(t.Context())
	if err == nil || !strings.Contains(err.Error(), "unreadable (left untouched") {
		t.Fatalf("err = %v", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "{garbage" {
		t.Fatalf("bad record was changed: %q", data)
	}
	if srv.Calls() != 0 {
		t.Fatal("called Bootstrap with an unreadable record")
	}
}

func TestNewBootstrapperRefuses(t *testing.T) {
	pki := talosPKI{talosconfig: &clientconfig.Config{}}
	for _, tc := range []struct {
		name string
		cfg  BootstrapConfig
		want string
	}{
		{"no state dir", BootstrapConfig{Talosconfig: pki.talosconfig, Node: "10.0.0.1"}, "no state directory"},
		{"no talosconfig", BootstrapConfig{StateDir: "x", Node: "10.0.0.1"}, "no talosconfig"},
		{"dhcp node", BootstrapConfig{StateDir: "x", Talosconfig: pki.talosconfig, Node: ""}, "needs a static address"},
		{"hostname", BootstrapConfig{StateDir: "x", Talosconfig: pki.talosconfig, Node: "cp1"}, "not an IP address"},
		{"the VIP", BootstrapConfig{StateDir: "x", Talosconfig: pki.talosconfig, Node: "10.0.0.10", VIP: "10.0.0.10"}, "is the VIP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewBootstrapper(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParseRecord(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{`{"bootstrapped":{"node":"10.0.0.1","time":"2026-05-04T12:00:00Z"}}`, ""},
		{`{"bootstrapped":{"node":"10.0.0.1","time":"2026-05-04T12:00:00Z","alreadyBootstrapped":true}}`, ""},
		{`{}`, "no \"bootstrapped\" record"},
		{`{"bootstrapped":{"time":"2026-05-04T12:00:00Z"}}`, "names no node"},
		{`{"bootstrapped":{"node":"10.0.0.1"}}`, "no time"},
		{`{"bootstrapped":{"node":"10.0.0.1","time":"2026-05-04T12:00:00Z"},"x":1}`, "unknown field"},
		{`{"bootstrapped":{"node":"10.0.0.1","time":"2026-05-04T12:00:00Z"}} {}`, "trailing data"},
		{``, "parse JSON"},
	} {
		_, err := ParseRecord([]byte(tc.in))
		if tc.want == "" && err != nil {
			t.Errorf("%s: %v", tc.in, err)
		}
		if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: err %v, want %q", tc.in, err, tc.want)
		}
	}
}

func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"bootstrapped":{"node":"10.0.0.1","time":"2026-05-04T12:00:00Z"}}`))
	f.Add([]byte(`{"bootstrapped":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRecord(data)
		if err != nil {
			return
		}
		if r.Node == "" || r.Time.IsZero() {
			t.Fatalf("accepted an incomplete record %+v", r)
		}
	})
}
