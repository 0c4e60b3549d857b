package upgrade

import (
	"context"
	"errors"
	"fmt"
	"io"

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
// talosconfig.
type TalosAPI struct {
	c *client.Client
}

// NewTalosAPI connects to the talosconfig's endpoints (or the given ones).
// The connection is lazy: errors show on the first call.
func NewTalosAPI(ctx context.Context, cfg *clientconfig.Config, endpoints ...string) (*TalosAPI, error) {
	opts := []client.OptionFunc{client.WithConfig(cfg)}
	if len(endpoints) > 0 {
		opts = append(opts, client.WithEndpoints(endpoints...))
	}
	c, err := client.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("Talos API client: %w", err)
	}
	return &TalosAPI{c: c}, nil
}

// Close closes the connection.
func (t *TalosAPI) Close() error { return t.c.Close() }

// Version implements Talos.
func (t *TalosAPI) Version(ctx context.Context, node string) (string, error) {
	resp, err := t.c.Version(client.WithNode(ctx, node))
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
	resp, err := t.c.EtcdMemberList(client.WithNode(ctx, node), &machine.EtcdMemberListRequest{})
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
	resp, err := t.c.EtcdStatus(client.WithNode(ctx, node))
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
	nctx := client.WithNode(ctx, node)
	err := t.lifecycleUpgrade(nctx, image)
	if status.Code(err) == codes.Unimplemented { // status.Code looks through %w
		//lint:ignore SA1019 the legacy API is what Talos < v1.13 serves
		_, lerr := t.c.UpgradeWithOptions(nctx, client.WithUpgradeImage(image), client.WithUpgradeRebootMode(machine.UpgradeRequest_DEFAULT))
		if lerr != nil {
			return fmt.Errorf("upgrade %s to %s (legacy API, the node is older than Talos v1.13): %w", node, image, lerr)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("upgrade %s to %s: %w", node, image, err)
	}
	if err := t.c.Reboot(nctx); err != nil {
		return fmt.Errorf("upgrade %s: installed %s, but the reboot was refused: %w", node, image, err)
	}
	return nil
}

func (t *TalosAPI) lifecycleUpgrade(ctx context.Context, image string) error {
	pull, err := t.c.ImageClient.Pull(ctx, &machine.ImageServicePullRequest{Containerd: systemContainerd, ImageRef: image})
	if err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	if err := drainStream(pull.Recv); err != nil {
		return fmt.Errorf("pull %s: %w", image, err)
	}
	up, err := t.c.LifecycleClient.Upgrade(ctx, &machine.LifecycleServiceUpgradeRequest{
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
