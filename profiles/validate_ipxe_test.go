package profiles

import (
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/pxe"
)

// ipxeRack is a small valid rack (its own, so the line numbers below stay
// put); the tests add ipxeBuild lines to it.
const ipxeRack = `cluster:
  name: lab
  talosVersion: v1.13.0
  kubernetesVersion: 1.36.0
  vip: 10.0.0.10
  network:
    subnet: 10.0.0.0/24
    gateway: 10.0.0.1
    nameservers: [10.0.0.1]
machines:
  - name: cp1
    role: controlplane
    select:
      mac: ["52:54:00:00:00:01"]
    address: 10.0.0.11/24
  - name: w1
    role: worker
    select:
      mac: ["52:54:00:00:00:02"]
`

// goodWith is ipxeRack with each replacement (old → new) made once.
func goodWith(t *testing.T, repl ...string) []byte {
	t.Helper()
	s := ipxeRack
	for i := 0; i+1 < len(repl); i += 2 {
		if !strings.Contains(s, repl[i]) {
			t.Fatalf("the test rack has no %q", repl[i])
		}
		s = strings.Replace(s, repl[i], repl[i+1], 1)
	}
	return []byte(s)
}

func TestIPXEBuildLoad(t *testing.T) {
	tests := []struct {
		name  string
		repl  []string
		at    string // line:col of the problem; "" when the file loads
		msg   string
		build IPXEBuild // cluster's when it loads
	}{
		{"absent", nil, "", "", ""},
		{"cluster snponly", []string{"  vip: 10.0.0.10\n", "  vip: 10.0.0.10\n  ipxeBuild: snponly\n"}, "", "", IPXESNPOnly},
		{"cluster full", []string{"  vip: 10.0.0.10\n", "  vip: 10.0.0.10\n  ipxeBuild: full\n"}, "", "", IPXEFull},
		{"null", []string{"  vip: 10.0.0.10\n", "  vip: 10.0.0.10\n  ipxeBuild:\n"}, "", "", ""},
		{"unknown value", []string{"  vip: 10.0.0.10\n", "  vip: 10.0.0.10\n  ipxeBuild: fast\n"}, "6:14", "ipxeBuild `fast` is not an iPXE build: write full (ipxe.efi", ""},
		{"file name", []string{"  vip: 10.0.0.10\n", "  vip: 10.0.0.10\n  ipxeBuild: snponly.efi\n"}, "6:14", "(did you mean snponly?)", ""},
		{"upper case", []string{"  vip: 10.0.0.10\n", "  vip: 10.0.0.10\n  ipxeBuild: SNP\n"}, "6:14", "(did you mean snponly?)", ""},
		{"machine, bad", []string{"    address: 10.0.0.11/24\n", "    address: 10.0.0.11/24\n    ipxeBuild: ipxe\n"}, "16:16", "(did you mean full?)", ""},
		{"a list", []string{"  vip: 10.0.0.10\n", "  vip: 10.0.0.10\n  ipxeBuild: [snponly]\n"}, "6:14", "cluster.ipxeBuild must be a single value", ""},
		{"misspelt key", []string{"  vip: 10.0.0.10\n", "  vip: 10.0.0.10\n  ipxe: snponly\n"}, "6:3", `unknown field "ipxe" in cluster: write one of`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Load("rack.yaml", goodWith(t, tt.repl...))
			if tt.at == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if r.Cluster.IPXEBuild != tt.build {
					t.Errorf("cluster ipxeBuild %q, want %q", r.Cluster.IPXEBuild, tt.build)
				}
				if ps := r.Validate(); ps.Errors() {
					t.Errorf("Validate: %v", ps)
				}
				return
			}
			var ps Problems
			if !errors.As(err, &ps) || len(ps) != 1 {
				t.Fatalf("Load = %v, want one problem", err)
			}
			if got := ps[0].String(); !strings.HasPrefix(got, "rack.yaml:"+tt.at+": error: ") || !strings.Contains(got, tt.msg) {
				t.Errorf("problem %q, want at %s with %q", got, tt.at, tt.msg)
			}
		})
	}
}

