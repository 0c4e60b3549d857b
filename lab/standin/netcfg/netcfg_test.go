package netcfg

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
)

const docs = `apiVersion: v1alpha1
kind: LinkAliasConfig
name: rack0
selector:
    match: mac(link.permanent_addr) == "52:54:00:e2:e0:01"
---
apiVersion: v1alpha1
kind: LinkConfig
name: rack0
up: true
addresses:
    - address: 10.77.0.11/24
routes:
    - gateway: 10.77.0.1
---
apiVersion: v1alpha1
kind: Layer2VIPConfig
name: 10.77.0.10
link: rack0
`

func links(macs ...string) []Link {
	var out []Link
	for i, m := range macs {
		hw, _ := net.ParseMAC(m)
		out = append(out, Link{Name: "eth" + string(rune('0'+i)), Index: i + 2, MAC: hw, PermMAC: hw})
	}
	return out
}

func TestConfigure(t *testing.T) {
	cfg, err := configloader.NewFromBytes([]byte(docs))
	if err != nil {
		t.Fatal(err)
	}
	// The alias's MAC is the second link: the address, route and VIP go there.
	p, err := Configure(cfg, links("52:54:00:e2:e0:99", "52:54:00:e2:e0:01"), true)
	if err != nil {
		t.Fatal(err)
	}
	if p.Aliases["eth1"] != "rack0" || len(p.Aliases) != 1 || len(p.Warnings) != 0 || len(p.Missing) != 0 {
		t.Fatalf("plan %+v", p)
	}
	if len(p.Addresses) != 1 || p.Addresses[0] != (Address{"eth1", netip.MustParsePrefix("10.77.0.11/24")}) {
		t.Errorf("addresses %+v", p.Addresses)
	}
	if len(p.Routes) != 1 || p.Routes[0].Link != "eth1" || p.Routes[0].Gateway != netip.MustParseAddr("10.77.0.1") || p.Routes[0].Dst.IsValid() || p.Routes[0].Metric != 1024 {
		t.Errorf("routes %+v", p.Routes)
	}
	if len(p.VIPs) != 1 || p.VIPs[0] != (VIP{"eth1", netip.MustParseAddr("10.77.0.10")}) {
		t.Errorf("VIPs %+v", p.VIPs)
	}
	if p.DefaultDHCP {
		t.Error("default DHCP with a LinkConfig")
	}
	// A worker holds no VIP.
	if p, _ := Configure(cfg, links("52:54:00:e2:e0:01"), false); len(p.VIPs) != 0 {
		t.Errorf("worker VIPs %+v", p.VIPs)
	}
}

// Two links with the alias's MAC (as when a rack file pins an alias to a
// MAC that two NICs report): Talos skips the alias, so rack0 names no link
// and neither the address nor the VIP is applied.
func TestAliasSeveralMatches(t *testing.T) {
	cfg, err := configloader.NewFromBytes([]byte(docs))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Configure(cfg, links("52:54:00:e2:e0:01", "52:54:00:e2:e0:01"), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Aliases) != 0 || len(p.Addresses) != 0 || len(p.VIPs) != 0 || len(p.Missing) != 1 || p.Missing[0] != "rack0" {
		t.Fatalf("plan %+v", p)
	}
	if len(p.Warnings) != 1 || !strings.HasPrefix(p.Warnings[0], "link selector matched multiple links, skipping") || !strings.Contains(p.Warnings[0], "[eth0 eth1]") {
		t.Errorf("warnings %q", p.Warnings)
	}
}

func TestDefaultDHCP(t *testing.T) {
	cfg, err := configloader.NewFromBytes([]byte("apiVersion: v1alpha1\nkind: HostnameConfig\nhostname: a\n"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Configure(cfg, links("52:54:00:e2:e0:01"), true)
	if err != nil || !p.DefaultDHCP {
		t.Fatalf("plan %+v, %v", p, err)
	}
}
