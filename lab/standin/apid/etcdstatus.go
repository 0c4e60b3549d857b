package apid

import (
	"context"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// EtcdStatus is Talos's MachineService.EtcdStatus
// (internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go
// EtcdStatus: control planes only, then etcd's Maintenance.Status of the
// local member). The stand-in runs no etcd: its member list (the init
// gives it the machine itself) is the whole cluster it knows, so the
// answer is that member, its own leader, not a learner, no errors. With
// its member removed it answers as Talos does when the local etcd does
// not answer (an error, no status).
func (s *Server) EtcdStatus(context.Context, *emptypb.Empty) (*machine.EtcdStatusResponse, error) {
	if err := s.checkControlPlane("etcd status"); err != nil {
		return nil, err
	}
	members := s.EtcdMembers()
	if len(members) == 0 {
		return nil, status.Error(codes.Unknown, "failed to query etcd status: this machine is no etcd member")
	}
	self := members[0]
	for _, m := range members {
		if m.GetHostname() == s.cfg.Hostname {
			self = m
		}
	}
	return &machine.EtcdStatusResponse{Messages: []*machine.EtcdStatus{{
		MemberStatus: &machine.EtcdMemberStatus{
			MemberId:  self.GetId(),
			Leader:    self.GetId(),
			IsLearner: self.GetIsLearner(),
		},
	}}}, nil
}
