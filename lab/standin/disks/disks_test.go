package disks

import (
	"errors"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
)

// lab is the QEMU lab machine: one NVMe, two AHCI disks, a CD drive.
func lab() []block.DiskSpec {
	return []block.DiskSpec{
		{DevPath: "/dev/sdb", Transport: "sata", Serial: "SATA2", Model: "QEMU HARDDISK", Size: 4 << 30, Rotational: true},
		{DevPath: "/dev/sr0", Transport: "sata", CDROM: true, Size: 1 << 20},
		{DevPath: "/dev/nvme1n1", Transport: "nvme", Serial: "NVME2", Model: "QEMU NVMe Ctrl", Size: 8 << 30},
		{DevPath: "/dev/sda", Transport: "sata", Serial: "SATA1", Model: "QEMU HARDDISK", Size: 4 << 30, Rotational: true},
		{DevPath: "/dev/nvme0n1", Transport: "nvme", Serial: "NVME1", Model: "QEMU NVMe Ctrl", Size: 2 << 30, Symlinks: []string{"/dev/disk/by-id/nvme-NVME1"}},
		{DevPath: "/dev/vda", Transport: "virtio", Size: 1 << 30, Rotational: true},
		{DevPath: "/dev/mmcblk0", Transport: "", Size: 1 << 30},
	}
}

func install(t *testing.T, yaml string) block.DiskSpec {
	t.Helper()
	d, err := chooseFrom(yaml, lab())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func chooseFrom(installYAML string, disks []block.DiskSpec) (block.DiskSpec, error) {
	cfg, err := configloader.NewFromBytes([]byte("version: v1alpha1\nmachine:\n  type: worker\n  install:\n" + installYAML + "cluster: {}\n"))
	if err != nil {
		return block.DiskSpec{}, err
	}
	return Choose(cfg.Machine().Install(), disks)
}

func TestChoose(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"type nvme: first in name order", "    diskSelector:\n      type: nvme\n", "/dev/nvme0n1"},
		{"serial", "    diskSelector:\n      serial: NVME2\n", "/dev/nvme1n1"},
		{"serial glob", "    diskSelector:\n      serial: 'SATA*'\n", "/dev/sda"},
		{"size", "    diskSelector:\n      size: '>= 5GB'\n", "/dev/nvme1n1"},
		{"model and type", "    diskSelector:\n      model: 'QEMU HARD*'\n      type: hdd\n", "/dev/sda"},
		{"install.disk path", "    disk: /dev/nvme1n1\n", "/dev/nvme1n1"},
		{"install.disk symlink", "    disk: /dev/disk/by-id/nvme-NVME1\n", "/dev/nvme0n1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := install(t, tc.yaml); got.DevPath != tc.want {
				t.Fatalf("chose %s, want %s", got.DevPath, tc.want)
			}
		})
	}
}

func TestChooseNoMatch(t *testing.T) {
	for name, yaml := range map[string]string{
		// type: sd means SD/MMC cards (transport mmc), not sd* disks; the
		// mmcblk0 here has an empty transport, which never matches.
		"type sd":      "    diskSelector:\n      type: sd\n",
		"serial":       "    diskSelector:\n      serial: NOPE\n",
		"missing disk": "    disk: /dev/nvme9n1\n",
	} {
		t.Run(name, func(t *testing.T) {
			if d, err := chooseFrom(yaml, lab()); !errors.Is(err, ErrNoMatch) {
				t.Fatalf("got %s, %v; want ErrNoMatch", d.DevPath, err)
			}
		})
	}
	if _, err := chooseFrom("    image: x\n", lab()); err == nil {
		t.Fatal("neither disk nor selector: no error")
	}
	if _, err := Choose(nil, lab()); err == nil {
		t.Fatal("nil install: no error")
	}
}

func TestCheckInstallDisk(t *testing.T) {
	for dev, wantErr := range map[string]bool{"/dev/sda": true, "/dev/sdb": true, "/dev/nvme0n1": false, "/dev/vda": false} {
		err := CheckInstallDisk(dev)
		if (err != nil) != wantErr || (err != nil && !errors.Is(err, ErrSDDisk)) {
			t.Errorf("CheckInstallDisk(%s) = %v", dev, err)
		}
	}
	// A selector that picks an sd* disk is caught after Choose.
	d := install(t, "    diskSelector:\n      serial: 'SATA*'\n")
	if err := CheckInstallDisk(d.DevPath); !errors.Is(err, ErrSDDisk) {
		t.Fatalf("selector chose %s, check says %v", d.DevPath, err)
	}
}
