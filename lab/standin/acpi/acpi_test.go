package acpi

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"strings"
	"testing"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// kernelEvent is the payload drivers/acpi/event.c multicasts
// (acpi_bus_generate_netlink_event): one ACPI_GENL_ATTR_EVENT (1) attribute
// holding struct acpi_genl_event {char device_class[20]; char bus_id[15];
// u32 type; u32 data;}.
func kernelEvent(t testing.TB, class, busID string, typ, data uint32) genetlink.Message {
	t.Helper()
	var ev bytes.Buffer
	ev.Write(fixed(class, 20))
	ev.Write(fixed(busID, 15))
	_ = binary.Write(&ev, binary.NativeEndian, typ)
	_ = binary.Write(&ev, binary.NativeEndian, data)
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(1, ev.Bytes())
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	// ACPI_GENL_CMD_EVENT (1), ACPI_GENL_VERSION (1).
	return genetlink.Message{Header: genetlink.Header{Command: 1, Version: 1}, Data: b}
}

func fixed(s string, n int) []byte {
	b := make([]byte, n)
	copy(b, s)
	return b
}

func TestParse(t *testing.T) {
	power := kernelEvent(t, "button/power", "LNXPWRBN:00", 0x80, 1)
	sleep := kernelEvent(t, "button/sleep", "LNXSLPBN:00", 0x80, 1)
	ac := kernelEvent(t, "ac_adapter", "ACPI0003:00", 0x80, 0)
	// The arm64 virt machine's button sits behind the GED: its bus_id is
	// the PNP0C0C device's.
	gedPower := kernelEvent(t, "button/power", "PNP0C0C:00", 0x80, 1)
	// Fewer bytes than an attribute header: NewAttributeDecoder fails.
	broken := genetlink.Message{Data: []byte{0x05, 0x00}}
	// An attribute that claims more bytes than there are: the decoder
	// stops (ad.Err), which Talos does not check: no error, no match.
	truncated := genetlink.Message{Data: []byte{0xff, 0x00, 0x01, 0x00, 'b'}}
	// Talos matches a prefix of the attribute text.
	longer := kernelEvent(t, "button/powerx", "X", 0, 0)

	for _, tc := range []struct {
		name    string
		msgs    []genetlink.Message
		want    bool
		wantErr bool
	}{
		{"power button", []genetlink.Message{power}, true, false},
		{"power button behind the GED", []genetlink.Message{gedPower}, true, false},
		{"sleep button", []genetlink.Message{sleep}, false, false},
		{"AC adapter then power button", []genetlink.Message{ac, power}, true, false},
		{"other events only", []genetlink.Message{ac, sleep}, false, false},
		{"prefix is enough", []genetlink.Message{longer}, true, false},
		{"no messages", nil, false, false},
		{"empty message", []genetlink.Message{{}}, false, false},
		{"undecodable alone", []genetlink.Message{broken}, false, true},
		{"truncated attribute", []genetlink.Message{truncated}, false, false},
		{"truncated then power button", []genetlink.Message{truncated, power}, true, false},
		{"undecodable then power button", []genetlink.Message{broken, power}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.msgs, PowerButtonEvent, nil)
			if got != tc.want || (err != nil) != tc.wantErr {
				t.Errorf("Parse = %v, %v; want %v, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestParseLogsIgnored: events other than the power button are logged, as
// Talos's "ignoring ACPI event".
func TestParseLogsIgnored(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	ok, err := Parse([]genetlink.Message{kernelEvent(t, "button/sleep", "LNXSLPBN:00", 0x80, 1)}, PowerButtonEvent, log)
	if ok || err != nil {
		t.Fatalf("Parse = %v, %v", ok, err)
	}
	if !strings.Contains(buf.String(), `msg="ignoring ACPI event"`) || !strings.Contains(buf.String(), "button/sleep") {
		t.Errorf("log: %s", buf.String())
	}
}

func FuzzParse(f *testing.F) {
	for _, m := range []genetlink.Message{
		kernelEvent(f, "button/power", "LNXPWRBN:00", 0x80, 1),
		kernelEvent(f, "button/sleep", "LNXSLPBN:00", 0x80, 1),
		{Data: []byte{0xff, 0x00, 0x01, 0x00, 'b'}},
		{Data: []byte{0x05, 0x00}},
	} {
		f.Add(m.Data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ok, err := Parse([]genetlink.Message{{Data: data}}, PowerButtonEvent, nil)
		if ok && err != nil {
			t.Fatalf("a match with an error: %v", err)
		}
		if ok && !bytes.Contains(data, []byte(PowerButtonEvent)) {
			t.Fatalf("a match without %q in %x", PowerButtonEvent, data)
		}
	})
}
