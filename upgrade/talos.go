package upgrade

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Talos is what the upgrade asks of the nodes' Talos API. node is the
// address of the node the call is about (apid routes it from the
// endpoint).
type Talos interface {
	// Version is the node's running Talos version tag (v1.13.0).
	Version(ctx context.Context, node string) (string, error)
	// EtcdMembers lists the etcd members as node sees them.
	EtcdMembers(ctx context.Context, node string) ([]EtcdMember, error)
	// EtcdStatus is node's own etcd member status.
	EtcdStatus(ctx context.Context, node string) (EtcdStatus, error)
	// Upgrade installs image on node and reboots it into it. It returns
	// once the node accepted (the reboot follows).
	Upgrade(ctx context.Context, node, image string) error
}

// EtcdMember is one member of the etcd cluster.
type EtcdMember struct {
	ID       uint64
	Hostname string
	Learner  bool
}

// EtcdStatus is one member's view of itself.
type EtcdStatus struct {
	MemberID uint64
	Leader   uint64
	Learner  bool
	Errors   []string
}

// TalosAPI implements Talos with machinery's client over the rack's admin
// talosconfig. By default each node is asked at its own address (its own
// apid, as `talosctl -e NODE -n NODE`; rackboot's disks and machine
// remove do the same): no call depends on a control plane's apid proxying
// it, and the lab's stand-in, which does not proxy, answers for itself.
// Given endpoints (a tunnel), every call goes through them with the node
// in the call's metadata (apid routes it).
type TalosAPI struct {
	ctx    context.Context
	cfg    *clientconfig.Config
	shared *client.Client // the given endpoints; nil: one client per node

	mu    sync.Mutex
	nodes map[string]*client.Client
}

// NewTalosAPI makes the client (the given endpoints, else each node's own
// address). Connections are lazy: errors show on the first call.
func NewTalosAPI(ctx context.Context, cfg *clientconfig.Config, endpoints ...string) (*TalosAPI, error) {
	t := &TalosAPI{ctx: ctx, cfg: cfg, nodes: map[string]*client.Client{}}
	if len(endpoints) > 0 {
		c, err := client.New(ctx, client.WithConfig(cfg), client.WithEndpoints(endpoints...))
		if err != nil {
			return nil, fmt.Errorf("Talos API client: %w", err)
		}
		t.shared = c
	}
	return t, nil
}

