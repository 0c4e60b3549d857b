package profiles

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/config/types/v1alpha1"
)

// problemsOf loads a rack file and validates it, returning the loader's
// problems when it cannot be loaded.
func problemsOf(t *testing.T, path string) Problems {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := Load(filepath.Base(path), data)
	if err != nil {
		var ps Problems
		if !errors.As(err, &ps) {
			t.Fatalf("load %s: %v is not Problems", path, err)
		}
		return ps
	}
	return r.Validate()
}

// badCase is a rack file in testdata/bad and the problem it must give.
type badCase struct {
	file    string
	at      string // line:col as printed
	warning bool
	msg     string // a substring of the message
}

func TestBadRacks(t *testing.T) {
	tests := []badCase{
		{"vip-outside-subnet", "6:8", false, "vip 10.0.1.10 is outside the subnet 10.0.0.0/24: pick a free address in 10.0.0.0/24, e.g. 10.0.0.2"},
		{"vip-is-broadcast", "6:8", false, "vip 10.0.0.255 is the subnet's broadcast address"},
		{"gateway-outside", "9:14", false, "gateway 10.1.0.1 is outside the subnet 10.0.0.0/24"},
		{"subnet-host-bits", "8:13", false, "has host bits set: write 10.0.0.0/24"},
		{"talos-version", "4:17", false, "is not of the form vX.Y.Z: write v1.13.0"},
		{"duplicate-mac", "20:13", false, "MAC 52:54:00:00:00:01 of w1 is also selected by cp1"},
		{"bad-mac", "20:13", false, `MAC "52:54:00:00:02" is not a MAC address: write six bytes`},
		{"unknown-field", "16:5", false, `unknown field "adress" in machines[0]: write one of address,`},
		{"wrong-type", "10:18", false, "cluster.network.nameservers must be a list"},
		{"tab-indent", "17:1", false, "tab character"},
		{"no-controlplane", "12:3", false, "the rack has no control plane: give one machine (or three) role: controlplane"},
		{"bad-role", "13:11", false, `role "master" of cp1 is not known: write controlplane or worker`},
		{"cp-dhcp", "16:14", false, "control plane cp1 has no static address: talosconfig endpoints and the etcd bootstrap need it before it boots; write address: 10.0.0.2/24"},
		{"address-is-vip", "16:14", false, "address 10.0.0.10/24 of cp1 is the cluster VIP"},
		{"address-no-prefix", "16:14", false, `address "10.0.0.11" of cp1 has no prefix length: write 10.0.0.11/24`},
		{"bad-hostname", "17:11", false, `machine name "Worker_1" is not a valid hostname`},
		{"duplicate-name", "17:11", false, `machine name "cp1" is used twice`},
		{"no-selector", "20:7", false, "w1 has no selector"},
		{"duplicate-serial", "29:15", false, `serial "cz1234" of w3 is also selected by w2`},
		{"duplicate-uuid", "28:13", false, "uuid 44454c4c-4200-1035-8052-b4c04f4e4e32 of w3 is also selected by w2"},
		{"placeholder-uuid", "24:13", false, "is a placeholder"},
		{"no-mac", "24:7", true, "is selected without a MAC"},
		{"ceph-matches-nvme", "21:16", false, "matches nvme0n1, the name of the NVMe install disk"},
		{"ceph-unanchored", "21:16", true, `cephDisks "sd." is not anchored`},
		{"ceph-bad-regexp", "21:16", false, "is not a regular expression (missing closing ]"},
		{"install-type-sata", "22:13", false, `install disk type "sata" is not one Talos knows (nvme, ssd, hdd, sd)`},
		{"install-type-sd", "22:13", true, "type sd means SD/MMC cards (mmcblk*), not sd* disks"},
		{"bad-label", "22:24", false, `label key "rack position" of w1 is not a Kubernetes label key`},
		{"bad-taint", "23:17", false, `taint effect "NoScheduling" of w1 is not known: write NoSchedule, PreferNoSchedule, NoExecute`},
		{"bad-arch", "21:11", false, `arch "x86_64" of w1 is not supported: write amd64 or arm64`},
		{"bad-localboot", "21:16", false, `localBoot "grub" of w1 is not known`},
		{"schematic-both", "22:11", false, "schematic has both an id and extensions/kernelArgs"},
		{"schematic-short-id", "22:11", false, `schematic id "376567988ad3" is not 64 lower-case hex digits`},
		{"lab-firmware-unknown", "23:10", false, `lab.firmware names "cp2", which is not a machine in the rack: write one of cp1, w1`},
		{"lab-firmware-value", "23:9", false, `firmware "efi" for w1 is not known: write bios or uefi`},
		{"lab-size", "22:13", false, `size "2GB" is not a disk size`},
		{"even-controlplanes", "12:3", true, "2 control planes cannot lose either etcd member"},
		{"second-document", "22:1", false, "a second YAML document starts here"},
		{"no-rackboot", "8:5", true, "cluster.network.rackboot is missing, so the configs carry no EventSinkConfig or KmsgLogConfig and no registry mirror"},
		{"offline-no-rackboot", "7:12", false, "offline: true needs cluster.network.rackboot: an offline rack pulls every image from rackboot's registry mirror, and without rackboot's address the configs name no mirror, so no machine could pull its installer or Kubernetes images; write rackboot: <this computer's address on the rack network> under cluster.network, e.g. rackboot: 10.0.0.2, or remove offline: true"},
		{"rackboot-outside", "11:15", false, "rackboot 10.0.1.2 is outside the subnet 10.0.0.0/24"},
		{"two-macs", "16:12", true, "cp1 lists 2 MACs, and its config finds the rack NIC (for its address and the VIP) by the first only, 52:54:00:00:00:01"},
		{"cmdline-too-long", "13:17", false, "the netboot kernel command line of cp1 would be up to"},
		{"wrong-scalar-type", "21:31", false, "cannot unmarshal !!str `big` into int"},
		{"bmc-protocol", "23:17", false, `BMC protocol "redfis" of w1 is not known: write ipmi, redfish, auto`},
		{"bmc-password", "24:17", false, "a BMC password does not belong in the rack file (it is shared and committed): remove this line and run `rackboot bmc set-password w1`, or set RACKBOOT_BMC_PASSWORD_W1"},
		{"bmc-no-user", "22:7", false, "the bmc of w1 has no user: write user: <the BMC login>"},
		{"bmc-address", "22:16", false, `BMC address "10.0.1.12:99999" of w1 has port "99999", which is not a port number`},
		{"bmc-shared", "22:20", true, "cp1 and w1 have the same BMC address 10.0.1.12, so they would power the same server"},
		{"bmc-url-ipmi", "22:16", false, "is a URL, but IPMI takes HOST[:PORT]: write 10.0.1.12, or protocol: redfish"},
		{"database-engine", "22:11", false, `database engine "mysql" is not known: write cockroachdb or postgres`},
		{"database-app-name", "23:13", false, `database app name "Billing_App" is not a DNS label`},
		{"database-app-twice", "25:13", false, "database app billing is given twice (also database.apps[0])"},
		{"database-no-namespace", "23:7", false, "database app billing has no namespace: write namespace:"},
		{"database-reserved", "24:13", false, `database app name "postgres" is kept by the database engine for itself`},
	}

	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".yaml")
		if !slices.ContainsFunc(tests, func(tc badCase) bool { return tc.file == name }) {
			t.Errorf("%s has no case in TestBadRacks", f)
		}
	}

	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			ps := problemsOf(t, filepath.Join("testdata", "bad", tc.file+".yaml"))
			if tc.file != "no-mac" {
				// Racks that select by UUID or serial to test those also
				// get the no-MAC warning (case no-mac).
				ps = slices.DeleteFunc(ps, func(p Problem) bool { return strings.Contains(p.Msg, "is selected without a MAC") })
			}
			if tc.file != "no-rackboot" {
				// The bad racks leave rackboot: out so that their line
				// numbers stay those of the mistakes (case no-rackboot).
				ps = slices.DeleteFunc(ps, func(p Problem) bool { return strings.Contains(p.Msg, "cluster.network.rackboot is missing") })
			}
			prefix := fmt.Sprintf("%s.yaml:%s: ", tc.file, tc.at)
			kind := "error: "
			if tc.warning {
				kind = "warning: "
			}
			found := false
			for _, p := range ps {
				if strings.HasPrefix(p.String(), prefix+kind) && strings.Contains(p.Msg, tc.msg) {
					found = true
				}
			}
			if !found {
				t.Errorf("want %s%s...%s...; got:\n%s", prefix, kind, tc.msg, ps.Error())
			}
			// One mistake, one message; an unknown role also leaves the
			// rack without a control plane.
			n := 1
			if tc.file == "bad-role" {
				n = 2
			}
			if len(ps) != n {
				t.Errorf("%d problems, want %d (one mistake, one message):\n%s", len(ps), n, ps.Error())
			}
			if tc.warning && ps.Errors() {
				t.Errorf("a warning-only mistake gave errors:\n%s", ps.Error())
			}
			if !tc.warning && !ps.Errors() {
				t.Errorf("Errors() = false for:\n%s", ps.Error())
			}
		})
	}
}

