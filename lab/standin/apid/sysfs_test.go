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
			if !strings.HasPrefix(s, strconv.Itoa(h)+":") && !strings.HasPrefix(strings.TrimLeft(s, "0"), strconv.Itoa(h)+":") {
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

func disk(dev string, ro bool) blockDiskSpec {
	var d blockDiskSpec
	d.DevPath, d.Readonly = dev, ro
	return d
}

type blockDiskSpec = block.DiskSpec
