package appdb

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/dotfile/rackboot/bundles/cockroach"
)

// CockroachSQLSecret holds the apps' SQL (it carries their passwords) in
// CockroachDB's namespace.
const CockroachSQLSecret = "cockroachdb-apps-sql"

// CockroachSQL is the SQL that gives app its database and user on
// CockroachDB, every statement safe to run again (checked as text against
// CockroachDB v25.3's SQL reference, cited in docs/DESIGN.md "Databases for
// apps"):
//
//   - CREATE DATABASE IF NOT EXISTS (create-database)
//   - CREATE USER IF NOT EXISTS ... WITH LOGIN PASSWORD (create-user,
//     create-role: role options): the password is set when the user is made
//     and never changed by a later run
//   - ALTER DATABASE ... OWNER TO (alter-database): the app owns its database
//   - REVOKE CONNECT ON DATABASE ... FROM public (revoke): other users
//     cannot connect to it (every user is a member of public)
//   - GRANT ALL ON DATABASE ... TO (grant)
func CockroachSQL(app, password string) string {
	n := quoteIdent(SQLName(app))
	return strings.Join([]string{
		fmt.Sprintf("CREATE DATABASE IF NOT EXISTS %s;", n),
		fmt.Sprintf("CREATE USER IF NOT EXISTS %s WITH LOGIN PASSWORD %s;", n, quoteLiteral(password)),
		fmt.Sprintf("ALTER DATABASE %s OWNER TO %s;", n, n),
		fmt.Sprintf("REVOKE CONNECT ON DATABASE %s FROM public;", n),
		fmt.Sprintf("GRANT ALL ON DATABASE %s TO %s;", n, n),
	}, "\n") + "\n"
}

// CockroachJobName is the apps Job's name: it changes with the app list (a
// Job's pod template cannot change, so a new list is a new Job), and stays
// the same otherwise (a second apply changes nothing).
func CockroachJobName(apps []App) string {
	h := sha256.New()
	for _, a := range apps {
		fmt.Fprintf(h, "%s/%s\n", a.Namespace, a.Name)
	}
	return "cockroachdb-apps-" + hex.EncodeToString(h.Sum(nil))[:10]
}

// CockroachObjects renders the apps on the CockroachDB bundle p (its
// namespace, image, root Secret): the SQL Secret and the Job that runs it as
// root through the public Service, the apps' namespaces and Secrets (CA,
// password; never root's certificate).
func CockroachObjects(apps []App, passwords map[string]string, p cockroach.Params, ca []byte) ([]*unstructured.Unstructured, error) {
	if err := checkPasswords(apps, passwords); err != nil {
		return nil, err
	}
	if len(apps) == 0 {
		return nil, nil
	}
	p = p.WithDefaults()
	var sql strings.Builder
	for _, a := range apps {
		fmt.Fprintf(&sql, "-- app %s (namespace %s)\n%s", a.Name, a.Namespace, CockroachSQL(a.Name, passwords[a.Name]))
	}
	out := []*unstructured.Unstructured{
		Secret(p.Namespace, CockroachSQLSecret, "Opaque", map[string]string{"apps.sql": sql.String()}, nil),
		cockroachJob(apps, p),
	}
	out = append(out, Namespaces(apps, p.Namespace)...)
	conn := Conn{Host: fmt.Sprintf("%s.%s.svc", cockroach.PublicService, p.Namespace), Port: cockroach.GRPCPort, CA: ca}
	for _, a := range apps {
		out = append(out, AppSecret(conn, a, passwords[a.Name]))
	}
	return out, nil
}

// cockroachJob runs the SQL file as root with root's client certificate,
// copied into an emptyDir with keys 0400 (cockroach refuses group-readable
// keys), like the init Job.
func cockroachJob(apps []App, p cockroach.Params) *unstructured.Unstructured {
	const certs, secret, sqlDir = "/cockroach/cockroach-certs", "/cockroach/certs-secret", "/cockroach/apps-sql"
	script := fmt.Sprintf("cp -f %s/* %s/ && chmod 0400 %s/*.key\nexec /cockroach/cockroach sql --certs-dir=%s --host=%s --file=%s/apps.sql",
		secret, certs, certs, certs, cockroach.PublicService, sqlDir)
	container := map[string]any{
		"name": "apps", "image": p.Image,
		"command": []any{"/bin/bash", "-ec", script},
		"securityContext": map[string]any{
			"allowPrivilegeEscalation": false,
			"capabilities":             map[string]any{"drop": []any{"ALL"}},
		},
		"volumeMounts": []any{
			map[string]any{"name": "certs", "mountPath": certs},
			map[string]any{"name": "certs-secret", "mountPath": secret, "readOnly": true},
			map[string]any{"name": "sql", "mountPath": sqlDir, "readOnly": true},
		},
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "batch/v1", "kind": "Job",
		"metadata": map[string]any{"name": CockroachJobName(apps), "namespace": p.Namespace, "labels": labels(map[string]string{"app.kubernetes.io/name": "cockroachdb", "app.kubernetes.io/component": "apps"})},
		"spec": map[string]any{
			"backoffLimit": int64(20),
			"template": map[string]any{
				"metadata": map[string]any{"labels": map[string]any{"app.kubernetes.io/name": "cockroachdb", "app.kubernetes.io/component": "apps"}},
				"spec": map[string]any{
					"restartPolicy":                "OnFailure",
					"serviceAccountName":           cockroach.StatefulSet,
					"automountServiceAccountToken": false,
					"securityContext": map[string]any{
						"runAsUser": int64(1000), "runAsGroup": int64(1000), "fsGroup": int64(1000), "runAsNonRoot": true,
						"seccompProfile": map[string]any{"type": "RuntimeDefault"},
					},
					"containers": []any{container},
					"volumes": []any{
						map[string]any{"name": "certs", "emptyDir": map[string]any{}},
						map[string]any{"name": "certs-secret", "secret": map[string]any{"secretName": cockroach.RootSecret, "defaultMode": int64(0o440)}},
						map[string]any{"name": "sql", "secret": map[string]any{"secretName": CockroachSQLSecret, "defaultMode": int64(0o440)}},
					},
				},
			},
		},
	}}
}
