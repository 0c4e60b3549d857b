package profiles

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	yaml4 "go.yaml.in/yaml/v4"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

// SecretsFile is the secrets bundle's name in the state directory.
const SecretsFile = "secrets.yaml"

// secretsMode is the only mode a secrets file may have: it holds every CA key
// of the cluster.
const secretsMode fs.FileMode = 0o600

// ErrSecretsExist is returned by ImportSecrets when the state directory has
// secrets already.
var ErrSecretsExist = errors.New("secrets already exist")

// ErrSecretsLost is returned by LoadOrCreateSecretsIfNew when the state
// directory holds an existing cluster's state but not its secrets.
var ErrSecretsLost = errors.New("the cluster's keys are missing")

// clockFunc adapts an injected clock to secrets.Clock (used when signing
// client certificates from the bundle).
type clockFunc func() time.Time

func (f clockFunc) Now() time.Time { return f() }

// LoadOrCreateSecrets returns the cluster's secrets bundle from
// <stateDir>/secrets.yaml, creating it on first use (created is then true).
//
// An existing file is never replaced: if it cannot be read or parsed, or is
// readable by group or others, the error says which file and that it was left
// untouched. New secrets over a bundle that merely failed to load would lock
// the operator out of a running cluster, so that is never done.
//
// now is the clock for the bundle's CAs (on creation) and for the client
// certificates signed from it later.
func LoadOrCreateSecrets(stateDir string, now func() time.Time) (*secrets.Bundle, bool, error) {
	return loadOrCreateSecrets(stateDir, now, newBundle)
}

// newBundle makes new secrets for the Talos version rackboot installs.
func newBundle(now time.Time) (*secrets.Bundle, error) {
	return secrets.NewBundle(secrets.NewFixedClock(now), config.TalosVersion1_13)
}

// loadOrCreateSecrets is LoadOrCreateSecrets with the bundle maker as a
// parameter (the crash tests hand in a ready one, to stop the process while
// it is being written).
func loadOrCreateSecrets(stateDir string, now func() time.Time, generate func(time.Time) (*secrets.Bundle, error)) (*secrets.Bundle, bool, error) {
	path := filepath.Join(stateDir, SecretsFile)
	if _, err := os.Lstat(path); err == nil {
		b, err := LoadSecrets(path)
		if err != nil {
			return nil, false, err
		}
		b.Clock = clockFunc(now)
		return b, false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("check secrets %s (left untouched): %w", path, err)
	}
	b, err := generate(now())
	if err != nil {
		return nil, false, fmt.Errorf("generate secrets: %w", err)
	}
	data, err := MarshalSecrets(b)
	if err != nil {
		return nil, false, err
	}
	if err := atomicfile.WriteNew(path, data, secretsMode); err != nil {
		if errors.Is(err, atomicfile.ErrExists) {
			// Another rackboot created it meanwhile: use theirs.
			b, err := LoadSecrets(path)
			if err != nil {
				return nil, false, err
			}
			b.Clock = clockFunc(now)
			return b, false, nil
		}
		return nil, false, fmt.Errorf("write new secrets: %w", err)
	}
	b.Clock = clockFunc(now)
	return b, true, nil
}

// LoadOrCreateSecretsIfNew is LoadOrCreateSecrets for commands that may
// start a cluster but must not start a second one over a lost bundle: when
// secrets.yaml is missing it creates one only if none of clusterState (names
// in stateDir that exist only once a cluster has been made with its secrets:
// machine states, leases, client configs...) exists. Otherwise the secrets
// were lost, not never made; new ones would not open the existing cluster,
// so it creates nothing and returns an error wrapping ErrSecretsLost that
// says how to restore them.
func LoadOrCreateSecretsIfNew(stateDir string, now func() time.Time, clusterState []string) (*secrets.Bundle, bool, error) {
	path := filepath.Join(stateDir, SecretsFile)
	_, err := os.Lstat(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, false, fmt.Errorf("check secrets %s (left untouched): %w", path, err)
	}
	if err != nil {
		var found []string
		for _, name := range clusterState {
			switch _, err := os.Lstat(filepath.Join(stateDir, name)); {
			case err == nil:
				found = append(found, name)
			case !errors.Is(err, fs.ErrNotExist):
				return nil, false, fmt.Errorf("check the state directory %s: %w", stateDir, err)
			}
		}
		if len(found) > 0 {
			return nil, false, fmt.Errorf("state directory %s has %s but no %s: %w. "+
				"Restore %s from your backup into %s, or run `rackboot secrets import FILE` with your copy of the bundle; "+
				"rackboot will not make new keys for an existing cluster, they would not open it",
				stateDir, strings.Join(found, ", "), SecretsFile, ErrSecretsLost, SecretsFile, stateDir)
		}
	}
	return LoadOrCreateSecrets(stateDir, now)
}

