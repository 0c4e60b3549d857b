// Package upgrade rolls a Talos upgrade through the rack one node at a
// time, control planes first, behind health gates: etcd healthy with every
// member, Ceph HEALTH_OK, CockroachDB live with no under-replicated ranges,
// every node Ready. Each node is cordoned, drained through the Eviction API
// (disruption budgets respected), upgraded through the Talos API, awaited at
// its new version and Ready, uncordoned, and Ceph must be HEALTH_OK again
// before the next node. Progress is kept in <state>/upgrade.json, written
// atomically before each step starts and after it is done, so a run that
// stops (a failed gate, Ctrl-C, kill -9) goes on with Resume.
//
// It knows nothing of the rack file: cmd/rackboot turns the rack into
// Machines and builds the gates.
package upgrade

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Version is a Talos release version, vMAJOR.MINOR.PATCH with an optional
// pre-release (v1.13.0-beta.1).
type Version struct {
	Major, Minor, Patch int
	Pre                 string
}

// ParseVersion parses "v1.13.1" (the leading v is required, as Talos tags
// and installer image tags have it).
func ParseVersion(s string) (Version, error) {
	bad := func(why string) (Version, error) {
		return Version{}, fmt.Errorf("%q is not a Talos version like v1.13.1: %s", s, why)
	}
	rest, ok := strings.CutPrefix(s, "v")
	if !ok {
		return bad("it must start with v")
	}
	core, pre, hasPre := strings.Cut(rest, "-")
	if hasPre {
		if pre == "" {
			return bad("empty pre-release after -")
		}
		for _, id := range strings.Split(pre, ".") {
			if id == "" {
				return bad("empty pre-release part")
			}
			for _, c := range id {
				if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-') {
					return bad(fmt.Sprintf("pre-release %q has a character other than letters, digits, - and .", pre))
				}
			}
		}
	}
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return bad("it needs three numbers: major.minor.patch")
	}
	var n [3]int
	for i, p := range parts {
		if p == "" || (len(p) > 1 && p[0] == '0') {
			return bad(fmt.Sprintf("%q is not a number without leading zeros", p))
		}
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 || v > 1<<20 {
			return bad(fmt.Sprintf("%q is not a number", p))
		}
		n[i] = v
	}
	return Version{Major: n[0], Minor: n[1], Patch: n[2], Pre: pre}, nil
}

// String is the version as Talos writes it: v1.13.1.
func (v Version) String() string {
	s := fmt.Sprintf("v%d.%d.%d", v.Major, v.Minor, v.Patch)
	if v.Pre != "" {
		s += "-" + v.Pre
	}
	return s
}

// Compare orders versions as semver does: -1, 0 or +1. A pre-release is
// before its release; pre-release parts compare numerically when both are
// numbers, else as text.
func (v Version) Compare(o Version) int {
	for _, d := range [3]int{v.Major - o.Major, v.Minor - o.Minor, v.Patch - o.Patch} {
		if d != 0 {
			return sign(d)
		}
	}
	switch {
	case v.Pre == o.Pre:
		return 0
	case v.Pre == "":
		return 1
	case o.Pre == "":
		return -1
	}
	a, b := strings.Split(v.Pre, "."), strings.Split(o.Pre, ".")
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] == b[i] {
			continue
		}
		x, errx := strconv.Atoi(a[i])
		y, erry := strconv.Atoi(b[i])
		switch {
		case errx == nil && erry == nil:
			return sign(x - y)
		case errx == nil:
			return -1
		case erry == nil:
			return 1
		default:
			return sign(strings.Compare(a[i], b[i]))
		}
	}
	return sign(len(a) - len(b))
}

func sign(d int) int {
	switch {
	case d < 0:
		return -1
	case d > 0:
		return 1
	}
	return 0
}

// Machine is one node of the rack, as the upgrade needs it.
type Machine struct {
	// Name is the machine's name in the rack file and its Kubernetes node
	// name.
	Name         string
	ControlPlane bool
	// Address is where its Talos API answers (the static address); empty:
	// the Node's InternalIP, read when needed.
	Address string
	// Installer is the installer image at the target version (the rack's
	// Image Factory installer for the machine's schematic).
	Installer string
}

// Node is one node in a plan.
type Node struct {
	Machine
	// Current is the version the node's Talos API reported, "" when it did
	// not answer (the run asks again).
	Current string
	// Why is why Current is empty (the error), for the printed plan.
	Why string
	// Skip: the node runs the target version already.
	Skip bool
}

// Plan is the order of the upgrade: control planes first in rack file
// order, then workers in rack file order.
type Plan struct {
	Target Version
	Nodes  []Node
	// Downgrades names the nodes whose current version is newer than the
	// target.
	Downgrades []string
}

// ErrDowngrade is wrapped by Check when the plan would downgrade a node.
var ErrDowngrade = errors.New("downgrade")

// MakePlan orders machines (control planes first, each group in the given
// order) and marks those already at target. current maps a node name to
// the version its Talos API reports; a node missing from it has Current ""
// and is not skipped. A current version that does not parse is an error.
func MakePlan(machines []Machine, current map[string]string, target Version) (Plan, error) {
	p := Plan{Target: target}
	seen := map[string]bool{}
	for _, cp := range []bool{true, false} {
		for _, m := range machines {
			if m.ControlPlane != cp {
				continue
			}
			if m.Name == "" {
				return Plan{}, errors.New("plan: a machine has no name")
			}
			if seen[m.Name] {
				return Plan{}, fmt.Errorf("plan: machine %s is listed twice", m.Name)
			}
			seen[m.Name] = true
			n := Node{Machine: m, Current: current[m.Name]}
			if n.Current != "" {
				v, err := ParseVersion(n.Current)
				if err != nil {
					return Plan{}, fmt.Errorf("plan: node %s reports version %w", m.Name, err)
				}
				switch v.Compare(target) {
				case 0:
					n.Skip = true
				case 1:
					p.Downgrades = append(p.Downgrades, m.Name)
				}
			}
			p.Nodes = append(p.Nodes, n)
		}
	}
	return p, nil
}

// Check refuses a plan that downgrades a node unless allowDowngrade.
func (p Plan) Check(allowDowngrade bool) error {
	if len(p.Downgrades) == 0 || allowDowngrade {
		return nil
	}
	return fmt.Errorf("%w: %s run a Talos newer than %s; a downgrade is refused unless --allow-downgrade is given (check Talos's release notes: not every downgrade is supported)",
		ErrDowngrade, strings.Join(p.Downgrades, ", "), p.Target)
}

// ControlPlanes names the plan's control planes (skipped ones too).
func (p Plan) ControlPlanes() []string {
	var out []string
	for _, n := range p.Nodes {
		if n.ControlPlane {
			out = append(out, n.Name)
		}
	}
	return out
}
