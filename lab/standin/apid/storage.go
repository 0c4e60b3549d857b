package apid

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"

	"github.com/siderolabs/go-blockdevice/v2/blkid"
	blockdev "github.com/siderolabs/go-blockdevice/v2/block"
	"github.com/siderolabs/talos/pkg/machinery/api/storage"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/role"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// systemVolume is the volume Talos names when it refuses to wipe the
// system disk: EPHEMERAL's parent location is the install disk
// (VolumeStatus ParentLocation, checked in validateDeviceForWipe).
const systemVolume = "EPHEMERAL"

// storageService is Talos's StorageService (internal/app/storaged/server.go)
// for BlockDeviceWipe.
type storageService struct {
	storage.UnimplementedStorageServiceServer
	s *Server
}

// BlockDeviceWipe mirrors storaged's Server.BlockDeviceWipe: the reader
// role only in maintenance mode (admin once configured), every device
// validated before any is wiped, then each wiped with its method, and the
// disk probed again so that its DiscoveredVolumes say what is left.
func (st storageService) BlockDeviceWipe(ctx context.Context, req *storage.BlockDeviceWipeRequest) (*storage.BlockDeviceWipeResponse, error) {
	s := st.s
	if !s.Maintenance() && !rolesFrom(ctx).Includes(role.Admin) {
		return nil, ErrNotAuthorized
	}
	vols, err := s.state.volumes(ctx)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	for _, d := range req.GetDevices() {
		if err := checkWipe(d, s.cfg.Inventory, vols, s.cfg.SystemDisk); err != nil {
			return nil, err
		}
	}
	for _, d := range req.GetDevices() {
		if err := s.wipeDevice(d.GetDevice(), d.GetMethod(), d.GetDropPartition(), vols); err != nil {
			return nil, err
		}
		disk := d.GetDevice()
		if i := slices.IndexFunc(vols, func(v Volume) bool { return v.ID == disk }); i >= 0 && vols[i].Spec.Parent != "" {
			disk = vols[i].Spec.Parent
		}
		s.rescan(ctx, disk)
	}
	return &storage.BlockDeviceWipeResponse{Messages: []*storage.BlockDeviceWipe{{}}}, nil
}

// checkWipe is storaged's validateDeviceForWipe over the stand-in's
// inventory: the device is a disk or a partition (by kernel name), its
// disk is neither read-only nor a CD-ROM, and (unless SkipVolumeCheck)
// it is not the system disk or one of its partitions, which Talos's
// volumes (EPHEMERAL, STATE...) use. The stand-in has no RAID or LVM
// holders, so the secondaries check has nothing to find.
func checkWipe(d *storage.BlockDeviceWipeDescriptor, inv Inventory, vols []Volume, systemDisk string) error {
	name := d.GetDevice()
	parent := ""
	if i := slices.IndexFunc(vols, func(v Volume) bool { return v.ID == name && v.Spec.Type == block.DeviceTypePartition }); i >= 0 {
		parent = vols[i].Spec.Parent
	}
	diskName := name
	if parent != "" {
		diskName = parent
	}
	i := slices.IndexFunc(inv.Disks, func(s block.DiskSpec) bool { return path.Base(s.DevPath) == diskName })
	if i < 0 {
		return status.Errorf(codes.NotFound, "blockdevice %q not found", name)
	}
	disk := inv.Disks[i]
	if disk.Readonly {
		return status.Errorf(codes.FailedPrecondition, "blockdevice %q is read-only", name)
	}
	if disk.CDROM {
		return status.Errorf(codes.FailedPrecondition, "blockdevice %q is a CD-ROM", name)
	}
	if !d.GetSkipVolumeCheck() && systemDisk != "" && disk.DevPath == systemDisk {
		return status.Errorf(codes.FailedPrecondition, "blockdevice %q is in use by volume %q", name, systemVolume)
	}
	return nil
}

// wipeTarget is what storaged's wipeDevice calls on go-blockdevice's
// *block.Device; fileDevice gives the same to a disk image.
type wipeTarget interface {
	File() *os.File
	FastWipe(ranges ...blockdev.Range) error
	Wipe() (string, error)
	Lock(exclusive bool) error
	Unlock() error
	Close() error
}

