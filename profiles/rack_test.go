package profiles

import (
	"strings"
	"testing"
)

func TestLoadExample(t *testing.T) {
	r, err := Load("rack.yaml", ExampleRack)
	if err != nil {
		t.Fatalf("load example: %v", err)
	}
	if got := len(r.Machines); got != 6 {
		t.Fatalf("machines = %d, want 6", got)
	}
	if r.Machines[5].Name != "amdusias-ii" || len(r.Machines[5].Schematic.Extensions) != 2 {
		t.Errorf("amdusias-ii = %+v", r.Machines[5])
	}
	if p := r.PosOf("machines[1].select.mac[0]"); p.Line == 0 {
		t.Errorf("no position for urban's MAC")
	}
}

func TestLoadReportsAllUnknownFieldsWithLines(t *testing.T) {
	src := "cluster:\n  name: x\n  vipp: 1.2.3.4\nmachines:\n  - name: a\n    rol: worker\n"
	_, err := Load("rack.yaml", []byte(src))
	ps, ok := err.(Problems)
	if !ok || len(ps) != 2 {
		t.Fatalf("err = %v, want 2 problems", err)
	}
	if !strings.HasPrefix(ps[0].String(), "rack.yaml:3:3:") || !strings.Contains(ps[0].Msg, "vip") {
		t.Errorf("first = %s", ps[0])
	}
	if !strings.HasPrefix(ps[1].String(), "rack.yaml:6:5:") || !strings.Contains(ps[1].Msg, "role") {
		t.Errorf("second = %s", ps[1])
	}
}
