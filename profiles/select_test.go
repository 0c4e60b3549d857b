package profiles

import (
	"errors"
	"net"
	"strings"
	"testing"
)

func mustMAC(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	hw, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return hw
}

const matchRack = `cluster:
  name: lab
  talosVersion: v1.13.0
  kubernetesVersion: 1.36.0
  vip: 10.0.0.10
  network: {subnet: 10.0.0.0/24, gateway: 10.0.0.1}
machines:
  - name: by-mac
    role: controlplane
    select: {mac: ["52:54:00:00:00:01", "52-54-00-00-00-0A"]}
    address: 10.0.0.11/24
  - name: by-serial
    role: worker
    select: {serial: CZ1234}
  - name: by-uuid
    role: worker
    select: {uuid: 4C4C4544-0042-3510-8052-B4C04F4E4E32}
  - name: uuid-and-mac
    role: worker
    select: {uuid: 11111111-2222-3333-4444-555555555555, mac: ["52:54:00:00:00:02"]}
  - name: serial-and-mac
    role: worker
    select: {serial: SN-77, mac: ["52:54:00:00:00:03"]}
`

func TestMatch(t *testing.T) {
	r, err := Load("rack.yaml", []byte(matchRack))
	if err != nil {
		t.Fatal(err)
	}
	if ps := r.Validate(); ps.Errors() {
		t.Fatalf("the test rack is not valid:\n%s", ps.Error())
	}
	tests := []struct {
		name   string
		mac    string
		uuid   string
		serial string
		want   string // machine name, or "" for an error
		err    error
		msg    string // substring of the error
	}{
		{name: "mac", mac: "52:54:00:00:00:01", want: "by-mac"},
		{name: "second mac of a machine, other notation in the file", mac: "52:54:00:00:00:0a", want: "by-mac"},
		{name: "serial, any case and spaces", mac: "52:54:00:99:99:99", serial: " cz1234 ", want: "by-serial"},
		{name: "uuid lower case", uuid: "4c4c4544-0042-3510-8052-b4c04f4e4e32", want: "by-uuid"},
		{name: "uuid in PXE mixed-endian order", uuid: "44454c4c-4200-1035-8052-b4c04f4e4e32", want: "by-uuid"},
		{name: "uuid without dashes", uuid: "4c4c454400423510" + "8052b4c04f4e4e32", want: "by-uuid"},
		{name: "uuid beats mac", mac: "52:54:00:00:00:01", uuid: "4c4c4544-0042-3510-8052-b4c04f4e4e32", want: "by-uuid"},
		{name: "serial beats mac", mac: "52:54:00:00:00:01", serial: "CZ1234", want: "by-serial"},
		{name: "uuid beats serial", serial: "CZ1234", uuid: "4c4c4544-0042-3510-8052-b4c04f4e4e32", want: "by-uuid"},
		{name: "both selectors agree", mac: "52:54:00:00:00:02", uuid: "11111111-2222-3333-4444-555555555555", want: "uuid-and-mac"},
		{name: "mac alone for a machine that also has a uuid", mac: "52:54:00:00:00:02", want: "uuid-and-mac"},
		{name: "mac agrees, uuid contradicts", mac: "52:54:00:00:00:02", uuid: "99999999-2222-3333-4444-555555555555", err: ErrNoMatch, msg: "uuid-and-mac has this MAC but its uuid is"},
		{name: "mac agrees, serial contradicts", mac: "52:54:00:00:00:03", serial: "SN-78", err: ErrNoMatch, msg: "serial-and-mac has this MAC but its serial is SN-77"},
		{name: "placeholder uuid counts as not given", mac: "52:54:00:00:00:02", uuid: "00000000-0000-0000-0000-000000000000", want: "uuid-and-mac"},
		{name: "garbage uuid counts as not given", mac: "52:54:00:00:00:01", uuid: "not-a-uuid", want: "by-mac"},
		{name: "unknown mac", mac: "52:54:00:99:99:99", err: ErrNoMatch, msg: "mac=52:54:00:99:99:99"},
		{name: "nothing given", err: ErrNoMatch, msg: "gave no MAC, UUID or serial"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mac net.HardwareAddr
			if tc.mac != "" {
				mac = mustMAC(t, tc.mac)
			}
			m, err := r.Match(mac, tc.uuid, tc.serial)
			if tc.want != "" {
				if err != nil || m == nil || m.Name != tc.want {
					t.Fatalf("Match = %v, %v; want %s", m, err, tc.want)
				}
				if m != r.Machine(tc.want) {
					t.Errorf("Match returned a copy, not the rack's machine")
				}
				return
			}
			if !errors.Is(err, tc.err) || m != nil {
				t.Fatalf("Match = %v, %v; want %v", m, err, tc.err)
			}
			if !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %q does not say %q", err, tc.msg)
			}
		})
	}
}

// TestMatchAmbiguous: on a rack Validate rejects, Match does not guess.
func TestMatchAmbiguous(t *testing.T) {
	src := `cluster: {name: lab, talosVersion: v1.13.0, kubernetesVersion: 1.36.0, vip: 10.0.0.10, network: {subnet: 10.0.0.0/24, gateway: 10.0.0.1}}
machines:
  - {name: a, role: controlplane, address: 10.0.0.11/24, select: {serial: S1, mac: ["52:54:00:00:00:01"]}}
  - {name: b, role: worker, select: {serial: s1}}
  - {name: c, role: worker, select: {mac: ["52:54:00:00:00:01"]}}
`
	r, err := Load("rack.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	ps := r.Validate()
	for _, want := range []string{`serial "s1" of b is also selected by a`, "MAC 52:54:00:00:00:01 of c is also selected by a"} {
		if !strings.Contains(ps.Error(), want) {
			t.Errorf("Validate does not report %q:\n%s", want, ps.Error())
		}
	}

	_, err = r.Match(nil, "", "S1")
	if !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), "by serial: a, b") {
		t.Errorf("serial: err = %v, want ErrAmbiguous naming a and b", err)
	}
	_, err = r.Match(mustMAC(t, "52:54:00:00:00:01"), "", "")
	if !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), "by MAC: a, c") {
		t.Errorf("mac: err = %v, want ErrAmbiguous naming a and c", err)
	}
	// A serial that contradicts a's and b's leaves c alone at the MAC level.
	m, err := r.Match(mustMAC(t, "52:54:00:00:00:01"), "", "X")
	if err != nil || m.Name != "c" {
		t.Errorf("mac with another serial: %v, %v; want c (a and b have other serials)", m, err)
	}
}

// TestMatchExample: every machine of the example rack is found by its MAC.
func TestMatchExample(t *testing.T) {
	r, err := Load("rack.yaml", ExampleRack)
	if err != nil {
		t.Fatal(err)
	}
	for i := range r.Machines {
		want := &r.Machines[i]
		got, err := r.Match(mustMAC(t, want.Select.MAC[0]), "", "")
		if err != nil || got != want {
			t.Errorf("%s: Match = %v, %v", want.Name, got, err)
		}
	}
}
