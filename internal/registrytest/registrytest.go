// Package registrytest runs Debian's docker-registry (CNCF distribution
// 2.8, package docker-registry) for tests: a real registry on loopback (or
// in a network namespace the test made), with filesystem storage in the
// test's temporary directory, optionally over TLS, and its access log.
package registrytest

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dotfile/rackboot/internal/selfsigned"
	"github.com/dotfile/rackboot/internal/syncbuf"
)

// Binary is Debian's CNCF distribution registry.
const Binary = "/usr/bin/docker-registry"

// Registry is a running docker-registry.
type Registry struct {
	Addr string // host:port
	// URL is http://Addr or https://Addr.
	URL string
	// CertPool trusts the registry's certificate (TLS only).
	CertPool *x509.CertPool
	out      *syncbuf.Buffer
}

// Options of Config.
type Options struct {
	// TLS makes a self-signed certificate for the address's IP.
	TLS bool
}

// Config writes a docker-registry config for addr (storage under dir) and
// returns its path and, with TLS, a pool trusting the certificate.
func Config(dir, addr string, o Options) (string, *x509.CertPool, error) {
	tlsConf := ""
	var pool *x509.CertPool
	if o.TLS {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return "", nil, err
		}
		certPEM, keyPEM, err := selfsigned.Cert("registrytest", []string{host}, time.Now(), 24*time.Hour)
		if err != nil {
			return "", nil, err
		}
		cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		if err := os.WriteFile(cert, certPEM, 0o600); err != nil {
			return "", nil, err
		}
		if err := os.WriteFile(key, keyPEM, 0o600); err != nil {
			return "", nil, err
		}
		pool = x509.NewCertPool()
		pool.AppendCertsFromPEM(certPEM)
		tlsConf = fmt.Sprintf("  tls:\n    certificate: %s\n    key: %s\n", cert, key)
	}
	conf := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: registrytest
%s`, filepath.Join(dir, "data"), addr, tlsConf)
	p := filepath.Join(dir, "config.yml")
	return p, pool, os.WriteFile(p, []byte(conf), 0o600)
}

// Start runs docker-registry on a free loopback port until the test ends.
func Start(t testing.TB, o Options) *Registry {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		t.Fatalf("%s not found: apt-get install docker-registry (or make deps)", Binary)
	}
	addr := FreeAddr(t)
	dir := t.TempDir()
	conf, pool, err := Config(dir, addr, o)
	if err != nil {
		t.Fatal(err)
	}
	r := &Registry{Addr: addr, URL: "http://" + addr, CertPool: pool, out: &syncbuf.Buffer{}}
	if o.TLS {
		r.URL = "https://" + addr
	}
	cmd := exec.Command(Binary, "serve", conf)
	cmd.Stdout, cmd.Stderr = r.out, r.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start docker-registry: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("docker-registry on %s:\n%s", addr, r.out.String())
		}
	})
	client := r.Client()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Get(r.URL + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r
			}
		}
		select {
		case err := <-done:
			t.Fatalf("docker-registry exited: %v\n%s", err, r.out.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry on %s not ready (%v):\n%s", addr, err, r.out.String())
		}
	}
}

// Client trusts the registry (and nothing through a proxy).
func (r *Registry) Client() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	if r.CertPool != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: r.CertPool}
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// Output is everything the registry printed.
func (r *Registry) Output() string { return r.out.String() }

// Requests are the access log's request lines ("HEAD /v2/...?ns=... HTTP/1.1").
func (r *Registry) Requests() []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(r.out.String()))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		// 127.0.0.1 - - [date] "GET /v2/... HTTP/1.1" 200 ...
		i := strings.Index(line, `] "`)
		if i < 0 || strings.HasPrefix(line, "time=") {
			continue
		}
		rest := line[i+3:]
		if j := strings.IndexByte(rest, '"'); j > 0 {
			out = append(out, rest[:j])
		}
	}
	return out
}

// FreeAddr is a loopback address with a port nothing listens on now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// WaitRequests returns the access log's request lines once ok accepts them
// (the registry logs a request after answering it), or all of them after
// 10 s.
func (r *Registry) WaitRequests(ok func([]string) bool) []string {
	deadline := time.Now().Add(10 * time.Second)
	for {
		reqs := r.Requests()
		if ok(reqs) || time.Now().After(deadline) {
			return reqs
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Count is how many request lines contain s.
func Count(reqs []string, s string) int {
	n := 0
	for _, r := range reqs {
		if strings.Contains(r, s) {
			n++
		}
	}
	return n
}