// All problems at once: two bad ipxeBuild values and another type error.
func TestIPXEBuildReportedWithOthers(t *testing.T) {
	_, err := Load("rack.yaml", goodWith(t,
		"  vip: 10.0.0.10\n", "  vip: 10.0.0.10\n  ipxeBuild: nope\n",
		"    address: 10.0.0.11/24\n", "    address: 10.0.0.11/24\n    ipxeBuild: snp\n",
		"      mac: [\"52:54:00:00:00:02\"]\n", "      mac: [\"52:54:00:00:00:02\"]\nlab:\n  machines: many\n"))
	var ps Problems
	if !errors.As(err, &ps) || len(ps) != 3 {
		t.Fatalf("Load = %v, want three problems", err)
	}
	for i, at := range []string{"rack.yaml:6:14:", "rack.yaml:17:16:", "rack.yaml:23:13:"} {
		if !strings.HasPrefix(ps[i].String(), at) {
			t.Errorf("problem %d: %s, want at %s", i, ps[i], at)
		}
	}
}

func TestIPXEBuildFor(t *testing.T) {
	mac := func(s string) net.HardwareAddr {
		m, err := net.ParseMAC(s)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	const uuidW2 = "4c4c4544-0042-3510-8052-b2c04f565931"
	rackWith := func(cluster, cp1, w1 string) *Rack {
		t.Helper()
		var repl []string
		if cluster != "" {
			repl = append(repl, "  vip: 10.0.0.10\n", "  vip: 10.0.0.10\n  ipxeBuild: "+cluster+"\n")
		}
		if cp1 != "" {
			repl = append(repl, "    address: 10.0.0.11/24\n", "    address: 10.0.0.11/24\n    ipxeBuild: "+cp1+"\n")
		}
		repl = append(repl, `      mac: ["52:54:00:00:00:02"]`+"\n", `      mac: ["52:54:00:00:00:02"]`+"\n"+w1ipxe(w1)+
			"  - name: w2\n    role: worker\n    select:\n      uuid: "+uuidW2+"\n    ipxeBuild: snponly\n")
		r, err := Load("rack.yaml", goodWith(t, repl...))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	cp1 := pxe.Client{MAC: mac("52:54:00:00:00:01"), Arch: pxe.ArchX64UEFI}
	w1 := pxe.Client{MAC: mac("52:54:00:00:00:02"), Arch: pxe.ArchX64UEFI}
	stranger := pxe.Client{MAC: mac("52:54:00:00:00:99"), Arch: pxe.ArchX64UEFI}
	w2 := pxe.Client{MAC: mac("52:54:00:00:00:42"), UUID: uuidW2, Arch: pxe.ArchX64UEFI}
	tests := []struct {
		name             string
		cluster, cp1, w1 string
		client           pxe.Client
		want             pxe.IPXEBuild
	}{
		{"nothing set", "", "", "", cp1, pxe.IPXEFull},
		{"cluster snponly", "snponly", "", "", cp1, pxe.IPXESNPOnly},
		{"cluster snponly, unknown machine", "snponly", "", "", stranger, pxe.IPXESNPOnly},
		{"machine full over cluster snponly", "snponly", "full", "", cp1, pxe.IPXEFull},
		{"machine snponly", "", "snponly", "", cp1, pxe.IPXESNPOnly},
		{"another machine's choice", "", "snponly", "", w1, pxe.IPXEFull},
		{"unknown machine, no cluster choice", "", "snponly", "", stranger, pxe.IPXEFull},
		{"by option 97 UUID", "", "", "", w2, pxe.IPXESNPOnly},
		{"w1 snponly", "full", "", "snponly", w1, pxe.IPXESNPOnly},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := rackWith(tt.cluster, tt.cp1, tt.w1).IPXEBuildFor(tt.client); got != tt.want {
				t.Errorf("IPXEBuildFor(%s) = %q, want %q", tt.client.MAC, got, tt.want)
			}
		})
	}
}

func w1ipxe(b string) string {
	if b == "" {
		return ""
	}
	return "    ipxeBuild: " + b + "\n"
}
