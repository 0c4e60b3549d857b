// Package appdb renders the per-app databases and users of the rack's
// database section, for either engine: PostgreSQL through CloudNativePG's
// declarative resources (managed roles in the Cluster, one Database object
// per app, pg_hba rules), or CockroachDB through an idempotent SQL Job. Each
// app gets a Secret <app>-database in its own namespace with what it needs to
// connect with sslmode=verify-full. Superuser credentials never go into
// those Secrets.
//
// It imports nothing of rackboot's bundles package: bundles/ places its
// objects in bundles with gates.
package appdb

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// App is one app of the rack's database section.
type App struct {
	Name      string
	Namespace string
}

// Keys of an app's Secret.
const (
	KeyURI      = "uri"
	KeyHost     = "host"
	KeyPort     = "port"
	KeyUser     = "user"
	KeyPassword = "password"
	KeyDatabase = "database"
	KeySSLMode  = "sslmode"
	KeyCA       = "ca.crt"
	// SSLMode is what every app Secret asks for: TLS, the server
	// certificate checked against the CA and the host name.
	SSLMode = "verify-full"
)

// SecretName is the Secret an app mounts: <app>-database.
func SecretName(app string) string { return app + "-database" }

// SQLName is the app's database and user name: its rack name with '-'
// turned into '_' (a user name of CockroachDB may not hold '-'; the rack
// allows no '_', so two apps never map to one name).
func SQLName(app string) string { return strings.ReplaceAll(app, "-", "_") }

// Conn is where an app connects.
type Conn struct {
	Host string
	Port int
	// CA is the PEM CA certificate that signed the server's certificate.
	CA []byte
}

// URI is the app's connection string (its Secret's uri): the CA is not
// named in it; the Secret's ca.crt is, mounted as a file, the sslrootcert.
func URI(c Conn, app, password string) string {
	u := url.URL{
		Scheme:   "postgresql",
		User:     url.UserPassword(SQLName(app), password),
		Host:     c.Host + ":" + strconv.Itoa(c.Port),
		Path:     "/" + SQLName(app),
		RawQuery: "sslmode=" + SSLMode,
	}
	return u.String()
}

// AppSecret is the Secret <app>-database in the app's namespace.
func AppSecret(c Conn, a App, password string) *unstructured.Unstructured {
	user := SQLName(a.Name)
	data := map[string]string{
		KeyURI: URI(c, a.Name, password), KeyHost: c.Host, KeyPort: strconv.Itoa(c.Port),
		KeyUser: user, KeyPassword: password, KeyDatabase: user, KeySSLMode: SSLMode, KeyCA: string(c.CA),
	}
	return Secret(a.Namespace, SecretName(a.Name), "Opaque", data, map[string]string{"rackboot.dev/database-app": a.Name})
}

// Secret is a Secret with data (base64, as the API server keeps it, so a
// second server-side apply finds nothing to change).
func Secret(ns, name, typ string, data map[string]string, extraLabels map[string]string) *unstructured.Unstructured {
	d := make(map[string]any, len(data))
	for k, v := range data {
		d[k] = base64.StdEncoding.EncodeToString([]byte(v))
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Secret",
		"metadata": map[string]any{"name": name, "namespace": ns, "labels": labels(extraLabels)},
		"type":     typ,
		"data":     d,
	}}
}

// Namespaces are the apps' namespaces other than skip (the database's own),
// once each, in first-seen order.
func Namespaces(apps []App, skip string) []*unstructured.Unstructured {
	seen := map[string]bool{skip: true}
	var out []*unstructured.Unstructured
	for _, a := range apps {
		if seen[a.Namespace] {
			continue
		}
		seen[a.Namespace] = true
		out = append(out, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "v1", "kind": "Namespace",
			"metadata": map[string]any{"name": a.Namespace, "labels": labels(nil)},
		}})
	}
	return out
}

func labels(extra map[string]string) map[string]any {
	l := map[string]any{"app.kubernetes.io/managed-by": "rackboot"}
	for k, v := range extra {
		l[k] = v
	}
	return l
}

// quoteIdent double-quotes a SQL identifier (both engines).
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// quoteLiteral single-quotes a SQL string literal (both engines, with
// standard_conforming_strings on: backslashes are not escapes).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// checkPasswords reports an app without a password.
func checkPasswords(apps []App, passwords map[string]string) error {
	for _, a := range apps {
		if passwords[a.Name] == "" {
			return fmt.Errorf("appdb: no password for app %s", a.Name)
		}
	}
	return nil
}
