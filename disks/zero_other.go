//go:build !linux

package disks

import (
	"errors"
	"runtime"
)

// ZeroOptions: see zero_linux.go.
type ZeroOptions struct {
	Device, Serial   string
	WWID             string
	Size             int64
	Ranges           []Range
	SysRoot, DevRoot string
}

// ZeroReport: see zero_linux.go.
type ZeroReport struct {
	Device, Identity string
	Size, Bytes      int64
	Ranges           []ZeroedRange
}

// ZeroedRange: see zero_linux.go.
type ZeroedRange struct {
	Range
	How string
}

// ZeroDevice zeroes block devices on Linux only (it runs in a Job on a
// Talos node).
func ZeroDevice(ZeroOptions) (ZeroReport, error) {
	return ZeroReport{}, errors.New("zeroing a block device works on Linux only, not " + runtime.GOOS)
}
