package report

import (
	"errors"
	"reflect"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	r := Report{
		Name: "cp1", MAC: "52:54:00:00:00:01", ConfigSource: "http", ConfigSHA256: "ab",
		InstallDisk: "/dev/nvme0n1", SDUntouched: true, Result: ResultInstalled,
		InstallerImage: "factory.talos.dev/metal-installer/abc:v1.13.0", InstallerDigest: "sha256:0123",
		InstallerEndpoint: "http://10.99.0.1:5000", InstallerBytes: 19 << 20, InstallerAttempts: 1,
		Disks: []Disk{{Dev: "/dev/nvme0n1", Transport: "nvme", Size: 1 << 30, HasMeta: true}, {Dev: "/dev/sda", Transport: "sata"}},
	}
	log := []byte("[    1.0] booting\r\n" + Report{Result: ResultFailed}.Line() + "\r\nnoise\n" + r.Line() + "\r\n[    9.9] reboot: Power down\n")
	got, err := Find(log)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, r) {
		t.Fatalf("got %+v\nwant %+v", got, r)
	}
}

func TestBad(t *testing.T) {
	if _, err := Find([]byte("nothing here\n")); !errors.Is(err, ErrNoReport) {
		t.Fatalf("Find: %v", err)
	}
	for _, line := range []string{
		Prefix + `{"result":"maybe"}`,
		Prefix + `{"result":"installed","extra":1}`,
		Prefix + `{"result":"installed"} {}`,
		Prefix + `{"result":`,
		Prefix,
	} {
		if _, err := Parse(line); err == nil {
			t.Errorf("Parse(%q): no error", line)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(Report{Name: "n", Result: ResultBooted}.Line())
	f.Add(`{"result":"failed","disks":[{"dev":"/dev/sda"}]}`)
	f.Fuzz(func(t *testing.T, line string) {
		r, err := Parse(line)
		if err != nil {
			return
		}
		again, err := Parse(r.Line())
		if err != nil {
			t.Fatalf("reparse of %q: %v", r.Line(), err)
		}
		if !reflect.DeepEqual(again, r) {
			t.Fatalf("round trip changed %+v into %+v", r, again)
		}
	})
}
