package main

import (
	"bytes"
	"errors"
	"math"
	"os"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	f, err := os.Open("testdata/p1.csv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 4 {
		t.Fatalf("%d rows, want 4 (two units × two benchmarks; geomean and one-file tables skipped): %+v", len(rows), rows)
	}
	r := rows[0]
	if r.Unit != "sec/op" || r.Name != "P1/c6" || r.Base != 0.0405 || r.Peer != 0.0305 || r.BaseCI != 0.03 || r.PeerCI != 0.04 ||
		!r.Significant || r.P != 0.002 || r.N != 6 {
		t.Errorf("first row %+v", r)
	}
	if r := rows[1]; r.Significant || !math.IsInf(r.BaseCI, 1) || r.N != 2 {
		t.Errorf("second row %+v: want not significant, ∞ interval, n=2", r)
	}
	if r := rows[2]; r.Unit != "MiB/s" || r.Base != 2350 {
		t.Errorf("third row %+v", r)
	}
}

func TestParseRejects(t *testing.T) {
	for name, in := range map[string]string{
		"empty":      "",
		"one file":   ",a.txt,\n,sec/op,CI\nP1,1,2%\n",
		"short row":  ",a,,b,,,\n,sec/op,CI,sec/op,CI,vs base,P\nP1,1,2%\n", // benchstat's line for a side with no value
		"bad number": ",a,,b,,,\n,sec/op,CI,sec/op,CI,vs base,P\nP1,x,2%,1,2%,~,p=1 n=6\n",
		"bad ci":     ",a,,b,,,\n,sec/op,CI,sec/op,CI,vs base,P\nP1,1,2,1,2%,~,p=1 n=6\n",
		"bad p":      ",a,,b,,,\n,sec/op,CI,sec/op,CI,vs base,P\nP1,1,2%,1,2%,~,p=x n=6\n",
		"inf center": ",a,,b,,,\n,sec/op,CI,sec/op,CI,vs base,P\nP1,+Inf,2%,1,2%,~,p=1 n=6\n",
	} {
		if _, err := Parse(strings.NewReader(in)); err == nil {
			t.Errorf("%s: no error", name)
		} else if (name == "empty" || name == "short row" || name == "one file") && !errors.Is(err, ErrNoTable) {
			t.Errorf("%s: %v, want ErrNoTable", name, err)
		}
	}
}

func TestDecide(t *testing.T) {
	inf := math.Inf(1)
	atMost := func(r float64) Target { return Target{AtMost: true, Ratio: r} }
	atLeast := func(r float64) Target { return Target{Ratio: r} }
	for _, tc := range []struct {
		name string
		row  Row
		t    Target
		want string
	}{
		{"time, faster, significant", Row{Base: 1, Peer: 1.3, BaseCI: .03, PeerCI: .03, Significant: true}, atMost(1), Met},
		{"time, slower, significant", Row{Base: 1.3, Peer: 1, BaseCI: .03, PeerCI: .03, Significant: true}, atMost(1), Missed},
		{"time, slower, not significant", Row{Base: 1.3, Peer: 1, BaseCI: inf, PeerCI: inf}, atMost(1), NoSigDif},
		{"rate, higher, significant", Row{Base: 2400, Peer: 2000, BaseCI: .02, PeerCI: .02, Significant: true}, atLeast(1), Met},
		{"rate, lower, significant", Row{Base: 1900, Peer: 2000, BaseCI: .01, PeerCI: .01, Significant: true}, atLeast(1), Missed},
		{"rate, lower, ~", Row{Base: 1990, Peer: 2000, BaseCI: .05, PeerCI: .05}, atLeast(1), NoSigDif},
		// P4: ≤ 1.2× a direct boot.
		{"1.2: whole range below", Row{Base: 17, Peer: 16, BaseCI: .02, PeerCI: .02, Significant: true}, atMost(1.2), Met},
		{"1.2: whole range above", Row{Base: 20, Peer: 14, BaseCI: .02, PeerCI: .02, Significant: true}, atMost(1.2), Missed},
		{"1.2: range holds the target", Row{Base: 17, Peer: 14, BaseCI: .05, PeerCI: .05, Significant: true}, atMost(1.2), NoSigDif},
		{"1.2: no interval", Row{Base: 10, Peer: 14, BaseCI: inf, PeerCI: .01}, atMost(1.2), NoSigDif},
		{">= 0.5: above", Row{Base: 10, Peer: 14, BaseCI: .01, PeerCI: .01}, atLeast(0.5), Met},
		{">= 0.9: below", Row{Base: 10, Peer: 14, BaseCI: .01, PeerCI: .01}, atLeast(0.9), Missed},
		{"zero peer", Row{Base: 10, Peer: 0, BaseCI: .01, PeerCI: .01, Significant: true}, atMost(1), NoSigDif},
		{"equal, significant (ties)", Row{Base: 1, Peer: 1, Significant: true}, atMost(1), Met},
	} {
		got := Decide(tc.row, tc.t)
		if got.Verdict != tc.want {
			t.Errorf("%s: %s (%s, ratio %v [%v-%v]), want %s", tc.name, got.Verdict, got.Why, got.Ratio, got.Lo, got.Hi, tc.want)
		}
		if tc.row.Peer > 0 && !math.IsNaN(got.Lo) && !(got.Lo <= got.Ratio && got.Ratio <= got.Hi) {
			t.Errorf("%s: ratio %v outside its range [%v-%v]", tc.name, got.Ratio, got.Lo, got.Hi)
		}
	}
}

