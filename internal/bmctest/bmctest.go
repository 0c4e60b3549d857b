// Package bmctest starts real BMC emulators for tests: sushy-tools'
// Redfish emulator (fake driver) and OpenIPMI's ipmi_sim, each on 127.0.0.1
// at a free port, stopped by PID when the test ends. A missing tool fails
// the test with the Debian package to install.
package bmctest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/dotfile/rackboot/internal/selfsigned"
	"github.com/dotfile/rackboot/internal/syncbuf"
)

// sushyDebs are the Debian packages sushy-tools needs.
const sushyDebs = "python3-flask python3-tenacity python3-bcrypt python3-webob python3-pbr python3-requests"

// TestLog is a logger that writes to t.Log, and a buffer to grep the
// output for secrets.
func TestLog(t testing.TB) (*slog.Logger, *syncbuf.Buffer) {
	buf := &syncbuf.Buffer{}
	return slog.New(slog.NewTextHandler(io.MultiWriter(buf, tWriter{t}), &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// StartProc starts cmd in its own process group, logs to logPath, and
// stops it (SIGTERM, then SIGKILL) when the test ends.
func StartProc(t testing.TB, cmd *exec.Cmd, logPath string) *os.Process {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	pid := cmd.Process.Pid
	t.Cleanup(func() {
		_ = syscall.Kill(-pid, syscall.SIGTERM) // the group we created: this process and its children
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", filepath.Base(cmd.Path), b)
		}
	})
	return cmd.Process
}

// FreeTCPPort is a TCP port free on 127.0.0.1 (a moment ago).
func FreeTCPPort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreeUDPPort is a UDP port free on 127.0.0.1 (a moment ago).
func FreeUDPPort(t testing.TB) int {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// Sushy is a running sushy-tools emulator with one fake system.
type Sushy struct {
	Addr     string // 127.0.0.1:port
	URL      string // http(s)://127.0.0.1:port
	UUID     string
	User     string
	Password string
	CAPool   *x509.CertPool // set with TLS
	CAPEM    []byte         // the same certificate, PEM (set with TLS)
	// Notes receives the external notifier's messages (SushyOpts.Notify).
	Notes chan map[string]any
}

// SushyOpts are StartSushy's options.
type SushyOpts struct {
	TLS        bool
	PowerState string // initial; default Off
	Notify     bool   // run an external notification receiver (Sushy.Notes)
}

// StartSushy starts sushy-tools' emulator (fake driver) with one system,
// on 127.0.0.1, and waits until it answers.
func StartSushy(t testing.TB, o SushyOpts) *Sushy {
	t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Fatalf("sushy-tools needs Debian's /usr/bin/python3: apt-get install python3 %s", sushyDebs)
	}
	src := os.Getenv("RACKBOOT_SUSHY_TOOLS")
	if src == "" {
		src = filepath.Join(moduleRoot(t), "..", "shared", "tools", "sushy-tools")
	}
	if _, err := os.Stat(filepath.Join(src, "sushy_tools", "emulator", "main.py")); err != nil {
		t.Fatalf("sushy-tools not found at %s (../shared/tools/sushy-tools beside the checkout, or set RACKBOOT_SUSHY_TOOLS): %v", src, err)
	}
	dir := t.TempDir()
	s := &Sushy{User: "admin", Password: "s3cret-" + strconv.Itoa(os.Getpid()), UUID: fmt.Sprintf("4a0a5b1c-0000-4000-8000-%012d", time.Now().UnixNano()%1e12)}
	hash, err := bcrypt.GenerateFromPassword([]byte(s.Password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "htpasswd"), []byte(s.User+":"+string(hash)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port := FreeTCPPort(t)
	s.Addr = fmt.Sprintf("127.0.0.1:%d", port)
	power := o.PowerState
	if power == "" {
		power = "Off"
	}
	notifyURL := "http://127.0.0.1:9" // discard
	if o.Notify {
		s.Notes = make(chan map[string]any, 100)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var m map[string]any
			if json.NewDecoder(r.Body).Decode(&m) == nil {
				select {
				case s.Notes <- m:
				default:
				}
			}
		})}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = srv.Serve(l) }()
		t.Cleanup(func() { _ = srv.Close() })
		notifyURL = "http://" + l.Addr().String() + "/notify"
	}
	conf := fmt.Sprintf(`SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'
SUSHY_EMULATOR_LISTEN_PORT = %d
SUSHY_EMULATOR_FAKE_DRIVER = True
SUSHY_EMULATOR_STATE_DIR = %q
SUSHY_EMULATOR_AUTH_FILE = %q
SUSHY_EMULATOR_FAKE_SYSTEMS = [{'uuid': %q, 'name': 'rack-a1', 'power_state': %q,
    'external_notifier': %s, 'nics': [{'mac': '52:54:00:b0:00:01', 'ip': '10.99.0.11'}]}]
EXTERNAL_NOTIFICATION_URL = %q
`, port, filepath.Join(dir, "state"), filepath.Join(dir, "htpasswd"), s.UUID, power, map[bool]string{true: "True", false: "False"}[o.Notify], notifyURL)
	scheme := "http"
	var tlsConf *tls.Config
	if o.TLS {
		certPEM, keyPEM := SelfSigned(t)
		certPath, keyPath := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		if err := os.WriteFile(certPath, certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		conf += fmt.Sprintf("SUSHY_EMULATOR_SSL_CERT = %q\nSUSHY_EMULATOR_SSL_KEY = %q\n", certPath, keyPath)
		s.CAPool, s.CAPEM = x509.NewCertPool(), certPEM
		s.CAPool.AppendCertsFromPEM(certPEM)
		scheme = "https"
		tlsConf = &tls.Config{RootCAs: s.CAPool}
	}
	if err := os.WriteFile(filepath.Join(dir, "emulator.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s.URL = scheme + "://" + s.Addr
	cmd := exec.Command("/usr/bin/python3", "-m", "sushy_tools.emulator.main", "--fake")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "PBR_VERSION=1.0.0", "SUSHY_EMULATOR_CONFIG="+filepath.Join(dir, "emulator.conf"))
	logPath := filepath.Join(dir, "sushy.log")
	proc := StartProc(t, cmd, logPath)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConf}}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := hc.Get(s.URL + "/redfish/v1/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s
			}
		}
		if syscall.Kill(proc.Pid, 0) != nil || time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			if bytes.Contains(b, []byte("ModuleNotFoundError")) {
				t.Fatalf("sushy-tools did not start: a Python module is missing: apt-get install %s\n%s", sushyDebs, b)
			}
			t.Fatalf("sushy-tools did not answer on %s: %v\n%s", s.URL, err, b)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// System GETs the fake system's JSON with a plain HTTP client: an
