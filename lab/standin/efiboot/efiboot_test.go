package efiboot

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/uuid"
)

// The EFI_LOAD_OPTION Talos's efivarfs package checks its encoder against
// (internal/pkg/efivarfs/boot_test.go): "Example", HD(1,GPT,<X.500
// namespace>,0x5,0x8)/File(\test\a.efi), active.
const talosVector = "010000004a004500780061006d0070006c006500000004012a00010000000" +
	"500000000000000080000000000000014b8a76bad9dd11180b400c04fd430" +
	"c8020204041c005c0074006500730074005c0061002e00650066006900000" +
	"07fff0400"

func TestMarshalLikeTalos(t *testing.T) {
	o := LoadOption{
		Description: "Example", Active: true,
		Disk: &HardDrive{Number: 1, Start: 5, Size: 8, GUID: uuid.NameSpaceX500},
		File: "/test/a.efi",
	}
	b, err := o.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(b); got != talosVector {
		t.Fatalf("encoded\n%s\nwant\n%s", got, talosVector)
	}
	back, err := ParseLoadOption(b)
	if err != nil {
		t.Fatal(err)
	}
	if back.Description != o.Description || !back.Active || back.Disk == nil || *back.Disk != *o.Disk || back.File != o.File {
		t.Errorf("parsed back %+v (disk %+v)", back, back.Disk)
	}
	if s := back.String(); s != `"Example" HD(1,GPT,`+"6BA7B814-9DAD-11D1-80B4-00C04FD430C8"+`,0x5,0x8)/File(\test\a.efi)` {
		t.Errorf("String() = %s", s)
	}
}

func TestParseLoadOptionBad(t *testing.T) {
	for _, h := range []string{"", "0100", "010000000400410042", "01000000ff00410000000000"} {
		b, _ := hex.DecodeString(h)
		if _, err := ParseLoadOption(b); err == nil {
			t.Errorf("%s: parsed", h)
		}
	}
	// Any other device path is kept, not understood.
	b, _ := hex.DecodeString("010000000400" + "41000000" + "7fff0400")
	if o, err := ParseLoadOption(b); err != nil || o.Disk != nil || o.Description != "A" {
		t.Errorf("non-HD path: %+v %v", o, err)
	}
}

func FuzzParseLoadOption(f *testing.F) {
	b, _ := hex.DecodeString(talosVector)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := ParseLoadOption(b)
		if err != nil || o.Disk == nil {
			return
		}
		if _, err := o.Marshal(); err != nil && o.File != "" {
			t.Errorf("parsed %s but cannot encode it: %v", o, err)
		}
	})
}

func writeVar(t *testing.T, v Vars, name string, data []byte) {
	t.Helper()
	if err := v.Write(name, AttrNonVolatile|AttrRuntimeAccess, data); err != nil {
		t.Fatal(err)
	}
}

func entry(t *testing.T, desc string) []byte {
	t.Helper()
	b, err := LoadOption{Description: desc, Active: true, Disk: &HardDrive{Number: 1, Start: 2048, Size: 4096, GUID: uuid.New()}, File: "/EFI/x.efi"}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The cases of Talos's sdboot TestSetBootEntry that matter: which number
// the entry takes, which duplicates go, and BootOrder left alone.
func TestCreateBootEntry(t *testing.T) {
	esp := HardDrive{Number: 1, Start: 2048, Size: 49152, GUID: uuid.MustParse("89052468-bc94-4d16-b94c-5950f2f34448")}
	for _, tc := range []struct {
		name     string
		existing map[string]string // Boot#### → description
		order    []byte
		index    int
		removed  []int
		left     []int // Boot#### numbers after
	}{
		{name: "empty", index: 0, left: []int{0}},
		{name: "another entry", existing: map[string]string{"Boot0000": "UEFI PXEv4"}, index: 1, left: []int{0, 1}},
		{name: "a gap", existing: map[string]string{"Boot0000": "a", "Boot0002": "b"}, order: []byte{2, 0, 0, 0}, index: 1, left: []int{0, 1, 2}},
		{name: "replace", existing: map[string]string{"Boot0000": "a", "Boot0003": TalosEntry}, order: []byte{3, 0, 0, 0}, index: 3, left: []int{0, 3}},
		{name: "duplicates", existing: map[string]string{"Boot0000": "a", "Boot0002": TalosEntry, "Boot0001": TalosEntry, "Boot002A": TalosEntry},
			order: []byte{1, 0, 2, 0, 2, 0, 0, 0}, index: 1, removed: []int{2, 42}, left: []int{0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := Vars{Dir: t.TempDir()}
			for name, desc := range tc.existing {
				writeVar(t, v, name, entry(t, desc))
			}
			if tc.order != nil {
				writeVar(t, v, "BootOrder", tc.order)
			}
			// Another vendor's variable is not a boot entry.
			if err := os.WriteFile(filepath.Join(v.Dir, "Boot0009-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"), []byte{7, 0, 0, 0, 1}, 0o644); err != nil {
				t.Fatal(err)
			}
			r, err := CreateBootEntry(v, esp, LoaderFile)
			if err != nil {
				t.Fatal(err)
			}
			if r.Index != tc.index || !slices.Equal(r.Removed, tc.removed) {
				t.Errorf("wrote %s removed %v, want Boot%04X removed %v", r.Name(), r.Removed, tc.index, tc.removed)
			}
			entries, err := Entries(v)
			if err != nil {
				t.Fatal(err)
			}
			var left []int
			for n := range entries {
				left = append(left, n)
			}
			slices.Sort(left)
			if !slices.Equal(left, tc.left) {
				t.Errorf("entries %v, want %v", left, tc.left)
			}
			got := entries[tc.index]
			if got.Description != TalosEntry || !got.Active || got.Disk == nil || *got.Disk != esp || got.File != LoaderFile {
				t.Errorf("%s = %s", r.Name(), got)
			}
			_, attrs, err := v.Read(r.Name())
			if err != nil || attrs != AttrNonVolatile|AttrBootserviceAccess|AttrRuntimeAccess {
				t.Errorf("attributes %#x (%v), want NV|BS|RT", attrs, err)
			}
			order, err := BootOrder(v)
			if err != nil {
				t.Fatal(err)
			}
			var want []uint16
			for i := 0; i+1 < len(tc.order); i += 2 {
				want = append(want, uint16(tc.order[i])|uint16(tc.order[i+1])<<8)
			}
			if !slices.Equal(order, want) {
				t.Errorf("BootOrder %s, want it unchanged (%s)", FormatOrder(order), FormatOrder(want))
			}
		})
	}
}
