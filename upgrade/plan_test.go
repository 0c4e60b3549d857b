package upgrade

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Version
		err  string
	}{
		{in: "v1.13.1", want: Version{1, 13, 1, ""}},
		{in: "v0.0.0", want: Version{}},
		{in: "v1.13.0-beta.1", want: Version{1, 13, 0, "beta.1"}},
		{in: "1.13.1", err: "must start with v"},
		{in: "v1.13", err: "three numbers"},
		{in: "v1.13.1.2", err: "three numbers"},
		{in: "v1.013.1", err: "leading zeros"},
		{in: "v1..1", err: "not a number"},
		{in: "v1.x.1", err: "not a number"},
		{in: "v1.13.1-", err: "empty pre-release"},
		{in: "v1.13.1-a..b", err: "empty pre-release part"},
		{in: "v1.13.1-a_b", err: "character"},
		{in: "v-1.13.1", err: "three numbers"},
		{in: "v1.13.1+build", err: "not a number"},
		{in: "", err: "must start with v"},
	} {
		got, err := ParseVersion(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseVersion(%q) = %v, %v; want error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseVersion(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
		if got.String() != tc.in {
			t.Errorf("String() = %q, want %q", got.String(), tc.in)
		}
	}
}

func TestVersionCompare(t *testing.T) {
	// Each is before the next (semver precedence, as semver.org's example).
	order := []string{"v1.0.0-alpha", "v1.0.0-alpha.1", "v1.0.0-alpha.beta", "v1.0.0-beta", "v1.0.0-beta.2", "v1.0.0-beta.11", "v1.0.0-rc.1", "v1.0.0", "v1.0.1", "v1.9.0", "v1.13.0", "v1.13.1", "v2.0.0"}
	for i, a := range order {
		for j, b := range order {
			va, _ := ParseVersion(a)
			vb, _ := ParseVersion(b)
			want := sign(i - j)
			if got := va.Compare(vb); got != want {
				t.Errorf("%s.Compare(%s) = %d, want %d", a, b, got, want)
			}
		}
	}
}

func FuzzParseVersion(f *testing.F) {
	for _, s := range []string{"v1.13.1", "v1.13.0-beta.1", "v0.0.0", "v1.2", "v01.2.3", "v1.2.3-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseVersion(s)
		if err != nil {
			return
		}
		if v.String() != s {
			t.Fatalf("ParseVersion(%q).String() = %q", s, v.String())
		}
		if v.Compare(v) != 0 {
			t.Fatalf("%q does not equal itself", s)
		}
	})
}

func TestMakePlan(t *testing.T) {
	target, _ := ParseVersion("v1.13.1")
	machines := []Machine{
		{Name: "w1"},
		{Name: "cp1", ControlPlane: true, Address: "10.0.0.11"},
		{Name: "w2"},
		{Name: "cp2", ControlPlane: true},
		{Name: "cp3", ControlPlane: true},
	}
	for _, tc := range []struct {
		name       string
		machines   []Machine
		current    map[string]string
		order      []string
		skip       []string
		downgrades []string
		err        string
	}{
		{
			name:     "control planes first, each group in rack order",
			machines: machines,
			current:  map[string]string{"w1": "v1.13.0", "cp1": "v1.13.0", "w2": "v1.13.0", "cp2": "v1.13.0", "cp3": "v1.13.0"},
			order:    []string{"cp1", "cp2", "cp3", "w1", "w2"},
		},
		{
			name:     "nodes at the target are skipped, unknown ones are not",
			machines: machines,
			current:  map[string]string{"cp1": "v1.13.1", "cp2": "v1.13.0", "w2": "v1.13.1"},
			order:    []string{"cp1", "cp2", "cp3", "w1", "w2"},
			skip:     []string{"cp1", "w2"},
		},
		{
			name:       "a newer node is a downgrade",
			machines:   machines,
			current:    map[string]string{"cp1": "v1.14.0", "w1": "v1.13.1-rc.1"},
			order:      []string{"cp1", "cp2", "cp3", "w1", "w2"},
			downgrades: []string{"cp1"},
		},
		{name: "bad current version", machines: machines, current: map[string]string{"w1": "1.13"}, err: "node w1 reports version"},
		{name: "duplicate", machines: []Machine{{Name: "a"}, {Name: "a"}}, err: "listed twice"},
		{name: "no name", machines: []Machine{{}}, err: "no name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := MakePlan(tc.machines, tc.current, target)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var order, skip []string
			for _, n := range p.Nodes {
				order = append(order, n.Name)
				if n.Skip {
					skip = append(skip, n.Name)
				}
			}
			if !reflect.DeepEqual(order, tc.order) || !reflect.DeepEqual(skip, tc.skip) || !reflect.DeepEqual(p.Downgrades, tc.downgrades) {
				t.Errorf("order %v skip %v downgrades %v; want %v %v %v", order, skip, p.Downgrades, tc.order, tc.skip, tc.downgrades)
			}
			err = p.Check(false)
			if (len(tc.downgrades) > 0) != errors.Is(err, ErrDowngrade) {
				t.Errorf("Check(false) = %v", err)
			}
			if err := p.Check(true); err != nil {
				t.Errorf("Check(true) = %v", err)
			}
		})
	}
}

