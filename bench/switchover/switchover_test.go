//go:build linux

package switchover

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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
	"github.com/dotfile/rackboot/leader"
)

var (
	rackbootBin = flag.String("rackboot", "", "the rackboot binary under test (make build: bin/rackboot)")
	rounds      = flag.Int("rounds", 6, "kill -9 switch-overs to time")
	leaseDur    = flag.Duration("lease-duration", leader.DefaultLeaseDuration, "serve --lease-duration")
	renewDl     = flag.Duration("renew-deadline", leader.DefaultRenewDeadline, "serve --renew-deadline")
	retryPer    = flag.Duration("retry-period", leader.DefaultRetryPeriod, "serve --retry-period")
)

// probeWindow is how long one DISCOVER collects offers; it is the
// resolution of a measured switch-over.
const probeWindow = 200 * time.Millisecond

const rack = `cluster:
  name: bench
  talosVersion: v1.13.0
  kubernetesVersion: 1.36.0
  vip: 10.80.0.10
  network:
    subnet: 10.80.0.0/24
    gateway: 10.80.0.254
    nameservers: [10.80.0.254]
    rackboot: 10.80.0.1
machines:
  - name: bench1
    role: controlplane
    select: {mac: ["52:54:00:b0:00:01"]}
    address: 10.80.0.11/24
`

type replica struct {
	name, ip, state string
	ns              *netns.NS
	proc            *netns.Process
}

// segment is one bridge with two replicas of `serve --kube --dhcp proxy`,
// each in its own namespace reaching the API server through a proxy, and a
// client namespace that sends PXE DISCOVERs.
type segment struct {
	env      *kubetest.Env
	dir      string
	kns      string
	cli      *netns.NS
	probe    *nclient4.Client
	replicas []*replica
}

// BenchmarkSwitchover: kill -9 of the leading replica → the first OFFER
// from the other, -rounds times; the killed replica is started again
// (standby) before the next round, which kills the new leader.
func BenchmarkSwitchover(b *testing.B) {
	if *rackbootBin == "" {
		b.Fatal("no rackboot binary: pass -args -rackboot PATH (make build writes bin/rackboot)")
	}
	if err := netns.Requirements(); err != nil {
		b.Fatal(err)
	}
	s := newSegment(b, kubetest.Start(b))
	for _, r := range s.replicas {
		s.start(b, r)
	}
	bound := *leaseDur + *retryPer*22/10 + time.Second + 30*time.Second // generous: a failed round must end
	lead, _ := s.firstOffer(b, bound, nil)
	for i := range *rounds {
		s.steady(b, lead)
		t0 := time.Now()
		if err := syscall.Kill(lead.proc.Cmd.Process.Pid, syscall.SIGKILL); err != nil {
			b.Fatalf("kill -9 %s: %v", lead.name, err)
		}
		<-lead.proc.Done()
		next, at := s.firstOffer(b, bound, lead)
		took := at.Sub(t0)
		// One Go benchmark line per round, for benchstat.
		fmt.Printf("BenchmarkP8/switchover 1 %d ns/op\n", took.Nanoseconds())
		b.Logf("round %d: kill -9 %s → first OFFER from %s after %v (lease %v, retry %v)", i+1, lead.name, next.name, took.Round(time.Millisecond), *leaseDur, *retryPer)
		s.start(b, lead) // back as a standby
		lead = next
	}
}

func newSegment(b *testing.B, env *kubetest.Env) *segment {
	s := &segment{env: env, dir: b.TempDir(), kns: "rackboot-bench-p8"}
	rackFile := filepath.Join(s.dir, "rack.yaml")
	standin := filepath.Join(s.dir, "standin")
	must(b, os.WriteFile(rackFile, []byte(rack), 0o644))
	must(b, os.MkdirAll(standin, 0o755))
	must(b, os.WriteFile(filepath.Join(standin, "vmlinuz"), []byte("kernel"), 0o644))
	must(b, os.WriteFile(filepath.Join(standin, "initramfs.cpio.gz"), []byte("initramfs"), 0o644))

	// The secrets bundle from `rackboot config`, imported as a handoff would.
	laptop := filepath.Join(s.dir, "laptop")
	if out, err := exec.Command(*rackbootBin, "-f", rackFile, "--state", laptop, "config", "bench1").CombinedOutput(); err != nil {
		b.Fatalf("rackboot config: %v\n%s", err, out)
	}
	cs := kubernetes.NewForConfigOrDie(env.Config)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.kns}}, metav1.CreateOptions{})
	must(b, err)
	st, err := kubestate.New(cs, s.kns)
	must(b, err)
	must(b, st.Import(ctx, laptop, rackFile))

	apiAddr := strings.TrimPrefix(env.URL, "https://")
	lan := netns.New(b, "p8lan")
	lan.AddBridge("br0")
	for i := range 2 {
		r := &replica{name: fmt.Sprintf("r%d", i+1), ip: fmt.Sprintf("10.80.0.%d", i+1)}
		r.ns = netns.New(b, "p8"+r.name)
		lan.AddVeth("p"+r.name, r.ns, "eth0")
		lan.SetMaster("p"+r.name, "br0")
		r.ns.AddAddr("eth0", netip.MustParsePrefix(r.ip+"/24"))
		r.state = filepath.Join(s.dir, r.name)
		// The API server's address inside the namespace is a proxy to it.
		var ln net.Listener
		must(b, r.ns.Run(func() (err error) { ln, err = net.Listen("tcp", apiAddr); return err }))
		p := tcpproxy.Start(ln, apiAddr)
		b.Cleanup(func() { _ = p.Cut() })
		s.replicas = append(s.replicas, r)
	}
	s.cli = netns.New(b, "p8cli")
	lan.AddVeth("pcli", s.cli, "eth0")
	lan.SetMaster("pcli", "br0")
	s.cli.AddAddr("eth0", netip.MustParsePrefix("10.80.0.50/24"))
	for _, ns := range []*netns.NS{lan, s.cli, s.replicas[0].ns, s.replicas[1].ns} {
		if rt, err := ns.DefaultRoute(); err != nil || rt != "" {
			b.Fatalf("namespace %s has a default route %q (%v): refusing to run", ns.Name(), rt, err)
		}
	}
	must(b, s.cli.Run(func() (err error) {
		s.probe, err = nclient4.New("eth0", nclient4.WithTimeout(probeWindow), nclient4.WithRetry(1))
		return err
	}))
	b.Cleanup(func() { s.probe.Close() })
	return s
}

