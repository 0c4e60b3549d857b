package disks

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files in disks/testdata/")

// TestZeroJobGolden: the Job for a 12 GiB disk of formula.
func TestZeroJobGolden(t *testing.T) {
	j := ZeroJob(ZeroJobSpec{Node: "formula", Device: "sdb", Serial: "WD-OLD-1", Size: 12<<30 + 8<<20,
		Image: "ghcr.io/dotfile/rackboot:v1.0.0", Binary: "/rackboot"})
	got, err := yaml.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join("testdata", "zerojob.yaml")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (go test ./disks -run TestZeroJobGolden -update writes it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("ZeroJob differs from %s (rerun with -update if intended):\n%s", p, got)
	}
	// The ranges on the command line are WipePlan's, parsed back.
	var rs []Range
	args := j.Spec.Template.Spec.Containers[0].Args
	for i, a := range args {
		if a == "--range" {
			r, err := ParseRange(args[i+1])
			if err != nil {
				t.Fatal(err)
			}
			rs = append(rs, r)
		}
	}
	plan := WipePlan(12<<30 + 8<<20)
	if len(rs) != len(plan) {
		t.Fatalf("%d ranges, plan has %d", len(rs), len(plan))
	}
	for i := range rs {
		if rs[i].Offset != plan[i].Offset || rs[i].Length != plan[i].Length {
			t.Errorf("range %d: %v, plan %v", i, rs[i], plan[i])
		}
	}
}

// TestZeroJobWWID: for a disk without a serial the Job names it by its
// WWID, on the command line and in its annotations, and its name (a WWID
// is long, with spaces) is still a DNS label of its own.
func TestZeroJobWWID(t *testing.T) {
	const wwid = "t10.ATA     WDC WD40EFRX-68N32N0                    WD-WCC7K4NLX3JT"
	s := ZeroJobSpec{Node: "lailah", Device: "sdc", WWID: wwid, Size: 4 << 40, Image: "i", Binary: "/rackboot"}
	j := ZeroJob(s)
	args := j.Spec.Template.Spec.Containers[0].Args
	i := slices.Index(args, "--wwid")
	if i < 0 || args[i+1] != wwid || slices.Contains(args, "--serial") || !slices.Contains(args, "/host/dev/sdc") {
		t.Errorf("args %q: want --wwid %q, no --serial", args, wwid)
	}
	if a := j.Spec.Template.Annotations; a["rackboot.dotfile.dev/wwid"] != wwid || a["rackboot.dotfile.dev/serial"] != "" {
		t.Errorf("annotations %v", a)
	}
	other := s
	other.WWID = strings.Replace(wwid, "JT", "JU", 1)
	if n := j.Name; len(n) > 63 || !dnsLabel.MatchString(n) || n == ZeroJob(other).Name {
		t.Errorf("name %q (another disk's %q): want a distinct DNS label", n, ZeroJob(other).Name)
	}
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func TestZeroJobName(t *testing.T) {
	for _, tc := range []struct{ node, serial, want string }{
		{"formula", "WD-OLD-1", "rackboot-zero-formula-wd-old-1"},
		{"urban", "S4EVNX0N123456 ", "rackboot-zero-urban-s4evnx0n123456"},
		{"lailah", "WDC_WD80EFAX-68KNBN0_VAGX1234", "rackboot-zero-lailah-wdc-wd80efax-68knbn0-vagx1234"},
	} {
		if got := ZeroJobName(tc.node, tc.serial); got != tc.want {
			t.Errorf("ZeroJobName(%q, %q) = %q, want %q", tc.node, tc.serial, got, tc.want)
		}
	}
	long := ZeroJobName("a-very-long-machine-name-in-the-rack", "SAMSUNG_MZ7LH7T6HMLA-00005_S487NA0N900001")
	other := ZeroJobName("a-very-long-machine-name-in-the-rack", "SAMSUNG_MZ7LH7T6HMLA-00005_S487NA0N900002")
	if len(long) > 63 || long == other || strings.HasSuffix(long, "-") {
		t.Errorf("long names %q and %q", long, other)
	}
}

func TestParseRange(t *testing.T) {
	for in, ok := range map[string]bool{
		"0:4096": true, "1073741824:4096": true, "1:0": false, "-1:5": false, "5": false,
		"a:b": false, "9223372036854775807:1": false, "9223372036854775806:1": true, ":1": false,
	} {
		r, err := ParseRange(in)
		if (err == nil) != ok {
			t.Errorf("ParseRange(%q) = %v, %v", in, r, err)
		}
		if err == nil && FormatRange(r) != in {
			t.Errorf("FormatRange(ParseRange(%q)) = %q", in, FormatRange(r))
		}
	}
}
