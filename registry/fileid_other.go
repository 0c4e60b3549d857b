//go:build !unix

package registry

import "io/fs"

func fileID(fs.FileInfo) (dev, ino uint64) { return 0, 0 }