// independent view of what the BMC holds.
func (s *Sushy) System(t testing.TB) map[string]any {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.URL+"/redfish/v1/Systems/"+s.UUID, nil)
	req.SetBasicAuth(s.User, s.Password)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: s.CAPool}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET system: HTTP %d, %v", resp.StatusCode, err)
	}
	return m
}

// SelfSigned is a CA certificate for 127.0.0.1 and its key, PEM.
func SelfSigned(t testing.TB) (certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := selfsigned.Cert("bmc test", []string{"127.0.0.1"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM
}

// IPMISim is a running ipmi_sim. Its chassis is a shell script (ipmi_sim's
// chassis_control program) keeping the power and boot device in files, as
// the lab will keep a QEMU VM: power "1"/"0"; an ACPI soft-off request turns
// it off, as an OS that honours it would.
type IPMISim struct {
	Port     int
	Addr     string
	User     string
	Password string
	Dir      string // the chassis files: power, boot
}

// StartIPMISim starts ipmi_sim on 127.0.0.1 with the chassis powered
// power ("1" on, "0" off) and waits until it answers.
func StartIPMISim(t testing.TB, power string) *IPMISim {
	t.Helper()
	bin, err := exec.LookPath("ipmi_sim")
	if err != nil {
		t.Fatal("ipmi_sim not found: apt-get install openipmi")
	}
	dir := t.TempDir()
	s := &IPMISim{Port: FreeUDPPort(t), User: "admin", Password: "ipmi-s3cret-" + strconv.Itoa(os.Getpid()), Dir: dir}
	s.Addr = fmt.Sprintf("127.0.0.1:%d", s.Port)
	script := `#!/bin/sh
d='` + dir + `'
op=$1; shift # ipmi_sim 2.0.33 passes no device argument
case $op in
get)
	for p in "$@"; do
		case $p in
		power) echo "power:$(cat "$d/power")" ;;
		boot) echo "boot:$(cat "$d/boot")" ;;
		*) echo "unknown parameter $p"; exit 1 ;;
		esac
	done ;;
set)
	while [ $# -gt 1 ]; do
		p=$1; v=$2; shift 2
		case $p in
		power) echo "$v" >"$d/power" ;;
		boot) echo "$v" >"$d/boot" ;;
		shutdown) [ "$v" = 1 ] && echo 0 >"$d/power" ;;
		reset) ;;
		identify) shift ;;
		*) echo "unknown parameter $p"; exit 1 ;;
		esac
	done ;;
*) exit 1 ;;
esac
`
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "chassis"), []byte(script), 0o755))
	must(os.WriteFile(filepath.Join(dir, "power"), []byte(power+"\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "boot"), []byte("default\n"), 0o644))
	lan := fmt.Sprintf(`name "rackboot-test"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 %d
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "%s"
  user 2 true "%s" "%s" admin 10 none md2 md5 straight
`, s.Port, filepath.Join(dir, "chassis"), s.User, s.Password)
	must(os.WriteFile(filepath.Join(dir, "lan.conf"), []byte(lan), 0o600))
	must(os.WriteFile(filepath.Join(dir, "bmc.emu"), []byte("mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n"), 0o644))
	must(os.MkdirAll(filepath.Join(dir, "state"), 0o755))
	cmd := exec.Command(bin, "-c", filepath.Join(dir, "lan.conf"), "-f", filepath.Join(dir, "bmc.emu"), "-s", filepath.Join(dir, "state"), "-n")
	proc := StartProc(t, cmd, filepath.Join(dir, "ipmi_sim.log"))
	// Ready when it answers the session-less probe.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := pingIPMI(s.Addr)
		if err == nil {
			return s
		}
		if syscall.Kill(proc.Pid, 0) != nil || time.Now().After(deadline) {
			t.Fatalf("ipmi_sim did not answer on %s: %v", s.Addr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ChassisFile reads the chassis' power or boot file.
func (s *IPMISim) ChassisFile(t testing.TB, name string) string {
	b, err := os.ReadFile(filepath.Join(s.Dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// IPMITool runs Debian's ipmitool against the sim: the independent client.
func (s *IPMISim) IPMITool(t testing.TB, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("ipmitool"); err != nil {
		t.Fatal("ipmitool not found: apt-get install ipmitool")
	}
	base := []string{"-I", "lanplus", "-H", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-U", s.User, "-E", "-C", "3", "-N", "1", "-R", "3"}
	cmd := exec.Command("ipmitool", append(base, args...)...)
	cmd.Env = append(os.Environ(), "IPMI_PASSWORD="+s.Password) // -E: not on the command line
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ipmitool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ListenLocal listens on a free TCP port of 127.0.0.1.
func ListenLocal(t testing.TB) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// moduleRoot is the directory of go.mod above the test's directory.
func moduleRoot(t testing.TB) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			t.Fatalf("no go.mod above %s", dir)
		}
	}
}

// authCapsRequest is IPMI's session-less Get Channel Authentication
// Capabilities (as bmc's probe sends it).
var authCapsRequest = []byte{
	0x06, 0x00, 0xff, 0x07,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x09,
	0x20, 0x18, 0xc8,
	0x81, 0x00, 0x38,
	0x8e, 0x04,
	0xb5,
}

// pingIPMI sends authCapsRequest and waits a second for any answer.
func pingIPMI(addr string) error {
	conn, err := net.Dial("udp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.Write(authCapsRequest); err != nil {
		return err
	}
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		return err
	}
	if n < 4 || buf[0] != 0x06 {
		return errors.New("not an RMCP answer")
	}
	return nil
}
