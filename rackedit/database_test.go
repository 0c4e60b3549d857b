package rackedit

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/profiles"
)

func TestAddDatabaseApp(t *testing.T) {
	app := profiles.DatabaseApp{Name: "billing", Namespace: "billing"}
	base := string(profiles.ExampleRack)
	tests := []struct {
		name, src, want string
	}{
		{"no database section", base, base + "\ndatabase:\n  apps:\n    - name: billing\n      namespace: billing\n"},
		{"no final newline", strings.TrimSuffix(base, "\n"), strings.TrimSuffix(base, "\n") + "\n\ndatabase:\n  apps:\n    - name: billing\n      namespace: billing\n"},
		{"engine only", base + "database:\n  engine: postgres # vanilla\n# the end\n",
			base + "database:\n  engine: postgres # vanilla\n  apps:\n    - name: billing\n      namespace: billing\n# the end\n"},
		{"apps, other indent", base + "database:\n    apps:\n    # the wiki\n    -   name: wiki\n        namespace: wiki # its own\n",
			base + "database:\n    apps:\n    # the wiki\n    -   name: wiki\n        namespace: wiki # its own\n    -   name: billing\n        namespace: billing\n"},
		{"database before machines", strings.Replace(base, "machines:\n", "database:\n  apps:\n  - name: wiki\n    namespace: wiki\n\nmachines:\n", 1),
			strings.Replace(base, "machines:\n", "database:\n  apps:\n  - name: wiki\n    namespace: wiki\n  - name: billing\n    namespace: billing\n\nmachines:\n", 1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := AddDatabaseApp([]byte(tc.src), app)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", tail(string(got)), tail(tc.want))
			}
		})
	}
	// CRLF files stay CRLF.
	crlf := strings.ReplaceAll(base, "\n", "\r\n")
	got, err := AddDatabaseApp([]byte(crlf), app)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(got, []byte(crlf)) || bytes.Count(got, []byte("\n")) != bytes.Count(got, []byte("\r\n")) {
		t.Errorf("CRLF file: %q", tail(string(got)))
	}
}

func tail(s string) string {
	if i := strings.Index(s, "database:"); i >= 0 {
		return s[max(0, i-40):]
	}
	return s[max(0, len(s)-200):]
}

func TestAddDatabaseAppRefuses(t *testing.T) {
	src := string(profiles.ExampleRack) + "database:\n  apps:\n    - name: billing\n      namespace: billing\n"
	_, err := AddDatabaseApp([]byte(src), profiles.DatabaseApp{Name: "billing", Namespace: "shop"})
	if !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), "line ") {
		t.Errorf("duplicate: %v", err)
	}
	for _, s := range []string{
		string(profiles.ExampleRack) + "database: {apps: [{name: wiki, namespace: wiki}]}\n",
		string(profiles.ExampleRack) + "database:\n  apps: []\n",
	} {
		if _, err := AddDatabaseApp([]byte(s), profiles.DatabaseApp{Name: "shop", Namespace: "shop"}); err == nil || !strings.Contains(err.Error(), "by hand") {
			t.Errorf("flow style: %v", err)
		}
	}
	if _, err := AddDatabaseApp([]byte(src), profiles.DatabaseApp{Name: "shop"}); err == nil {
		t.Error("no namespace accepted")
	}
}

// FuzzAddDatabaseApp: on whatever loads as a rack, adding an app never
// panics, and what it returns loads with the app added (AddDatabaseApp
// checks it; the fuzzer looks for a way around that check).
func FuzzAddDatabaseApp(f *testing.F) {
	f.Add(profiles.ExampleRack, "billing")
	f.Add([]byte("database:\n  apps:\n  - name: a\n    namespace: a\n"), "b")
	f.Add([]byte("database:\n  engine: postgres\n"), "true")
	f.Fuzz(func(t *testing.T, data []byte, name string) {
		if _, err := profiles.Load("fuzz.yaml", data); err != nil {
			return
		}
		out, err := AddDatabaseApp(data, profiles.DatabaseApp{Name: name, Namespace: "ns"})
		if err != nil {
			return
		}
		r, err := profiles.Load("fuzz.yaml", out)
		if err != nil {
			t.Fatalf("result does not load: %v\n%q", err, out)
		}
		if n := len(r.Database.Apps); n == 0 || r.Database.Apps[n-1].Name != name {
			t.Fatalf("app %q not last: %+v", name, r.Database.Apps)
		}
	})
}
