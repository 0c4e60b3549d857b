package appdb

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/dotfile/rackboot/bundles/cnpg"
)

// LoginSecret is the kubernetes.io/basic-auth Secret, in the Cluster's
// namespace, that the app's managed role takes its password from.
func LoginSecret(app string) string { return cnpg.ClusterName + "-login-" + app }

// Postgres is what the PostgreSQL engine needs for the apps: the managed
// roles and pg_hba rules the Cluster carries, and the objects (login
// Secrets and Database resources in the Cluster's namespace, the apps'
// namespaces and Secrets).
type Postgres struct {
	Roles   []cnpg.Role
	HBA     []string
	Objects []*unstructured.Unstructured
}

// PostgresObjects renders the apps for CloudNativePG's Cluster in namespace
// ns, whose server certificate is signed by ca.
func PostgresObjects(apps []App, passwords map[string]string, ns string, ca []byte) (Postgres, error) {
	if err := checkPasswords(apps, passwords); err != nil {
		return Postgres{}, err
	}
	var p Postgres
	p.HBA = HBA(apps)
	conn := Conn{Host: cnpg.Host(ns), Port: cnpg.Port, CA: ca}
	var dbs, secrets []*unstructured.Unstructured
	for _, a := range apps {
		user := SQLName(a.Name)
		p.Roles = append(p.Roles, cnpg.Role{Name: user, PasswordSecret: LoginSecret(a.Name), Comment: "rackboot database app " + a.Name})
		// cnpg.io/reload: the operator picks up a changed password Secret
		// (docs/src/declarative_role_management.md).
		login := Secret(ns, LoginSecret(a.Name), "kubernetes.io/basic-auth",
			map[string]string{"username": user, "password": passwords[a.Name]},
			map[string]string{"cnpg.io/reload": "", "rackboot.dev/database-app": a.Name})
		p.Objects = append(p.Objects, login)
		dbs = append(dbs, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "postgresql.cnpg.io/v1", "kind": "Database",
			"metadata": map[string]any{"name": DatabaseObject(a.Name), "namespace": ns, "labels": labels(map[string]string{"rackboot.dev/database-app": a.Name})},
			"spec": map[string]any{
				"name": user, "owner": user, "ensure": "present",
				"cluster": map[string]any{"name": cnpg.ClusterName},
				// Deleting the object never drops the app's data.
				"databaseReclaimPolicy": "retain",
			},
		}})
		secrets = append(secrets, AppSecret(conn, a, passwords[a.Name]))
	}
	p.Objects = append(p.Objects, dbs...)
	p.Objects = append(p.Objects, Namespaces(apps, ns)...)
	p.Objects = append(p.Objects, secrets...)
	return p, nil
}

// DatabaseObject is the name of an app's Database resource.
func DatabaseObject(app string) string { return cnpg.ClusterName + "-" + app }

// HBA are the pg_hba.conf rules for the apps: each app's user may connect
// only to its own database, over TLS, with its password (scram-sha-256),
// and is refused everywhere else. CloudNativePG puts these lines before its
// default rules (pkg/postgres/configuration.go, hbaTemplateString: "USER-
// DEFINED RULES" come before "DEFAULT RULES"), and the first matching line
// decides.
func HBA(apps []App) []string {
	var out []string
	for _, a := range apps {
		n := SQLName(a.Name)
		out = append(out,
			fmt.Sprintf("hostssl %s %s all scram-sha-256", n, n),
			fmt.Sprintf("host all %s all reject", n))
	}
	return out
}

// PostgresSQL is, as psql input, what the app's managed role and Database
// resource amount to in PostgreSQL: a login role without other powers,
// given the app's password when it is created (never changed later: a
// second run leaves the role exactly as it was), and a database it owns. CloudNativePG's instance
// manager runs the equivalent on the primary; rackboot's tests run this
// text against a real PostgreSQL (with HBA's rules) to check that the result
// is what the apps need, and the migration runbook uses it. It is safe to
// run again: nothing changes the second time.
func PostgresSQL(app, password string) string {
	n := SQLName(app)
	var b strings.Builder
	fmt.Fprintf(&b, "SELECT format('CREATE ROLE %%I LOGIN PASSWORD %%L', %s, %s) WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)\\gexec\n", quoteLiteral(n), quoteLiteral(password), quoteLiteral(n))
	fmt.Fprintf(&b, "ALTER ROLE %s WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT;\n", quoteIdent(n))
	fmt.Fprintf(&b, "SELECT format('CREATE DATABASE %%I OWNER %%I', %s, %s) WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = %s)\\gexec\n", quoteLiteral(n), quoteLiteral(n), quoteLiteral(n))
	fmt.Fprintf(&b, "ALTER DATABASE %s OWNER TO %s;\n", quoteIdent(n), quoteIdent(n))
	return b.String()
}
