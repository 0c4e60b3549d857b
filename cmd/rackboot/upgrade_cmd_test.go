package main

import (
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/profiles"
)

func TestUpgradeRefuses(t *testing.T) {
	rack, state := writeExampleRack(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"upgrade"}, "--talos v1.13.1"},
		{[]string{"upgrade", "--talos", "1.13.1"}, "must start with v"},
		{[]string{"upgrade", "--talos", "v1.13"}, "three numbers"},
		{[]string{"upgrade", "--talos", "v1.13.1", "--kubernetes", "v1.35.0"}, "--talos and --kubernetes do not go together"},
		{[]string{"upgrade", "--talos", "v1.13.1", "--dry-run", "--resume"}, "do not go together"},
		{[]string{"upgrade", "--talos", "v1.13.1"}, "no cluster secrets"},
		{[]string{"upgrade", "--talos", "v1.13.1", "--dry-run"}, "no cluster secrets"},
	} {
		_, _, err := runCmd(t, append([]string{"-f", rack, "--state", state}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("a refused upgrade created the state directory: %v", err)
	}
}

// TestUpgradeDryRun: against a real API server, with the Talos API
// unreachable: the plan is printed (versions unknown, control planes
// first), the gates' state too, and nothing is written to the state
// directory.
func TestUpgradeDryRun(t *testing.T) {
	env := kubetest.Start(t)
	rack, state := writeExampleRack(t)
	if _, _, err := profiles.LoadOrCreateSecrets(state, time.Now); err != nil {
		t.Fatal(err)
	}
	before := dirNames(t, state)
	out, errOut, err := runCmd(t, "-f", rack, "--state", state, "upgrade", "--talos", "v1.13.1", "--dry-run",
		"--kubeconfig", env.Kubeconfig, "--talos-endpoint", "127.0.0.1:1")
	t.Logf("dry run:\n%s%s", out, errOut)
	if err != nil {
		t.Fatalf("dry run: %v", err)
	}
	r, err := profiles.Load("rack.yaml", profiles.ExampleRack)
	if err != nil {
		t.Fatal(err)
	}
	first := r.ControlPlanes()[0].Name
	for _, want := range []string{"upgrade to Talos v1.13.1:", "1. " + first, "version unknown", "gates now:", "NOT OK   etcd is healthy", "no CockroachDB gate", "no Ceph gate", "no PostgreSQL gate"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if after := dirNames(t, state); !slices.Equal(before, after) {
		t.Errorf("the dry run changed the state directory: %v → %v", before, after)
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}
