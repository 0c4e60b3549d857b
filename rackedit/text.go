package rackedit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// doc is a rack file's text with its lines and the nodes that matter.
type doc struct {
	src    []byte
	starts []int // byte offset of each line's first byte
	eol    string
	root   *yaml.Node // the top-level mapping
	key    *yaml.Node // machines (nil: no such key)
	seq    *yaml.Node // its value
}

func parse(src []byte) (*doc, error) {
	d := &doc{src: src, starts: []int{0}, eol: "\n"}
	for i, c := range src {
		if c == '\n' {
			d.starts = append(d.starts, i+1)
		}
	}
	if len(d.starts) > 1 {
		if e := d.starts[1] - 1; e > 0 && src[e-1] == '\r' {
			d.eol = "\r\n"
		}
	}
	var n yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(src)).Decode(&n); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parse rack file: %w", err)
	}
	if n.Kind != yaml.DocumentNode || len(n.Content) == 0 || n.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("the rack file is not a mapping (of cluster, machines and lab)")
	}
	d.root = n.Content[0]
	for i := 0; i+1 < len(d.root.Content); i += 2 {
		if k := d.root.Content[i]; k.Kind == yaml.ScalarNode && k.Value == "machines" {
			d.key, d.seq = k, d.root.Content[i+1]
		}
	}
	if d.seq != nil && d.seq.Kind == yaml.AliasNode {
		return nil, errors.New("machines: is an alias (*name): edit rack.yaml by hand")
	}
	if d.seq != nil && d.seq.Kind == yaml.SequenceNode {
		for _, e := range d.seq.Content {
			if e.Kind != yaml.MappingNode {
				return nil, fmt.Errorf("line %d: a machine that is not a key: value mapping (an alias or an empty entry): edit rack.yaml by hand", e.Line)
			}
		}
	}
	return d, nil
}

func (d *doc) lines() int { return len(d.starts) }

// contentEnd is the offset of line i's line break (or the end of the file).
func (d *doc) contentEnd(i int) int {
	if i+1 < len(d.starts) {
		e := d.starts[i+1] - 1
		if e > d.starts[i] && d.src[e-1] == '\r' {
			e--
		}
		return e
	}
	return len(d.src)
}

// text is line i without its line break.
func (d *doc) text(i int) string { return string(d.line(i)) }

func (d *doc) line(i int) []byte { return d.src[d.starts[i]:d.contentEnd(i)] }

func (d *doc) indent(i int) int {
	t := d.line(i)
	return len(t) - len(bytes.TrimLeft(t, " "))
}

func (d *doc) blank(i int) bool { return len(bytes.TrimSpace(d.line(i))) == 0 }

func (d *doc) comment(i int) bool { return bytes.HasPrefix(bytes.TrimSpace(d.line(i)), []byte("#")) }

// offset turns a node position (1-based line, column in characters) into a
// byte offset.
func (d *doc) offset(line, col int) int {
	if line < 1 || line > len(d.starts) {
		return len(d.src)
	}
	off := d.starts[line-1]
	for c := 1; c < col && off < len(d.src) && d.src[off] != '\n'; c++ {
		_, size := utf8.DecodeRune(d.src[off:])
		off += size
	}
	return off
}

// splice replaces src[from:to] with s.
func splice(src []byte, from, to int, s string) []byte {
	out := make([]byte, 0, len(src)-(to-from)+len(s))
	out = append(out, src[:from]...)
	out = append(out, s...)
	return append(out, src[to:]...)
}

// span is a block entry's lines (0-based): its head comment, its "-" and
// its last line.
type span struct{ head, dash, end int }

// dashCol is the column (0-based) of the machines' "-".
func (d *doc) dashCol() int { return d.seq.Column - 1 }