func TestGoodRackHasNoProblems(t *testing.T) {
	if ps := problemsOf(t, "testdata/good.yaml"); len(ps) != 0 {
		t.Errorf("good.yaml:\n%s", ps.Error())
	}
}

func TestExampleRackWarnsOnlyAboutTwoControlPlanes(t *testing.T) {
	r, err := Load("rack.yaml", ExampleRack)
	if err != nil {
		t.Fatal(err)
	}
	ps := r.Validate()
	if ps.Errors() {
		t.Fatalf("the example rack has errors:\n%s", ps.Error())
	}
	at := fmt.Sprintf("rack.yaml:%d:3: warning:", firstMachineLine(t, ExampleRack))
	if len(ps) != 1 || !strings.Contains(ps[0].Msg, "2 control planes") || !strings.HasPrefix(ps[0].String(), at) {
		t.Errorf("want one warning about 2 control planes at %s, got:\n%s", at, ps.Error())
	}
}

// firstMachineLine is the line of the first "- " under machines: in a rack
// file, where problems about the machine list point.
func firstMachineLine(t *testing.T, data []byte) int {
	t.Helper()
	lines := strings.Split(string(data), "\n")
	i := slices.Index(lines, "machines:")
	for j := i + 1; i >= 0 && j < len(lines); j++ {
		if strings.HasPrefix(lines[j], "  - ") {
			return j + 1
		}
	}
	t.Fatal("no machines: list")
	return 0
}

