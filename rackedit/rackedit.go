// Package rackedit changes a rack file's text the way a careful person would:
// `rackboot machine adopt` adds a machine, `rackboot machine remove` drops
// one, and the rest of the file stays exactly as the user wrote it.
//
// What it guarantees, for every function here that returns no error:
//
//   - Every byte outside the edited entry is kept: comments, blank lines,
//     key order, indentation, quoting, line endings (LF or CRLF) and a
//     missing final newline. The file is edited by byte ranges taken from
//     yaml.v3's node positions; yaml.v3's encoder (which re-indents the whole
//     document and moves comments) only renders single scalars and patches.
//   - A new entry looks like its neighbours: the same sequence indentation
//     and nested indent, block or flow style for the list and for each field
//     (select.mac written as mac: ["…"] when the file does so), the same key
//     order, the same quoting where quoting was a choice, the same blank
//     lines between entries. It is written after the last machine.
//   - An entry is removed with the comments that belong to it: the comment
//     lines directly above its "- " (no blank line between, indented no
//     deeper than the "-"), its line comments, and the comment lines inside
//     and after it that are indented deeper than its "-". Nothing else,
//     except the blank lines that separated it from the entry before, and
//     "[]" written after machines: when the last machine goes.
//   - AddMachine then RemoveMachine of the same machine gives back the
//     original bytes (tests check it on the seed rack and on odd files).
//     The exception: an empty list written as a bare "machines:", as
//     "machines: ~" or "machines: null", or no machines key at all, comes
//     back as "machines: []".
//   - The result is checked before it is returned: profiles.Load reads it
//     to the same rack as before plus (or minus) that machine and nothing
//     else; otherwise the function returns an error and no text.
package rackedit

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/dotfile/rackboot/profiles"
)

// ErrExists is returned by AddMachine when the rack already has a machine
// with that name or one of its selectors.
var ErrExists = errors.New("already in the rack file")

// ErrUnknownMachine is returned when no machine has the name given.
var ErrUnknownMachine = errors.New("no such machine in the rack file")

// AddMachine returns src with m appended to machines:, after the last machine,
// written in the style of the existing entries (see the package comment).
// Only the fields that are set are written. It refuses a machine whose name,
// MAC, UUID or serial is already in the file, saying on which line.
func AddMachine(src []byte, m profiles.Machine) ([]byte, error) {
	if strings.TrimSpace(m.Name) == "" {
		return nil, errors.New("the new machine has no name: give it one (--name)")
	}
	before, err := load(src)
	if err != nil {
		return nil, err
	}
	if err := checkNew(before, m); err != nil {
		return nil, err
	}
	d, err := parse(src)
	if err != nil {
		return nil, err
	}
	out, err := d.add(m)
	if err != nil {
		return nil, err
	}
	want := *before
	want.Machines = append(slices.Clip(before.Machines), written(m))
	if err := verify(out, &want, "adding "+m.Name); err != nil {
		return nil, err
	}
	return out, nil
}

// RemoveMachine returns src without the machine named name: its entry and
// the comments that belong to it (see the package comment).
func RemoveMachine(src []byte, name string) ([]byte, error) {
	before, err := load(src)
	if err != nil {
		return nil, err
	}
	idx := -1
	for i := range before.Machines {
		if before.Machines[i].Name != name {
			continue
		}
		if idx >= 0 {
			return nil, fmt.Errorf("machine %q is in the rack file twice (lines %d and %d): remove one by hand first",
				name, before.PosOf(fmt.Sprintf("machines[%d]", idx)).Line, before.PosOf(fmt.Sprintf("machines[%d]", i)).Line)
		}
		idx = i
	}
	if idx < 0 {
		return nil, unknown(before, name)
	}
	d, err := parse(src)
	if err != nil {
		return nil, err
	}
	out, err := d.remove(idx)
	if err != nil {
		return nil, err
	}
	want := *before
	want.Machines = slices.Delete(slices.Clone(before.Machines), idx, idx+1)
	// lab.machines (the first N machines make the lab) may not exceed the
	// machines left, or a rack that validated no longer does: it is
	// lowered (a rack that was already over is left as it was).
	if left := len(want.Machines); left > 0 && want.Lab.Machines > left && before.Lab.Machines <= len(before.Machines) {
		d, err := parse(out)
		if err != nil {
			return nil, err
		}
		if out, err = d.setSectionScalar("lab", "machines", strconv.Itoa(left), "!!int"); err != nil {
			return nil, fmt.Errorf("lower lab.machines to %d: %w", left, err)
		}
		want.Lab.Machines = left
	}
	if err := verify(out, &want, "removing "+name); err != nil {
		return nil, err
	}
	return out, nil
}

// SetAddress returns src with the address of machine name set to addr
// ("dhcp" or a CIDR address, not checked here: validate does): the value
// is replaced in place (its line comment kept), or an address: line is
// added after the machine's select.
func SetAddress(src []byte, name, addr string) ([]byte, error) {
	if addr == "" {
		return nil, errors.New("empty address: give dhcp or an address in CIDR form such as 192.168.1.17/24")
	}
	before, err := load(src)
	if err != nil {
		return nil, err
	}
	idx := slices.IndexFunc(before.Machines, func(m profiles.Machine) bool { return m.Name == name })
	if idx < 0 {
		return nil, unknown(before, name)
	}
	d, err := parse(src)
	if err != nil {
		return nil, err
	}
	out, err := d.setScalar(idx, "address", addr, []string{"name", "role", "select"})
	if err != nil {
		return nil, err
	}
	want := *before
	want.Machines = slices.Clone(before.Machines)
	want.Machines[idx].Address = addr
	if err := verify(out, &want, "setting the address of "+name); err != nil {
		return nil, err
	}
	return out, nil
}

