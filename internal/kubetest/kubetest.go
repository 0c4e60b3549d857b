// Package kubetest runs a real etcd and kube-apiserver for tests, like
// controller-runtime's envtest but without it: the binaries are built once
// from pinned Go modules by scripts/kubetest-build.sh (kube-apiserver from
// k8s.io/kubernetes v1.35.8, etcd from go.etcd.io/etcd/server/v3 v3.6.5) into
// a cache directory, and every Env gets its own data directory, random free
// ports on loopback, its own CA and serving certificate, token
// authentication and RBAC.
//
//	env := kubetest.Start(t)                 // ready, stopped by t.Cleanup
//	cs := kubernetes.NewForConfigOrDie(env.Config)
//
// For a server that comes up late (a VIP that answers only after etcd is
// bootstrapped), prepare it first, point clients at it, and start it later:
//
//	env := kubetest.New(t, kubetest.WithAddress("127.0.0.2"))
//	go func() { errc <- env.Start() }()
//
// The processes are killed by PID when the Env stops, and by the kernel
// (Pdeathsig SIGKILL) if the test binary dies first. Their logs and data stay
// on disk when the test failed; the path is logged.
package kubetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// Version is the kube-apiserver version the harness runs.
const Version = "v1.35.8"

// BinDirEnv is the environment variable that overrides where the binaries
// are looked up.
const BinDirEnv = "RACKBOOT_KUBETEST_BIN"

// ErrNoBinaries says the binaries have not been built.
var ErrNoBinaries = errors.New("kube-apiserver/etcd test binaries not built: run scripts/kubetest-build.sh (make test does)")

// BinDir returns the directory holding kube-apiserver and etcd:
// $RACKBOOT_KUBETEST_BIN, else $HOME/.cache/rackboot/kubetest/v1.35.8.
func BinDir() (string, error) {
	if d := os.Getenv(BinDirEnv); d != "" {
		return d, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the kubetest binaries: %w", err)
	}
	return filepath.Join(home, ".cache", "rackboot", "kubetest", Version), nil
}

// FindBinaries returns BinDir when it holds both binaries, else an error
// wrapping ErrNoBinaries that names the directory.
func FindBinaries() (string, error) {
	bin, err := BinDir()
	if err != nil {
		return "", err
	}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		if fi, err := os.Stat(filepath.Join(bin, name)); err != nil || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%w: no executable %s in %s (%s overrides the directory)", ErrNoBinaries, name, bin, BinDirEnv)
		}
	}
	return bin, nil
}

// Option changes how an Env is set up.
type Option func(*settings)

type settings struct {
	addr         string
	readyTimeout time.Duration
	saAdmission  bool
}

// WithAddress makes the API server listen on (and its certificate name) the
// given loopback address, e.g. "127.0.0.2". etcd stays on 127.0.0.1.
func WithAddress(ip string) Option { return func(s *settings) { s.addr = ip } }

// WithServiceAccountAdmission keeps the ServiceAccount admission plugin on
// (it is off by default: no controller-manager makes the namespaces'
// default ServiceAccounts). A pod then gets its token volume, as in a
// cluster, and its namespace needs the kube-root-ca.crt ConfigMap (see
// Env.PublishRootCA).
func WithServiceAccountAdmission() Option { return func(s *settings) { s.saAdmission = true } }

// WithReadyTimeout bounds how long Start waits for /readyz (default 90 s).
func WithReadyTimeout(d time.Duration) Option { return func(s *settings) { s.readyTimeout = d } }

// Env is one etcd + kube-apiserver pair and the credentials to reach it.
type Env struct {
	// Config reaches the API server as a cluster admin (system:masters)
	// through its URL, CA and bearer token.
	Config *rest.Config
	// Kubeconfig is the path of a kubeconfig file with the same credentials.
	Kubeconfig string
	// URL is the API server's base URL, e.g. https://127.0.0.1:41234.
	URL string
	// Dir holds certificates, data and the logs etcd.log, apiserver.log.
	Dir string
	// ReadyIn is how long the last Start took from launching the processes
	// until /readyz answered 200.
	ReadyIn time.Duration

	t       testing.TB
	set     settings
	bin     string
	token   string
	caPEM   []byte
	apiPort int

	mu      sync.Mutex
	procs   []*proc
	stopped bool
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when Wait returned
	err  error         // Wait's result, valid after done
	log  *os.File
}

