// Package apid serves the subset of Talos's gRPC API (port 50000) that
// rackboot's day-two flows use, on the stand-in, with machinery's own
// protobuf types: in maintenance mode (no machine config yet: TLS with a
// made-up certificate, no client certificate, the reader role) the COSI
// reads of disks, links and system information and ApplyConfiguration; in
// configured mode (mutual TLS from the machine config's CA, roles from the
// client certificate) Version, Upgrade (MachineService and
// LifecycleService), ImageService.Pull (when Config.OnPull is set), Reboot,
// Reset, EtcdMemberList, EtcdRemoveMemberByID, ApplyConfiguration without
// a reboot and the resources of Talos's Kubernetes upgrade
// (PublishKubernetes) and the same reads; in both, the disks' DiscoveredVolumes and
// StorageService.BlockDeviceWipe. A control plane signs its own
// certificate and serves trustd (port 50001, Trustd) for the workers; a
// worker gets its certificate from trustd (ConfigureWorker). What the machine does with an applied config, an
// upgrade or a reset is the init's: the server hands them over through the
// callbacks in Config.
package apid

import (
	"context"
	stdtls "crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/dotfile/rackboot/lab/standin/imagepull"
	"github.com/google/uuid"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/api/storage"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/role"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Port is apid's port (constants.ApidPort).
const Port = constants.ApidPort

// Upgrade is one upgrade request.
type Upgrade struct {
	// Image is the installer image reference.
	Image string
	// Stage and Force are MachineService.Upgrade's options.
	Stage, Force bool
	// Reboot: MachineService.Upgrade reboots into the new version;
	// LifecycleService.Upgrade only installs it (the client reboots).
	Reboot bool
	// Progress sends a progress message to the LifecycleService client
	// (nil for MachineService.Upgrade, which answers before it acts).
	Progress func(msg string)
}

// ErrNotPulled is what OnUpgrade wraps when a LifecycleService upgrade
// names an image ImageService.Pull has not pulled: Talos runs the
// installer from containerd's store and fails the call (gRPC Internal).
var ErrNotPulled = errors.New("not found in containerd store")

// Reset is one reset request (machine.ResetRequest's options).
type Reset struct {
	Graceful, Reboot bool
	Mode             machine.ResetRequest_WipeMode
	// UserDisks are device paths to wipe (USER_DISKS or ALL modes).
	UserDisks []string
	// SystemPartitions are the labels of the system partitions to wipe
	// (none: the whole system disk).
	SystemPartitions []string
}

// Config configures the server.
type Config struct {
	Log *slog.Logger
	// Now is the clock (certificate validity); time.Now when nil.
	Now func() time.Time
	// Version is the Talos version tag Version answers (SetVersion
	// changes it).
	Version string
	// Inventory is what the COSI reads answer.
	Inventory Inventory
	// DevRoot is the directory the disks' device paths are under: "/" (the
	// default) on the machine; in tests a directory whose dev/sdb is a
	// disk image. The disks are probed there for their DiscoveredVolumes
	// and wiped there by BlockDeviceWipe.
	DevRoot string
	// Addresses and Hostname go into the server certificates.
	Addresses []netip.Addr
	Hostname  string
	// Installed: Talos is on the machine's disk (Upgrade needs it).
	Installed bool
	// SystemDisk is the install disk's device path (Reset refuses it as a
	// user disk).
	SystemDisk string
	// EtcdMembers is the member list a control plane answers.
	EtcdMembers []*machine.EtcdMember
	// TrustdEndpoints are where a worker asks trustd for its certificate
	// (host or host:port, TrustdPort by default); nil: TrustdEndpoints of
	// the worker's config (its cluster endpoint's host).
	TrustdEndpoints []string

	// OnApply gets a validated config applied in maintenance mode; an
	// error fails the call.
	OnApply func(ctx context.Context, cfg config.Provider, raw []byte) error
	// OnUpgrade, OnReset and OnReboot get the accepted requests; they
	// should return quickly (act in the background), as Talos replies
	// before it acts.
	OnUpgrade func(ctx context.Context, u Upgrade) error
	// OnPull pulls an image (ImageService.Pull) and returns the reference
	// pinned to its digest; nil leaves ImageService unimplemented.
	OnPull   func(ctx context.Context, ref string) (pinned string, err error)
	OnReset  func(ctx context.Context, r Reset) error
	OnReboot func(ctx context.Context) error
}

// Server is the stand-in's apid.
type Server struct {
	machine.UnimplementedMachineServiceServer

	log   *slog.Logger
	now   func() time.Time
	cfg   Config
	state *readOnlyState

	mu       sync.Mutex
	version  string
	tls      *stdtls.Config
	machine  config.Provider // nil: maintenance mode
	members  []*machine.EtcdMember
	upgrades sync.Mutex
}

// New builds a server in maintenance mode (Configure switches it).
func New(cfg Config) (*Server, error) {
	s := &Server{log: cfg.Log, now: cfg.Now, cfg: cfg, version: cfg.Version, members: slices.Clone(cfg.EtcdMembers)}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	st, err := newState(context.Background(), cfg.Inventory)
	if err != nil {
		return nil, err
	}
	s.state = st
	for _, d := range cfg.Inventory.Disks {
		s.rescan(context.Background(), path.Base(d.DevPath))
	}
	if s.tls, err = maintenanceTLS(s.now(), cfg.Addresses, cfg.Hostname); err != nil {
		return nil, err
	}
	return s, nil
}

// Configure switches the server to configured mode with the machine's
// config: new connections get mutual TLS from its CA. Calls on existing
// connections keep the TLS they were made with, but their roles follow
// the mode.
func (s *Server) Configure(cfg config.Provider) error {
	tc, err := configuredTLS(s.now(), cfg, s.cfg.Addresses, s.cfg.Hostname)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tls, s.machine = tc, cfg
	s.log.Info("API in configured mode", "port", Port)
	return nil
}

// Maintenance reports whether the server is in maintenance mode.
func (s *Server) Maintenance() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.machine == nil
}

