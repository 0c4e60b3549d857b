package inventory

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/dotfile/rackboot/internal/atomicfile"
	"github.com/dotfile/rackboot/pxe"
)

// countWrites makes s count its file writes.
func countWrites(s *Store) *atomic.Int64 {
	var n atomic.Int64
	s.write = func(path string, data []byte, mode fs.FileMode) error {
		n.Add(1)
		return atomicfile.Write(path, data, mode)
	}
	return &n
}

func readState(t *testing.T, dir string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatalf("read state: %v", err)
	}
	return string(data)
}

// TestMarkEventIsDurable: with an hour of flush delay, the event is on disk
// when MarkEvent returns; a replay writes nothing.
func TestMarkEventIsDurable(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	writes := countWrites(s)
	s.Record(pxe.Event{Name: "cp1", Stage: pxe.StageConfig})
	if writes.Load() != 0 {
		t.Fatal("Record wrote before the flush delay")
	}
	applied, err := s.MarkEvent("cp1", "ev-1", StageInstalled, "install done")
	if err != nil || !applied {
		t.Fatalf("MarkEvent = %v %v", applied, err)
	}
	if got := readState(t, dir); !strings.Contains(got, `"id": "ev-1"`) || !strings.Contains(got, `"installed": true`) {
		t.Fatalf("state file lacks the event:\n%s", got)
	}
	if n := writes.Load(); n != 1 {
		t.Fatalf("%d writes, want 1", n)
	}
	applied, err = s.MarkEvent("cp1", "ev-1", StageInstalled, "install done")
	if err != nil || applied {
		t.Fatalf("replay: MarkEvent = %v %v", applied, err)
	}
	if n := writes.Load(); n != 1 {
		t.Fatalf("a replay rewrote the file (%d writes)", n)
	}
}

// TestMarkEventWriteFailsThenRetries: a failed write is an error and does
// not count as recorded; the retry saves it and reports it applied, once.
func TestMarkEventWriteFailsThenRetries(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := open(t, dir)
	s.Record(pxe.Event{Name: "cp1", Stage: pxe.StageConfig})
	// The state dir becomes a regular file: writes fail, even as root.
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		applied, err := s.MarkEvent("cp1", "ev-1", StageInstalled, "")
		if err == nil || applied || !strings.Contains(err.Error(), "save inventory") {
			t.Fatalf("attempt %d with an unwritable dir: applied=%v err=%v", i, applied, err)
		}
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	applied, err := s.MarkEvent("cp1", "ev-1", StageInstalled, "")
	if err != nil || !applied {
		t.Fatalf("retry after the dir came back: applied=%v err=%v", applied, err)
	}
	if !strings.Contains(readState(t, dir), `"id": "ev-1"`) {
		t.Fatal("retried event not on disk")
	}
	if applied, err := s.MarkEvent("cp1", "ev-1", StageInstalled, ""); err != nil || applied {
		t.Fatalf("replay after the save: applied=%v err=%v", applied, err)
	}
	m, _ := s.Machine("cp1")
	if n := len(m.Timeline); n != 2 {
		t.Fatalf("timeline %+v: the retries added entries", m.Timeline)
	}
}

func randomMAC(r *rand.Rand) net.HardwareAddr {
	hw := make(net.HardwareAddr, 6)
	for i := range hw {
		hw[i] = byte(r.Uint32())
	}
	hw[0] = hw[0]&^1 | 2 // unicast, locally administered
	return hw
}

