//go:build linux

// Package kubelan builds, for tests and benchmarks, one Ethernet segment
// with replicas of `rackboot serve --kube`: a bridge in a network namespace
// of its own, each replica in its own namespace with its own address and
// its own path to the API server (a tcpproxy the test can cut or
// blackhole), a client namespace that sends PXE DISCOVERs, and the rack
// and a secrets bundle in a Kubernetes namespace, as a handoff leaves
// them. It runs nothing until Start; it starts what it builds and stops
// it at cleanup (netns, tcpproxy).
//
//	lan := kubelan.New(t, kubetest.Start(t), kubelan.Options{...})
//	for _, r := range lan.Replicas {
//		lan.Start(t, r, "--dhcp", "proxy")
//	}
//	lead, _ := lan.Leader(t, 30*time.Second, nil)
package kubelan

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/internal/netns"
	"github.com/dotfile/rackboot/internal/tcpproxy"
	"github.com/dotfile/rackboot/kubestate"
)

// Options say what to build.
type Options struct {
	// Prefix starts every network namespace's name: Prefix+"lan",
	// Prefix+"r1"…, Prefix+"cli".
	Prefix string
	// KubeNamespace is the Kubernetes namespace the replicas share; New
	// creates it.
	KubeNamespace string
	// Replicas is how many replicas there are: r1 at 10.80.0.1, r2 at
	// 10.80.0.2, … on 10.80.0.0/24; the client is 10.80.0.50.
	Replicas int
	// Rackboot is the binary under test.
	Rackboot string
	// Rack is the rack file's text (10.80.0.0/24); Machine one of its
	// machines, whose config `rackboot config` renders on the laptop's
	// state to make the secrets bundle imported into the cluster.
	Rack, Machine string
	// ClientMAC, when set, is the client NIC's MAC (a machine of the rack).
	ClientMAC string
	// ProbeWindow is how long one DISCOVER collects offers.
	ProbeWindow time.Duration
}

// LAN is the segment.
type LAN struct {
	Options
	Env *kubetest.Env
	// Dir holds the rack file, the stand-in boot files and each replica's
	// state directory.
	Dir, RackFile, Standin string
	Bridge, Client         *netns.NS
	Replicas               []*Replica
	// Probe is a DHCP client on the client's eth0.
	Probe *nclient4.Client
}

// Replica is one `serve --kube`.
type Replica struct {
	Name, IP, State string
	NS              *netns.NS
	// Proxy is the replica's only way to the API server.
	Proxy *tcpproxy.Proxy
	// Proc is the running serve (Start).
	Proc *netns.Process
}

func (r *Replica) String() string { return r.Name + " (" + r.IP + ")" }

// New builds the segment and puts the rack and a secrets bundle, and
// nothing else, into the Kubernetes namespace (as a handoff would).
func New(tb testing.TB, env *kubetest.Env, o Options) *LAN {
	tb.Helper()
	for _, tool := range []string{"curl", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			tb.Fatalf("%s is missing: run `make deps` (Debian packages curl, iproute2)", tool)
		}
	}
	l := &LAN{Options: o, Env: env, Dir: tb.TempDir()}
	l.RackFile = filepath.Join(l.Dir, "rack.yaml")
	l.Standin = filepath.Join(l.Dir, "standin")
	must(tb, os.WriteFile(l.RackFile, []byte(o.Rack), 0o644))
	must(tb, os.MkdirAll(l.Standin, 0o755))
	must(tb, os.WriteFile(filepath.Join(l.Standin, "vmlinuz"), []byte("kernel"), 0o644))
	must(tb, os.WriteFile(filepath.Join(l.Standin, "initramfs.cpio.gz"), []byte("initramfs"), 0o644))
	l.importSecrets(tb)

	apiAddr := strings.TrimPrefix(env.URL, "https://")
	l.Bridge = netns.New(tb, o.Prefix+"lan")
	l.Bridge.AddBridge("br0")
	for i := range o.Replicas {
		r := &Replica{Name: fmt.Sprintf("r%d", i+1), IP: fmt.Sprintf("10.80.0.%d", i+1)}
		r.NS = netns.New(tb, o.Prefix+r.Name)
		l.Bridge.AddVeth("p"+r.Name, r.NS, "eth0")
		l.Bridge.SetMaster("p"+r.Name, "br0")
		r.NS.AddAddr("eth0", netip.MustParsePrefix(r.IP+"/24"))
		r.State = filepath.Join(l.Dir, r.Name)
		// The API server listens on the host's loopback; inside the
		// replica's namespace the same address is a proxy to it, so the
		// kubeconfig is the test's own, and one replica's path can be cut
		// alone.
		var ln net.Listener
		must(tb, r.NS.Run(func() (err error) { ln, err = net.Listen("tcp", apiAddr); return err }))
		r.Proxy = tcpproxy.Start(ln, apiAddr)
		tb.Cleanup(func() { _ = r.Proxy.Cut() })
		l.Replicas = append(l.Replicas, r)
	}
	l.Client = netns.New(tb, o.Prefix+"cli")
	l.Bridge.AddVeth("pcli", l.Client, "eth0")
	l.Bridge.SetMaster("pcli", "br0")
	if o.ClientMAC != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := l.Client.Exec(ctx, "ip", "link", "set", "eth0", "address", o.ClientMAC)
		cancel()
		if err != nil {
			tb.Fatalf("set MAC: %v %s", err, out)
		}
	}
	l.Client.AddAddr("eth0", netip.MustParsePrefix("10.80.0.50/24"))
	all := []*netns.NS{l.Bridge, l.Client}
	for _, r := range l.Replicas {
		all = append(all, r.NS)
	}
	for _, ns := range all {
		if rt, err := ns.DefaultRoute(); err != nil || rt != "" {
			tb.Fatalf("namespace %s has a default route %q (%v): refusing to run", ns.Name(), rt, err)
		}
	}
	must(tb, l.Client.Run(func() (err error) {
		l.Probe, err = nclient4.New("eth0", nclient4.WithTimeout(o.ProbeWindow), nclient4.WithRetry(1))
		return err
	}))
	tb.Cleanup(func() { l.Probe.Close() })
	return l
}

