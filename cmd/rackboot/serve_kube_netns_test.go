//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	eventsapi "github.com/siderolabs/siderolink/api/events"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/internal/netns"
	"github.com/dotfile/rackboot/internal/tcpproxy"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/kubestate"
	"github.com/dotfile/rackboot/leader"
)

// kubeRack: formula is the machine that boots across replicas.
const kubeRack = `cluster:
  name: kube
  talosVersion: v1.13.0
  kubernetesVersion: 1.36.0
  vip: 10.80.0.10
  network:
    subnet: 10.80.0.0/24
    gateway: 10.80.0.254
    nameservers: [10.80.0.254]
    rackboot: 10.80.0.1
machines:
  - name: formula
    role: controlplane
    select: {mac: ["52:54:00:b0:00:01"]}
    address: 10.80.0.11/24
`

// election is the Lease timing a test runs the replicas with.
type election struct{ lease, renew, retry time.Duration }

var (
	// defaultElection is serve's defaults (client-go's: 15 s, 10 s, 2 s).
	defaultElection = election{leader.DefaultLeaseDuration, leader.DefaultRenewDeadline, leader.DefaultRetryPeriod}
	// shortElection makes a switch-over take seconds.
	shortElection = election{4 * time.Second, 3 * time.Second, time.Second}
)

// takeover bounds a switch-over after the leader died: the lease, one
// jittered retry (client-go: RetryPeriod × (1 + JitterFactor 1.2)), one
// DHCP probe, and slack for a loaded 2-core machine.
func (e election) takeover() time.Duration {
	return e.lease + e.retry*22/10 + probeWindow + 5*time.Second
}

// probeWindow is how long one DISCOVER waits for offers.
const probeWindow = 700 * time.Millisecond

// kubeSegment is one Ethernet segment (a bridge in its own namespace) with
// n replicas of `serve --kube`, each in its own namespace with its own
// address and its own path to the API server, and formula's NIC.
type kubeSegment struct {
	env      *kubetest.Env
	el       election
	dhcp     []string // serve's DHCP flags
	ns       string   // Kubernetes namespace
	bin      string
	dir      string
	standin  string
	rack     string
	lan, cli *netns.NS
	replicas []*replica
	probe    *nclient4.Client
}

type replica struct {
	name  string
	ip    string
	ns    *netns.NS
	state string
	proxy *tcpproxy.Proxy // its only way to the API server
	proc  *netns.Process
}

