//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/dotfile/rackboot/imager/bootloaders"
	"github.com/dotfile/rackboot/lab/standin/apid"
	"github.com/dotfile/rackboot/lab/standin/imagepull"
	"github.com/dotfile/rackboot/lab/standin/install"
	blkdev "github.com/siderolabs/go-blockdevice/v2/block"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"golang.org/x/sys/unix"
)

// standinVersion is what Version answers when the installer image's tag
// says nothing.
const standinVersion = "v1.13.0"

// actDelay lets a reply leave before the machine reboots or powers off
// (Talos acts in the background after answering, too).
const actDelay = time.Second

// startAPI serves Talos's API on :50000 (maintenance mode without cfg)
// for the rest of the boot; a control plane also serves trustd on :50001,
// a worker serves its API once trustd signed its certificate. installDisk
// is "" before an install.
func (m *machine) startAPI(ctx context.Context, installDisk string, cfg config.Provider) (*apid.Server, <-chan []byte, error) {
	inv, err := apid.ReadInventory("/")
	if err != nil {
		return nil, nil, err
	}
	addrs := localAddrs()
	applied := make(chan []byte, 1)
	c := apid.Config{
		Log: m.log.With("service", "apid"), Version: standinVersion, Inventory: inv,
		Addresses: addrs, Hostname: m.rep.Name, Installed: installDisk != "", SystemDisk: installDisk,
		OnApply: func(_ context.Context, _ config.Provider, raw []byte) error {
			select {
			case applied <- raw:
				return nil
			default:
				return errors.New("a machine config is already being applied")
			}
		},
		OnPull: func(ctx context.Context, ref string) (string, error) {
			return m.pull(ctx, cfg, ref)
		},
		OnUpgrade: func(ctx context.Context, u apid.Upgrade) error {
			m.log.Info("upgrade requested", "image", u.Image, "reboot", u.Reboot)
			if !u.Reboot {
				// LifecycleService: the image ImageService.Pull fetched,
				// installed while the client waits; the client reboots.
				a := m.pulledImage(u.Image)
				if a == nil {
					return fmt.Errorf("installer image %q %w", u.Image, apid.ErrNotPulled)
				}
				// Detached: a client that goes away must not stop the write
				// half way through the ESP.
				return m.upgrade(context.WithoutCancel(ctx), installDisk, u.Image, a, u.Progress)
			}
			// MachineService: Talos pulls and validates the image before
			// it answers, then upgrades and reboots in the background.
			a, res, err := m.pullImage(ctx, cfg, u.Image)
			if err != nil {
				return err
			}
			m.log.Info("installer image validated", "image", u.Image, "digest", res.Digest)
			go func() {
				defer a.remove()
				if err := m.upgrade(context.Background(), installDisk, u.Image, a, nil); err != nil {
					m.log.Error("upgrade failed: the machine stays on its version", "image", u.Image, "err", err)
					return
				}
				powerAfter(unix.LINUX_REBOOT_CMD_RESTART)
			}()
			return nil
		},
		OnReboot: func(context.Context) error {
			go powerAfter(unix.LINUX_REBOOT_CMD_RESTART)
			return nil
		},
		OnReset: func(_ context.Context, r apid.Reset) error {
			m.log.Info("reset requested", "graceful", r.Graceful, "reboot", r.Reboot, "mode", r.Mode.String(), "user_disks", r.UserDisks, "system_partitions", r.SystemPartitions)
			go m.reset(installDisk, r)
			return nil
		},
	}
	if cfg != nil {
		if v := imageTag(cfg.Machine().Install().Image()); v != "" {
			c.Version = v
		}
		// An upgrade since the install names its image on STATE.
		if installDisk == "" {
			// Not installed: nothing was upgraded.
		} else if up, err := install.ReadUpgradedImagePath(installDisk); err != nil {
			m.log.Warn("read the upgraded image from STATE", "disk", installDisk, "err", err)
		} else if v := imageTag(up); v != "" {
			c.Version = v
			m.log.Info("running an upgraded installation", "image", up, "version", v)
		}
		if cfg.Machine().Type().IsControlPlane() && len(addrs) > 0 {
			c.EtcdMembers = []*machineapi.EtcdMember{selfMember(m.rep.Name, addrs[0])}
		}
	}
	srv, err := apid.New(c)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case cfg == nil:
	case cfg.Machine().Type().IsControlPlane():
		if err := srv.Configure(cfg); err != nil {
			return nil, nil, err
		}
		if err := m.startTrustd(ctx, cfg, addrs); err != nil {
			m.log.Error("trustd not served: the workers get no API certificate from this control plane", "err", err)
		}
	default:
		// A worker: apid starts once trustd signed its certificate.
		go m.workerAPI(ctx, srv, cfg)
		return srv, applied, nil
	}
	if err := m.serveAPI(ctx, srv); err != nil {
		return nil, nil, err
	}
	return srv, applied, nil
}

