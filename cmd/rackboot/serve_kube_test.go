package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/dotfile/rackboot/handoff"
)

func kubeCmd(t *testing.T, args ...string) (*cobra.Command, *kubeFlags) {
	t.Helper()
	k := &kubeFlags{}
	cmd := &cobra.Command{Use: "serve"}
	k.register(cmd)
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	return cmd, k
}

func TestKubeFlagsCheck(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // "" for no error
	}{
		{nil, ""},
		{[]string{"--kube"}, ""},
		{[]string{"--kube", "--kubeconfig", "/k", "--namespace", "ns", "--lease-duration", "20s"}, ""},
		{[]string{"--kubeconfig", "/k"}, "--kubeconfig is for --kube only"},
		{[]string{"--retry-period", "1s"}, "--retry-period is for --kube only"},
	} {
		cmd, k := kubeCmd(t, tc.args...)
		err := k.check(cmd)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%v: %v", tc.args, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestKubeNamespace(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "")
	_, k := kubeCmd(t, "--kube")
	if got := k.ns(); got != handoff.Namespace {
		t.Errorf("default namespace %q, want %s", got, handoff.Namespace)
	}
	t.Setenv("POD_NAMESPACE", "rack-a")
	if got := k.ns(); got != "rack-a" {
		t.Errorf("in a pod: namespace %q, want $POD_NAMESPACE rack-a", got)
	}
	_, k = kubeCmd(t, "--kube", "--namespace", "mine")
	if got := k.ns(); got != "mine" {
		t.Errorf("--namespace mine gave %q", got)
	}
}

func TestKubeRESTConfigErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	_, k := kubeCmd(t, "--kube", "--kubeconfig", missing)
	if _, err := k.restConfig(); err == nil || !strings.Contains(err.Error(), "kubeconfig") {
		t.Errorf("a missing --kubeconfig: %v", err)
	}
	// Not in a pod and no kubeconfig anywhere.
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBECONFIG", "")
	t.Setenv("HOME", t.TempDir())
	_, k = kubeCmd(t, "--kube")
	if _, err := k.restConfig(); err == nil || !strings.Contains(err.Error(), "pass --kubeconfig PATH") {
		t.Errorf("no config at all: %v, want the advice to pass --kubeconfig", err)
	}
}
