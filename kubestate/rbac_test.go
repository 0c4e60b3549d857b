package kubestate

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/pxe"
)

const replicaUser = "rackboot-replica"

// testRBAC runs a replica as a user with a Role: first read-only, so that
// saving a machine's change is refused by the real authorizer (the change
// waits in memory), then Rules(), so that the waiting change is saved once
// and everything a replica does (token key, spent tokens, used-up marks,
// records, watch, leases, forgetting an unknown machine) passes.
func testRBAC(t *testing.T, cfg *rest.Config) {
	ctx := ctxFor(t)
	admin := replicas(t, cfg, 1)[0]
	rbac := admin.cs.RbacV1().Roles(admin.ns)
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "rackboot"}, Rules: []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"configmaps", "secrets"}, Verbs: []string{"get", "list", "watch"}},
	}}
	role, err := rbac.Create(ctx, role, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = admin.cs.RbacV1().RoleBindings(admin.ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "rackboot"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "rackboot"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: replicaUser}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ucfg := rest.CopyConfig(cfg)
	ucfg.Impersonate = rest.ImpersonationConfig{UserName: replicaUser}
	user, err := New(kubernetes.NewForConfigOrDie(ucfg), admin.ns)
	if err != nil {
		t.Fatal(err)
	}
	known := func(n string) bool { return n == "formula" }
	inv := eventually(t, func() (*inventory.Store, error) {
		return user.Inventory(ctx, inventory.WithNames(known), inventory.WithFlushDelay(time.Hour))
	})
	inv.Record(pxe.Event{Name: "formula", MAC: mac1, Addr: ip1, Stage: pxe.StageDHCP})
	if err := inv.Flush(); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Fatalf("flush with a read-only role: %v, want forbidden", err)
	}
	role.Rules = Rules()
	if _, err := rbac.Update(ctx, role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() (struct{}, error) { return struct{}{}, inv.Flush() })
	ms, err := admin.Machines().Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Stage != pxe.StageDHCP || len(ms[0].Timeline) != 1 || ms[0].Addr != ip1 {
		t.Fatalf("after the refused flush and the retry the record is %+v; want formula at dhcp, one entry, %v", ms, ip1)
	}

	// Everything else a replica does, with Rules() only.
	toks, err := user.Tokens(ctx, pxe.TokenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := toks.Mint(pxe.TokenBinding{Name: "formula", MAC: mac1})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := toks.Spend(tok, mac1, "", ip1, mac1); err != nil {
		t.Fatal(err)
	}
	if _, ok := toks.PinnedMAC(mac1); !ok {
		t.Error("PinnedMAC after Spend: not found")
	}
	if err := toks.Consume("formula"); err != nil {
		t.Fatal(err)
	}
	if _, err := user.SpentTokens().Pins(); err != nil {
		t.Fatal(err)
	}
	leases, err := pxe.OpenLeaseStore(user.Leases(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leases.Bind(mac1, ip1, time.Hour, "formula"); err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithTimeout(ctx, 300*time.Millisecond)
	defer stop()
	if err := user.Machines().Watch(wctx, inv.Observe); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("watch: %v", err)
	}
	if _, err := inv.MarkEvent("formula", "ev-1", inventory.StageInstalled, ""); err != nil {
		t.Fatal(err)
	}
	if err := user.Machines().Delete(ctx, "52:54:00:12:34:57"); err != nil {
		t.Fatal(err)
	}
	if _, err := user.BMCPasswords(ctx, nil); err != nil {
		t.Fatal(err)
	}
}

// eventually retries f for a few seconds: RBAC changes reach the
// apiserver's authorizer through its informers, a moment later.
func eventually[T any](t *testing.T, f func() (T, error)) T {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		v, err := f()
		if err == nil {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