// importSecrets makes the laptop's state (the secrets bundle, with
// `rackboot config`) and imports it and the rack into the namespace.
func (l *LAN) importSecrets(tb testing.TB) {
	tb.Helper()
	laptop := filepath.Join(l.Dir, "laptop")
	if out, err := exec.Command(l.Rackboot, "-f", l.RackFile, "--state", laptop, "config", l.Machine).CombinedOutput(); err != nil {
		tb.Fatalf("rackboot config: %v\n%s", err, out)
	}
	cs := kubernetes.NewForConfigOrDie(l.Env.Config)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: l.KubeNamespace}}, metav1.CreateOptions{})
	must(tb, err)
	st, err := kubestate.New(cs, l.KubeNamespace)
	must(tb, err)
	must(tb, st.Import(ctx, laptop, l.RackFile))
}

// ServeArgs is r's `serve --kube` command line, then extra (the election's
// timing, the DHCP mode).
func (l *LAN) ServeArgs(r *Replica, extra ...string) []string {
	args := []string{"-f", l.RackFile, "--state", r.State, "serve",
		"--kube", "--kubeconfig", l.Env.Kubeconfig, "--namespace", l.KubeNamespace,
		"-i", "eth0", "--server-ip", r.IP, "--standin", l.Standin}
	return append(args, extra...)
}

// Start runs r's serve with ServeArgs(r, extra...) and waits until it
// serves HTTP.
func (l *LAN) Start(tb testing.TB, r *Replica, extra ...string) {
	tb.Helper()
	l.Run(r, extra...)
	l.WaitHTTP(tb, r)
}

// Run starts r's serve with ServeArgs(r, extra...) and does not wait.
func (l *LAN) Run(r *Replica, extra ...string) {
	r.Proc = r.NS.Start(l.Rackboot, l.ServeArgs(r, extra...)...)
}

// WaitHTTP waits up to a minute until r answers GET / from the client
// (its readiness probe); r exiting fails at once.
func (l *LAN) WaitHTTP(tb testing.TB, r *Replica) {
	tb.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if c, _ := l.Code("http://" + r.IP + ":8080/"); c == "200" {
			return
		}
		select {
		case <-r.Proc.Done():
			tb.Fatalf("replica %s exited: %v\n%s", r.Name, r.Proc.Err(), r.Proc.Output())
		default:
		}
		if time.Now().After(deadline) {
			tb.Fatalf("replica %s did not answer HTTP within 60 s\n%s", r.Name, r.Proc.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Curl runs curl in the client namespace (5 s per request).
func (l *LAN) Curl(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := l.Client.Exec(ctx, "curl", append([]string{"-sS", "--max-time", "5"}, args...)...)
	return string(out), err
}

// Code is the HTTP status code of a GET from the client.
func (l *LAN) Code(url string) (string, error) {
	return l.Curl("-o", "/dev/null", "-w", "%{http_code}", url)
}

// Discover sends one PXE DHCPDISCOVER from the client and returns the
// addresses of the servers that offered within the probe window, and when
// the first offer arrived.
func (l *LAN) Discover(tb testing.TB) ([]string, time.Time) {
	tb.Helper()
	disc, err := dhcpv4.NewDiscovery(l.Probe.InterfaceAddr(),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(0)))
	must(tb, err)
	var from []string
	var first time.Time
	_, err = l.Probe.SendAndRead(context.Background(), l.Probe.RemoteAddr(), disc, func(p *dhcpv4.DHCPv4) bool {
		if p.MessageType() == dhcpv4.MessageTypeOffer && p.TransactionID == disc.TransactionID {
			if first.IsZero() {
				first = time.Now()
			}
			from = append(from, p.ServerIdentifier().String())
		}
		return false // the whole window: two offers mean two DHCP servers
	})
	if err != nil && !errors.Is(err, nclient4.ErrNoResponse) {
		tb.Fatalf("DHCP probe: %v", err)
	}
	return from, first
}

// Leader sends DISCOVERs until exactly one replica other than not answers
// and returns it and when its offer arrived; more than one offer to one
// DISCOVER fails at once, as does no answer within the time given.
func (l *LAN) Leader(tb testing.TB, within time.Duration, not *Replica) (*Replica, time.Time) {
	tb.Helper()
	t0 := time.Now()
	for time.Since(t0) < within {
		from, at := l.Discover(tb)
		if len(from) > 1 {
			tb.Fatalf("one DISCOVER got %d offers, from %v: two DHCP servers", len(from), from)
		}
		if len(from) == 1 && (not == nil || from[0] != not.IP) {
			for _, r := range l.Replicas {
				if r.IP == from[0] {
					return r, at
				}
			}
			tb.Fatalf("an offer from %s, which is no replica", from[0])
		}
	}
	tb.Fatalf("no replica (other than %v) answered DHCP within %v", not, within)
	return nil, time.Time{}
}

// Steady checks over more DISCOVERs that only want answers.
func (l *LAN) Steady(tb testing.TB, want *Replica, probes int) {
	tb.Helper()
	for range probes {
		if from, _ := l.Discover(tb); len(from) != 1 || from[0] != want.IP {
			tb.Fatalf("offers from %v, want only the leader %s", from, want.IP)
		}
	}
}

func must(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}
