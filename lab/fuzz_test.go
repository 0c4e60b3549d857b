package lab

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"2G", "512M", "1T", "4GiB", "", "-1", "99999999999999999999G"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && (n < 1<<20 || n > 16<<40) {
			t.Fatalf("ParseSize(%q) = %d: outside 1M..16T", s, n)
		}
	})
}

func FuzzCleanSerial(f *testing.F) {
	for _, s := range []string{"\x1bc\x1b[0mSeaBIOS\r\n", "a\b\bb", "\x1b[", "net0: 52:54:00:b0:00:01\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s := CleanSerial(b)
		if len(s) > len(b) {
			t.Fatalf("cleaned output longer than input")
		}
		if strings.ContainsAny(s, "\x1b\r\b") {
			t.Fatalf("control characters left in %q", s)
		}
		if utf8.Valid(b) && !utf8.ValidString(s) && !strings.ContainsRune(string(b), '\b') && !strings.ContainsRune(string(b), 0x1b) {
			t.Fatalf("valid UTF-8 %q became invalid %q", b, s)
		}
		_ = LastLine(b)
	})
}

func FuzzParseStatStartTime(f *testing.F) {
	f.Add([]byte("1234 (qemu) S 1 1234 1234 0 -1 4194560 5000 0 0 0 100 50 0 0 20 0 3 0 987654 123456 789\n"))
	f.Add([]byte("1 (a) b)"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseStatStartTime(b)
	})
}

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"version":1,"name":"demo","processes":[{"role":"vm:a","pid":42,"startTime":7}]}`))
	f.Add([]byte(`{"version":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseState(b)
		if err != nil {
			return
		}
		if ValidName(s.Name) != nil {
			t.Fatalf("accepted lab name %q", s.Name)
		}
		for _, p := range s.Processes {
			if p.PID <= 1 {
				t.Fatalf("accepted pid %d", p.PID)
			}
		}
	})
}
