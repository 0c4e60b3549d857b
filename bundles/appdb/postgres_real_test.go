package appdb

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dotfile/rackboot/bundles/cnpg"
)

// pgBin finds Debian's PostgreSQL server binaries; missing ones fail the
// test with the package to install.
func pgBin(t *testing.T) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		ok := true
		for _, b := range []string{"initdb", "postgres", "psql"} {
			if _, err := os.Stat(filepath.Join(dirs[i], b)); err != nil {
				ok = false
			}
		}
		if ok {
			return dirs[i]
		}
	}
	t.Fatal("no PostgreSQL server (initdb, postgres, psql under /usr/lib/postgresql/*/bin): install the Debian package postgresql (scripts/deps.sh)")
	return ""
}

// pgServer is a real PostgreSQL the test starts: TLS with a server
// certificate for localhost signed by a CA the test makes (with the same
// code that makes the Cluster's), rackboot's pg_hba rules for the apps
// before CloudNativePG's default rule, the superuser on the private socket
// only. PostgreSQL refuses to run as root, and CI runs as root: the server
// then runs as nobody.
type pgServer struct {
	bin, sock, caFile string
	port              int
	certs             *cnpg.Certs
}

func startPostgres(t *testing.T, apps []App) *pgServer {
	t.Helper()
	bin := pgBin(t)
	// Not t.TempDir(): its parent is 0700 root, which nobody cannot cross.
	dir, err := os.MkdirTemp("", "appdb-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	certs, err := cnpg.LoadOrCreateCerts(filepath.Join(dir, "tls"), []string{"localhost"}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	data, sock := filepath.Join(dir, "data"), filepath.Join(dir, "sock")
	for _, d := range []string{data, sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		cred = &syscall.Credential{Uid: 65534, Gid: 65534}
		for _, p := range []string{data, sock, filepath.Join(dir, "tls"), filepath.Join(certs.Dir, cnpg.ServerKeyFile), filepath.Join(certs.Dir, cnpg.ServerCertFile)} {
			if err := os.Chown(p, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}
	}
	run := func(name string, args ...string) *exec.Cmd {
		c := exec.Command(filepath.Join(bin, name), args...)
		c.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
		c.Dir = dir
		return c
	}
	if out, err := run("initdb", "-D", data, "-U", "postgres", "--auth=reject", "-E", "UTF8", "--no-locale").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	// pg_hba: the superuser over the private socket; the apps' rules as
	// rackboot renders them for the Cluster; CloudNativePG's default rule
	// for everything else (pkg/postgres/configuration.go: "host all all all
	// scram-sha-256" under DEFAULT RULES).
	hba := "local all postgres trust\n" + strings.Join(HBA(apps), "\n") + "\nhost all all all scram-sha-256\n"
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		if err := os.Chown(filepath.Join(data, "pg_hba.conf"), 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	port := freePort(t)
	var logs bytes.Buffer
	srv := run("postgres", "-D", data, "-k", sock, "-h", "127.0.0.1", "-p", strconv.Itoa(port),
		"-c", "ssl=on", "-c", "ssl_cert_file="+filepath.Join(certs.Dir, cnpg.ServerCertFile),
		"-c", "ssl_key_file="+filepath.Join(certs.Dir, cnpg.ServerKeyFile),
		"-c", "ssl_min_protocol_version=TLSv1.3", "-c", "password_encryption=scram-sha-256", "-c", "fsync=off")
	srv.Stdout, srv.Stderr = &logs, &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = srv.Process.Signal(syscall.SIGINT) // fast shutdown
		_ = srv.Wait()
		if t.Failed() {
			t.Logf("postgres log:\n%s", logs.String())
		}
	})
	s := &pgServer{bin: bin, sock: sock, port: port, certs: certs, caFile: filepath.Join(certs.Dir, cnpg.CACertFile)}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := s.admin(t, "SELECT 1"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres did not answer in 60 s:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return s
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// psql runs psql with args and input; it returns its output.
func (s *pgServer) psql(t *testing.T, env []string, input string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, filepath.Join(s.bin, "psql"), append([]string{"-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"}, args...)...)
	c.Env = append([]string{"PGCONNECT_TIMEOUT=10", "HOME=/nonexistent"}, env...)
	c.Stdin = strings.NewReader(input)
	out, err := c.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// admin runs SQL as the superuser over the private socket.
func (s *pgServer) admin(t *testing.T, sql string) (string, error) {
	return s.psql(t, nil, sql, "-h", s.sock, "-p", strconv.Itoa(s.port), "-U", "postgres", "-d", "postgres")
}

// asApp runs SQL as an app through TCP with the URI of its Secret, pointed
// at this server (localhost) and the CA file.
func (s *pgServer) asApp(t *testing.T, app, password, db, caFile, sql string) (string, error) {
	uri := URI(Conn{Host: "localhost", Port: s.port}, app, password)
	uri = strings.Replace(uri, "/"+SQLName(app)+"?", "/"+db+"?", 1) + "&sslrootcert=" + caFile
	return s.psql(t, nil, sql, "-d", uri)
}

// state is what the SQL can change: the apps' roles (with their password
// hashes) and databases.
func (s *pgServer) state(t *testing.T) string {
	t.Helper()
	out, err := s.admin(t, `SELECT string_agg(format('%s %s %s %s %s %s %s', rolname, rolsuper, rolcanlogin, rolcreatedb, rolcreaterole, rolreplication, rolpassword), E'\n' ORDER BY rolname) FROM pg_authid WHERE rolname NOT LIKE 'pg\_%';
SELECT string_agg(format('%s %s %s', datname, datdba::regrole, datacl), E'\n' ORDER BY datname) FROM pg_database;`)
	if err != nil {
		t.Fatalf("read state: %v: %s", err, out)
	}
	return out
}

// TestPostgresSQLReal runs the apps' SQL and pg_hba rules on a real
// PostgreSQL: each app's user connects with sslmode=verify-full to its own
// database only, and a second run changes nothing.
func TestPostgresSQLReal(t *testing.T) {
	apps := []App{{Name: "billing", Namespace: "billing"}, {Name: "wiki-js", Namespace: "wiki"}}
	pw := map[string]string{"billing": "k7Qw-billing_pw-0123456789abcdefghijklmnopq", "wiki-js": "Zx9-wiki_pw-0123456789abcdefghijklmnopqrstu"}
	t0 := time.Now()
	s := startPostgres(t, apps)
	t.Logf("measured: initdb and postgres up in %v", time.Since(t0).Round(time.Millisecond))

	var sql strings.Builder
	for _, a := range apps {
		sql.WriteString(PostgresSQL(a.Name, pw[a.Name]))
	}
	if out, err := s.admin(t, sql.String()); err != nil {
		t.Fatalf("first run: %v\n%s\nSQL:\n%s", err, out, sql.String())
	}
	first := s.state(t)
	if out, err := s.admin(t, sql.String()); err != nil {
		t.Fatalf("second run: %v\n%s", err, out)
	}
	if second := s.state(t); second != first {
		t.Errorf("a second run changed roles or databases:\nbefore:\n%s\nafter:\n%s", first, second)
	}
	if !strings.Contains(first, "billing f t f f f SCRAM-SHA-256$") || !strings.Contains(first, "billing billing") || !strings.Contains(first, "wiki_js wiki_js") {
		t.Errorf("roles and databases:\n%s", first)
	}

	// billing works in its own database over verified TLS.
	out, err := s.asApp(t, "billing", pw["billing"], "billing", s.caFile,
		"CREATE TABLE invoices (id int); INSERT INTO invoices VALUES (1); SELECT count(*) FROM invoices; SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid();")
	if err != nil || out != "1\nt" {
		t.Fatalf("billing in its database: %v: %q", err, out)
	}
	// ... and nowhere else: the other app's database and postgres are refused.
	for _, db := range []string{"wiki_js", "postgres", "template1"} {
		out, err := s.asApp(t, "billing", pw["billing"], db, s.caFile, "SELECT 1")
		if err == nil || !strings.Contains(out, "pg_hba.conf rejects connection") {
			t.Errorf("billing into %s: %v: %q, want a pg_hba rejection", db, err, out)
		}
	}
	out, err = s.asApp(t, "wiki-js", pw["wiki-js"], "billing", s.caFile, "SELECT 1")
	if err == nil || !strings.Contains(out, "pg_hba.conf rejects connection") {
		t.Errorf("wiki_js into billing: %v: %q", err, out)
	}
	if out, err := s.asApp(t, "wiki-js", pw["wiki-js"], "wiki_js", s.caFile, "SELECT current_user"); err != nil || out != "wiki_js" {
		t.Errorf("wiki_js in its database: %v: %q", err, out)
	}
	// A wrong password is refused.
	if out, err := s.asApp(t, "billing", pw["wiki-js"], "billing", s.caFile, "SELECT 1"); err == nil || !strings.Contains(out, "password authentication failed") {
		t.Errorf("wrong password: %v: %q", err, out)
	}
	// verify-full checks the CA and the host name: another CA, or an
	// address the certificate does not name, is refused.
	other, err := cnpg.LoadOrCreateCerts(t.TempDir(), []string{"localhost"}, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := s.asApp(t, "billing", pw["billing"], "billing", filepath.Join(other.Dir, cnpg.CACertFile), "SELECT 1"); err == nil || !strings.Contains(out, "certificate verify failed") {
		t.Errorf("another CA: %v: %q", err, out)
	}
	uri := strings.Replace(URI(Conn{Host: "127.0.0.1", Port: s.port}, "billing", pw["billing"]), "sslmode", "sslrootcert="+s.caFile+"&sslmode", 1)
	if out, err := s.psql(t, nil, "SELECT 1", "-d", uri); err == nil || !strings.Contains(out, "does not match host name") {
		t.Errorf("a host the certificate does not name: %v: %q", err, out)
	}
	// The app cannot make itself more than it is.
	if out, err := s.asApp(t, "billing", pw["billing"], "billing", s.caFile, "ALTER ROLE billing SUPERUSER"); err == nil {
		t.Errorf("billing made itself superuser: %q", out)
	}
}
