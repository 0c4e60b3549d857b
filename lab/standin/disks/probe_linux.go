package disks

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	blkdev "github.com/siderolabs/go-blockdevice/v2/block"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
)

// Probe lists the whole disks under sysBlock (normally /sys/block) with the
// properties Talos's DisksController records (go-blockdevice v2), opening
// each as devDir/<name>. RAM disks, zero-sized devices (empty loop devices,
// CD drives without media) and device-mapper devices are skipped, as Talos
// does.
func Probe(sysBlock, devDir string) ([]block.DiskSpec, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	var out []block.DiskSpec
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, "ram") || strings.HasPrefix(name, "dm-") {
			continue
		}
		spec, ok, err := probeOne(filepath.Join(devDir, name))
		if err != nil {
			return nil, fmt.Errorf("probe disk %s: %w", name, err)
		}
		if ok {
			out = append(out, spec)
		}
	}
	slices.SortFunc(out, func(a, b block.DiskSpec) int { return strings.Compare(a.DevPath, b.DevPath) })
	return out, nil
}

func probeOne(dev string) (block.DiskSpec, bool, error) {
	bd, err := blkdev.NewFromPath(dev)
	if err != nil {
		// Talos skips devices it cannot open (e.g. no media).
		return block.DiskSpec{}, false, nil
	}
	defer bd.Close() //nolint:errcheck

	size, err := bd.GetSize()
	if err != nil || size == 0 {
		return block.DiskSpec{}, false, nil
	}
	isCD := bd.IsCD()
	if isCD && bd.IsCDNoMedia() {
		size = 0
	}
	ioSize, _ := bd.GetIOSize()    //nolint:errcheck // Talos only logs it
	readOnly, _ := bd.IsReadOnly() //nolint:errcheck // Talos only logs it
	props, err := bd.GetProperties()
	if err != nil {
		return block.DiskSpec{}, false, fmt.Errorf("properties: %w", err)
	}
	var s block.DiskSpec
	s.SetSize(size)
	s.DevPath = dev
	s.IOSize = ioSize
	s.SectorSize = bd.GetSectorSize()
	s.Readonly = readOnly
	s.CDROM = isCD
	s.Model = props.Model
	s.Serial = props.Serial
	s.Modalias = props.Modalias
	s.WWID = props.WWID
	s.UUID = props.UUID
	s.BusPath = props.BusPath
	s.SubSystem = props.SubSystem
	s.Transport = props.Transport
	s.Rotational = props.Rotational
	return s, true, nil
}
