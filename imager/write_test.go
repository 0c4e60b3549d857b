package imager

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseMountInfo(t *testing.T) {
	in := `22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
40 27 7:1 / /mnt/my\040stick rw,relatime shared:7 master:2 - vfat /dev/loop1p2 rw,fmask=0022

99 27 259:3 /sub /srv\134x rw - xfs /dev/nvme0n1p3 rw
`
	got, err := ParseMountInfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{0, 21, "/proc", "proc", "proc"},
		{254, 0, "/", "ext4", "/dev/vda"},
		{7, 1, "/mnt/my stick", "vfat", "/dev/loop1p2"},
		{259, 3, `/srv\x`, "xfs", "/dev/nvme0n1p3"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseMountInfo =\n%+v\nwant\n%+v", got, want)
	}
	for _, bad := range []string{
		"22 27 0:21 / /proc rw,relatime proc proc rw",   // no separator
		"22 27 021 / /proc rw,relatime - proc proc rw",  // no colon
		"22 27 a:b / /proc rw,relatime - proc proc rw",  // not numbers
		"22 27 0:21 / /proc rw - proc",                  // no source
		"22 27 99999999999:1 / /proc rw - proc proc rw", // too big
	} {
		if _, err := ParseMountInfo(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseMountInfo(%q) succeeded", bad)
		}
	}
}

func FuzzParseMountInfo(f *testing.F) {
	f.Add("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n")
	f.Add("40 27 7:1 / /mnt/a\\040b rw shared:7 - vfat /dev/loop1p2 rw\n")
	f.Add("1 2 3:4 a b c - d\n\\")
	f.Fuzz(func(t *testing.T, s string) {
		ms, err := ParseMountInfo(strings.NewReader(s))
		if err != nil {
			return
		}
		for _, m := range ms {
			if m.FSType == "" || m.Source == "" {
				t.Fatalf("parsed a mount without type or source: %+v", m)
			}
		}
	})
}

func TestCheckTarget(t *testing.T) {
	stick := Target{Path: "/dev/sdb", Name: "sdb", Removable: true, Size: 8 << 30, Transport: "usb", SystemDisks: []string{"nvme0n1"}, RootKnown: true}
	for _, tc := range []struct {
		name  string
		t     func(Target) Target
		size  int64
		force bool
		want  error
		text  string
	}{
		{"removable stick", func(t Target) Target { return t }, 1 << 30, false, nil, ""},
		{"size unknown yet", func(t Target) Target { return t }, -1, false, nil, ""},
		{"root disk", func(t Target) Target { t.Name = "nvme0n1"; t.Removable = false; return t }, 1, true, ErrSystemDisk, "root filesystem lives on nvme0n1"},
		{"root disk even mounted and forced", func(t Target) Target {
			t.Name = "nvme0n1"
			t.Mounts = []Mount{{MountPoint: "/"}}
			return t
		}, 1, true, ErrSystemDisk, ""},
		{"partition of the root disk", func(t Target) Target { t.Name, t.Partition, t.Parent = "nvme0n1p2", true, "nvme0n1"; return t }, 1, true, ErrSystemDisk, ""},
		{"partition", func(t Target) Target { t.Name, t.Partition, t.Parent = "sdb1", true, "sdb"; return t }, 1, true, ErrNotWholeDisk, "/dev/sdb"},
		{"read-only", func(t Target) Target { t.ReadOnly = true; return t }, 1, true, ErrReadOnly, ""},
		{"mounted partition", func(t Target) Target {
			t.Mounts = []Mount{{Source: "/dev/sdb1", MountPoint: "/media/stick", FSType: "vfat"}}
			return t
		}, 1, true, ErrMounted, "/dev/sdb1 on /media/stick (vfat)"},
		{"held by dm", func(t Target) Target { t.InUse = []string{"sdb2 is held by dm-0"}; return t }, 1, true, ErrMounted, "dm-0"},
		{"too small", func(t Target) Target { return t }, 9 << 30, false, ErrTooSmall, ""},
		{"not removable", func(t Target) Target { t.Removable = false; t.Transport = "sata"; return t }, 1, false, ErrNotRemovable, "--force"},
		{"not removable, forced", func(t Target) Target { t.Removable = false; return t }, 1, true, nil, ""},
	} {
		err := CheckTarget(tc.t(stick), tc.size, tc.force)
		if tc.want == nil {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: CheckTarget = %v, want %v containing %q", tc.name, err, tc.want, tc.text)
		}
	}
}
