package pxe

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

// Config tokens.
//
// A machine's config holds every key of the cluster, so /config serves it
// only with a token that was put on that machine's kernel command line when
// its boot script was served (and a script with a token is only served to
// the NIC that owns the machine's MAC: see CheckOwner).
//
// A token is a bearer secret bound to the machine, not to an address: real
// Talos fetches its config after its own DHCP, on any of its links, with no
// client identifier, so the address that fetched the boot script is often
// not the one that fetches the config. A token carries the machine name, is
// bound (by an HMAC-SHA256 keyed with a 32-byte key kept 0600 in the state
// dir) to the MAC and UUID the firmware reported, expires after minutes
// (DefaultTokenTTL), and is single use: the first fetch spends it and pins
// the address that fetched. A retry of the same token (Talos retries a
// broken download) is served only to that address and only until the
// token expires; any other use is refused. Each boot script carries a new
// token.
//
// Spent tokens are written to <stateDir>/pxe-tokens.json (atomically,
// before the config is sent), so neither a restart nor a crash lets a spent
// token be used again from another address; the key file lets tokens minted
// before a restart still verify. Consume (the machine reported installed)
// spends every token minted for it so far.

// Token errors; the HTTP side maps all of them to 403.
var (
	ErrTokenInvalid  = errors.New("config token invalid or not for this machine")
	ErrTokenExpired  = errors.New("config token expired")
	ErrTokenConsumed = errors.New("config token already used: the machine has its config")
	ErrTokenSpent    = errors.New("config token already used from another address")
)

// DefaultTokenTTL is how long a config token is valid: the time from the
// boot script to Talos's config fetch, with its retries.
const DefaultTokenTTL = 10 * time.Minute

// PinRetention is how long the address that spent a token stays known as
// the machine's (events and kernel logs from it are the machine's).
const PinRetention = 24 * time.Hour

// TokenKeyFile is the key's file name in the state dir; SpentFile lists
// the spent tokens.
const (
	TokenKeyFile = "pxe-token.key"
	SpentFile    = "pxe-tokens.json"
)

const (
	tokenVersion = 2
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
	UUID string           // SMBIOS UUID the firmware reported, or "" (then not checked)
}

// Pin is where a spent token was used: the address (and, when the server
// saw it on the rack's segment, the MAC) that fetched the config.
type Pin struct {
	ID   string           `json:"id"` // the token's nonce, hex
	Name string           `json:"name"`
	Addr netip.Addr       `json:"addr"`
	MAC  string           `json:"mac,omitempty"` // link-layer address seen for Addr, if any
	Exp  time.Time        `json:"exp"`           // the token's expiry: retries end here
	At   time.Time        `json:"at"`            // when it was spent
	hw   net.HardwareAddr `json:"-"`
}

// spentFile is pxe-tokens.json.
type spentFile struct {
	Version  int                  `json:"version"`
	Spent    []Pin                `json:"spent"`
	Consumed map[string]time.Time `json:"consumed,omitempty"`
}

// SpentStore keeps spent config tokens where every rackboot that shares the
// token key sees them (kubestate keeps them in Kubernetes), so a token is
// spent exactly once across all of them. Tokens keeps what it learns from
// it in memory too: a pin never changes once recorded.
type SpentStore interface {
	// Spend records p as the first use of the token p.ID. When the token
	// was spent already (by this process or another), it changes nothing
	// and returns the pin recorded then with first false.
	Spend(p Pin) (recorded Pin, first bool, err error)
	// Consume records that every token minted for name at or before at is
	// spent (a later time than the one recorded wins).
	Consume(name string, at time.Time) error
	// Consumed returns the time recorded by Consume for name.
	Consumed(name string) (at time.Time, ok bool, err error)
	// Pins returns every spent token on record, to find a machine by the
	// address or MAC that fetched its config (Pinned, PinnedMAC).
	Pins() ([]Pin, error)
}

// pinsRefresh bounds how often Pinned and PinnedMAC ask a SpentStore for
// pins recorded by other servers, when they know no pin for an address.
const pinsRefresh = 5 * time.Second

// Tokens mints and checks config tokens.
type Tokens struct {
	key    []byte
	ttl    time.Duration
	now    func() time.Time
	rand   io.Reader
	path   string     // spent file; "" keeps spent tokens in memory
	shared SpentStore // nil: spent tokens are this process's only
	// refreshed is when the pins were last read from shared.
	refreshed time.Time

	mu       sync.Mutex
	consumed map[string]time.Time // name → tokens minted at or before this are spent
	spent    map[string]Pin       // token id → where it was spent
	byAddr   map[netip.Addr]string
	byMAC    map[string]string // link-layer address → token id (the newest)
}

