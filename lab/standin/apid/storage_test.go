package apid_test

// DiscoveredVolumes and BlockDeviceWipe on disk images with machinery's
// client: what Talos's blkid sees on a stale Ceph disk, the wipe's
// refusals, and what FAST and ZEROES really leave (read back with the
// disks package, which looks where blkid does not).

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/dotfile/rackboot/disks"
	"github.com/dotfile/rackboot/disks/diskstest"
	"github.com/dotfile/rackboot/lab/standin/apid"
	"github.com/siderolabs/talos/pkg/machinery/api/storage"
	"github.com/siderolabs/talos/pkg/machinery/client"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const cephImageSize = 2 << 30 // labels at 0 and 1 GiB fit

// rack is a configured stand-in whose sda is a stale Ceph disk (GPT,
// ext4, bluestore labels at 0 and 1 GiB: the label at 0 zeroed the
// primary GPT header), whose vda... is read-only, and whose nvme0n1, the
// system disk, holds a GPT with ext4.
type rack struct {
	root, sda, nvme string
	p               pki
	addr            string
}

func newRack(t *testing.T) rack {
	t.Helper()
	r := rack{root: t.TempDir(), p: newPKI(t, "/dev/nvme0n1")}
	r.sda = image(t, r.root, "sda", cephImageSize, 0, 1<<30)
	r.nvme = image(t, r.root, "nvme0n1", 128<<20)
	_, r.addr, _ = configured(t, r.p, func(c *apid.Config) {
		c.DevRoot = r.root
		for i := range c.Inventory.Disks {
			c.Inventory.Disks[i].SectorSize = 512 // sgdisk writes 512-byte sectors in an image
		}
	})
	return r
}

func volumes(t *testing.T, c *client.Client) map[string]block.DiscoveredVolumeSpec {
	t.Helper()
	list, err := safe.StateListAll[*block.DiscoveredVolume](ctx(t), c.COSI)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]block.DiscoveredVolumeSpec{}
	for v := range list.All() {
		out[v.Metadata().ID()] = *v.TypedSpec()
	}
	return out
}

func TestDiscoveredVolumes(t *testing.T) {
	r := newRack(t)
	c := withConfig(t, r.p.admin, r.addr)
	got := volumes(t, c)
	var ids []string
	for id := range got {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	// vda has no image under the root: not probed, as Talos drops a
	// device it cannot probe.
	if want := []string{"nvme0n1", "nvme0n1p1", "sda"}; !slices.Equal(ids, want) {
		t.Fatalf("discovered volumes %v, want %v", ids, want)
	}
	// Talos's blkid names the label at 0 "bluestore", and with the primary
	// GPT header zeroed by it, sees no partition table: the backup header
	// and the ext4 inside are invisible through Talos's API.
	if s := got["sda"]; s.Name != "bluestore" || s.Type != "disk" || s.Size != cephImageSize || s.DevPath != "/dev/sda" {
		t.Errorf("sda = %+v, want a bluestore disk of %d bytes", s, cephImageSize)
	}
	if s := got["nvme0n1"]; s.Name != "gpt" || s.Type != "disk" {
		t.Errorf("nvme0n1 = %+v, want a gpt disk", s)
	}
	p := got["nvme0n1p1"]
	if p.Type != "partition" || p.Name != "ext4" || p.Label != "olddata" || p.PartitionLabel != "old-data" ||
		p.Parent != "nvme0n1" || p.ParentDevPath != "/dev/nvme0n1" || p.Offset != diskstest.PartStart || p.Size != diskstest.PartLen || p.PartitionIndex != 1 {
		t.Errorf("nvme0n1p1 = %+v, want ext4 olddata in partition old-data at 1 MiB, 64 MiB", p)
	}
	// What Inspect sees on the same image, beyond blkid.
	rep := diskstest.Inspect(t, r.sda)
	if offs := labelOffsets(rep); !slices.Equal(offs, []int64{0, 1 << 30}) {
		t.Errorf("Inspect finds labels at %v, want 0 and 1 GiB", offs)
	}
}

func labelOffsets(rep disks.Report) []int64 {
	var out []int64
	for _, l := range rep.Labels() {
		out = append(out, l.Offset)
	}
	return out
}

func wipe(c *client.Client, t *testing.T, dev string, m storage.BlockDeviceWipeDescriptor_Method) error {
	return c.BlockDeviceWipe(ctx(t), &storage.BlockDeviceWipeRequest{Devices: []*storage.BlockDeviceWipeDescriptor{{Device: dev, Method: m}}})
}

func TestWipeRefusals(t *testing.T) {
	r := newRack(t)
	admin := withConfig(t, r.p.admin, r.addr)
	for _, tc := range []struct {
		dev  string
		role string
		code codes.Code
		msg  string
	}{
		{"nvme0n1", "os:admin", codes.FailedPrecondition, `blockdevice "nvme0n1" is in use by volume "EPHEMERAL"`},
		{"nvme0n1p1", "os:admin", codes.FailedPrecondition, `blockdevice "nvme0n1p1" is in use by volume "EPHEMERAL"`},
		{"sdz", "os:admin", codes.NotFound, `blockdevice "sdz" not found`},
		{"vda", "os:admin", codes.FailedPrecondition, `blockdevice "vda" is read-only`},
		{"sda", "os:reader", codes.PermissionDenied, "not authorized"},
		{"sda", "os:operator", codes.PermissionDenied, "not authorized"},
	} {
		c := admin
		if tc.role != "os:admin" {
			c = withConfig(t, withRole(t, r.p, tc.role), r.addr)
		}
		err := wipe(c, t, tc.dev, storage.BlockDeviceWipeDescriptor_FAST)
		if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("wipe %s as %s: %v, want %s %q", tc.dev, tc.role, err, tc.code, tc.msg)
		}
	}
	// Nothing was touched.
	if offs := labelOffsets(diskstest.Inspect(t, r.sda)); len(offs) != 2 {
		t.Errorf("labels after refused wipes: %v", offs)
	}
	if rep := diskstest.Inspect(t, r.nvme); len(rep.Partitions) != 1 {
		t.Errorf("system disk after refused wipes: %s", rep.Summary())
	}
}

