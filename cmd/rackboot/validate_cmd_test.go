package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/profiles"
)

// runValidateArgs runs the cobra root with args and returns stdout, stderr
// and the exit code main would use.
func runValidateArgs(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	code = 0
	if err != nil {
		code = 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		errOut.WriteString(err.Error())
	}
	return out.String(), errOut.String(), code
}

func TestValidateExampleFromInit(t *testing.T) {
	dir := t.TempDir()
	if _, stderr, code := runValidateArgs(t, "init", dir); code != 0 {
		t.Fatalf("init: exit %d: %s", code, stderr)
	}
	rack := filepath.Join(dir, "rack.yaml")
	stdout, stderr, code := runValidateArgs(t, "-f", rack, "validate")
	if code != 0 {
		t.Fatalf("validate: exit %d\n%s%s", code, stdout, stderr)
	}
	// The warning points at the first machine of the list.
	src := strings.Split(string(profiles.ExampleRack), "\n")
	first := slices.Index(src, "machines:") + 2
	for first <= len(src) && !strings.HasPrefix(src[first-1], "  - ") {
		first++
	}
	var lines, notes []string
	for _, l := range strings.Split(strings.TrimSpace(stdout), "\n") {
		if strings.Contains(l, ": note: ") {
			notes = append(notes, l)
		} else {
			lines = append(lines, l)
		}
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "needs an NVMe drive") {
		t.Errorf("notes on the install disk: %q", notes)
	}
	if len(lines) != 2 ||
		!strings.HasPrefix(lines[0], fmt.Sprintf("%s:%d:3: warning: 2 control planes cannot lose either etcd member", rack, first)) ||
		lines[1] != rack+": ok: 6 machines, 2 control plane(s), 1 warning(s)" {
		t.Errorf("stdout:\n%s", stdout)
	}
}

func TestValidateBadRacks(t *testing.T) {
	tests := []struct {
		src  string // a file in profiles/testdata/bad
		code int
		want []string // lines of stdout, after "rack.yaml:"
	}{
		{"vip-outside-subnet.yaml", 1, []string{"6:8: error: vip 10.0.1.10 is outside the subnet 10.0.0.0/24: pick a free address in 10.0.0.0/24"}},
		{"tab-indent.yaml", 1, []string{"17:1: error: found a tab character"}},
		{"unknown-field.yaml", 1, []string{`16:5: error: unknown field "adress" in machines[0]`}},
		{"ceph-unanchored.yaml", 0, []string{`21:16: warning: cephDisks "sd." is not anchored`, " ok: 2 machines, 1 control plane(s), 1 warning(s)"}},
	}
	for _, tc := range tests {
		t.Run(tc.src, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("..", "..", "profiles", "testdata", "bad", tc.src))
			if err != nil {
				t.Fatal(err)
			}
			rack := filepath.Join(t.TempDir(), "rack.yaml")
			if err := os.WriteFile(rack, data, 0o644); err != nil {
				t.Fatal(err)
			}
			stdout, stderr, code := runValidateArgs(t, "--rack", rack, "validate")
			if code != tc.code {
				t.Errorf("exit %d, want %d\n%s%s", code, tc.code, stdout, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stdout, rack+":"+w) {
					t.Errorf("stdout lacks %q:\n%s", rack+":"+w, stdout)
				}
			}
			if tc.code != 0 && !strings.Contains(stderr, "error(s)") {
				t.Errorf("stderr %q does not count the errors", stderr)
			}
			after, err := os.ReadFile(rack)
			if err != nil || !bytes.Equal(after, data) {
				t.Errorf("validate changed the rack file")
			}
		})
	}
}

func TestValidateMissingFile(t *testing.T) {
	rack := filepath.Join(t.TempDir(), "rack.yaml")
	stdout, stderr, code := runValidateArgs(t, "-f", rack, "validate")
	if code != 1 || stdout != "" || !strings.Contains(stderr, "rackboot init") || !strings.Contains(stderr, "no such file") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
