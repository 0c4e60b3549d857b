package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/rackedit"
	"github.com/dotfile/rackboot/upgrade"
)

// removeFlags are `rackboot machine remove`'s flags.
type removeFlags struct {
	yes, dead, keepRack bool
	kubeconfig          string
	nodes               []string
	timeout             time.Duration
	drainTimeout        time.Duration
	etcdWait            time.Duration
}

// newRemoveCmd is `rackboot machine remove NAME`.
func newRemoveCmd(a *app) *cobra.Command {
	f := &removeFlags{}
	cmd := &cobra.Command{
		Use:   "remove NAME",
		Short: "Take a machine out of the cluster and the rack file (drain, etcd, Talos reset of its system disk)",
		Long: "Takes machine NAME out, one step after the other, each printed:\n" +
			"  1. cordon and drain its Kubernetes node (evictions: disruption budgets are respected);\n" +
			"  2. reset Talos on it, system disk only (the STATE and EPHEMERAL partitions; other disks\n" +
			"     are not touched), gracefully: a control plane leaves etcd itself; the machine then\n" +
			"     powers off;\n" +
			"  3. for a control plane, check from another control plane that its etcd member is gone,\n" +
			"     and remove it there when it is not;\n" +
			"  4. delete its Kubernetes Node;\n" +
			"  5. drop it from the rack file (comments and layout kept), and a running rackboot serve\n" +
			"     reloads the rack.\n" +
			"Before anything changes it refuses: the last control plane; a machine with a Rook OSD (Ceph\n" +
			"must take its OSDs out first: the command prints Rook's steps). It warns when etcd keeps two\n" +
			"members or fewer. --dead is for a machine that does not answer: its pods are still evicted,\n" +
			"the reset is skipped, its etcd member is removed through another control plane.\n" +
			"Every step checks whether it is already done: after a failure, run the same command again.\n" +
			"Replacing a dead server: remove it with --dead, then adopt the new one (see the README).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRemove(cmd, a, f, args[0])
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.yes, "yes", false, "do not ask for the machine's name before changing anything")
	fl.BoolVar(&f.dead, "dead", false, "the machine is dead or gone: skip what needs it (the reset); its etcd member is removed through another control plane")
	fl.BoolVar(&f.keepRack, "keep-rack", false, "leave the machine in the rack file (to reinstall it later)")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: kubeconfig in the state directory, else $KUBECONFIG)")
	fl.StringArrayVar(&f.nodes, "node", nil, "reach machine NAME's Talos API at HOST[:PORT] instead of its rack address: NAME=HOST[:PORT] (repeatable; needed for machines on DHCP without a Node)")
	fl.DurationVar(&f.timeout, "timeout", 15*time.Second, "how long to wait for each Talos API call")
	fl.DurationVar(&f.drainTimeout, "drain-timeout", upgrade.DefaultDrainTimeout, "how long the node's pods may take to leave (budgets that refuse are retried until then; with --dead the default is 2m)")
	fl.DurationVar(&f.etcdWait, "etcd-leave-timeout", 5*time.Minute, "how long a reset control plane may take to leave etcd by itself before its member is removed through another control plane")
	return cmd
}

// deadDrainTimeout bounds the drain of a dead machine unless
// --drain-timeout is given: the evictions are accepted at once, but its
// kubelet never confirms the pods' end, so they stay terminating until the
// Node is deleted (step 4); the wait only lets disruption budgets that
// refuse at first allow the evictions.
const deadDrainTimeout = 2 * time.Minute

// removePlan is what the preflight found; nothing has changed yet.
type removePlan struct {
	name         string
	machine      *profiles.Machine // nil: not in the rack file (an earlier run dropped it)
	controlPlane bool
	nodeExists   bool
	addr         string // the machine's Talos API; "" when unknown
	// survivor is another control plane's Talos API that answered the
	// etcd member list; member is NAME's member there (0: none).
	survivor, survivorName string
	member                 uint64
	members                int
	warnings               []string
}