// wipeDevice is storaged's wipeDevice: open for writing (a mounted or
// otherwise busy block device is refused), lock, then ZEROES wipes the
// whole device and FAST wipes by signatures then the first and last MiB
// (WipeWithSignatures).
func (s *Server) wipeDevice(name string, method storage.BlockDeviceWipeDescriptor_Method, dropPartition bool, vols []Volume) error {
	devPath := "/dev/" + name
	if i := slices.IndexFunc(vols, func(v Volume) bool { return v.ID == name }); i >= 0 {
		devPath = vols[i].Spec.DevPath
		if dropPartition && vols[i].Spec.Type == block.DeviceTypePartition {
			return status.Error(codes.Unimplemented, "the stand-in does not drop partitions")
		}
	}
	bd, err := openTarget(devicePath(s.cfg.DevRoot, devPath))
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return status.Errorf(codes.FailedPrecondition, "block device %q is mounted or in use", name)
		}
		return status.Errorf(codes.Internal, "failed to open block device %q: %v", name, err)
	}
	defer bd.Close() //nolint:errcheck
	if err := bd.Lock(true); err != nil {
		return status.Errorf(codes.Internal, "failed to lock block device %q: %v", name, err)
	}
	defer bd.Unlock() //nolint:errcheck
	switch method {
	case storage.BlockDeviceWipeDescriptor_ZEROES:
		how, err := bd.Wipe()
		if err != nil {
			return status.Errorf(codes.Internal, "failed to wipe block device %q: %v", name, err)
		}
		s.log.Info("block device wiped with zeroes", "device", name, "how", how)
	case storage.BlockDeviceWipeDescriptor_FAST:
		ranges, err := wipeWithSignatures(bd)
		if err != nil {
			return status.Errorf(codes.Internal, "failed to wipe block device %q: %v", name, err)
		}
		s.log.Info("block device wiped with the fast method", "device", name, "signature_ranges", ranges)
	default:
		return status.Errorf(codes.InvalidArgument, "unsupported wipe method %s", method)
	}
	if err := bd.File().Sync(); err != nil {
		return status.Errorf(codes.Internal, "failed to sync block device %q: %v", name, err)
	}
	return nil
}

// wipeWithSignatures is Talos's internal/pkg/partition/helpers.go
// WipeWithSignatures: blkid's signature ranges (the first match only:
// bluestore at 0, not its copies) zeroed, then FastWipe's discard and the
// first and last MiB, whatever the probe found.
func wipeWithSignatures(bd wipeTarget) ([]blockdev.Range, error) {
	var ranges []blockdev.Range
	info, err := blkid.Probe(bd.File(), blkid.WithSkipLocking(true))
	if err == nil && info != nil && len(info.SignatureRanges) > 0 {
		for _, r := range info.SignatureRanges {
			ranges = append(ranges, blockdev.Range(r))
		}
		if err := bd.FastWipe(ranges...); err != nil {
			return ranges, err
		}
	}
	return ranges, bd.FastWipe()
}

// openTarget opens a block device as storaged does (go-blockdevice,
// for writing, O_EXCL so a mounted one is EBUSY), or a regular file as a
// disk image.
func openTarget(p string) (wipeTarget, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return nil, err
	}
	if fi.Mode()&os.ModeDevice != 0 {
		return blockdev.NewFromPath(p, blockdev.OpenForWrite(), blockdev.OpenAssertNotMounted())
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is neither a block device nor a disk image", p)
	}
	f, err := os.OpenFile(p, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return &fileDevice{f: f, size: fi.Size()}, nil
}

// fileDevice is a disk image behaving as go-blockdevice's block.Device
// behaves on a disk that ignores discard (an HDD): FastWipe zeroes the
// ranges (or the first and last MiB) and nothing else; Wipe zeroes
// everything, by punching a hole over the whole file (what BLKZEROOUT
// leaves behind, without allocating the image).
type fileDevice struct {
	f    *os.File
	size int64
}

func (d *fileDevice) File() *os.File { return d.f }
func (d *fileDevice) Close() error   { return d.f.Close() }

func (d *fileDevice) Lock(exclusive bool) error {
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	return unix.Flock(int(d.f.Fd()), how)
}

func (d *fileDevice) Unlock() error { return unix.Flock(int(d.f.Fd()), unix.LOCK_UN) }

func (d *fileDevice) FastWipe(ranges ...blockdev.Range) error {
	size := uint64(d.size)
	if len(ranges) == 0 {
		ranges = []blockdev.Range{{Offset: 0, Size: min(size, blockdev.FastWipeRange)}}
		if size >= 2*blockdev.FastWipeRange {
			ranges = append(ranges, blockdev.Range{Offset: size - blockdev.FastWipeRange, Size: blockdev.FastWipeRange})
		}
	}
	for _, r := range ranges {
		if err := d.zero(int64(r.Offset), int64(r.Size)); err != nil {
			return fmt.Errorf("error wiping %d:+%d: %w", r.Offset, r.Size, err)
		}
	}
	return nil
}

func (d *fileDevice) Wipe() (string, error) {
	if err := unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, d.size); err == nil {
		return "punchhole", nil
	}
	return "writezeroes", d.zero(0, d.size)
}

func (d *fileDevice) zero(off, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(buf)))
		if _, err := d.f.WriteAt(buf[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

// rescan probes a disk again and replaces its DiscoveredVolumes (Talos's
// discovery controller after the kernel's change event). A disk that
// cannot be probed loses its volumes, as in Talos (failedIDs).
func (s *Server) rescan(ctx context.Context, disk string) {
	i := slices.IndexFunc(s.cfg.Inventory.Disks, func(d block.DiskSpec) bool { return path.Base(d.DevPath) == disk })
	if i < 0 {
		return
	}
	vols, err := ProbeDisk(s.cfg.DevRoot, s.cfg.Inventory.Disks[i])
	if err != nil {
		s.log.Debug("failed to probe device", "device", disk, "err", err)
		vols = nil
	}
	if err := s.state.setVolumes(ctx, disk, vols); err != nil {
		s.log.Warn("discovered volumes not updated", "device", disk, "err", err)
	}
}
