package cockroach

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The crash tests run LoadOrCreateCerts in a child process (this test
// binary again, see TestMain) that stops right after writing one file and
// is then killed with SIGKILL: the state a crash between two writes leaves.
const (
	crashDirEnv   = "COCKROACH_CERTS_CRASH_DIR"
	crashAfterEnv = "COCKROACH_CERTS_CRASH_AFTER"
)

// writeOrder is the order a fresh directory is written in.
var writeOrder = []string{CAKeyFile, CACertFile, NodeKeyFile, NodeCertFile, RootKeyFile, RootCertFile}

// crashChild creates the certificates in $COCKROACH_CERTS_CRASH_DIR and,
// once $COCKROACH_CERTS_CRASH_AFTER is written, says so on stdout and waits
// to be killed.
func crashChild() int {
	dir, after := os.Getenv(crashDirEnv), os.Getenv(crashAfterEnv)
	_, err := loadOrCreateCerts(dir, 3, DefaultNamespace, fixedNow, func(path string) {
		if filepath.Base(path) == after {
			fmt.Printf("written %s\n", after)
			time.Sleep(time.Hour)
		}
	})
	fmt.Fprintf(os.Stderr, "crash child: finished without stopping after %s: %v\n", after, err)
	return 3
}

// TestCertsCrashWindow kills the creation after each write and checks that
// the next run in the same directory succeeds, keeps every file already
// written, and gives a consistent set.
func TestCertsCrashWindow(t *testing.T) {
	for i, after := range writeOrder {
		t.Run("after "+after, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			killAfterWrite(t, dir, after)

			written := writeOrder[:i+1]
			before := map[string][]byte{}
			for _, f := range writeOrder {
				b, err := os.ReadFile(filepath.Join(dir, f))
				if slices.Contains(written, f) != (err == nil) {
					t.Fatalf("after the kill, %s: %v (written before the kill: %v)", f, err, written)
				}
				before[f] = b
			}

			c, err := LoadOrCreateCerts(dir, 3, DefaultNamespace, func() time.Time { return testNow.Add(time.Hour) })
			if err != nil {
				t.Fatalf("next run after a kill after %s: %v", after, err)
			}
			for _, f := range written {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				if !bytes.Equal(b, before[f]) {
					t.Errorf("%s, written before the kill, was replaced", f)
				}
			}
			checkConsistent(t, dir, c)
			if again, err := LoadOrCreateCerts(dir, 3, DefaultNamespace, fixedNow); err != nil || !bytes.Equal(again.RootCert, c.RootCert) {
				t.Errorf("third run: %v (same certificates: %v)", err, err == nil && bytes.Equal(again.RootCert, c.RootCert))
			}
		})
	}
}

// killAfterWrite runs the creation in a child process and kills it with
// SIGKILL once it has written file.
func killAfterWrite(t *testing.T, dir, file string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashDirEnv+"="+dir, crashAfterEnv+"="+file)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, readErr := bufio.NewReader(out).ReadString('\n')
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("kill the child: %v", err)
	}
	werr := cmd.Wait()
	if readErr != nil || line != "written "+file+"\n" {
		t.Fatalf("child did not stop after writing %s: %q, %v; exit %v\n%s", file, line, readErr, werr, stderr.String())
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, not by SIGKILL", werr)
	}
}

// checkConsistent checks the six files in dir: mode 0600, each certificate
// for the key beside it, the node and root certificates issued by the CA for
// their uses, what c returned equal to the files, and, when openssl is
// installed, that it agrees.
func checkConsistent(t *testing.T, dir string, c *Certs) {
	t.Helper()
	read := func(f string) []byte {
		t.Helper()
		p := filepath.Join(dir, f)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	certs := map[string]*x509.Certificate{}
	for _, p := range [][2]string{{CACertFile, CAKeyFile}, {NodeCertFile, NodeKeyFile}, {RootCertFile, RootKeyFile}} {
		cert, err := parseCert(read(p[0]))
		if err != nil {
			t.Fatalf("%s: %v", p[0], err)
		}
		key, err := parseKey(read(p[1]))
		if err != nil {
			t.Fatalf("%s: %v", p[1], err)
		}
		if !publicKeyEqual(cert.PublicKey, key.Public()) {
			t.Errorf("%s is not the certificate of %s", p[0], p[1])
		}
		certs[p[0]] = cert
	}
	for f, got := range map[string][]byte{CACertFile: c.CACert, NodeCertFile: c.NodeCert, NodeKeyFile: c.NodeKey, RootCertFile: c.RootCert, RootKeyFile: c.RootKey} {
		if !bytes.Equal(got, read(f)) {
			t.Errorf("returned %s differs from the file", f)
		}
	}
	ca := certs[CACertFile]
	if !ca.IsCA {
		t.Error("ca.crt is not a CA")
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	at := testNow.Add(2 * time.Hour)
	for _, v := range []struct {
		file  string
		usage x509.ExtKeyUsage
		host  string
	}{
		{NodeCertFile, x509.ExtKeyUsageServerAuth, "cockroachdb-2.cockroachdb.cockroachdb.svc.cluster.local"},
		{NodeCertFile, x509.ExtKeyUsageClientAuth, ""},
		{RootCertFile, x509.ExtKeyUsageClientAuth, ""},
	} {
		opts := x509.VerifyOptions{Roots: pool, CurrentTime: at, KeyUsages: []x509.ExtKeyUsage{v.usage}, DNSName: v.host}
		if _, err := certs[v.file].Verify(opts); err != nil {
			t.Errorf("%s for usage %v: %v", v.file, v.usage, err)
		}
	}
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatal("openssl not found: apt-get install openssl")
	}
	for _, f := range []string{NodeCertFile, RootCertFile} {
		out, err := exec.Command(openssl, "verify", "-CAfile", filepath.Join(dir, CACertFile), filepath.Join(dir, f)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), ": OK") {
			t.Errorf("openssl verify %s: %v\n%s", f, err, out)
		}
	}
}
