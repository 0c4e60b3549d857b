package rackedit

import (
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/dotfile/rackboot/profiles"
)

// style is how the file writes its machines, learnt from the entries there
// (later entries win) with the seed rack's style as the default.
type style struct {
	dashCol int // column of the "-" of an entry
	keyOff  int // from the "-" to the entry's first key ("- name": 2)
	step    int // a nested mapping's indent
	seqOff  int // a nested block list's "-" from its key (0: "key:\n- a")
	flowPad bool
	// entryFlow: the block list's entries are flow mappings (- {name: a}).
	entryFlow bool
	flow      map[string]bool       // field path → written in flow style
	quote     map[string]yaml.Style // field path → quoting chosen where plain would do
	order     map[string][]string   // mapping path → keys in the file's order
}

func (d *doc) style() *style {
	st := &style{
		step:    2,
		keyOff:  2,
		flow:    map[string]bool{"select.mac": true},
		quote:   map[string]yaml.Style{"select.mac[]": yaml.DoubleQuotedStyle},
		order:   map[string][]string{},
		dashCol: -1,
	}
	// The file's own indent, from the first nested block mapping at the top.
	for i := 0; i+1 < len(d.root.Content); i += 2 {
		k, v := d.root.Content[i], d.root.Content[i+1]
		if v.Kind == yaml.MappingNode && v.Style&yaml.FlowStyle == 0 && len(v.Content) > 0 && v.Content[0].Column > k.Column {
			st.step = v.Content[0].Column - k.Column
			break
		}
	}
	st.seqOff = st.step
	if d.seq != nil && d.seq.Kind == yaml.SequenceNode && len(d.seq.Content) > 0 {
		if d.seq.Style&yaml.FlowStyle == 0 {
			st.dashCol = d.dashCol()
			last := d.seq.Content[len(d.seq.Content)-1]
			if off := last.Column - 1 - st.dashCol; off >= 2 && d.indent(last.Line-1) == st.dashCol {
				st.keyOff = off
			}
			if last.Style&yaml.FlowStyle != 0 {
				st.entryFlow = true
				o := d.offset(last.Line, last.Column)
				st.flowPad = o+1 < len(d.src) && d.src[o] == '{' && d.src[o+1] == ' '
			}
		} else {
			last := d.seq.Content[len(d.seq.Content)-1]
			o := d.offset(last.Line, last.Column)
			st.flowPad = o+1 < len(d.src) && d.src[o] == '{' && d.src[o+1] == ' '
		}
		for _, e := range d.seq.Content {
			st.learn(e, "")
		}
	}
	if st.dashCol < 0 {
		st.dashCol = 0
		if d.key != nil {
			st.dashCol = d.key.Column - 1
		} else {
			st.dashCol = d.root.Column - 1
		}
		st.dashCol += st.step
	}
	return st
}

// childPath is the path of key k under path: map fields (labels) have
// one path for all their keys.
func childPath(path, k string) string {
	switch {
	case path == "labels":
		return "labels.*"
	case path == "":
		return k
	default:
		return path + "." + k
	}
}

func (st *style) learn(n *yaml.Node, path string) {
	var keys []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		keys = append(keys, k.Value)
		p := childPath(path, k.Value)
		if p == "patches" {
			continue
		}
		switch v.Kind {
		case yaml.ScalarNode:
			st.learnQuote(p, v)
		case yaml.MappingNode:
			st.flow[p] = v.Style&yaml.FlowStyle != 0
			if !st.flow[p] && len(v.Content) > 0 && v.Content[0].Line > k.Line && v.Content[0].Column > k.Column {
				st.step = v.Content[0].Column - k.Column
			}
			st.learn(v, p)
		case yaml.SequenceNode:
			st.flow[p] = v.Style&yaml.FlowStyle != 0
			if !st.flow[p] && len(v.Content) > 0 && v.Line > k.Line && v.Column >= k.Column {
				st.seqOff = v.Column - k.Column
			}
			for _, c := range v.Content {
				switch c.Kind {
				case yaml.ScalarNode:
					st.learnQuote(p+"[]", c)
				case yaml.MappingNode:
					st.learn(c, p+"[]")
				}
			}
		}
	}
	st.order[path] = mergeOrder(path, st.order[path], keys)
}

// learnQuote records how a string is quoted when quoting was a choice.
func (st *style) learnQuote(path string, v *yaml.Node) {
	if v.ShortTag() != "!!str" {
		return
	}
	switch q := v.Style & (yaml.DoubleQuotedStyle | yaml.SingleQuotedStyle); {
	case q != 0 && plainOK(v.Value, false):
		st.quote[path] = q
	case q == 0 && v.Style&(yaml.LiteralStyle|yaml.FoldedStyle) == 0:
		st.quote[path] = 0
	}
}

