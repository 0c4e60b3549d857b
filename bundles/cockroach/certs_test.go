package cockroach

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func fixedNow() time.Time { return testNow }

// sharedDir holds certificates issued once for the whole test binary;
// tests that change files work on copies (copyDir).
var sharedDir string

func TestMain(m *testing.M) {
	if os.Getenv(crashDirEnv) != "" {
		os.Exit(crashChild())
	}
	dir, err := os.MkdirTemp("", "cockroach-certs-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	sharedDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func sharedCertsDir(t *testing.T) string {
	t.Helper()
	if _, err := LoadOrCreateCerts(sharedDir, 3, DefaultNamespace, fixedNow); err != nil {
		t.Fatal(err)
	}
	return sharedDir
}

// copyDir copies the shared certificates into a fresh directory.
func copyDir(t *testing.T) string {
	t.Helper()
	src := sharedCertsDir(t)
	dst := t.TempDir()
	for _, f := range allFiles {
		b, err := os.ReadFile(filepath.Join(src, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

var allFiles = []string{CACertFile, CAKeyFile, NodeCertFile, NodeKeyFile, RootCertFile, RootKeyFile}

func TestCertsX509(t *testing.T) {
	dir := t.TempDir()
	c, err := LoadOrCreateCerts(dir, 3, "cockroachdb", fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range allFiles {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	ca, err := parseCert(c.CACert)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA: IsCA %v, key usage %v", ca.IsCA, ca.KeyUsage)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	node, err := parseCert(c.NodeCert)
	if err != nil {
		t.Fatal(err)
	}
	if node.Subject.CommonName != "node" {
		t.Errorf("node CN %q", node.Subject.CommonName)
	}
	at := testNow.Add(time.Minute)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := node.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("node certificate, usage %v: %v", usage, err)
		}
	}
	names := []string{"localhost", "127.0.0.1",
		"cockroachdb-public", "cockroachdb-public.cockroachdb", "cockroachdb-public.cockroachdb.svc", "cockroachdb-public.cockroachdb.svc.cluster.local",
		"cockroachdb", "cockroachdb.cockroachdb.svc.cluster.local", "cockroachdb-0.cockroachdb"}
	for i := range 3 {
		names = append(names, fmt.Sprintf("cockroachdb-%d.cockroachdb.cockroachdb.svc.cluster.local", i))
	}
	// The wildcard covers a later fourth replica.
	names = append(names, "cockroachdb-3.cockroachdb.cockroachdb.svc.cluster.local")
	for _, n := range names {
		if _, err := node.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: at, DNSName: n}); err != nil {
			t.Errorf("node certificate for %s: %v", n, err)
		}
	}
	if !slices.Contains(node.DNSNames, "*.cockroachdb.cockroachdb.svc.cluster.local") {
		t.Errorf("no wildcard SAN in %v", node.DNSNames)
	}
	for _, n := range []string{"cockroachdb-public.other", "evil.example"} {
		if err := node.VerifyHostname(n); err == nil {
			t.Errorf("node certificate covers %s", n)
		}
	}
	root, err := parseCert(c.RootCert)
	if err != nil {
		t.Fatal(err)
	}
	if root.Subject.CommonName != "root" {
		t.Errorf("root CN %q", root.Subject.CommonName)
	}
	if _, err := root.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("root client certificate: %v", err)
	}
	if _, err := root.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("root client certificate valid for server auth")
	}
	if !node.NotBefore.Before(testNow) || node.NotAfter.After(ca.NotAfter) {
		t.Errorf("node validity %v..%v, CA until %v", node.NotBefore, node.NotAfter, ca.NotAfter)
	}
	for _, k := range [][]byte{c.NodeKey, c.RootKey} {
		if !bytes.HasPrefix(k, []byte("-----BEGIN RSA PRIVATE KEY-----")) {
			t.Errorf("key is not PKCS#1 RSA: %.40q", k)
		}
	}
}

// TestCertsOpenSSL checks the chain and purposes with the real openssl.
func TestCertsOpenSSL(t *testing.T) {
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl not found: apt-get install openssl")
	}
	dir := t.TempDir()
	if _, err := LoadOrCreateCerts(dir, 3, "cockroachdb", time.Now); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		out, err := exec.Command(openssl, args...).CombinedOutput()
		return string(out), err
	}
	ca := filepath.Join(dir, CACertFile)
	for _, c := range []struct{ file, purpose string }{
		{NodeCertFile, "sslserver"}, {NodeCertFile, "sslclient"}, {RootCertFile, "sslclient"},
	} {
		out, err := run("verify", "-CAfile", ca, "-purpose", c.purpose, filepath.Join(dir, c.file))
		if err != nil || !strings.Contains(out, ": OK") {
			t.Errorf("openssl verify -purpose %s %s: %v\n%s", c.purpose, c.file, err, out)
		}
	}
	if out, err := run("verify", "-CAfile", ca, "-purpose", "sslserver", filepath.Join(dir, RootCertFile)); err == nil {
		t.Errorf("openssl accepts the root client certificate as a server:\n%s", out)
	}
	for _, host := range []string{"cockroachdb-2.cockroachdb.cockroachdb.svc.cluster.local", "cockroachdb-public.cockroachdb"} {
		out, err := run("verify", "-CAfile", ca, "-verify_hostname", host, filepath.Join(dir, NodeCertFile))
		if err != nil || !strings.Contains(out, ": OK") {
			t.Errorf("openssl verify -verify_hostname %s: %v\n%s", host, err, out)
		}
	}
	if out, err := run("verify", "-CAfile", ca, "-verify_hostname", "other.example", filepath.Join(dir, NodeCertFile)); err == nil {
		t.Errorf("openssl accepts the node certificate for other.example:\n%s", out)
	}
	for _, k := range []string{NodeKeyFile, RootKeyFile, CAKeyFile} {
		if out, err := run("rsa", "-check", "-noout", "-in", filepath.Join(dir, k)); err != nil || !strings.Contains(out, "RSA key ok") {
			t.Errorf("openssl rsa -check %s: %v\n%s", k, err, out)
		}
	}
	// A CA from elsewhere does not verify our node certificate.
	other := t.TempDir()
	if _, err := LoadOrCreateCerts(other, 1, "cockroachdb", time.Now); err != nil {
		t.Fatal(err)
	}
	if out, err := run("verify", "-CAfile", filepath.Join(other, CACertFile), filepath.Join(dir, NodeCertFile)); err == nil {
		t.Errorf("node certificate verifies against another CA:\n%s", out)
	}
}

