package imager

import (
	"io/fs"
	"os"

	"github.com/diskfs/go-diskfs/backend"
)

// writeBufSize is how much contiguous data a bufferedStorage gathers
// before one pwrite.
const writeBufSize = 1 << 20

// bufferedStorage gathers go-diskfs's small writes into large ones.
// go-diskfs writes file data one sector (ISO 9660, 2 KiB) or one cluster
// (FAT) per WriteAt, so a 100 MB initramfs costs ~50,000 pwrite calls
// per copy; contiguous writes are gathered here and written 1 MiB at a
// time. Every other access (reads, seeks, Stat, Sys, Close, a write that
// does not continue the gathered run) writes the gathered run out first,
// so readers of the storage always see what was written, in order. Flush
// must be called before the underlying file is used directly.
type bufferedStorage struct {
	s   backend.Storage
	w   backend.WritableFile // nil until Writable
	buf []byte
	off int64 // where buf[0] goes
}

func newBufferedStorage(s backend.Storage) *bufferedStorage {
	return &bufferedStorage{s: s}
}

// Flush writes the gathered run.
func (b *bufferedStorage) Flush() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.WriteAt(b.buf, b.off)
	b.buf = b.buf[:0]
	return err
}

func (b *bufferedStorage) Stat() (fs.FileInfo, error) {
	if err := b.Flush(); err != nil {
		return nil, err
	}
	return b.s.Stat()
}

func (b *bufferedStorage) Read(p []byte) (int, error) {
	if err := b.Flush(); err != nil {
		return 0, err
	}
	return b.s.Read(p)
}

func (b *bufferedStorage) ReadAt(p []byte, off int64) (int, error) {
	if err := b.Flush(); err != nil {
		return 0, err
	}
	return b.s.ReadAt(p, off)
}

func (b *bufferedStorage) Seek(off int64, whence int) (int64, error) {
	if err := b.Flush(); err != nil {
		return 0, err
	}
	return b.s.Seek(off, whence)
}

func (b *bufferedStorage) Close() error {
	if err := b.Flush(); err != nil {
		return err
	}
	return b.s.Close()
}

func (b *bufferedStorage) Sys() (*os.File, error) {
	if err := b.Flush(); err != nil {
		return nil, err
	}
	return b.s.Sys()
}

func (b *bufferedStorage) Path() string { return b.s.Path() }

func (b *bufferedStorage) Writable() (backend.WritableFile, error) {
	if err := b.Flush(); err != nil {
		return nil, err
	}
	w, err := b.s.Writable()
	if err != nil {
		return nil, err
	}
	b.w = w
	return bufferedFile{b}, nil
}

// bufferedFile is the writable side of a bufferedStorage.
type bufferedFile struct{ *bufferedStorage }

func (f bufferedFile) WriteAt(p []byte, off int64) (int, error) {
	b := f.bufferedStorage
	if len(b.buf) > 0 && off != b.off+int64(len(b.buf)) {
		if err := b.Flush(); err != nil {
			return 0, err
		}
	}
	if len(b.buf)+len(p) > writeBufSize {
		if err := b.Flush(); err != nil {
			return 0, err
		}
		if len(p) >= writeBufSize {
			return b.w.WriteAt(p, off)
		}
	}
	if len(b.buf) == 0 {
		if b.buf == nil {
			b.buf = make([]byte, 0, writeBufSize)
		}
		b.off = off
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}