// etcdWarnings says what removing one of n etcd members costs (etcd's
// quorum is n/2+1 of the members it has).
func etcdWarnings(name string, n int, dead bool) []string {
	var w []string
	switch {
	case n == 2:
		w = append(w, fmt.Sprintf("etcd has 2 members: removing %s needs both up (quorum 2 of 2)", name))
		if dead {
			w = append(w, fmt.Sprintf("%s is dead, so the other member has no quorum and cannot remove it: recover etcd with Talos's disaster recovery\n"+
				"  (talosctl etcd snapshot from the survivor if it still answers, then talosctl bootstrap --recover-from=SNAPSHOT), then run this again", name))
		}
		w = append(w, "etcd then has 1 member: it survives no failure; adopt another control plane soon")
	case n == 3:
		w = append(w, "etcd goes from 3 members to 2: it then survives no failure (quorum 2 of 2); adopt another control plane soon")
	}
	return w
}

// rookSteps is what to do before a machine with Rook OSDs can go: Rook
// v1.18's "Remove an OSD" (Documentation/Storage-Configuration/Advanced/
// ceph-osd-mgmt.md), one OSD at a time.
func rookSteps(name string, osds []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s runs Rook OSD(s) %s: Ceph must take them out first (Rook's \"Remove an OSD\"), one at a time:\n", name, strings.Join(osds, ", "))
	b.WriteString("  1. kubectl -n rook-ceph scale deployment rook-ceph-operator --replicas=0\n")
	b.WriteString("  2. for each OSD ID: kubectl -n rook-ceph scale deployment rook-ceph-osd-<ID> --replicas=0\n")
	b.WriteString("     and in the toolbox: ceph osd down osd.<ID>; ceph osd out osd.<ID>\n")
	b.WriteString("  3. wait until `ceph status` shows every PG active+clean (the data moved to other OSDs);\n")
	b.WriteString("     `ceph osd safe-to-destroy osd.<ID>` says when it is safe\n")
	b.WriteString("  4. ceph osd purge <ID> --yes-i-really-mean-it   (or: kubectl rook-ceph rook purge-osd <ID>)\n")
	b.WriteString("  5. kubectl -n rook-ceph delete deployment rook-ceph-osd-<ID>\n")
	fmt.Fprintf(&b, "  6. drop %s from the CephCluster's nodes (rackboot's rook bundle follows the rack file on the next\n", name)
	b.WriteString("     `rackboot bundles apply`), then kubectl -n rook-ceph scale deployment rook-ceph-operator --replicas=1\n")
	fmt.Fprintf(&b, "then run this command again.")
	return b.String()
}

// nodeOSDs are the Rook OSD deployments that run on node.
func nodeOSDs(deps []appsv1.Deployment, node string) []string {
	var out []string
	for _, d := range deps {
		if osdNode(d) != node {
			continue
		}
		if id := d.Labels["ceph-osd-id"]; id != "" {
			out = append(out, id+" ("+d.Name+")")
		} else {
			out = append(out, d.Name)
		}
	}
	slices.Sort(out)
	return out
}

func runRemove(cmd *cobra.Command, a *app, f *removeFlags, name string) error {
	out := cmd.OutOrStdout()
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	path := a.rackPath
	src, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read the rack file: %w", err)
	}
	r, err := profiles.Load(path, src)
	if err != nil {
		return err
	}
	nodes := f.nodes
	if r.Machine(name) == nil {
		// Run again after the rack file lost NAME: its --node is moot.
		nodes = slices.DeleteFunc(slices.Clone(nodes), func(n string) bool { return strings.HasPrefix(n, name+"=") })
	}
	eps, err := machineEndpoints(r, nodes)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	tc, err := adminTalosconfig(a, r)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	restCfg, _, err := a.restConfig(f.kubeconfig)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("removing a machine drains it and deletes its Node: %w", err)}
	}
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}

	p, err := removePreflight(ctx, r, cs, tc, eps, f, name)
	if err != nil {
		return &exitError{code: 1, err: err}
	}
	if p.machine == nil && !p.nodeExists && p.member == 0 {
		fmt.Fprintf(out, "%s is not in %s, has no Kubernetes Node and no etcd member: it was removed already, nothing to do\n", name, path)
		return nil
	}
	for _, w := range p.warnings {
		fmt.Fprintln(out, "warning:", w)
	}
	if !f.yes {
		fmt.Fprintf(out, "remove %s from the cluster", name)
		if p.machine != nil && !f.dead {
			fmt.Fprint(out, " and reset Talos on its system disk")
		}
		fmt.Fprint(out, "? Type the machine's name to go on: ")
		line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
		if strings.TrimSpace(line) != name {
			return &exitError{code: 1, err: errors.New("not confirmed: nothing was changed")}
		}
	}
	step := func(n int, format string, args ...any) {
		fmt.Fprintf(out, "[%d/5] %s\n", n, fmt.Sprintf(format, args...))
	}

	// 1. Cordon and drain.
	if !p.nodeExists {
		step(1, "drain: %s has no Kubernetes Node: nothing to drain", name)
	} else {
		step(1, "cordon and drain %s", name)
		if err := upgrade.Cordon(ctx, cs, name, true); err != nil {
			return &exitError{code: 1, err: err}
		}
		timeout := f.drainTimeout
		if f.dead && !cmd.Flags().Changed("drain-timeout") {
			timeout = deadDrainTimeout
		}
		res, err := upgrade.Drain(ctx, cs, name, upgrade.DrainOptions{
			Timeout:  timeout,
			Progress: func(msg string) { fmt.Fprintln(out, "  "+msg) },
		})
		switch {
		case err == nil:
		case f.dead && errors.Is(err, upgrade.ErrDrainTimeout):
			// A dead kubelet never confirms a pod's end: those pods go
			// with the Node object (Kubernetes's pod garbage collector
			// deletes pods bound to a node that no longer exists).
			fmt.Fprintf(out, "  %v\n  %s is dead: its pods still terminating go when its Node is deleted (step 4)\n", err, name)
		default:
			return &exitError{code: 1, err: fmt.Errorf("%w\nnothing else was changed; %s stays cordoned: run this command again once the pods can go", err, name)}
		}
		fmt.Fprintf(out, "  drained: %d pod(s) evicted, %d left alone (DaemonSet or static pods)\n", len(res.Evicted), len(res.Skipped))
	}

	// 2. Reset (a control plane leaves etcd as part of a graceful reset).
	resetSent := false
	switch {
	case f.dead:
		step(2, "reset: skipped (--dead)")
	case p.machine == nil:
		step(2, "reset: %s is not in the rack file any more: skipped (an earlier run reset it)", name)
	case p.addr == "":
		return &exitError{code: 1, err: fmt.Errorf("%s is on DHCP and has no Node to find its address in: give it with --node %s=IP, or --dead if it is gone", name, name)}
	default:
		done, err := resetMachine(ctx, tc, p.addr, f.timeout, p.nodeExists)
		switch {
		case err != nil:
			return &exitError{code: 1, err: fmt.Errorf("reset %s: %w\nif %s is dead, run this again with --dead", name, err, name)}
		case done:
			step(2, "reset: %s does not answer at %s and has no Node: an earlier run reset it (or it is off)", name, p.addr)
		default:
			resetSent = true
			step(2, "reset: Talos on %s wipes STATE and EPHEMERAL of its system disk and powers off (graceful: it leaves etcd first when a control plane)", name)
		}
	}

	// 3. etcd.
	switch {
	case p.survivor == "":
		step(3, "etcd: %s is not a control plane: nothing to do", name)
	case p.member == 0:
		step(3, "etcd: %s has no etcd member (asked %s): nothing to do", name, p.survivorName)
	default:
		wait := time.Duration(0)
		if resetSent && p.controlPlane {
			wait = f.etcdWait
		}
		msg, err := ensureEtcdGone(ctx, tc, p.survivor, p.member, wait, f.timeout)
		if err != nil {
			return &exitError{code: 1, err: fmt.Errorf("etcd: remove %s's member %x through %s: %w", name, p.member, p.survivorName, err)}
		}
		step(3, "etcd: %s's member %x %s (asked %s)", name, p.member, msg, p.survivorName)
	}

	// 4. The Node object.
	if !p.nodeExists {
		step(4, "Node: %s has no Kubernetes Node: nothing to delete", name)
	} else {
		err := cs.CoreV1().Nodes().Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return &exitError{code: 1, err: fmt.Errorf("delete node %s: %w", name, err)}
		}
		step(4, "Node: deleted %s", name)
	}

	// 5. The rack file, and rackboot's "installed" mark: a machine put in
	// again under this name (a replacement, or --keep-rack) must install,
	// not be sent to its disk.
	if p.machine != nil {
		err := changeMachine(ctx, a.StateDir(), "/machines/"+name+"/reinstall",
			func(st *inventory.Store) error { return st.Reset(name) })
		switch {
		case err == nil:
			fmt.Fprintf(out, "  rackboot forgot that %s is installed: a machine netbooting under this name installs Talos\n", name)
		case errors.Is(err, inventory.ErrUnknownMachine):
		default:
			return &exitError{code: 1, err: fmt.Errorf("clear %s's installed mark: %w", name, err)}
		}
	}
	switch {
	case p.machine == nil:
		step(5, "rack file: %s is not in %s any more: nothing to do", name, path)
		return nil
	case f.keepRack:
		step(5, "rack file: %s stays in %s (--keep-rack): it installs again at its next network boot", name, path)
		return nil
	}
	text, err := rackedit.RemoveMachine(src, name)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("%s: %w", path, err)}
	}
	if err := writeRack(path, src, text); err != nil {
		return &exitError{code: 1, err: err}
	}
	step(5, "rack file: dropped %s from %s", name, path)
	reportServeReload(ctx, a.StateDir(), out, "it no longer serves "+name, "the next one reads the new rack file")
	return nil
}

