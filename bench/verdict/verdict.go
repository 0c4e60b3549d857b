package main

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// Row is one benchmark of one unit in benchstat's CSV output, comparing
// the base file (rackboot) with the second file (the peer).
type Row struct {
	Unit string
	Name string
	// Base and Peer are the centers (medians); BaseCI and PeerCI are the
	// 95 % confidence intervals as a fraction of the center (0.03 for
	// "3%"), +Inf where benchstat printed "∞" (too few samples).
	Base, Peer     float64
	BaseCI, PeerCI float64
	// Significant is false where benchstat printed "~" (its Mann-Whitney
	// U test found no difference at alpha 0.05).
	Significant bool
	// P and N are benchstat's "p=0.002 n=6"; P is NaN when absent.
	P float64
	N int
}

// ErrNoTable is returned for input that holds no two-file comparison.
var ErrNoTable = errors.New("no benchstat comparison table (benchstat -format csv BASE PEER)")

// Parse reads benchstat's `-format csv` output of two files. Each table
// starts with a line naming the files, then one naming the unit
// (",sec/op,CI,sec/op,CI,vs base,P"), then one line per benchmark; the
// geomean lines, and lines where benchstat left a side out, are skipped.
func Parse(r io.Reader) ([]Row, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.LazyQuotes = true
	var rows []Row
	unit := ""
	for line := 1; ; line++ {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("benchstat CSV: %w", err)
		}
		if len(rec) == 0 || (len(rec) == 1 && strings.TrimSpace(rec[0]) == "") {
			unit = ""
			continue
		}
		if rec[0] == "" {
			// A header: the unit line has "CI" in its third field.
			if len(rec) >= 7 && rec[2] == "CI" && rec[5] == "vs base" {
				unit = rec[1]
			} else if len(rec) >= 3 && rec[2] == "CI" {
				unit = "" // a one-file table: nothing to compare
			}
			continue
		}
		if unit == "" || rec[0] == "geomean" {
			continue
		}
		if len(rec) < 7 {
			// benchstat leaves a side's cells out where it has no value
			// (a zero center): nothing to compare on this line.
			continue
		}
		row, err := parseRow(unit, rec)
		if err != nil {
			return nil, fmt.Errorf("benchstat CSV line %d: %w", line, err)
		}
		rows = append(rows, row)
	}
	if len(rows) == 0 {
		return nil, ErrNoTable
	}
	return rows, nil
}

func parseRow(unit string, rec []string) (Row, error) {
	row := Row{Unit: unit, Name: rec[0], P: math.NaN()}
	var err error
	if row.Base, err = parseNum(rec[1]); err != nil {
		return row, fmt.Errorf("%s base: %w", rec[0], err)
	}
	if row.BaseCI, err = parseCI(rec[2]); err != nil {
		return row, fmt.Errorf("%s base interval: %w", rec[0], err)
	}
	if row.Peer, err = parseNum(rec[3]); err != nil {
		return row, fmt.Errorf("%s peer: %w", rec[0], err)
	}
	if row.PeerCI, err = parseCI(rec[4]); err != nil {
		return row, fmt.Errorf("%s peer interval: %w", rec[0], err)
	}
	row.Significant = strings.TrimSpace(rec[5]) != "~"
	for _, f := range strings.Fields(rec[6]) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "p":
			if row.P, err = strconv.ParseFloat(v, 64); err != nil {
				return row, fmt.Errorf("%s: p-value %q: %w", rec[0], v, err)
			}
		case "n":
			if row.N, err = strconv.Atoi(v); err != nil {
				return row, fmt.Errorf("%s: sample count %q: %w", rec[0], v, err)
			}
		}
	}
	return row, nil
}

func parseNum(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil {
		return 0, err
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("%q is not a finite number", s)
	}
	return v, nil
}

// parseCI turns "3%" into 0.03, "∞" (or empty) into +Inf.
func parseCI(s string) (float64, error) {
	s = strings.TrimSpace(s)
	if s == "∞" || s == "" {
		return math.Inf(1), nil
	}
	p, ok := strings.CutSuffix(s, "%")
	if !ok {
		return 0, fmt.Errorf("interval %q is not a percentage", s)
	}
	v, err := strconv.ParseFloat(p, 64)
	if err != nil || v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("interval %q is not a percentage", s)
	}
	return v / 100, nil
}

