package inventory

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dotfile/rackboot/pxe"
)

// fakeClock is a manual clock: each call advances one second.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

func mac(s string) net.HardwareAddr {
	hw, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return hw
}

func open(t *testing.T, dir string, opts ...Option) *Store {
	t.Helper()
	opts = append([]Option{WithClock(newClock().Now), WithFlushDelay(time.Hour)}, opts...)
	s, err := Open(dir, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestInstalledIsSticky(t *testing.T) {
	tests := []struct {
		stages    []string
		installed bool
	}{
		{[]string{pxe.StageDHCP, pxe.StageConfig, StageInstalling}, false},
		{[]string{StageInstalling, StageInstallFailed}, false},
		{[]string{StageInstalling, StageInstalled}, true},
		{[]string{StageInstalled, pxe.StageDHCP, pxe.StageScript}, true},
		{[]string{StageRebooted}, true},
		{[]string{pxe.StageDHCP, StageRunning, pxe.StageLocalBoot}, true},
		{[]string{StageRunning, StageInstallFailed}, true},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.stages, ","), func(t *testing.T) {
			s := open(t, t.TempDir())
			s.Record(pxe.Event{Name: "cp1", MAC: mac("02:00:00:00:00:01"), Stage: pxe.StageDiscovered})
			for _, st := range tt.stages {
				if err := s.MarkStage("cp1", st, ""); err != nil {
					t.Fatal(err)
				}
			}
			if got := s.Installed("cp1"); got != tt.installed {
				t.Errorf("Installed = %v, want %v", got, tt.installed)
			}
			m, _ := s.Machine("cp1")
			if want := tt.stages[len(tt.stages)-1]; m.Stage != want {
				t.Errorf("Stage = %q, want %q", m.Stage, want)
			}
		})
	}
}

func TestResetClearsInstalled(t *testing.T) {
	s := open(t, t.TempDir())
	s.Record(pxe.Event{Name: "w1", Stage: pxe.StageDHCP})
	if err := s.MarkStage("w1", StageInstalled, ""); err != nil {
		t.Fatal(err)
	}
	if !s.Installed("w1") {
		t.Fatal("not installed after installed stage")
	}
	if err := s.Reset("w1"); err != nil {
		t.Fatal(err)
	}
	if s.Installed("w1") {
		t.Fatal("still installed after Reset")
	}
	if err := s.Reset("nope"); !errors.Is(err, ErrUnknownMachine) {
		t.Fatalf("Reset(nope) = %v, want ErrUnknownMachine", err)
	}
	if s.Installed("nope") {
		t.Fatal("unknown machine reported installed")
	}
}

