package apid_test

import (
	"context"
	stdtls "crypto/tls"
	stdx509 "crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/dotfile/rackboot/lab/standin/apid"
	"github.com/dotfile/rackboot/lab/standin/imagepull"
	"github.com/siderolabs/crypto/x509"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config"
	docconfig "github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/container"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	mtype "github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/config/types/v1alpha1"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/resources/hardware"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// pki is a cluster's secrets, its talosconfig (os:admin) and a control
// plane config that installs to the testdata NVMe disk.
type pki struct {
	bundle *secrets.Bundle
	admin  *clientconfig.Config
	cp     []byte
	worker []byte
}

func newPKI(t *testing.T, installDisk string) pki {
	t.Helper()
	b, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersion1_13)
	if err != nil {
		t.Fatal(err)
	}
	in, err := generate.NewInput("lab", "https://192.0.2.10:6443", "1.36.0",
		generate.WithVersionContract(config.TalosVersion1_13),
		generate.WithSecretsBundle(b),
		generate.WithInstallDisk(installDisk),
		generate.WithEndpointList([]string{"127.0.0.1"}))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := in.Talosconfig()
	if err != nil {
		t.Fatal(err)
	}
	p := pki{bundle: b, admin: tc}
	for typ, out := range map[mtype.Type]*[]byte{mtype.TypeControlPlane: &p.cp, mtype.TypeWorker: &p.worker} {
		c, err := in.Config(typ)
		if err != nil {
			t.Fatal(err)
		}
		if *out, err = c.Bytes(); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// recorder collects what the server hands to the init.
type recorder struct {
	mu       sync.Mutex
	applied  [][]byte
	upgrades []upgradeRec
	resets   []apid.Reset
	reboots  int
}

func (r *recorder) config(cfg *apid.Config) {
	cfg.OnApply = func(_ context.Context, _ config.Provider, raw []byte) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.applied = append(r.applied, raw)
		return nil
	}
	cfg.OnUpgrade = func(_ context.Context, u apid.Upgrade) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		if u.Progress != nil {
			u.Progress("installing " + u.Image)
		}
		r.upgrades = append(r.upgrades, upgradeRec{Image: u.Image, Stage: u.Stage, Force: u.Force, Reboot: u.Reboot, Progress: u.Progress != nil})
		return nil
	}
	cfg.OnReset = func(_ context.Context, rs apid.Reset) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.resets = append(r.resets, rs)
		return nil
	}
	cfg.OnReboot = func(context.Context) error {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.reboots++
		return nil
	}
}

// upgradeRec is an apid.Upgrade as the recorder saw it.
type upgradeRec struct {
	Image                          string
	Stage, Force, Reboot, Progress bool
}

// start serves the stand-in API for the testdata machine on loopback.
func start(t *testing.T, rec *recorder, mod func(*apid.Config)) (*apid.Server, string) {
	t.Helper()
	inv, err := apid.ReadInventory("testdata/sysfs")
	if err != nil {
		t.Fatal(err)
	}
	cfg := apid.Config{
		Version:    "v1.13.0",
		Inventory:  inv,
		Addresses:  []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Hostname:   "urban",
		SystemDisk: "/dev/nvme0n1",
		DevRoot:    t.TempDir(), // no device nodes: never the test host's /dev
	}
	rec.config(&cfg)
	if mod != nil {
		mod(&cfg)
	}
	s, err := apid.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, ln.Addr().String()
}