func load(src []byte) (*profiles.Rack, error) {
	r, err := profiles.Load("rack.yaml", src)
	if err != nil {
		return nil, fmt.Errorf("the rack file does not load, fix it first (rackboot validate): %w", err)
	}
	return r, nil
}

func unknown(r *profiles.Rack, name string) error {
	names := make([]string, len(r.Machines))
	for i, m := range r.Machines {
		names[i] = m.Name
	}
	if len(names) == 0 {
		return fmt.Errorf("machine %q: %w, which has no machines", name, ErrUnknownMachine)
	}
	return fmt.Errorf("machine %q: %w, which has %s", name, ErrUnknownMachine, strings.Join(names, ", "))
}

// checkNew refuses a machine that is already there by name or selector.
func checkNew(r *profiles.Rack, m profiles.Machine) error {
	line := func(path string) int { return r.PosOf(path).Line }
	for i, o := range r.Machines {
		if o.Name == m.Name {
			return fmt.Errorf("machine %q is %w (line %d): pick another name, or remove it first (rackboot machine remove %s)",
				m.Name, ErrExists, line(fmt.Sprintf("machines[%d].name", i)), m.Name)
		}
		for j, s := range o.Select.MAC {
			have, err := profiles.NormalizeMAC(s)
			if err != nil {
				continue
			}
			for _, t := range m.Select.MAC {
				if mac, err := profiles.NormalizeMAC(t); err == nil && mac.String() == have.String() {
					return fmt.Errorf("MAC %s is %w: machine %q has it (line %d)", mac, ErrExists, o.Name, line(fmt.Sprintf("machines[%d].select.mac[%d]", i, j)))
				}
			}
		}
		if m.Select.UUID != "" && strings.EqualFold(strings.TrimSpace(o.Select.UUID), strings.TrimSpace(m.Select.UUID)) {
			return fmt.Errorf("UUID %s is %w: machine %q has it (line %d)", m.Select.UUID, ErrExists, o.Name, line(fmt.Sprintf("machines[%d].select.uuid", i)))
		}
		if m.Select.Serial != "" && strings.EqualFold(strings.TrimSpace(o.Select.Serial), strings.TrimSpace(m.Select.Serial)) {
			return fmt.Errorf("serial %s is %w: machine %q has it (line %d)", m.Select.Serial, ErrExists, o.Name, line(fmt.Sprintf("machines[%d].select.serial", i)))
		}
	}
	return nil
}

// written is m as the file will hold it: a BMC password is never written,
// nor an empty patch.
func written(m profiles.Machine) profiles.Machine {
	var patches []profiles.Patch
	for _, p := range m.Patches {
		if _, err := p.Bytes(); err == nil {
			patches = append(patches, p)
		}
	}
	m.Patches = patches
	if m.BMC != nil {
		b := *m.BMC
		b.Password = false
		m.BMC = &b
	}
	return m
}

// verify checks that out loads to want.
func verify(out []byte, want *profiles.Rack, what string) error {
	got, err := profiles.Load("rack.yaml", out)
	if err != nil {
		return fmt.Errorf("%s would leave a rack file that does not load (a rackedit bug, or YAML it cannot edit: edit rack.yaml by hand): %w", what, err)
	}
	g, err := canon(got)
	if err != nil {
		return err
	}
	w, err := canon(want)
	if err != nil {
		return err
	}
	if !bytes.Equal(g, w) {
		return fmt.Errorf("%s would change other parts of the rack file (a YAML anchor or merge, a block scalar, or a rackedit bug): edit rack.yaml by hand", what)
	}
	return nil
}

// canon is the rack's meaning as bytes: YAML without styles or comments.
func canon(r *profiles.Rack) ([]byte, error) {
	b, err := yaml.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("marshal rack: %w", err)
	}
	var v any
	if err := yaml.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("re-read rack: %w", err)
	}
	return yaml.Marshal(v)
}

// SetTalosVersion sets cluster.talosVersion in place, keeping its quoting
// and its line comment (`rackboot upgrade` after the last node). The key
// must be there already, as a one-line value.
func SetTalosVersion(src []byte, version string) ([]byte, error) {
	return setClusterVersion(src, "talosVersion", "Talos", "v1.13.1", version,
		func(c *profiles.Cluster) { c.TalosVersion = version })
}

// setClusterVersion sets cluster.<key> to version in place and checks
// that the file then means the rack with set applied, and nothing else.
func setClusterVersion(src []byte, key, what, example, version string, set func(*profiles.Cluster)) ([]byte, error) {
	if version == "" {
		return nil, fmt.Errorf("empty %s version: give one such as %s", what, example)
	}
	before, err := load(src)
	if err != nil {
		return nil, err
	}
	d, err := parse(src)
	if err != nil {
		return nil, err
	}
	out, err := d.setClusterScalar(key, version)
	if err != nil {
		return nil, err
	}
	want := *before
	set(&want.Cluster)
	if err := verify(out, &want, "setting the "+what+" version"); err != nil {
		return nil, err
	}
	return out, nil
}