func TestWritePlanGolden(t *testing.T) {
	target, _ := ParseVersion("v1.13.1")
	p, err := MakePlan([]Machine{
		{Name: "amdusias", ControlPlane: true, Address: "10.10.0.11", Installer: "factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.13.1"},
		{Name: "formula", ControlPlane: true, Address: "10.10.0.12", Installer: "factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.13.1"},
		{Name: "lailah", Installer: "factory.talos.dev/metal-installer/ce4c980550dd2ab1b17bbf2b08801c7eb59418eafe8f279833297925d67c7515:v1.13.1"},
		{Name: "urban", Installer: "factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.13.1"},
	}, map[string]string{"amdusias": "v1.13.0", "formula": "v1.13.1", "lailah": "v1.13.0"}, target)
	if err != nil {
		t.Fatal(err)
	}
	p.Nodes[3].Why = "rpc error: code = Unavailable desc = connection refused"
	gates := []GateResult{
		{Gate: "etcd is healthy with all 2 members", OK: true},
		{Gate: "Ceph is HEALTH_OK (CephCluster rook-ceph/rook-ceph)", Why: "ceph health is HEALTH_WARN (1 osds down)"},
		{Gate: "every node is Ready", OK: true},
	}
	var b bytes.Buffer
	if err := WritePlan(&b, p, gates); err != nil {
		t.Fatal(err)
	}
	golden(t, "dry-run.txt", b.Bytes())
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -update rewrites it):\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestParseState(t *testing.T) {
	good := `{"target":"v1.13.1","nodes":[{"name":"cp1","installer":"i","phase":"drained","step":"upgrade"}],"started":"2026-01-01T00:00:00Z","updated":"2026-01-01T00:00:00Z"}`
	s, err := ParseState([]byte(good))
	if err != nil || s.Nodes[0].Phase != Drained || s.Finished() {
		t.Fatalf("ParseState(good) = %+v, %v", s, err)
	}
	for _, tc := range []struct{ in, err string }{
		{`{"target":"1.13","nodes":[{"name":"a","phase":"done"}]}`, "target"},
		{`{"target":"v1.13.1","nodes":[]}`, "no nodes"},
		{`{"target":"v1.13.1","nodes":[{"name":"a","phase":"flying"}]}`, "unknown phase"},
		{`{"target":"v1.13.1","nodes":[{"name":"a","phase":"done"},{"name":"a","phase":"done"}]}`, "twice"},
		{`{"target":"v1.13.1","nodes":[{"phase":"done"}]}`, "no name"},
		{`{"target":"v1.13.1","nodes":[{"name":"a","phase":"done"}],"extra":1}`, "unknown field"},
		{`{"target":"v1.13.1","nodes":[{"name":"a","phase":"done"}]} {}`, "trailing"},
		{`{"target":`, "parse JSON"},
	} {
		if _, err := ParseState([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseState(%s) = %v, want %q", tc.in, err, tc.err)
		}
	}
}

func FuzzParseState(f *testing.F) {
	f.Add([]byte(`{"target":"v1.13.1","nodes":[{"name":"cp1","installer":"i","phase":"drained","step":"upgrade","requested":"2026-01-01T00:00:00Z"}],"failed":{"node":"cp1","step":"settle","gate":"g","why":"w","time":"2026-01-01T00:00:00Z"},"started":"2026-01-01T00:00:00Z","updated":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"target":"v1.13.1","nodes":[]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := ParseState(data)
		if err != nil {
			return
		}
		// What parses is written back by writeState and parses again.
		dir := t.TempDir()
		if err := writeState(dir, s); err != nil {
			t.Fatal(err)
		}
		if _, err := ReadState(dir); err != nil {
			t.Fatalf("a parsed state does not read back: %v", err)
		}
	})
}

func TestParseMetrics(t *testing.T) {
	in := `# HELP liveness_livenodes Number of live nodes in the cluster (will be 0 if this node is not itself live)
# TYPE liveness_livenodes gauge
liveness_livenodes{node_id="1"} 3
# TYPE ranges_underreplicated gauge
ranges_underreplicated{store="1",node_id="1"} 2
ranges_underreplicated{store="2",node_id="1"} 1 1700000000000
ranges_unavailable{store="1",label="a \"}\" b"} 0
sql_conns 5e+00

`
	m, err := ParseMetrics([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := Metrics{"liveness_livenodes": 3, "ranges_underreplicated": 3, "ranges_unavailable": 0, "sql_conns": 5}
	if !reflect.DeepEqual(m, want) {
		t.Errorf("got %v, want %v", m, want)
	}
	for _, tc := range []struct{ in, err string }{
		{"1abc 2", "not a metric name"},
		{`x{a="b" 2`, "unterminated labels"},
		{"x", "want a value"},
		{"x 1 2 3", "want a value"},
		{"x one", "value of x"},
		{"x 1 now", "timestamp of x"},
	} {
		if _, err := ParseMetrics([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseMetrics(%q) = %v, want %q", tc.in, err, tc.err)
		}
	}
}

func FuzzParseMetrics(f *testing.F) {
	f.Add([]byte("# TYPE a gauge\na{b=\"c\"} 1\nranges_underreplicated 0 17\n"))
	f.Add([]byte("x{a=\"\\\"}\"} 2\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = ParseMetrics(data)
	})
}

func TestCockroachVerdict(t *testing.T) {
	pods := []string{"cockroachdb-0", "cockroachdb-1", "cockroachdb-2"}
	healthy := func() map[string]Metrics {
		return map[string]Metrics{
			"cockroachdb-0": {"liveness_livenodes": 3, "ranges_underreplicated": 0, "ranges_unavailable": 0},
			"cockroachdb-1": {"liveness_livenodes": 3},
			"cockroachdb-2": {"liveness_livenodes": 3},
		}
	}
	for _, tc := range []struct {
		name   string
		change func(map[string]Metrics)
		why    string
	}{
		{name: "healthy", change: func(map[string]Metrics) {}},
		{name: "a node sees one dead", change: func(m map[string]Metrics) { m["cockroachdb-1"]["liveness_livenodes"] = 2 }, why: "cockroachdb-1 sees 2 of 3 nodes live"},
		{name: "under-replicated on two stores", change: func(m map[string]Metrics) {
			m["cockroachdb-0"]["ranges_underreplicated"] = 4
			m["cockroachdb-2"]["ranges_underreplicated"] = 3
		}, why: "7 range(s) under-replicated"},
		{name: "unavailable", change: func(m map[string]Metrics) { m["cockroachdb-2"]["ranges_unavailable"] = 1 }, why: "1 range(s) unavailable"},
		{name: "no liveness metric", change: func(m map[string]Metrics) { delete(m["cockroachdb-0"], "liveness_livenodes") }, why: "cockroachdb-0: no liveness_livenodes metric"},
		{name: "pod missing", change: func(m map[string]Metrics) { delete(m, "cockroachdb-2") }, why: "cockroachdb-2: no metrics"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := healthy()
			tc.change(m)
			ok, why := CockroachVerdict(3, m, pods)
			if ok != (tc.why == "") || !strings.Contains(why, tc.why) {
				t.Errorf("= %v, %q; want ok=%v with %q", ok, why, tc.why == "", tc.why)
			}
		})
	}
}
