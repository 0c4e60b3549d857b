package upgrade

import (
	"fmt"
	"io"
	"strings"
)

// WritePlan prints the plan and the gates' current state, as `rackboot
// upgrade --dry-run` shows them. It changes nothing.
func WritePlan(w io.Writer, p Plan, gates []GateResult) error {
	var b strings.Builder
	todo := 0
	for _, n := range p.Nodes {
		if !n.Skip {
			todo++
		}
	}
	fmt.Fprintf(&b, "upgrade to Talos %s: %d of %d node(s) to upgrade, one at a time, control planes first\n", p.Target, todo, len(p.Nodes))
	for i, n := range p.Nodes {
		role := "worker"
		if n.ControlPlane {
			role = "control plane"
		}
		cur := n.Current
		if cur == "" {
			cur = "version unknown"
			if n.Why != "" {
				cur += " (" + n.Why + ")"
			}
		}
		action := "upgrade with " + n.Installer
		if n.Skip {
			action = "skip: runs the target already"
		}
		fmt.Fprintf(&b, "  %d. %-14s %-13s %s: %s\n", i+1, n.Name, role, cur, action)
	}
	if len(p.Downgrades) > 0 {
		fmt.Fprintf(&b, "downgrade: %s run a newer Talos (refused without --allow-downgrade)\n", strings.Join(p.Downgrades, ", "))
	}
	if cps := len(p.ControlPlanes()); cps == 2 {
		b.WriteString("warning: with 2 control planes etcd loses its majority while either reboots: the Kubernetes API stops until it is back (3 control planes avoid this)\n")
	}
	fmt.Fprintf(&b, "each node: gates, cordon, drain (evictions respect disruption budgets), upgrade, wait for %s and Ready, uncordon, Ceph HEALTH_OK again\n", p.Target)
	if len(gates) == 0 {
		b.WriteString("gates: none\n")
	} else {
		b.WriteString("gates now:\n")
	}
	for _, g := range gates {
		if g.OK {
			fmt.Fprintf(&b, "  ok       %s\n", g.Gate)
		} else {
			fmt.Fprintf(&b, "  NOT OK   %s: %s\n", g.Gate, g.Why)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
