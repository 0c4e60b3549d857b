package rackedit

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/dotfile/rackboot/profiles"
)

func (d *doc) rootFlow() bool { return d.root.Style&yaml.FlowStyle != 0 }

func (d *doc) add(m profiles.Machine) ([]byte, error) {
	n, err := machineNode(m)
	if err != nil {
		return nil, err
	}
	st := d.style()
	switch {
	case d.key == nil:
		if d.rootFlow() {
			return nil, errors.New("the rack file is one flow mapping ({...}) without machines: add it by hand")
		}
		lines, err := st.entry(n)
		if err != nil {
			return nil, err
		}
		text := ""
		if len(d.src) > 0 && d.src[len(d.src)-1] != '\n' {
			text = d.eol
		}
		text += spaces(d.root.Column-1) + "machines:" + d.eol + strings.Join(lines, d.eol) + d.eol
		return splice(d.src, len(d.src), len(d.src), text), nil

	case d.seq.Kind == yaml.SequenceNode && d.seq.Style&yaml.FlowStyle != 0:
		open := d.offset(d.seq.Line, d.seq.Column)
		if len(d.seq.Content) == 0 {
			if d.rootFlow() {
				return splice(d.src, open+1, open+1, st.flowText(n, "")), nil
			}
			// machines: [] becomes a block list, like the seed's.
			return d.emptyThenAdd(flowEnd(d.src, open), m)
		}
		k := len(d.seq.Content) - 1
		last := d.seq.Content[k]
		lastEnd := flowEnd(d.src, d.offset(last.Line, last.Column))
		sep := ", "
		if k > 0 {
			prev := d.seq.Content[k-1]
			between := string(d.src[flowEnd(d.src, d.offset(prev.Line, prev.Column)):d.offset(last.Line, last.Column)])
			switch {
			case strings.Count(between, ",") == 1 && strings.TrimSpace(strings.Replace(between, ",", "", 1)) == "":
				sep = between
			case strings.Contains(between, "\n"):
				sep = "," + d.eol + spaces(d.indent(last.Line-1))
			}
		} else if last.Line > d.seq.Line {
			sep = "," + d.eol + spaces(d.indent(last.Line-1))
		}
		return splice(d.src, lastEnd, lastEnd, sep+st.flowText(n, "")), nil

	case d.seq.Kind == yaml.SequenceNode:
		spans, err := d.blockSpans()
		if err != nil {
			return nil, err
		}
		lines, err := st.entry(n)
		if err != nil {
			return nil, err
		}
		k := len(spans) - 1
		var text strings.Builder
		if k > 0 {
			// The blank lines between the last two entries separate the new one.
			var blanks []string
			for i := spans[k].head - 1; i > spans[k-1].end && d.blank(i); i-- {
				blanks = append(blanks, d.text(i))
			}
			for _, b := range blanks {
				text.WriteString(d.eol + b)
			}
		}
		for _, l := range lines {
			text.WriteString(d.eol + l)
		}
		at := d.contentEnd(spans[k].end)
		return splice(d.src, at, at, text.String()), nil

	case d.seq.Kind == yaml.ScalarNode && d.seq.ShortTag() == "!!null" && !d.rootFlow():
		if d.seq.Value != "" { // machines: ~ or null
			return d.emptyThenAdd(d.offset(d.seq.Line, d.seq.Column)+len(d.seq.Value), m)
		}
		lines, err := st.entry(n)
		if err != nil {
			return nil, err
		}
		at := d.contentEnd(d.key.Line - 1)
		return splice(d.src, at, at, d.eol+strings.Join(lines, d.eol)), nil
	}
	return nil, fmt.Errorf("line %d: machines: is neither a list nor empty: fix it first (rackboot validate)", d.key.Line)
}

// emptyThenAdd removes the empty value of machines: (up to end) and adds m
// to the bare key.
func (d *doc) emptyThenAdd(end int, m profiles.Machine) ([]byte, error) {
	ce, err := d.colonEnd()
	if err != nil {
		return nil, err
	}
	nd, err := parse(splice(d.src, ce, end, ""))
	if err != nil {
		return nil, err
	}
	if nd.seq == nil || nd.seq.Kind != yaml.ScalarNode || nd.seq.Value != "" {
		return nil, fmt.Errorf("line %d: cannot empty machines: edit rack.yaml by hand", d.key.Line)
	}
	return nd.add(m)
}

func (d *doc) remove(idx int) ([]byte, error) {
	if d.seq == nil || d.seq.Kind != yaml.SequenceNode || idx >= len(d.seq.Content) {
		return nil, errors.New("machines: is not a list")
	}
	n := len(d.seq.Content)
	if d.seq.Style&yaml.FlowStyle != 0 {
		st := make([]int, n)
		en := make([]int, n)
		for i, e := range d.seq.Content {
			st[i] = d.offset(e.Line, e.Column)
			en[i] = flowEnd(d.src, st[i])
		}
		switch {
		case idx > 0:
			return splice(d.src, en[idx-1], en[idx], ""), nil
		case n > 1:
			return splice(d.src, st[0], st[1], ""), nil
		default:
			return splice(d.src, st[0], en[0], ""), nil
		}
	}
	spans, err := d.blockSpans()
	if err != nil {
		return nil, err
	}
	a, b := spans[idx].head, spans[idx].end
	switch {
	case idx > 0:
		for a-1 > spans[idx-1].end && d.blank(a-1) {
			a--
		}
	case n > 1:
		for b+1 < spans[1].head && d.blank(b+1) {
			b++
		}
	}
	out := splice(d.src, d.contentEnd(a-1), d.contentEnd(b), "")
	if n == 1 && !d.rootFlow() {
		ce, err := d.colonEnd()
		if err != nil {
			return nil, err
		}
		out = splice(out, ce, ce, " []")
	}
	return out, nil
}