// Start prepares and starts an Env and waits until it is ready; the test
// fails when that is not possible. The Env stops at the end of the test.
func Start(t testing.TB, opts ...Option) *Env {
	t.Helper()
	e := New(t, opts...)
	if err := e.Start(); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	t.Logf("kubetest: kube-apiserver %s at %s ready in %v", Version, e.URL, e.ReadyIn.Round(time.Millisecond))
	return e
}

// New prepares an Env without starting it: binaries found, directory,
// certificates, token, API server port, Config and Kubeconfig. Clients may
// be pointed at it at once; Start launches the processes. The Env stops at
// the end of the test. The test fails when the binaries are missing.
func New(t testing.TB, opts ...Option) *Env {
	t.Helper()
	set := settings{addr: "127.0.0.1", readyTimeout: 90 * time.Second}
	for _, o := range opts {
		o(&set)
	}
	bin, err := FindBinaries()
	if err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		t.Fatalf("kubetest: create run directory: %v", err)
	}
	e := &Env{t: t, set: set, bin: bin, Dir: dir}
	t.Cleanup(e.Stop)
	if err := e.prepare(); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	return e
}

func (e *Env) prepare() error {
	ip := net.ParseIP(e.set.addr)
	if ip == nil {
		return fmt.Errorf("bind address %q is not an IP address", e.set.addr)
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return fmt.Errorf("make a token: %w", err)
	}
	e.token = hex.EncodeToString(tok)
	tokens := fmt.Sprintf("%s,admin,uid-admin,\"system:masters\"\n", e.token)
	if err := os.WriteFile(filepath.Join(e.Dir, "tokens.csv"), []byte(tokens), 0o600); err != nil {
		return fmt.Errorf("write token file: %w", err)
	}
	ca, err := writeCerts(e.Dir, ip)
	if err != nil {
		return err
	}
	e.caPEM = ca
	port, err := freePort(e.set.addr)
	if err != nil {
		return err
	}
	e.apiPort = port
	e.URL = "https://" + net.JoinHostPort(e.set.addr, strconv.Itoa(port))
	e.Config = &rest.Config{
		Host:            e.URL,
		BearerToken:     e.token,
		TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		QPS:             100,
		Burst:           200,
	}
	e.Kubeconfig = filepath.Join(e.Dir, "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kubetest
  cluster: {server: %q, certificate-authority: %q}
users:
- name: admin
  user: {token: %q}
contexts:
- name: kubetest
  context: {cluster: kubetest, user: admin}
current-context: kubetest
`, e.URL, filepath.Join(e.Dir, "ca.crt"), e.token)
	if err := os.WriteFile(e.Kubeconfig, []byte(kc), 0o600); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// Start launches etcd and the API server and waits until /readyz answers
// 200. It may be called from any goroutine. A failed attempt (a port taken
// meanwhile) is retried with new etcd ports, up to three times.
func (e *Env) Start() error {
	var err error
	for try := 1; try <= 3; try++ {
		if err = e.startOnce(); err == nil {
			return nil
		}
		e.kill()
		e.mu.Lock()
		stopped := e.stopped
		e.mu.Unlock()
		if stopped {
			break
		}
	}
	return err
}

func (e *Env) startOnce() error {
	t0 := time.Now()
	ep, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	pp, err := freePort("127.0.0.1")
	if err != nil {
		return err
	}
	data := filepath.Join(e.Dir, "etcd")
	if err := os.RemoveAll(data); err != nil {
		return fmt.Errorf("clean etcd data: %w", err)
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(ep)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(pp)
	etcd, err := e.launch("etcd",
		"--name=kubetest", "--data-dir="+data, "--unsafe-no-fsync",
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL, "--listen-metrics-urls=")
	if err != nil {
		return err
	}
	admission := "--disable-admission-plugins=ServiceAccount"
	if e.set.saAdmission {
		admission = "--disable-admission-plugins="
	}
	api, err := e.launch("kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address="+e.set.addr, "--advertise-address="+e.set.addr,
		"--secure-port="+strconv.Itoa(e.apiPort),
		"--cert-dir="+filepath.Join(e.Dir, "certs"),
		"--tls-cert-file="+filepath.Join(e.Dir, "apiserver.crt"),
		"--tls-private-key-file="+filepath.Join(e.Dir, "apiserver.key"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+filepath.Join(e.Dir, "sa.key"),
		"--service-account-signing-key-file="+filepath.Join(e.Dir, "sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--token-auth-file="+filepath.Join(e.Dir, "tokens.csv"),
		"--authorization-mode=RBAC", "--allow-privileged=true",
		admission,
		"--endpoint-reconciler-type=none")
	if err != nil {
		return err
	}
	if err := e.waitReady(etcd, api); err != nil {
		return err
	}
	e.ReadyIn = time.Since(t0)
	return nil
}

// launch starts one binary with its output in Dir/<name>.log.
func (e *Env) launch(name string, args ...string) (*proc, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped {
		return nil, errors.New("env already stopped")
	}
	logf, err := os.OpenFile(filepath.Join(e.Dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s log: %w", name, err)
	}
	cmd := exec.Command(filepath.Join(e.bin, name), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Killed by the kernel if the test binary dies before Stop.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logf}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	e.procs = append(e.procs, p)
	return p, nil
}

func (e *Env) waitReady(procs ...*proc) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.caPEM)
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(e.set.readyTimeout)
	last := errors.New("no answer yet")
	for time.Now().Before(deadline) {
		for _, p := range procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited before the API server was ready (%v); last lines of its log:\n%s", p.name, p.err, e.tail(p.name))
			default:
			}
		}
		req, err := http.NewRequest(http.MethodGet, e.URL+"/readyz", nil)
		if err != nil {
			return fmt.Errorf("readyz request: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+e.token)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Errorf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body))
		} else {
			last = err
		}
		time.Sleep(50 * time.Millisecond) // real processes starting: nothing to inject
	}
	return fmt.Errorf("%s/readyz not ready after %v: %v; last lines of apiserver.log:\n%s", e.URL, e.set.readyTimeout, last, e.tail("kube-apiserver"))
}

// tail returns the last lines of a process log.
func (e *Env) tail(name string) string { return tailFile(filepath.Join(e.Dir, name+".log"), 3000) }

// tailFile returns the last max bytes of a log file, or why it cannot.
func tailFile(path string, max int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// kill ends the processes this Env started, by PID: SIGTERM, then SIGKILL
// after 10 s.
func (e *Env) kill() {
	e.mu.Lock()
	procs := e.procs
	e.procs = nil
	e.mu.Unlock()
	// API server first, so it does not log etcd errors while going down.
	for i := len(procs) - 1; i >= 0; i-- {
		p := procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		p.log.Close()
	}
}

// Stop kills the processes and removes Dir, unless the test failed: then
// Dir (with etcd.log and kube-apiserver.log) is kept and its path logged.
// Stop is idempotent and runs automatically at the end of the test.
func (e *Env) Stop() {
	e.mu.Lock()
	if e.stopped {
		e.mu.Unlock()
		return
	}
	e.stopped = true
	e.mu.Unlock()
	e.kill()
	if e.t.Failed() {
		e.t.Logf("kubetest: logs and data kept in %s", e.Dir)
		return
	}
	_ = os.RemoveAll(e.Dir)
}

// freePort returns a TCP port that was free on addr a moment ago.
func freePort(addr string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", addr, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// writeCerts writes ca.crt, apiserver.crt/key (for ip, 127.0.0.1, localhost
// and the in-cluster names) and sa.key into dir, and returns the CA in PEM.
func writeCerts(dir string, ip net.IP) ([]byte, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kubetest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate serving key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses:  []net.IP{ip, net.IPv4(127, 0, 0, 1), net.IPv4(10, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("create serving certificate: %w", err)
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate service account key: %w", err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	files := map[string][]byte{
		"ca.crt":        caPEM,
		"apiserver.crt": append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), caPEM...),
	}
	for name, k := range map[string]*ecdsa.PrivateKey{"apiserver.key": key, "sa.key": saKey} {
		b, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("encode %s: %w", name, err)
		}
		files[name] = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b})
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return nil, fmt.Errorf("write %s: %w", name, err)
		}
	}
	return caPEM, nil
}

// Ping checks once that the API server answers /readyz with 200, within
// ctx. It is meant for tests of the harness itself.
func (e *Env) Ping(ctx context.Context) error {
	hc, err := rest.HTTPClientFor(e.Config)
	if err != nil {
		return fmt.Errorf("client for %s: %w", e.URL, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.URL+"/readyz", nil)
	if err != nil {
		return fmt.Errorf("readyz request: %w", err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("get %s/readyz: %w", e.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("get %s/readyz: HTTP %d", e.URL, resp.StatusCode)
	}
	return nil
}
