package disks

import (
	"bytes"
	"testing"
)

func FuzzParseLabel(f *testing.F) {
	good, err := EncodeLabel(testLabel())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:80])
	f.Add([]byte(labelMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := ParseLabel(b)
		if err != nil {
			return
		}
		// A label that parses re-encodes to a label that parses the same.
		again, err := EncodeLabel(l)
		if err != nil {
			return // meta too large for a block: fine
		}
		l2, err := ParseLabel(again)
		if err != nil || l2.OSDUUID != l.OSDUUID || l2.Size != l.Size || l2.Description != l.Description || len(l2.Meta) != len(l.Meta) {
			t.Fatalf("re-encoded label differs: %+v vs %+v (%v)", l2, l, err)
		}
	})
}

func FuzzParseGPT(f *testing.F) {
	d := gptDisk(&testing.T{}, 64*1024, [][2]int64{{17 * 1024, 8 * 1024}})
	f.Add(d[512:1024], d[1024:1024+128*128])
	f.Add([]byte(gptSignature), []byte{})
	f.Fuzz(func(t *testing.T, hdr, entries []byte) {
		h, err := ParseGPTHeader(hdr)
		if err != nil {
			return
		}
		parts, err := ParseGPTEntries(h, entries, 512)
		if err != nil {
			return
		}
		for _, p := range parts {
			if p.Offset < 0 || p.Length <= 0 {
				t.Fatalf("partition %+v", p)
			}
		}
	})
}

func FuzzParseMBR(f *testing.F) {
	d := gptDisk(&testing.T{}, 64*1024, nil)
	f.Add(d[:512])
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseMBR(b)
	})
}

func FuzzSuperblocks(f *testing.F) {
	sb := make([]byte, 4096)
	copy(sb, "XFSB")
	f.Add(sb)
	f.Add(append(make([]byte, 0x40), "_BHRfS_M"...))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, parse := range []func([]byte) (fsInfo, bool){parseExt, parseXFS, parseBtrfs, parseVFAT, parseLVM} {
			_, _ = parse(b)
		}
	})
}

// FuzzInspect runs the whole inspection over an arbitrary small disk.
func FuzzInspect(f *testing.F) {
	f.Add(gptDisk(&testing.T{}, 64*1024, [][2]int64{{17 * 1024, 8 * 1024}}))
	good, _ := EncodeLabel(testLabel())
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		rep, err := Inspect(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			t.Fatal(err)
		}
		_ = rep.Summary()
		// Wipe makes any disk clean.
		m := &memDisk{b: bytes.Clone(b)}
		if _, err := Wipe(m, int64(len(b))); err != nil {
			t.Fatal(err)
		}
		if rep, err := Inspect(bytes.NewReader(m.b), int64(len(m.b))); err != nil || !rep.Clean() {
			t.Fatalf("after wipe: %v %s", err, rep.Summary())
		}
	})
}

func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"0:4096", "1073741824:4096", "9223372036854775807:1", "-1:2", "1:", ":", "01:2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRange(s)
		if err != nil {
			return
		}
		if r.Offset < 0 || r.Length <= 0 || r.End() < r.Offset {
			t.Fatalf("ParseRange(%q) = %+v", s, r)
		}
		back, err := ParseRange(FormatRange(r))
		if err != nil || back != r {
			t.Fatalf("round trip of %q: %+v %v", s, back, err)
		}
	})
}