// insecure is talosctl --insecure's client.
func insecure(t *testing.T, addr string) *client.Client {
	t.Helper()
	c, err := client.New(context.Background(), client.WithEndpoints(addr), client.WithTLSConfig(&stdtls.Config{InsecureSkipVerify: true}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// withConfig is a client from a talosconfig, pointed at addr.
func withConfig(t *testing.T, tc *clientconfig.Config, addr string) *client.Client {
	t.Helper()
	c, err := client.New(context.Background(), client.WithConfig(tc), client.WithEndpoints(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// withRole is a talosconfig whose client certificate, signed by the OS
// CA, carries only role.
func withRole(t *testing.T, p pki, role string) *clientconfig.Config {
	t.Helper()
	ca, err := x509.NewCertificateAuthorityFromCertificateAndKey(p.bundle.Certs.OS)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := x509.NewKeyPair(ca, x509.CommonName(role), x509.Organization(role),
		x509.NotAfter(time.Now().Add(time.Hour)),
		x509.ExtKeyUsage([]stdx509.ExtKeyUsage{stdx509.ExtKeyUsageClientAuth}))
	if err != nil {
		t.Fatal(err)
	}
	pem := x509.NewCertificateAndKeyFromKeyPair(kp)
	ctxName := p.admin.Context
	c := *p.admin.Contexts[ctxName]
	c.Crt, c.Key = b64(pem.Crt), b64(pem.Key)
	return &clientconfig.Config{Context: ctxName, Contexts: map[string]*clientconfig.Context{ctxName: &c}}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestMaintenanceInventory(t *testing.T) {
	_, addr := start(t, &recorder{}, nil)
	c := insecure(t, addr)

	disks, err := safe.StateListAll[*block.Disk](ctx(t), c.COSI)
	if err != nil {
		t.Fatalf("list disks: %v", err)
	}
	type disk struct {
		id, dev, model, serial, transport string
		size                              uint64
		rotational, readonly              bool
	}
	var got []disk
	for d := range disks.All() {
		s := d.TypedSpec()
		got = append(got, disk{d.Metadata().ID(), s.DevPath, s.Model, s.Serial, s.Transport, s.Size, s.Rotational, s.Readonly})
	}
	want := []disk{
		{"nvme0n1", "/dev/nvme0n1", "QEMU NVMe Ctrl", "nvme-install-0", "nvme", 20971520 * 512, false, false},
		{"sda", "/dev/sda", "QEMU HARDDISK", "", "sata", 25165824 * 512, true, false},
		{"vda", "/dev/vda", "", "vd-config", "virtio", 2097152 * 512, true, true},
	}
	if !slices.Equal(got, want) {
		t.Errorf("disks:\n got %+v\nwant %+v", got, want)
	}

	links, err := safe.StateListAll[*network.LinkStatus](ctx(t), c.COSI)
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	macs := map[string]string{}
	for l := range links.All() {
		macs[l.Metadata().ID()] = l.TypedSpec().HardwareAddr.String()
		if l.Metadata().ID() == "eth0" && (!l.TypedSpec().Physical() || l.TypedSpec().Driver != "virtio_net" || l.TypedSpec().Index != 2) {
			t.Errorf("eth0: %+v", l.TypedSpec())
		}
	}
	if macs["eth0"] != "52:54:00:12:34:56" || macs["lo"] != "00:00:00:00:00:00" || len(macs) != 2 {
		t.Errorf("links: %v", macs)
	}

	si, err := safe.StateGetByID[*hardware.SystemInformation](ctx(t), c.COSI, hardware.SystemInformationID)
	if err != nil {
		t.Fatalf("get system information: %v", err)
	}
	if s := si.TypedSpec(); s.UUID != "8e2b6f7a-1c3d-4e5f-9a0b-1c2d3e4f5a6b" || s.SerialNumber != "LAB-URBAN-01" || s.Manufacturer != "QEMU" {
		t.Errorf("system information: %+v", s)
	}

	// Writes are refused.
	if err := c.COSI.Destroy(ctx(t), disks.Get(0).Metadata()); err == nil || !strings.Contains(err.Error(), "code = PermissionDenied") {
		t.Errorf("destroy a disk: %v, want PermissionDenied", err)
	}
	// Admin-only methods are not for the maintenance reader.
	//lint:ignore SA1019 MachineService.Upgrade is what machinery's Client.Upgrade calls: under test
	if _, err := c.Upgrade(ctx(t), "ghcr.io/siderolabs/installer:v1.13.1", false, false); status.Code(err) != codes.PermissionDenied {
		t.Errorf("upgrade in maintenance: %v, want PermissionDenied", err)
	}
}

func TestMaintenanceApply(t *testing.T) {
	p := newPKI(t, "/dev/nvme0n1")
	rec := &recorder{}
	s, addr := start(t, rec, nil)
	c := insecure(t, addr)

	resp, err := c.ApplyConfiguration(ctx(t), &machine.ApplyConfigurationRequest{Data: p.cp, Mode: machine.ApplyConfigurationRequest_REBOOT})
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if m := resp.GetMessages()[0]; m.GetMode() != machine.ApplyConfigurationRequest_NO_REBOOT || m.GetModeDetails() != "Applied configuration without a reboot" {
		t.Errorf("reply: %v", m)
	}
	if len(rec.applied) != 1 || string(rec.applied[0]) != string(p.cp) {
		t.Fatalf("the config did not reach the callback: %d calls", len(rec.applied))
	}
	if !s.Maintenance() {
		t.Error("the server left maintenance mode by itself")
	}

	for name, data := range map[string][]byte{
		"not yaml":    []byte("{{{"),
		"bad version": []byte("version: v1alpha1\nmachine:\n  type: nonsense\n"),
	} {
		_, err := c.ApplyConfiguration(ctx(t), &machine.ApplyConfigurationRequest{Data: data})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	// RuntimeValidate: the install disk selector matches no disk here.
	_, err = c.ApplyConfiguration(ctx(t), &machine.ApplyConfigurationRequest{Data: withSelector(t, p.cp, "NO SUCH MODEL")})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "no disks matched the expression") {
		t.Errorf("install disk selector matching nothing: %v, want InvalidArgument", err)
	}
	// The same selector for the testdata NVMe model is accepted.
	if _, err = c.ApplyConfiguration(ctx(t), &machine.ApplyConfigurationRequest{Data: withSelector(t, p.cp, "QEMU NVMe Ctrl")}); err != nil {
		t.Errorf("install disk selector matching the NVMe disk: %v", err)
	}
	if len(rec.applied) != 2 {
		t.Errorf("refused configs reached the callback: %d calls, want 2", len(rec.applied))
	}
}

func configured(t *testing.T, p pki, mod func(*apid.Config)) (*apid.Server, string, *recorder) {
	t.Helper()
	rec := &recorder{}
	s, addr := start(t, rec, func(c *apid.Config) {
		c.Installed = true
		c.EtcdMembers = []*machine.EtcdMember{
			{Id: 0x1111, Hostname: "urban", PeerUrls: []string{"https://10.0.0.11:2380"}},
			{Id: 0x2222, Hostname: "lailah", PeerUrls: []string{"https://10.0.0.12:2380"}},
		}
		if mod != nil {
			mod(c)
		}
	})
	cfg, err := loadConfig(p.cp)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	return s, addr, rec
}

func TestConfiguredTLS(t *testing.T) {
	p := newPKI(t, "/dev/nvme0n1")
	_, addr, rec := configured(t, p, nil)

	// No client certificate (talosctl --insecure).
	if _, err := insecure(t, addr).Version(ctx(t)); err == nil {
		t.Error("a client without a certificate got an answer")
	}
	// A client certificate from another cluster's CA.
	stranger := newPKI(t, "/dev/nvme0n1")
	tc := stranger.admin
	tc.Contexts[tc.Context].CA = p.admin.Contexts[p.admin.Context].CA // trusts the server
	if err := withConfig(t, tc, addr).Reset(ctx(t), false, true); err == nil {
		t.Error("a client certificate of another CA got an answer")
	}
	if len(rec.resets) != 0 {
		t.Errorf("refused clients reset the machine: %v", rec.resets)
	}
	// The right CA: the server certificate verifies for 127.0.0.1.
	if _, err := withConfig(t, p.admin, addr).Version(ctx(t)); err != nil {
		t.Errorf("admin: %v", err)
	}
}

func TestConfiguredRoles(t *testing.T) {
	p := newPKI(t, "/dev/nvme0n1")
	s, addr, rec := configured(t, p, nil)
	admin := withConfig(t, p.admin, addr)
	reader := withConfig(t, withRole(t, p, "os:reader"), addr)
	operator := withConfig(t, withRole(t, p, "os:operator"), addr)

	const image = "factory.talos.dev/installer/abc:v1.13.1"
	//lint:ignore SA1019 MachineService.Upgrade is what machinery's Client.Upgrade calls: under test
	if _, err := reader.Upgrade(ctx(t), image, false, false); status.Code(err) != codes.PermissionDenied {
		t.Errorf("reader upgrade: %v, want PermissionDenied", err)
	}
	if err := reader.Reset(ctx(t), true, true); status.Code(err) != codes.PermissionDenied {
		t.Errorf("reader reset: %v, want PermissionDenied", err)
	}
	if err := operator.Reset(ctx(t), true, true); status.Code(err) != codes.PermissionDenied {
		t.Errorf("operator reset: %v, want PermissionDenied", err)
	}
	if len(rec.upgrades)+len(rec.resets) != 0 {
		t.Fatalf("refused calls acted: %v %v", rec.upgrades, rec.resets)
	}

	//lint:ignore SA1019 MachineService.Upgrade is what machinery's Client.Upgrade calls: under test
	resp, err := admin.Upgrade(ctx(t), image, false, false)
	if err != nil {
		t.Fatalf("admin upgrade: %v", err)
	}
	if m := resp.GetMessages()[0]; m.GetAck() != "Upgrade request received" || m.GetActorId() == "" {
		t.Errorf("upgrade reply: %v", m)
	}
	err = admin.ResetGeneric(ctx(t), &machine.ResetRequest{
		Graceful: false, Reboot: true, Mode: machine.ResetRequest_SYSTEM_DISK,
		SystemPartitionsToWipe: []*machine.ResetPartitionSpec{{Label: "STATE", Wipe: true}, {Label: "EPHEMERAL", Wipe: true}},
	})
	if err != nil {
		t.Fatalf("admin reset: %v", err)
	}
	wantU := []upgradeRec{{Image: image, Reboot: true}}
	wantR := apid.Reset{Reboot: true, Mode: machine.ResetRequest_SYSTEM_DISK, SystemPartitions: []string{"STATE", "EPHEMERAL"}}
	if !slices.Equal(rec.upgrades, wantU) || len(rec.resets) != 1 || !resetEqual(rec.resets[0], wantR) {
		t.Errorf("handed over: %+v %+v", rec.upgrades, rec.resets)
	}
	// Talos's reset input checks.
	err = admin.ResetGeneric(ctx(t), &machine.ResetRequest{Mode: machine.ResetRequest_USER_DISKS, UserDisksToWipe: []string{"/dev/nvme0n1"}})
	if err == nil || !strings.Contains(err.Error(), "device /dev/nvme0n1 is the system disk") {
		t.Errorf("wipe the system disk as a user disk: %v", err)
	}

	// The lifecycle upgrade: progress, exit code 0, no reboot.
	stream, err := admin.LifecycleClient.Upgrade(ctx(t), &machine.LifecycleServiceUpgradeRequest{Source: &machine.InstallArtifactsSource{ImageName: image}})
	if err != nil {
		t.Fatal(err)
	}
	msgs, exit, err := drainUpgrade(stream)
	if err != nil || exit != 0 || len(rec.upgrades) != 2 || rec.upgrades[1] != (upgradeRec{Image: image, Progress: true}) {
		t.Errorf("lifecycle upgrade: exit %d, %v, handed over %+v", exit, err, rec.upgrades)
	}
	if want := []string{"starting upgrade: installer_image=" + image + ", disk=/dev/nvme0n1", "installing " + image}; !slices.Equal(msgs, want) {
		t.Errorf("lifecycle upgrade progress %q, want %q", msgs, want)
	}
	rs, err := reader.LifecycleClient.Upgrade(ctx(t), &machine.LifecycleServiceUpgradeRequest{Source: &machine.InstallArtifactsSource{ImageName: image}})
	if err == nil {
		_, err = rs.Recv() // a stream's error comes with its first message
	}
	if status.Code(err) != codes.PermissionDenied || len(rec.upgrades) != 2 {
		t.Errorf("reader lifecycle upgrade: %v, want PermissionDenied", err)
	}
	if err := operator.Reboot(ctx(t)); err != nil || rec.reboots != 1 {
		t.Errorf("operator reboot: %v (%d reboots)", err, rec.reboots)
	}

	// Version follows SetVersion; readers may ask.
	for _, v := range []string{"v1.13.0", "v1.13.1"} {
		s.SetVersion(v)
		resp, err := reader.Version(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.GetMessages()[0].GetVersion().GetTag(); got != v {
			t.Errorf("version %q, want %q", got, v)
		}
	}

	// etcd: list, remove, not found.
	members, err := reader.EtcdMemberList(ctx(t), &machine.EtcdMemberListRequest{})
	if err != nil || len(members.GetMessages()[0].GetMembers()) != 2 {
		t.Fatalf("member list: %v %v", members, err)
	}
	if err := reader.EtcdRemoveMemberByID(ctx(t), &machine.EtcdRemoveMemberByIDRequest{MemberId: 0x2222}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("reader removes a member: %v", err)
	}
	if err := admin.EtcdRemoveMemberByID(ctx(t), &machine.EtcdRemoveMemberByIDRequest{MemberId: 0x2222}); err != nil {
		t.Fatal(err)
	}
	if err := admin.EtcdRemoveMemberByID(ctx(t), &machine.EtcdRemoveMemberByIDRequest{MemberId: 0x2222}); status.Code(err) != codes.NotFound {
		t.Errorf("remove twice: %v, want NotFound", err)
	}
	if got := s.EtcdMembers(); len(got) != 1 || got[0].GetHostname() != "urban" {
		t.Errorf("members after remove: %v", got)
	}
	// Configured mode serves the same reads.
	if _, err := safe.StateListAll[*block.Disk](ctx(t), reader.COSI); err != nil {
		t.Errorf("reader lists disks: %v", err)
	}
}

// withSelector is cfg with machine.install.diskSelector.model instead of
// machine.install.disk.
func withSelector(t *testing.T, cfg []byte, model string) []byte {
	t.Helper()
	c, err := configloader.NewFromBytes(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var docs []docconfig.Document
	for _, d := range c.Documents() {
		d = d.Clone()
		if v, ok := d.(*v1alpha1.Config); ok {
			v.MachineConfig.MachineInstall.InstallDisk = ""
			v.MachineConfig.MachineInstall.InstallDiskSelector = &v1alpha1.InstallDiskSelector{Model: model}
		}
		docs = append(docs, d)
	}
	out, err := container.New(docs...)
	if err != nil {
		t.Fatal(err)
	}
	b, err := out.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func loadConfig(b []byte) (config.Provider, error) { return configloader.NewFromBytes(b) }

func resetEqual(a, b apid.Reset) bool {
	return a.Graceful == b.Graceful && a.Reboot == b.Reboot && a.Mode == b.Mode &&
		slices.Equal(a.UserDisks, b.UserDisks) && slices.Equal(a.SystemPartitions, b.SystemPartitions)
}

// drainUpgrade reads a LifecycleService upgrade stream to its end.
func drainUpgrade(stream grpc.ServerStreamingClient[machine.LifecycleServiceUpgradeResponse]) (msgs []string, exit int32, err error) {
	exit = -1
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return msgs, exit, nil
		}
		if err != nil {
			return msgs, exit, err
		}
		switch r := m.GetProgress().GetResponse().(type) {
		case *machine.LifecycleServiceInstallProgress_Message:
			msgs = append(msgs, r.Message)
		case *machine.LifecycleServiceInstallProgress_ExitCode:
			exit = r.ExitCode
		}
	}
}

// TestUpgradeFlow is talosctl v1.13's upgrade against the stand-in's API:
// ImageService.Pull (operators may, readers may not; a missing image is
// NotFound; the answer is the reference pinned to its digest), then
// LifecycleService.Upgrade of an image not pulled (Internal, as Talos's
// "not found in containerd store"), an installer failure (exit code 1
// and its message) and a success (exit code 0).
func TestUpgradeFlow(t *testing.T) {
	p := newPKI(t, "/dev/nvme0n1")
	const image = "factory.talos.dev/installer/abc:v1.13.1"
	const digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	var mu sync.Mutex
	pulled := map[string]bool{}
	_, addr, _ := configured(t, p, func(c *apid.Config) {
		c.OnPull = func(_ context.Context, ref string) (string, error) {
			if ref != image {
				return "", fmt.Errorf("%s: %w", ref, imagepull.ErrNotFound)
			}
			mu.Lock()
			defer mu.Unlock()
			pulled[ref] = true
			return "factory.talos.dev/installer/abc@" + digest, nil
		}
		c.OnUpgrade = func(_ context.Context, u apid.Upgrade) error {
			mu.Lock()
			defer mu.Unlock()
			switch {
			case !pulled[u.Image]:
				return fmt.Errorf("installer image %q %w", u.Image, apid.ErrNotPulled)
			case u.Image == image+"-broken":
				return errors.New("the installer image lacks usr/install/amd64/vmlinuz")
			}
			u.Progress("boot files written")
			return nil
		}
	})
	admin := withConfig(t, p.admin, addr)
	reader := withConfig(t, withRole(t, p, "os:reader"), addr)
	operator := withConfig(t, withRole(t, p, "os:operator"), addr)

	pull := func(c *client.Client, ref string) (string, error) {
		s, err := c.ImageClient.Pull(ctx(t), &machine.ImageServicePullRequest{ImageRef: ref})
		if err != nil {
			return "", err
		}
		name := ""
		for {
			m, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return name, nil
			}
			if err != nil {
				return name, err
			}
			name = m.GetName()
		}
	}
	if _, err := pull(reader, image); status.Code(err) != codes.PermissionDenied {
		t.Errorf("reader pulls: %v, want PermissionDenied", err)
	}
	if _, err := pull(operator, "factory.talos.dev/installer/abc:v9.9.9"); status.Code(err) != codes.NotFound {
		t.Errorf("pull of a missing image: %v, want NotFound", err)
	}
	upgrade := func(ref string) ([]string, int32, error) {
		s, err := admin.LifecycleClient.Upgrade(ctx(t), &machine.LifecycleServiceUpgradeRequest{Source: &machine.InstallArtifactsSource{ImageName: ref}})
		if err != nil {
			return nil, -1, err
		}
		return drainUpgrade(s)
	}
	if _, _, err := upgrade(image); status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "upgrade failed: installer image") {
		t.Errorf("upgrade before the pull: %v, want Internal", err)
	}
	if name, err := pull(operator, image); err != nil || name != "factory.talos.dev/installer/abc@"+digest {
		t.Errorf("pull: %q, %v", name, err)
	}
	mu.Lock()
	pulled[image+"-broken"] = true
	mu.Unlock()
	if msgs, exit, err := upgrade(image + "-broken"); err != nil || exit != 1 || len(msgs) == 0 || !strings.Contains(msgs[len(msgs)-1], "lacks usr/install") {
		t.Errorf("failing installer: exit %d, %v, messages %q", exit, err, msgs)
	}
	if msgs, exit, err := upgrade(image); err != nil || exit != 0 || msgs[len(msgs)-1] != "boot files written" {
		t.Errorf("upgrade: exit %d, %v, messages %q", exit, err, msgs)
	}
}
