package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/inventory"
)

func TestWaitInstalled(t *testing.T) {
	m := func(name, stage string, installed bool) inventory.Machine {
		return inventory.Machine{Name: name, Stage: stage, Installed: installed, Detail: "d"}
	}
	errDown := errors.New("connection refused")
	tests := []struct {
		name  string
		steps [][]inventory.Machine // nil step: fetch fails
		want  string                // "" = success; else a substring of the error
		out   []string
	}{
		{"all installed over time", [][]inventory.Machine{
			nil,
			{m("a", "dhcp", false)},
			{m("a", "kernel", false), m("b", "dhcp", false), {Key: "02:00:00:00:00:09", Stage: "discovered"}},
			{m("a", "installed", true), m("b", "installing", false)},
			{m("a", "rebooted", true), m("b", "installed", true)},
		}, "", []string{"a            dhcp", "b            installing", "all 2 machine(s) installed"}},
		{"install failed", [][]inventory.Machine{
			{m("a", "installing", false), m("b", "dhcp", false)},
			{m("a", "install-failed", false), m("b", "dhcp", false)},
		}, "machine a: install-failed: d", nil},
		{"config error", [][]inventory.Machine{
			{m("a", "config-error", false), m("b", "installed", true)},
		}, "machine a: config-error", nil},
		{"timeout", [][]inventory.Machine{
			{m("a", "installed", true)},
		}, "b (not seen yet)", nil},
		{"server never answers", nil, "last error: connection refused", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			i := 0
			fetch := func(ctx context.Context) ([]inventory.Machine, error) {
				if len(tt.steps) == 0 {
					return nil, errDown
				}
				step := tt.steps[min(i, len(tt.steps)-1)]
				i++
				if step == nil {
					return nil, errDown
				}
				return step, nil
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			var out bytes.Buffer
			err := waitInstalled(ctx, fetch, []string{"a", "b"}, time.Millisecond, &out)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("err %v\n%s", err, out.String())
				}
			} else if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want %q", err, tt.want)
			}
			for _, w := range tt.out {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

func TestLabCLINotUp(t *testing.T) {
	state := t.TempDir()
	for _, args := range [][]string{{"lab", "status"}, {"lab", "down"}, {"lab", "down"}} {
		out, stderr, code := runValidateArgs(t, append(args, "--state", state, "--name", "nope")...)
		if code != 0 || !strings.Contains(out, "lab nope is not up") {
			t.Errorf("%v: code %d, out %q, err %q", args, code, out, stderr)
		}
	}
	if _, stderr, code := runValidateArgs(t, "lab", "console", "formula", "--state", state); code == 0 || !strings.Contains(stderr, "lab is not up") {
		t.Errorf("console: code %d, err %q", code, stderr)
	}
	if _, stderr, code := runValidateArgs(t, "lab", "up", "-f", state+"/none.yaml", "--state", state); code == 0 || !strings.Contains(stderr, "--example") {
		t.Errorf("up without a rack: code %d, err %q", code, stderr)
	}
	if _, stderr, code := runValidateArgs(t, "lab", "up", "--example", "--dhcp", "relay", "--state", state); code == 0 || !strings.Contains(stderr, "full or proxy") {
		t.Errorf("bad --dhcp: code %d, err %q", code, stderr)
	}
	if _, stderr, code := runValidateArgs(t, "lab", "up", "--example", "--machines", "9", "--state", state); code == 0 || !strings.Contains(stderr, "9 machines asked for") {
		t.Errorf("too many machines: code %d, err %q", code, stderr)
	}
	if _, stderr, code := runValidateArgs(t, "lab", "status", "--name", "Bad_Name", "--state", state); code == 0 || !strings.Contains(stderr, "lab name") {
		t.Errorf("bad name: code %d, err %q", code, stderr)
	}
}

// TestLabCLIUpStatusDown drives the CLI against real QEMU and namespaces,
// without serve: up, status, console, down, down again.
func TestLabCLIUpStatusDown(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the lab needs root (network namespaces, taps): run the tests as root")
	}
	state := t.TempDir()
	name := "cli" + strings.ReplaceAll(time.Now().Format("150405.000"), ".", "")
	args := func(a ...string) []string { return append(a, "--state", state, "--name", name) }
	t.Cleanup(func() {
		if _, stderr, code := runValidateArgs(t, args("lab", "down")...); code != 0 {
			t.Errorf("cleanup down: %s", stderr)
		}
	})
	out, stderr, code := runValidateArgs(t, args("lab", "up", "--example", "--no-serve", "--machines", "1")...)
	if code != 0 {
		t.Fatalf("up: %s\n%s", out, stderr)
	}
	// formula has a bmc: in the example rack: a virtual BMC, and without
	// serve (nothing to boot from, no passwords kept) it stays off.
	for _, want := range []string{"namespace rb-" + name, "192.168.1.2/24", "serve: not started", "formula", "52:54:00:b0:00:01", "bios",
		"redfish https://192.168.1.31:443", "formula: powered off"} {
		if !strings.Contains(out, want) {
			t.Errorf("up output lacks %q:\n%s", want, out)
		}
	}
	out, stderr, code = runValidateArgs(t, args("lab", "status")...)
	if code != 0 || !regexp.MustCompile(`formula\s+off\s`).MatchString(out) || !strings.Contains(out, "nvme0.qcow2") || !strings.Contains(out, "power: pid") {
		t.Errorf("status: %d\n%s\n%s", code, out, stderr)
	}
	out, stderr, code = runValidateArgs(t, args("lab", "console", "formula", "--no-follow")...)
	if code == 0 || strings.Contains(out, "SeaBIOS") || !strings.Contains(stderr, "not been powered on") {
		t.Errorf("console of a VM that is off: %d %q %q", code, out, stderr)
	}
	if _, stderr, code = runValidateArgs(t, args("lab", "up", "--example", "--no-serve", "--machines", "1")...); code == 0 || !strings.Contains(stderr, "already up") {
		t.Errorf("second up: %d %s", code, stderr)
	}
	out, stderr, code = runValidateArgs(t, args("lab", "down")...)
	if code != 0 || !strings.Contains(out, "stopped 3 process(es) [bmc:formula power ra]") || !strings.Contains(out, "rb-"+name) {
		t.Errorf("down: %d\n%s\n%s", code, out, stderr)
	}
	out, _, code = runValidateArgs(t, args("lab", "down")...)
	if code != 0 || !strings.Contains(out, "nothing to do") {
		t.Errorf("second down: %d %s", code, out)
	}
}