// newKubeSegment builds the segment and puts the rack, a secrets bundle and
// nothing else into the Kubernetes namespace (as a handoff would).
func newKubeSegment(t *testing.T, env *kubetest.Env, ns string, n int, el election) *kubeSegment {
	t.Helper()
	for _, tool := range []string{"curl", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing: run `make deps` (Debian packages curl, iproute2)", tool)
		}
	}
	k := &kubeSegment{env: env, el: el, ns: ns, dir: t.TempDir(), dhcp: []string{"--dhcp", "proxy"}}
	k.bin = buildRackboot(t, k.dir)
	k.rack = filepath.Join(k.dir, "rack.yaml")
	k.standin = filepath.Join(k.dir, "standin")
	must(t, os.WriteFile(k.rack, []byte(kubeRack), 0o644))
	must(t, os.MkdirAll(k.standin, 0o755))
	must(t, os.WriteFile(filepath.Join(k.standin, "vmlinuz"), []byte("kernel"), 0o644))
	must(t, os.WriteFile(filepath.Join(k.standin, "initramfs.cpio.gz"), []byte("initramfs"), 0o644))

	// The laptop's state: the secrets bundle, made by `rackboot config`.
	laptop := filepath.Join(k.dir, "laptop")
	if out, err := exec.Command(k.bin, "-f", k.rack, "--state", laptop, "config", "formula").CombinedOutput(); err != nil {
		t.Fatalf("rackboot config: %v\n%s", err, out)
	}
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	st, err := kubestate.New(cs, ns)
	must(t, err)
	must(t, st.Import(ctx, laptop, k.rack))

	apiAddr := strings.TrimPrefix(env.URL, "https://")
	k.lan = netns.New(t, "klan")
	k.lan.AddBridge("br0")
	for i := range n {
		r := &replica{name: fmt.Sprintf("r%d", i+1), ip: fmt.Sprintf("10.80.0.%d", i+1)}
		r.ns = netns.New(t, "k"+r.name)
		k.lan.AddVeth("p"+r.name, r.ns, "eth0")
		k.lan.SetMaster("p"+r.name, "br0")
		r.ns.AddAddr("eth0", netip.MustParsePrefix(r.ip+"/24"))
		r.state = filepath.Join(k.dir, r.name)
		// The API server listens on the host's loopback; inside the
		// replica's namespace the same address is a proxy to it, so the
		// kubeconfig is the test's own, and the test can cut one
		// replica's path alone.
		var ln net.Listener
		must(t, r.ns.Run(func() (err error) { ln, err = net.Listen("tcp", apiAddr); return err }))
		r.proxy = tcpproxy.Start(ln, apiAddr)
		t.Cleanup(func() { r.proxy.Cut() })
		k.replicas = append(k.replicas, r)
	}
	k.cli = netns.New(t, "kcli")
	k.lan.AddVeth("pcli", k.cli, "eth0")
	k.lan.SetMaster("pcli", "br0")
	if out, err := k.cli.Exec(ctx, "ip", "link", "set", "eth0", "address", macFormula); err != nil {
		t.Fatalf("set MAC: %v %s", err, out)
	}
	k.cli.AddAddr("eth0", netip.MustParsePrefix("10.80.0.50/24"))
	all := []*netns.NS{k.lan, k.cli}
	for _, r := range k.replicas {
		all = append(all, r.ns)
	}
	for _, ns := range all {
		if rt, err := ns.DefaultRoute(); err != nil || rt != "" {
			t.Fatalf("namespace %s has a default route %q (%v): refusing to run", ns.Name(), rt, err)
		}
	}
	must(t, k.cli.Run(func() (err error) {
		k.probe, err = nclient4.New("eth0", nclient4.WithTimeout(probeWindow), nclient4.WithRetry(1))
		return err
	}))
	t.Cleanup(func() { k.probe.Close() })
	return k
}

