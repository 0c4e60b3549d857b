// Package disks chooses the install disk the way Talos v1.13 does: the
// machine config's install disk selector becomes a CEL expression that is
// evaluated against every disk's block.DiskSpec with system_disk=false, and
// the first match in device-name order wins.
package disks

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	blockpb "github.com/siderolabs/talos/pkg/machinery/api/resource/definitions/block"
	"github.com/siderolabs/talos/pkg/machinery/cel/celenv"
	"github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/proto"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
)

// ErrNoMatch is returned when no disk matches the install selector. The
// message is Talos's own.
var ErrNoMatch = errors.New("no disks matched the expression")

// ErrSDDisk is returned when the chosen install disk is an sd* disk, which
// rackboot keeps for Ceph: the stand-in refuses to touch it.
var ErrSDDisk = errors.New("refusing to install to an sd* disk (kept for Ceph)")

// Choose returns the disk Talos would install to, given the machine's
// install config and the disks present. With install.disk set, the disk
// whose path (or one of its symlinks) equals it is chosen; otherwise the
// diskSelector's CEL expression is evaluated. Disks are considered in
// device-name order (nvme0n1 before sda), as Talos lists them.
func Choose(install config.Install, disks []block.DiskSpec) (block.DiskSpec, error) {
	sorted := slices.Clone(disks)
	slices.SortFunc(sorted, func(a, b block.DiskSpec) int {
		return strings.Compare(path.Base(a.DevPath), path.Base(b.DevPath))
	})

	if install == nil {
		return block.DiskSpec{}, errors.New("machine config has no install section")
	}
	expr, err := install.DiskMatchExpression()
	if err != nil {
		return block.DiskSpec{}, fmt.Errorf("install disk selector: %w", err)
	}
	if expr == nil {
		want := install.Disk()
		if want == "" {
			return block.DiskSpec{}, errors.New("machine config sets neither install.disk nor install.diskSelector")
		}
		for _, d := range sorted {
			if d.DevPath == want || slices.Contains(d.Symlinks, want) {
				return d, nil
			}
		}
		return block.DiskSpec{}, fmt.Errorf("install disk %s: %w", want, ErrNoMatch)
	}

	for _, d := range sorted {
		res := block.NewDisk(block.NamespaceName, path.Base(d.DevPath))
		*res.TypedSpec() = d
		spec := &blockpb.DiskSpec{}
		if err := proto.ResourceSpecToProto(res, spec); err != nil {
			return block.DiskSpec{}, fmt.Errorf("convert disk %s: %w", d.DevPath, err)
		}
		ok, err := expr.EvalBool(celenv.DiskLocator(), map[string]any{
			"disk":        spec,
			"system_disk": false,
		})
		if err != nil {
			return block.DiskSpec{}, fmt.Errorf("evaluate install disk selector on %s: %w", d.DevPath, err)
		}
		if ok {
			return d, nil
		}
	}
	return block.DiskSpec{}, fmt.Errorf("install disk selector %s: %w", expr, ErrNoMatch)
}

// IsSD reports whether dev is a SCSI-disk-driver name (/dev/sda, sdb...).
func IsSD(dev string) bool {
	return strings.HasPrefix(path.Base(dev), "sd")
}

// CheckInstallDisk refuses an sd* install disk.
func CheckInstallDisk(dev string) error {
	if IsSD(dev) {
		return fmt.Errorf("%s: %w", dev, ErrSDDisk)
	}
	return nil
}

// State is a COSI state holding disks as Talos's block.Disk resources, for
// machinery's RuntimeValidate (blockhelpers.MatchDisks lists them).
func State(ctx context.Context, disks []block.DiskSpec) (state.State, error) {
	st := state.WrapCore(namespaced.NewState(inmem.Build))
	for _, d := range disks {
		res := block.NewDisk(block.NamespaceName, path.Base(d.DevPath))
		*res.TypedSpec() = d
		if err := st.Create(ctx, res); err != nil {
			return nil, fmt.Errorf("disk %s: %w", d.DevPath, err)
		}
	}
	return st, nil
}