// removePreflight checks everything before anything changes.
func removePreflight(ctx context.Context, r *profiles.Rack, cs kubernetes.Interface, tc *clientconfig.Config, eps map[string]string, f *removeFlags, name string) (*removePlan, error) {
	p := &removePlan{name: name, machine: r.Machine(name)}
	p.controlPlane = p.machine != nil && p.machine.Role == profiles.RoleControlPlane

	// Kubernetes: the Node, and Rook's OSDs on it.
	n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
		p.nodeExists = true
	case apierrors.IsNotFound(err):
	default:
		return nil, fmt.Errorf("ask Kubernetes for node %s: %w", name, err)
	}
	deps, err := cs.AppsV1().Deployments(rookNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app=rook-ceph-osd"})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("ask Kubernetes for Rook's OSDs (deployments in %s): %w", rookNamespace, err)
	}
	if deps != nil {
		if osds := nodeOSDs(deps.Items, name); len(osds) > 0 {
			return nil, fmt.Errorf("nothing was changed: %s", rookSteps(name, osds))
		}
	}

	// The machine's Talos API.
	p.addr = eps[name]
	if p.addr == "" && p.nodeExists {
		for _, a := range n.Status.Addresses {
			if a.Type == "InternalIP" {
				p.addr = a.Address
				break
			}
		}
	}

	// etcd: the other control planes of the rack (all of them when the
	// machine is no longer in the rack file: its member may be left).
	var others []string
	for i := range r.Machines {
		m := &r.Machines[i]
		if m.Role == profiles.RoleControlPlane && m.Name != name {
			others = append(others, m.Name)
		}
	}
	if p.controlPlane && len(others) == 0 {
		return nil, fmt.Errorf("%s is the rack's last control plane: removing it ends the cluster; adopt another control plane first (nothing was changed)", name)
	}
	if !p.controlPlane && p.machine != nil {
		return p, nil
	}
	var tried []string
	for _, o := range others {
		addr := eps[o]
		if addr == "" {
			tried = append(tried, o+": no address (on DHCP: give it with --node "+o+"=IP)")
			continue
		}
		members, err := etcdMembers(ctx, tc, addr, f.timeout)
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s at %s: %v", o, addr, err))
			continue
		}
		p.survivor, p.survivorName, p.members = addr, o, len(members)
		for _, m := range members {
			if m.GetHostname() == name {
				p.member = m.GetId()
			}
		}
		break
	}
	if p.survivor == "" {
		if !p.controlPlane {
			return p, nil // not in the rack and no control plane answers: nothing known to clean in etcd
		}
		return nil, fmt.Errorf("no other control plane answers its Talos API, so %s's etcd member cannot be checked or removed (nothing was changed):\n  %s",
			name, strings.Join(tried, "\n  "))
	}
	if p.member != 0 {
		if p.members <= 1 {
			return nil, fmt.Errorf("%s is etcd's last member: removing it ends the cluster (nothing was changed)", name)
		}
		p.warnings = etcdWarnings(name, p.members, f.dead)
	}
	return p, nil
}

