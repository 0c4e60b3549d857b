// Command verdict reads benchstat's CSV comparison of rackboot (the base
// file) with a peer and prints one row's verdict against a target ratio
// rackboot ÷ peer: "met", "missed" or "no significant difference", then a
// tab, the ratio with the range the confidence intervals allow, and why.
//
//	benchstat -format csv rackboot.txt peer.txt | verdict -bench P5/iso -unit sec/op -target '<=1.0'
//
// scripts/bench.sh uses it for every row's table cell.
package main

import (
	"flag"
	"fmt"
	"io"
	"math"
	"os"
)

func main() {
	bench := flag.String("bench", "", "benchmark name as benchstat prints it (P5/iso)")
	unit := flag.String("unit", "sec/op", "unit of the table to judge (sec/op, MiB/s, ...)")
	target := flag.String("target", "", "bound on rackboot ÷ peer: <=R (times) or >=R (rates)")
	flag.Parse()
	if err := run(os.Stdin, os.Stdout, *bench, *unit, *target); err != nil {
		fmt.Fprintln(os.Stderr, "verdict:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer, bench, unit, target string) error {
	t, err := ParseTarget(target)
	if err != nil {
		return err
	}
	rows, err := Parse(in)
	if err != nil {
		return err
	}
	for _, r := range rows {
		if r.Name == bench && r.Unit == unit {
			res := Decide(r, t)
			_, err := fmt.Fprintf(out, "%s\t%s (%s)\n", res.Verdict, FormatRatio(res), res.Why)
			return err
		}
	}
	return fmt.Errorf("no row %q in unit %q in benchstat's output: check -bench and -unit against the Benchmark lines", bench, unit)
}

// FormatRatio is "1.05× [0.98-1.12]" ("∞" for an unbounded end, "[no
// interval]" where benchstat had too few samples for one).
func FormatRatio(r Result) string {
	if math.IsNaN(r.Ratio) {
		return "n/a"
	}
	if math.IsNaN(r.Lo) || math.IsNaN(r.Hi) {
		return fmt.Sprintf("%.2f× [no interval]", r.Ratio)
	}
	end := func(v float64) string {
		if math.IsInf(v, 1) || math.IsNaN(v) {
			return "∞"
		}
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.2f× [%s-%s]", r.Ratio, end(r.Lo), end(r.Hi))
}
