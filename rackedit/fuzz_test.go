package rackedit

import (
	"bytes"
	"testing"

	"github.com/dotfile/rackboot/profiles"
)

// FuzzRemoveAdd: on whatever loads as a rack, nothing panics; removing a
// machine and adding it back gives a file that loads with that machine (and
// whatever the functions return loads, since they check it); adding a new
// machine and removing it gives the original bytes back (except for the
// documented bare "machines:" becoming "machines: []").
func FuzzRemoveAdd(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s)
	}
	f.Add([]byte("machines:\n- name: a\n  select: {mac: [\"02:00:00:00:00:01\"]}\n"))
	f.Add([]byte("machines: [{name: a}, {name: b}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := profiles.Load("fuzz.yaml", data)
		if err != nil {
			return
		}
		for i, m := range r.Machines {
			if i == 3 {
				break
			}
			out, err := RemoveMachine(data, m.Name)
			if err != nil {
				continue
			}
			after, err := profiles.Load("fuzz.yaml", out)
			if err != nil {
				t.Fatalf("remove %q gave a file that does not load: %v\n%q", m.Name, err, out)
			}
			if after.Machine(m.Name) != nil && len(after.Machines) != len(r.Machines)-1 {
				t.Fatalf("remove %q left %d machines of %d:\n%q", m.Name, len(after.Machines), len(r.Machines), out)
			}
			back, err := AddMachine(out, m)
			if err != nil {
				continue
			}
			again, err := profiles.Load("fuzz.yaml", back)
			if err != nil || again.Machine(m.Name) == nil {
				t.Fatalf("re-adding %q gave %v:\n%q", m.Name, err, back)
			}
		}
		n := profiles.Machine{Name: "fuzz-new", Role: profiles.RoleWorker, Select: profiles.Selector{MAC: []string{"0e:ff:00:00:00:01"}}, Address: "dhcp"}
		out, err := AddMachine(data, n)
		if err != nil {
			return
		}
		back, err := RemoveMachine(out, n.Name)
		if err != nil {
			t.Fatalf("cannot remove the machine just added: %v\n%q", err, out)
		}
		if !bytes.Equal(back, data) {
			got, err := profiles.Load("fuzz.yaml", back)
			if err != nil {
				t.Fatalf("add+remove gave a file that does not load: %v", err)
			}
			// A rack whose lab.machines was already above its machines
			// becomes valid with the one added, and the removal then lowers
			// lab.machines to what is left: the only difference allowed.
			if r.Lab.Machines > len(r.Machines) && got.Lab.Machines == len(r.Machines) {
				return
			}
			if !bytes.Contains(back, []byte("machines: []")) {
				t.Fatalf("add then remove is not the original:\n%q\n%q", data, back)
			}
		}
	})
}
