package apid_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	stdtls "crypto/tls"
	stdx509 "crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/lab/standin/apid"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	securityapi "github.com/siderolabs/talos/pkg/machinery/api/security"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// startTrustd serves a control plane's trustd for p on ln.
func startTrustd(t *testing.T, p pki, ln net.Listener) {
	t.Helper()
	cfg, err := loadConfig(p.cp)
	if err != nil {
		t.Fatal(err)
	}
	td, err := apid.NewTrustd(apid.TrustdConfig{
		Machine: cfg, Addresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Hostname: "urban",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- td.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("trustd Serve: %v", err)
		}
	})
}

// freePort is a loopback address nothing listens on (yet).
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestConfigureWorker(t *testing.T) {
	p := newPKI(t, "/dev/nvme0n1")
	trustdAddr := freePort(t)
	s, addr := start(t, &recorder{}, func(c *apid.Config) {
		c.Hostname = "lailah"
		c.TrustdEndpoints = []string{trustdAddr}
	})
	cfg, err := loadConfig(p.worker)
	if err != nil {
		t.Fatal(err)
	}
	// A worker's config has no CA key: it cannot sign its own certificate.
	if err := s.Configure(cfg); !errors.Is(err, apid.ErrNoIssuingCA) {
		t.Errorf("Configure a worker: %v, want ErrNoIssuingCA", err)
	}
	if _, err := apid.NewTrustd(apid.TrustdConfig{Machine: cfg}); !errors.Is(err, apid.ErrNoIssuingCA) {
		t.Errorf("trustd on a worker: %v, want ErrNoIssuingCA", err)
	}

	// The worker asks before any control plane answers, and keeps asking.
	configured := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		configured <- s.ConfigureWorker(ctx, cfg)
	}()
	time.Sleep(500 * time.Millisecond)
	if !s.Maintenance() {
		t.Fatal("the worker left maintenance mode with no trustd to sign its certificate")
	}
	ln, err := net.Listen("tcp", trustdAddr)
	if err != nil {
		t.Fatal(err)
	}
	startTrustd(t, p, ln)
	if err := <-configured; err != nil {
		t.Fatalf("ConfigureWorker: %v", err)
	}

	// The talosconfig of the same secrets bundle: mutual TLS as on a
	// control plane.
	admin := withConfig(t, p.admin, addr)
	v, err := admin.Version(ctx(t))
	if err != nil {
		t.Fatalf("admin Version on the worker: %v", err)
	}
	if !v.GetMessages()[0].GetFeatures().GetRbac() {
		t.Error("configured worker answers Version without RBAC")
	}
	if _, err := insecure(t, addr).Version(ctx(t)); err == nil {
		t.Error("a client without a certificate got an answer from the worker")
	}
	// Worker rules: etcd is refused as Talos refuses it.
	_, err = admin.EtcdMemberList(ctx(t), &machine.EtcdMemberListRequest{})
	if status.Code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "only available on control plane nodes") {
		t.Errorf("EtcdMemberList on a worker: %v, want Unimplemented", err)
	}

	checkWorkerCert(t, p, cfg, peerCert(t, p, addr))
}