func TestRecordKeysAndAdoption(t *testing.T) {
	s := open(t, t.TempDir())
	hw := mac("02:00:00:00:00:0a")
	addr := netip.MustParseAddr("10.99.0.50")
	s.Record(pxe.Event{MAC: hw, Addr: addr, Stage: pxe.StageDiscovered, Detail: "uuid x"})
	ms := s.Machines()
	if len(ms) != 1 || ms[0].Key != hw.String() || ms[0].Name != "" {
		t.Fatalf("unknown machine not keyed by MAC: %+v", ms)
	}
	if k, ok := s.ByAddr(addr); !ok || k != hw.String() {
		t.Fatalf("ByAddr = %q %v", k, ok)
	}
	// The rack learns the machine: its history moves under the name.
	s.Record(pxe.Event{MAC: hw, Name: "w3", Addr: netip.MustParseAddr("::ffff:10.99.0.51"), Stage: pxe.StageDHCP})
	ms = s.Machines()
	if len(ms) != 1 || ms[0].Key != "w3" || ms[0].Name != "w3" {
		t.Fatalf("machine not adopted under its name: %+v", ms)
	}
	m := ms[0]
	if len(m.Timeline) != 2 || m.Timeline[0].Stage != pxe.StageDiscovered || m.Timeline[1].Stage != pxe.StageDHCP {
		t.Fatalf("timeline = %+v", m.Timeline)
	}
	if m.Addr != netip.MustParseAddr("10.99.0.51") {
		t.Fatalf("addr = %v, want unmapped 10.99.0.51", m.Addr)
	}
	if !m.LastSeen.After(m.FirstSeen) {
		t.Fatalf("first %v last %v", m.FirstSeen, m.LastSeen)
	}
	// Lookups by address and MAC both reach it.
	if err := s.MarkStage("10.99.0.51", pxe.StageConfig, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkStage("02-00-00-00-00-0A", pxe.StageKernel, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkStage("10.99.0.99", pxe.StageConfig, ""); !errors.Is(err, ErrUnknownMachine) {
		t.Fatalf("MarkStage unknown addr = %v", err)
	}
	// An event with neither name nor MAC is dropped.
	s.Record(pxe.Event{Stage: pxe.StageDHCP})
	if n := len(s.Machines()); n != 1 {
		t.Fatalf("%d machines", n)
	}
}

func TestTimelineBoundedAndCollapsed(t *testing.T) {
	s := open(t, t.TempDir(), WithLimits(5, 3))
	s.Record(pxe.Event{Name: "a", Stage: pxe.StageDHCP})
	s.Record(pxe.Event{Name: "a", Stage: pxe.StageDHCP}) // retry: collapsed
	m, _ := s.Machine("a")
	if len(m.Timeline) != 1 {
		t.Fatalf("repeat not collapsed: %+v", m.Timeline)
	}
	for i := range 10 {
		if err := s.MarkStage("a", pxe.StageScript, fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	m, _ = s.Machine("a")
	if len(m.Timeline) != 5 || m.Timeline[0].Detail != "5" || m.Timeline[4].Detail != "9" {
		t.Fatalf("timeline not bounded to the last 5: %+v", m.Timeline)
	}
	for i := range 7 {
		if err := s.AddLog("a", LogLine{Msg: fmt.Sprint("line ", i)}); err != nil {
			t.Fatal(err)
		}
	}
	m, _ = s.Machine("a")
	if len(m.Logs) != 3 || m.Logs[0].Msg != "line 4" || m.Logs[2].Msg != "line 6" {
		t.Fatalf("logs = %+v", m.Logs)
	}
	if err := s.AddLog("zz", LogLine{Msg: "x"}); !errors.Is(err, ErrUnknownMachine) {
		t.Fatalf("AddLog unknown = %v", err)
	}
	st := s.Stats()
	if st.LogLines != 7 || st.Events[pxe.StageDHCP] != 2 || st.Events[pxe.StageScript] != 10 {
		t.Fatalf("stats = %+v", st)
	}
}

func TestSnapshotIsDeepCopy(t *testing.T) {
	s := open(t, t.TempDir())
	s.Record(pxe.Event{Name: "a", MAC: mac("02:00:00:00:00:01"), Stage: pxe.StageDHCP})
	ms := s.Machines()
	ms[0].MACs[0] = "changed"
	ms[0].Timeline[0].Stage = "changed"
	m, _ := s.Machine("a")
	if m.MACs[0] == "changed" || m.Timeline[0].Stage == "changed" {
		t.Fatal("snapshot shares memory with the store")
	}
}

func TestPersistence(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	s.Record(pxe.Event{Name: "cp1", MAC: mac("02:00:00:00:00:01"), Addr: netip.MustParseAddr("10.99.0.10"), Stage: pxe.StageConfig})
	if err := s.MarkStage("cp1", StageInstalled, "about to reboot"); err != nil {
		t.Fatal(err)
	}
	if err := s.AddLog("cp1", LogLine{Msg: "secret-free kernel line"}); err != nil {
		t.Fatal(err)
	}
	// The delay is an hour: nothing is on disk until Close.
	if _, err := os.Stat(filepath.Join(dir, FileName)); !os.IsNotExist(err) {
		t.Fatalf("file written before the debounce delay: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	s2 := open(t, dir)
	m, ok := s2.Machine("cp1")
	if !ok || !m.Installed || m.Stage != StageInstalled || m.Addr != netip.MustParseAddr("10.99.0.10") || len(m.Timeline) != 2 {
		t.Fatalf("reloaded machine = %+v", m)
	}
	if len(m.Logs) != 0 {
		t.Fatalf("kernel logs were persisted: %+v", m.Logs)
	}
	if k, ok := s2.ByAddr(netip.MustParseAddr("10.99.0.10")); !ok || k != "cp1" {
		t.Fatal("address lookup lost on reload")
	}
}

func TestImmediateAndTimedWrites(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, WithFlushDelay(0))
	s.Record(pxe.Event{Name: "a", Stage: pxe.StageDHCP})
	data, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil || !strings.Contains(string(data), `"stage": "dhcp"`) {
		t.Fatalf("not written synchronously: %v %s", err, data)
	}

	dir2 := t.TempDir()
	s2 := open(t, dir2, WithFlushDelay(time.Millisecond))
	ch, cancel := s2.Subscribe()
	defer cancel()
	s2.Record(pxe.Event{Name: "b", Stage: pxe.StageDHCP})
	select {
	case <-ch:
	default:
		t.Fatal("no change notification")
	}
	// The debounce timer writes without Flush; wait for the file (bounded).
	deadline := time.Now().Add(10 * time.Second)
	for {
		if data, err := os.ReadFile(filepath.Join(dir2, FileName)); err == nil && strings.Contains(string(data), `"key": "b"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("debounced write never happened")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCorruptFileIsAnError(t *testing.T) {
	cases := map[string]string{
		"garbage":   "{not json",
		"version":   `{"version":2,"machines":[]}`,
		"no key":    `{"version":1,"machines":[{"stage":"dhcp"}]}`,
		"duplicate": `{"version":1,"machines":[{"key":"a"},{"key":"a"}]}`,
		"trailing":  `{"version":1,"machines":[]} {}`,
		"bad addr":  `{"version":1,"machines":[{"key":"a","addr":"nope"}]}`,
		"unknown":   `{"version":1,"machines":[],"extra":1}`,
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, FileName)
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Open(dir)
			if err == nil || !strings.Contains(err.Error(), path) {
				t.Fatalf("Open = %v, want an error naming %s", err, path)
			}
			// Nothing lost: the file is untouched.
			if data, _ := os.ReadFile(path); string(data) != content {
				t.Fatal("corrupt file was modified")
			}
		})
	}
}

func TestFlushErrorKeepsDirty(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := open(t, dir)
	// The state dir becomes a regular file: writes fail, even as root.
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s.Record(pxe.Event{Name: "a", Stage: pxe.StageDHCP})
	err := s.Flush()
	if err == nil || !strings.Contains(err.Error(), "save inventory") {
		t.Fatalf("Flush = %v, want a save error", err)
	}
	if err := s.Flush(); err == nil {
		t.Fatal("second Flush reported success: the failed write was forgotten")
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close after the directory came back: %v", err)
	}
	if _, ok := open(t, dir).Machine("a"); !ok {
		t.Fatal("event lost after a failed write")
	}
}

func TestConcurrentUse(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, WithFlushDelay(time.Microsecond))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			name := fmt.Sprint("m", g%3)
			for i := range 200 {
				s.Record(pxe.Event{Name: name, MAC: mac(fmt.Sprintf("02:00:00:00:00:%02x", g)), Stage: pxe.StageDHCP, Detail: fmt.Sprint(i)})
				_ = s.MarkStage(name, StageInstalling, "")
				_ = s.AddLog(name, LogLine{Msg: "x"})
				_ = s.Installed(name)
				_ = s.Machines()
				_ = s.Stats()
				if i%50 == 0 {
					_ = s.Flush()
				}
			}
		})
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := open(t, dir)
	if n := len(s2.Machines()); n != 3 {
		t.Fatalf("%d machines after reload, want 3", n)
	}
	m, _ := s2.Machine("m0")
	if m.Stage != StageInstalling {
		t.Fatalf("last stage lost: %q", m.Stage)
	}
}

func TestStageOrder(t *testing.T) {
	if StageIndex(pxe.StageDiscovered) != 0 || StageIndex(StageRunning) <= StageIndex(StageInstalled) || StageIndex("bogus") != -1 {
		t.Fatal("stage order wrong")
	}
	if len(Stages()) != 18 {
		t.Fatalf("%d stages", len(Stages()))
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"version":1,"machines":[{"key":"a","addr":"10.0.0.1","stage":"dhcp","timeline":[{"time":"2026-01-01T00:00:00Z","stage":"dhcp"}]}]}`))
	f.Add([]byte(`{"version":1,"machines":[]}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, data []byte) {
		ms, err := decode(data)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, m := range ms {
			if m.Key == "" || seen[m.Key] {
				t.Fatalf("decode accepted a bad key set: %+v", ms)
			}
			seen[m.Key] = true
		}
	})
}

func TestMarkEventDropsReplaysAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	s.Record(pxe.Event{Name: "cp1", Stage: pxe.StageConfig})
	for i, want := range []bool{true, false} {
		applied, err := s.MarkEvent("cp1", "id-1", StageInstalling, "")
		if err != nil || applied != want {
			t.Fatalf("MarkEvent #%d = %v %v, want %v", i, applied, err, want)
		}
	}
	if _, err := s.MarkEvent("zz", "id-1", StageInstalling, ""); !errors.Is(err, ErrUnknownMachine) {
		t.Fatalf("unknown machine: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	if applied, err := s.MarkEvent("cp1", "id-1", StageInstalling, ""); err != nil || applied {
		t.Fatalf("replay after reopen applied=%v err=%v", applied, err)
	}
	if applied, err := s.MarkEvent("cp1", "id-2", StageInstalled, ""); err != nil || !applied {
		t.Fatalf("new event applied=%v err=%v", applied, err)
	}
	m, _ := s.Machine("cp1")
	if len(m.Timeline) != 3 || m.Timeline[1].ID != "id-1" || m.Timeline[2].ID != "id-2" {
		t.Fatalf("timeline %+v", m.Timeline)
	}
}

func TestAddPull(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	s.Record(pxe.Event{Name: "cp1", MAC: mac("02:00:00:00:00:01"), Addr: netip.MustParseAddr("10.99.0.10"), Stage: pxe.StageConfig})
	steps := []struct {
		image    string
		manifest bool
		bytes    int64
	}{
		{"factory.talos.dev/metal-installer/abc:v1.13.0", true, 1000},
		{"", false, 5 << 20},
		{"factory.talos.dev/metal-installer/abc:v1.13.0", true, 1000}, // same image again: one name
		{"registry.k8s.io/pause:3.10", true, 500},
		{"", false, 700},
	}
	for _, st := range steps {
		if err := s.AddPull("10.99.0.10", st.image, st.manifest, st.bytes); err != nil {
			t.Fatal(err)
		}
	}
	m, _ := s.Machine("cp1")
	want := &Pulled{Bytes: 2500 + 5<<20 + 700, Blobs: 2, ImageCount: 2,
		Images: []string{"factory.talos.dev/metal-installer/abc:v1.13.0", "registry.k8s.io/pause:3.10"}}
	if !reflect.DeepEqual(m.Pulled, want) {
		t.Fatalf("pulled = %+v, want %+v", m.Pulled, want)
	}
	// The snapshot is a copy.
	m.Pulled.Images[0] = "changed"
	if m2, _ := s.Machine("cp1"); m2.Pulled.Images[0] == "changed" {
		t.Fatal("snapshot shares the pulled list with the store")
	}
	if err := s.AddPull("10.99.0.99", "x:1", true, 1); !errors.Is(err, ErrUnknownMachine) {
		t.Fatalf("AddPull from an unknown address = %v, want ErrUnknownMachine", err)
	}
	// Bounded list, counted beyond it.
	for i := range MaxPulledImages + 5 {
		if err := s.AddPull("cp1", fmt.Sprintf("quay.io/x/img%d:1", i), true, 1); err != nil {
			t.Fatal(err)
		}
	}
	m, _ = s.Machine("cp1")
	if len(m.Pulled.Images) != MaxPulledImages || m.Pulled.ImageCount != 2+MaxPulledImages+5 {
		t.Fatalf("images listed %d, counted %d", len(m.Pulled.Images), m.Pulled.ImageCount)
	}
	// Never persisted.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if m, _ := open(t, dir).Machine("cp1"); m.Pulled != nil {
		t.Fatalf("pull counters were persisted: %+v", m.Pulled)
	}
}