func TestParseTarget(t *testing.T) {
	for in, want := range map[string]Target{"<=1.2": {true, 1.2}, "≤1": {true, 1}, ">=1.0": {false, 1}, "≥ 0.5": {false, 0.5}} {
		got, err := ParseTarget(in)
		if err != nil || got != want {
			t.Errorf("ParseTarget(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1.2", "<=0", "<=-1", ">=x", "<=Inf", "<=NaN"} {
		if _, err := ParseTarget(in); err == nil {
			t.Errorf("ParseTarget(%q): no error", in)
		}
	}
}

func TestRun(t *testing.T) {
	in, err := os.ReadFile("testdata/p1.csv")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(bytes.NewReader(in), &out, "P1/c6", "MiB/s", ">=1.0"); err != nil {
		t.Fatal(err)
	}
	if want := "met\t1.15× [1.11-1.18] (benchstat: significant (p=0.002 n=6))\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
	out.Reset()
	if err := run(bytes.NewReader(in), &out, "P1/c100", "MiB/s", ">=1.0"); err != nil || !strings.HasPrefix(out.String(), "no significant difference\t1.15× [no interval]") {
		t.Errorf("n=2: %q %v", out.String(), err)
	}
	if err := run(bytes.NewReader(in), &out, "P1/c7", "MiB/s", ">=1.0"); err == nil || !strings.Contains(err.Error(), "P1/c7") {
		t.Errorf("unknown benchmark: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("testdata/p1.csv"); err == nil {
		f.Add(string(b))
	}
	f.Add(",a,,b,,,\n,sec/op,CI,sec/op,CI,vs base,P\nP1,1,∞,2,3%,~,p=0.3 n=2\n")
	f.Fuzz(func(t *testing.T, in string) {
		rows, err := Parse(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, r := range rows {
			if r.BaseCI < 0 || r.PeerCI < 0 || math.IsNaN(r.Base) || math.IsNaN(r.Peer) {
				t.Fatalf("bad row %+v from %q", r, in)
			}
			res := Decide(r, Target{AtMost: true, Ratio: 1.2})
			if res.Verdict != Met && res.Verdict != Missed && res.Verdict != NoSigDif {
				t.Fatalf("verdict %q", res.Verdict)
			}
		}
	})
}

func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"<=1.2", ">=1", "≤2", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		tg, err := ParseTarget(in)
		if err == nil && !(tg.Ratio > 0) {
			t.Fatalf("ParseTarget(%q) = %+v", in, tg)
		}
	})
}