// TestUnknownMachinesBounded: stray requests from 10k MACs keep at most the
// limit of unknown machines, the most recent ones, and write nothing.
func TestUnknownMachinesBounded(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, WithFlushDelay(0), WithMaxUnknown(256))
	writes := countWrites(s)
	r := rand.New(rand.NewPCG(1, 2))
	var macs []net.HardwareAddr
	for i := range 10000 {
		hw := randomMAC(r)
		macs = append(macs, hw)
		addr := netip.AddrFrom4([4]byte{10, 99, byte(i >> 8), byte(i)})
		s.Record(pxe.Event{MAC: hw, Addr: addr, Stage: pxe.StageDiscovered})
		if i%10 == 0 {
			_, _ = s.MarkEvent(hw.String(), fmt.Sprint("ev-", i), StageInstalling, "")
			_ = s.MarkStage(addr.String(), pxe.StageDHCP, "")
		}
	}
	if n := len(s.Machines()); n != 256 {
		t.Fatalf("%d unknown machines kept, want 256", n)
	}
	if n := writes.Load(); n != 0 {
		t.Fatalf("unknown machines caused %d writes", n)
	}
	if _, err := os.Stat(filepath.Join(dir, FileName)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("state file written: %v", err)
	}
	if _, ok := s.Machine(macs[0].String()); ok {
		t.Fatal("oldest unknown machine kept")
	}
	last := macs[len(macs)-1].String()
	if k, ok := s.ByAddr(netip.MustParseAddr("10.99.39.15")); !ok || k != last {
		t.Fatalf("ByAddr of the last one = %q %v, want %s", k, ok, last)
	}
	if _, ok := s.ByAddr(netip.MustParseAddr("10.99.0.0")); ok {
		t.Fatal("a dropped machine's address still resolves")
	}
	if len(s.idx.addrs) != 256 || len(s.idx.at) != 256 || s.idx.unknown.Len() != 256 || len(s.idx.macs) != 0 {
		t.Fatalf("indexes out of step: %d addrs, %d unknown (%d listed), %d MACs", len(s.idx.addrs), len(s.idx.at), s.idx.unknown.Len(), len(s.idx.macs))
	}
	// A rack machine's change is written, with the unknown ones alongside.
	s.Record(pxe.Event{Name: "cp1", Stage: pxe.StageDHCP})
	if n := writes.Load(); n != 1 {
		t.Fatalf("%d writes after a named change, want 1", n)
	}
	if got := strings.Count(readState(t, dir), `"key": `); got != 257 {
		t.Fatalf("%d machines in the file, want 257", got)
	}
}

// TestRecentlySeenUnknownKept: the limit drops the least recently seen
// unknown machine, not the first recorded.
func TestRecentlySeenUnknownKept(t *testing.T) {
	s := open(t, t.TempDir(), WithMaxUnknown(2))
	a, b, c := mac("02:00:00:00:00:0a"), mac("02:00:00:00:00:0b"), mac("02:00:00:00:00:0c")
	s.Record(pxe.Event{MAC: a, Stage: pxe.StageDiscovered})
	s.Record(pxe.Event{MAC: b, Stage: pxe.StageDiscovered})
	s.Record(pxe.Event{MAC: a, Stage: pxe.StageDHCP})
	s.Record(pxe.Event{MAC: c, Stage: pxe.StageDiscovered})
	if _, ok := s.Machine(b.String()); ok {
		t.Fatal("least recently seen machine kept")
	}
	if _, ok := s.Machine(a.String()); !ok {
		t.Fatal("recently seen machine dropped")
	}
}

// TestIndexesFollowAdoptionAndMoves: lookups by MAC and address stay right
// when an unknown machine becomes known by name and moves.
func TestIndexesFollowAdoptionAndMoves(t *testing.T) {
	s := open(t, t.TempDir())
	hw := mac("02:00:00:00:00:0a")
	a1, a2 := netip.MustParseAddr("10.99.0.50"), netip.MustParseAddr("10.99.0.51")
	s.Record(pxe.Event{MAC: hw, Addr: a1, Stage: pxe.StageDiscovered})
	s.Record(pxe.Event{MAC: hw, Name: "w3", Addr: a2, Stage: pxe.StageDHCP})
	if k, ok := s.ByAddr(a2); !ok || k != "w3" {
		t.Fatalf("ByAddr(new address) = %q %v", k, ok)
	}
	if k, ok := s.ByAddr(a1); ok {
		t.Fatalf("old address still resolves to %q", k)
	}
	if err := s.MarkStage("02-00-00-00-00-0A", pxe.StageKernel, ""); err != nil {
		t.Fatalf("lookup by MAC after adoption: %v", err)
	}
	if len(s.idx.at) != 0 || s.idx.unknown.Len() != 0 {
		t.Fatal("adopted machine still listed as unknown")
	}
	// Two machines at one address (a lease moved): the latest wins, and
	// when it moves on, the other is found again.
	s.Record(pxe.Event{Name: "w4", Addr: a2, Stage: pxe.StageDHCP})
	if k, _ := s.ByAddr(a2); k != "w4" {
		t.Fatalf("ByAddr = %q, want the latest, w4", k)
	}
	s.Record(pxe.Event{Name: "w4", Addr: a1, Stage: pxe.StageScript})
	if k, _ := s.ByAddr(a2); k != "w3" {
		t.Fatalf("ByAddr = %q, want w3 again", k)
	}
	if k, _ := s.ByAddr(netip.MustParseAddr("::ffff:10.99.0.50")); k != "w4" {
		t.Fatalf("ByAddr(mapped) = %q, want w4", k)
	}
}

