// Package efiboot writes the UEFI boot entry Talos v1.13's systemd-boot
// installer writes (internal/app/machined/pkg/runtime/v1alpha1/bootloader/
// sdboot/efivars.go CreateBootEntry, with the encoders of
// internal/pkg/efivarfs): a Boot#### variable "Talos Linux UKI" whose device
// path is HD(<the ESP by partition GUID>)/File(\EFI\boot\BOOTX64.efi).
//
// Like Talos v1.13 it does not touch BootOrder: Talos 1.11 put its entry
// first, and dropped that (siderolabs/talos#11829, #12203) after firmwares
// that rewrite BootOrder at every boot ended up with duplicates and did not
// boot. The firmware's BootOrder (or its own entry for the disk, which boots
// the removable-media path where systemd-boot also is) decides.
package efiboot

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"

	"github.com/google/uuid"
	"golang.org/x/sys/unix"
)

// Talos's names: the entry's description (sdboot.TalosBootEntryDescription)
// and systemd-boot's path on the ESP for amd64 (efiutils.Name).
const (
	TalosEntry = "Talos Linux UKI"
	LoaderFile = "/EFI/boot/BOOTX64.efi"
)

// MountPoint is where Linux mounts efivarfs (Talos's
// constants.EFIVarsMountPoint).
const MountPoint = "/sys/firmware/efi/efivars"

// GlobalVendor is EFI_GLOBAL_VARIABLE, the vendor GUID of Boot####,
// BootOrder and BootCurrent.
var GlobalVendor = uuid.MustParse("8be4df61-93ca-11d2-aa0d-00e098032b8c")

// Variable attributes.
const (
	AttrNonVolatile       uint32 = 0x1
	AttrBootserviceAccess uint32 = 0x2
	AttrRuntimeAccess     uint32 = 0x4
)

// loadOptionActive is LOAD_OPTION_ACTIVE.
const loadOptionActive = 0x1

// HardDrive is a GPT partition as a UEFI HD() device path node: the
// partition's number, its first block and size in blocks, and its unique
// GUID.
type HardDrive struct {
	Number      uint32
	Start, Size uint64
	GUID        uuid.UUID
}

// LoadOption is an EFI_LOAD_OPTION: an active boot entry whose device path
// is a hard-drive node and a file path (as Talos writes), or, when read
// back, any device path kept as raw bytes.
type LoadOption struct {
	Description string
	Active      bool
	Disk        *HardDrive // nil when the path is not HD()/File()
	File        string     // with forward slashes, like Talos's FilePath
	rawPath     []byte
}