// SetVersion changes the version Version answers.
func (s *Server) SetVersion(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version = v
}

// SetInstalled records that Talos is (or is no longer) on the disk.
func (s *Server) SetInstalled(installed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.Installed = installed
}

// EtcdMembers is the current member list.
func (s *Server) EtcdMembers() []*machine.EtcdMember {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.members)
}

// Serve answers on ln until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	base := &stdtls.Config{
		MinVersion: stdtls.VersionTLS12,
		GetConfigForClient: func(*stdtls.ClientHelloInfo) (*stdtls.Config, error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.tls, nil
		},
	}
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(base)),
		grpc.UnaryInterceptor(s.unary),
		grpc.StreamInterceptor(s.stream),
		grpc.MaxRecvMsgSize(constants.GRPCMaxMessageSize),
	)
	machine.RegisterMachineServiceServer(srv, s)
	machine.RegisterLifecycleServiceServer(srv, lifecycle{s: s})
	if s.cfg.OnPull != nil {
		machine.RegisterImageServiceServer(srv, images{s: s})
	}
	storage.RegisterStorageServiceServer(srv, storageService{s: s})
	registerState(srv, s.state)
	s.log.Info("API listening", "addr", ln.Addr().String(), "maintenance", s.Maintenance())
	return serveGRPC(ctx, srv, ln)
}

// metalMode is Talos's metal runtime mode for validation; installed as
// v1alpha1_server.go's modeWrapper (RequiresInstall unless installed).
type metalMode struct{ installed bool }

func (metalMode) String() string          { return "metal" }
func (m metalMode) RequiresInstall() bool { return !m.installed }
func (metalMode) InContainer() bool       { return false }

