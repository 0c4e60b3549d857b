package profiles

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

// BMCPasswordsFile is the BMC passwords' file in the state directory:
// machine name -> password, mode 0600.
const BMCPasswordsFile = "bmc-passwords.yaml"

// BMCPasswordEnv is the environment variable that gives every machine's
// BMC password; BMCPasswordEnv + "_" + BMCPasswordEnvName(name) gives one.
const BMCPasswordEnv = "RACKBOOT_BMC_PASSWORD"

// BMCPasswordEnvName is a machine name as it ends its password's
// environment variable: upper case, '-' and '.' as '_'.
func BMCPasswordEnvName(name string) string {
	return strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToUpper(name))
}

// Where a BMC password came from.
const (
	BMCPasswordFromEnvMachine = "env-machine" // RACKBOOT_BMC_PASSWORD_<NAME>
	BMCPasswordFromEnv        = "env"         // RACKBOOT_BMC_PASSWORD
	BMCPasswordFromFile       = "file"        // <state>/bmc-passwords.yaml
)

// BMCPasswords are the BMC passwords for one state directory. Load reads
// the file once; Get looks in the environment first.
type BMCPasswords struct {
	path   string
	byName map[string]string
	getenv func(string) string
}

// LoadBMCPasswords reads <stateDir>/bmc-passwords.yaml if there is one
// (none is no error; nothing is created). It refuses a file that group or
// others can read, like the secrets bundle. getenv is os.Getenv when nil.
func LoadBMCPasswords(stateDir string, getenv func(string) string) (*BMCPasswords, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	p := &BMCPasswords{path: filepath.Join(stateDir, BMCPasswordsFile), byName: map[string]string{}, getenv: getenv}
	fi, err := os.Stat(p.path)
	if errors.Is(err, fs.ErrNotExist) {
		return p, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read BMC passwords %s: %w", p.path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("BMC passwords %s is not a regular file (left untouched)", p.path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("BMC passwords %s has mode %04o: it holds the passwords of the rack's BMCs, so only its owner may read it; run `chmod 600 %s` (the file was left untouched)", p.path, perm, p.path)
	}
	data, err := os.ReadFile(p.path)
	if err != nil {
		return nil, fmt.Errorf("read BMC passwords %s: %w", p.path, err)
	}
	if p.byName, err = ParseBMCPasswords(data); err != nil {
		return nil, fmt.Errorf("BMC passwords %s (left untouched): %w", p.path, err)
	}
	return p, nil
}

// NewBMCPasswords returns the BMC passwords held in data (the file's
// content, read from somewhere other than the state directory: rackboot
// serve --kube reads a Secret). getenv is os.Getenv when nil.
func NewBMCPasswords(data []byte, getenv func(string) string) (*BMCPasswords, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	byName, err := ParseBMCPasswords(data)
	if err != nil {
		return nil, fmt.Errorf("BMC passwords: %w", err)
	}
	return &BMCPasswords{byName: byName, getenv: getenv}, nil
}

// ParseBMCPasswords decodes the file: a mapping of machine name to
// password, both strings. Errors never quote a value.
func ParseBMCPasswords(data []byte) (map[string]string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, errors.New("not valid YAML: write lines of the form `name: password`, or set them again with `rackboot bmc set-password NAME`")
	}
	m := map[string]string{}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return m, nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return m, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, errors.New("not a mapping of machine name to password: write lines of the form `name: password`")
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode || v.Kind != yaml.ScalarNode || k.Value == "" {
			return nil, fmt.Errorf("line %d: not of the form `name: password`", k.Line)
		}
		if _, dup := m[k.Value]; dup {
			return nil, fmt.Errorf("line %d: machine %q is given twice: keep one", k.Line, k.Value)
		}
		m[k.Value] = v.Value
	}
	return m, nil
}

// Get returns name's BMC password and where it came from:
// RACKBOOT_BMC_PASSWORD_<NAME>, then RACKBOOT_BMC_PASSWORD, then the file.
// ok is false when none has one.
func (p *BMCPasswords) Get(name string) (password, from string, ok bool) {
	if v := p.getenv(BMCPasswordEnv + "_" + BMCPasswordEnvName(name)); v != "" {
		return v, BMCPasswordFromEnvMachine, true
	}
	if v := p.getenv(BMCPasswordEnv); v != "" {
		return v, BMCPasswordFromEnv, true
	}
	v, ok := p.byName[name]
	if !ok || v == "" {
		return "", "", false
	}
	return v, BMCPasswordFromFile, true
}

// Missing is the error for a machine without a password: what to run.
func (p *BMCPasswords) Missing(name string) error {
	return fmt.Errorf("no BMC password for %s: run `rackboot bmc set-password %s`, or set %s_%s", name, name, BMCPasswordEnv, BMCPasswordEnvName(name))
}

// Values are every password known (file and environment), for callers that
// check their output never shows one.
func (p *BMCPasswords) Values(names []string) []string {
	var vs []string
	for _, n := range names {
		if v, _, ok := p.Get(n); ok {
			vs = append(vs, v)
		}
	}
	return vs
}

// SetBMCPassword stores name's BMC password in <stateDir>/bmc-passwords.yaml
// (created 0600 with the state dir when missing; replaced atomically).
func SetBMCPassword(stateDir, name, password string) error {
	if password == "" {
		return errors.New("empty password: nothing stored")
	}
	p, err := LoadBMCPasswords(stateDir, func(string) string { return "" })
	if err != nil {
		return err
	}
	p.byName[name] = password
	data, err := yaml.Marshal(p.byName)
	if err != nil {
		return fmt.Errorf("encode BMC passwords: %w", err)
	}
	if err := atomicfile.Write(p.path, data, 0o600); err != nil {
		return fmt.Errorf("store the BMC password: %w", err)
	}
	return nil
}
