package apid

import (
	"context"
	"fmt"
	"path"

	"github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/cosi-project/runtime/pkg/state/protobuf/server"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/resources/hardware"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// readOnlyState holds the inventory as Talos's resources (block.Disk and
// block.DiscoveredVolume in the runtime namespace, network.LinkStatus,
// hardware.SystemInformation) and their ResourceDefinitions in the meta
// namespace, which talosctl get looks up to resolve "disks",
// "discoveredvolumes", "links", "systeminformation". API clients cannot
// write them; the server replaces a disk's DiscoveredVolumes after it
// wipes the disk, as Talos's discovery controller does after udev's
// change event.
type readOnlyState struct {
	st state.State
}

func newState(ctx context.Context, inv Inventory) (*readOnlyState, error) {
	st := state.WrapCore(namespaced.NewState(inmem.Build))
	var rs []resource.Resource
	for _, def := range []meta.ResourceDefinitionSpec{
		block.DiskExtension{}.ResourceDefinition(),
		block.DiscoveredVolumeExtension{}.ResourceDefinition(),
		network.LinkStatusExtension{}.ResourceDefinition(),
		hardware.SystemInformationExtension{}.ResourceDefinition(),
	} {
		rd, err := meta.NewResourceDefinition(def)
		if err != nil {
			return nil, fmt.Errorf("resource definition %s: %w", def.Type, err)
		}
		rs = append(rs, rd)
	}
	for _, d := range inv.Disks {
		r := block.NewDisk(block.NamespaceName, path.Base(d.DevPath))
		*r.TypedSpec() = d
		rs = append(rs, r)
	}
	for _, l := range inv.Links {
		r := network.NewLinkStatus(network.NamespaceName, l.Name)
		*r.TypedSpec() = l.Spec
		rs = append(rs, r)
	}
	si := hardware.NewSystemInformation(hardware.SystemInformationID)
	*si.TypedSpec() = inv.System
	rs = append(rs, si)
	for _, r := range rs {
		if err := st.Create(ctx, r); err != nil {
			return nil, fmt.Errorf("resource %s: %w", r.Metadata(), err)
		}
	}
	return &readOnlyState{st: st}, nil
}

// setVolumes replaces the DiscoveredVolumes of disk (the disk and its
// partitions) with vols, as DiscoveryController.rescan does: volumes
// written, the partitions no longer found destroyed. A nil vols (the
// probe failed) removes them all.
func (s *readOnlyState) setVolumes(ctx context.Context, disk string, vols []Volume) error {
	keep := map[string]bool{}
	for _, v := range vols {
		keep[v.ID] = true
		if err := safe.StateModify(ctx, s.st, block.NewDiscoveredVolume(block.NamespaceName, v.ID), func(r *block.DiscoveredVolume) error {
			*r.TypedSpec() = v.Spec
			return nil
		}); err != nil {
			return fmt.Errorf("discovered volume %s: %w", v.ID, err)
		}
	}
	all, err := safe.StateListAll[*block.DiscoveredVolume](ctx, s.st)
	if err != nil {
		return fmt.Errorf("list discovered volumes: %w", err)
	}
	for r := range all.All() {
		id := r.Metadata().ID()
		if keep[id] || (id != disk && r.TypedSpec().Parent != disk) {
			continue
		}
		if err := s.st.Destroy(ctx, r.Metadata()); err != nil {
			return fmt.Errorf("discovered volume %s: %w", id, err)
		}
	}
	return nil
}

// volumes lists the DiscoveredVolumes.
func (s *readOnlyState) volumes(ctx context.Context) ([]Volume, error) {
	all, err := safe.StateListAll[*block.DiscoveredVolume](ctx, s.st)
	if err != nil {
		return nil, fmt.Errorf("list discovered volumes: %w", err)
	}
	var out []Volume
	for r := range all.All() {
		out = append(out, Volume{ID: r.Metadata().ID(), Spec: *r.TypedSpec()})
	}
	return out, nil
}

// stateServer is cosi-project/runtime's gRPC State adapter
// (pkg/state/protobuf/server), the one machined serves, with the writes
// refused: these resources are read-only in Talos too (the per-type
// authorization of machined's COSI service lets no API client write
// them).
type stateServer struct {
	*server.State
}

func registerState(srv *grpc.Server, st *readOnlyState) {
	v1alpha1.RegisterStateServer(srv, stateServer{State: server.NewState(st.st)})
}

func readOnly(op string) error {
	return status.Errorf(codes.PermissionDenied, "%s: resources are read-only on this machine", op)
}

func (stateServer) Create(context.Context, *v1alpha1.CreateRequest) (*v1alpha1.CreateResponse, error) {
	return nil, readOnly("create")
}

func (stateServer) Update(context.Context, *v1alpha1.UpdateRequest) (*v1alpha1.UpdateResponse, error) {
	return nil, readOnly("update")
}

func (stateServer) Destroy(context.Context, *v1alpha1.DestroyRequest) (*v1alpha1.DestroyResponse, error) {
	return nil, readOnly("destroy")
}
