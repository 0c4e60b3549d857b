package profiles

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBMCPasswordEnvName(t *testing.T) {
	for in, want := range map[string]string{"w1": "W1", "rack-a1": "RACK_A1", "r1.dc": "R1_DC"} {
		if got := BMCPasswordEnvName(in); got != want {
			t.Errorf("BMCPasswordEnvName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestBMCPasswordsFile(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	// Reading creates nothing.
	p, err := LoadBMCPasswords(state, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if _, _, ok := p.Get("w1"); ok {
		t.Error("a password from nowhere")
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Fatalf("reading passwords touched the state dir: %v", err)
	}
	if err := p.Missing("rack-a1"); !strings.Contains(err.Error(), "rackboot bmc set-password rack-a1") || !strings.Contains(err.Error(), "RACKBOOT_BMC_PASSWORD_RACK_A1") {
		t.Errorf("Missing: %v", err)
	}

	if err := SetBMCPassword(state, "w1", "pw: with # yaml"); err != nil {
		t.Fatal(err)
	}
	if err := SetBMCPassword(state, "w2", "two"); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(state, BMCPasswordsFile)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v %v, want mode 0600", path, fi.Mode(), err)
	}
	env := map[string]string{}
	p, err = LoadBMCPasswords(state, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		env              map[string]string
		name, want, from string
	}{
		{map[string]string{}, "w1", "pw: with # yaml", BMCPasswordFromFile},
		{map[string]string{}, "w2", "two", BMCPasswordFromFile},
		{map[string]string{"RACKBOOT_BMC_PASSWORD": "all"}, "w1", "all", BMCPasswordFromEnv},
		{map[string]string{"RACKBOOT_BMC_PASSWORD": "all", "RACKBOOT_BMC_PASSWORD_W1": "one"}, "w1", "one", BMCPasswordFromEnvMachine},
		{map[string]string{"RACKBOOT_BMC_PASSWORD_W1": "one"}, "w2", "two", BMCPasswordFromFile},
	} {
		env = tc.env
		got, from, ok := p.Get(tc.name)
		if !ok || got != tc.want || from != tc.from {
			t.Errorf("env %v: Get(%s) = %q %s %t, want %q %s", tc.env, tc.name, got, from, ok, tc.want, tc.from)
		}
	}

	// A file others can read is refused, without its content in the error.
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = LoadBMCPasswords(state, nil)
	if err == nil || !strings.Contains(err.Error(), "chmod 600") || strings.Contains(err.Error(), "two") {
		t.Fatalf("a 0644 passwords file: %v", err)
	}
	if err := SetBMCPassword(state, "w3", "three"); err == nil {
		t.Fatal("SetBMCPassword wrote over a 0644 file")
	}
}

func TestParseBMCPasswords(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
		err  string
	}{
		{"", map[string]string{}, ""},
		{"w1: a\nw2: 'b c'\n", map[string]string{"w1": "a", "w2": "b c"}, ""},
		{"- w1\n", nil, "not a mapping"},
		{"w1: [x]\n", nil, "line 1: not of the form"},
		{"w1: secretA\nw1: secretB\n", nil, "given twice"},
		{"w1: \"secretA\n", nil, "not valid YAML"},
	} {
		got, err := ParseBMCPasswords([]byte(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || strings.Contains(err.Error(), "secret") {
				t.Errorf("%q: %v, want %q (and no value)", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || len(got) != len(tc.want) {
			t.Errorf("%q: %v %v", tc.in, got, err)
		}
		for k, v := range tc.want {
			if got[k] != v {
				t.Errorf("%q: %s = %q, want %q", tc.in, k, got[k], v)
			}
		}
	}
}

// FuzzParseBMCPasswords: never panics; an error never quotes a value.
func FuzzParseBMCPasswords(f *testing.F) {
	f.Add([]byte("w1: a\nw2: b\n"))
	f.Add([]byte("w1: zzsecretzz\nw1: zzsecretzz\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseBMCPasswords(data)
		if err != nil && strings.Contains(string(data), "zzsecretzz") && strings.Contains(err.Error(), "zzsecretzz") {
			t.Errorf("error quotes a value: %v", err)
		}
		if err == nil && m == nil {
			t.Error("nil map without error")
		}
	})
}
