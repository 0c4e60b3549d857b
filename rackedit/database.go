package rackedit

import (
	"errors"
	"fmt"
	"slices"

	"go.yaml.in/yaml/v3"

	"github.com/dotfile/rackboot/profiles"
)

// AddDatabaseApp returns src with app appended to database.apps (after the
// last app, indented like it), creating `apps:` under database: or the
// database: section at the end of the file when they are missing. Every
// other byte is kept; the result is checked to load to the same rack plus
// that app. It refuses an app whose name is already there, saying on which
// line, and a database section written in flow style (edit it by hand).
func AddDatabaseApp(src []byte, app profiles.DatabaseApp) ([]byte, error) {
	if app.Name == "" || app.Namespace == "" {
		return nil, errors.New("a database app needs a name and a namespace")
	}
	before, err := load(src)
	if err != nil {
		return nil, err
	}
	for i, a := range before.Database.Apps {
		if a.Name == app.Name {
			return nil, fmt.Errorf("database app %q is %w (line %d): pick another name", app.Name, ErrExists, before.PosOf(fmt.Sprintf("database.apps[%d].name", i)).Line)
		}
	}
	d, err := parse(src)
	if err != nil {
		return nil, err
	}
	out, err := d.addDatabaseApp(app)
	if err != nil {
		return nil, err
	}
	want := *before
	want.Database.Apps = append(slices.Clip(before.Database.Apps), app)
	if err := verify(out, &want, "adding database app "+app.Name); err != nil {
		return nil, err
	}
	return out, nil
}

func (d *doc) addDatabaseApp(app profiles.DatabaseApp) ([]byte, error) {
	if d.rootFlow() {
		return nil, errors.New("the rack file is written in flow style ({...}): add the database app by hand")
	}
	entry := func(dash, key int) string {
		return spaces(dash) + "-" + spaces(key-dash-1) + "name: " + plainOrQuoted(app.Name) + d.eol + spaces(key) + "namespace: " + plainOrQuoted(app.Namespace)
	}
	var dbKey, db *yaml.Node
	for i := 0; i+1 < len(d.root.Content); i += 2 {
		if d.root.Content[i].Value == "database" {
			dbKey, db = d.root.Content[i], d.root.Content[i+1]
		}
	}
	if dbKey == nil {
		// A new section at the end of the file, after a blank line.
		out := d.src
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(slices.Clip(out), d.eol...)
		}
		text := d.eol + "database:" + d.eol + "  apps:" + d.eol + entry(4, 6) + d.eol
		return append(slices.Clip(out), text...), nil
	}
	if db.Kind != yaml.MappingNode || db.Style&yaml.FlowStyle != 0 {
		return nil, fmt.Errorf("line %d: database: is not a block mapping: add the app under database.apps by hand", dbKey.Line)
	}
	var appsKey, apps *yaml.Node
	for i := 0; i+1 < len(db.Content); i += 2 {
		if db.Content[i].Value == "apps" {
			appsKey, apps = db.Content[i], db.Content[i+1]
		}
	}
	if appsKey == nil {
		col := db.Column - 1
		at := d.contentEnd(lastLine(db) - 1)
		return splice(d.src, at, at, d.eol+spaces(col)+"apps:"+d.eol+entry(col+2, col+4)), nil
	}
	if apps.Kind != yaml.SequenceNode || apps.Style&yaml.FlowStyle != 0 || len(apps.Content) == 0 {
		return nil, fmt.Errorf("line %d: database.apps is empty or in flow style: write the app as a block entry (- name: %s) by hand", appsKey.Line, app.Name)
	}
	first := apps.Content[0]
	if first.Kind != yaml.MappingNode || len(first.Content) == 0 {
		return nil, fmt.Errorf("line %d: a database app that is not a name/namespace mapping: edit rack.yaml by hand", first.Line)
	}
	dash := apps.Column - 1
	key := first.Content[0].Column - 1
	at := d.contentEnd(lastLine(apps) - 1)
	return splice(d.src, at, at, d.eol+entry(dash, key)), nil
}

// lastLine is the last line (1-based) holding a node of n.
func lastLine(n *yaml.Node) int {
	l := n.Line
	for _, c := range n.Content {
		l = max(l, lastLine(c))
	}
	return l
}

// plainOrQuoted writes a DNS label plain unless YAML would read it as
// something else than a string (a number, a boolean, null).
func plainOrQuoted(s string) string {
	var v any
	if err := yaml.Unmarshal([]byte(s), &v); err == nil {
		if _, ok := v.(string); ok {
			return s
		}
	}
	return `"` + s + `"`
}