// mergeOrder adds keys seen in one entry to the order seen so far, each
// after the key that came before it there and after the keys that follow
// that one and come before it in the struct (so that labels seen after
// select in one entry still go after another entry's address).
func mergeOrder(path string, have, keys []string) []string {
	rank := structOrder[path]
	for j, k := range keys {
		if slices.Contains(have, k) {
			continue
		}
		at := 0
		if j > 0 {
			at = slices.Index(have, keys[j-1]) + 1
		}
		rk := slices.Index(rank, k)
		for rk >= 0 && at < len(have) && !slices.Contains(keys, have[at]) {
			if r := slices.Index(rank, have[at]); r < 0 || r > rk {
				break
			}
			at++
		}
		have = slices.Insert(have, at, k)
	}
	return have
}

// structOrder is the order of the fields of each mapping of a machine, by
// path, from the yaml tags of profiles.Machine.
var structOrder = func() map[string][]string {
	out := map[string][]string{}
	var walk func(t reflect.Type, path string)
	walk = func(t reflect.Type, path string) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			if t.Kind() == reflect.Slice {
				path += "[]"
			}
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || path == "patches[]" {
			return
		}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := strings.Split(f.Tag.Get("yaml"), ",")[0]
			if !f.IsExported() || tag == "" || tag == "-" {
				continue
			}
			out[path] = append(out[path], tag)
			walk(f.Type, childPath(path, tag))
		}
	}
	walk(reflect.TypeOf(profiles.Machine{}), "")
	return out
}()

// sortPairs orders a mapping's keys as the file does; keys the file never
// uses stay after the key that comes before them in the struct.
func (st *style) sortPairs(n *yaml.Node, path string) {
	order := st.order[path]
	type pair struct {
		k, v *yaml.Node
		rank float64
	}
	var pairs []pair
	prev := -1.0
	for i := 0; i+1 < len(n.Content); i += 2 {
		r := prev + 1.0/1024
		if j := slices.Index(order, n.Content[i].Value); j >= 0 {
			r = float64(j)
		}
		pairs = append(pairs, pair{n.Content[i], n.Content[i+1], r})
		prev = r
	}
	sort.SliceStable(pairs, func(a, b int) bool { return pairs[a].rank < pairs[b].rank })
	n.Content = n.Content[:0]
	for _, p := range pairs {
		n.Content = append(n.Content, p.k, p.v)
	}
}

// machineNode is m as a mapping holding only the fields that are set.
func machineNode(m profiles.Machine) (*yaml.Node, error) {
	for _, s := range append([]string{m.Name, string(m.Role), m.Address}, m.Select.MAC...) {
		if !utf8.ValidString(s) {
			return nil, fmt.Errorf("machine %q: a value is not valid UTF-8", m.Name)
		}
	}
	var n yaml.Node
	if err := n.Encode(written(m)); err != nil {
		return nil, fmt.Errorf("encode machine %s: %w", m.Name, err)
	}
	if n.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("encode machine %s: not a mapping", m.Name)
	}
	prune(&n, "")
	return &n, nil
}

// prune drops empty values (and a BMC password, which never gets here).
func prune(n *yaml.Node, path string) bool {
	switch n.Kind {
	case yaml.ScalarNode:
		return n.ShortTag() == "!!null" || (n.ShortTag() == "!!str" && n.Value == "")
	case yaml.MappingNode:
		var keep []*yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := childPath(path, k.Value)
			if p == "bmc.password" || (p != "patches" && prune(v, p)) || (p == "patches" && len(v.Content) == 0) {
				continue
			}
			keep = append(keep, k, v)
		}
		n.Content = keep
		return len(keep) == 0
	case yaml.SequenceNode:
		return len(n.Content) == 0
	}
	return false
}

func spaces(n int) string { return strings.Repeat(" ", max(n, 0)) }

// entry renders a new block entry, "- " and all.
func (st *style) entry(n *yaml.Node) ([]string, error) {
	col := st.dashCol + st.keyOff
	if st.entryFlow {
		return []string{spaces(st.dashCol) + "-" + spaces(st.keyOff-1) + st.flowText(n, "")}, nil
	}
	lines, err := st.mapping(n, "", col)
	if err != nil {
		return nil, err
	}
	lines[0] = spaces(st.dashCol) + "-" + spaces(st.keyOff-1) + lines[0][col:]
	return lines, nil
}

