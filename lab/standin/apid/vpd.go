package apid

import (
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// This file gives the stand-in the serial Talos's DisksController takes
// from udev's helpers when sysfs has none (T internal/app/machined/pkg/
// controllers/block/disks.go serialFromUdevdHelpers): ata_id for transport
// "ata", scsi_id for "scsi", nothing for any other transport. The lab's
// SATA disks sit on AHCI (proc_name "ahci"), which go-blockdevice calls
// "sata": Talos v1.13.0 runs no helper for them and reports no serial, and
// neither does the stand-in.

// udevHelperSerial is the serial Talos gets from udev's helpers for a disk
// at /sys/block/<dev> (dir) with the given transport, "" when Talos gets
// none. For "ata" it is ata_id's ID_SERIAL (Talos prefers it to
// ID_SERIAL_SHORT), from the pages libata's SCSI translation exposes in
// sysfs. scsi_id (transport "scsi") is not modelled: "".
func udevHelperSerial(dir, transport string) string {
	if strings.ToLower(transport) != "ata" {
		return ""
	}
	pg80, err := os.ReadFile(filepath.Join(dir, "device", "vpd_pg80"))
	if err != nil {
		return ""
	}
	serial, ok := parseVPDSerial(pg80)
	if !ok {
		return ""
	}
	model := ""
	if pg89, err := os.ReadFile(filepath.Join(dir, "device", "vpd_pg89")); err == nil {
		model, _ = parseVPDATAModel(pg89)
	}
	if model == "" {
		// The INQUIRY product is the ATA model's first 16 characters
		// (libata's ata_scsiop_inq_std): the whole model only when
		// shorter than that.
		if m := readAttr(dir, "device/model"); len(m) < 16 {
			model = m
		}
	}
	if model == "" {
		return "" // ID_SERIAL starts with the model: unknown, no serial
	}
	return ataIDSerial(model, serial)
}

// parseVPDSerial reads the Unit Serial Number VPD page (0x80) as the
// kernel exposes it in /sys/block/<dev>/device/vpd_pg80: byte 1 the page
// code, bytes 2-3 the page length (big-endian), the serial from byte 4,
// space-padded. For an ATA disk libata fills it from IDENTIFY words 10-19
// (drivers/ata/libata-scsi.c ata_scsiop_inq_80: page length
// ATA_ID_SERNO_LEN, ata_id_string(ATA_ID_SERNO)), the same words ata_id
// reads. The serial is returned raw (padding kept); ok is false for a
// page that is not 0x80 or is shorter than its header.
func parseVPDSerial(page []byte) (string, bool) {
	if len(page) < 4 || page[1] != 0x80 {
		return "", false
	}
	n := int(page[2])<<8 | int(page[3])
	body := page[4:]
	if n < len(body) {
		body = body[:n]
	}
	return string(body), true
}

// ATA Information VPD page (0x89, SAT): IDENTIFY DEVICE data from byte 60
// (libata's ata_scsiop_inq_89 copies dev->id there, 512 bytes).
const (
	vpd89Identify = 60
	ataIDProd     = 27 // IDENTIFY words 27-46: model number
	ataIDProdLen  = 40
)

// parseVPDATAModel reads the ATA model number from the ATA Information
// VPD page (/sys/block/<dev>/device/vpd_pg89). IDENTIFY strings hold two
// characters a word, the first in the high byte (the kernel's
// ata_id_string); the page holds the words as libata keeps them, in the
// CPU's order, little-endian on the machines the stand-in runs on.
func parseVPDATAModel(page []byte) (string, bool) {
	start := vpd89Identify + 2*ataIDProd
	if len(page) < start+ataIDProdLen || page[1] != 0x89 {
		return "", false
	}
	return ataString(page[start : start+ataIDProdLen]), true
}

// ataString decodes an IDENTIFY string from little-endian words.
func ataString(b []byte) string {
	out := make([]byte, 0, len(b))
	for i := 0; i+1 < len(b); i += 2 {
		out = append(out, b[i+1], b[i])
	}
	return string(out)
}

// ataIDSerial is ata_id's ID_SERIAL: the model and serial, each with
// udev's whitespace and character replacement, joined by "_"; the model
// alone when the serial is empty (systemd src/udev/ata_id/ata_id.c).
func ataIDSerial(model, serial string) string {
	model, serial = udevClean(model), udevClean(serial)
	if serial == "" {
		return model
	}
	return model + "_" + serial
}

// udevClean is udev_replace_whitespace then udev_replace_chars(s, NULL):
// leading and trailing whitespace dropped, each inner run of whitespace
// one "_", and every character outside 0-9A-Za-z and "#+-.:=@_" (valid
// UTF-8 beyond ASCII, and "\x" as udev's escape, kept) replaced by "_"
// (systemd's udev_replace_chars, whitelisted_char_for_devnode).
func udevClean(s string) string {
	if i := strings.IndexByte(s, 0); i >= 0 {
		s = s[:i] // C strings end at NUL
	}
	s = strings.Join(strings.FieldsFunc(s, isUdevSpace), "_")
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if strings.HasPrefix(s[i:], `\x`) {
			r, size = 'x', 2 // udev keeps its own \xNN encoding
			b.WriteByte('\\')
		}
		switch {
		case r == utf8.RuneError && size <= 1:
			b.WriteByte('_')
		case r >= utf8.RuneSelf, strings.ContainsRune("#+-.:=@_", r),
			'0' <= r && r <= '9', 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
		i += size
	}
	return b.String()
}

// isUdevSpace is C's isspace, which udev uses.
func isUdevSpace(r rune) bool {
	return r == ' ' || r == '\t' || r == '\n' || r == '\v' || r == '\f' || r == '\r'
}