// Marshal encodes o (Disk and File must be set).
func (o LoadOption) Marshal() ([]byte, error) {
	if o.Disk == nil {
		return nil, errors.New("load option without a disk")
	}
	if strings.ContainsRune(o.Description, 0) || strings.ContainsRune(o.File, 0) {
		return nil, errors.New("load option with a NUL character")
	}
	var path []byte
	// HD(): type 4 (media), subtype 1, 42 bytes.
	hd := make([]byte, 0, 42)
	hd = append(hd, 4, 1)
	hd = binary.LittleEndian.AppendUint16(hd, 42)
	hd = binary.LittleEndian.AppendUint32(hd, o.Disk.Number)
	hd = binary.LittleEndian.AppendUint64(hd, o.Disk.Start)
	hd = binary.LittleEndian.AppendUint64(hd, o.Disk.Size)
	g := mixedEndian(o.Disk.GUID)
	hd = append(hd, g[:]...)
	hd = append(hd, 2, 2) // GPT partition format, GUID signature
	path = append(path, hd...)
	// File(): type 4, subtype 4, UCS-2 path with backslashes and a NUL.
	name := ucs2(strings.ReplaceAll(o.File, "/", `\`))
	if len(name)+4 > math.MaxUint16 {
		return nil, errors.New("load option file path too long")
	}
	path = append(path, 4, 4)
	path = binary.LittleEndian.AppendUint16(path, uint16(len(name)+4))
	path = append(path, name...)
	path = append(path, 0x7f, 0xff, 4, 0) // end of the device path

	var out []byte
	attrs := uint32(0)
	if o.Active {
		attrs |= loadOptionActive
	}
	out = binary.LittleEndian.AppendUint32(out, attrs)
	out = binary.LittleEndian.AppendUint16(out, uint16(len(path)))
	out = append(out, ucs2(o.Description)...)
	out = append(out, path...)
	return out, nil
}

// ParseLoadOption decodes an EFI_LOAD_OPTION: its attributes, description
// and, when it is HD()/File(), the disk and file.
func ParseLoadOption(b []byte) (LoadOption, error) {
	var o LoadOption
	if len(b) < 6 {
		return o, fmt.Errorf("load option of %d bytes", len(b))
	}
	o.Active = binary.LittleEndian.Uint32(b)&loadOptionActive != 0
	pathLen := int(binary.LittleEndian.Uint16(b[4:]))
	desc, rest, err := parseUCS2(b[6:])
	if err != nil {
		return o, fmt.Errorf("load option description: %w", err)
	}
	o.Description = desc
	if pathLen > len(rest) {
		return o, fmt.Errorf("load option device path of %d bytes, %d left", pathLen, len(rest))
	}
	o.rawPath = rest[:pathLen]
	o.Disk, o.File = parsePath(o.rawPath)
	return o, nil
}

// parsePath recognizes HD()/File()/End; anything else gives nil, "".
func parsePath(p []byte) (*HardDrive, string) {
	if len(p) < 42 || p[0] != 4 || p[1] != 1 || binary.LittleEndian.Uint16(p[2:]) != 42 || p[40] != 2 || p[41] != 2 {
		return nil, ""
	}
	var g [16]byte
	copy(g[:], p[24:40])
	hd := &HardDrive{
		Number: binary.LittleEndian.Uint32(p[4:]),
		Start:  binary.LittleEndian.Uint64(p[8:]),
		Size:   binary.LittleEndian.Uint64(p[16:]),
		GUID:   fromMixedEndian(g),
	}
	p = p[42:]
	if len(p) < 4 || p[0] != 4 || p[1] != 4 {
		return hd, ""
	}
	n := int(binary.LittleEndian.Uint16(p[2:]))
	if n < 4 || n > len(p) {
		return hd, ""
	}
	name, _, err := parseUCS2(p[4:n])
	if err != nil {
		return hd, ""
	}
	return hd, strings.ReplaceAll(name, `\`, "/")
}

// String renders o's path as the UEFI shell and OVMF print it.
func (o LoadOption) String() string {
	if o.Disk == nil {
		return fmt.Sprintf("%q <device path of %d bytes>", o.Description, len(o.rawPath))
	}
	return fmt.Sprintf("%q HD(%d,GPT,%s,0x%X,0x%X)/File(%s)", o.Description, o.Disk.Number,
		strings.ToUpper(o.Disk.GUID.String()), o.Disk.Start, o.Disk.Size, strings.ReplaceAll(o.File, "/", `\`))
}

// ucs2 is s in UTF-16LE with a terminating NUL.
func ucs2(s string) []byte {
	var out []byte
	for _, u := range utf16.Encode([]rune(s)) {
		out = binary.LittleEndian.AppendUint16(out, u)
	}
	return append(out, 0, 0)
}

// parseUCS2 reads a NUL-terminated UTF-16LE string from b.
func parseUCS2(b []byte) (string, []byte, error) {
	var units []uint16
	for i := 0; i+1 < len(b); i += 2 {
		u := binary.LittleEndian.Uint16(b[i:])
		if u == 0 {
			return string(utf16.Decode(units)), b[i+2:], nil
		}
		units = append(units, u)
	}
	return "", nil, errors.New("no terminating NUL")
}

// mixedEndian is u as UEFI stores a GUID (the first three fields little
// endian).
func mixedEndian(u uuid.UUID) (o [16]byte) {
	for i, from := range mixedOrder {
		o[i] = u[from]
	}
	return o
}

func fromMixedEndian(b [16]byte) (u uuid.UUID) {
	for i, to := range mixedOrder {
		u[to] = b[i]
	}
	return u
}

var mixedOrder = [16]int{3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15}

// Vars are the global-vendor EFI variables of an efivarfs directory: each
// file is named <Name>-<vendor GUID> and holds the 4-byte attributes, then
// the data.
type Vars struct {
	Dir string
}

func (v Vars) path(name string) string {
	return filepath.Join(v.Dir, name+"-"+GlobalVendor.String())
}

// Read returns the variable's data and attributes.
func (v Vars) Read(name string) ([]byte, uint32, error) {
	b, err := os.ReadFile(v.path(name))
	if err != nil {
		return nil, 0, err
	}
	if len(b) < 4 {
		return nil, 0, fmt.Errorf("EFI variable %s: %d bytes", name, len(b))
	}
	return b[4:], binary.LittleEndian.Uint32(b), nil
}

// Write creates or replaces the variable, in one write as efivarfs wants.
// Runtime access implies boot-service access (as Talos's writer does).
func (v Vars) Write(name string, attrs uint32, data []byte) error {
	p := v.path(name)
	if _, err := os.Stat(p); err == nil {
		if err := clearImmutable(p); err != nil {
			return fmt.Errorf("EFI variable %s: %w", name, err)
		}
	}
	if attrs&AttrRuntimeAccess != 0 {
		attrs |= AttrBootserviceAccess
	}
	buf := binary.LittleEndian.AppendUint32(nil, attrs)
	buf = append(buf, data...)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write EFI variable %s: %w", name, err)
	}
	_, err = f.Write(buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write EFI variable %s: %w", name, err)
	}
	return nil
}

// Delete removes the variable.
func (v Vars) Delete(name string) error {
	p := v.path(name)
	if err := clearImmutable(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("EFI variable %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("delete EFI variable %s: %w", name, err)
	}
	return nil
}

// List returns the names of the global-vendor variables.
func (v Vars) List() ([]string, error) {
	ents, err := os.ReadDir(v.Dir)
	if err != nil {
		return nil, err
	}
	suffix := "-" + GlobalVendor.String()
	var out []string
	for _, e := range ents {
		if name, ok := strings.CutSuffix(e.Name(), suffix); ok && !e.IsDir() {
			out = append(out, name)
		}
	}
	return out, nil
}

// clearImmutable drops the immutable flag efivarfs puts on variables it
// does not know to be safe to change (not needed for Boot####, harmless);
// on other filesystems (tests) the ioctl is not supported and ignored.
func clearImmutable(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil {
		if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			return nil
		}
		return fmt.Errorf("get flags: %w", err)
	}
	const immutable = 0x10 // FS_IMMUTABLE_FL
	if flags&immutable == 0 {
		return nil
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags&^immutable)); err != nil {
		return fmt.Errorf("clear immutable: %w", err)
	}
	return nil
}

var bootVar = regexp.MustCompile(`^Boot([0-9A-Fa-f]{4})$`)

// Entries reads every Boot#### variable, by number.
func Entries(v Vars) (map[int]LoadOption, error) {
	names, err := v.List()
	if err != nil {
		return nil, fmt.Errorf("list EFI variables: %w", err)
	}
	out := map[int]LoadOption{}
	for _, name := range names {
		m := bootVar.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		n, _ := strconv.ParseUint(m[1], 16, 16)
		b, _, err := v.Read(name)
		if err != nil {
			return nil, err
		}
		o, err := ParseLoadOption(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out[int(n)] = o
	}
	return out, nil
}

// BootOrder reads the BootOrder variable (nil when there is none).
func BootOrder(v Vars) ([]uint16, error) {
	b, _, err := v.Read("BootOrder")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b)%2 != 0 {
		return nil, fmt.Errorf("BootOrder of %d bytes", len(b))
	}
	out := make([]uint16, len(b)/2)
	for i := range out {
		out[i] = binary.LittleEndian.Uint16(b[2*i:])
	}
	return out, nil
}

// Result is what CreateBootEntry did.
type Result struct {
	Index   int   // the Boot#### written
	Removed []int // other "Talos Linux UKI" entries deleted
	Entry   LoadOption
}

// Name is the variable name of the written entry.
func (r Result) Name() string { return fmt.Sprintf("Boot%04X", r.Index) }

// CreateBootEntry does what Talos's sdboot.CreateBootEntry does: the entry
// takes the lowest number of the existing "Talos Linux UKI" entries (the
// others are deleted) or else the lowest free number; BootOrder is left as
// it is.
func CreateBootEntry(v Vars, esp HardDrive, file string) (Result, error) {
	entries, err := Entries(v)
	if err != nil {
		return Result{}, err
	}
	var talos []int
	for n, e := range entries {
		if e.Description == TalosEntry {
			talos = append(talos, n)
		}
	}
	slices.Sort(talos)
	r := Result{Index: -1}
	for i := range math.MaxUint16 {
		if _, ok := entries[i]; !ok {
			r.Index = i
			break
		}
	}
	if r.Index < 0 {
		return Result{}, errors.New("all 2^16 boot entry variables are occupied")
	}
	for i, n := range talos {
		if i == 0 {
			r.Index = n
			continue
		}
		if err := v.Delete(fmt.Sprintf("Boot%04X", n)); err != nil {
			return Result{}, err
		}
		r.Removed = append(r.Removed, n)
	}
	r.Entry = LoadOption{Description: TalosEntry, Active: true, Disk: &esp, File: file}
	b, err := r.Entry.Marshal()
	if err != nil {
		return Result{}, err
	}
	// Talos: non-volatile, runtime access (boot-service access implied).
	if err := v.Write(r.Name(), AttrNonVolatile|AttrRuntimeAccess, b); err != nil {
		return Result{}, err
	}
	return r, nil
}

// FormatOrder renders a BootOrder as efibootmgr does: 0001,0000,...
func FormatOrder(order []uint16) string {
	s := make([]string, len(order))
	for i, n := range order {
		s[i] = fmt.Sprintf("%04X", n)
	}
	return strings.Join(s, ",")
}
