package imager

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseSourceDateEpoch(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
		err  bool
	}{
		{"", 0, false, false},
		{"  ", 0, false, false},
		{"0", 0, true, false},
		{"1700000000", 1700000000, true, false},
		{" 1700000000\n", 1700000000, true, false},
		{"-1", 0, false, true},
		{"1.5", 0, false, true},
		{"abc", 0, false, true},
		{"99999999999999", 0, false, true},
	} {
		got, ok, err := ParseSourceDateEpoch(tc.in)
		if (err != nil) != tc.err || ok != tc.ok || (ok && got.Unix() != tc.want) || (ok && got.Location() != time.UTC) {
			t.Errorf("ParseSourceDateEpoch(%q) = %v, %v, %v", tc.in, got, ok, err)
		}
	}
}

// memRW is an in-memory isoRW.
type memRW struct{ b []byte }

func (m *memRW) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > int64(len(m.b)) {
		return 0, os.ErrInvalid
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, os.ErrInvalid
	}
	return n, nil
}

func (m *memRW) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, os.ErrInvalid
	}
	return copy(m.b[off:], p), nil
}

// TestNormalizeISOTimes checks the rewrite on an ISO built by go-diskfs:
// every date field it knows becomes the epoch, and a second pass changes
// nothing.
func TestNormalizeISOTimes(t *testing.T) {
	kernel, initrd := fakeBootFiles(t, 4096)
	out := filepath.Join(t.TempDir(), "x.iso")
	epoch := time.Date(2024, 2, 29, 12, 34, 56, 0, time.UTC)
	if _, err := testBuilder(t, WithBuilderClock(func() time.Time { return epoch })).ISO(context.Background(), testSpec(t, kernel, initrd), out); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	pvd := data[16*2048 : 17*2048]
	for _, o := range []int{vdCreation, vdModification, vdEffective} {
		if got := string(pvd[o : o+16]); got != "2024022912345600" || pvd[o+16] != 0 {
			t.Errorf("PVD date at %d = %q (offset %d)", o, got, pvd[o+16])
		}
	}
	if got := string(pvd[vdExpiration : vdExpiration+16]); got != "0000000000000000" {
		t.Errorf("expiration = %q, want not specified", got)
	}
	if got := string(pvd[40:72]); got != "metal-iso"+strings.Repeat(" ", 23) {
		t.Errorf("volume identifier = %q", got)
	}
	m := &memRW{b: bytes.Clone(data)}
	st, err := NormalizeISOTimes(m, epoch)
	if err != nil {
		t.Fatal(err)
	}
	// root (self, parent), boot, isolinux dirs; files: 8 + catalog.
	if st.VolumeDescriptors != 1 || st.Records < 15 || st.TFEntries != st.Records || st.PXEntries != st.Records {
		t.Errorf("stats %+v: every record should carry TF and PX", st)
	}
	if !bytes.Equal(m.b, data) {
		t.Error("a second pass changed the image: the build did not normalize it")
	}
	// Every 7-byte record date is the epoch: count them in the root directory.
	rootLoc := binary.LittleEndian.Uint32(pvd[vdRootRecord+2:])
	root := data[int(rootLoc)*2048 : int(rootLoc+1)*2048]
	want := []byte{byte(2024 - 1900), 2, 29, 12, 34, 56, 0}
	for pos := 0; pos < len(root) && root[pos] != 0; pos += int(root[pos]) {
		if got := root[pos+drRecordingTime : pos+drRecordingTime+7]; !bytes.Equal(got, want) {
			t.Errorf("record at %d has date %v", pos, got)
		}
	}
	// Not an ISO: a clear error, nothing written.
	junk := &memRW{b: make([]byte, 40*2048)}
	if _, err := NormalizeISOTimes(junk, epoch); err == nil || !strings.Contains(err.Error(), "CD001") {
		t.Errorf("NormalizeISOTimes(zeros) = %v", err)
	}
	if !bytes.Equal(junk.b, make([]byte, 40*2048)) {
		t.Error("NormalizeISOTimes wrote into a non-ISO")
	}
}

