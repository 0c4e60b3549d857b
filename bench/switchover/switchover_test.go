//go:build linux

package switchover

import (
	"flag"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/dotfile/rackboot/internal/kubelan"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/internal/netns"
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

// BenchmarkSwitchover: kill -9 of the leading replica → the first OFFER
// from the other, -rounds times; the killed replica is started again
// (standby) before the next round, which kills the new leader. The
// segment (two replicas of `serve --kube --dhcp proxy` and a client that
// sends PXE DISCOVERs) is internal/kubelan's, the one the serve --kube
// tests use.
func BenchmarkSwitchover(b *testing.B) {
	if *rackbootBin == "" {
		b.Fatal("no rackboot binary: pass -args -rackboot PATH (make build writes bin/rackboot)")
	}
	if err := netns.Requirements(); err != nil {
		b.Fatal(err)
	}
	lan := kubelan.New(b, kubetest.Start(b), kubelan.Options{
		Prefix: "p8", KubeNamespace: "rackboot-bench-p8", Replicas: 2,
		Rackboot: *rackbootBin, Rack: rack, Machine: "bench1", ProbeWindow: probeWindow,
	})
	election := []string{"--lease-duration", leaseDur.String(), "--renew-deadline", renewDl.String(),
		"--retry-period", retryPer.String(), "--dhcp", "proxy"}
	for _, r := range lan.Replicas {
		lan.Start(b, r, election...)
	}
	bound := *leaseDur + *retryPer*22/10 + time.Second + 30*time.Second // generous: a failed round must end
	lead, _ := lan.Leader(b, bound, nil)
	for i := range *rounds {
		lan.Steady(b, lead, 5)
		t0 := time.Now()
		if err := syscall.Kill(lead.Proc.Cmd.Process.Pid, syscall.SIGKILL); err != nil {
			b.Fatalf("kill -9 %s: %v", lead.Name, err)
		}
		<-lead.Proc.Done()
		next, at := lan.Leader(b, bound, lead)
		took := at.Sub(t0)
		// One Go benchmark line per round, for benchstat.
		fmt.Printf("BenchmarkP8/switchover 1 %d ns/op\n", took.Nanoseconds())
		b.Logf("round %d: kill -9 %s → first OFFER from %s after %v (lease %v, retry %v)", i+1, lead.Name, next.Name, took.Round(time.Millisecond), *leaseDur, *retryPer)
		lan.Start(b, lead, election...) // back as a standby
		lead = next
	}
}