// Target is a bound on the ratio rackboot ÷ peer: "<=1.2" (lower is better:
// times) or ">=1.0" (higher is better: rates).
type Target struct {
	AtMost bool
	Ratio  float64
}

// ParseTarget reads "<=R" or ">=R" (also "≤R", "≥R"), R > 0.
func ParseTarget(s string) (Target, error) {
	s = strings.TrimSpace(s)
	var t Target
	switch {
	case strings.HasPrefix(s, "<="):
		t.AtMost, s = true, s[2:]
	case strings.HasPrefix(s, "≤"):
		t.AtMost, s = true, strings.TrimPrefix(s, "≤")
	case strings.HasPrefix(s, ">="):
		s = s[2:]
	case strings.HasPrefix(s, "≥"):
		s = strings.TrimPrefix(s, "≥")
	default:
		return t, fmt.Errorf("target %q: write <=R (rackboot ÷ peer at most R, for times) or >=R (at least R, for rates)", s)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || !(v > 0) || math.IsInf(v, 0) {
		return t, fmt.Errorf("target ratio %q is not a positive number", s)
	}
	t.Ratio = v
	return t, nil
}

func (t Target) String() string {
	if t.AtMost {
		return fmt.Sprintf("≤ %g×", t.Ratio)
	}
	return fmt.Sprintf("≥ %g×", t.Ratio)
}

// Verdicts.
const (
	Met      = "met"
	Missed   = "missed"
	NoSigDif = "no significant difference"
)

// Result is a row's verdict and the ratio rackboot ÷ peer with the range
// the two confidence intervals allow.
type Result struct {
	Verdict       string
	Ratio, Lo, Hi float64
	Why           string
}

// Decide gives the verdict of row against t.
//
// With a target ratio of 1 the question is benchstat's own: is there a
// difference at all? "~" (p ≥ 0.05) is "no significant difference";
// otherwise the side of the difference decides. With another ratio (P4's
// ≤ 1.2× a direct boot) the ratio's range from the two intervals, [base_lo
// ÷ peer_hi, base_hi ÷ peer_lo], must lie wholly on one side of the target;
// a range that holds it (or an interval benchstat could not compute) is
// "no significant difference" from the target.
func Decide(row Row, t Target) Result {
	res := Result{Ratio: math.NaN(), Lo: math.NaN(), Hi: math.NaN()}
	if row.Peer > 0 {
		res.Ratio = row.Base / row.Peer
		lo, hi := row.Base*(1-row.BaseCI), row.Base*(1+row.BaseCI)
		plo, phi := row.Peer*(1-row.PeerCI), row.Peer*(1+row.PeerCI)
		res.Lo, res.Hi = math.Max(lo, 0)/phi, math.Inf(1)
		if plo > 0 {
			res.Hi = hi / plo
		}
	}
	if math.IsInf(row.BaseCI, 1) || math.IsInf(row.PeerCI, 1) {
		res.Lo, res.Hi = math.NaN(), math.NaN() // no range without both intervals
	}
	if row.Peer <= 0 || row.Base < 0 {
		res.Verdict, res.Why = NoSigDif, "the peer's median is not positive: no ratio"
		return res
	}
	if t.Ratio == 1 {
		if !row.Significant {
			res.Verdict, res.Why = NoSigDif, fmt.Sprintf("benchstat: ~ (p=%.3f n=%d)", row.P, row.N)
			return res
		}
		better := row.Base < row.Peer
		if !t.AtMost {
			better = row.Base > row.Peer
		}
		res.Verdict = Missed
		if better || row.Base == row.Peer {
			res.Verdict = Met
		}
		res.Why = fmt.Sprintf("benchstat: significant (p=%.3f n=%d)", row.P, row.N)
		return res
	}
	switch {
	case math.IsInf(row.BaseCI, 1) || math.IsInf(row.PeerCI, 1):
		res.Verdict, res.Why = NoSigDif, fmt.Sprintf("no confidence interval at n=%d (benchstat needs 6)", row.N)
	case t.AtMost && res.Hi <= t.Ratio, !t.AtMost && res.Lo >= t.Ratio:
		res.Verdict, res.Why = Met, "the whole interval meets "+t.String()
	case t.AtMost && res.Lo > t.Ratio, !t.AtMost && res.Hi < t.Ratio:
		res.Verdict, res.Why = Missed, "the whole interval misses "+t.String()
	default:
		res.Verdict, res.Why = NoSigDif, "the interval holds "+t.String()
	}
	return res
}