// blockSpans finds the lines of each entry of a block machines: list.
func (d *doc) blockSpans() ([]span, error) {
	dc := d.dashCol()
	out := make([]span, len(d.seq.Content))
	for k, e := range d.seq.Content {
		dash := -1
		for i := e.Line - 1; i >= d.key.Line; i-- {
			if !d.blank(i) && !d.comment(i) && d.indent(i) == dc && d.line(i)[dc] == '-' {
				dash = i
				break
			}
		}
		if dash < 0 {
			return nil, fmt.Errorf("line %d: cannot find the \"-\" of machine %d: edit rack.yaml by hand", e.Line, k+1)
		}
		end := dash
	scan:
		for i := dash + 1; i < d.lines(); i++ {
			switch {
			case d.blank(i):
			case d.comment(i):
				if d.indent(i) > dc {
					end = i
				}
			case d.indent(i) <= dc:
				break scan
			default:
				end = i
			}
		}
		head := dash
		for head-1 > d.key.Line-1 && !d.blank(head-1) && d.comment(head-1) && d.indent(head-1) <= dc {
			head--
		}
		out[k] = span{head: head, dash: dash, end: end}
	}
	return out, nil
}

// colonEnd is the offset just after the colon of machines:.
func (d *doc) colonEnd() (int, error) {
	off := d.offset(d.key.Line, d.key.Column)
	switch q := d.src[off]; q {
	case '"', '\'':
		off = quotedEnd(d.src, off)
	default:
		off += len(d.key.Value)
	}
	for off < len(d.src) && (d.src[off] == ' ' || d.src[off] == '\t') {
		off++
	}
	if off >= len(d.src) || d.src[off] != ':' {
		return 0, fmt.Errorf("line %d: cannot find the colon after machines: edit rack.yaml by hand", d.key.Line)
	}
	return off + 1, nil
}

// quotedEnd is the offset after the quoted scalar starting at off.
func quotedEnd(src []byte, off int) int {
	q := src[off]
	for i := off + 1; i < len(src); i++ {
		switch {
		case q == '"' && src[i] == '\\':
			i++
		case src[i] == q && q == '\'' && i+1 < len(src) && src[i+1] == '\'':
			i++
		case src[i] == q:
			return i + 1
		}
	}
	return len(src)
}

// flowEnd is the offset just after the flow node (collection or scalar)
// that starts at off: where a ',' ']' or '}' at its own level comes, less
// the spaces and comments before it.
func flowEnd(src []byte, off int) int {
	depth, last := 0, off
	collection := off < len(src) && (src[off] == '[' || src[off] == '{')
	prevSep := true // a quote opens a quoted scalar only after [{,: or a space
	for i := off; i < len(src); i++ {
		c := src[i]
		switch {
		case c == '#' && (i == off || isSpace(src[i-1])):
			for i < len(src) && src[i] != '\n' {
				i++
			}
			prevSep = true
			continue
		case (c == '"' || c == '\'') && prevSep:
			i = quotedEnd(src, i) - 1
			last = i + 1
			prevSep = false
			continue
		case c == '[' || c == '{':
			depth++
		case c == ']' || c == '}':
			if depth == 0 {
				return last
			}
			depth--
			if depth == 0 && collection {
				return i + 1
			}
		case c == ',':
			if depth == 0 {
				return last
			}
		}
		if !isSpace(c) {
			last = i + 1
		}
		prevSep = isSpace(c) || strings.IndexByte("[{,:", c) >= 0
	}
	return last
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// scalarEnd is the offset after the single-line scalar starting at off.
func scalarEnd(src []byte, off int, flow bool) int {
	if off < len(src) && (src[off] == '"' || src[off] == '\'') {
		return quotedEnd(src, off)
	}
	last := off
	for i := off; i < len(src); i++ {
		c := src[i]
		if c == '\n' || c == '\r' || (c == '#' && i > off && isSpace(src[i-1])) || (flow && strings.IndexByte(",]}", c) >= 0) {
			break
		}
		if !isSpace(c) {
			last = i + 1
		}
	}
	return last
}
