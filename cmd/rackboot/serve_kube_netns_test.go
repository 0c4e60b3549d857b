//go:build linux

package main

import (
	"context"
	"encoding/json"
	"net"
	"os/exec"
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

	"github.com/dotfile/rackboot/internal/kubelan"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/internal/netns"
	"github.com/dotfile/rackboot/inventory"
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

// kubeSegment is one Ethernet segment with replicas of `serve --kube`,
// each in its own namespace with its own address and its own path to the
// API server, and formula's NIC (internal/kubelan, which the P8 benchmark
// builds too), with the election timing and DHCP flags the replicas run
// with.
type kubeSegment struct {
	*kubelan.LAN
	el   election
	dhcp []string // serve's DHCP flags
}

type replica = kubelan.Replica

// newKubeSegment builds the segment with n replicas and puts the rack, a
// secrets bundle and nothing else into the Kubernetes namespace ns (as a
// handoff would).
func newKubeSegment(t *testing.T, env *kubetest.Env, ns string, n int, el election) *kubeSegment {
	t.Helper()
	lan := kubelan.New(t, env, kubelan.Options{Prefix: "k", KubeNamespace: ns, Replicas: n,
		Rackboot: buildRackboot(t, t.TempDir()), Rack: kubeRack, Machine: "formula", ClientMAC: macFormula,
		ProbeWindow: probeWindow})
	return &kubeSegment{LAN: lan, el: el, dhcp: []string{"--dhcp", "proxy"}}
}

// start runs every replica, then waits until each serves HTTP.
func (k *kubeSegment) start(t *testing.T) {
	t.Helper()
	for _, r := range k.Replicas {
		k.Run(r, append([]string{"--lease-duration", k.el.lease.String(), "--renew-deadline", k.el.renew.String(),
			"--retry-period", k.el.retry.String()}, k.dhcp...)...)
	}
	for _, r := range k.Replicas {
		k.WaitHTTP(t, r)
	}
}

// leader waits until exactly one replica other than not answers a
// DISCOVER and returns it and how long that took; more than one answering
// to one DISCOVER fails the test at once.
func (k *kubeSegment) leader(t *testing.T, within time.Duration, not *replica) (*replica, time.Duration) {
	t.Helper()
	t0 := time.Now()
	r, _ := k.Leader(t, within, not)
	return r, time.Since(t0)
}

// publishTo sends a Talos event from formula's NIC to a replica's sink.
func (k *kubeSegment) publishTo(r *replica, id string, ev *machine.SequenceEvent) error {
	data, err := anypb.New(ev)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("passthrough:///"+r.IP+":4002",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var c net.Conn
			err := k.Client.Run(func() (err error) { c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr); return err })
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
	out, err := exec.Command(k.Rackboot, "-f", k.RackFile, "--state", r.State, "status", "--json").Output()
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
	body, err := k.Curl("-f", "http://"+script.IP+":8080/ipxe?mac="+strings.ReplaceAll(macFormula, ":", "-")+"&arch=x86_64&platform=pcbios")
	if err != nil {
		t.Fatalf("boot script from %s: %v %s", script, err, body)
	}
	m := regexp.MustCompile(`talos\.config=(\S+)`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no talos.config= in the script from %s:\n%s", script, body)
	}
	url := strings.Replace(m[1], "http://"+script.IP+":", "http://"+config.IP+":", 1)
	if url == m[1] {
		t.Fatalf("the config URL %s does not name %s", m[1], script.IP)
	}
	cfg, err := k.Curl("-f", url)
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
				t.Fatalf("%s does not show formula installed (reported to %s)\n%s", r, events, r.Proc.Output())
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
	if err := syscall.Kill(r.Proc.Cmd.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %s: %v", r, err)
	}
	select {
	case <-r.Proc.Done():
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
			k.Steady(t, lead, 3)

			others := make([]*replica, 0, n-1)
			for _, r := range k.Replicas {
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
			k.Steady(t, next, 3)
		})
	}
}

// cutOff blackholes the leader's path to the API server: it must stop
// answering DHCP (renew deadline) before another starts (lease duration),
// and go on serving HTTP. It returns the new leader.
func (k *kubeSegment) cutOff(t *testing.T, lead *replica) *replica {
	t.Helper()
	t0 := time.Now()
	lead.Proxy.Blackhole()
	next, took := k.leader(t, k.el.takeover(), lead) // fails on two offers to one DISCOVER
	t.Logf("%s cut off from the API server: %s answers DHCP %v later (renew deadline %v, lease %v)", lead, next, took.Round(time.Millisecond), k.el.renew, k.el.lease)
	if took < k.el.renew {
		t.Errorf("another replica answered %v after the cut, before the old leader's renew deadline %v", took, k.el.renew)
	}
	if c, err := k.Code("http://" + lead.IP + ":8080/boot.ipxe"); c != "200" {
		t.Errorf("the cut-off replica's HTTP: %s %v, want 200 (it keeps serving)", c, err)
	}
	// Both logs are on this host's clock: the old leader's fence closed
	// before the new leader's term began.
	stopped, ok1 := logTime(lead.Proc.Output(), "stopped leading")
	started, ok2 := logTime(next.Proc.Output(), "leading: this replica answers DHCP")
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
	must(t, k.Client.Run(func() (err error) {
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
	if o := k.offer(t, m2); o.YourIPAddr.Equal(addr) || o.ServerIdentifier().String() != next.IP {
		t.Errorf("another machine was offered %s by %s; %s holds %s", o.YourIPAddr, o.ServerIdentifier(), m1, addr)
	}
	if o := k.offer(t, m1); !o.YourIPAddr.Equal(addr) {
		t.Errorf("%s after the switch-over: offered %s, want its lease %s", m1, o.YourIPAddr, addr)
	}
}
