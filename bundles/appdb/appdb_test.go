package appdb

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/bundles/cockroach"
)

// TestCockroachSQL checks the statements as text against CockroachDB
// v25.3's SQL reference (no CockroachDB binary is available here): each
// statement's form is the documented synopsis, each one is safe to run again.
func TestCockroachSQL(t *testing.T) {
	got := CockroachSQL("wiki-js", "pw0")
	want := `CREATE DATABASE IF NOT EXISTS "wiki_js";
CREATE USER IF NOT EXISTS "wiki_js" WITH LOGIN PASSWORD 'pw0';
ALTER DATABASE "wiki_js" OWNER TO "wiki_js";
REVOKE CONNECT ON DATABASE "wiki_js" FROM public;
GRANT ALL ON DATABASE "wiki_js" TO "wiki_js";
`
	if got != want {
		t.Errorf("CockroachSQL:\n%s\nwant:\n%s", got, want)
	}
	// Every statement is idempotent by its form: IF NOT EXISTS on the
	// creates; OWNER TO, REVOKE and GRANT set a state, they do not add to it.
	for _, line := range strings.Split(strings.TrimSpace(got), "\n") {
		switch {
		case strings.HasPrefix(line, "CREATE "):
			if !strings.Contains(line, " IF NOT EXISTS ") {
				t.Errorf("%q is not safe to run again", line)
			}
		case strings.HasPrefix(line, "ALTER DATABASE "), strings.HasPrefix(line, "REVOKE "), strings.HasPrefix(line, "GRANT "):
		default:
			t.Errorf("unexpected statement %q", line)
		}
	}
	// A quote in a password cannot end the literal.
	if s := CockroachSQL("a", "x'; DROP DATABASE a; --"); !strings.Contains(s, `PASSWORD 'x''; DROP DATABASE a; --'`) {
		t.Errorf("password not quoted: %s", s)
	}
}

func TestCockroachJobName(t *testing.T) {
	a := []App{{Name: "shop", Namespace: "shop"}}
	b := append(a, App{Name: "blog", Namespace: "blog"})
	if CockroachJobName(a) != CockroachJobName([]App{{Name: "shop", Namespace: "shop"}}) {
		t.Error("same apps, different Job")
	}
	if CockroachJobName(a) == CockroachJobName(b) {
		t.Error("another app list, same Job (its template cannot change)")
	}
	if n := CockroachJobName(b); len(n) > 63 || !strings.HasPrefix(n, "cockroachdb-apps-") {
		t.Errorf("Job name %q", n)
	}
}

func TestCockroachObjectsNeedPasswords(t *testing.T) {
	_, err := CockroachObjects([]App{{Name: "shop", Namespace: "shop"}}, map[string]string{}, cockroach.Params{Nodes: []string{"a"}}, []byte("ca"))
	if err == nil || !strings.Contains(err.Error(), "no password for app shop") {
		t.Errorf("missing password: %v", err)
	}
}

func TestURI(t *testing.T) {
	got := URI(Conn{Host: "postgres-rw.postgres.svc", Port: 5432}, "wiki-js", "pw_-0")
	if want := "postgresql://wiki_js:pw_-0@postgres-rw.postgres.svc:5432/wiki_js?sslmode=verify-full"; got != want {
		t.Errorf("URI %s, want %s", got, want)
	}
}

func TestPasswords(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pw")
	// Reading creates nothing.
	got, err := LoadPasswords(dir, []string{"a"})
	if err != nil || len(got) != 0 {
		t.Fatalf("LoadPasswords on nothing: %v %v", got, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("LoadPasswords created %s", dir)
	}
	first, err := LoadOrCreatePasswords(dir, []string{"a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	if len(first["a"]) != 43 || first["a"] == first["b"] {
		t.Errorf("passwords %d characters, distinct %v", len(first["a"]), first["a"] != first["b"])
	}
	second, err := LoadOrCreatePasswords(dir, []string{"a", "b", "c"})
	if err != nil {
		t.Fatal(err)
	}
	if second["a"] != first["a"] || second["b"] != first["b"] || second["c"] == "" {
		t.Error("a second call changed a password or made none for the new app")
	}
	fi, err := os.Stat(PasswordFile(dir, "c"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v", fi.Mode(), err)
	}
	// A file others can read is refused and left as it is.
	if err := os.Chmod(PasswordFile(dir, "a"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreatePasswords(dir, []string{"a"}); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("0644 password file: %v", err)
	}
	b, _ := os.ReadFile(PasswordFile(dir, "a"))
	if strings.TrimSpace(string(b)) != first["a"] {
		t.Error("the refused file was changed")
	}
	// An emptied file is refused, not replaced.
	if err := os.WriteFile(PasswordFile(dir, "b"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreatePasswords(dir, []string{"b"}); err == nil || !strings.Contains(err.Error(), "left untouched") {
		t.Errorf("empty password file: %v", err)
	}
}

func TestPostgresObjects(t *testing.T) {
	apps := []App{{Name: "a", Namespace: "postgres"}, {Name: "b", Namespace: "shared"}, {Name: "c", Namespace: "shared"}}
	p, err := PostgresObjects(apps, map[string]string{"a": "1", "b": "2", "c": "3"}, "postgres", []byte("CA"))
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for _, o := range p.Objects {
		if o.GetKind() == "Namespace" {
			ns = append(ns, o.GetName())
		}
	}
	// The database's own namespace is the Cluster bundle's; shared once.
	if strings.Join(ns, ",") != "shared" {
		t.Errorf("namespaces %v", ns)
	}
	if len(p.Roles) != 3 || len(p.HBA) != 6 || p.Roles[1].PasswordSecret != "postgres-login-b" {
		t.Errorf("roles %+v hba %v", p.Roles, p.HBA)
	}
}
