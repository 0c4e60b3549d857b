package cmdline

import (
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	c, err := Parse(`console=ttyS0 talos.config=http://10.99.0.1/c?mac=${mac}&uuid= quiet a="b c" talos.platform=metal console=tty0` + "\n")
	if err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]string{
		"console":      "ttyS0", // first value wins, as in Talos
		"talos.config": "http://10.99.0.1/c?mac=${mac}&uuid=",
		"quiet":        "",
		"a":            "b c",
		KeyPlatform:    "metal",
	} {
		got, ok := c.Get(key)
		if !ok || got != want {
			t.Errorf("Get(%q) = %q, %v; want %q", key, got, ok, want)
		}
	}
	if _, ok := c.Get("missing"); ok {
		t.Error("Get(missing) found")
	}
	if got := strings.Join(c.Keys(), " "); got != "console talos.config quiet a talos.platform" {
		t.Errorf("Keys = %s", got)
	}
	for _, bad := range []string{`a="b`, "a=\x00"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q): no error", bad)
		}
	}
}

func TestPopulate(t *testing.T) {
	vars := Vars{UUID: "1b2a3c4d-0000-4000-8000-000000000001", Serial: "SN 42", MAC: "52:54:00:12:34:56", Hostname: "talos-abc"}
	cases := []struct {
		in, want string
		missing  []string
	}{
		// No variable: untouched, even the query order and encoding.
		{"http://h/c?z=1&a=2", "http://h/c?z=1&a=2", nil},
		// Query re-encoded and sorted as url.Values.Encode does.
		{"http://h/c?mac=${mac}&a=1", "http://h/c?a=1&mac=52%3A54%3A00%3A12%3A34%3A56", nil},
		// Case-insensitive, inside a longer value, several at once.
		{"http://h/c?id=node-${MAC}-${Serial}", "http://h/c?id=node-52%3A54%3A00%3A12%3A34%3A56-SN+42", nil},
		// Legacy empty ?uuid= is filled; a non-empty one is not.
		{"http://h/c?uuid=", "http://h/c?uuid=1b2a3c4d-0000-4000-8000-000000000001", nil},
		{"http://h/c?uuid=fixed", "http://h/c?uuid=fixed", nil},
		// Never in the path.
		{"http://h/${mac}/c?h=${hostname}", "http://h/$%7Bmac%7D/c?h=talos-abc", nil},
		// An empty value stays as the variable, and is reported.
		{"http://h/c?code=${code}&mac=${mac}", "http://h/c?code=%24%7Bcode%7D&mac=52%3A54%3A00%3A12%3A34%3A56", []string{"code"}},
	}
	for _, tc := range cases {
		got, missing, err := Populate(tc.in, vars)
		if err != nil {
			t.Errorf("Populate(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want || !slices.Equal(missing, tc.missing) {
			t.Errorf("Populate(%q)\n got %q missing %v\nwant %q missing %v", tc.in, got, missing, tc.want, tc.missing)
		}
	}
	if _, _, err := Populate("http://h/%zz", vars); err == nil {
		t.Error("bad URL: no error")
	}
}

func FuzzParse(f *testing.F) {
	f.Add(`a=b c="d e" f`)
	f.Add(`talos.config=http://x/?mac=${mac}`)
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			return
		}
		for _, k := range c.Keys() {
			if k == "" || strings.Contains(k, "=") {
				t.Fatalf("bad key %q from %q", k, s)
			}
			if _, ok := c.Get(k); !ok {
				t.Fatalf("key %q listed but not found", k)
			}
		}
	})
}

func FuzzPopulate(f *testing.F) {
	f.Add("http://h/c?mac=${mac}&uuid=")
	f.Add("http://h/c?x=${SERIAL}${hostname}")
	f.Fuzz(func(t *testing.T, raw string) {
		vars := Vars{UUID: "u", Serial: "s", MAC: "m", Hostname: "h", Code: "c"}
		got, missing, err := Populate(raw, vars)
		if err != nil {
			return
		}
		if len(missing) != 0 {
			t.Fatalf("missing %v with all values set", missing)
		}
		u, err := url.Parse(got)
		if err != nil {
			t.Fatalf("result %q does not parse: %v", got, err)
		}
		for _, vs := range u.Query() {
			for _, v := range vs {
				if strings.Contains(strings.ToLower(v), "${mac}") {
					t.Fatalf("variable left in %q (from %q)", got, raw)
				}
			}
		}
	})
}

func TestDefaultHostname(t *testing.T) {
	for in, want := range map[string]string{"10.99.0.50": "talos-10-99-0-50", "fd00::1": "talos-fd001", "": ""} {
		if got := DefaultHostname(in); got != want {
			t.Errorf("DefaultHostname(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestInstalled(t *testing.T) {
	c, err := Parse(`initrd=initramfs.cpio.gz talos.platform=metal console=tty0 console=ttyS0 slab_nomerge talos.config=http://10.77.0.2:8080/config/x?t=secret talos.events.sink=10.77.0.2:4002 talos.logging.kernel=udp://10.77.0.2:4003 rackboot.lab.config_link=52:54:00:00:00:01 a="b c"`)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.Installed(), `talos.platform=metal console=tty0 console=ttyS0 slab_nomerge a="b c"`; got != want {
		t.Errorf("Installed() = %q, want %q", got, want)
	}
}