// client is the client that reaches node and the context to call it with.
func (t *TalosAPI) client(ctx context.Context, node string) (*client.Client, context.Context, error) {
	if t.shared != nil {
		return t.shared, client.WithNode(ctx, node), nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if c := t.nodes[node]; c != nil {
		return c, ctx, nil
	}
	c, err := client.New(t.ctx, client.WithConfig(t.cfg), client.WithEndpoints(node))
	if err != nil {
		return nil, nil, fmt.Errorf("Talos API client for %s: %w", node, err)
	}
	t.nodes[node] = c
	return c, ctx, nil
}

// Close closes the connections.
func (t *TalosAPI) Close() error {
	var errs []error
	if t.shared != nil {
		errs = append(errs, t.shared.Close())
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for node, c := range t.nodes {
		errs = append(errs, c.Close())
		delete(t.nodes, node)
	}
	return errors.Join(errs...)
}

// Version implements Talos.
func (t *TalosAPI) Version(ctx context.Context, node string) (string, error) {
	c, ctx, err := t.client(ctx, node)
	if err != nil {
		return "", err
	}
	resp, err := c.Version(ctx)
	if err != nil {
		return "", fmt.Errorf("Talos version of %s: %w", node, err)
	}
	for _, m := range resp.GetMessages() {
		if tag := m.GetVersion().GetTag(); tag != "" {
			return tag, nil
		}
	}
	return "", fmt.Errorf("Talos version of %s: the answer has no version", node)
}

// EtcdMembers implements Talos.
func (t *TalosAPI) EtcdMembers(ctx context.Context, node string) ([]EtcdMember, error) {
	c, ctx, err := t.client(ctx, node)
	if err != nil {
		return nil, err
	}
	resp, err := c.EtcdMemberList(ctx, &machine.EtcdMemberListRequest{})
	if err != nil {
		return nil, fmt.Errorf("etcd members from %s: %w", node, err)
	}
	var out []EtcdMember
	for _, m := range resp.GetMessages() {
		for _, e := range m.GetMembers() {
			out = append(out, EtcdMember{ID: e.GetId(), Hostname: e.GetHostname(), Learner: e.GetIsLearner()})
		}
	}
	return out, nil
}

// EtcdStatus implements Talos.
func (t *TalosAPI) EtcdStatus(ctx context.Context, node string) (EtcdStatus, error) {
	c, ctx, err := t.client(ctx, node)
	if err != nil {
		return EtcdStatus{}, err
	}
	resp, err := c.EtcdStatus(ctx)
	if err != nil {
		return EtcdStatus{}, fmt.Errorf("etcd status of %s: %w", node, err)
	}
	for _, m := range resp.GetMessages() {
		if s := m.GetMemberStatus(); s != nil {
			return EtcdStatus{MemberID: s.GetMemberId(), Leader: s.GetLeader(), Learner: s.GetIsLearner(), Errors: s.GetErrors()}, nil
		}
	}
	return EtcdStatus{}, fmt.Errorf("etcd status of %s: the answer has no member status", node)
}

// systemContainerd is where the upgrade image is pulled: talosctl v1.13's
// `upgrade` default (--namespace system: CRI driver, system namespace).
var systemContainerd = &common.ContainerdInstance{Driver: common.ContainerDriver_CRI, Namespace: common.ContainerdNamespace_NS_SYSTEM}

// Upgrade implements Talos the way talosctl v1.13 does
// (cmd/talosctl/cmd/talos/upgrade.go, upgradeViaLifecycleService): pull the
// installer through ImageService.Pull, install it with the streaming
// LifecycleService.Upgrade until its exit code, then Reboot. A node whose
// apid answers Unimplemented (Talos before v1.13) gets the legacy
// MachineService.Upgrade, which reboots by itself.
func (t *TalosAPI) Upgrade(ctx context.Context, node, image string) error {
	c, nctx, err := t.client(ctx, node)
	if err != nil {
		return err
	}
	err = lifecycleUpgrade(nctx, c, image)
	if status.Code(err) == codes.Unimplemented { // status.Code looks through %w
		//lint:ignore SA1019 the legacy API is what Talos < v1.13 serves
		_, lerr := c.UpgradeWithOptions(nctx, client.WithUpgradeImage(image), client.WithUpgradeRebootMode(machine.UpgradeRequest_DEFAULT))
		if lerr != nil {
			return fmt.Errorf("upgrade %s to %s (legacy API, the node is older than Talos v1.13): %w", node, image, lerr)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("upgrade %s to %s: %w", node, image, err)
	}
	if err := c.Reboot(nctx); err != nil {
		return fmt.Errorf("upgrade %s: installed %s, but the reboot was refused: %w", node, image, err)
	}
	return nil
}

func lifecycleUpgrade(ctx context.Context, c *client.Client, image string) error {
	pull, err := c.ImageClient.Pull(ctx, &machine.ImageServicePullRequest{Containerd: systemContainerd, ImageRef: image})
	if err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	if err := drainStream(pull.Recv); err != nil {
		return fmt.Errorf("pull %s: %w", image, err)
	}
	up, err := c.LifecycleClient.Upgrade(ctx, &machine.LifecycleServiceUpgradeRequest{
		Containerd: systemContainerd,
		Source:     &machine.InstallArtifactsSource{ImageName: image},
	})
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	exit := int32(-1)
	last := ""
	for {
		resp, err := up.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("install: %w", err)
		}
		switch r := resp.GetProgress().GetResponse().(type) {
		case *machine.LifecycleServiceInstallProgress_Message:
			last = r.Message
		case *machine.LifecycleServiceInstallProgress_ExitCode:
			exit = r.ExitCode
		}
	}
	switch exit {
	case 0:
		return nil
	case -1:
		return fmt.Errorf("install: the stream ended without an exit code (last message %q)", last)
	default:
		return fmt.Errorf("install: the installer exited with code %d (last message %q)", exit, last)
	}
}

func drainStream[T any](recv func() (T, error)) error {
	for {
		_, err := recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