func TestCertsCreatedOnce(t *testing.T) {
	dir := t.TempDir()
	first, err := LoadOrCreateCerts(dir, 3, "cockroachdb", fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	before := map[string][]byte{}
	for _, f := range allFiles {
		before[f], _ = os.ReadFile(filepath.Join(dir, f))
	}
	second, err := LoadOrCreateCerts(dir, 2, "cockroachdb", func() time.Time { return testNow.Add(48 * time.Hour) })
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.NodeKey, second.NodeKey) || !bytes.Equal(first.CACert, second.CACert) || !bytes.Equal(first.RootCert, second.RootCert) {
		t.Error("second call returned other certificates")
	}
	for _, f := range allFiles {
		after, _ := os.ReadFile(filepath.Join(dir, f))
		if !bytes.Equal(before[f], after) {
			t.Errorf("%s rewritten", f)
		}
	}
	// A lost root pair is reissued from the existing CA; the rest stays.
	os.Remove(filepath.Join(dir, RootCertFile))
	os.Remove(filepath.Join(dir, RootKeyFile))
	third, err := LoadOrCreateCerts(dir, 3, "cockroachdb", fixedNow)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(third.RootKey, first.RootKey) || !bytes.Equal(third.NodeKey, first.NodeKey) {
		t.Error("root pair not reissued alone")
	}
}