// NewTokens returns Tokens keyed by key (at least 32 bytes) that keep spent
// tokens in memory only.
func NewTokens(key []byte, cfg TokenConfig) (*Tokens, error) {
	if len(key) < tokenKeyLen {
		return nil, fmt.Errorf("config token key is %d bytes, want at least %d", len(key), tokenKeyLen)
	}
	t := &Tokens{key: append([]byte(nil), key...), ttl: cfg.TTL, now: cfg.Now, rand: cfg.Rand,
		consumed: map[string]time.Time{}, spent: map[string]Pin{}, byAddr: map[netip.Addr]string{}, byMAC: map[string]string{}}
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
// key (mode 0600) on first use, with spent tokens in
// <stateDir>/pxe-tokens.json. A key of the wrong size or readable by others,
// or a damaged spent file, is an error naming the file; neither is ever
// replaced silently.
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
	t, err := NewTokens(key, cfg)
	if err != nil {
		return nil, err
	}
	t.path = filepath.Join(stateDir, SpentFile)
	if err := t.load(); err != nil {
		return nil, err
	}
	return t, nil
}

// NewSharedTokens returns Tokens keyed by key (shared by every server that
// mints or checks them) that keep spent tokens in store, for several
// rackboot servers at once (rackboot serve --kube).
func NewSharedTokens(key []byte, store SpentStore, cfg TokenConfig) (*Tokens, error) {
	if store == nil {
		return nil, errors.New("config tokens: no spent-token store")
	}
	t, err := NewTokens(key, cfg)
	if err != nil {
		return nil, err
	}
	t.shared = store
	return t, nil
}

// TokenKeyLen is the size of a config token key (NewTokens, OpenTokens).
const TokenKeyLen = tokenKeyLen

// ParseTokenKey checks a config token key's content read from somewhere
// other than the state directory.
func ParseTokenKey(key []byte) ([]byte, error) {
	if len(key) != tokenKeyLen {
		return nil, fmt.Errorf("config token key is %d bytes, want %d", len(key), tokenKeyLen)
	}
	return key, nil
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

// load reads the spent file; a missing one is empty.
func (t *Tokens) load() error {
	data, err := os.ReadFile(t.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read spent config tokens: %w", err)
	}
	f, err := parseSpent(data)
	if err != nil {
		return fmt.Errorf("spent config tokens %s: %w (delete the file to start over: machines mid-boot must then boot again)", t.path, err)
	}
	for _, p := range f.Spent {
		t.addPinLocked(p)
	}
	for k, v := range f.Consumed {
		t.consumed[k] = v
	}
	return nil
}

// parseSpent parses and checks a pxe-tokens.json document.
func parseSpent(data []byte) (spentFile, error) {
	var f spentFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return f, err
	}
	if dec.More() {
		return f, errors.New("trailing data after the JSON document")
	}
	if f.Version != 1 {
		return f, fmt.Errorf("unsupported version %d (want 1)", f.Version)
	}
	for i := range f.Spent {
		p := &f.Spent[i]
		if len(p.ID) != 2*tokenNonce || p.Name == "" || !p.Addr.IsValid() {
			return f, fmt.Errorf("spent token #%d: id, name and addr are required", i+1)
		}
		if _, err := hex.DecodeString(p.ID); err != nil {
			return f, fmt.Errorf("spent token #%d: id: %w", i+1, err)
		}
		if p.MAC != "" {
			hw, err := net.ParseMAC(p.MAC)
			if err != nil {
				return f, fmt.Errorf("spent token #%d: mac: %w", i+1, err)
			}
			p.hw = hw
		}
	}
	return f, nil
}

func (t *Tokens) addPinLocked(p Pin) {
	p.Addr = p.Addr.Unmap()
	t.spent[p.ID] = p
	t.indexLocked(p)
}

// indexLocked makes p the pin of its address and MAC unless a newer one is.
func (t *Tokens) indexLocked(p Pin) {
	if old, ok := t.spent[t.byAddr[p.Addr]]; !ok || !p.At.Before(old.At) {
		t.byAddr[p.Addr] = p.ID
	}
	if p.MAC != "" {
		if old, ok := t.spent[t.byMAC[p.MAC]]; !ok || !p.At.Before(old.At) {
			t.byMAC[p.MAC] = p.ID
		}
	}
}

