package profiles

import (
	"os"
	"testing"
)

func TestDatabaseSection(t *testing.T) {
	data, err := os.ReadFile("testdata/good.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Load("good.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Database.EngineOrDefault(); got != EnginePostgres {
		t.Errorf("engine %q, want postgres", got)
	}
	want := []DatabaseApp{{Name: "billing", Namespace: "billing"}, {Name: "wiki-js", Namespace: "wiki"}}
	if len(r.Database.Apps) != len(want) {
		t.Fatalf("apps %+v, want %+v", r.Database.Apps, want)
	}
	for i := range want {
		if r.Database.Apps[i] != want[i] {
			t.Errorf("app %d: %+v, want %+v", i, r.Database.Apps[i], want[i])
		}
	}
	if got := (Database{}).EngineOrDefault(); got != EngineCockroachDB {
		t.Errorf("default engine %q, want cockroachdb", got)
	}
}
