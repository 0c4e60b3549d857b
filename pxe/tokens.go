package pxe

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

// Config tokens.
//
// A machine's config holds its secrets, so /config serves it only to the
// machine that was just handed a boot script. When the script is served, a
// token is minted and put in the talos.config= URL; it is bound to the
// machine name, its MAC, its UUID (when iPXE reported one) and the address
// that fetched the script, and it expires (30 min by default).
//
// Design: the token is self-verifying (an HMAC-SHA256 over the binding, the
// times and a random nonce, keyed by a 32-byte key created once in the state
// dir with mode 0600) instead of a table of issued tokens. So a restart of
// `rackboot serve` in the middle of a boot loses nothing: the new process
// reads the same key and still accepts the token the machine carries on its
// kernel command line, with no token file to write atomically on every
// script request, to prune, or to get corrupt. The only state is "consumed":
// when the events side learns the machine has its config it calls Consume,
// and tokens minted before that stop working. That set is kept in memory: a
// restart forgets it, and such a token then lives until its expiry, still
// only for the same machine from the same address.

// Token errors; the HTTP side maps all of them to 403.
var (
	ErrTokenInvalid  = errors.New("config token invalid or not for this machine/address")
	ErrTokenExpired  = errors.New("config token expired")
	ErrTokenConsumed = errors.New("config token already used: the machine has its config")
)

// DefaultTokenTTL is how long a config token is valid without Consume.
const DefaultTokenTTL = 30 * time.Minute

// TokenKeyFile is the key's file name in the state dir.
const TokenKeyFile = "pxe-token.key"

const (
	tokenVersion = 1
	tokenKeyLen  = 32
	tokenNonce   = 16
	tokenTag     = 16
	tokenHeader  = 1 + 1 + 8 + 8 + tokenNonce + 1 // version, flags, iat, exp, nonce, name length
	flagUUID     = 1
	maxNameLen   = 255
)

// TokenConfig tunes Tokens. Zero values mean the defaults.
type TokenConfig struct {
	TTL  time.Duration    // DefaultTokenTTL
	Now  func() time.Time // time.Now
	Rand io.Reader        // crypto/rand.Reader; also makes the key in OpenTokens
}

// TokenBinding is what a token is bound to.
type TokenBinding struct {
	Name string           // machine name (BootSpec.Name)
	MAC  net.HardwareAddr // MAC that fetched the boot script
	UUID string           // SMBIOS UUID iPXE reported, or "" (then not checked)
	Addr netip.Addr       // address that fetched the boot script
}

// Tokens mints and checks config tokens.
type Tokens struct {
	key  []byte
	ttl  time.Duration
	now  func() time.Time
	rand io.Reader

	mu       sync.Mutex
	consumed map[string]time.Time // name → tokens minted at or before this are spent
}

// NewTokens returns Tokens keyed by key (at least 32 bytes).
func NewTokens(key []byte, cfg TokenConfig) (*Tokens, error) {
	if len(key) < tokenKeyLen {
		return nil, fmt.Errorf("config token key is %d bytes, want at least %d", len(key), tokenKeyLen)
	}
	t := &Tokens{key: append([]byte(nil), key...), ttl: cfg.TTL, now: cfg.Now, rand: cfg.Rand, consumed: map[string]time.Time{}}
	if t.ttl <= 0 {
		t.ttl = DefaultTokenTTL
	}
	if t.now == nil {
		t.now = time.Now
	}
	if t.rand == nil {
		t.rand = rand.Reader
	}
	return t, nil
}

// OpenTokens returns Tokens keyed by <stateDir>/pxe-token.key, creating the
// key (mode 0600) on first use. A key of the wrong size or readable by others
// is an error naming the file; it is never replaced silently.
func OpenTokens(stateDir string, cfg TokenConfig) (*Tokens, error) {
	path := filepath.Join(stateDir, TokenKeyFile)
	key, err := readTokenKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		r := cfg.Rand
		if r == nil {
			r = rand.Reader
		}
		key = make([]byte, tokenKeyLen)
		if _, err := io.ReadFull(r, key); err != nil {
			return nil, fmt.Errorf("make config token key: %w", err)
		}
		err = atomicfile.WriteNew(path, key, 0o600)
		if errors.Is(err, atomicfile.ErrExists) { // another process made it first
			key, err = readTokenKey(path)
		}
	}
	if err != nil {
		return nil, err
	}
	return NewTokens(key, cfg)
}