// TestWipeFastLeavesLabelCopy documents Talos's real behaviour: FAST
// zeroes blkid's signatures and the first and last MiB; the bluestore
// label copy at 1 GiB survives, and Talos's DiscoveredVolumes cannot show
// it.
func TestWipeFastLeavesLabelCopy(t *testing.T) {
	r := newRack(t)
	c := withConfig(t, r.p.admin, r.addr)
	if err := wipe(c, t, "sda", storage.BlockDeviceWipeDescriptor_FAST); err != nil {
		t.Fatal(err)
	}
	if s := volumes(t, c)["sda"]; s.Name != "" {
		t.Errorf("sda after FAST: Talos sees %q, want nothing", s.Name)
	}
	rep := diskstest.Inspect(t, r.sda)
	if offs := labelOffsets(rep); !slices.Equal(offs, []int64{1 << 30}) {
		t.Errorf("after FAST, labels at %v, want only the copy at 1 GiB (%s)", offs, rep.Summary())
	}
	for _, s := range rep.Signatures {
		if s.Type != "ceph_bluestore" {
			t.Errorf("after FAST, %s at %d left", s.Type, s.Offset)
		}
	}
	if a := allocatedBytes(t, r.sda); a > 64<<20 {
		t.Errorf("image allocates %d bytes after FAST: the wipe wrote more than it should", a)
	}
}

func TestWipeZeroesLeavesNothing(t *testing.T) {
	r := newRack(t)
	c := withConfig(t, r.p.admin, r.addr)
	if err := wipe(c, t, "sda", storage.BlockDeviceWipeDescriptor_ZEROES); err != nil {
		t.Fatal(err)
	}
	if rep := diskstest.Inspect(t, r.sda); !rep.Clean() {
		t.Errorf("after ZEROES: %s", rep.Summary())
	}
	if fi, err := os.Stat(r.sda); err != nil || fi.Size() != cephImageSize {
		t.Errorf("image after ZEROES: %v, %v; want its size kept", fi, err)
	}
	if s, ok := volumes(t, c)["sda"]; !ok || s.Name != "" {
		t.Errorf("sda after ZEROES: %+v (present %v), want a disk with nothing on it", s, ok)
	}
}

func allocatedBytes(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// image seeds a sparse disk image of size at <root>/dev/<name> with
// partition 1 (ext4) and bluestore labels at labelsAt.
func image(t *testing.T, root, name string, size int64, labelsAt ...int64) string {
	t.Helper()
	p := filepath.Join(root, "dev", name)
	diskstest.Seed(t, p, size, true, labelsAt...)
	return p
}