// peerCert is the server certificate addr presents to the admin.
func peerCert(t *testing.T, p pki, addr string) *stdx509.Certificate {
	t.Helper()
	c := p.admin.Contexts[p.admin.Context]
	crt, err := base64.StdEncoding.DecodeString(c.Crt)
	if err != nil {
		t.Fatal(err)
	}
	key, err := base64.StdEncoding.DecodeString(c.Key)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := stdtls.X509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := stdtls.Dial("tcp", addr, &stdtls.Config{
		InsecureSkipVerify: true, // verified below against the OS CA
		Certificates:       []stdtls.Certificate{kp},
		NextProtos:         []string{"h2"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0]
}

// checkWorkerCert: signed by the OS CA, server auth only, no role, a key
// of the CA's type, and Talos's names: machine.certSANs, the node's
// addresses, its hostname.
func checkWorkerCert(t *testing.T, p pki, cfg config.Provider, cert *stdx509.Certificate) {
	t.Helper()
	block, _ := pem.Decode(p.bundle.Certs.OS.Crt)
	ca, err := stdx509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	roots := stdx509.NewCertPool()
	roots.AddCert(ca)
	for _, name := range []string{"127.0.0.1", "lailah"} {
		if _, err := cert.Verify(stdx509.VerifyOptions{Roots: roots, DNSName: name, KeyUsages: []stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("worker certificate for %s: %v", name, err)
		}
	}
	if !slices.Equal(cert.ExtKeyUsage, []stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth}) || cert.KeyUsage != stdx509.KeyUsageDigitalSignature {
		t.Errorf("worker certificate usages: %v %v, want server auth, digital signature", cert.ExtKeyUsage, cert.KeyUsage)
	}
	if cert.Subject.CommonName != "lailah" || len(cert.Subject.Organization) != 0 {
		t.Errorf("worker certificate subject %q, want CN=lailah and no organization", cert.Subject)
	}
	if reflect.TypeOf(cert.PublicKey) != reflect.TypeOf(ca.PublicKey) {
		t.Errorf("worker key %T, want the OS CA's type %T", cert.PublicKey, ca.PublicKey)
	}
	for _, san := range cfg.Machine().Security().CertSANs() {
		if err := cert.VerifyHostname(san); err != nil {
			t.Errorf("machine.certSANs %s: %v", san, err)
		}
	}
	if got := cert.NotAfter.Sub(cert.NotBefore); got > 25*time.Hour {
		t.Errorf("worker certificate valid for %s, want trustd's default (a day)", got)
	}
}

// trustdClient is what a worker dials: TLS trusting the OS CA, the
// token (if any) in the call's metadata.
func trustdClient(t *testing.T, p pki, addr string) securityapi.SecurityServiceClient {
	t.Helper()
	pool := stdx509.NewCertPool()
	pool.AppendCertsFromPEM(p.bundle.Certs.OS.Crt)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&stdtls.Config{RootCAs: pool, ServerName: "127.0.0.1"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return securityapi.NewSecurityServiceClient(conn)
}

// csr is a PEM CSR for lailah at 127.0.0.1 with the organizations orgs.
func csr(t *testing.T, orgs ...string) []byte {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := stdx509.CreateCertificateRequest(rand.Reader, &stdx509.CertificateRequest{
		Subject: pkix.Name{CommonName: "lailah", Organization: orgs}, DNSNames: []string{"lailah"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestTrustdCertificate(t *testing.T) {
	p := newPKI(t, "/dev/nvme0n1")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	startTrustd(t, p, ln)
	c := trustdClient(t, p, ln.Addr().String())
	withToken := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(ctx(t), "token", tok)
	}

	// Refusals, with Talos's codes and messages.
	_, err = c.Certificate(ctx(t), &securityapi.CertificateRequest{Csr: csr(t)})
	if status.Code(err) != codes.Unauthenticated || status.Convert(err).Message() != "missing token" {
		t.Errorf("no token: %v, want Unauthenticated missing token", err)
	}
	_, err = c.Certificate(withToken("abcdef.0123456789abcdef"), &securityapi.CertificateRequest{Csr: csr(t)})
	if status.Code(err) != codes.Unauthenticated || status.Convert(err).Message() != "invalid token" {
		t.Errorf("wrong token: %v, want Unauthenticated invalid token", err)
	}
	token := p.bundle.TrustdInfo.Token
	_, err = c.Certificate(withToken(token), &securityapi.CertificateRequest{Csr: []byte("not a CSR")})
	if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != "failed to decode CSR" {
		t.Errorf("not a CSR: %v, want InvalidArgument failed to decode CSR", err)
	}

	// A CSR asking for a role gets a certificate without it.
	resp, err := c.Certificate(withToken(token), &securityapi.CertificateRequest{Csr: csr(t, "os:admin")})
	if err != nil {
		t.Fatalf("the machine token: %v", err)
	}
	block, _ := pem.Decode(resp.GetCrt())
	if block == nil {
		t.Fatalf("answer is not a PEM certificate: %q", resp.GetCrt())
	}
	cert, err := stdx509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.Subject.Organization) != 0 || !slices.Equal(cert.ExtKeyUsage, []stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth}) {
		t.Errorf("signed certificate: organization %v, usages %v; want none, server auth", cert.Subject.Organization, cert.ExtKeyUsage)
	}
	if !bytes.Equal(resp.GetCa(), p.bundle.Certs.OS.Crt) {
		t.Error("trustd's CAs are not the OS CA (the config has no machine.acceptedCAs)")
	}
}

// A worker whose token is not the cluster's gets no certificate and
// stays in maintenance mode.
func TestConfigureWorkerWrongToken(t *testing.T) {
	p := newPKI(t, "/dev/nvme0n1")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	startTrustd(t, p, ln)
	s, _ := start(t, &recorder{}, func(c *apid.Config) { c.TrustdEndpoints = []string{ln.Addr().String()} })
	raw := bytes.ReplaceAll(p.worker, []byte(p.bundle.TrustdInfo.Token), []byte("zzzzzz.zzzzzzzzzzzzzzzz"))
	cfg, err := loadConfig(raw)
	if err != nil {
		t.Fatal(err)
	}
	c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err = s.ConfigureWorker(c, cfg)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "invalid token") {
		t.Errorf("wrong token: %v, want the deadline after trustd's answer (invalid token)", err)
	}
	if !s.Maintenance() {
		t.Error("a worker without a certificate left maintenance mode")
	}
}

func TestTrustdEndpoints(t *testing.T) {
	lookup := func(addrs ...string) apid.Lookup {
		return func(_ context.Context, host string) ([]netip.Addr, error) {
			if a, err := netip.ParseAddr(host); err == nil {
				return []netip.Addr{a}, nil
			}
			if addrs == nil {
				return nil, errors.New("no such host")
			}
			var out []netip.Addr
			for _, a := range addrs {
				out = append(out, netip.MustParseAddr(a))
			}
			return out, nil
		}
	}
	for _, tc := range []struct {
		host   string
		lookup apid.Lookup
		want   []string
	}{
		{"192.0.2.10", lookup(), []string{"192.0.2.10"}},
		{"2001:db8::10", lookup(), []string{"2001:db8::10"}},
		{"cp.lab", lookup("10.0.0.12", "10.0.0.11", "::ffff:10.0.0.11"), []string{"10.0.0.11", "10.0.0.12", "cp.lab"}},
		{"cp.lab", lookup("10.0.0.11"), []string{"10.0.0.11", "cp.lab"}},
	} {
		got, err := apid.TrustdEndpoints(context.Background(), tc.host, tc.lookup)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("TrustdEndpoints(%s) = %v, %v; want %v", tc.host, got, err, tc.want)
		}
	}
	if _, err := apid.TrustdEndpoints(context.Background(), "cp.lab", lookup()); err == nil || !strings.Contains(err.Error(), `"cp.lab"`) {
		t.Errorf("unresolvable host: %v", err)
	}
}

func TestCheckToken(t *testing.T) {
	for _, tc := range []struct {
		md   metadata.MD
		want string
	}{
		{nil, "missing token"},
		{metadata.MD{}, "missing token"},
		{metadata.Pairs("token", "right"), ""},
		{metadata.Pairs("token", "wrong"), "invalid token"},
		{metadata.Pairs("token", "righ"), "invalid token"},
	} {
		err := apid.CheckToken(tc.md, "right")
		if tc.want == "" && err != nil || tc.want != "" && (status.Code(err) != codes.Unauthenticated || status.Convert(err).Message() != tc.want) {
			t.Errorf("CheckToken(%v) = %v, want %q", tc.md, err, tc.want)
		}
	}
}