// FuzzNormalizeISOTimes feeds arbitrary directory extents and SUSP
// continuation sectors behind a valid volume descriptor set: it must
// return (an error or not) without panicking or looping.
func FuzzNormalizeISOTimes(f *testing.F) {
	// "." with a TF entry (three short stamps) and a CE entry pointing at
	// sector 22, then a subdirectory record pointing back at the root.
	self := []byte{34 + 12 + 28, 0}
	self = append(self, make([]byte, 31)...)
	self[drNameLen] = 1
	self = append(self, 0)
	self = append(self, 'T', 'F', 26, 1, 0x0e)
	self = append(self, make([]byte, 21)...)
	self[0] = byte(len(self))
	ce := []byte{'C', 'E', 28, 1}
	ce = binary.LittleEndian.AppendUint32(ce, 22)
	ce = binary.BigEndian.AppendUint32(ce, 22)
	ce = append(ce, make([]byte, 8)...)
	ce = binary.LittleEndian.AppendUint32(ce, 20)
	ce = binary.BigEndian.AppendUint32(ce, 20)
	self = append(self, ce...)
	self[0] = byte(len(self))
	sub := make([]byte, 34)
	sub[0], sub[drFlags], sub[drNameLen], sub[drName] = 34, drFlagDir, 1, 'A'
	binary.LittleEndian.PutUint32(sub[2:], 18)
	binary.LittleEndian.PutUint32(sub[10:], 2048)
	cont := []byte{'P', 'X', 36, 1}
	cont = append(cont, make([]byte, 32)...)
	f.Add(append(self, sub...), uint32(2048), cont)
	f.Add([]byte{}, uint32(0), []byte{})
	f.Add([]byte{1, 0, 0}, uint32(1<<30), []byte("TF\x05\x01\xff"))
	f.Fuzz(func(t *testing.T, dir []byte, rootSize uint32, cont []byte) {
		if len(dir) > 4*2048 || len(cont) > 2048 {
			return
		}
		img := make([]byte, 23*2048)
		pvd := img[16*2048:]
		pvd[0] = vdTypePrimary
		copy(pvd[1:6], "CD001")
		binary.LittleEndian.PutUint16(pvd[vdBlockSize:], 2048)
		root := pvd[vdRootRecord:]
		root[0] = 34
		binary.LittleEndian.PutUint32(root[2:], 18)
		binary.LittleEndian.PutUint32(root[10:], rootSize)
		img[17*2048] = vdTypeTerminator
		copy(img[17*2048+1:], "CD001")
		copy(img[18*2048:], dir)
		copy(img[22*2048:], cont)
		_, _ = NormalizeISOTimes(&memRW{b: img}, time.Unix(1700000000, 0))
	})
}

// TestStreamingMemory builds an ISO and a USB image around a 100 MB random
// initramfs: the heap must not grow anywhere near the file's size.
func TestStreamingMemory(t *testing.T) {
	const size = 100 << 20
	kernel, initrd := fakeBootFiles(t, size)
	spec := testSpec(t, kernel, initrd)
	b := testBuilder(t)
	dir := t.TempDir()
	for _, kind := range []string{"iso", "usb"} {
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		peak := sampleHeap(t)
		var err error
		start := time.Now()
		if kind == "iso" {
			_, err = b.ISO(context.Background(), spec, filepath.Join(dir, "x.iso"))
		} else {
			_, err = b.USB(context.Background(), spec, filepath.Join(dir, "x.img"))
		}
		took := time.Since(start)
		high := peak()
		if err != nil {
			t.Fatal(err)
		}
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		growth := int64(high) - int64(before.HeapAlloc)
		t.Logf("%s with a 100 MB initramfs: %v, peak heap growth %.1f MiB, allocated %.1f MiB in all",
			kind, took.Round(time.Millisecond), float64(growth)/(1<<20), float64(after.TotalAlloc-before.TotalAlloc)/(1<<20))
		if growth > 32<<20 {
			t.Errorf("%s: heap grew %d MiB while writing a 100 MB initramfs: not streaming", kind, growth>>20)
		}
		os.Remove(filepath.Join(dir, "x.iso"))
		os.Remove(filepath.Join(dir, "x.img"))
	}
}

// sampleHeap samples HeapAlloc until the returned function is called,
// which returns the highest value seen.
func sampleHeap(t *testing.T) func() uint64 {
	t.Helper()
	done := make(chan struct{})
	var wg sync.WaitGroup
	var high uint64
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			high = max(high, ms.HeapAlloc)
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() uint64 {
		close(done)
		wg.Wait()
		return high
	}
}
