//go:build !linux

package imager

import (
	"context"
	"fmt"
)

// InspectTarget needs Linux's sysfs and procfs.
func InspectTarget(device string) (Target, error) {
	return Target{Path: device}, fmt.Errorf("inspect %s: %w", device, ErrWriteUnsupported)
}

// WriteImage needs Linux: elsewhere write the image with dd or Etcher.
func WriteImage(_ context.Context, image, device string, _ WriteOptions) (*WriteResult, error) {
	return nil, fmt.Errorf("write %s to %s: %w", image, device, ErrWriteUnsupported)
}
