//go:build linux

package lab

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// raTestNet makes two namespaces the test owns: a "server" one with a
// bridge (like the lab's) that has one veth port, whose peer is in a
// "client" namespace where the kernel accepts router advertisements. DAD is
// off in both so link-local addresses are usable at once. Both are removed
// when the test ends.
func raTestNet(t *testing.T) (server, client string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the RA tests create network namespaces: run them as root")
	}
	base := fmt.Sprintf("rbra%d-%d", os.Getpid()%100000, time.Now().UnixNano()%1000)
	server, client = base+"-s", base+"-c"
	for _, ns := range []string{server, client} {
		if err := createNamespace(ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := deleteNamespace(ns); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		})
		err := inNamespace(ns, func() error {
			for _, k := range []string{"default/accept_dad", "all/accept_dad"} {
				if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+k, []byte("0\n"), 0o644); err != nil {
					return err
				}
			}
			if ns == server {
				return noRouterAdverts() // as in the lab namespace
			}
			return nil
		})
		if err != nil {
			t.Fatalf("namespace %s: %v", ns, err)
		}
	}
	cfd, err := netns.GetFromName(client)
	if err != nil {
		t.Fatal(err)
	}
	defer cfd.Close()
	err = inNamespace(server, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: Bridge}}); err != nil {
			return err
		}
		br, err := linkUp(h, Bridge)
		if err != nil {
			return err
		}
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "port0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(cfd)}); err != nil {
			return err
		}
		port, err := h.LinkByName("port0")
		if err != nil {
			return err
		}
		if err := h.LinkSetMaster(port, br); err != nil {
			return err
		}
		_, err = linkUp(h, "port0")
		return err
	})
	if err != nil {
		t.Fatalf("server side: %v", err)
	}
	err = inNamespace(client, func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		_, err = linkUp(h, "eth0")
		return err
	})
	if err != nil {
		t.Fatalf("client side: %v", err)
	}
	return server, client
}

// startRA runs an RAServer in the namespace until the test ends.
func startRA(t *testing.T, ns string) *RAServer {
	t.Helper()
	var s *RAServer
	err := inNamespace(ns, func() (err error) {
		s, err = NewRA(RAConfig{Interface: Bridge}, WithRALogger(slog.New(slog.NewTextHandler(testWriter{t}, nil))))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

// TestRAResponderRdisc6: a real IPv6 client (ndisc6's rdisc6) solicits over
// the bridge and gets the responder's advertisement: not a router, no
// stateful address or other configuration, no prefix; the client's kernel,
// which accepts RAs, gets no default route from it; a solicitation with a
// forwarded hop limit is ignored.
func TestRAResponderRdisc6(t *testing.T) {
	rdisc6, err := exec.LookPath("rdisc6")
	if err != nil {
		t.Fatal("rdisc6 not found: apt-get install ndisc6")
	}
	server, client := raTestNet(t)
	s := startRA(t, server)

	var out []byte
	err = inNamespace(client, func() error {
		var err error
		out, err = exec.Command(rdisc6, "-1", "-r", "3", "-w", "2000", "eth0").CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("rdisc6: %v\n%s", err, out)
	}
	t.Logf("rdisc6:\n%s", out)
	for _, re := range []string{
		`Stateful address conf\.\s*:\s*No`,
		`Stateful other conf\.\s*:\s*No`,
		`Router lifetime\s*:\s*0 \(`,
		`Source link-layer address:\s*[0-9A-Fa-f:]{17}`,
		`from fe80::`,
	} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("rdisc6 output lacks %s", re)
		}
	}
	if strings.Contains(string(out), "Prefix") {
		t.Error("the advertisement carries a prefix")
	}
	st := s.Stats()
	if st.Solicitations < 1 || st.Adverts < 1 {
		t.Errorf("stats %+v: want a solicitation answered", st)
	}
	if routes, err := DefaultRoutes(client); err != nil || len(routes) > 0 {
		t.Errorf("the client got a default route from the advertisement: %v %v", routes, err)
	}

	// A solicitation that was forwarded (hop limit 64) is not answered.
	before := s.Stats()
	err = inNamespace(client, func() error {
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) { serr = unix.BindToDevice(int(fd), "eth0") }); err != nil {
				return err
			}
			return serr
		}}
		c, err := lc.ListenPacket(context.Background(), "ip6:ipv6-icmp", "::")
		if err != nil {
			return err
		}
		defer c.Close()
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		p := ipv6.NewPacketConn(c)
		if err := p.SetMulticastHopLimit(64); err != nil {
			return err
		}
		_, err = p.WriteTo([]byte{133, 0, 0, 0, 0, 0, 0, 0}, &ipv6.ControlMessage{IfIndex: ifi.Index},
			&net.IPAddr{IP: net.ParseIP("ff02::2")})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Ignored == before.Ignored && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // waiting on another process's packet, not on time
	}
	after := s.Stats()
	if after.Ignored != before.Ignored+1 || after.Adverts != before.Adverts {
		t.Errorf("forwarded solicitation: stats %+v → %+v, want one more ignored and no advertisement", before, after)
	}
}