// serveAPI listens on the Talos API port and serves srv until ctx ends.
func (m *machine) serveAPI(ctx context.Context, srv *apid.Server) error {
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", apid.Port))
	if err != nil {
		return fmt.Errorf("listen on the Talos API port: %w", err)
	}
	go func() {
		if err := srv.Serve(ctx, ln); err != nil {
			m.log.Error("Talos API", "err", err)
		}
	}()
	return nil
}

// startTrustd serves trustd on a control plane (port 50001), which signs
// the workers' API certificates.
func (m *machine) startTrustd(ctx context.Context, cfg config.Provider, addrs []netip.Addr) error {
	td, err := apid.NewTrustd(apid.TrustdConfig{Log: m.log.With("service", "trustd"), Machine: cfg, Addresses: addrs, Hostname: m.rep.Name})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", apid.TrustdPort))
	if err != nil {
		return fmt.Errorf("listen on trustd's port: %w", err)
	}
	go func() {
		if err := td.Serve(ctx, ln); err != nil {
			m.log.Error("trustd", "err", err)
		}
	}()
	return nil
}

// workerAPI is a worker's apid: its certificate from trustd at the
// config's control plane endpoint (asked until a control plane signs it),
// then the API, and a new certificate every apid.WorkerRenewal, as Talos's
// APIController does.
func (m *machine) workerAPI(ctx context.Context, srv *apid.Server, cfg config.Provider) {
	if err := srv.ConfigureWorker(ctx, cfg); err != nil {
		m.log.Error("Talos API not served: no certificate from trustd", "err", err)
		return
	}
	if err := m.serveAPI(ctx, srv); err != nil {
		m.log.Error("Talos API not served", "err", err)
		return
	}
	t := time.NewTicker(apid.WorkerRenewal)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := srv.ConfigureWorker(ctx, cfg); err != nil {
			m.log.Warn("renew the API certificate from trustd", "err", err)
		}
	}
}