// start runs r's `serve --kube` and waits until it serves HTTP.
func (s *segment) start(b *testing.B, r *replica) {
	args := []string{"-f", filepath.Join(s.dir, "rack.yaml"), "--state", r.state, "serve",
		"--kube", "--kubeconfig", s.env.Kubeconfig, "--namespace", s.kns,
		"--lease-duration", leaseDur.String(), "--renew-deadline", renewDl.String(), "--retry-period", retryPer.String(),
		"-i", "eth0", "--server-ip", r.ip, "--standin", filepath.Join(s.dir, "standin"), "--dhcp", "proxy"}
	r.proc = r.ns.Start(*rackbootBin, args...)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, _ := s.cli.Exec(ctx, "curl", "-sS", "--max-time", "2", "-o", "/dev/null", "-w", "%{http_code}", "http://"+r.ip+":8080/boot.ipxe")
		cancel()
		if string(out) == "200" {
			return
		}
		select {
		case <-r.proc.Done():
			b.Fatalf("replica %s exited: %v\n%s", r.name, r.proc.Err(), r.proc.Output())
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("replica %s did not answer HTTP within 60 s\n%s", r.name, r.proc.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// discover sends one PXE DISCOVER and returns who offered within the
// window, and when the first offer arrived.
func (s *segment) discover(b *testing.B) ([]string, time.Time) {
	disc, err := dhcpv4.NewDiscovery(s.probe.InterfaceAddr(),
		dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")),
		dhcpv4.WithOption(dhcpv4.OptClientArch(0)))
	must(b, err)
	var from []string
	var first time.Time
	_, err = s.probe.SendAndRead(context.Background(), s.probe.RemoteAddr(), disc, func(p *dhcpv4.DHCPv4) bool {
		if p.MessageType() == dhcpv4.MessageTypeOffer && p.TransactionID == disc.TransactionID {
			if first.IsZero() {
				first = time.Now()
			}
			from = append(from, p.ServerIdentifier().String())
		}
		return false // the whole window: two offers mean two DHCP servers
	})
	if err != nil && !errors.Is(err, nclient4.ErrNoResponse) {
		b.Fatalf("DHCP probe: %v", err)
	}
	return from, first
}

// firstOffer sends DISCOVERs until exactly one replica other than not
// answers; it returns that replica and when its offer arrived. Two offers
// to one DISCOVER fail the benchmark.
func (s *segment) firstOffer(b *testing.B, within time.Duration, not *replica) (*replica, time.Time) {
	t0 := time.Now()
	for time.Since(t0) < within {
		from, at := s.discover(b)
		if len(from) > 1 {
			b.Fatalf("one DISCOVER got %d offers, from %v: two DHCP servers", len(from), from)
		}
		if len(from) == 1 && (not == nil || from[0] != not.ip) {
			for _, r := range s.replicas {
				if r.ip == from[0] {
					return r, at
				}
			}
			b.Fatalf("an offer from %s, which is no replica", from[0])
		}
	}
	b.Fatalf("no replica (other than %v) answered DHCP within %v", not, within)
	return nil, time.Time{}
}

// steady checks that only want answers, over a few DISCOVERs.
func (s *segment) steady(b *testing.B, want *replica) {
	for range 5 {
		if from, _ := s.discover(b); len(from) != 1 || from[0] != want.ip {
			b.Fatalf("offers from %v, want only the leader %s", from, want.ip)
		}
	}
}

func must(b *testing.B, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}
