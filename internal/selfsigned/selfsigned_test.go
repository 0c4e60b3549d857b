package selfsigned

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"
)

func TestCert(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	certPEM, keyPEM, err := Cert("bmc lab1", []string{"10.0.0.9", "registry.lan"}, now, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM) // the key belongs to the certificate
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if c.Subject.CommonName != "bmc lab1" || !c.IsCA {
		t.Errorf("CN %q, CA %v: want bmc lab1, a CA", c.Subject.CommonName, c.IsCA)
	}
	if !c.NotBefore.Equal(now.Add(-time.Hour)) || !c.NotAfter.Equal(now.Add(24*time.Hour)) {
		t.Errorf("valid %v to %v", c.NotBefore, c.NotAfter)
	}
	// A client trusting exactly this certificate reaches both names.
	pool := x509.NewCertPool()
	pool.AddCert(c)
	for _, h := range []string{"10.0.0.9", "registry.lan"} {
		if _, err := c.Verify(x509.VerifyOptions{Roots: pool, DNSName: h, CurrentTime: now}); err != nil {
			t.Errorf("verify for %s: %v", h, err)
		}
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, DNSName: "10.0.0.10", CurrentTime: now}); err == nil {
		t.Error("verified for 10.0.0.10, a host it does not name")
	}
	if len(c.IPAddresses) != 1 || !c.IPAddresses[0].Equal(net.ParseIP("10.0.0.9")) {
		t.Errorf("IP SANs %v", c.IPAddresses)
	}
	// Two certificates never share a serial or a key.
	c2PEM, _, err := Cert("bmc lab1", []string{"10.0.0.9"}, now, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if string(c2PEM) == string(certPEM) {
		t.Error("the same certificate twice")
	}
	if _, _, err := Cert("x", nil, now, time.Hour); err == nil {
		t.Error("no hosts: no error")
	}
}