// ApplyConfiguration mirrors v1alpha1_server.go Server.ApplyConfiguration
// in maintenance mode: load, Validate and RuntimeValidate (against the
// machine's disks) with machinery, InvalidArgument on any failure, REBOOT
// turned into NO_REBOOT, the config handed over. On a configured machine
// it is applyConfigured's (kubernetes.go: what Talos's Kubernetes upgrade
// needs).
func (s *Server) ApplyConfiguration(ctx context.Context, in *machine.ApplyConfigurationRequest) (*machine.ApplyConfigurationResponse, error) {
	if !s.Maintenance() {
		if !rolesFrom(ctx).Includes(role.Admin) {
			return nil, ErrNotAuthorized
		}
		return s.applyConfigured(ctx, in) // kubernetes.go
	}
	cfg, err := configloader.NewFromBytes(in.GetData())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	mode := metalMode{installed: s.installed()}
	warnings, err := cfg.Validate(mode)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	more, err := cfg.RuntimeValidate(ctx, s.state.st, mode)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	warnings = append(warnings, more...)
	m := in.GetMode()
	details := "Applied configuration with a reboot"
	switch m {
	case machine.ApplyConfigurationRequest_REBOOT, machine.ApplyConfigurationRequest_NO_REBOOT, machine.ApplyConfigurationRequest_TRY:
		m = machine.ApplyConfigurationRequest_NO_REBOOT
		details = "Applied configuration without a reboot"
	case machine.ApplyConfigurationRequest_AUTO:
		m = machine.ApplyConfigurationRequest_NO_REBOOT
		details = "Applied configuration without a reboot"
	case machine.ApplyConfigurationRequest_STAGED:
		details = "Staged configuration to be applied after the next reboot"
	}
	if in.GetDryRun() {
		return &machine.ApplyConfigurationResponse{Messages: []*machine.ApplyConfiguration{{
			Mode: m, ModeDetails: fmt.Sprintf("Dry run summary:\n%s (skipped in dry-run).\n", details),
		}}}, nil
	}
	s.log.Info("apply config request", "mode", m.String())
	if s.cfg.OnApply != nil {
		if err := s.cfg.OnApply(ctx, cfg, in.GetData()); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	return &machine.ApplyConfigurationResponse{Messages: []*machine.ApplyConfiguration{{
		Mode: m, Warnings: warnings, ModeDetails: details,
	}}}, nil
}

func (s *Server) installed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg.Installed
}

// Version mirrors Server.Version: the version, the platform (metal), RBAC
// when the machine has its config.
func (s *Server) Version(context.Context, *emptypb.Empty) (*machine.VersionResponse, error) {
	s.mu.Lock()
	v, configured := s.version, s.machine != nil
	s.mu.Unlock()
	msg := &machine.Version{
		Version: &machine.VersionInfo{
			Tag: v, Sha: "standin", GoVersion: runtime.Version(), Os: runtime.GOOS, Arch: runtime.GOARCH,
		},
		Platform: &machine.PlatformInfo{Name: "metal", Mode: "metal"},
	}
	if configured {
		msg.Features = &machine.FeaturesInfo{Rbac: true}
	}
	return &machine.VersionResponse{Messages: []*machine.Version{msg}}, nil
}

// Upgrade mirrors MachineService.Upgrade (deprecated in v1.13, still what
// machinery's Client.Upgrade calls): Talos must be installed; the request
// is acknowledged with an actor ID and the machine reboots into the image.
func (s *Server) Upgrade(ctx context.Context, in *machine.UpgradeRequest) (*machine.UpgradeResponse, error) {
	if !s.installed() {
		return nil, status.Errorf(codes.FailedPrecondition, "Talos is not installed")
	}
	actor := uuid.New().String()
	s.log.Info("upgrade request received", "image", in.GetImage(), "stage", in.GetStage(), "force", in.GetForce(), "actor", actor)
	if s.cfg.OnUpgrade != nil {
		if err := s.cfg.OnUpgrade(ctx, Upgrade{Image: in.GetImage(), Stage: in.GetStage(), Force: in.GetForce(), Reboot: true}); err != nil {
			return nil, fmt.Errorf("error validating installer image %q: %w", in.GetImage(), err)
		}
	}
	return &machine.UpgradeResponse{Messages: []*machine.Upgrade{{Ack: "Upgrade request received", ActorId: actor}}}, nil
}

