package imager

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskfs/go-diskfs/backend/file"
)

// TestBufferedStorageSameBytes drives a bufferedStorage and a plain file
// with the same random mix of contiguous runs, jumps, overwrites and reads
// (the access pattern of go-diskfs's FAT and ISO writers): every read and
// the final file must match.
func TestBufferedStorageSameBytes(t *testing.T) {
	const size = 8 << 20
	dir := t.TempDir()
	open := func(name string) *os.File {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		return f
	}
	plain, buffered := open("plain"), open("buffered")
	defer plain.Close()
	bs := newBufferedStorage(file.New(buffered, false))
	w, err := bs.Writable()
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	fill := rand.NewChaCha8([32]byte{7})
	off := int64(0)
	writes, reads := 0, 0
	for range 1500 {
		switch k := rng.IntN(20); {
		case k < 14: // continue the run, in sector- or cluster-sized pieces
		case k < 17: // jump anywhere
			off = rng.Int64N(size - 1)
		case k < 18: // go back over data written a moment ago
			off = max(0, off-rng.Int64N(64<<10))
		default: // read something back through the storage
			n := rng.IntN(256 << 10)
			at := rng.Int64N(size - int64(n))
			a, b := make([]byte, n), make([]byte, n)
			if _, err := plain.ReadAt(a, at); err != nil {
				t.Fatal(err)
			}
			if _, err := bs.ReadAt(b, at); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(a, b) {
				t.Fatalf("read of %d bytes at %d differs after %d writes", n, at, writes)
			}
			reads++
			continue
		}
		n := []int{512, 2048, 2048, 4096, 4096, 4096, 1 << 20, 3 << 20}[rng.IntN(8)]
		n = int(min(int64(n), size-off))
		p := make([]byte, n)
		_, _ = fill.Read(p)
		if _, err := plain.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		if got, err := w.WriteAt(p, off); err != nil || got != n {
			t.Fatalf("WriteAt: %d, %v", got, err)
		}
		writes++
		off += int64(n)
		if off >= size {
			off = 0
		}
	}
	if err := bs.Flush(); err != nil {
		t.Fatal(err)
	}
	a, err := os.ReadFile(plain.Name())
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(buffered.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("after %d writes and %d reads the files differ", writes, reads)
	}
	t.Logf("%d writes, %d reads compared", writes, reads)
}
