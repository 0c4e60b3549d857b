package profiles

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"slices"
	"strings"
	"testing"
	"time"

	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"k8s.io/client-go/tools/clientcmd"
)

// verifyClientCert checks that certPEM chains to caPEM for client auth at t.
func verifyClientCert(t *testing.T, certPEM, caPEM []byte, at time.Time) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(certPEM)
	if blk == nil {
		t.Fatal("client certificate is not PEM")
	}
	crt, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA is not PEM")
	}
	if _, err := crt.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("client certificate does not chain to the CA: %v", err)
	}
	return crt
}

func TestTalosconfig(t *testing.T) {
	r := exampleRack(t)
	b := testBundle(t)
	data, err := Talosconfig(r, b)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientconfig.FromBytes(data)
	if err != nil {
		t.Fatalf("talosctl's loader rejects our talosconfig: %v\n%s", err, data)
	}
	if cfg.Context != "dotfile" {
		t.Fatalf("current context %q, want dotfile", cfg.Context)
	}
	ctx := cfg.Contexts["dotfile"]
	if ctx == nil {
		t.Fatal("no dotfile context")
	}
	want := []string{"192.168.1.11", "192.168.1.12"}
	if !slices.Equal(ctx.Endpoints, want) || !slices.Equal(ctx.Nodes, want) {
		t.Fatalf("endpoints %v nodes %v, want the control planes %v (never the VIP)", ctx.Endpoints, ctx.Nodes, want)
	}
	ca, _ := base64.StdEncoding.DecodeString(ctx.CA)
	if string(ca) != string(b.Certs.OS.Crt) {
		t.Fatal("talosconfig CA is not the bundle's Talos CA")
	}
	crtPEM, _ := base64.StdEncoding.DecodeString(ctx.Crt)
	crt := verifyClientCert(t, crtPEM, b.Certs.OS.Crt, fixedNow().Add(time.Hour))
	if crt.NotBefore.After(fixedNow()) {
		t.Fatalf("client cert NotBefore %v is after the injected clock %v", crt.NotBefore, fixedNow())
	}
	// A node whose clock is a little behind (no NTP yet, a lab VM) takes it.
	if !crt.NotBefore.Equal(fixedNow().Add(-kubeconfigBackdate)) {
		t.Errorf("client cert NotBefore %v, want %v (backdated as the kubeconfig)", crt.NotBefore, fixedNow().Add(-kubeconfigBackdate))
	}
	if b.Clock.Now() != fixedNow() {
		t.Error("Talosconfig changed the bundle's clock")
	}
	if slices.Contains(ctx.Endpoints, r.Cluster.VIP) {
		t.Fatal("the VIP is a talosconfig endpoint")
	}

	// No control plane with a static address: a clear error.
	dhcp := *r
	dhcp.Machines = slices.Clone(r.Machines)
	for i := range dhcp.Machines {
		dhcp.Machines[i].Address = "dhcp"
	}
	if _, err := Talosconfig(&dhcp, b); err == nil || !strings.Contains(err.Error(), "static address") {
		t.Fatalf("talosconfig without static control planes: %v", err)
	}
}

func TestAdminKubeconfig(t *testing.T) {
	r := exampleRack(t)
	b := testBundle(t)
	now := fixedNow()
	data, err := AdminKubeconfig(r, b, now)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := clientcmd.Load(data)
	if err != nil {
		t.Fatalf("client-go cannot load our kubeconfig: %v\n%s", err, data)
	}
	if raw.CurrentContext != "admin@dotfile" {
		t.Fatalf("current context %q, want admin@dotfile", raw.CurrentContext)
	}
	rc, err := clientcmd.NewDefaultClientConfig(*raw, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		t.Fatalf("client-go cannot build a client config: %v", err)
	}
	if rc.Host != "https://192.168.1.10:6443" {
		t.Fatalf("server %s, want https://192.168.1.10:6443", rc.Host)
	}
	if string(rc.CAData) != string(b.Certs.K8s.Crt) {
		t.Fatal("kubeconfig CA is not the bundle's Kubernetes CA")
	}
	crt := verifyClientCert(t, rc.CertData, b.Certs.K8s.Crt, now)
	if crt.Subject.CommonName != "admin" || !slices.Equal(crt.Subject.Organization, []string{"system:masters"}) {
		t.Fatalf("subject %v, want CN=admin O=system:masters", crt.Subject)
	}
	if got := crt.NotAfter.Sub(now); got != 365*24*time.Hour {
		t.Fatalf("valid for %v after now, want one year", got)
	}
	if crt.NotBefore.After(now) {
		t.Fatalf("NotBefore %v is after now %v", crt.NotBefore, now)
	}
	if _, err := x509.ParseECPrivateKey(mustPEM(t, rc.KeyData)); err != nil {
		t.Fatalf("client key: %v", err)
	}
	// The key matches the certificate.
	key, _ := x509.ParseECPrivateKey(mustPEM(t, rc.KeyData))
	if !key.PublicKey.Equal(crt.PublicKey) {
		t.Fatal("client key does not match the certificate")
	}
	// Not valid before the clock says (the clock is really used).
	if _, err := crt.Verify(x509.VerifyOptions{Roots: poolOf(t, b.Certs.K8s.Crt), CurrentTime: now.Add(-time.Hour), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Fatal("certificate verifies an hour before the injected now")
	}
}

func mustPEM(t *testing.T, data []byte) []byte {
	t.Helper()
	blk, _ := pem.Decode(data)
	if blk == nil {
		t.Fatal("not PEM")
	}
	return blk.Bytes
}

func poolOf(t *testing.T, caPEM []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA is not PEM")
	}
	return p
}