// TestLabRAEndsIPv6Wait boots one BIOS VM (QEMU's iPXE ROM, address from
// the lab's dnsmasq) with the lab's RA responder: the responder, in the lab
// namespace, answers the VM's own router solicitation and iPXE's
// "Configuring" (DHCP and IPv6 autoconfiguration, after which it asks for
// its boot script) ends with ok. Without the responder (WithoutRA) no ra
// process is started. How long the step takes with and without it (what the
// responder removes: iPXE's ~15 s IPv6 wait) is measured by `make bench`
// (row P7), not asserted here.
func TestLabRAEndsIPv6Wait(t *testing.T) {
	for _, withRA := range []bool{true, false} {
		name := map[bool]string{true: "with-ra", false: "without-ra"}[withRA]
		t.Run(name, func(t *testing.T) {
			var opts []Option
			if !withRA {
				opts = append(opts, WithoutRA())
			}
			l := testLab(t, opts...)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			st, err := l.Up(ctx, Spec{Rack: exampleRack(t), Machines: 1, Firmware: FirmwareBIOS, DHCP: DHCPProxy})
			if err != nil {
				t.Fatal(err)
			}
			ra, hasRA := process(st, "ra")
			if hasRA != withRA {
				t.Fatalf("ra process recorded: %v, want %v (%+v)", hasRA, withRA, st.Processes)
			}
			if hasRA {
				if in, err := sameNetNamespace(ra.PID, Namespace(l.Name())); err != nil || !in {
					t.Fatalf("the responder (pid %d) is not in the lab namespace: %v", ra.PID, err)
				}
				vm := st.VMs[0]
				mac := regexp.QuoteMeta(vm.MAC)
				line, err := l.WaitSerial(ctx, vm.Name, regexp.MustCompile(`Configuring \(net0 `+mac+`\)[. ]*ok`))
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("iPXE: %q", line)
				b, _ := os.ReadFile(filepath.Join(l.Dir(), "ra.log"))
				if !regexp.MustCompile(`router solicitation answered.* mac=` + mac).Match(b) {
					t.Errorf("the responder did not answer a solicitation from %s:\n%s", vm.MAC, b)
				}
			} else if _, err := os.Stat(filepath.Join(l.Dir(), "ra.log")); err == nil {
				t.Errorf("WithoutRA: the lab wrote ra.log")
			}
			for _, ns := range st.Namespaces {
				if routes, err := DefaultRoutes(ns); err != nil || len(routes) > 0 {
					t.Errorf("default routes in %s: %v %v", ns, routes, err)
				}
			}
			rep, err := l.Down(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if hasRA {
				procGone(t, ra)
				if !strings.Contains(strings.Join(rep.Stopped, " "), "ra") {
					t.Errorf("down did not stop the responder: %+v", rep)
				}
			}
		})
	}
}

// process is the recorded process with that role.
func process(st *State, role string) (Process, bool) {
	for _, p := range st.Processes {
		if p.Role == role {
			return p, true
		}
	}
	return Process{}, false
}