// TestReloadRebuildsIndexes: after a restart, MAC and address lookups work
// and extra unknown machines are dropped, oldest first.
func TestReloadRebuildsIndexes(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	s.Record(pxe.Event{Name: "cp1", MAC: mac("02:00:00:00:00:01"), Addr: netip.MustParseAddr("10.99.0.10"), Stage: pxe.StageConfig})
	for i := range 5 {
		s.Record(pxe.Event{MAC: mac(fmt.Sprintf("02:00:00:00:01:%02x", i)), Addr: netip.MustParseAddr(fmt.Sprint("10.99.1.", i)), Stage: pxe.StageDiscovered})
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir, WithMaxUnknown(3))
	if n := len(s.Machines()); n != 4 {
		t.Fatalf("%d machines after reload with a limit of 3 unknown, want 4", n)
	}
	if _, ok := s.Machine("02:00:00:00:01:01"); ok {
		t.Fatal("an old unknown machine survived the limit")
	}
	if k, ok := s.ByAddr(netip.MustParseAddr("10.99.1.4")); !ok || k != "02:00:00:00:01:04" {
		t.Fatalf("ByAddr(unknown) after reload = %q %v", k, ok)
	}
	if err := s.MarkStage("02:00:00:00:00:01", pxe.StageKernel, ""); err != nil {
		t.Fatalf("MAC lookup after reload: %v", err)
	}
	if k, _ := s.ByAddr(netip.MustParseAddr("10.99.0.10")); k != "cp1" {
		t.Fatalf("ByAddr(cp1) after reload = %q", k)
	}
}

