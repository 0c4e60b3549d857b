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
	addr := netip.MustParseAddr("10.99.0.50")
	uuid := "4c4c4544-0042-3510-8058-b4c04f4b4d32"
	b := TokenBinding{Name: "cp1", MAC: mac, UUID: uuid, Addr: addr}
	tok, err := tk.Mint(b)
	if err != nil {
		t.Fatal(err)
	}
	tok2, _ := tk.Mint(b)
	if tok == tok2 {
		t.Fatal("two mints gave the same token: the nonce is not used")
	}
	noUUID, err := tk.Mint(TokenBinding{Name: "w1", MAC: mac, Addr: addr})
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
		addr  netip.Addr
		want  error
		who   string
	}{
		{"right", tk, tok, mac, uuid, addr, nil, "cp1"},
		{"uuid upper case", tk, tok, mac, strings.ToUpper(uuid), addr, nil, "cp1"},
		{"retry, second token", tk, tok2, mac, uuid, addr, nil, "cp1"},
		{"other address", tk, tok, mac, uuid, netip.MustParseAddr("10.99.0.51"), ErrTokenInvalid, ""},
		{"other mac", tk, tok, other, uuid, addr, ErrTokenInvalid, ""},
		{"other uuid", tk, tok, mac, "4c4c4544-0042-3510-8058-b4c04f4b4d33", addr, ErrTokenInvalid, ""},
		{"no uuid when bound", tk, tok, mac, "", addr, ErrTokenInvalid, ""},
		{"uuid not bound: any", tk, noUUID, mac, uuid, addr, nil, "w1"},
		{"tampered", tk, string(tampered), mac, uuid, addr, ErrTokenInvalid, ""},
		{"other key", otherKey, tok, mac, uuid, addr, ErrTokenInvalid, ""},
		{"garbage", tk, "not-a-token", mac, uuid, addr, ErrTokenInvalid, ""},
		{"empty", tk, "", mac, uuid, addr, ErrTokenInvalid, ""},
		{"truncated", tk, tok[:len(tok)-3], mac, uuid, addr, ErrTokenInvalid, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name, err := tc.tk.Verify(tc.token, tc.mac, tc.uuid, tc.addr)
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
	if _, err := tk.Verify(tok, mac, uuid, addr); err != nil {
		t.Fatalf("at TTL: %v", err)
	}
	clk.Advance(time.Second)
	if _, err := tk.Verify(tok, mac, uuid, addr); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("after TTL: %v, want ErrTokenExpired", err)
	}

	// Consume spends earlier tokens, not later ones.
	fresh, _ := tk.Mint(b)
	clk.Advance(time.Second)
	tk.Consume("cp1")
	if _, err := tk.Verify(fresh, mac, uuid, addr); !errors.Is(err, ErrTokenConsumed) {
		t.Fatalf("after Consume: %v, want ErrTokenConsumed", err)
	}
	if _, err := tk.Verify(noUUID, mac, uuid, addr); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("w1 token: %v (Consume of cp1 must not touch w1)", err)
	}
	clk.Advance(time.Second)
	next, _ := tk.Mint(b)
	if _, err := tk.Verify(next, mac, uuid, addr); err != nil {
		t.Fatalf("token of the next boot: %v", err)
	}
}

func TestMintRefuses(t *testing.T) {
	tk := testTokens(t, newTokClock())
	mac := tMAC(t, "52:54:00:12:34:56")
	a := netip.MustParseAddr("127.0.0.1")
	for _, b := range []TokenBinding{
		{MAC: mac, Addr: a},
		{Name: strings.Repeat("x", 256), MAC: mac, Addr: a},
		{Name: "n", Addr: a},
		{Name: "n", MAC: mac},
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
	b := TokenBinding{Name: "cp1", MAC: tMAC(t, "52:54:00:00:00:01"), Addr: netip.MustParseAddr("10.0.0.9")}
	tok, err := tk1.Mint(b)
	if err != nil {
		t.Fatal(err)
	}
	tk2, err := OpenTokens(dir, TokenConfig{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if name, err := tk2.Verify(tok, b.MAC, "", b.Addr); err != nil || name != "cp1" {
		t.Fatalf("after restart: %q, %v", name, err)
	}
	// A fresh state dir is a different key.
	tk3, err := OpenTokens(t.TempDir(), TokenConfig{Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tk3.Verify(tok, b.MAC, "", b.Addr); !errors.Is(err, ErrTokenInvalid) {
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
	addr := netip.MustParseAddr("10.0.0.1")
	good, _ := tk.Mint(TokenBinding{Name: "cp1", MAC: mac, Addr: addr})
	f.Add(good)
	f.Add("")
	f.Add("AQ")
	f.Fuzz(func(t *testing.T, s string) {
		name, err := tk.Verify(s, mac, "", addr)
		if err == nil && s != good {
			// Another encoding of the same bytes would be a forgery.
			t.Fatalf("token %q verified as %q", s, name)
		}
	})
}