// TestValidateReportsEverythingAtOnce puts many mistakes into one rack and
// expects each of them, in file order.
func TestValidateReportsEverythingAtOnce(t *testing.T) {
	src := `cluster:
  name: Lab_1
  talosVersion: 1.13
  kubernetesVersion: 1.36.0
  vip: 10.0.0.1
  network:
    subnet: 10.0.0.0/24
    gateway: 10.0.0.1
    nameservers: [dns.example]
  cephDisks: sd
machines:
  - name: a
    role: controlplane
    select: {mac: ["zz"]}
    address: 10.0.0.20/16
  - name: a
    role: worker
    select: {}
lab:
  machines: 5
`
	r, err := Load("r.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	ps := r.Validate()
	want := []string{
		`r.yaml:2:9: error: cluster name "Lab_1" is not a DNS label`,
		`r.yaml:3:17: error: talosVersion "1.13" is not of the form vX.Y.Z`,
		`r.yaml:5:8: error: vip 10.0.0.1 is the gateway`,
		`r.yaml:9:19: error: nameserver "dns.example" is not an IP address`,
		`r.yaml:10:14: warning: cephDisks "sd" is not anchored`,
		`r.yaml:14:20: error: MAC "zz" is not a MAC address`,
		`r.yaml:15:14: error: address 10.0.0.20/16 of a has prefix length /16 but the subnet is 10.0.0.0/24: write 10.0.0.20/24`,
		`r.yaml:16:11: error: machine name "a" is used twice`,
		`r.yaml:18:13: error: a has no selector`,
		`r.yaml:20:13: error: lab.machines is 5 but the rack has 2 machines`,
	}
	got := strings.Split(ps.Error(), "\n")
	for _, w := range want {
		if !slices.ContainsFunc(got, func(g string) bool { return strings.HasPrefix(g, w) }) {
			t.Errorf("missing %q", w)
		}
	}
	for i := 1; i < len(ps); i++ {
		a, b := ps[i-1].Pos, ps[i].Pos
		if a.Line > b.Line || (a.Line == b.Line && a.Col > b.Col) {
			t.Errorf("problems out of file order: %s before %s", ps[i-1], ps[i])
		}
	}
	if t.Failed() {
		t.Logf("got:\n%s", ps.Error())
	}
}

// TestValidateWithoutPositions: a rack built in code (no file) still
// validates, every problem pointing at 1:1.
func TestValidateWithoutPositions(t *testing.T) {
	r := &Rack{Cluster: Cluster{Name: "x"}}
	ps := r.Validate()
	if !ps.Errors() {
		t.Fatal("an empty rack validated")
	}
	for _, p := range ps {
		if p.Pos != (Pos{1, 1}) {
			t.Errorf("%s: want 1:1", p)
		}
	}
}

// TestInstallDiskTypesAreTalos checks the list of install disk types against
// Talos's own selector: each type we accept builds a disk match expression,
// the transports we turn away do not.
func TestInstallDiskTypesAreTalos(t *testing.T) {
	expr := func(typ string) error {
		ic := &v1alpha1.InstallConfig{InstallDiskSelector: &v1alpha1.InstallDiskSelector{Type: v1alpha1.InstallDiskType(typ)}}
		_, err := ic.DiskMatchExpression()
		return err
	}
	for _, typ := range installDiskTypes() {
		if err := expr(typ); err != nil {
			t.Errorf("we accept type %q but Talos says %v", typ, err)
		}
	}
	for _, typ := range []string{"sata", "virtio", "scsi", "usb", "NVME", "mmc"} {
		if err := expr(typ); err == nil {
			t.Errorf("we refuse type %q but Talos accepts it", typ)
		}
		r := &Rack{Cluster: Cluster{InstallDisk: DiskRule{Type: typ}}}
		c := &checker{r: r}
		c.diskRule("cluster.installDisk", r.Cluster.InstallDisk)
		if !c.ps.Errors() {
			t.Errorf("type %q: no error", typ)
		}
	}
}

// TestDiskSizeAgreesWithTalos checks our size check against Talos's parser.
func TestDiskSizeAgreesWithTalos(t *testing.T) {
	for _, s := range []string{">= 100GB", "<=2TB", "== 4GiB", "100", "1.5 TB", "> 512 MB", "4g", "", "big", ">= GB", "=> 10GB", "10 XB", "~ 4GB"} {
		var m v1alpha1.InstallDiskSizeMatcher
		talosErr := m.UnmarshalYAML(func(v any) error { *(v.(*string)) = s; return nil })
		ours := diskSizeRE.MatchString(strings.TrimSpace(s))
		if ours != (talosErr == nil) {
			t.Errorf("size %q: we say ok=%v, Talos says %v", s, ours, talosErr)
		}
	}
}

func TestNormalizeMAC(t *testing.T) {
	tests := []struct{ in, want string }{
		{"52:54:00:AB:cd:01", "52:54:00:ab:cd:01"},
		{"52-54-00-ab-cd-01", "52:54:00:ab:cd:01"},
		{"5254.00ab.cd01", "52:54:00:ab:cd:01"},
		{"525400ABCD01", "52:54:00:ab:cd:01"},
		{" 52:54:00:ab:cd:01 ", "52:54:00:ab:cd:01"},
		{"52:54:00:ab:cd", ""},
		{"00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", ""}, // IPoIB: not Ethernet
		{"52:54:00:ab:cd:0g", ""},
		{"", ""},
	}
	for _, tc := range tests {
		hw, err := NormalizeMAC(tc.in)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("NormalizeMAC(%q) = %s, want an error", tc.in, hw)
		case tc.want != "" && (err != nil || hw.String() != tc.want):
			t.Errorf("NormalizeMAC(%q) = %s, %v; want %s", tc.in, hw, err, tc.want)
		}
	}
}

func TestParseLabSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"4G", 4 << 30}, {"512m", 512 << 20}, {"1T", 1 << 40}, {"4096", 4096}, {"10K", 10 << 10}, {"7B", 7},
		{"2GB", -1}, {"1.5G", -1}, {"0", -1}, {"G", -1}, {"-1G", -1}, {"99999999999999999999", -1}, {"16777216T", -1},
	}
	for _, tc := range tests {
		got, err := ParseLabSize(tc.in)
		switch {
		case tc.want < 0 && err == nil:
			t.Errorf("ParseLabSize(%q) = %d, want an error", tc.in, got)
		case tc.want >= 0 && (err != nil || got != tc.want):
			t.Errorf("ParseLabSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestAnchored(t *testing.T) {
	tests := []struct {
		expr string
		want bool
	}{
		{`^sd[a-z]+$`, true},
		{`\Asd[a-z]+\z`, true},
		{`^(sda|sdb)$`, true},
		{`^sda|sdb$`, false},
		{`^sd.`, false},
		{`sd[a-z]+$`, false},
		{`^$`, true},
		{`sd`, false},
	}
	for _, tc := range tests {
		if got := anchored(tc.expr); got != tc.want {
			t.Errorf("anchored(%q) = %v, want %v", tc.expr, got, tc.want)
		}
	}
}

func TestSuggestLabel(t *testing.T) {
	tests := []struct{ in, want string }{
		{"Worker_1", "worker-1"}, {"--a--b--", "a-b"}, {"___", "node-1"}, {"GPU Node #2", "gpu-node-2"},
	}
	for _, tc := range tests {
		if got := suggestLabel(tc.in); got != tc.want {
			t.Errorf("suggestLabel(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestLoadMergeKeys: YAML merge keys (<<: *defaults) are valid YAML that the
// decoder applies, so the loader's field check must accept them, check the
// merged fields, and not loop on a mapping that merges itself.
func TestLoadMergeKeys(t *testing.T) {
	src := `cluster:
  name: lab
  talosVersion: v1.13.0
  kubernetesVersion: 1.36.0
  vip: 10.0.0.10
  network: {subnet: 10.0.0.0/24, gateway: 10.0.0.1, nameservers: [10.0.0.1], rackboot: 10.0.0.2}
machines:
  - &worker
    name: w1
    role: worker
    arch: amd64
    labels: &labels {example.com/rack: a}
    select: {mac: ["52:54:00:00:00:01"]}
  - <<: *worker
    name: w2
    labels: {<<: *labels, example.com/slot: "2"}
    select: {mac: ["52:54:00:00:00:02"]}
  - name: cp1
    role: controlplane
    address: 10.0.0.11/24
    select: {mac: ["52:54:00:00:00:03"]}
`
	r, err := Load("rack.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	w2 := r.Machine("w2")
	if w2 == nil || w2.Role != RoleWorker || w2.Arch != "amd64" || w2.Labels["example.com/rack"] != "a" || w2.Labels["example.com/slot"] != "2" {
		t.Fatalf("w2 = %+v", w2)
	}
	if p := r.PosOf("machines[1].name"); p != (Pos{15, 11}) {
		t.Errorf("w2's own name at %v, want 15:11", p)
	}
	if p := r.PosOf("machines[1].role"); p != (Pos{10, 11}) {
		t.Errorf("w2's merged role at %v, want 10:11 (where the merged value stands)", p)
	}
	if ps := r.Validate(); len(ps) != 0 {
		t.Errorf("problems:\n%s", ps.Error())
	}

	for _, bad := range []struct{ src, at, msg string }{
		{"cluster: &c\n  <<: *c\n  name: x\n", "", "contains itself"},
		{"machines:\n  - &m {name: a, rol: worker}\n  - <<: *m\n", "2:18", `unknown field "rol" in machines[1]`},
		{"machines:\n  - <<: [a]\n", "2:10", "must merge a mapping"},
	} {
		_, err := Load("rack.yaml", []byte(bad.src))
		var ps Problems
		if !errors.As(err, &ps) || !strings.Contains(ps.Error(), "rack.yaml:"+bad.at) || !strings.Contains(ps.Error(), bad.msg) {
			t.Errorf("Load(%q) = %v; want %s ...%s", bad.src, err, bad.at, bad.msg)
		}
	}
}

// TestCephAgainstInstallDisk: the Ceph filter is checked against the names
// the install disk can have, with the defaults filled in.
func TestCephAgainstInstallDisk(t *testing.T) {
	const head = "cluster:\n  name: lab\n  talosVersion: v1.13.0\n  kubernetesVersion: 1.36.0\n  vip: 10.0.0.10\n" +
		"  network: {subnet: 10.0.0.0/24, gateway: 10.0.0.1, nameservers: [10.0.0.1], rackboot: 10.0.0.2}\n" // lines 1-6
	const machine = "machines:\n  - name: cp1\n    role: controlplane\n    address: 10.0.0.11/24\n" +
		"    select: {mac: [\"52:54:00:00:00:01\"]}\n" // 5 lines
	tests := []struct {
		cluster, machine string // extra lines under cluster: (from line 7) and under the machine
		at               string
		warning          bool
		msg              string
	}{
		{"  installDisk: {type: ssd}\n", "", "7:16", true, `cephDisks "^sd[a-z]+$" matches sda, which the install disk (type ssd) may be`},
		{"  installDisk: {type: ssd, serial: S1}\n", "", "", false, ""},
		{"", "    installDisk: {type: hdd}\n", "11:18", true, `cephDisks "^sd[a-z]+$" matches sda, which the install disk (type hdd) may be`},
		{"  cephDisks: ^(sd[a-z]+|mmcblk[0-9])$\n", "    installDisk: {type: sd}\n", "12:18", false, "matches mmcblk0, the name of the SD/MMC install disk"},
		{"", "    cephDisks: ^nvme[0-9]n1$\n", "11:16", false, "matches nvme0n1, the name of the NVMe install disk"},
		{"", "    cephDisks: ^nvme1n1$\n", "11:16", true, "with several NVMe disks Talos installs to the first that matches type nvme"},
		{"", "    cephDisks: ^nvme1n1$\n    installDisk: {type: nvme, model: \"Samsung*\"}\n", "", false, ""},
		{"", "    cephDisks: ^sd[b-z]$\n    installDisk: {type: ssd, serial: X1}\n", "", false, ""},
	}
	for _, tc := range tests {
		src := head + tc.cluster + strings.Replace(machine, "    select:", tc.machine+"    select:", 1)
		r, err := Load("rack.yaml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		ps := r.Validate()
		if tc.msg == "" {
			if len(ps) != 0 {
				t.Errorf("%s\nwant no problem, got:\n%s", src, ps.Error())
			}
			continue
		}
		kind := "error"
		if tc.warning {
			kind = "warning"
		}
		want := 1
		if strings.Contains(src, "type: sd}") {
			want = 2 // and the warning that sd means SD cards
		}
		if len(ps) != want || !slices.ContainsFunc(ps, func(p Problem) bool {
			return strings.HasPrefix(p.String(), "rack.yaml:"+tc.at+": "+kind+": ") && strings.Contains(p.Msg, tc.msg)
		}) {
			t.Errorf("%s\nwant rack.yaml:%s: %s: ...%s; got:\n%s", src, tc.at, kind, tc.msg, ps.Error())
		}
	}
}

// TestInstallDiskNotes: what each install-disk rule needs is said once per
// rule, where it is written, and is not a Validate problem.
func TestInstallDiskNotes(t *testing.T) {
	r, err := Load("rack.yaml", ExampleRack)
	if err != nil {
		t.Fatal(err)
	}
	ns := r.Notes()
	if len(ns) != 1 || !strings.HasPrefix(ns[0].String(), fmt.Sprintf("rack.yaml:%d:", r.PosOf("cluster.installDisk").Line)) ||
		!strings.Contains(ns[0].Msg, "install disk type nvme needs an NVMe drive (transport nvme): a machine without one does not install") ||
		!strings.Contains(ns[0].Msg, `"no disks matched the expression"`) {
		t.Errorf("notes of the example rack:\n%s", ns.Error())
	}
	for _, p := range r.Validate() {
		if strings.Contains(p.Msg, "needs an NVMe drive") {
			t.Errorf("Validate repeats the note: %s", p)
		}
	}

	r.Machines[0].InstallDisk = DiskRule{Type: "ssd", Serial: "S1", Size: ">= 100GB"}
	ns = r.Notes()
	if len(ns) != 2 || !strings.Contains(ns[0].Msg, "install disk type nvme") ||
		!strings.Contains(ns[1].Msg, "formula: install disk type ssd needs a non-rotational disk (SATA/SAS SSD or NVMe; the first in name order) with serial S1, size >= 100GB") {
		t.Errorf("notes with a machine's own rule:\n%s", ns.Error())
	}
}

// TestRackbootAddressClashes: rackboot's address is neither the VIP nor a
// machine's, and is skipped when suggesting free addresses.
func TestRackbootAddressClashes(t *testing.T) {
	data, err := os.ReadFile("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ from, to, want string }{
		{"vip: 10.0.0.10", "vip: 10.0.0.2", "vip 10.0.0.2 is rackboot's own address"},
		{"address: 10.0.0.11/24", "address: 10.0.0.2/24", "address 10.0.0.2/24 of cp1 is rackboot's own address (cluster.network.rackboot): write a free address, e.g. 10.0.0.3/24"},
		{"rackboot: 10.0.0.2", "rackboot: laptop", `rackboot "laptop" is not an IP address`},
		{"rackboot: 10.0.0.2", "rackboot: 10.0.0.1", "rackboot 10.0.0.1 is the gateway"},
	} {
		r, err := Load("rack.yaml", []byte(strings.Replace(string(data), tc.from, tc.to, 1)))
		if err != nil {
			t.Fatal(err)
		}
		ps := r.Validate()
		if !ps.Errors() || !slices.ContainsFunc(ps, func(p Problem) bool { return strings.Contains(p.Msg, tc.want) }) {
			t.Errorf("%s → %s: want an error %q, got:\n%s", tc.from, tc.to, tc.want, ps.Error())
		}
	}
}

// TestOfflineRack: cluster.offline loads as a bool, a rack with rackboot
// and offline: true validates clean (its configs pass Talos's metal
// validation with skipFallback on every mirror), and a value that is not
// a bool is an error at its place.
func TestOfflineRack(t *testing.T) {
	data, err := os.ReadFile("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	offline := strings.Replace(string(data), "  vip: 10.0.0.10\n", "  vip: 10.0.0.10\n  offline: true\n", 1)
	r, err := Load("rack.yaml", []byte(offline))
	if err != nil {
		t.Fatal(err)
	}
	if !r.Cluster.Offline {
		t.Fatal("cluster.offline: true did not load")
	}
	if ps := r.Validate(); len(ps) != 0 {
		t.Errorf("offline rack with rackboot:\n%s", ps.Error())
	}
	_, err = Load("rack.yaml", []byte(strings.Replace(offline, "offline: true", "offline: always", 1)))
	var ps Problems
	if !errors.As(err, &ps) || len(ps) != 1 || !strings.HasPrefix(ps[0].String(), "rack.yaml:9:12: error:") || !strings.Contains(ps[0].Msg, "into bool") {
		t.Errorf("offline: always: want one error at 9:12 about a bool, got %v", err)
	}
}