// start runs every replica and waits until each serves HTTP.
func (k *kubeSegment) start(t *testing.T) {
	t.Helper()
	for _, r := range k.replicas {
		args := []string{"-f", k.rack, "--state", r.state, "serve",
			"--kube", "--kubeconfig", k.env.Kubeconfig, "--namespace", k.ns,
			"--lease-duration", k.el.lease.String(), "--renew-deadline", k.el.renew.String(), "--retry-period", k.el.retry.String(),
			"-i", "eth0", "--server-ip", r.ip, "--standin", k.standin}
		r.proc = r.ns.Start(k.bin, append(args, k.dhcp...)...)
	}
	for _, r := range k.replicas {
		deadline := time.Now().Add(60 * time.Second)
		for {
			if c, _ := k.code("http://" + r.ip + ":8080/boot.ipxe"); c == "200" {
				break
			}
			select {
			case <-r.proc.Done():
				t.Fatalf("replica %s exited: %v\n%s", r.name, r.proc.Err(), r.proc.Output())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica %s did not answer HTTP within 60 s\n%s", r.name, r.proc.Output())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func (k *kubeSegment) curl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := k.cli.Exec(ctx, "curl", append([]string{"-sS", "--max-time", "5"}, args...)...)
	return string(out), err
}

func (k *kubeSegment) code(url string) (string, error) {
	return k.curl("-o", "/dev/null", "-w", "%{http_code}", url)
}

// discover sends one PXE DHCPDISCOVER from formula's NIC and returns the
// addresses of the servers that offered within the probe window.
func (k *kubeSegment) discover(t *testing.T) []string {
	t.Helper()
	disc, err := dhcpv4.NewDiscovery(k.probe.InterfaceAddr(),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(0)))
	must(t, err)
	var from []string
	_, err = k.probe.SendAndRead(context.Background(), k.probe.RemoteAddr(), disc, func(p *dhcpv4.DHCPv4) bool {
		if p.MessageType() == dhcpv4.MessageTypeOffer && p.TransactionID == disc.TransactionID {
			from = append(from, p.ServerIdentifier().String())
		}
		return false // keep listening for the whole window
	})
	if err != nil && !errors.Is(err, nclient4.ErrNoResponse) {
		t.Fatalf("DHCP probe: %v", err)
	}
	return from
}

// leader waits until exactly one replica answers a DISCOVER and returns it;
// more than one answering to one DISCOVER fails the test at once.
func (k *kubeSegment) leader(t *testing.T, within time.Duration, not *replica) (*replica, time.Duration) {
	t.Helper()
	t0 := time.Now()
	for time.Since(t0) < within {
		from := k.discover(t)
		if len(from) > 1 {
			t.Fatalf("one DISCOVER got %d offers, from %v: two DHCP servers", len(from), from)
		}
		if len(from) == 1 && (not == nil || from[0] != not.ip) {
			for _, r := range k.replicas {
				if r.ip == from[0] {
					return r, time.Since(t0)
				}
			}
			t.Fatalf("an offer from %s, which is no replica", from[0])
		}
	}
	t.Fatalf("no replica (other than %v) answered DHCP within %v", not, within)
	return nil, 0
}

// steady checks over a few more DISCOVERs that only want answers.
func (k *kubeSegment) steady(t *testing.T, want *replica, probes int) {
	t.Helper()
	for range probes {
		if from := k.discover(t); len(from) != 1 || from[0] != want.ip {
			t.Fatalf("offers from %v, want only the leader %s", from, want.ip)
		}
	}
}

func (r *replica) String() string { return r.name + " (" + r.ip + ")" }

// publishTo sends a Talos event from formula's NIC to a replica's sink.
func (k *kubeSegment) publishTo(r *replica, id string, ev *machine.SequenceEvent) error {
	data, err := anypb.New(ev)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("passthrough:///"+r.ip+":4002",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var c net.Conn
			err := k.cli.Run(func() (err error) { c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr); return err })
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

// machineOn is formula's record as a replica shows it (`rackboot status
// --json` through the replica's control socket).
func (k *kubeSegment) machineOn(t *testing.T, r *replica) inventory.Machine {
	t.Helper()
	out, err := exec.Command(k.bin, "-f", k.rack, "--state", r.state, "status", "--json").Output()
	var ms []inventory.Machine
	if err != nil || json.Unmarshal(out, &ms) != nil {
		t.Fatalf("rackboot status --json on %s: %v\n%s", r, err, out)
	}
	for _, m := range ms {
		if m.Name == "formula" {
			return m
		}
	}
	return inventory.Machine{}
}

// crossReplicaBoot: formula gets its boot script from one replica, fetches
// its config from a second and reports installed to a third (the second
// again with two replicas); the first shows it installed.
func (k *kubeSegment) crossReplicaBoot(t *testing.T, script, config, events *replica) {
	t.Helper()
	body, err := k.curl("-f", "http://"+script.ip+":8080/ipxe?mac="+strings.ReplaceAll(macFormula, ":", "-")+"&arch=x86_64&platform=pcbios")
	if err != nil {
		t.Fatalf("boot script from %s: %v %s", script, err, body)
	}
	m := regexp.MustCompile(`talos\.config=(\S+)`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no talos.config= in the script from %s:\n%s", script, body)
	}
	url := strings.Replace(m[1], "http://"+script.ip+":", "http://"+config.ip+":", 1)
	if url == m[1] {
		t.Fatalf("the config URL %s does not name %s", m[1], script.ip)
	}
	cfg, err := k.curl("-f", url)
	if err != nil || !strings.Contains(cfg, "hostname: formula") {
		t.Fatalf("config from %s with %s's token: %v\n%.300s", config, script, err, cfg)
	}
	t.Logf("boot script from %s, config from %s", script, config)
	if err := k.publishTo(events, "kube-install-1", installedEv()); err != nil {
		t.Fatalf("publish installed to %s: %v", events, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for _, r := range []*replica{events, script} {
		for !k.machineOn(t, r).Installed {
			if time.Now().After(deadline) {
				t.Fatalf("%s does not show formula installed (reported to %s)\n%s", r, events, r.proc.Output())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	t.Logf("installed reported to %s, shown by %s", events, script)
}

// logTime is the time of the last log line of out holding msg.
func logTime(out, msg string) (time.Time, bool) {
	var at time.Time
	for line := range strings.Lines(out) {
		if !strings.Contains(line, msg) {
			continue
		}
		if m := regexp.MustCompile(`time=(\S+)`).FindStringSubmatch(line); m != nil {
			if t, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
				at = t
			}
		}
	}
	return at, !at.IsZero()
}

// kill9 kills a replica's process by its PID, as a node failure would.
func kill9(t *testing.T, r *replica) {
	t.Helper()
	if err := syscall.Kill(r.proc.Cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %s: %v", r, err)
	}
	select {
	case <-r.proc.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still runs after kill -9", r)
	}
}

// TestServeKubeReplicas runs two (with serve's default Lease timing) and
// then three (with a short one) `rackboot serve --kube` on one segment
// against the real kube-apiserver: exactly one answers DHCP; a boot crosses
// replicas (script, config, installed); kill -9 of the leader hands DHCP to
// another within the lease's bounds. With three, the leader
// first loses its path to the API server (its packets are dropped, the
// process keeps running): it stops answering DHCP, another takes over, and
// it keeps serving HTTP.
func TestServeKubeReplicas(t *testing.T) {
	if err := netns.Requirements(); err != nil {
		t.Fatal(err)
	}
	env := kubetest.Start(t)
	for _, tc := range []struct {
		n  int
		el election
	}{{2, defaultElection}, {3, shortElection}} {
		n := tc.n
		t.Run(strconv.Itoa(n)+"-replicas", func(t *testing.T) {
			k := newKubeSegment(t, env, "rackboot-"+strconv.Itoa(n), n, tc.el)
			t0 := time.Now()
			k.start(t)
			lead, took := k.leader(t, k.el.takeover(), nil)
			t.Logf("%d replicas up in %v; %s answers DHCP (%v after HTTP was up)", n, time.Since(t0).Round(time.Millisecond), lead, took.Round(time.Millisecond))
			k.steady(t, lead, 3)

			others := make([]*replica, 0, n-1)
			for _, r := range k.replicas {
				if r != lead {
					others = append(others, r)
				}
			}
			k.crossReplicaBoot(t, lead, others[0], others[len(others)-1])

			if n == 3 {
				lead = k.cutOff(t, lead)
			}
			kill9(t, lead)
			next, took := k.leader(t, k.el.takeover(), lead)
			t.Logf("kill -9 of the leader %s: %s answers DHCP %v later (lease %v, retry %v; bound %v)", lead, next, took.Round(time.Millisecond), k.el.lease, k.el.retry, k.el.takeover())
			k.steady(t, next, 3)
		})
	}
}

// cutOff blackholes the leader's path to the API server: it must stop
// answering DHCP (renew deadline) before another starts (lease duration),
// and go on serving HTTP. It returns the new leader.
func (k *kubeSegment) cutOff(t *testing.T, lead *replica) *replica {
	t.Helper()
	t0 := time.Now()
	lead.proxy.Blackhole()
	next, took := k.leader(t, k.el.takeover(), lead) // fails on two offers to one DISCOVER
	t.Logf("%s cut off from the API server: %s answers DHCP %v later (renew deadline %v, lease %v)", lead, next, took.Round(time.Millisecond), k.el.renew, k.el.lease)
	if took < k.el.renew {
		t.Errorf("another replica answered %v after the cut, before the old leader's renew deadline %v", took, k.el.renew)
	}
	if c, err := k.code("http://" + lead.ip + ":8080/boot.ipxe"); c != "200" {
		t.Errorf("the cut-off replica's HTTP: %s %v, want 200 (it keeps serving)", c, err)
	}
	// Both logs are on this host's clock: the old leader's fence closed
	// before the new leader's term began.
	stopped, ok1 := logTime(lead.proc.Output(), "stopped leading")
	started, ok2 := logTime(next.proc.Output(), "leading: this replica answers DHCP")
	switch {
	case !ok1 || !ok2:
		t.Errorf("no 'stopped leading' line from %s (%v) or no 'leading' line from %s (%v)", lead, ok1, next, ok2)
	case !stopped.Before(started):
		t.Errorf("%s stopped leading at %v, after %s started at %v", lead, stopped, next, started)
	default:
		t.Logf("%s stopped answering DHCP %v before %s started", lead, started.Sub(stopped).Round(time.Millisecond), next)
	}
	if time.Since(t0) > 2*k.el.takeover() {
		t.Errorf("the cut-off took %v", time.Since(t0))
	}
	return next
}

// client is a DHCP client on formula's NIC that speaks for mac (its own
// raw socket: nclient4 takes only replies for its hardware address).
func (k *kubeSegment) client(t *testing.T, mac net.HardwareAddr) *nclient4.Client {
	t.Helper()
	var c *nclient4.Client
	must(t, k.cli.Run(func() (err error) {
		c, err = nclient4.New("eth0", nclient4.WithHWAddr(mac), nclient4.WithTimeout(time.Second), nclient4.WithRetry(5))
		return err
	}))
	t.Cleanup(func() { c.Close() })
	return c
}

// offer sends a plain DHCPDISCOVER (no PXE) for mac and returns the offer.
func (k *kubeSegment) offer(t *testing.T, mac net.HardwareAddr) *dhcpv4.DHCPv4 {
	t.Helper()
	o, err := k.client(t, mac).DiscoverOffer(context.Background())
	if err != nil {
		t.Fatalf("no offer for %s: %v", mac, err)
	}
	return o
}

// bind takes mac through DISCOVER, OFFER, REQUEST, ACK and returns its address.
func (k *kubeSegment) bind(t *testing.T, mac net.HardwareAddr) net.IP {
	t.Helper()
	lease, err := k.client(t, mac).Request(context.Background())
	if err != nil {
		t.Fatalf("DHCP for %s: %v", mac, err)
	}
	return lease.ACK.YourIPAddr
}

// TestServeKubeFullDHCP: with --dhcp full the lease table is in the
// cluster; a lease the leader bound is known to the replica that takes
// over after kill -9 (it reads the table again when its term starts): the
// bound machine is offered its address again, another machine a different
// one.
func TestServeKubeFullDHCP(t *testing.T) {
	if err := netns.Requirements(); err != nil {
		t.Fatal(err)
	}
	env := kubetest.Start(t)
	k := newKubeSegment(t, env, "rackboot-full", 2, shortElection)
	k.dhcp = []string{"--dhcp", "full", "--range", "10.80.0.100-10.80.0.150", "--router", "none"}
	k.start(t)
	lead, _ := k.leader(t, k.el.takeover(), nil)
	m1, _ := net.ParseMAC("52:54:00:c0:00:01")
	m2, _ := net.ParseMAC("52:54:00:c0:00:02")
	addr := k.bind(t, m1)
	t.Logf("%s bound %s to %s", lead, addr, m1)

	kill9(t, lead)
	next, took := k.leader(t, k.el.takeover(), lead)
	t.Logf("kill -9 of %s: %s answers %v later", lead, next, took.Round(time.Millisecond))
	// The other machine first: a table read before the bind would offer
	// it the first free address, which is m1's.
	if o := k.offer(t, m2); o.YourIPAddr.Equal(addr) || o.ServerIdentifier().String() != next.ip {
		t.Errorf("another machine was offered %s by %s; %s holds %s", o.YourIPAddr, o.ServerIdentifier(), m1, addr)
	}
	if o := k.offer(t, m1); !o.YourIPAddr.Equal(addr) {
		t.Errorf("%s after the switch-over: offered %s, want its lease %s", m1, o.YourIPAddr, addr)
	}
}
