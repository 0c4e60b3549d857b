package kubetest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

func TestFindBinariesMissing(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(BinDirEnv, dir)
	_, err := FindBinaries()
	if !errors.Is(err, ErrNoBinaries) {
		t.Fatalf("FindBinaries in an empty dir = %v, want ErrNoBinaries", err)
	}
	for _, want := range []string{"scripts/kubetest-build.sh", dir, "kube-apiserver"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// A non-executable file does not count either.
	for _, n := range []string{"kube-apiserver", "etcd"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := FindBinaries(); !errors.Is(err, ErrNoBinaries) {
		t.Fatalf("FindBinaries with non-executable files = %v, want ErrNoBinaries", err)
	}
}

func TestEnv(t *testing.T) {
	env := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := env.Ping(ctx); err != nil {
		t.Fatal(err)
	}

	// The kubeconfig file works as well as Config, as cluster admin.
	kc, err := clientcmd.BuildConfigFromFlags("", env.Kubeconfig)
	if err != nil {
		t.Fatalf("load %s: %v", env.Kubeconfig, err)
	}
	cs := kubernetes.NewForConfigOrDie(kc)
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != Version {
		t.Errorf("server version %s, want %s", v.GitVersion, Version)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kubetest"}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace as admin: %v", err)
	}

	// Token authentication is on: no token, no access; a wrong one, 401.
	anon := rest.CopyConfig(env.Config)
	anon.BearerToken = "wrong"
	_, err = kubernetes.NewForConfigOrDie(anon).CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if !apierrors.IsUnauthorized(err) {
		t.Errorf("list with a wrong token: %v, want 401 Unauthorized", err)
	}

	// Stop kills both processes (by PID) and removes the directory.
	pids := env.pids()
	if len(pids) != 2 {
		t.Fatalf("%d processes, want 2", len(pids))
	}
	env.Stop()
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d still exists after Stop (kill -0: %v)", pid, err)
		}
	}
	if _, err := os.Stat(env.Dir); !os.IsNotExist(err) {
		t.Errorf("%s still exists after Stop: %v", env.Dir, err)
	}
	if err := env.Ping(ctx); err == nil {
		t.Error("API server still answers after Stop")
	}
}

func (e *Env) pids() []int {
	e.mu.Lock()
	defer e.mu.Unlock()
	var pids []int
	for _, p := range e.procs {
		pids = append(pids, p.cmd.Process.Pid)
	}
	return pids
}
