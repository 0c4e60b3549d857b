package apid

import (
	"context"

	"github.com/siderolabs/talos/pkg/machinery/role"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// ErrNotAuthorized is Talos's authz.ErrNotAuthorized.
var ErrNotAuthorized = status.Error(codes.PermissionDenied, "not authorized")

// rules are the entries of machined's authorization rules
// (internal/app/machined/pkg/system/services/machined.go, var rules) for
// the methods the stand-in serves. ApplyConfiguration allows the reader
// for maintenance mode only, as Talos checks in the handler.
var rules = map[string]role.Set{
	"/machine.MachineService/ApplyConfiguration":   role.MakeSet(role.Admin, role.Reader),
	"/machine.MachineService/EtcdMemberList":       role.MakeSet(role.Admin, role.Operator, role.Reader, role.EtcdBackup),
	"/machine.MachineService/EtcdRemoveMemberByID": role.MakeSet(role.Admin),
	"/machine.MachineService/EtcdStatus":           role.MakeSet(role.Admin, role.Operator, role.Reader, role.EtcdBackup),
	"/machine.MachineService/Reboot":               role.MakeSet(role.Admin, role.Operator),
	"/machine.MachineService/Reset":                role.MakeSet(role.Admin),
	"/machine.MachineService/Upgrade":              role.MakeSet(role.Admin),
	"/machine.MachineService/Version":              role.MakeSet(role.Admin, role.Operator, role.Reader),
	"/machine.LifecycleService/Upgrade":            role.MakeSet(role.Admin),
	"/machine.ImageService/Pull":                   role.MakeSet(role.Admin, role.Operator),
	"/cosi.resource.State/Create":                  role.MakeSet(role.Admin),
	"/cosi.resource.State/Destroy":                 role.MakeSet(role.Admin),
	"/cosi.resource.State/Get":                     role.MakeSet(role.Admin, role.Operator, role.Reader),
	"/cosi.resource.State/List":                    role.MakeSet(role.Admin, role.Operator, role.Reader),
	"/cosi.resource.State/Update":                  role.MakeSet(role.Admin),
	"/cosi.resource.State/Watch":                   role.MakeSet(role.Admin, role.Operator, role.Reader),
	// The reader only in maintenance mode, checked in the handler.
	"/storage.StorageService/BlockDeviceWipe": role.MakeSet(role.Admin, role.Reader),
}

// fallbackRoles is machined's Authorizer.FallbackRoles.
var fallbackRoles = role.MakeSet(role.Admin)

// Authorize is Talos's authz.Authorizer.authorize: the caller needs one of
// the method's roles (admin only for a method without a rule).
func Authorize(method string, roles role.Set) error {
	allowed, ok := rules[method]
	if !ok {
		allowed = fallbackRoles
	}
	if allowed.IncludesAny(roles) {
		return nil
	}
	return ErrNotAuthorized
}

// Roles are the roles apid's authz.Injector gives a call: in maintenance
// mode (ReadOnlyWithAdminOnSiderolink, no SideroLink here) the reader
// role; configured (Enabled) the roles in the client certificate's
// organizations. orgs is nil without a client certificate.
func Roles(maintenance bool, orgs []string) role.Set {
	if maintenance {
		return role.MakeSet(role.Reader)
	}
	roles, _ := role.Parse(orgs)
	return roles
}

type rolesKey struct{}

func withRoles(ctx context.Context, r role.Set) context.Context {
	return context.WithValue(ctx, rolesKey{}, r)
}

func rolesFrom(ctx context.Context) role.Set {
	r, _ := ctx.Value(rolesKey{}).(role.Set)
	return r
}

// callRoles injects and checks the roles of one call.
func (s *Server) callRoles(ctx context.Context, method string) (context.Context, error) {
	var orgs []string
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			orgs = ti.State.PeerCertificates[0].Subject.Organization
		}
	}
	roles := Roles(s.Maintenance(), orgs)
	if err := Authorize(method, roles); err != nil {
		s.log.Warn("call refused", "method", method, "roles", roles.Strings())
		return ctx, err
	}
	return withRoles(ctx, roles), nil
}

func (s *Server) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	ctx, err := s.callRoles(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return h(ctx, req)
}

func (s *Server) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	ctx, err := s.callRoles(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return h(srv, &ctxStream{ServerStream: ss, ctx: ctx})
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *ctxStream) Context() context.Context { return c.ctx }
