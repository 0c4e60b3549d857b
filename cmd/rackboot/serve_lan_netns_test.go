//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	eventsapi "github.com/siderolabs/siderolink/api/events"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/dotfile/rackboot/internal/netns"
	"github.com/dotfile/rackboot/inventory"
)

// lanRack: formula is selected by the MAC of its first NIC only.
const lanRack = `cluster:
  name: lan
  talosVersion: v1.13.0
  kubernetesVersion: 1.36.0
  vip: 10.78.0.10
  network:
    subnet: 10.78.0.0/24
    gateway: 10.78.0.254
    nameservers: [10.78.0.254]
machines:
  - name: formula
    role: controlplane
    select: {mac: ["52:54:00:b0:00:01"]}
    address: 10.78.0.11/24
`

const (
	lanServer   = "10.78.0.1"
	macFormula  = "52:54:00:b0:00:01"
	macSecond   = "52:54:00:b0:00:a1" // formula's second NIC: not in the rack file
	macHousemat = "52:54:00:66:66:66"
)

// lanSegment is a bridge in a server namespace with three hosts on it:
// formula's first NIC, formula's second NIC, and a housemate's laptop.
type lanSegment struct {
	srv, nic1, nic2, mate *netns.NS
	dir, bin, rack, state string
	serveArgs             []string
}