// TestForget: unknown machines are dropped and the file says so at once;
// named machines are refused.
func TestForget(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	hw := mac("02:00:00:00:00:0a")
	addr := netip.MustParseAddr("10.99.0.50")
	s.Record(pxe.Event{MAC: hw, Addr: addr, Stage: pxe.StageDiscovered})
	s.Record(pxe.Event{Name: "cp1", MAC: mac("02:00:00:00:00:01"), Stage: pxe.StageConfig})
	if err := s.Forget("02-00-00-00-00-0A"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Machine(hw.String()); ok {
		t.Fatal("forgotten machine still there")
	}
	if _, ok := s.ByAddr(addr); ok {
		t.Fatal("forgotten machine's address still resolves")
	}
	if got := readState(t, dir); strings.Contains(got, hw.String()) || !strings.Contains(got, `"key": "cp1"`) {
		t.Fatalf("state after Forget:\n%s", got)
	}
	if err := s.Forget(hw.String()); !errors.Is(err, ErrUnknownMachine) {
		t.Fatalf("Forget twice = %v, want ErrUnknownMachine", err)
	}
	for _, who := range []string{"cp1", "02:00:00:00:00:01"} {
		if err := s.Forget(who); !errors.Is(err, ErrNamedMachine) {
			t.Fatalf("Forget(%s) = %v, want ErrNamedMachine", who, err)
		}
	}
	// It comes back if it asks to boot again.
	s.Record(pxe.Event{MAC: hw, Addr: addr, Stage: pxe.StageDiscovered})
	if k, ok := s.ByAddr(addr); !ok || k != hw.String() {
		t.Fatalf("ByAddr after it came back = %q %v", k, ok)
	}
}

func TestResetIsDurable(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	s.Record(pxe.Event{Name: "w1", Stage: pxe.StageDHCP})
	if _, err := s.MarkEvent("w1", "ev-1", StageInstalled, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Reset("w1"); err != nil {
		t.Fatal(err)
	}
	if got := readState(t, dir); !strings.Contains(got, `"installed": false`) {
		t.Fatalf("Reset not on disk:\n%s", got)
	}
}

// TestDeniedIsNotAttributed: a refused request names the requester in the
// timeline only; the machine keeps its address, MACs and stage.
func TestDeniedIsNotAttributed(t *testing.T) {
	s := open(t, t.TempDir())
	own, other := netip.MustParseAddr("10.99.0.10"), netip.MustParseAddr("10.99.0.66")
	s.Record(pxe.Event{Name: "cp1", MAC: mac("02:00:00:00:00:01"), Addr: own, Stage: pxe.StageConfig})
	before, _ := s.Machine("cp1")
	s.Record(pxe.Event{Name: "cp1", MAC: mac("02:00:00:00:00:66"), Addr: other, Stage: StageDenied, Detail: "wrong token"})
	m, _ := s.Machine("cp1")
	if m.Addr != own || m.Stage != pxe.StageConfig || len(m.MACs) != 1 || !m.LastSeen.Equal(before.LastSeen) {
		t.Fatalf("denied request changed the machine: %+v", m)
	}
	last := m.Timeline[len(m.Timeline)-1]
	if last.Stage != StageDenied || !strings.Contains(last.Detail, "10.99.0.66") || !strings.Contains(last.Detail, "02:00:00:00:00:66") || !strings.Contains(last.Detail, "wrong token") {
		t.Fatalf("denied entry = %+v", last)
	}
	if k, ok := s.ByAddr(other); ok {
		t.Fatalf("the requester's address resolves to %q", k)
	}
	if err := s.MarkStage("02:00:00:00:00:66", StageInstalled, ""); !errors.Is(err, ErrUnknownMachine) {
		t.Fatalf("the requester's MAC resolves: %v", err)
	}
	if s.Stats().Events[StageDenied] != 1 {
		t.Fatalf("stats %+v", s.Stats())
	}
	// A machine not seen before shows the denied stage, with no address.
	s.Record(pxe.Event{Name: "w9", Addr: other, Stage: StageDenied})
	if m, _ := s.Machine("w9"); m.Stage != StageDenied || m.Addr.IsValid() || len(m.Timeline) != 1 {
		t.Fatalf("new machine after a denied request: %+v", m)
	}
}

// TestTokensRedacted: config tokens in text from outside are never stored.
func TestTokensRedacted(t *testing.T) {
	const secret = "SECRETTOKEN"
	line := "cmdline: talos.config=http://10.0.0.1:8080/config?mac=02-00-00-00-00-01&t=" + secret + " console=ttyS0"
	dir := t.TempDir()
	s := open(t, dir)
	s.Record(pxe.Event{Name: "cp1", Stage: pxe.StageConfig, Detail: line})
	if err := s.AddLog("cp1", LogLine{Msg: line, Level: "info&t=" + secret}); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkStage("cp1", StageConfigError, line); err != nil {
		t.Fatal(err)
	}
	if _, err := s.MarkEvent("cp1", "ev-1", StageInstallFailed, line); err != nil {
		t.Fatal(err)
	}
	m, _ := s.Machine("cp1")
	if got := fmt.Sprintf("%+v", m); strings.Contains(got, secret) || !strings.Contains(got, "t="+pxe.Redacted) {
		t.Fatalf("token stored: %s", got)
	}
	if strings.Contains(readState(t, dir), secret) {
		t.Fatal("token saved")
	}
}

// TestOpenRedactsOldFiles: a file written before redaction is cleaned on load.
func TestOpenRedactsOldFiles(t *testing.T) {
	dir := t.TempDir()
	old := `{"version":1,"machines":[{"key":"a","stage":"config-error","detail":"x?t=SECRET","installed":false,` +
		`"firstSeen":"2026-01-01T00:00:00Z","lastSeen":"2026-01-01T00:00:00Z","timeline":[{"time":"2026-01-01T00:00:00Z","stage":"config-error","detail":"x?t=SECRET"}]}]}`
	if err := os.WriteFile(filepath.Join(dir, FileName), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	m, _ := open(t, dir).Machine("a")
	if strings.Contains(fmt.Sprintf("%+v", m), "SECRET") {
		t.Fatalf("token kept: %+v", m)
	}
}

func TestOpenRejectsBadLimits(t *testing.T) {
	if _, err := Open(t.TempDir(), WithMaxUnknown(0)); err == nil {
		t.Fatal("a limit of 0 unknown machines accepted")
	}
}

// Every machine of the rack shows by name before it was seen; a DHCP event
// carrying only a rack machine's MAC is recorded under its name; Declare
// writes nothing.
func TestDeclareAndMACNames(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir, WithFlushDelay(0), WithMACNames(func(mac string) (string, bool) {
		return "formula", mac == "52:54:00:b0:00:01"
	}))
	if err != nil {
		t.Fatal(err)
	}
	st.Declare("formula", "urban")
	if _, err := os.Stat(filepath.Join(dir, FileName)); err == nil {
		t.Fatal("Declare wrote the state file")
	}
	ms := st.Machines()
	if len(ms) != 2 || ms[0].Name != "formula" || ms[1].Name != "urban" || ms[0].Stage != "" {
		t.Fatalf("declared machines: %+v", ms)
	}
	mac, _ := net.ParseMAC("52:54:00:b0:00:01")
	st.Record(pxe.Event{MAC: mac, Stage: pxe.StageDHCP})
	m, ok := st.Machine("formula")
	if !ok || m.Stage != pxe.StageDHCP || len(m.MACs) != 1 {
		t.Fatalf("formula after a DHCP event by MAC: %+v", m)
	}
	if _, ok := st.Machine(mac.String()); ok {
		t.Fatal("a rack machine's MAC made an unknown entry")
	}
}
