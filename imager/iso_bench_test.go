package imager

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkISO builds one machine's ISO around a 100 MB random initramfs,
// the work `rackboot image iso` does in the P5 row of docs/BENCHMARKS.md.
// Profile it with
//
//	go test -run '^$' -bench ISO -benchmem -cpuprofile cpu.prof ./imager
func BenchmarkISO(b *testing.B) {
	const size = 100 << 20
	kernel, initrd := fakeBootFiles(b, size)
	spec := testSpec(b, kernel, initrd)
	bld := testBuilder(b)
	out := filepath.Join(b.TempDir(), "cp1.iso")
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		if _, err := bld.ISO(context.Background(), spec, out); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	os.Remove(out)
}