func newLANSegment(t *testing.T) *lanSegment {
	t.Helper()
	for _, tool := range []string{"curl", "ip", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run `make deps` (Debian packages curl, iproute2)", tool)
		}
	}
	l := &lanSegment{dir: t.TempDir()}
	l.bin = buildRackboot(t, l.dir)
	l.rack = filepath.Join(l.dir, "rack.yaml")
	l.state = filepath.Join(l.dir, ".rackboot")
	standin := filepath.Join(l.dir, "standin")
	must(t, os.WriteFile(l.rack, []byte(lanRack), 0o644))
	must(t, os.MkdirAll(standin, 0o755))
	must(t, os.WriteFile(filepath.Join(standin, "vmlinuz"), []byte("kernel"), 0o644))
	must(t, os.WriteFile(filepath.Join(standin, "initramfs.cpio.gz"), []byte("initramfs"), 0o644))

	l.srv = netns.New(t, "lsrv")
	l.srv.AddBridge("br0", netip.MustParsePrefix("10.78.0.1/24"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i, h := range []struct {
		ns   **netns.NS
		name string
		mac  string
		addr string
	}{
		{&l.nic1, "lnic1", macFormula, "10.78.0.50/24"},
		{&l.nic2, "lnic2", macSecond, "10.78.0.51/24"},
		{&l.mate, "lmate", macHousemat, "10.78.0.66/24"},
	} {
		ns := netns.New(t, h.name)
		port := fmt.Sprintf("p%d", i)
		l.srv.AddVeth(port, ns, "eth0")
		l.srv.SetMaster(port, "br0")
		if out, err := ns.Exec(ctx, "ip", "link", "set", "eth0", "address", h.mac); err != nil {
			t.Fatalf("set MAC: %v %s", err, out)
		}
		ns.AddAddr("eth0", netip.MustParsePrefix(h.addr))
		*h.ns = ns
	}
	for _, ns := range []*netns.NS{l.srv, l.nic1, l.nic2, l.mate} {
		if r, err := ns.DefaultRoute(); err != nil || r != "" {
			t.Fatalf("namespace %s has a default route %q (%v): refusing to run", ns.Name(), r, err)
		}
	}
	l.serveArgs = []string{"-f", l.rack, "serve", "-i", "br0", "--dhcp", "proxy", "--standin", standin}
	return l
}

func (l *lanSegment) start(t *testing.T) *netns.Process {
	t.Helper()
	p := l.srv.Start(l.bin, l.serveArgs...)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, _ := l.code(l.nic1, "http://"+lanServer+":8080/boot.ipxe"); c == "200" {
			return p
		}
		select {
		case <-p.Done():
			t.Fatalf("serve exited: %v\n%s", p.Err(), p.Output())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve did not answer within 30 s\n%s", p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (l *lanSegment) curl(ns *netns.NS, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := ns.Exec(ctx, "curl", append([]string{"-sS", "--max-time", "5"}, args...)...)
	return string(out), err
}

func (l *lanSegment) code(ns *netns.NS, url string) (string, error) {
	return l.curl(ns, "-o", "/dev/null", "-w", "%{http_code}", url)
}

// cli runs a rackboot command on the laptop side (control socket).
func (l *lanSegment) cli(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(l.bin, append([]string{"-f", l.rack}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("rackboot %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (l *lanSegment) machines(t *testing.T) map[string]inventory.Machine {
	t.Helper()
	var ms []inventory.Machine
	out, err := exec.Command(l.bin, "-f", l.rack, "status", "--json").Output()
	if err != nil || json.Unmarshal(out, &ms) != nil {
		t.Fatalf("rackboot status --json: %v\n%s", err, out)
	}
	byKey := map[string]inventory.Machine{}
	for _, m := range ms {
		byKey[m.Key] = m
	}
	return byKey
}

// publishFrom sends a Talos event to the sink from a host of the segment.
func publishFrom(ns *netns.NS, id string, ev *machine.SequenceEvent) error {
	data, err := anypb.New(ev)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("passthrough:///"+lanServer+":4002",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var c net.Conn
			err := ns.Run(func() (err error) { c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr); return err })
			return c, err
		}))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = eventsapi.NewEventSinkServiceClient(conn).Publish(ctx, &eventsapi.EventRequest{Id: id, Data: data})
	return err
}

func installedEv() *machine.SequenceEvent {
	return &machine.SequenceEvent{Sequence: "install",
		Error: &common.Error{Code: common.Code_FATAL, Message: "error running phase 3 in install sequence: task 1/1: failed, unix.Reboot: no such device"}}
}

// sendFrom sends one UDP datagram from a host of the segment.
func sendFrom(t *testing.T, ns *netns.NS, to string, payload []byte) {
	t.Helper()
	must(t, ns.Run(func() error {
		c, err := net.Dial("udp", to)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return err
	}))
}

// TestServeSharedLAN: on one Ethernet segment, a housemate's laptop tries
// to get formula's config and to fake its events; formula itself boots
// from its first NIC and fetches its config from its second, as a
// multi-NIC server running Talos can.
func TestServeSharedLAN(t *testing.T) {
	l := newLANSegment(t)
	serve := l.start(t)
	base := "http://" + lanServer + ":8080"
	script := base + "/ipxe?mac=" + strings.ReplaceAll(macFormula, ":", "-") + "&arch=x86_64&platform=pcbios"

	// Every listener but DHCP is on the rack address only.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ss, err := l.srv.Exec(ctx, "ss", "-H", "-ltnu")
	if err != nil {
		t.Fatalf("ss: %v %s", err, ss)
	}
	ports := map[string]bool{}
	for line := range strings.Lines(string(ss)) {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		local := f[4]
		port := local[strings.LastIndex(local, ":")+1:]
		ports[port] = true
		switch port {
		case "67", "4011": // DHCP: broadcast sockets, bound to the rack interface
			if !strings.Contains(local, "%br0") {
				t.Errorf("DHCP socket %s is not bound to br0", local)
			}
		default:
			if !strings.HasPrefix(local, lanServer+":") {
				t.Errorf("listener %s is not on the rack address %s", local, lanServer)
			}
		}
	}
	for _, p := range []string{"8080", "69", "4002", "4003", "67", "4011"} {
		if !ports[p] {
			t.Errorf("no listener on port %s:\n%s", p, ss)
		}
	}

	// The housemate names formula's MAC: the unknown-machine script.
	body, err := l.curl(l.mate, "-f", script)
	if err != nil || strings.Contains(body, "talos.config") || !strings.Contains(body, "unknown machine") {
		t.Fatalf("housemate claiming formula's MAC got (%v):\n%s", err, body)
	}

	// Formula's first NIC gets its script with a token.
	body, err = l.curl(l.nic1, "-f", script)
	m := regexp.MustCompile(`talos\.config=(\S+)`).FindStringSubmatch(body)
	if err != nil || m == nil {
		t.Fatalf("formula's script (%v):\n%s", err, body)
	}
	configURL := m[1]
	token := regexp.MustCompile(`[?&]t=([^&]+)`).FindStringSubmatch(configURL)[1]

	// Its config comes from its second NIC's address (Talos's own DHCP,
	// another link); the token is then spent and pinned there.
	if c, _ := l.code(l.nic2, configURL); c != "200" {
		t.Fatalf("config from formula's second NIC: HTTP %s\n%s", c, serve.Output())
	}
	if c, _ := l.code(l.mate, configURL); c != "403" {
		t.Errorf("spent token from the housemate: HTTP %s, want 403", c)
	}
	if c, _ := l.code(l.nic1, configURL); c != "403" {
		t.Errorf("spent token from another address of formula: HTTP %s, want 403 (retries only from where it was spent)", c)
	}
	if c, _ := l.code(l.nic2, configURL); c != "200" {
		t.Errorf("retry from the pinned address: HTTP %s, want 200", c)
	}

	// A forged "installed" from the housemate changes nothing; kernel log
	// lines from it are dropped and counted.
	if err := publishFrom(l.mate, "forged-1", installedEv()); err != nil {
		t.Fatalf("publish from the housemate: %v", err)
	}
	sendFrom(t, l.mate, lanServer+":4003", []byte(`{"msg":"forged log line","talos-level":"info"}`))
	// Formula's own NIC2 sends a kernel line that quotes its command line.
	sendFrom(t, l.nic2, lanServer+":4003", []byte(`{"msg":"Kernel command line: talos.config=`+configURL+`","talos-level":"info"}`))
	time.Sleep(300 * time.Millisecond)
	ms := l.machines(t)
	f, ok := ms["formula"]
	if !ok {
		t.Fatalf("formula not in the status: %+v", ms)
	}
	if f.Installed {
		t.Fatal("a forged installed event from the housemate marked formula installed")
	}
	var denied bool
	for _, e := range f.Timeline {
		if e.Stage == "denied" && strings.Contains(e.Detail, "10.78.0.66") && strings.Contains(e.Detail, macHousemat) {
			denied = true
		}
	}
	if !denied {
		t.Errorf("formula's timeline has no denied entry naming the housemate's address and MAC: %+v", f.Timeline)
	}
	if f.Addr.String() == "10.78.0.66" {
		t.Error("formula's address became the housemate's")
	}
	var logged bool
	for _, lg := range f.Logs {
		if strings.Contains(lg.Msg, "forged") {
			t.Error("a log line from the housemate was attributed to formula")
		}
		if strings.Contains(lg.Msg, "Kernel command line") {
			logged = true
		}
	}
	if !logged {
		t.Errorf("formula's own kernel log line (from its second NIC) is missing: %+v", f.Logs)
	}
	metrics, _ := l.curl(l.nic1, base+"/metrics")
	if !regexp.MustCompile(`rackboot_events_dropped_total\{reason="unattributed"\} [1-9]`).MatchString(metrics) ||
		!regexp.MustCompile(`rackboot_kernel_log_dropped_total\{reason="unattributed"\} [1-9]`).MatchString(metrics) {
		t.Errorf("/metrics does not count the dropped event and log line:\n%s", grepLines(metrics, "dropped"))
	}

	// The real install event, from where formula fetched its config.
	if err := publishFrom(l.nic2, "real-1", installedEv()); err != nil {
		t.Fatalf("publish from formula: %v", err)
	}
	if !l.machines(t)["formula"].Installed {
		t.Fatalf("formula's own installed event was not believed\n%s", serve.Output())
	}

	// Nothing shown carries the token.
	api, _ := l.curl(l.mate, base+"/api/machines")
	page, _ := l.curl(l.mate, base+"/")
	status := l.cli(t, "status")
	statusJSON := l.cli(t, "status", "--json")
	for what, s := range map[string]string{"/api/machines": api, "status page": page, "rackboot status": status, "status --json": statusJSON, "serve's log": serve.Output()} {
		if strings.Contains(s, token) {
			t.Errorf("%s shows formula's config token", what)
		}
	}
	if !strings.Contains(api, "t=REDACTED") {
		t.Errorf("/api/machines lacks the redacted kernel line:\n%s", api)
	}

	// reinstall through the running serve: formula boots Talos again.
	l.cli(t, "machine", "reinstall", "formula")
	if l.machines(t)["formula"].Installed {
		t.Fatal("machine reinstall did not clear installed")
	}
	if body, _ := l.curl(l.nic1, "-f", script); !strings.Contains(body, "talos.config=") {
		t.Fatalf("after reinstall formula's script has no config:\n%s", body)
	}
	// forget drops a machine that is not in the rack file.
	l.curl(l.mate, base+"/ipxe?mac=52-54-00-66-66-66&arch=x86_64&platform=pcbios")
	if _, ok := l.machines(t)[macHousemat]; !ok {
		t.Fatal("the housemate's own request is not listed as discovered")
	}
	l.cli(t, "machine", "forget", macHousemat)
	if _, ok := l.machines(t)[macHousemat]; ok {
		t.Fatal("machine forget did not drop the discovered machine")
	}
}

// TestServeKillAfterInstalledAck: kill -9 of serve right after the events
// sink acknowledged formula's installed event; after a restart formula is
// still installed. Repeated with random delays.
func TestServeKillAfterInstalledAck(t *testing.T) {
	l := newLANSegment(t)
	const rounds = 20
	for i := range rounds {
		serve := l.start(t)
		if i > 0 && !l.machines(t)["formula"].Installed {
			t.Fatalf("round %d: formula not installed after kill -9 and restart\n%s", i, serve.Output())
		}
		l.cli(t, "machine", "reinstall", "formula")
		if err := publishFrom(l.nic1, fmt.Sprintf("install-%d", i), installedEv()); err != nil {
			t.Fatalf("round %d: publish: %v", i, err)
		}
		time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
		must(t, serve.Cmd.Process.Signal(syscall.SIGKILL))
		<-serve.Done()
	}
	serve := l.start(t)
	defer serve.Cmd.Process.Signal(syscall.SIGTERM)
	if !l.machines(t)["formula"].Installed {
		t.Fatalf("after the last kill -9 formula is not installed\n%s", serve.Output())
	}
}

func grepLines(s, sub string) string {
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if strings.Contains(sc.Text(), sub) {
			b.WriteString(sc.Text() + "\n")
		}
	}
	return b.String()
}