// MarshalSecrets encodes a bundle the way `talosctl gen secrets` writes it
// (go.yaml.in/yaml/v4, lower-case keys), so either tool reads the other's.
func MarshalSecrets(b *secrets.Bundle) ([]byte, error) {
	data, err := yaml4.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("marshal secrets: %w", err)
	}
	return data, nil
}

// LoadSecrets reads and checks a secrets bundle file (`talosctl gen secrets`
// format). It refuses a file that group or others can read.
func LoadSecrets(path string) (*secrets.Bundle, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read secrets %s (left untouched): %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("secrets %s is not a regular file (left untouched)", path)
	}
	// Like ssh with a private key: refuse rather than keep using CA keys
	// that others may have copied; the fix is one command and loses nothing.
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("secrets %s has mode %04o: it holds the cluster's CA keys, so only its owner may read it; run `chmod 600 %s` (the file was left untouched)", path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read secrets %s (left untouched): %w", path, err)
	}
	b, err := parseSecrets(data)
	if err != nil {
		return nil, fmt.Errorf("secrets %s is not a usable secrets bundle (left untouched; restore it from a backup or move it away deliberately): %w", path, err)
	}
	return b, nil
}

// ParseSecrets decodes and validates a secrets bundle read from somewhere
// other than the state directory (rackboot serve --kube: a Secret); now is
// the clock for the client certificates signed from it.
func ParseSecrets(data []byte, now func() time.Time) (*secrets.Bundle, error) {
	b, err := parseSecrets(data)
	if err != nil {
		return nil, fmt.Errorf("not a usable secrets bundle: %w", err)
	}
	b.Clock = clockFunc(now)
	return b, nil
}

// parseSecrets decodes and validates a bundle held in memory.
func parseSecrets(data []byte) (*secrets.Bundle, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("the file is empty")
	}
	var b *secrets.Bundle
	dec := yaml4.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("parse YAML: %w", err)
	}
	if b == nil {
		return nil, errors.New("the file holds no bundle")
	}
	// Validate also parses every CA certificate and key.
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("invalid bundle: %w", err)
	}
	b.Clock = secrets.NewClock()
	return b, nil
}

// ImportSecrets adopts an existing `talosctl gen secrets` bundle as the
// state directory's secrets, after checking that it loads. It refuses, and
// changes nothing, if the state directory has secrets already.
func ImportSecrets(stateDir, file string) error {
	dst := filepath.Join(stateDir, SecretsFile)
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("import %s: %s: %w; nothing was changed (move it away yourself if you really mean to replace the cluster's CAs)", file, dst, ErrSecretsExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("import %s: check %s: %w", file, dst, err)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("import secrets: %w", err)
	}
	if _, err := parseSecrets(data); err != nil {
		return fmt.Errorf("import %s: not a usable talosctl secrets bundle: %w", file, err)
	}
	// Write the bytes as given (byte-identical to the operator's copy).
	if err := atomicfile.WriteNew(dst, data, secretsMode); err != nil {
		if errors.Is(err, atomicfile.ErrExists) {
			return fmt.Errorf("import %s: %s: %w; nothing was changed", file, dst, ErrSecretsExist)
		}
		return fmt.Errorf("import %s: %w", file, err)
	}
	return nil
}
