package profiles

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckBMCAddress(t *testing.T) {
	for _, tc := range []struct {
		addr, proto string
		want        string // substring of the message; "" = fine
	}{
		{"10.0.1.11", "", ""},
		{"10.0.1.11:623", "ipmi", ""},
		{"ilo-r1.example.net", "redfish", ""},
		{"ilo-r1.example.net:8443", "auto", ""},
		{"[fe80::1]:623", "ipmi", ""},
		{"fe80::1", "ipmi", ""},
		{"https://10.0.1.11", "redfish", ""},
		{"https://10.0.1.11:8443/", "", ""},
		{"http://127.0.0.1:8000", "redfish", ""},
		{"https://10.0.1.11", "ipmi", "is a URL, but IPMI takes HOST[:PORT]: write 10.0.1.11"},
		{"https://10.0.1.11/redfish/v1", "", "has a path"},
		{"ftp://10.0.1.11", "", "is not a URL rackboot can use"},
		{"10.0.1.11:0", "", "not a port number"},
		{"10.0.1.11:http", "", "not a port number"},
		{":623", "", "has no host"},
		{"ilo r1", "", "neither an IP address nor a DNS name"},
		{"ILO_R1", "", "neither an IP address nor a DNS name"},
	} {
		got := checkBMCAddress(tc.addr, tc.proto)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("checkBMCAddress(%q, %q) = %q, want %q", tc.addr, tc.proto, got, tc.want)
		}
	}
}

// The password written in a rack file by mistake is refused and never
// repeated or kept.
func TestBMCPasswordInRackNotKept(t *testing.T) {
	ps := problemsOf(t, filepath.Join("testdata", "bad", "bmc-password.yaml"))
	if strings.Contains(ps.Error(), "hunter2") {
		t.Errorf("the problem repeats the password:\n%s", ps.Error())
	}
	data, err := os.ReadFile(filepath.Join("testdata", "bad", "bmc-password.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := Load("rack.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if b := r.Machine("w1").BMC; b == nil || !bool(b.Password) {
		t.Fatalf("bmc.password not noted: %+v", b)
	}
}

func TestBMCFirmware(t *testing.T) {
	r := &Rack{Machines: []Machine{
		{Name: "a", BMC: &BMC{Firmware: "bios"}},
		{Name: "b", BMC: &BMC{}},
		{Name: "c", BMC: &BMC{}},
	}, Lab: Lab{Firmware: map[string]string{"b": "bios", "a": "uefi"}}}
	for _, tc := range []struct {
		name, mode string
		guessed    bool
	}{{"a", "bios", false}, {"b", "bios", false}, {"c", "uefi", true}} {
		mode, guessed := r.BMCFirmware(r.Machine(tc.name))
		if mode != tc.mode || guessed != tc.guessed {
			t.Errorf("%s: %s %t, want %s %t", tc.name, mode, guessed, tc.mode, tc.guessed)
		}
	}
}
