//go:build unix

package registry

import (
	"io/fs"
	"syscall"
)

// fileID is a file's device and inode, so a replaced file is told apart
// from the one it replaced.
func fileID(fi fs.FileInfo) (dev, ino uint64) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Dev), uint64(st.Ino)
	}
	return 0, 0
}