// Upgrade mirrors LifecycleService.Upgrade (internal/app/lifecycle
// Service.Upgrade): one at a time, installed, an image name required;
// progress messages, then the installer's exit code. It does not reboot.
func (s *Server) lifecycleUpgrade(req *machine.LifecycleServiceUpgradeRequest, ss grpc.ServerStreamingServer[machine.LifecycleServiceUpgradeResponse]) error {
	if !s.upgrades.TryLock() {
		return status.Error(codes.FailedPrecondition, "another installation/upgrade is already in progress")
	}
	defer s.upgrades.Unlock()
	if !s.installed() {
		return status.Error(codes.FailedPrecondition, "machine is not installed")
	}
	image := req.GetSource().GetImageName()
	if image == "" {
		return status.Error(codes.InvalidArgument, "installer image name is required")
	}
	disk := s.cfg.SystemDisk
	if disk == "" {
		return status.Error(codes.Internal, "system disk not found")
	}
	send := func(p *machine.LifecycleServiceInstallProgress) error {
		return ss.Send(&machine.LifecycleServiceUpgradeResponse{Progress: p})
	}
	msg := func(m string) error {
		return send(&machine.LifecycleServiceInstallProgress{Response: &machine.LifecycleServiceInstallProgress_Message{Message: m}})
	}
	s.log.Info("starting upgrade", "installer_image", image, "disk", disk)
	if err := msg(fmt.Sprintf("starting upgrade: installer_image=%s, disk=%s", image, disk)); err != nil {
		return err
	}
	code := int32(0)
	if s.cfg.OnUpgrade != nil {
		progress := func(m string) {
			s.log.Info("upgrade progress", "message", m)
			_ = msg(m) // a client gone: the installer runs on, as Talos's
		}
		err := s.cfg.OnUpgrade(ss.Context(), Upgrade{Image: image, Progress: progress})
		if errors.Is(err, ErrNotPulled) {
			return status.Error(codes.Internal, fmt.Sprintf("upgrade failed: %v", err))
		}
		if err != nil {
			code = 1
			if err := msg(err.Error()); err != nil {
				return err
			}
		}
	}
	if code == 0 {
		s.log.Info("upgrade completed successfully", "exit_code", code)
	} else {
		s.log.Error("upgrade failed", "exit_code", code)
	}
	return send(&machine.LifecycleServiceInstallProgress{Response: &machine.LifecycleServiceInstallProgress_ExitCode{ExitCode: code}})
}

// Reboot mirrors Server.Reboot: acknowledged with an actor ID.
func (s *Server) Reboot(ctx context.Context, _ *machine.RebootRequest) (*machine.RebootResponse, error) {
	actor := uuid.New().String()
	s.log.Info("reboot request received", "actor", actor)
	if s.cfg.OnReboot != nil {
		if err := s.cfg.OnReboot(ctx); err != nil {
			return nil, err
		}
	}
	return &machine.RebootResponse{Messages: []*machine.Reboot{{ActorId: actor}}}, nil
}

// Reset mirrors Server.Reset's input checks (user disks with SYSTEM_DISK
// mode, partitions with USER_DISKS mode, unknown, read-only or system
// user disks refused with Talos's messages), then hands the reset over
// and answers with an actor ID.
func (s *Server) Reset(ctx context.Context, in *machine.ResetRequest) (*machine.ResetResponse, error) {
	if err := checkReset(in, s.cfg.Inventory, s.cfg.SystemDisk); err != nil {
		return nil, err
	}
	actor := uuid.New().String()
	r := Reset{Graceful: in.GetGraceful(), Reboot: in.GetReboot(), Mode: in.GetMode(), UserDisks: in.GetUserDisksToWipe()}
	for _, p := range in.GetSystemPartitionsToWipe() {
		if p.GetWipe() {
			r.SystemPartitions = append(r.SystemPartitions, p.GetLabel())
		}
	}
	s.log.Info("reset request received", "actor", actor, "graceful", r.Graceful, "reboot", r.Reboot, "mode", r.Mode.String())
	if s.cfg.OnReset != nil {
		if err := s.cfg.OnReset(ctx, r); err != nil {
			return nil, err
		}
	}
	return &machine.ResetResponse{Messages: []*machine.Reset{{ActorId: actor}}}, nil
}

// checkReset is Server.Reset's input validation.
func checkReset(in *machine.ResetRequest, inv Inventory, systemDisk string) error {
	if len(in.GetUserDisksToWipe()) > 0 {
		if in.GetMode() == machine.ResetRequest_SYSTEM_DISK {
			return errors.New("reset failed: invalid input, wipe mode SYSTEM_DISK doesn't support UserDisksToWipe parameter")
		}
		for _, dev := range in.GetUserDisksToWipe() {
			i := slices.IndexFunc(inv.Disks, func(d block.DiskSpec) bool { return d.DevPath == dev })
			if i < 0 {
				return fmt.Errorf("reset user disk failed: device %s wasn't found", dev)
			}
			if inv.Disks[i].Readonly {
				return fmt.Errorf("reset user disk failed: device %s is readonly", dev)
			}
			if dev == systemDisk {
				return fmt.Errorf("reset user disk failed: device %s is the system disk", dev)
			}
		}
	}
	if len(in.GetSystemPartitionsToWipe()) > 0 && in.GetMode() == machine.ResetRequest_USER_DISKS {
		return errors.New("reset failed: invalid input, wipe mode USER_DISKS doesn't support SystemPartitionsToWipe parameter")
	}
	return nil
}