func TestCertsBad(t *testing.T) {
	fresh := copyDir
	for _, c := range []struct {
		name   string
		break_ func(t *testing.T, dir string)
		want   string
	}{
		{"corrupt cert", func(t *testing.T, dir string) {
			write(t, dir, NodeCertFile, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
		}, NodeCertFile},
		{"garbage key", func(t *testing.T, dir string) { write(t, dir, RootKeyFile, []byte("not a key")) }, RootKeyFile},
		{"empty CA", func(t *testing.T, dir string) { write(t, dir, CACertFile, nil) }, CACertFile},
		{"cert without key", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, NodeKeyFile)) }, "is missing"},
		{"CA cert gone", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, CACertFile)) }, "were issued by it"},
		{"CA gone", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, CACertFile))
			os.Remove(filepath.Join(dir, CAKeyFile))
		}, "were issued by it"},
		{"corrupt key without cert", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, RootCertFile))
			write(t, dir, RootKeyFile, []byte("not a key"))
		}, RootKeyFile},
		{"swapped key", func(t *testing.T, dir string) {
			k, _ := os.ReadFile(filepath.Join(dir, RootKeyFile))
			write(t, dir, NodeKeyFile, k)
		}, "does not belong"},
		{"foreign CA", func(t *testing.T, dir string) {
			other := t.TempDir()
			if _, err := LoadOrCreateCerts(other, 1, "cockroachdb", fixedNow); err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{CACertFile, CAKeyFile} {
				b, _ := os.ReadFile(filepath.Join(other, f))
				write(t, dir, f, b)
			}
		}, "not signed by the CA"},
		{"node cert as CA", func(t *testing.T, dir string) {
			for _, p := range [][2]string{{NodeCertFile, CACertFile}, {NodeKeyFile, CAKeyFile}} {
				b, _ := os.ReadFile(filepath.Join(dir, p[0]))
				write(t, dir, p[1], b)
			}
		}, "not a CA"},
		{"other namespace", func(t *testing.T, dir string) {}, "does not cover"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := fresh(t)
			c.break_(t, dir)
			before := map[string][]byte{}
			for _, f := range allFiles {
				before[f], _ = os.ReadFile(filepath.Join(dir, f))
			}
			ns := "cockroachdb"
			if c.name == "other namespace" {
				ns = "db"
			}
			_, err := LoadOrCreateCerts(dir, 3, ns, fixedNow)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
			for _, f := range allFiles {
				after, _ := os.ReadFile(filepath.Join(dir, f))
				if !bytes.Equal(before[f], after) {
					t.Errorf("%s changed after a refused load", f)
				}
			}
		})
	}
	if _, err := LoadOrCreateCerts(t.TempDir(), 0, "cockroachdb", fixedNow); err == nil {
		t.Error("0 replicas accepted")
	}
	// An unreadable directory entry (a directory where a file should be).
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, CACertFile), 0o700)
	if _, err := LoadOrCreateCerts(dir, 1, "cockroachdb", fixedNow); err == nil {
		t.Error("directory in place of ca.crt accepted")
	}
}

func write(t *testing.T, dir, f string, b []byte) {
	t.Helper()
	if err := atomicfile.Write(filepath.Join(dir, f), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestWriteNewNeverOverwrites(t *testing.T) {
	// The property LoadOrCreateCerts relies on.
	dir := t.TempDir()
	write(t, dir, "x", []byte("a"))
	if err := atomicfile.WriteNew(filepath.Join(dir, "x"), []byte("b"), 0o600); !errors.Is(err, atomicfile.ErrExists) {
		t.Fatalf("WriteNew over a file: %v", err)
	}
}

func FuzzParseKeyAndCert(f *testing.F) {
	f.Add([]byte("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("junk"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if k, err := parseKey(b); err == nil && k == nil {
			t.Fatal("nil key without error")
		}
		if c, err := parseCert(b); err == nil && c == nil {
			t.Fatal("nil certificate without error")
		}
	})
}