func readTokenKey(path string) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("config token key: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("config token key %s has mode %v, want 0600 (chmod 600 %s)", path, st.Mode().Perm(), path)
	}
	key, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config token key: %w", err)
	}
	if len(key) != tokenKeyLen {
		return nil, fmt.Errorf("config token key %s is %d bytes, want %d: the file is damaged; delete it to make a new key (machines mid-boot must then boot again)", path, len(key), tokenKeyLen)
	}
	return key, nil
}

// Mint returns a new token for b.
func (t *Tokens) Mint(b TokenBinding) (string, error) {
	if b.Name == "" || len(b.Name) > maxNameLen {
		return "", fmt.Errorf("mint config token: machine name %q: want 1 to %d bytes", b.Name, maxNameLen)
	}
	if len(b.MAC) == 0 || !b.Addr.IsValid() {
		return "", fmt.Errorf("mint config token for %s: MAC and address are required", b.Name)
	}
	now := t.now()
	buf := make([]byte, tokenHeader, tokenHeader+len(b.Name)+tokenTag)
	buf[0] = tokenVersion
	if b.UUID != "" {
		buf[1] = flagUUID
	}
	binary.BigEndian.PutUint64(buf[2:], uint64(now.UnixNano()))
	binary.BigEndian.PutUint64(buf[10:], uint64(now.Add(t.ttl).UnixNano()))
	if _, err := io.ReadFull(t.rand, buf[18:18+tokenNonce]); err != nil {
		return "", fmt.Errorf("mint config token for %s: read random nonce: %w", b.Name, err)
	}
	buf[18+tokenNonce] = byte(len(b.Name))
	buf = append(buf, b.Name...)
	buf = append(buf, t.tag(buf, b.MAC, b.UUID, b.Addr)...)
	return base64.RawURLEncoding.EncodeToString(buf), nil
}

// tag is the HMAC over the token's body and what it is bound to.
func (t *Tokens) tag(body []byte, mac net.HardwareAddr, uuid string, addr netip.Addr) []byte {
	h := hmac.New(sha256.New, t.key)
	h.Write(body)
	h.Write([]byte{byte(len(mac))})
	h.Write(mac)
	if body[1]&flagUUID != 0 {
		u := strings.ToLower(uuid)
		h.Write([]byte{byte(len(u))})
		h.Write([]byte(u))
	}
	a := addr.Unmap().As16()
	h.Write(a[:])
	return h.Sum(nil)[:tokenTag]
}

// Verify checks token against the request's MAC, UUID and source address and
// returns the machine name it was minted for. The errors are ErrTokenInvalid
// (forged, damaged, or another machine/address), ErrTokenExpired and
// ErrTokenConsumed; none of them contain the token.
func (t *Tokens) Verify(token string, mac net.HardwareAddr, uuid string, addr netip.Addr) (string, error) {
	buf, err := base64.RawURLEncoding.Strict().DecodeString(token)
	if err != nil || len(buf) < tokenHeader+1+tokenTag || buf[0] != tokenVersion || buf[1]&^flagUUID != 0 {
		return "", ErrTokenInvalid
	}
	n := int(buf[18+tokenNonce])
	if n == 0 || len(buf) != tokenHeader+n+tokenTag {
		return "", ErrTokenInvalid
	}
	body, tag := buf[:tokenHeader+n], buf[tokenHeader+n:]
	if !hmac.Equal(tag, t.tag(body, mac, uuid, addr)) {
		return "", ErrTokenInvalid
	}
	name := string(body[tokenHeader:])
	iat := time.Unix(0, int64(binary.BigEndian.Uint64(buf[2:])))
	exp := time.Unix(0, int64(binary.BigEndian.Uint64(buf[10:])))
	if t.now().After(exp) {
		return name, ErrTokenExpired
	}
	t.mu.Lock()
	spent, ok := t.consumed[name]
	t.mu.Unlock()
	if ok && !iat.After(spent) {
		return name, ErrTokenConsumed
	}
	return name, nil
}

// Consume spends every token minted so far for the machine name: the events
// side calls it once the machine reports it has loaded its config. A later
// boot gets a fresh token with its new script.
func (t *Tokens) Consume(name string) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if prev, ok := t.consumed[name]; !ok || now.After(prev) {
		t.consumed[name] = now
	}
}
