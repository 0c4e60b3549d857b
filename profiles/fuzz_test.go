package profiles

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzLoad: Load and Validate never panic, every problem has a place inside
// the file and a message, and on a rack without errors every machine is
// found by Match with its own selectors.
func FuzzLoad(f *testing.F) {
	f.Add(ExampleRack)
	seeds, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil {
		f.Fatal(err)
	}
	seeds = append(seeds, "testdata/good.yaml")
	for _, s := range seeds {
		data, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lines := bytes.Count(data, []byte("\n")) + 1
		check := func(ps Problems) {
			for _, p := range ps {
				if p.File != "fuzz.yaml" || p.Pos.Line < 1 || p.Pos.Col < 1 || p.Pos.Line > lines || strings.TrimSpace(p.Msg) == "" {
					t.Errorf("bad problem %q (file has %d lines)", p.String(), lines)
				}
			}
		}
		r, err := Load("fuzz.yaml", data)
		if err != nil {
			var ps Problems
			if !errors.As(err, &ps) || len(ps) == 0 || !ps.Errors() {
				t.Fatalf("Load error %v is not a non-empty Problems with an error", err)
			}
			check(ps)
			return
		}
		ps := r.Validate()
		check(ps)
		if ps.Errors() {
			return
		}
		for i := range r.Machines {
			m := &r.Machines[i]
			var mac net.HardwareAddr
			if len(m.Select.MAC) > 0 {
				if mac, err = NormalizeMAC(m.Select.MAC[0]); err != nil {
					t.Fatalf("valid rack, but MAC %q of %s does not parse: %v", m.Select.MAC[0], m.Name, err)
				}
			}
			got, err := r.Match(mac, m.Select.UUID, m.Select.Serial)
			if err != nil || got != m {
				t.Fatalf("valid rack, but %s is not found by its own selectors: got %v, %v", m.Name, got, err)
			}
		}
	})
}

// FuzzMatch: Match never panics on what a client sends, and a machine it
// returns agrees with the client on at least one selector.
func FuzzMatch(f *testing.F) {
	r, err := Load("rack.yaml", []byte(matchRack))
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte{0x52, 0x54, 0, 0, 0, 1}, "", "")
	f.Add([]byte{0x52, 0x54, 0, 0, 0, 2}, "11111111-2222-3333-4444-555555555555", "")
	f.Add([]byte{}, "44454c4c-4200-1035-8052-b4c04f4e4e32", "cz1234")
	f.Add([]byte{1, 2, 3}, "{4c4c4544-0042-3510-8052-b4c04f4e4e32}", " SN-77 ")
	f.Fuzz(func(t *testing.T, mac []byte, uuid, serial string) {
		m, err := r.Match(net.HardwareAddr(mac), uuid, serial)
		if err != nil {
			if m != nil || !(errors.Is(err, ErrNoMatch) || errors.Is(err, ErrAmbiguous)) {
				t.Fatalf("Match = %v, %v", m, err)
			}
			return
		}
		agrees := false
		for _, s := range m.Select.MAC {
			if hw, err := NormalizeMAC(s); err == nil && bytes.Equal(hw, mac) {
				agrees = true
			}
		}
		if u, err := parseUUID(uuid); err == nil && m.Select.UUID != "" {
			if mu, err := parseUUID(m.Select.UUID); err == nil && uuidEqual(mu, u) {
				agrees = true
			}
		}
		if strings.TrimSpace(serial) != "" && strings.EqualFold(strings.TrimSpace(serial), m.Select.Serial) {
			agrees = true
		}
		if !agrees {
			t.Fatalf("Match(%x, %q, %q) = %s, which agrees on nothing", mac, uuid, serial, m.Name)
		}
	})
}