func (st *style) mapping(n *yaml.Node, path string, col int) ([]string, error) {
	st.sortPairs(n, path)
	var out []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		p := childPath(path, k.Value)
		head := spaces(col) + st.key(k.Value, false) + ":"
		switch {
		case v.Kind == yaml.ScalarNode:
			out = append(out, head+" "+st.scalar(v, p, false))
		case st.flow[p]:
			out = append(out, head+" "+st.flowText(v, p))
		case v.Kind == yaml.MappingNode:
			sub, err := st.mapping(v, p, col+st.step)
			if err != nil {
				return nil, err
			}
			out = append(out, head)
			out = append(out, sub...)
		case v.Kind == yaml.SequenceNode:
			out = append(out, head)
			dc := col + st.seqOff
			for _, c := range v.Content {
				var sub []string
				switch {
				case p == "patches":
					s, err := encodeNode(c, st.step)
					if err != nil {
						return nil, err
					}
					for _, l := range s {
						sub = append(sub, spaces(dc+2)+l)
					}
				case c.Kind == yaml.MappingNode:
					s, err := st.mapping(c, p+"[]", dc+2)
					if err != nil {
						return nil, err
					}
					sub = s
				case c.Kind == yaml.ScalarNode:
					sub = []string{spaces(dc+2) + st.scalar(c, p+"[]", false)}
				default:
					sub = []string{spaces(dc+2) + st.flowText(c, p+"[]")}
				}
				sub[0] = spaces(dc) + "- " + strings.TrimLeft(sub[0], " ")
				out = append(out, sub...)
			}
		default:
			return nil, fmt.Errorf("%s: cannot write a %v", p, v.Kind)
		}
	}
	return out, nil
}

// flowText renders a node on one line in flow style.
func (st *style) flowText(n *yaml.Node, path string) string {
	switch n.Kind {
	case yaml.MappingNode:
		if path != "patches[]" && !strings.HasPrefix(path, "patches[].") {
			st.sortPairs(n, path)
		}
		parts := make([]string, 0, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			parts = append(parts, st.key(n.Content[i].Value, true)+": "+st.flowText(n.Content[i+1], childPath(path, n.Content[i].Value)))
		}
		if path == "" && st.flowPad {
			return "{ " + strings.Join(parts, ", ") + " }"
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case yaml.SequenceNode:
		parts := make([]string, len(n.Content))
		for i, c := range n.Content {
			parts[i] = st.flowText(c, path+"[]")
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case yaml.AliasNode:
		if n.Alias != nil {
			return st.flowText(n.Alias, path)
		}
	}
	return st.scalar(n, path, true)
}

func (st *style) key(k string, flow bool) string {
	if plainOK(k, flow) {
		return k
	}
	return strconv.Quote(k)
}

// scalar renders a value: plain when it reads back the same, quoted the
// file's way where it quotes by choice, double-quoted otherwise.
func (st *style) scalar(v *yaml.Node, path string, flow bool) string {
	if t := v.ShortTag(); t != "!!str" {
		if t == "!!null" {
			return "null"
		}
		return v.Value
	}
	s := v.Value
	q, ok := st.quote[path]
	switch {
	case ok && q == yaml.DoubleQuotedStyle:
		return strconv.Quote(s)
	case ok && q == yaml.SingleQuotedStyle && plainOK(strings.ReplaceAll(s, "'", ""), false):
		return "'" + strings.ReplaceAll(s, "'", "''") + "'"
	case plainOK(s, flow):
		return s
	}
	return strconv.Quote(s)
}

// plainOK reports whether s reads back as the same string unquoted.
func plainOK(s string, flow bool) bool {
	if s == "" || strings.ContainsAny(s, "\n\r\t") || (flow && strings.ContainsAny(s, ",[]{}")) {
		return false
	}
	// YAML 1.1 booleans and nulls, which other readers take for them.
	switch strings.ToLower(s) {
	case "y", "n", "yes", "no", "on", "off", "~", "null":
		return false
	}
	out, err := yaml.Marshal(&yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s})
	return err == nil && strings.TrimSuffix(string(out), "\n") == s
}

// encodeNode renders a patch with yaml.v3's encoder, lines from column 0.
func encodeNode(n *yaml.Node, indent int) ([]string, error) {
	var b strings.Builder
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(max(indent, 2))
	if err := enc.Encode(n); err != nil {
		return nil, fmt.Errorf("encode patch: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode patch: %w", err)
	}
	return strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n"), nil
}