// maintenance waits, like Talos without a config, for a machine config
// applied through the maintenance API (talosctl apply-config --insecure).
func (m *machine) maintenance(ctx context.Context, nctx context.Context, nw **network) ([]byte, error) {
	if *nw == nil {
		var err error
		if *nw, err = bringUpNetwork(nctx, m.log, deviceWait); err != nil {
			return nil, err
		}
		wctx, cancel := context.WithTimeout(ctx, configTimeout)
		l, err := (*nw).primary().wait(wctx)
		cancel()
		if err != nil {
			return nil, err
		}
		m.rep.MAC, m.rep.IP = l.MAC, l.IP
	}
	_, applied, err := m.startAPI(nctx, "", nil)
	if err != nil {
		return nil, err
	}
	m.rep.ConfigSource = "maintenance"
	m.log.Info("maintenance mode: waiting for a machine config (talosctl apply-config --insecure)", "ip", m.rep.IP, "port", apid.Port)
	select {
	case b := <-applied:
		return b, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// reset wipes the install disk's partition table the way Talos's fast
// wipe does (the first and last MiB) and reboots or powers off.
func (m *machine) reset(installDisk string, r apid.Reset) {
	time.Sleep(actDelay)
	if installDisk != "" && r.Mode != machineapi.ResetRequest_USER_DISKS {
		if err := fastWipe(installDisk); err != nil {
			m.log.Error("reset: wipe the system disk", "disk", installDisk, "err", err)
		} else {
			m.log.Info("reset: system disk wiped", "disk", installDisk)
		}
	}
	for _, d := range r.UserDisks {
		if err := fastWipe(d); err != nil {
			m.log.Error("reset: wipe a user disk", "disk", d, "err", err)
		}
	}
	how := unix.LINUX_REBOOT_CMD_POWER_OFF
	if r.Reboot {
		how = unix.LINUX_REBOOT_CMD_RESTART
	}
	powerAfter(how)
}

func fastWipe(dev string) error {
	bd, err := blkdev.NewFromPath(dev, blkdev.OpenForWrite())
	if err != nil {
		return err
	}
	defer bd.Close() //nolint:errcheck
	return bd.FastWipe()
}

func powerAfter(how int) {
	time.Sleep(actDelay)
	unix.Sync()
	_ = unix.Reboot(how)
}

// localAddrs are the machine's global unicast addresses.
func localAddrs() []netip.Addr {
	var out []netip.Addr
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(p.IP); ok && ip.Unmap().IsGlobalUnicast() {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

// imageTag is an image reference's tag ("" for a digest or none).
func imageTag(image string) string {
	ref, err := imagepull.ParseRef(image)
	if err != nil || !strings.HasPrefix(ref.Tag, "v") {
		return ""
	}
	return ref.Tag
}

// selfMember is the control plane's own etcd member, as Talos's etcd
// would list it (the ID made up from the name: there is no etcd).
func selfMember(name string, ip netip.Addr) *machineapi.EtcdMember {
	h := fnv.New64a()
	h.Write([]byte(name))
	host := netip.AddrPortFrom(ip, 2380).String()
	client := netip.AddrPortFrom(ip, 2379).String()
	return &machineapi.EtcdMember{
		Id: h.Sum64(), Hostname: name,
		PeerUrls: []string{"https://" + host}, ClientUrls: []string{"https://" + client},
	}
}

// pull is ImageService.Pull: the image through the config's registry
// mirrors, kept (in /run) for a LifecycleService upgrade; an image pulled
// before is not pulled again (Talos: WithSkipIfAlreadyPulled). It answers
// the reference pinned to its digest.
func (m *machine) pull(ctx context.Context, cfg config.Provider, image string) (string, error) {
	if cfg == nil {
		return "", errors.New("the machine has no config: no registry mirrors to pull through")
	}
	ref, err := imagepull.ParseRef(image)
	if err != nil {
		return "", fmt.Errorf("failed to parse image reference: %w", err)
	}
	if a := m.pulledImage(image); a != nil && a.pinned != "" {
		return a.pinned, nil
	}
	a, res, err := m.pullImage(ctx, cfg, image)
	if err != nil {
		return "", err
	}
	pinned := ref.Host + "/" + ref.Repo + "@" + res.Digest
	a.pinned = pinned
	m.pulledMu.Lock()
	defer m.pulledMu.Unlock()
	if m.pulled == nil {
		m.pulled = map[string]*installerAssets{}
	}
	if old := m.pulled[image]; old != nil {
		old.remove()
	}
	m.pulled[image], m.pulled[pinned] = a, a
	m.log.Info("image pulled", "image", image, "pinned", pinned, "bytes", res.Bytes, "endpoint", res.Endpoint)
	return pinned, nil
}

func (m *machine) pulledImage(image string) *installerAssets {
	m.pulledMu.Lock()
	defer m.pulledMu.Unlock()
	return m.pulled[image]
}

// upgrade is Talos's installer in upgrade mode on the system disk: the
// image's kernel and initramfs replace the boot files on the ESP, STATE
// names the image (the next boot reports its version), META stays.
// progress, when not nil, gets the installer's messages.
func (m *machine) upgrade(ctx context.Context, disk, image string, a *installerAssets, progress func(string)) error {
	say := func(msg string) {
		m.log.Info("upgrade: " + msg)
		if progress != nil {
			progress(msg)
		}
	}
	if disk == "" {
		return errors.New("system disk not found")
	}
	loaders, err := bootloaders.FS()
	if err != nil {
		return err
	}
	loader, err := fs.ReadFile(loaders, bootloaders.SystemdBoot)
	if err != nil {
		return err
	}
	start := time.Now()
	say(fmt.Sprintf("writing the kernel and initramfs of %s to the EFI partition of %s", image, disk))
	u := install.Upgrade{Loader: loader, Kernel: a.kernel, Initramfs: a.initramfs, Cmdline: m.cmd.Installed(), Image: image}
	if err := install.UpgradePath(ctx, disk, u); err != nil {
		return fmt.Errorf("upgrade %s: %w", disk, err)
	}
	v := imageTag(image)
	if v == "" {
		v = "the image's version"
	}
	say(fmt.Sprintf("upgrade of %s done in %s: reboot to run %s", disk, time.Since(start).Round(time.Millisecond), v))
	return nil
}
