package profiles

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
)

func TestLoadOrCreateSecretsIfNew(t *testing.T) {
	state := []string{"machines.json", "pxe-token.key"}

	// A new (missing, then empty) state directory: created.
	dir := filepath.Join(t.TempDir(), "state")
	if _, created, err := LoadOrCreateSecretsIfNew(dir, fixedNow, state); err != nil || !created {
		t.Fatalf("new state directory: created %v, %v", created, err)
	}
	// Existing secrets are loaded, whatever else is there.
	if err := os.WriteFile(filepath.Join(dir, "machines.json"), []byte("[]"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, created, err := LoadOrCreateSecretsIfNew(dir, fixedNow, state); err != nil || created {
		t.Fatalf("existing secrets: created %v, %v", created, err)
	}

	// Cluster state without secrets: refused, nothing created.
	lost := t.TempDir()
	for _, f := range state {
		if err := os.WriteFile(filepath.Join(lost, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, created, err := LoadOrCreateSecretsIfNew(lost, fixedNow, state)
	if !errors.Is(err, ErrSecretsLost) || created {
		t.Fatalf("lost state: created %v, err %v; want ErrSecretsLost", created, err)
	}
	for _, want := range []string{lost + " has machines.json, pxe-token.key but no secrets.yaml", "Restore secrets.yaml from your backup", "rackboot secrets import FILE"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not say %q", err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(lost, SecretsFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("secrets written in a lost state directory: %v", err)
	}
	// Other entries (an asset cache, say) do not count.
	other := t.TempDir()
	if err := os.Mkdir(filepath.Join(other, "assets"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, created, err := LoadOrCreateSecretsIfNew(other, fixedNow, state); err != nil || !created {
		t.Fatalf("state directory with an asset cache only: created %v, %v", created, err)
	}
}

// The child process of TestSecretsCrashWindow creates secrets in
// $PROFILES_SECRETS_CRASH_DIR from the ready bundle in
// $PROFILES_SECRETS_CRASH_BUNDLE (making keys takes a second; writing them,
// the window under test, a few milliseconds).
const (
	secretsCrashDirEnv    = "PROFILES_SECRETS_CRASH_DIR"
	secretsCrashBundleEnv = "PROFILES_SECRETS_CRASH_BUNDLE"
)

// TestSecretsCrashWindow kills (SIGKILL) a process writing new secrets at
// delays spread over the write, and checks that it never leaves a
// secrets.yaml the next run refuses: there is either none (and the next run
// creates one) or a complete one (and the next run keeps it).
func TestSecretsCrashWindow(t *testing.T) {
	if dir := os.Getenv(secretsCrashDirEnv); dir != "" {
		_, _, err := loadOrCreateSecrets(dir, time.Now, func(time.Time) (*secrets.Bundle, error) {
			b, err := LoadSecrets(os.Getenv(secretsCrashBundleEnv))
			fmt.Println("generated")
			return b, err
		})
		fmt.Println("done", err)
		time.Sleep(time.Hour)
	}
	fixtureDir := t.TempDir()
	if _, _, err := LoadOrCreateSecrets(fixtureDir, fixedNow); err != nil {
		t.Fatal(err)
	}
	fixture := filepath.Join(fixtureDir, SecretsFile)
	ready, err := LoadSecrets(fixture)
	if err != nil {
		t.Fatal(err)
	}
	// How long writing takes here (the fastest of a few: fsync times vary
	// with the machine's load), to spread the kills over it.
	took := time.Hour
	for range 5 {
		start := time.Now()
		if _, _, err := loadOrCreateSecrets(t.TempDir(), fixedNow, func(time.Time) (*secrets.Bundle, error) { return ready, nil }); err != nil {
			t.Fatal(err)
		}
		took = min(took, time.Since(start))
	}
	// A fresh process writes slower than this warm one: sweep past it.
	const steps = 24
	var none, leftover, complete int
	for i := range steps + 1 {
		delay := took * 6 * time.Duration(i) / steps
		dir := filepath.Join(t.TempDir(), "state")
		cmd := exec.Command(os.Args[0], "-test.run=^TestSecretsCrashWindow$")
		cmd.Env = append(os.Environ(), secretsCrashDirEnv+"="+dir, secretsCrashBundleEnv+"="+fixture)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "generated\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child: %q, %v", line, err)
		}
		time.Sleep(delay)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()

		path := filepath.Join(dir, SecretsFile)
		before, readErr := os.ReadFile(path)
		exists := readErr == nil
		switch temps, _ := filepath.Glob(filepath.Join(dir, "."+SecretsFile+".tmp-*")); {
		case exists:
			complete++
			if _, err := LoadSecrets(path); err != nil {
				t.Fatalf("killed %v into the write: the secrets left behind do not load: %v", delay, err)
			}
		case !errors.Is(readErr, os.ErrNotExist):
			t.Fatal(readErr)
		case len(temps) > 0:
			leftover++
		default:
			none++
		}
		b, created, err := loadOrCreateSecrets(dir, fixedNow, func(time.Time) (*secrets.Bundle, error) { return ready, nil })
		if err != nil {
			t.Fatalf("killed %v into the write: next run: %v", delay, err)
		}
		if created == exists || b == nil {
			t.Fatalf("killed %v into the write (secrets on disk: %v): next run created %v", delay, exists, created)
		}
		if exists {
			if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
				t.Fatalf("killed %v into the write: next run replaced the secrets", delay)
			}
		}
	}
	t.Logf("writing takes %v; the kills left nothing %d times, a temporary file only %d times, complete secrets %d times",
		took, none, leftover, complete)
}

// TestSecretsLeftoverTempFile: a writer killed before publishing leaves a
// temporary file (possibly cut short) beside the secrets; it is not taken
// for them, and the next run creates the secrets as on a new directory.
func TestSecretsLeftoverTempFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "."+SecretsFile+".tmp-123"), []byte("cluster:\n  id: abc\n  sec"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, created, err := LoadOrCreateSecretsIfNew(dir, fixedNow, []string{"machines.json"}); err != nil || !created {
		t.Fatalf("next run: created %v, %v", created, err)
	}
	if _, err := LoadSecrets(filepath.Join(dir, SecretsFile)); err != nil {
		t.Fatal(err)
	}
}
