package profiles

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"
)

// The database engines a rack can choose (database.engine).
const (
	EngineCockroachDB = "cockroachdb"
	EnginePostgres    = "postgres"
)

// DefaultEngine is the engine of a rack without database.engine.
const DefaultEngine = EngineCockroachDB

// Engines are the values database.engine takes.
func Engines() []string { return []string{EngineCockroachDB, EnginePostgres} }

// Database is the rack's database section: which engine serves the apps and
// which apps get a database, a user and a Secret.
type Database struct {
	// Engine is cockroachdb (default) or postgres (CloudNativePG).
	Engine string        `yaml:"engine,omitempty"`
	Apps   []DatabaseApp `yaml:"apps,omitempty"`
}

// DatabaseApp is one app: a database and a user named after it, and a
// Secret <name>-database in its namespace.
type DatabaseApp struct {
	Name      string `yaml:"name"`
	Namespace string `yaml:"namespace"`
}

// EngineOrDefault is the engine the rack asks for.
func (d Database) EngineOrDefault() string {
	if d.Engine == "" {
		return DefaultEngine
	}
	return d.Engine
}

// reservedAppNames are names an app cannot take: the database or user would
// be one the engine keeps for itself (PostgreSQL's postgres, template0,
// template1 and public; CloudNativePG's app, streaming_replica; CockroachDB's
// root, admin, defaultdb, system).
var reservedAppNames = []string{"admin", "app", "defaultdb", "postgres", "public", "root", "streaming-replica", "system", "template0", "template1"}

// hasReservedPrefix: pg_ (PostgreSQL's roles), cnpg_ (CloudNativePG's
// operator roles: pkg/postgres/roles.go, IsRoleReserved), crdb_ (CockroachDB's
// crdb_internal), written with '-' as the rack does.
func hasReservedPrefix(name string) bool {
	for _, p := range []string{"pg-", "cnpg-", "crdb-"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// database checks the database section: a known engine, app names and
// namespaces that are DNS labels, no app given twice.
func (c *checker) database() {
	d := &c.r.Database
	if d.Engine != "" && !slices.Contains(Engines(), d.Engine) {
		c.errf("database.engine", "database engine %q is not known: write %s (or leave engine out for %s)",
			d.Engine, strings.Join(Engines(), " or "), DefaultEngine)
	}
	seen := map[string]int{}
	for i, a := range d.Apps {
		p := fmt.Sprintf("database.apps[%d]", i)
		switch {
		case a.Name == "":
			c.errf(p, "database app %d has no name: write name: <app>, a DNS label such as billing", i+1)
		case len(validation.IsDNS1123Label(a.Name)) > 0:
			c.errf(p+".name", "database app name %q is not a DNS label (lower-case letters, digits and '-', at most 63, starting and ending with a letter or digit): write e.g. %q", a.Name, suggestLabel(a.Name))
		case a.Name[0] >= '0' && a.Name[0] <= '9':
			c.errf(p+".name", "database app name %q starts with a digit, which a SQL user name cannot (CockroachDB and PostgreSQL): write e.g. %q", a.Name, "app-"+a.Name)
		case slices.Contains(reservedAppNames, a.Name) || hasReservedPrefix(a.Name):
			c.errf(p+".name", "database app name %q is kept by the database engine for itself: write another name, e.g. %q", a.Name, a.Name+"-app")
		}
		switch {
		case a.Namespace == "":
			name := a.Name
			if name == "" || len(validation.IsDNS1123Label(name)) > 0 {
				name = "myapp"
			}
			c.errf(p, "database app %s has no namespace: write namespace: <the namespace its pods run in>, e.g. namespace: %s", a.Name, name)
		case len(validation.IsDNS1123Label(a.Namespace)) > 0:
			c.errf(p+".namespace", "namespace %q of database app %s is not a Kubernetes namespace name (a DNS label: lower-case letters, digits and '-', at most 63): write e.g. %q", a.Namespace, a.Name, suggestLabel(a.Namespace))
		}
		if a.Name == "" {
			continue
		}
		if j, dup := seen[a.Name]; dup {
			c.errf(p+".name", "database app %s is given twice (also database.apps[%d]): apps share one database server, so each name is one database and one user; keep one entry", a.Name, j)
			continue
		}
		seen[a.Name] = i
	}
}
