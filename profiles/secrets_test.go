package profiles

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
)

func fixedNow() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) }

func TestLoadOrCreateSecretsCreatesOnceThenReuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	b1, created, err := LoadOrCreateSecrets(dir, fixedNow)
	if err != nil || !created {
		t.Fatalf("first call: created=%v err=%v; want a new bundle", created, err)
	}
	path := filepath.Join(dir, SecretsFile)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %04o, want 0600", path, fi.Mode().Perm())
	}
	first, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// talosctl's format: lower-case keys, readable by machinery's loader.
	for _, key := range []string{"cluster:", "secrets:", "trustdinfo:", "certs:", "k8saggregator:", "bootstraptoken:"} {
		if !bytes.Contains(first, []byte(key)) {
			t.Errorf("secrets file lacks key %q (talosctl gen secrets format)", key)
		}
	}
	viaTalos, err := secrets.LoadBundle(path)
	if err != nil {
		t.Fatalf("machinery's LoadBundle cannot read our file: %v", err)
	}
	if !bytes.Equal(viaTalos.Certs.K8s.Crt, b1.Certs.K8s.Crt) {
		t.Fatal("machinery's LoadBundle read a different Kubernetes CA")
	}

	b2, created, err := LoadOrCreateSecrets(dir, fixedNow)
	if err != nil || created {
		t.Fatalf("second call: created=%v err=%v; want the existing bundle", created, err)
	}
	second, _ := os.ReadFile(path)
	if !bytes.Equal(first, second) {
		t.Fatal("second call changed the secrets file")
	}
	if !bytes.Equal(b1.Certs.OS.Crt, b2.Certs.OS.Crt) || !bytes.Equal(b1.Certs.K8s.Key, b2.Certs.K8s.Key) || b1.Cluster.Secret != b2.Cluster.Secret {
		t.Fatal("second call returned different CAs or secrets")
	}
	if got := b2.Clock.Now(); !got.Equal(fixedNow()) {
		t.Fatalf("loaded bundle's clock = %v, want the injected %v", got, fixedNow())
	}
}

func TestLoadOrCreateSecretsKeepsBadFiles(t *testing.T) {
	validData, err := MarshalSecrets(testBundle(t))
	if err != nil {
		t.Fatal(err)
	}
	incomplete := bytes.Replace(validData, []byte("bootstraptoken:"), []byte("bootstraptokenx:"), 1)
	for _, tc := range []struct {
		name    string
		data    []byte
		mode    os.FileMode
		wantErr string
	}{
		{"not yaml", []byte("cluster: [\n"), 0o600, "not a usable secrets bundle"},
		{"empty", nil, 0o600, "empty"},
		{"null", []byte("null\n"), 0o600, "no bundle"},
		{"unknown key", incomplete, 0o600, "not a usable secrets bundle"},
		{"truncated", validData[:len(validData)/2], 0o600, "not a usable secrets bundle"},
		{"group readable", validData, 0o640, "chmod 600"},
		{"world readable", validData, 0o604, "chmod 600"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, SecretsFile)
			if err := os.WriteFile(path, tc.data, tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			_, created, err := LoadOrCreateSecrets(dir, fixedNow)
			if err == nil || created {
				t.Fatalf("created=%v err=%v; want an error", created, err)
			}
			for _, want := range []string{tc.wantErr, path, "untouched"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			}
			after, _ := os.ReadFile(path)
			if !bytes.Equal(after, tc.data) {
				t.Fatal("the bad secrets file was changed")
			}
			fi, _ := os.Stat(path)
			if fi.Mode().Perm() != tc.mode {
				t.Fatalf("mode changed to %04o", fi.Mode().Perm())
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 {
				t.Fatalf("state dir has %d entries, want only the untouched file", len(entries))
			}
		})
	}
}

func TestLoadOrCreateSecretsUnreadable(t *testing.T) {
	dir := t.TempDir()
	// A directory where the file should be: not a reason to make new secrets.
	if err := os.Mkdir(filepath.Join(dir, SecretsFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, created, err := LoadOrCreateSecrets(dir, fixedNow); err == nil || created {
		t.Fatalf("created=%v err=%v; want an error", created, err)
	}
}

func TestImportSecrets(t *testing.T) {
	src := testBundle(t)
	data, err := MarshalSecrets(src)
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	file := filepath.Join(tmp, "talos-secrets.yaml")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(tmp, "state")
	if err := ImportSecrets(state, file); err != nil {
		t.Fatalf("import: %v", err)
	}
	got, created, err := LoadOrCreateSecrets(state, fixedNow)
	if err != nil || created {
		t.Fatalf("after import: created=%v err=%v", created, err)
	}
	if !bytes.Equal(got.Certs.OS.Crt, src.Certs.OS.Crt) || got.Secrets.BootstrapToken != src.Secrets.BootstrapToken {
		t.Fatal("imported bundle differs from the source")
	}
	fi, _ := os.Stat(filepath.Join(state, SecretsFile))
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("imported file has mode %04o, want 0600", fi.Mode().Perm())
	}

	// A second import refuses and changes nothing.
	// (Its content would be valid: refusing must not depend on it.)
	otherData := bytes.Replace(data, []byte(src.Secrets.BootstrapToken), []byte("zzzzzz.zzzzzzzzzzzzzzzz"), 1)
	otherFile := filepath.Join(tmp, "other.yaml")
	if err := os.WriteFile(otherFile, otherData, 0o600); err != nil {
		t.Fatal(err)
	}
	err = ImportSecrets(state, otherFile)
	if !errors.Is(err, ErrSecretsExist) || !strings.Contains(err.Error(), "nothing was changed") {
		t.Fatalf("second import: %v; want ErrSecretsExist saying nothing was changed", err)
	}
	after, _ := os.ReadFile(filepath.Join(state, SecretsFile))
	if !bytes.Equal(after, data) {
		t.Fatal("refused import changed the secrets file")
	}
}

func TestImportSecretsRejectsBadBundle(t *testing.T) {
	tmp := t.TempDir()
	file := filepath.Join(tmp, "bad.yaml")
	if err := os.WriteFile(file, []byte("cluster:\n  id: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(tmp, "state")
	err := ImportSecrets(state, file)
	if err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("import of a bad bundle: %v; want an error naming the file", err)
	}
	if _, err := os.Stat(filepath.Join(state, SecretsFile)); !os.IsNotExist(err) {
		t.Fatalf("a rejected import left a secrets file: %v", err)
	}
	if err := ImportSecrets(state, filepath.Join(tmp, "missing.yaml")); err == nil {
		t.Fatal("import of a missing file succeeded")
	}
}

func FuzzParseSecrets(f *testing.F) {
	f.Add([]byte("cluster:\n  id: a\n  secret: b\n"))
	f.Add([]byte("null\n"))
	f.Add([]byte("certs:\n  os:\n    crt: AAAA\n    key: AAAA\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := parseSecrets(data)
		if err == nil && (b == nil || b.Certs == nil || b.Certs.K8s == nil || b.Clock == nil) {
			t.Fatalf("parseSecrets accepted an incomplete bundle from %q", data)
		}
	})
}
