package pxe

import (
	"net"
	"strings"
	"testing"
)

func TestRedactTokens(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"talos.config=http://10.0.0.1:8080/config?mac=52-54-00-00-00-01&t=AbC-_9x&uuid=1", "talos.config=http://10.0.0.1:8080/config?mac=52-54-00-00-00-01&t=REDACTED&uuid=1"},
		{"GET /config?t=abc", "GET /config?t=REDACTED"},
		{"no token here: at=5 t=7", "no token here: at=5 t=7"},
		{"two ?t=a&x=1 &t=b", "two ?t=REDACTED&x=1 &t=REDACTED"},
		{"", ""},
	} {
		if got := RedactTokens(tc.in); got != tc.want {
			t.Errorf("RedactTokens(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	// A real minted token in a real config URL never survives.
	tok, err := NewTokens(make([]byte, 32), TokenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("52:54:00:00:00:01")
	s, err := tok.Mint(TokenBinding{Name: "formula", MAC: mac, UUID: "0aa7b8a5-65b3-4c5e-9a3e-000000000001"})
	if err != nil {
		t.Fatal(err)
	}
	line := "Kernel command line: console=ttyS0 talos.config=" + ConfigURL("10.0.0.1:8080", s, mac, "0aa7b8a5-65b3-4c5e-9a3e-000000000001")
	if got := RedactTokens(line); strings.Contains(got, s) || !strings.Contains(got, "t="+Redacted) {
		t.Errorf("token survived redaction: %q", got)
	}
}

func FuzzRedactTokens(f *testing.F) {
	f.Add("talos.config=http://h/config?t=abc&mac=1")
	f.Add("?t=")
	f.Fuzz(func(t *testing.T, s string) {
		out := RedactTokens(s)
		if RedactTokens(out) != out {
			t.Fatalf("not idempotent: %q -> %q", s, out)
		}
		if m := tokenParam.FindAllStringSubmatch(out, -1); m != nil {
			for _, g := range m {
				if !strings.HasSuffix(g[0], Redacted) {
					t.Fatalf("token left in %q", out)
				}
			}
		}
	})
}
