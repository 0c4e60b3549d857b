package apid

import (
	"fmt"
	"path"
	"path/filepath"

	"github.com/siderolabs/go-blockdevice/v2/blkid"
	"github.com/siderolabs/go-blockdevice/v2/partitioning"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
)

// Volume is one block.DiscoveredVolume: a disk, or a partition of one.
type Volume struct {
	ID   string // "sda", "sda1", "nvme0n1p1"
	Spec block.DiscoveredVolumeSpec
}

// devicePath is where the device node of a /dev path is under root ("/"
// on the machine; a test's directory holding dev/sdb as a file).
func devicePath(root, devPath string) string {
	if root == "" {
		root = "/"
	}
	return filepath.Join(root, devPath)
}

// ProbeDisk is Talos's DiscoveryController.rescan for one disk
// (internal/app/machined/pkg/controllers/block/discovery.go, rescan and
// fillDiscoveredVolumeFromInfo): go-blockdevice's blkid probes the device
// — the same prober chain Talos runs, so a Ceph label at offset 0 is
// "bluestore", and what blkid cannot see (the label copies at 1 GiB and
// beyond, a GPT whose primary header is zeroed) is not reported — and the
// disk and each partition become a DiscoveredVolume. The device is opened
// at root + the disk's DevPath; a regular file is probed as a disk image
// with the disk's sector size.
func ProbeDisk(root string, d block.DiskSpec) ([]Volume, error) {
	id := path.Base(d.DevPath)
	opts := []blkid.ProbeOption{}
	if d.SectorSize != 0 {
		opts = append(opts, blkid.WithSectorSize(d.SectorSize))
	}
	info, err := blkid.ProbePath(devicePath(root, d.DevPath), opts...)
	if err != nil {
		return nil, fmt.Errorf("probe %s: %w", d.DevPath, err)
	}
	devicePath := ""
	if d.BusPath != "" {
		devicePath = "/sys/devices" + d.BusPath + "/block/" + id
	}
	disk := Volume{ID: id, Spec: block.DiscoveredVolumeSpec{
		DevPath:    filepath.Join("/dev", id),
		Type:       block.DeviceTypeDisk,
		DevicePath: devicePath,
		SectorSize: info.SectorSize,
		IOSize:     info.IOSize,
	}}
	disk.Spec.SetSize(info.Size)
	fillFromProbe(&disk.Spec, info.ProbeResult)
	out := []Volume{disk}
	for _, p := range info.Parts {
		pid := partitioning.DevName(id, p.PartitionIndex)
		v := Volume{ID: pid, Spec: block.DiscoveredVolumeSpec{
			Type:           block.DeviceTypePartition,
			DevPath:        filepath.Join("/dev", pid),
			Parent:         id,
			ParentDevPath:  filepath.Join("/dev", id),
			Offset:         p.PartitionOffset,
			SectorSize:     info.SectorSize,
			IOSize:         info.IOSize,
			PartitionIndex: p.PartitionIndex,
		}}
		if devicePath != "" {
			v.Spec.DevicePath = filepath.Join(devicePath, pid)
		}
		v.Spec.SetSize(p.PartitionSize)
		fillFromProbe(&v.Spec, p.ProbeResult)
		if p.PartitionUUID != nil {
			v.Spec.PartitionUUID = p.PartitionUUID.String()
		}
		if p.PartitionType != nil {
			v.Spec.PartitionType = p.PartitionType.String()
		}
		if p.PartitionLabel != nil {
			v.Spec.PartitionLabel = *p.PartitionLabel
		}
		out = append(out, v)
	}
	return out, nil
}

// fillFromProbe is DiscoveryController.fillDiscoveredVolumeFromInfo.
func fillFromProbe(s *block.DiscoveredVolumeSpec, r blkid.ProbeResult) {
	s.Name = r.Name
	if r.UUID != nil {
		s.UUID = r.UUID.String()
	}
	if r.Label != nil {
		s.Label = *r.Label
	}
	s.BlockSize = r.BlockSize
	s.FilesystemBlockSize = r.FilesystemBlockSize
	s.ProbedSize = r.ProbedSize
}