// setScalar sets a machine's field to a string: in place when the field is
// there, else as a new key after the last of the keys in after.
func (d *doc) setScalar(idx int, key, value string, after []string) ([]byte, error) {
	e := d.seq.Content[idx]
	flow := d.seq.Style&yaml.FlowStyle != 0 || e.Style&yaml.FlowStyle != 0
	st := &style{quote: map[string]yaml.Style{}}
	for i := 0; i+1 < len(e.Content); i += 2 {
		k, v := e.Content[i], e.Content[i+1]
		if k.Value != key {
			continue
		}
		if v.Kind != yaml.ScalarNode || (v.ShortTag() == "!!null" && v.Value == "") || v.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
			return nil, fmt.Errorf("line %d: %s is not a one-line value: edit rack.yaml by hand", k.Line, key)
		}
		if q := v.Style & (yaml.DoubleQuotedStyle | yaml.SingleQuotedStyle); q != 0 {
			st.quote[key] = q
		}
		from := d.offset(v.Line, v.Column)
		return splice(d.src, from, scalarEnd(d.src, from, flow), st.scalar(&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value}, key, flow)), nil
	}
	text := key + ": " + st.scalar(&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value}, key, flow)
	if flow {
		end := flowEnd(d.src, d.offset(e.Line, e.Column))
		if end == 0 || d.src[end-1] != '}' {
			return nil, fmt.Errorf("line %d: machine %d is not in {...}: edit rack.yaml by hand", e.Line, idx+1)
		}
		at := end - 1
		for at > 0 && isSpace(d.src[at-1]) {
			at--
		}
		return splice(d.src, at, at, ", "+text), nil
	}
	col := e.Column - 1
	j := -1
	for i := 0; i+1 < len(e.Content); i += 2 {
		if slices.Contains(after, e.Content[i].Value) {
			j = i
		}
	}
	if j >= 0 && j+2 < len(e.Content) {
		next := e.Content[j+2]
		line := next.Line - 1
		for line-1 >= 0 && !d.blank(line-1) && d.comment(line-1) && d.indent(line-1) == next.Column-1 {
			line--
		}
		if d.indent(line) != col {
			return nil, fmt.Errorf("line %d: cannot place %s: edit rack.yaml by hand", next.Line, key)
		}
		return splice(d.src, d.starts[line], d.starts[line], spaces(col)+text+d.eol), nil
	}
	spans, err := d.blockSpans()
	if err != nil {
		return nil, err
	}
	last := spans[idx].dash
	for i := spans[idx].dash; i <= spans[idx].end; i++ {
		if !d.blank(i) && !d.comment(i) {
			last = i
		}
	}
	at := d.contentEnd(last)
	return splice(d.src, at, at, d.eol+spaces(col)+text), nil
}

// setClusterScalar replaces the one-line value of cluster.<key> in place.
func (d *doc) setClusterScalar(key, value string) ([]byte, error) {
	return d.setSectionScalar("cluster", key, value, "!!str")
}

// setSectionScalar replaces the one-line value of <section>.<key> in
// place, keeping its quoting; tag is the value's YAML type ("!!str",
// "!!int").
func (d *doc) setSectionScalar(section, key, value, tag string) ([]byte, error) {
	var sec *yaml.Node
	for i := 0; i+1 < len(d.root.Content); i += 2 {
		if d.root.Content[i].Value == section {
			sec = d.root.Content[i+1]
		}
	}
	if sec == nil || sec.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("no %s: mapping in the rack file: edit rack.yaml by hand", section)
	}
	flow := d.rootFlow() || sec.Style&yaml.FlowStyle != 0
	for i := 0; i+1 < len(sec.Content); i += 2 {
		k, v := sec.Content[i], sec.Content[i+1]
		if k.Value != key {
			continue
		}
		if v.Kind != yaml.ScalarNode || v.Value == "" || v.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
			return nil, fmt.Errorf("line %d: %s.%s is not a one-line value: edit rack.yaml by hand", k.Line, section, key)
		}
		st := &style{quote: map[string]yaml.Style{}}
		if q := v.Style & (yaml.DoubleQuotedStyle | yaml.SingleQuotedStyle); q != 0 {
			st.quote[key] = q
		}
		from := d.offset(v.Line, v.Column)
		return splice(d.src, from, scalarEnd(d.src, from, flow), st.scalar(&yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: value}, key, flow)), nil
	}
	return nil, fmt.Errorf("no %s.%s in the rack file: add `%s: %s` under the %s section", section, key, key, value, section)
}
