package pxe

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// tokClock is an injected clock the test moves by hand.
type tokClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTokClock() *tokClock {
	return &tokClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *tokClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *tokClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// seqReader is a deterministic "random" source: 0, 1, 2, ...
type seqReader struct {
	mu sync.Mutex
	n  byte
}

func (r *seqReader) Read(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range p {
		p[i] = r.n
		r.n++
	}
	return len(p), nil
}

func tMAC(t testing.TB, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func testTokens(t *testing.T, clk *tokClock) *Tokens {
	t.Helper()
	tk, err := NewTokens(bytes.Repeat([]byte{7}, 32), TokenConfig{Now: clk.Now, Rand: &seqReader{}})
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

func TestTokens(t *testing.T) {
	clk := newTokClock()
	tk := testTokens(t, clk)
	mac := tMAC(t, "52:54:00:12:34:56")
	other := tMAC(t, "52:54:00:12:34:57")
	uuid := "4c4c4544-0042-3510-8058-b4c04f4b4d32"
	b := TokenBinding{Name: "cp1", MAC: mac, UUID: uuid}
	tok, err := tk.Mint(b)
	if err != nil {
		t.Fatal(err)
	}
	tok2, _ := tk.Mint(b)
	if tok == tok2 {
		t.Fatal("two mints gave the same token: the nonce is not used")
	}
	noUUID, err := tk.Mint(TokenBinding{Name: "w1", MAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	tampered := []byte(tok)
	tampered[10] ^= 1
	otherKey, _ := NewTokens(bytes.Repeat([]byte{8}, 32), TokenConfig{Now: clk.Now})

	for _, tc := range []struct {
		name  string
		tk    *Tokens
		token string
		mac   net.HardwareAddr
		uuid  string
		want  error
		who   string
	}{
		{"right", tk, tok, mac, uuid, nil, "cp1"},
		{"uuid upper case", tk, tok, mac, strings.ToUpper(uuid), nil, "cp1"},
		{"second token", tk, tok2, mac, uuid, nil, "cp1"},
		{"other mac", tk, tok, other, uuid, ErrTokenInvalid, ""},
		{"other uuid", tk, tok, mac, "4c4c4544-0042-3510-8058-b4c04f4b4d33", ErrTokenInvalid, ""},
		{"no uuid when bound", tk, tok, mac, "", ErrTokenInvalid, ""},
		{"uuid not bound: any", tk, noUUID, mac, uuid, nil, "w1"},
		{"tampered", tk, string(tampered), mac, uuid, ErrTokenInvalid, ""},
		{"other key", otherKey, tok, mac, uuid, ErrTokenInvalid, ""},
		{"garbage", tk, "not-a-token", mac, uuid, ErrTokenInvalid, ""},
		{"empty", tk, "", mac, uuid, ErrTokenInvalid, ""},
		{"truncated", tk, tok[:len(tok)-3], mac, uuid, ErrTokenInvalid, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name, err := tc.tk.Verify(tc.token, tc.mac, tc.uuid)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("Verify = %q, %v; want %v", name, err, tc.want)
			}
			if tc.want == nil && name != tc.who {
				t.Fatalf("name = %q, want %q", name, tc.who)
			}
			if err != nil && strings.Contains(err.Error(), tc.token) && tc.token != "" {
				t.Fatal("error contains the token")
			}
		})
	}

	// Expiry: valid at exactly the TTL, expired just after.
	clk.Advance(DefaultTokenTTL)
	if _, err := tk.Verify(tok, mac, uuid); err != nil {
		t.Fatalf("at TTL: %v", err)
	}
	clk.Advance(time.Second)
	if _, err := tk.Verify(tok, mac, uuid); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("after TTL: %v, want ErrTokenExpired", err)
	}

	// Consume spends earlier tokens, not later ones.
	fresh, _ := tk.Mint(b)
	clk.Advance(time.Second)
	if err := tk.Consume("cp1"); err != nil {
		t.Fatal(err)
	}
	if _, err := tk.Verify(fresh, mac, uuid); !errors.Is(err, ErrTokenConsumed) {
		t.Fatalf("after Consume: %v, want ErrTokenConsumed", err)
	}
	if _, err := tk.Verify(noUUID, mac, uuid); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("w1 token: %v (Consume of cp1 must not touch w1)", err)
	}
	clk.Advance(time.Second)
	next, _ := tk.Mint(b)
	if _, err := tk.Verify(next, mac, uuid); err != nil {
		t.Fatalf("token of the next boot: %v", err)
	}
}

// Spend: the first fetch pins its address; a retry from there works until
// the token expires; any other address is refused, even after a restart.
func TestSpendPinsTheFirstAddress(t *testing.T) {
	dir := t.TempDir()
	clk := newTokClock()
	tk, err := OpenTokens(dir, TokenConfig{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	mac := tMAC(t, "52:54:00:12:34:56")
	nic2 := tMAC(t, "52:54:00:aa:bb:cc")
	b := TokenBinding{Name: "cp1", MAC: mac}
	tok, _ := tk.Mint(b)
	first := netip.MustParseAddr("10.0.0.77") // Talos's own DHCP address, not the script's
	attacker := netip.MustParseAddr("10.0.0.66")

	if _, ok := func() (string, bool) { n, _, ok := tk.Pinned(first); return n, ok }(); ok {
		t.Fatal("pinned before any fetch")
	}
	name, retry, err := tk.Spend(tok, mac, "", first, nic2)
	if err != nil || name != "cp1" || retry {
		t.Fatalf("first spend = %q, %v, %v", name, retry, err)
	}
	st, err := os.Stat(filepath.Join(dir, SpentFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("spent file: %v, mode %v", err, st.Mode())
	}
	if _, retry, err := tk.Spend(tok, mac, "", first, nil); err != nil || !retry {
		t.Fatalf("retry from the pinned address = %v, %v", retry, err)
	}
	if _, _, err := tk.Spend(tok, mac, "", attacker, nil); !errors.Is(err, ErrTokenSpent) {
		t.Fatalf("spent token from another address: %v, want ErrTokenSpent", err)
	}
	if n, hw, ok := tk.Pinned(first); !ok || n != "cp1" || hw.String() != nic2.String() {
		t.Fatalf("Pinned(%s) = %q, %v, %v", first, n, hw, ok)
	}

	// After a restart (or a kill -9: the spend was written before it
	// returned) the pin holds.
	tk2, err := OpenTokens(dir, TokenConfig{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := tk2.Spend(tok, mac, "", attacker, nil); !errors.Is(err, ErrTokenSpent) {
		t.Fatalf("after restart, other address: %v", err)
	}
	if _, retry, err := tk2.Spend(tok, mac, "", first, nil); err != nil || !retry {
		t.Fatalf("after restart, retry: %v, %v", retry, err)
	}
	if n, hw, ok := tk2.Pinned(first); !ok || n != "cp1" || hw.String() != nic2.String() {
		t.Fatalf("after restart Pinned = %q, %v, %v", n, hw, ok)
	}
	if n, ok := tk2.PinnedMAC(nic2); !ok || n != "cp1" {
		t.Fatalf("after restart PinnedMAC = %q, %v", n, ok)
	}
	if _, ok := tk2.PinnedMAC(mac); ok {
		t.Fatal("PinnedMAC of a MAC that fetched nothing")
	}
	// The retry window ends with the token; the pin outlives it for
	// attribution, then goes.
	clk.Advance(DefaultTokenTTL + time.Second)
	if _, _, err := tk2.Spend(tok, mac, "", first, nil); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("retry after expiry: %v", err)
	}
	if _, _, ok := tk2.Pinned(first); !ok {
		t.Fatal("pin forgotten at token expiry; want it kept for attribution")
	}
	clk.Advance(PinRetention)
	if _, _, ok := tk2.Pinned(first); ok {
		t.Fatal("pin kept past PinRetention")
	}
}

// Two fetchers race with one unused token: exactly one wins.
func TestSpendRace(t *testing.T) {
	clk := newTokClock()
	tk, err := OpenTokens(t.TempDir(), TokenConfig{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	mac := tMAC(t, "52:54:00:12:34:56")
	for round := range 20 {
		tok, _ := tk.Mint(TokenBinding{Name: "cp1", MAC: mac})
		var wg sync.WaitGroup
		wins := make(chan netip.Addr, 8)
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a := netip.AddrFrom4([4]byte{10, 0, byte(round), byte(i + 1)})
				if _, _, err := tk.Spend(tok, mac, "", a, nil); err == nil {
					wins <- a
				}
			}()
		}
		wg.Wait()
		close(wins)
		if n := len(wins); n != 1 {
			t.Fatalf("round %d: %d fetchers got the config, want 1", round, n)
		}
	}
}

// A spend that cannot be written is not a spend: nothing is served.
func TestSpendUnwritable(t *testing.T) {
	// The state dir is replaced by a file (root writes through any mode).
	dir := t.TempDir()
	clk := newTokClock()
	tk, err := OpenTokens(dir, TokenConfig{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	mac := tMAC(t, "52:54:00:12:34:56")
	tok, _ := tk.Mint(TokenBinding{Name: "cp1", MAC: mac})
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a dir"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr("10.0.0.5")
	if _, _, err := tk.Spend(tok, mac, "", a, nil); err == nil || errors.Is(err, ErrTokenSpent) {
		t.Fatalf("spend with an unwritable state dir: %v, want a write error", err)
	}
	if _, _, ok := tk.Pinned(a); ok {
		t.Fatal("a spend that was not written left a pin")
	}
}

func TestOpenTokensBadSpentFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, SpentFile)
	if err := os.WriteFile(path, []byte(`{"version":1,"spent":[{"id":"zz"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenTokens(dir, TokenConfig{}); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("damaged spent file: %v, want an error naming %s", err, path)
	}
}

func TestMintRefuses(t *testing.T) {
	tk := testTokens(t, newTokClock())
	mac := tMAC(t, "52:54:00:12:34:56")
	for _, b := range []TokenBinding{
		{MAC: mac},
		{Name: strings.Repeat("x", 256), MAC: mac},
		{Name: "n"},
	} {
		if _, err := tk.Mint(b); err == nil {
			t.Errorf("Mint(%+v) succeeded", b)
		}
	}
	if _, err := NewTokens(make([]byte, 16), TokenConfig{}); err == nil {
		t.Error("NewTokens with a 16-byte key succeeded")
	}
}

// A restart reads the same key: a token minted before still verifies.
func TestOpenTokensSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	clk := newTokClock()
	tk1, err := OpenTokens(dir, TokenConfig{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(dir, TokenKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v, want 0600", st.Mode().Perm())
	}
	b := TokenBinding{Name: "cp1", MAC: tMAC(t, "52:54:00:00:00:01")}
	tok, err := tk1.Mint(b)
	if err != nil {
		t.Fatal(err)
	}
	tk2, err := OpenTokens(dir, TokenConfig{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if name, err := tk2.Verify(tok, b.MAC, ""); err != nil || name != "cp1" {
		t.Fatalf("after restart: %q, %v", name, err)
	}
	// A fresh state dir is a different key.
	tk3, err := OpenTokens(t.TempDir(), TokenConfig{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tk3.Verify(tok, b.MAC, ""); !errors.Is(err, ErrTokenInvalid) {
		t.Fatalf("other key: %v", err)
	}
}

func TestOpenTokensBadKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, TokenKeyFile)
	if err := os.WriteFile(path, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenTokens(dir, TokenConfig{})
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("short key: %v, want an error naming %s", err, path)
	}
	if b, _ := os.ReadFile(path); string(b) != "short" {
		t.Fatal("a bad key file was replaced")
	}
	if err := os.WriteFile(path, make([]byte, 32), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenTokens(dir, TokenConfig{}); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("world-readable key: %v", err)
	}
}

func FuzzTokenVerify(f *testing.F) {
	clk := newTokClock()
	tk, _ := NewTokens(bytes.Repeat([]byte{7}, 32), TokenConfig{Now: clk.Now, Rand: &seqReader{}})
	mac, _ := net.ParseMAC("52:54:00:12:34:56")
	good, _ := tk.Mint(TokenBinding{Name: "cp1", MAC: mac})
	f.Add(good)
	f.Add("")
	f.Add("AQ")
	f.Fuzz(func(t *testing.T, s string) {
		name, err := tk.Verify(s, mac, "")
		if err == nil && s != good {
			// Another encoding of the same bytes would be a forgery.
			t.Fatalf("token %q verified as %q", s, name)
		}
	})
}

func FuzzParseSpent(f *testing.F) {
	f.Add([]byte(`{"version":1,"spent":[{"id":"000102030405060708090a0b0c0d0e0f","name":"cp1","addr":"10.0.0.1","mac":"52:54:00:00:00:01","exp":"2026-01-01T00:00:00Z","at":"2026-01-01T00:00:00Z"}],"consumed":{"cp1":"2026-01-01T00:00:00Z"}}`))
	f.Add([]byte(`{"version":1,"spent":[]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		sf, err := parseSpent(data)
		if err != nil {
			return
		}
		for _, p := range sf.Spent {
			if p.Name == "" || !p.Addr.IsValid() || len(p.ID) != 32 {
				t.Fatalf("accepted a bad pin %+v", p)
			}
		}
	})
}
