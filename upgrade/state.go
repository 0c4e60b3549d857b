package upgrade

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// StateFile is the name, in the state directory, of the upgrade's record.
const StateFile = "upgrade.json"

// Phase is the last step a node has finished.
type Phase string

// The phases of a node, in order. A node goes pending → cordoned → drained
// → upgrading (the upgrade was requested and accepted) → upgraded (runs the
// target version and is Ready) → uncordoned → done (Ceph HEALTH_OK again).
const (
	Pending    Phase = "pending"
	Cordoned   Phase = "cordoned"
	Drained    Phase = "drained"
	Upgrading  Phase = "upgrading"
	Upgraded   Phase = "upgraded"
	Uncordoned Phase = "uncordoned"
	Done       Phase = "done"
)

var phaseOrder = []Phase{Pending, Cordoned, Drained, Upgrading, Upgraded, Uncordoned, Done}

func (p Phase) index() int {
	for i, q := range phaseOrder {
		if q == p {
			return i
		}
	}
	return -1
}

// Steps: what is started from each phase (NodeState.Step while it runs).
const (
	StepGates    = "gates"    // from pending: the gates before the node
	StepCordon   = "cordon"   // pending → cordoned
	StepDrain    = "drain"    // cordoned → drained
	StepUpgrade  = "upgrade"  // drained → upgrading
	StepWait     = "wait"     // upgrading → upgraded
	StepUncordon = "uncordon" // upgraded → uncordoned
	StepSettle   = "settle"   // uncordoned → done: the gates after the node
)

// State is the content of upgrade.json.
type State struct {
	// Target is the version being rolled out.
	Target string      `json:"target"`
	Nodes  []NodeState `json:"nodes"`
	// Failed says where the last run stopped on a failed gate or step.
	Failed  *Failure  `json:"failed,omitempty"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
}

// NodeState is one node's progress.
type NodeState struct {
	Name      string `json:"name"`
	Installer string `json:"installer"`
	// From is the version the node reported before its upgrade.
	From  string `json:"from,omitempty"`
	Phase Phase  `json:"phase"`
	// Step is the step started from Phase and not finished yet.
	Step string `json:"step,omitempty"`
	// Requested is when the Talos API accepted the upgrade request.
	Requested *time.Time `json:"requested,omitempty"`
	// Skipped: the node ran the target version already.
	Skipped bool `json:"skipped,omitempty"`
}

// Failure is where and why a run stopped.
type Failure struct {
	Node string    `json:"node"`
	Step string    `json:"step"`
	Gate string    `json:"gate,omitempty"`
	Why  string    `json:"why"`
	Time time.Time `json:"time"`
}

// ParseState decodes and checks upgrade.json.
func ParseState(data []byte) (*State, error) {
	var s State
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("parse JSON: %w", err)
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON document")
	}
	if _, err := ParseVersion(s.Target); err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	if len(s.Nodes) == 0 {
		return nil, errors.New("no nodes")
	}
	seen := map[string]bool{}
	for i, n := range s.Nodes {
		switch {
		case n.Name == "":
			return nil, fmt.Errorf("node %d has no name", i)
		case seen[n.Name]:
			return nil, fmt.Errorf("node %s is listed twice", n.Name)
		case n.Phase.index() < 0:
			return nil, fmt.Errorf("node %s: unknown phase %q", n.Name, n.Phase)
		}
		seen[n.Name] = true
	}
	return &s, nil
}

// ReadState reads <stateDir>/upgrade.json; a missing file is (nil, nil).
func ReadState(stateDir string) (*State, error) { return LoadState(DirStore(stateDir)) }

// writeState replaces <stateDir>/upgrade.json atomically.
func writeState(stateDir string, s *State) error { return saveState(DirStore(stateDir), s) }

// saveState encodes s into st.
func saveState(st StateStore, s *State) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode upgrade state: %w", err)
	}
	return st.WriteState(append(data, '\n'))
}

// Finished reports whether every node is done.
func (s *State) Finished() bool {
	for _, n := range s.Nodes {
		if n.Phase != Done {
			return false
		}
	}
	return true
}

func (s *State) node(name string) *NodeState {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i]
		}
	}
	return nil
}
