package apid

import (
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"strconv"
	"strings"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/role"
)

func TestBusPath(t *testing.T) {
	for link, want := range map[string]string{
		"../devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda": "/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0",
		"../devices/virtual/block/loop0":                                              "/virtual",
		"sda":                                                                         "",
	} {
		if got := busPath(link); got != want {
			t.Errorf("busPath(%q) = %q, want %q", link, got, want)
		}
	}
}

func TestAuthorize(t *testing.T) {
	for _, tc := range []struct {
		method      string
		maintenance bool
		orgs        []string
		ok          bool
	}{
		{"/machine.MachineService/ApplyConfiguration", true, nil, true},
		{"/cosi.resource.State/List", true, nil, true},
		{"/machine.MachineService/Upgrade", true, nil, false},
		{"/machine.MachineService/Upgrade", false, []string{"os:admin"}, true},
		{"/machine.MachineService/Upgrade", false, []string{"os:operator"}, false},
		{"/machine.LifecycleService/Upgrade", false, []string{"os:reader"}, false},
		{"/machine.MachineService/Reset", false, []string{"os:reader", "os:admin"}, true},
		{"/machine.MachineService/Reboot", false, []string{"os:operator"}, true},
		{"/machine.MachineService/Version", false, []string{"os:reader"}, true},
		{"/machine.MachineService/Version", false, []string{"system:masters"}, false},
		{"/machine.MachineService/Version", false, nil, false},
		{"/machine.MachineService/EtcdMemberList", false, []string{"os:etcd:backup"}, true},
		{"/machine.MachineService/Shutdown", false, []string{"os:operator"}, false}, // no rule: admin
		{"/machine.MachineService/Shutdown", false, []string{"os:admin"}, true},
	} {
		err := Authorize(tc.method, Roles(tc.maintenance, tc.orgs))
		if (err == nil) != tc.ok {
			t.Errorf("%s maintenance=%v %v: %v, want ok=%v", tc.method, tc.maintenance, tc.orgs, err, tc.ok)
		}
	}
	if !Roles(true, []string{"os:admin"}).Includes(role.Reader) || Roles(true, []string{"os:admin"}).Includes(role.Admin) {
		t.Error("maintenance mode: the reader role only, whatever the certificate says")
	}
}

func TestCheckReset(t *testing.T) {
	inv := Inventory{}
	inv.Disks = append(inv.Disks, disk("/dev/nvme0n1", false), disk("/dev/sda", false), disk("/dev/vda", true))
	for _, tc := range []struct {
		req  *machine.ResetRequest
		want string
	}{
		{&machine.ResetRequest{Graceful: true}, ""},
		{&machine.ResetRequest{Mode: machine.ResetRequest_USER_DISKS, UserDisksToWipe: []string{"/dev/sda"}}, ""},
		{&machine.ResetRequest{Mode: machine.ResetRequest_SYSTEM_DISK, UserDisksToWipe: []string{"/dev/sda"}}, "wipe mode SYSTEM_DISK doesn't support UserDisksToWipe"},
		{&machine.ResetRequest{Mode: machine.ResetRequest_USER_DISKS, UserDisksToWipe: []string{"/dev/sdz"}}, "device /dev/sdz wasn't found"},
		{&machine.ResetRequest{Mode: machine.ResetRequest_ALL, UserDisksToWipe: []string{"/dev/vda"}}, "device /dev/vda is readonly"},
		{&machine.ResetRequest{Mode: machine.ResetRequest_ALL, UserDisksToWipe: []string{"/dev/nvme0n1"}}, "device /dev/nvme0n1 is the system disk"},
		{&machine.ResetRequest{Mode: machine.ResetRequest_USER_DISKS, SystemPartitionsToWipe: []*machine.ResetPartitionSpec{{Label: "STATE"}}}, "wipe mode USER_DISKS doesn't support SystemPartitionsToWipe"},
	} {
		err := checkReset(tc.req, inv, "/dev/nvme0n1")
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%v: %v, want %q", tc.req, err, tc.want)
		}
	}
}

func TestParseMAC(t *testing.T) {
	for in, want := range map[string]string{
		"52:54:00:12:34:56": "52:54:00:12:34:56",
		"00:00:00:00:00:00": "00:00:00:00:00:00",
		"52:54:00:12:34":    "52:54:00:12:34",
		"":                  "",
		"52:54:0:12:34:56":  "",
		"zz:54:00:12:34:56": "",
	} {
		got, err := parseMAC(in)
		if want == "" {
			if err == nil {
				t.Errorf("parseMAC(%q) = %v, want an error", in, got)
			}
			continue
		}
		if err != nil || got.String() != want {
			t.Errorf("parseMAC(%q) = %v, %v", in, got, err)
		}
	}
}

// FuzzSysfsLines: the sysfs line parsers never panic, and what they accept
// prints back to the same line.
func FuzzSysfsLines(f *testing.F) {
	for _, s := range []string{"52:54:00:12:34:56", "0:0:0:0", "25165824", "0x1003", "up", "", "1:2:3", "99999999999999999999:0:0:0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if mac, err := parseMAC(s); err == nil && mac.String() != strings.ToLower(s) {
			t.Errorf("parseMAC(%q) prints %q", s, mac.String())
		}
		if h, ok := scsiHost(s); ok {
			// The first field, leading zeros dropped ("00" is host 0).
			first, _, _ := strings.Cut(s, ":")
			if first = strings.TrimLeft(first, "0"); first == "" {
				first = "0"
			}
			if first != strconv.Itoa(h) {
				t.Errorf("scsiHost(%q) = %d", s, h)
			}
		}
		if v, err := parseUint(s); err == nil && strconv.FormatUint(v, 10) != strings.TrimLeft(strings.TrimSpace(s), "+0") && v != 0 {
			t.Errorf("parseUint(%q) = %d", s, v)
		}
		_ = parseFlags(s)
		_ = parseOperState(s)
	})
}