func etcdMembers(ctx context.Context, tc *clientconfig.Config, addr string, timeout time.Duration) ([]*machine.EtcdMember, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := dialTalos(ctx, tc, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	resp, err := c.EtcdMemberList(ctx, &machine.EtcdMemberListRequest{})
	if err != nil {
		return nil, fmt.Errorf("etcd member list: %w", err)
	}
	var out []*machine.EtcdMember
	for _, m := range resp.GetMessages() {
		out = append(out, m.GetMembers()...)
	}
	return out, nil
}

// resetRequest is `talosctl reset --graceful=true --reboot=false
// --system-labels-to-wipe STATE --system-labels-to-wipe EPHEMERAL` of
// talosctl v1.13 (cmd/talosctl/cmd/talos/reset.go, buildResetRequest), with
// the wipe mode said: SYSTEM_DISK (talosctl's default ALL wipes the same
// when no user disk is named). Graceful cordons, drains and, on a control
// plane, leaves etcd (the Reset sequence's "leave" phase, LeaveEtcd);
// without Reboot the machine powers off.
func resetRequest() *machine.ResetRequest {
	return &machine.ResetRequest{
		Graceful: true,
		Reboot:   false,
		Mode:     machine.ResetRequest_SYSTEM_DISK,
		SystemPartitionsToWipe: []*machine.ResetPartitionSpec{
			{Label: "STATE", Wipe: true},
			{Label: "EPHEMERAL", Wipe: true},
		},
	}
}

// resetMachine sends the reset. A machine that does not answer while its
// Node is already gone was reset by an earlier run (done, no error); one
// that does not answer while its Node exists is an error (it may be dead:
// --dead).
func resetMachine(ctx context.Context, tc *clientconfig.Config, addr string, timeout time.Duration, nodeExists bool) (done bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := dialTalos(ctx, tc, addr)
	if err == nil {
		defer c.Close()
		_, err = c.ResetGenericWithResponse(ctx, resetRequest())
		if err == nil {
			return false, nil
		}
	}
	if !nodeExists && answerless(err) {
		return true, nil
	}
	return false, fmt.Errorf("the Talos API at %s: %w", addr, err)
}

// answerless: the machine's Talos API is not there (off, or back in
// maintenance mode where the admin certificate is not accepted).
func answerless(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return errors.Is(err, context.DeadlineExceeded)
}

// ensureEtcdGone waits up to wait for the member to leave by itself (a
// reset control plane's LeaveEtcd), then removes it by ID through the
// survivor: talosctl's `etcd remove-member`, which its help keeps for a
// member that cannot leave by itself. It says what happened.
func ensureEtcdGone(ctx context.Context, tc *clientconfig.Config, survivor string, id uint64, wait, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		members, err := etcdMembers(ctx, tc, survivor, timeout)
		if err != nil {
			return "", err
		}
		if !slices.ContainsFunc(members, func(m *machine.EtcdMember) bool { return m.GetId() == id }) {
			if wait > 0 {
				return "left etcd (the reset's graceful leave)", nil
			}
			return "is gone already", nil
		}
		if !time.Now().Before(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := dialTalos(rctx, tc, survivor)
	if err != nil {
		return "", err
	}
	defer c.Close()
	err = c.EtcdRemoveMemberByID(rctx, &machine.EtcdRemoveMemberByIDRequest{MemberId: id})
	switch {
	case status.Code(err) == codes.NotFound:
		return "is gone already", nil
	case err != nil:
		return "", err
	}
	if wait > 0 {
		return fmt.Sprintf("was still there after %v: removed", wait), nil
	}
	return "removed", nil
}
