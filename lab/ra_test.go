package lab

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestRAMessage(t *testing.T) {
	mac := net.HardwareAddr{0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc}
	msg := RAMessage(mac)
	want := []byte{134, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc}
	if !bytes.Equal(msg, want) {
		t.Fatalf("RAMessage = % x\nwant        % x", msg, want)
	}
	ra, err := parseRA(msg)
	if err != nil {
		t.Fatal(err)
	}
	if ra.managed || ra.other || ra.lifetime != 0 || ra.prefixes != 0 || ra.sourceLL.String() != mac.String() {
		t.Errorf("parsed %+v: want M=0 O=0, lifetime 0, no prefix, source %s", ra, mac)
	}
	if got := RAMessage(nil); len(got) != 16 || got[0] != 134 {
		t.Errorf("RAMessage(nil) = % x, want a bare 16-byte advertisement", got)
	}
}

func TestCheckRS(t *testing.T) {
	ll := netip.MustParseAddr("fe80::5054:ff:feb0:1")
	mac := []byte{0x52, 0x54, 0x00, 0xb0, 0x00, 0x01}
	rs := func(opts ...byte) []byte { return append([]byte{133, 0, 0x12, 0x34, 0, 0, 0, 0}, opts...) }
	slla := append([]byte{1, 1}, mac...)
	for _, tc := range []struct {
		name    string
		src     netip.Addr
		hop     int
		msg     []byte
		wantErr string
		wantMAC string
	}{
		{name: "iPXE's: link-local with its MAC", src: ll, hop: 255, msg: rs(slla...), wantMAC: "52:54:00:b0:00:01"},
		{name: "no options", src: ll, hop: 255, msg: rs()},
		{name: "hop limit unknown", src: ll, hop: -1, msg: rs(slla...), wantMAC: "52:54:00:b0:00:01"},
		{name: "unspecified source, no option", src: netip.IPv6Unspecified(), hop: 255, msg: rs()},
		{name: "unknown option skipped", src: ll, hop: 255, msg: rs(append([]byte{14, 1, 9, 9, 9, 9, 9, 9}, slla...)...), wantMAC: "52:54:00:b0:00:01"},
		{name: "forwarded", src: ll, hop: 64, msg: rs(slla...), wantErr: "hop limit 64"},
		{name: "not a solicitation", src: ll, hop: 255, msg: RAMessage(mac), wantErr: "not a router solicitation"},
		{name: "code", src: ll, hop: 255, msg: []byte{133, 1, 0, 0, 0, 0, 0, 0}, wantErr: "code 1"},
		{name: "short", src: ll, hop: 255, msg: []byte{133, 0, 0, 0}, wantErr: "4 bytes"},
		{name: "zero-length option", src: ll, hop: 255, msg: rs(1, 0, 0, 0, 0, 0, 0, 0), wantErr: "length 0"},
		{name: "option past the end", src: ll, hop: 255, msg: rs(1, 2, 0, 0, 0, 0, 0, 0), wantErr: "only 8 left"},
		{name: "option header cut", src: ll, hop: 255, msg: rs(1), wantErr: "cut short"},
		{name: "unspecified source with link-layer address", src: netip.IPv6Unspecified(), hop: 255, msg: rs(slla...), wantErr: "unspecified"},
		{name: "multicast source", src: netip.MustParseAddr("ff02::1"), hop: 255, msg: rs(), wantErr: "multicast"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CheckRS(tc.src, tc.hop, tc.msg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("CheckRS: %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.SourceLL.String() != tc.wantMAC {
				t.Errorf("source MAC %q, want %q", got.SourceLL, tc.wantMAC)
			}
		})
	}
}

func TestParseRA(t *testing.T) {
	// A typical home router's: hop limit 64, O flag, lifetime 1800 s, one prefix.
	prefix := append([]byte{3, 4, 64, 0xc0}, make([]byte, 28)...)
	msg := append([]byte{134, 0, 0, 0, 64, 0x40, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0}, prefix...)
	ra, err := parseRA(msg)
	if err != nil {
		t.Fatal(err)
	}
	if ra.hopLimit != 64 || ra.managed || !ra.other || ra.lifetime != 1800*time.Second || ra.prefixes != 1 {
		t.Errorf("parsed %+v", ra)
	}
	for _, bad := range [][]byte{nil, msg[:15], append([]byte{133}, msg[1:]...), append(msg[:16:16], 3, 0)} {
		if _, err := parseRA(bad); err == nil {
			t.Errorf("parseRA(% x) accepted", bad)
		}
	}
}

func FuzzCheckRS(f *testing.F) {
	f.Add([]byte{133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x52, 0x54, 0, 0xb0, 0, 1}, 255, true)
	f.Add([]byte{133, 0, 0, 0, 0, 0, 0, 0, 1, 0}, 255, false)
	f.Fuzz(func(t *testing.T, msg []byte, hop int, unspecified bool) {
		src := netip.MustParseAddr("fe80::1")
		if unspecified {
			src = netip.IPv6Unspecified()
		}
		rs, err := CheckRS(src, hop, msg)
		if err != nil {
			return
		}
		if msg[0] != 133 || msg[1] != 0 || (hop >= 0 && hop != 255) {
			t.Fatalf("accepted % x with hop limit %d", msg, hop)
		}
		if rs.SourceLL != nil && (len(rs.SourceLL) != 6 || unspecified) {
			t.Fatalf("source MAC %v from % x (unspecified %v)", rs.SourceLL, msg, unspecified)
		}
	})
}

func FuzzParseRA(f *testing.F) {
	f.Add(RAMessage(net.HardwareAddr{2, 0, 0, 0, 0, 1}))
	f.Add([]byte{134, 0, 0, 0, 64, 0xc0, 0, 30, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0})
	f.Fuzz(func(t *testing.T, msg []byte) {
		ra, err := parseRA(msg)
		if err != nil {
			return
		}
		if ra.optionLen != len(msg)-16 || ra.optionLen%8 != 0 {
			t.Fatalf("options of % x: %d bytes", msg, ra.optionLen)
		}
	})
}