// TestATASerial: for transport "ata" (a controller whose SCSI host is not
// "ahci"), Talos takes ata_id's ID_SERIAL, model_serial; the stand-in
// builds it from the VPD pages libata exposes in sysfs. The tree holds an
// ata_piix host, its serial pages space-padded as libata writes them.
func TestATASerial(t *testing.T) {
	disks, err := ReadDisks("testdata/sysfs-ata")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, d := range disks {
		got[d.DevPath] = d.Serial + " " + d.Transport
	}
	want := map[string]string{
		"/dev/sda": "QEMU_HARDDISK_QM00005 ata",                // model from the ATA Information page
		"/dev/sdb": "QEMU_HARDDISK_lab_sata_1 ata",             // inner spaces "_", padding dropped; model from INQUIRY (shorter than 16)
		"/dev/sdc": " ata",                                     // INQUIRY model cut at 16 characters, no ATA page: no serial rather than a wrong one
		"/dev/sdd": "WDC_WD40EFRX-68N32N0_WD-WCC7K7654321 ata", // the whole model from the ATA Information page
		"/dev/sde": " ata",                                     // no serial page
	}
	if len(got) != len(want) {
		t.Errorf("disks %v, want %v", got, want)
	}
	for dev, w := range want {
		if got[dev] != w {
			t.Errorf("%s: %q, want %q", dev, got[dev], w)
		}
	}

	// The AHCI disk of the maintenance tree has a serial page, but Talos
	// runs no udev helper for transport "sata": no serial.
	disks, err = ReadDisks("testdata/sysfs")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		if d.DevPath == "/dev/sda" && (d.Transport != "sata" || d.Serial != "") {
			t.Errorf("AHCI disk: serial %q transport %q, want none and sata", d.Serial, d.Transport)
		}
	}
}

func TestParseVPD(t *testing.T) {
	for _, tc := range []struct {
		page []byte
		want string
		ok   bool
	}{
		{append([]byte{0, 0x80, 0, 20}, "QM00005             "...), "QM00005             ", true},
		{append([]byte{0, 0x80, 0, 4}, "ABCDEFGH"...), "ABCD", true}, // page length bounds the serial
		{append([]byte{0, 0x80, 0, 40}, "short"...), "short", true},  // page cut short
		{append([]byte{0, 0x80, 0x01, 0x00}, "x"...), "x", true},     // length big-endian over bytes 2-3
		{append([]byte{0, 0x83, 0, 4}, "ABCD"...), "", false},        // another page
		{[]byte{0, 0x80, 0}, "", false},
		{nil, "", false},
	} {
		got, ok := parseVPDSerial(tc.page)
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseVPDSerial(%q) = %q, %v, want %q, %v", tc.page, got, ok, tc.want, tc.ok)
		}
	}
	if m, ok := parseVPDATAModel(make([]byte, 100)); ok || m != "" {
		t.Errorf("parseVPDATAModel of a short page: %q, %v", m, ok)
	}
	for in, want := range map[string]string{
		"  QEMU HARDDISK   ": "QEMU_HARDDISK",
		"a\t\tb":             "a_b",
		"a/b*c":              "a_b_c",
		`x\x20y`:             `x\x20y`, // udev's own escape kept
		"ok\x00junk":         "ok",
		"naïve":              "naïve",
		"bad\xff":            "bad_", // not UTF-8
	} {
		if got := udevClean(in); got != want {
			t.Errorf("udevClean(%q) = %q, want %q", in, got, want)
		}
	}
	if got := ataIDSerial("QEMU HARDDISK", "   "); got != "QEMU_HARDDISK" {
		t.Errorf("ataIDSerial with no serial = %q, want the model", got)
	}
}

// FuzzVPDPages: the VPD page parsers never panic; a serial page's serial
// is never longer than its page length, an ATA model is 40 characters,
// and udev's cleaning leaves no whitespace and is idempotent.
func FuzzVPDPages(f *testing.F) {
	f.Add(append([]byte{0, 0x80, 0, 20}, "QM00005             "...))
	f.Add([]byte{0, 0x80, 0xff, 0xff, 'a'})
	f.Add(append([]byte{0, 0x89, 0x02, 0x38}, make([]byte, 600)...))
	f.Add([]byte("  a\tb/\x20\xff"))
	f.Fuzz(func(t *testing.T, page []byte) {
		if s, ok := parseVPDSerial(page); ok && len(s) > int(page[2])<<8|int(page[3]) {
			t.Errorf("parseVPDSerial: %d bytes from a page of length %d", len(s), int(page[2])<<8|int(page[3]))
		}
		if m, ok := parseVPDATAModel(page); ok && len(m) != ataIDProdLen {
			t.Errorf("parseVPDATAModel: %q is not %d characters", m, ataIDProdLen)
		}
		c := udevClean(string(page))
		if strings.ContainsAny(c, " \t\n\v\f\r\x00") || udevClean(c) != c {
			t.Errorf("udevClean(%q) = %q", page, c)
		}
	})
}

func disk(dev string, ro bool) blockDiskSpec {
	var d blockDiskSpec
	d.DevPath, d.Readonly = dev, ro
	return d
}

type blockDiskSpec = block.DiskSpec