// checkControlPlane is machinehelper.CheckControlplane.
func (s *Server) checkControlPlane(api string) error {
	s.mu.Lock()
	cfg := s.machine
	s.mu.Unlock()
	if cfg == nil {
		return status.Errorf(codes.Unimplemented, "machine type is not set, cannot use %s API", api)
	}
	if !cfg.Machine().Type().IsControlPlane() {
		return status.Errorf(codes.Unimplemented, "%s is only available on control plane nodes", api)
	}
	return nil
}

// EtcdMemberList answers the member list the init gave (there is no etcd
// on the stand-in).
func (s *Server) EtcdMemberList(context.Context, *machine.EtcdMemberListRequest) (*machine.EtcdMemberListResponse, error) {
	if err := s.checkControlPlane("member list"); err != nil {
		return nil, err
	}
	members := s.EtcdMembers()
	legacy := make([]string, len(members))
	for i, m := range members {
		legacy[i] = m.GetHostname()
	}
	return &machine.EtcdMemberListResponse{Messages: []*machine.EtcdMembers{{LegacyMembers: legacy, Members: members}}}, nil
}

// errMemberNotFound is etcd's rpctypes.ErrMemberNotFound message, which
// Talos returns as NotFound.
const errMemberNotFound = "etcdserver: member not found"

// EtcdRemoveMemberByID drops a member from the list.
func (s *Server) EtcdRemoveMemberByID(_ context.Context, in *machine.EtcdRemoveMemberByIDRequest) (*machine.EtcdRemoveMemberByIDResponse, error) {
	if err := s.checkControlPlane("etcd remove member"); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.members, func(m *machine.EtcdMember) bool { return m.GetId() == in.GetMemberId() })
	if i < 0 {
		return nil, status.Error(codes.NotFound, errMemberNotFound)
	}
	s.log.Info("etcd member removed", "id", fmt.Sprintf("%x", in.GetMemberId()), "hostname", s.members[i].GetHostname())
	s.members = slices.Delete(s.members, i, i+1)
	return &machine.EtcdRemoveMemberByIDResponse{Messages: []*machine.EtcdRemoveMemberByID{{}}}, nil
}

// lifecycle adapts the LifecycleService's Upgrade (same method name as
// MachineService's) onto the server.
type lifecycle struct {
	machine.UnimplementedLifecycleServiceServer
	s *Server
}

func (l lifecycle) Upgrade(req *machine.LifecycleServiceUpgradeRequest, ss grpc.ServerStreamingServer[machine.LifecycleServiceUpgradeResponse]) error {
	return l.s.lifecycleUpgrade(req, ss)
}

// images serves ImageService.Pull (internal/app/images Service.Pull):
// the image pulled through the machine's registry mirrors, its reference
// answered pinned to its digest. Talos also streams layer progress; the
// stand-in sends the name only (talosctl shows progress when there is
// some).
type images struct {
	machine.UnimplementedImageServiceServer
	s *Server
}

func (i images) Pull(req *machine.ImageServicePullRequest, ss grpc.ServerStreamingServer[machine.ImageServicePullResponse]) error {
	ref := req.GetImageRef()
	if ref == "" {
		return status.Error(codes.InvalidArgument, "image reference is required")
	}
	i.s.log.Info("image pull request", "image", ref)
	pinned, err := i.s.cfg.OnPull(ss.Context(), ref)
	if errors.Is(err, imagepull.ErrNotFound) {
		return status.Errorf(codes.NotFound, "error pulling image: %s", err)
	}
	if err != nil {
		return fmt.Errorf("error pulling image: %w", err)
	}
	return ss.Send(&machine.ImageServicePullResponse{Response: &machine.ImageServicePullResponse_Name{Name: pinned}})
}

// serveGRPC serves srv on ln until ctx ends (then it stops at once, as
// Talos's services do on shutdown); a stop or a closed listener is no
// error.
func serveGRPC(ctx context.Context, srv *grpc.Server, ln net.Listener) error {
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			srv.Stop()
		case <-done:
		}
	}()
	err := srv.Serve(ln)
	close(done)
	if ctx.Err() != nil || errors.Is(err, grpc.ErrServerStopped) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
