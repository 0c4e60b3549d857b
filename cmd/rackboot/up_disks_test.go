package main

// `rackboot up`'s Ceph disk check through the real code path: the driver
// with talosCephDisks (readMachineDisks over machinery's client, mutual TLS
// with the admin talosconfig) against the stand-in's Talos API on loopback,
// over the sparse disk images of newDisksLab (sda: GPT, ext4, bluestore
// labels at 0 and 1 GiB; the label at 0 covers the GPT header, so Talos
// sees the bluestore label alone). Only the Kubernetes side is a recorder: the
// check runs before anything is applied.

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/bringup"
	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/disks/diskstest"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/profiles"
)

// recCluster records what the driver asks of Kubernetes; everything is
// healthy at once.
type recCluster struct {
	mu  sync.Mutex
	ops []string
}

func (c *recCluster) add(op string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ops = append(c.ops, op)
	return nil
}
func (c *recCluster) WaitAPIServer(context.Context) error            { return c.add("vip") }
func (c *recCluster) WaitNodesReady(context.Context, []string) error { return c.add("nodes") }
func (c *recCluster) Apply(_ context.Context, b bundles.Bundle) error {
	return c.add("apply " + b.Name)
}
func (c *recCluster) WaitGates(_ context.Context, b bundles.Bundle) error {
	return c.add("gates " + b.Name)
}

// recordedBootstrap: etcd was bootstrapped by an earlier run.
type recordedBootstrap struct{}

func (recordedBootstrap) Done() (*bringup.Record, error) {
	return &bringup.Record{Node: "192.168.1.11", Time: time.Unix(0, 0)}, nil
}
func (recordedBootstrap) Bootstrap(context.Context) (bringup.BootstrapResult, error) {
	return bringup.BootstrapResult{Record: bringup.Record{Node: "192.168.1.11"}, Outcome: bringup.Recorded}, nil
}

// upDiskRun runs the driver over the example rack, its Ceph nodes limited
// to those in endpoints (all on loopback), with the real disk reader.
func upDiskRun(t *testing.T, l disksLab, endpoints map[string]string, nodes []string, osds func(context.Context) ([]appsv1.Deployment, error)) (*recCluster, string, error) {
	t.Helper()
	r, err := profiles.LoadFile(l.rack)
	if err != nil {
		t.Fatal(err)
	}
	tc, err := adminTalosconfig(&app{stateDir: l.state}, r)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := upPlan(r)
	if err != nil {
		t.Fatal(err)
	}
	plan.CephNodes = nodes
	plan.Bundles = []bundles.Bundle{
		{Name: bundles.RookBundle, Objects: make([]*unstructured.Unstructured, 1)},
		{Name: bundles.CockroachBundle, Objects: make([]*unstructured.Unstructured, 1)},
	}
	plan.StepTimeout = time.Minute
	c := &recCluster{}
	var out strings.Builder
	err = bringup.Run(context.Background(), plan, bringup.Deps{
		Bootstrap: recordedBootstrap{},
		Cluster:   c,
		Disks:     &talosCephDisks{rack: r, tc: tc, endpoints: endpoints, timeout: 5 * time.Second, osds: osds},
		Out:       &out,
	})
	t.Logf("output:\n%s", out.String())
	return c, out.String(), err
}

// The check stops on formula's stale sda and on urban, which does not
// answer; Rook is not applied. After a wipe the next run goes through.
func TestUpDiskCheckStandin(t *testing.T) {
	l := newDisksLab(t)
	eps := map[string]string{"formula": l.addr, "urban": "127.0.0.1:1"}
	c, _, err := upDiskRun(t, l, eps, []string{"formula", "urban"}, nil)
	var de *bringup.DiskCheckError
	if !errors.As(err, &de) {
		t.Fatalf("err = %v, want the disk check's refusal", err)
	}
	for _, want := range []string{
		"1 Ceph disk(s) not clean (Rook would refuse them) and 1 machine(s) whose disks could not be read:",
		"\n  formula: sda (serial WD-OLD-1, 2.1 GB) holds Ceph bluestore label on sda; wipe it: rackboot disks wipe formula --serial WD-OLD-1\n",
		"\n  urban: cannot read its disks through Talos's API: not answering:",
		"rackboot up --skip-disk-check",
		"picks up at this check",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	// vdb holds ext4 but is not a Ceph candidate; sdb is clean.
	if strings.Contains(err.Error(), "vdb") || strings.Contains(err.Error(), "sdb") {
		t.Errorf("error names a disk that is not a stale candidate:\n%v", err)
	}
	if slices.Contains(c.ops, "apply rook-ceph") {
		t.Fatalf("Rook applied after the check stopped: %q", c.ops)
	}

	// The wipe the message says (fast, Talos's default), then `up` again,
	// urban now left out of the Ceph nodes.
	if out, err := l.run(t, "", "disks", "wipe", "formula", "--node", "formula="+l.addr, "--serial", "WD-OLD-1", "--yes", "--no-cluster"); err != nil {
		t.Fatalf("wipe: %v\n%s", err, out)
	}
	c, out, err := upDiskRun(t, l, eps, []string{"formula"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.ops, []string{"vip", "nodes", "apply rook-ceph", "gates rook-ceph", "apply cockroachdb", "gates cockroachdb"}) {
		t.Errorf("second run %q", c.ops)
	}
	if !strings.Contains(out, "formula: sda clean, sdb clean, sdc clean\n") || !strings.Contains(out, "invisible to Talos") {
		t.Errorf("second run output lacks the verdicts or the blind-spot note")
	}
	// What the check cannot see: the fast wipe left the copy at 1 GiB.
	if ls := diskstest.Inspect(t, l.sda).Labels(); len(ls) != 1 || ls[0].Offset != 1<<30 {
		t.Errorf("sda labels after the fast wipe: %+v; want the copy at 1 GiB (Talos's blind spot)", ls)
	}
}

// A re-run after Rook: formula's sda carries OSD 3 in a real API server,
// so its label is Ceph's own and the check goes on; with the OSD on
// another node it stops.
func TestUpDiskCheckRookOSD(t *testing.T) {
	env := kubetest.Start(t)
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	l := newDisksLab(t)
	eps := map[string]string{"formula": l.addr}
	makeRookOSD(t, cs, "1", "urban", "/dev/sda")
	if _, _, err := upDiskRun(t, l, eps, []string{"formula"}, rookOSDs(cs)); err == nil || !strings.Contains(err.Error(), "wipe formula --serial WD-OLD-1") {
		t.Fatalf("another node's OSD: err = %v, want the stop on sda", err)
	}
	makeRookOSD(t, cs, "3", "formula", "/dev/sda")
	c, out, err := upDiskRun(t, l, eps, []string{"formula"}, rookOSDs(cs))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(c.ops, "apply rook-ceph") || !strings.Contains(out, "sda Rook's (OSD 3 (rook-ceph-osd-3) uses /dev/sda)") {
		t.Errorf("ops %q", c.ops)
	}
}