// Mint returns a new token for b.
func (t *Tokens) Mint(b TokenBinding) (string, error) {
	if b.Name == "" || len(b.Name) > maxNameLen {
		return "", fmt.Errorf("mint config token: machine name %q: want 1 to %d bytes", b.Name, maxNameLen)
	}
	if len(b.MAC) == 0 {
		return "", fmt.Errorf("mint config token for %s: the MAC is required", b.Name)
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
	buf = append(buf, t.tag(buf, b.MAC, b.UUID)...)
	return base64.RawURLEncoding.EncodeToString(buf), nil
}

// tag is the HMAC over the token's body and what it is bound to.
func (t *Tokens) tag(body []byte, mac net.HardwareAddr, uuid string) []byte {
	h := hmac.New(sha256.New, t.key)
	h.Write(body)
	h.Write([]byte{byte(len(mac))})
	h.Write(mac)
	if body[1]&flagUUID != 0 {
		u := strings.ToLower(uuid)
		h.Write([]byte{byte(len(u))})
		h.Write([]byte(u))
	}
	return h.Sum(nil)[:tokenTag]
}

// claims is what a verified token says.
type claims struct {
	name     string
	id       string
	iat, exp time.Time
}

// verify checks the token's form, HMAC, expiry and Consume.
func (t *Tokens) verify(token string, mac net.HardwareAddr, uuid string) (claims, error) {
	buf, err := base64.RawURLEncoding.Strict().DecodeString(token)
	if err != nil || len(buf) < tokenHeader+1+tokenTag || buf[0] != tokenVersion || buf[1]&^flagUUID != 0 {
		return claims{}, ErrTokenInvalid
	}
	n := int(buf[18+tokenNonce])
	if n == 0 || len(buf) != tokenHeader+n+tokenTag {
		return claims{}, ErrTokenInvalid
	}
	body, tag := buf[:tokenHeader+n], buf[tokenHeader+n:]
	if !hmac.Equal(tag, t.tag(body, mac, uuid)) {
		return claims{}, ErrTokenInvalid
	}
	c := claims{
		name: string(body[tokenHeader:]),
		id:   hex.EncodeToString(buf[18 : 18+tokenNonce]),
		iat:  time.Unix(0, int64(binary.BigEndian.Uint64(buf[2:]))),
		exp:  time.Unix(0, int64(binary.BigEndian.Uint64(buf[10:]))),
	}
	if t.now().After(c.exp) {
		return c, ErrTokenExpired
	}
	return c, nil
}

// Verify checks token against the request's MAC and UUID without spending
// it, and returns the machine name it was minted for. The errors are
// ErrTokenInvalid (forged, damaged, or another machine), ErrTokenExpired and
// ErrTokenConsumed; none of them contain the token.
func (t *Tokens) Verify(token string, mac net.HardwareAddr, uuid string) (string, error) {
	c, err := t.verify(token, mac, uuid)
	if err != nil {
		return c.name, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	spent, ok, err := t.consumedLocked(c.name)
	if err != nil {
		return c.name, err
	}
	if ok && !c.iat.After(spent) {
		return c.name, ErrTokenConsumed
	}
	return c.name, nil
}

// consumedLocked is when name's tokens were last consumed, asking the
// shared store when there is one (another server may have seen the
// machine installed).
func (t *Tokens) consumedLocked(name string) (time.Time, bool, error) {
	at, ok := t.consumed[name]
	if t.shared == nil {
		return at, ok, nil
	}
	sat, sok, err := t.shared.Consumed(name)
	if err != nil {
		return at, ok, fmt.Errorf("read used-up config tokens of %s: %w", name, err)
	}
	if sok && (!ok || sat.After(at)) {
		t.consumed[name] = sat
		return sat, true, nil
	}
	return at, ok, nil
}

// Spend verifies token and spends it for addr: the first use pins addr (and
// hw, the link-layer address seen for it, when known) and is written to the
// spent file before Spend returns; a later use is accepted only from the
// pinned address and only until the token expires (retry is then true).
// Errors: those of Verify, ErrTokenSpent, or a failure to write the spent
// file (then nothing was spent and nothing may be served).
func (t *Tokens) Spend(token string, mac net.HardwareAddr, uuid string, addr netip.Addr, hw net.HardwareAddr) (name string, retry bool, err error) {
	c, err := t.verify(token, mac, uuid)
	if err != nil {
		return c.name, false, err
	}
	addr = addr.Unmap()
	t.mu.Lock()
	defer t.mu.Unlock()
	spent, ok, err := t.consumedLocked(c.name)
	if err != nil {
		return c.name, false, err
	}
	if ok && !c.iat.After(spent) {
		return c.name, false, ErrTokenConsumed
	}
	if p, ok := t.spent[c.id]; ok {
		if p.Addr != addr {
			return c.name, false, ErrTokenSpent
		}
		return c.name, true, nil
	}
	p := Pin{ID: c.id, Name: c.name, Addr: addr, Exp: c.exp, At: t.now(), hw: hw}
	if len(hw) > 0 {
		p.MAC = hw.String()
	}
	if t.shared != nil {
		return t.spendSharedLocked(p)
	}
	t.addPinLocked(p)
	if err := t.saveLocked(); err != nil {
		delete(t.spent, p.ID)
		t.reindexLocked()
		return c.name, false, err
	}
	return c.name, false, nil
}

// Pinned returns the machine whose config was last fetched from addr, and
// the MAC seen for that address then (nil when not seen), while the pin is
// kept (PinRetention).
func (t *Tokens) Pinned(addr netip.Addr) (name string, hw net.HardwareAddr, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.spent[t.byAddr[addr.Unmap()]]
	if !ok && t.refreshPinsLocked() {
		p, ok = t.spent[t.byAddr[addr.Unmap()]]
	}
	if !ok || t.now().Sub(p.At) > PinRetention {
		return "", nil, false
	}
	return p.Name, p.hw, true
}

// PinnedMAC returns the machine whose config was last fetched by the NIC
// with link-layer address hw, while the pin is kept (PinRetention).
func (t *Tokens) PinnedMAC(hw net.HardwareAddr) (name string, ok bool) {
	if len(hw) == 0 {
		return "", false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	p, ok := t.spent[t.byMAC[hw.String()]]
	if !ok && t.refreshPinsLocked() {
		p, ok = t.spent[t.byMAC[hw.String()]]
	}
	if !ok || t.now().Sub(p.At) > PinRetention {
		return "", false
	}
	return p.Name, true
}

// Consume spends every token minted so far for the machine name: the events
// side calls it once the machine reports it is installed. A later boot gets
// a fresh token with its new script.
func (t *Tokens) Consume(name string) error {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	prev, ok := t.consumed[name]
	if ok && !now.After(prev) {
		return nil
	}
	if t.shared != nil {
		if err := t.shared.Consume(name, now); err != nil {
			return fmt.Errorf("record used-up config tokens of %s: %w", name, err)
		}
	}
	t.consumed[name] = now
	if err := t.saveLocked(); err != nil {
		if ok {
			t.consumed[name] = prev
		} else {
			delete(t.consumed, name)
		}
		return err
	}
	return nil
}

// saveLocked prunes what no longer matters and writes the spent file.
func (t *Tokens) saveLocked() error {
	now := t.now()
	for id, p := range t.spent {
		if now.After(p.Exp) && now.Sub(p.At) > PinRetention {
			delete(t.spent, id)
		}
	}
	for name, at := range t.consumed {
		if now.Sub(at) > t.ttl+time.Minute { // every token minted before it has expired
			delete(t.consumed, name)
		}
	}
	t.reindexLocked()
	if t.path == "" {
		return nil
	}
	f := spentFile{Version: 1, Spent: make([]Pin, 0, len(t.spent)), Consumed: t.consumed}
	for _, p := range t.spent {
		f.Spent = append(f.Spent, p)
	}
	slices.SortFunc(f.Spent, func(a, b Pin) int { return strings.Compare(a.ID, b.ID) })
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encode spent config tokens: %w", err)
	}
	if err := atomicfile.Write(t.path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("save spent config tokens: %w", err)
	}
	return nil
}

// spendSharedLocked records p in the shared store: the first server to
// record a token's use wins, and the others are held to its pin.
func (t *Tokens) spendSharedLocked(p Pin) (name string, retry bool, err error) {
	rec, first, err := t.shared.Spend(p)
	if err != nil {
		return p.Name, false, fmt.Errorf("record spent config token: %w", err)
	}
	rec.Addr = rec.Addr.Unmap()
	if rec.MAC != "" {
		rec.hw, _ = net.ParseMAC(rec.MAC)
	}
	t.addPinLocked(rec)
	if first {
		return p.Name, false, nil
	}
	if rec.Addr != p.Addr {
		return p.Name, false, ErrTokenSpent
	}
	return p.Name, true, nil
}

// refreshPinsLocked reads the pins other servers recorded, at most once per
// pinsRefresh; it reports whether it read any.
func (t *Tokens) refreshPinsLocked() bool {
	now := t.now()
	if t.shared == nil || (!t.refreshed.IsZero() && now.Sub(t.refreshed) < pinsRefresh) {
		return false
	}
	t.refreshed = now
	pins, err := t.shared.Pins()
	if err != nil {
		return false // a lookup only: the next miss asks again
	}
	for _, p := range pins {
		if p.MAC != "" {
			p.hw, _ = net.ParseMAC(p.MAC)
		}
		t.addPinLocked(p)
	}
	return len(pins) > 0
}

func (t *Tokens) reindexLocked() {
	clear(t.byAddr)
	clear(t.byMAC)
	for _, p := range t.spent {
		t.indexLocked(p)
	}
}

// ParseSpentFile decodes and checks the content of the spent tokens file
// (pxe-tokens.json), as OpenTokens does: the pins and, by machine name,
// when its tokens were used up (Consume).
func ParseSpentFile(data []byte) ([]Pin, map[string]time.Time, error) {
	f, err := parseSpent(data)
	if err != nil {
		return nil, nil, err
	}
	return f.Spent, f.Consumed, nil
}
