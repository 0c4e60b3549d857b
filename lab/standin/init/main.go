//go:build linux

// Command init is the stand-in boot image's /init: a small static Go PID 1
// that behaves like Talos where rackboot can observe it. It loads the
// kernel modules from /lib/modules, runs DHCP on every Ethernet link (no
// client identifier, as Talos), fetches talos.config= (variables filled
// like Talos; out of the link rackboot.lab.config_link= names, when given)
// or reads it from a metal-iso
// volume, validates it with machinery in metal mode, picks the install disk
// with the config's selector exactly as Talos does, pulls the installer
// image (machine.install.image) through the config's registry mirrors
// and installs the kernel and initramfs that image carries, with Talos's
// "installed" marker (a GPT with a 1 MiB META partition), reports
// install/boot sequence events to talos.events.sink, prints one
// RACKBOOT-STANDIN-REPORT line on the console and powers off.
//
// Build it with CGO_ENABLED=0; lab/standin.Build does.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dotfile/rackboot/imager/bootloaders"
	"github.com/dotfile/rackboot/lab/standin/cmdline"
	"github.com/dotfile/rackboot/lab/standin/disks"
	"github.com/dotfile/rackboot/lab/standin/efiboot"
	"github.com/dotfile/rackboot/lab/standin/events"
	"github.com/dotfile/rackboot/lab/standin/imagepull"
	"github.com/dotfile/rackboot/lab/standin/install"
	"github.com/dotfile/rackboot/lab/standin/kmsglog"
	"github.com/dotfile/rackboot/lab/standin/marker"
	"github.com/dotfile/rackboot/lab/standin/report"
	"github.com/dotfile/rackboot/lab/standin/volume"
	blkdev "github.com/siderolabs/go-blockdevice/v2/block"
	"github.com/siderolabs/go-blockdevice/v2/partitioning/gpt"
	machineapi "github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// Lab limits: Talos retries for hours, a rehearsal should not.
const (
	configTimeout = 2 * time.Minute
	attemptLimit  = 15 * time.Second
	maxDelay      = 5 * time.Second
	deviceWait    = 20 * time.Second
	eventsTimeout = 30 * time.Second
	// pullTimeout bounds the installer image pull (Talos: 20 min).
	pullTimeout = 3 * time.Minute
)

// defaultInstallerImage is Talos v1.13.0's images.DefaultInstallerImage
// (pkg/images: ghcr.io/siderolabs/installer:<version>), used when the
// config has no machine.install.image.
const defaultInstallerImage = "ghcr.io/siderolabs/installer:v1.13.0"

func main() {
	log := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{Level: slog.LevelInfo}))
	log.Info("rackboot stand-in init starting", "pid", os.Getpid())
	if err := mountBase(); err != nil {
		log.Error("mount base filesystems", "err", err)
	}
	// The ACPI power button powers off at any stage, as in Talos.
	startPowerButton(log)
	raw, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		log.Error("read kernel command line", "err", err)
	}
	cmd, err := cmdline.Parse(string(raw))
	if err != nil {
		log.Error("parse kernel command line", "err", err)
		cmd, _ = cmdline.Parse("")
	}

	m := &machine{log: log, cmd: cmd}
	rep := m.run(context.Background())
	rep.Uptime = uptime()
	// The line the host looks for: alone on its line, flushed before power off.
	fmt.Fprintf(os.Stdout, "\n%s\n", rep.Line())
	_ = os.Stdout.Sync()
	unix.Sync()
	if m.stayUp {
		// Running, like Talos: the network and the VIP stay until the
		// machine is switched off.
		forever()
	}

	how := unix.LINUX_REBOOT_CMD_POWER_OFF
	if v, _ := cmd.Get(cmdline.KeyReboot); v == "1" || v == "true" {
		how = unix.LINUX_REBOOT_CMD_RESTART
	}
	if err := unix.Reboot(how); err != nil {
		log.Error("power off", "err", err)
	}
	// PID 1 must not exit.
	forever()
}

// forever blocks PID 1 for good. Not with select {}: once no other
// goroutine is left, Go's runtime calls that a deadlock and exits, and the
// kernel panics ("Attempted to kill init!"), taking the VIP with it.
func forever() {
	for {
		time.Sleep(time.Hour)
	}
}

// machine is one boot of the stand-in.
type machine struct {
	log *slog.Logger
	cmd *cmdline.Cmdline
	rep report.Report
	pub *events.Publisher
	// sentBefore counts events acknowledged by an earlier sink.
	sentBefore int
	// stayUp: running from its own disk, the machine stays up (as Talos)
	// instead of powering off after its report.
	stayUp bool
	// efiVars: efivarfs, on a UEFI boot.
	efiVars *efiboot.Vars
	// pulled are the installer images ImageService.Pull fetched, by the
	// reference asked for and by the pinned one.
	pulledMu sync.Mutex
	pulled   map[string]*installerAssets
}

func (m *machine) run(ctx context.Context) report.Report {
	m.rep.Result = report.ResultFailed
	if err := m.boot(ctx); err != nil {
		m.log.Error("stand-in failed", "err", err)
		m.rep.Error = err.Error()
	}
	if m.pub != nil {
		m.rep.EventsSent = m.sentBefore + m.pub.Sent()
		_ = m.pub.Close()
	}
	return m.rep
}

func (m *machine) boot(ctx context.Context) error {
	if err := loadModules(m.log, "/lib/modules"); err != nil {
		return err
	}
	m.efi()
	m.rep.UUID = readTrim("/sys/class/dmi/id/product_uuid")
	m.rep.Serial = readTrim("/sys/class/dmi/id/product_serial")

	source, _ := m.cmd.Get(cmdline.KeyConfig)
	sink, hasSink := m.cmd.Get(cmdline.KeyEventsSink)
	// Talos brings its network up on every boot (DHCP on each link when the
	// config has none), an ISO boot included: it pulls its installer
	// image before installing.
	needNet := source != "" || hasSink
	if source == "" {
		// No token on this command line: record it (the installed
		// system's loader entry, when booted from disk).
		m.rep.Cmdline = m.cmd.Installed()
	}

	var vars cmdline.Vars
	vars.UUID, vars.Serial = m.rep.UUID, m.rep.Serial
	var nw *network
	// DHCP (and, once running, the VIP) lives until the boot ends.
	nctx, stop := context.WithCancel(ctx)
	defer func() { stop() }()
	if needNet {
		var err error
		if nw, err = bringUpNetwork(nctx, m.log, deviceWait); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, configTimeout)
		lease, err := nw.primary().wait(wctx)
		cancel()
		if err != nil {
			return err
		}
		m.rep.MAC, m.rep.IP = lease.MAC, lease.IP
		vars.MAC = lease.MAC
		vars.Hostname = lease.Hostname
		if vars.Hostname == "" {
			vars.Hostname = cmdline.DefaultHostname(lease.IP)
		}
		defer func() { m.rep.Links = nw.report() }()
	} else if mac, err := firstMAC(); err == nil {
		m.rep.MAC = mac
		vars.MAC = mac
	}
	if hasSink {
		if err := m.setSink(sink, "cmdline"); err != nil {
			return err
		}
	}

	// Talos mounts STATE before it looks anywhere else for its config
	// (AcquireController starts in stateDisk): probe the disks first.
	all, err := waitForDisks(m.log, deviceWait)
	if err != nil {
		return err
	}
	installed := ""
	for _, d := range all {
		has, err := hasMeta(d.DevPath)
		if err != nil {
			m.log.Warn("read partition table", "disk", d.DevPath, "err", err)
		}
		m.rep.Disks = append(m.rep.Disks, report.Disk{
			Dev: d.DevPath, Transport: d.Transport, Serial: d.Serial, Model: d.Model, Size: d.Size, HasMeta: has,
		})
		if has && installed == "" {
			installed = d.DevPath
		}
	}
	m.rep.SDUntouched = true

	var cfgBytes []byte
	platform := "metal"
	if installed != "" {
		b, err := install.ReadConfigPath(installed)
		switch {
		case err == nil:
			cfgBytes, platform = b, "state"
			m.rep.ConfigSource = "state"
			m.log.Info("machine config read from STATE", "disk", installed, "bytes", len(b))
		case errors.Is(err, install.ErrNoState):
		default:
			m.log.Warn("read the config from STATE", "disk", installed, "err", err)
		}
	}
	if cfgBytes == nil {
		switch source {
		case "":
			// Talos's maintenance mode: the config comes through the API.
			cfgBytes, err = m.maintenance(ctx, nctx, &nw)
		case cmdline.MetalISO:
			m.rep.ConfigSource = "metal-iso"
			cfgBytes, err = readMetalISO(ctx, m.log)
		default:
			m.rep.ConfigSource = "http"
			var dial *net.Dialer
			if dial, err = m.configDialer(ctx, nw); err != nil {
				return err
			}
			cfgBytes, m.rep.ConfigFrom, err = fetchConfig(ctx, m.log, source, vars, dial)
		}
		if err != nil {
			return err
		}
	}
	sum := sha256.Sum256(cfgBytes)
	m.rep.ConfigSHA256 = hex.EncodeToString(sum[:])

	cfg, err := m.acquire(ctx, cfgBytes, platform, all, installed == "")
	if err != nil {
		return err
	}
	m.rep.Name = machineName(cfg)

	// The config is active: its EventSinkConfig replaces the command
	// line's sink, its KmsgLogConfig documents add to talos.logging.kernel
	// (runtime/events_sink_config.go, kmsg_log_config.go).
	if ep := cfg.Runtime().EventsEndpoint(); ep != nil && *ep != "" {
		if err := m.setSink(*ep, "config"); err != nil {
			return err
		}
	}
	m.rep.KmsgLog = kmsgDestinations(m.cmd, cfg)

	if installed != "" {
		// Talos: a META partition anywhere means installed; run the boot
		// sequence.
		m.rep.InstallDisk = installed
		fromDisk := source == ""
		if fromDisk {
			// Booted from its own disk: no network came from the command
			// line; the machine config's network documents make it.
			if err := m.configureNetwork(nctx, cfg); err != nil {
				return err
			}
			// Talos's API, with the config's mutual TLS.
			if _, _, err := m.startAPI(nctx, installed, cfg); err != nil {
				m.log.Error("Talos API not served", "err", err)
			}
			// The kernel log goes to the KmsgLogConfig destinations
			// for as long as the machine runs (netboots do not stream).
			if len(m.rep.KmsgLog) > 0 {
				go func() {
					n, err := kmsglog.Stream(nctx, m.log, "/dev/kmsg", m.rep.KmsgLog)
					m.log.Warn("kernel log stream ended", "records", n, "err", err)
				}()
			}
		}
		m.publish(ctx, events.SequenceStart("boot"))
		m.publish(ctx, events.MachineStatus(machineapi.MachineStatusEvent_BOOTING))
		m.publish(ctx, events.SequenceStop("boot"))
		m.publish(ctx, events.MachineStatus(machineapi.MachineStatusEvent_RUNNING))
		m.rep.Result = report.ResultBooted
		if fromDisk {
			m.rep.Result = report.ResultRunning
			m.stayUp = true
			stop = func() {} // keep the network (and the VIP) up
		}
		return nil
	}

	m.publish(ctx, events.SequenceStart("install"))
	chosen, err := disks.Choose(cfg.Machine().Install(), all)
	if err == nil {
		err = disks.CheckInstallDisk(chosen.DevPath)
	}
	var assets *installerAssets
	if err == nil {
		m.rep.InstallDisk = chosen.DevPath
		// Talos's Install task: the disk first, then the installer
		// image, then the installer runs from it.
		assets, err = m.pullInstaller(ctx, cfg)
	}
	if err == nil {
		err = m.install(ctx, chosen.DevPath, cfgBytes, assets)
		assets.remove()
	}
	if err != nil {
		m.publish(ctx, events.SequenceFailed("install", err))
		return fmt.Errorf("install: %w", err)
	}
	// Re-read every disk: the marker must be on the install disk only.
	for i := range m.rep.Disks {
		d := &m.rep.Disks[i]
		has, err := hasMeta(d.Dev)
		if err != nil {
			return fmt.Errorf("verify %s: %w", d.Dev, err)
		}
		d.HasMeta = has
		if disks.IsSD(d.Dev) && has {
			m.rep.SDUntouched = false
		}
	}
	m.publish(ctx, events.InstallRebooting())
	m.rep.Result = report.ResultInstalled
	return nil
}

// acquire loads and validates the config as machined's AcquireController
// does (acquire.go): load, Validate in metal mode, then RuntimeValidate
// against the machine's resources, here the disks as block.Disk resources
// in a COSI state, so the install disk selector is checked by Talos's own
// code (v1alpha1_validation.go: "no disks matched the expression"). Any
// failure is published as a ConfigLoadErrorEvent with Talos's wording and
// ends the boot. RuntimeValidate runs before an install only (an installed
// system's disk selector no longer matters).
func (m *machine) acquire(ctx context.Context, b []byte, platform string, all []blockDisk, runtime bool) (config.Provider, error) {
	fail := func(err error) (config.Provider, error) {
		m.publish(ctx, events.ConfigLoadError(err))
		return nil, err
	}
	cfg, err := configloader.NewFromBytes(b)
	if err != nil {
		return fail(fmt.Errorf("failed to load config via platform %s: %w", platform, err))
	}
	warnings, err := cfg.Validate(metalMode{})
	for _, w := range warnings {
		m.log.Warn("machine config", "warning", w)
	}
	if err != nil {
		return fail(fmt.Errorf("failed to validate config acquired via platform %s: %w", platform, err))
	}
	if !runtime {
		return cfg, nil
	}
	st, err := disks.State(ctx, all)
	if err != nil {
		return nil, err
	}
	warnings, err = cfg.RuntimeValidate(ctx, st, metalMode{})
	for _, w := range warnings {
		m.log.Warn("machine config (runtime)", "warning", w)
	}
	if err != nil {
		return fail(fmt.Errorf("failed to runtime validate config acquired via platform %s: %w", platform, err))
	}
	return cfg, nil
}

// setSink points the publisher at addr (a new connection when it changes).
func (m *machine) setSink(addr, from string) error {
	if m.pub != nil && m.rep.EventSink == addr {
		m.rep.EventSinkFrom = from
		return nil
	}
	pub, err := events.New(addr, events.WithLogger(m.log), events.WithMaxDelay(maxDelay))
	if err != nil {
		return err
	}
	if m.pub != nil {
		m.sentBefore += m.pub.Sent()
		_ = m.pub.Close()
	}
	m.pub = pub
	m.rep.EventSink, m.rep.EventSinkFrom = addr, from
	m.log.Info("events sink", "endpoint", addr, "from", from)
	return nil
}

// kmsgDestinations are Talos's kernel log destinations: talos.logging.kernel=
// then the config's KmsgLogConfig URLs not already there.
func kmsgDestinations(cmd *cmdline.Cmdline, cfg config.Provider) []string {
	var out []string
	if v, ok := cmd.Get(cmdline.KeyLoggingKernel); ok && v != "" {
		out = append(out, v)
	}
	for _, u := range cfg.Runtime().KmsgLogURLs() {
		if !slices.Contains(out, u.String()) {
			out = append(out, u.String())
		}
	}
	return out
}

// installerAssets are the boot files unpacked from the installer image.
type installerAssets struct {
	dir, kernel, initramfs string
	// pinned is the reference pinned to the pulled digest.
	pinned string
}

func (a *installerAssets) remove() {
	if a != nil {
		os.RemoveAll(a.dir)
	}
}

// pullInstaller pulls the config's installer image as Talos does before
// an install (v1alpha1_sequencer_tasks.go Install →
// install.RunInstallerContainer → image.Pull: the CRI registry mirrors
// from the config, every digest verified, retried) and returns the kernel
// and initramfs its layer carries at Talos's installer paths
// (constants.KernelAssetPath, InitramfsAssetPath for this architecture).
// A failed pull fails the install, as in Talos.
func (m *machine) pullInstaller(ctx context.Context, cfg config.Provider) (*installerAssets, error) {
	image := cfg.Machine().Install().Image()
	if image == "" {
		image = defaultInstallerImage
	}
	m.rep.InstallerImage = image
	a, res, err := m.pullImage(ctx, cfg, image)
	if err != nil {
		return nil, err
	}
	m.rep.InstallerDigest, m.rep.InstallerEndpoint = res.Digest, res.Endpoint
	m.rep.InstallerBytes, m.rep.InstallerAttempts = res.Bytes, res.Attempts
	return a, nil
}

// pullImage pulls an installer image through the config's registry
// mirrors and finds its kernel and initramfs (see pullInstaller).
func (m *machine) pullImage(ctx context.Context, cfg config.Provider, image string) (*installerAssets, *imagepull.Result, error) {
	mirrors := imagepull.FromConfig(cfg.RegistryMirrorConfigs())
	if ref, err := imagepull.ParseRef(image); err == nil {
		eps := imagepull.Endpoints(mirrors, ref.Host)
		urls := make([]string, len(eps))
		for i, e := range eps {
			urls[i] = e.URL
		}
		m.log.Info(fmt.Sprintf("pulling %q", image), "endpoints", urls)
	}
	c := imagepull.New(imagepull.Config{
		Log: m.log, Arch: runtime.GOARCH, Timeout: pullTimeout,
		Backoff: func(n int) time.Duration { return events.Backoff(n, maxDelay) },
	})
	res, err := c.Pull(ctx, image, mirrors, "/run")
	if err != nil {
		return nil, nil, err
	}
	a := &installerAssets{
		dir:       res.Dir,
		kernel:    filepath.Join(res.Dir, strings.TrimPrefix(fmt.Sprintf(constants.KernelAssetPath, runtime.GOARCH), "/")),
		initramfs: filepath.Join(res.Dir, strings.TrimPrefix(fmt.Sprintf(constants.InitramfsAssetPath, runtime.GOARCH), "/")),
	}
	for _, p := range []string{a.kernel, a.initramfs} {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			a.remove()
			return nil, nil, fmt.Errorf("installer image %s (%s) lacks /%s", image, res.Digest, strings.TrimPrefix(p, res.Dir+"/"))
		}
	}
	return a, res, nil
}

// install writes the installed system on dev like Talos's installer for
// systemd-boot: ESP (systemd-boot, the kernel and initramfs from the
// installer image, a loader entry with this command line minus the netboot
// parameters), META, and STATE with the machine config.
func (m *machine) install(ctx context.Context, dev string, cfgBytes []byte, assets *installerAssets) error {
	start := time.Now()
	loaders, err := bootloaders.FS()
	if err != nil {
		return err
	}
	loader, err := fs.ReadFile(loaders, bootloaders.SystemdBoot)
	if err != nil {
		return err
	}
	p := install.Payload{
		Loader: loader, Kernel: assets.kernel, Initramfs: assets.initramfs,
		Cmdline: m.cmd.Installed(), Config: cfgBytes,
	}
	l, err := install.WritePath(ctx, dev, p)
	if err != nil {
		return err
	}
	for _, part := range l {
		m.rep.Partitions = append(m.rep.Partitions, fmt.Sprintf("%s:%d", part.Name, part.Size))
	}
	if err := m.bootEntry(dev); err != nil {
		return err
	}
	m.log.Info("installed", "disk", dev, "partitions", m.rep.Partitions, "cmdline", p.Cmdline, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// efi mounts efivarfs on a UEFI boot and records which boot option the
// firmware started (BootCurrent). A BIOS boot has no /sys/firmware/efi.
func (m *machine) efi() {
	if _, err := os.Stat("/sys/firmware/efi"); err != nil {
		return
	}
	if err := unix.Mount("efivarfs", efiboot.MountPoint, "efivarfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		m.log.Warn("mount efivarfs", "err", err)
		return
	}
	m.efiVars = &efiboot.Vars{Dir: efiboot.MountPoint}
	if cur, _, err := m.efiVars.Read("BootCurrent"); err != nil || len(cur) != 2 {
		m.log.Warn("read BootCurrent", "err", err)
	} else {
		name := fmt.Sprintf("Boot%04X", uint16(cur[0])|uint16(cur[1])<<8)
		m.rep.BootCurrent = name
		if b, _, err := m.efiVars.Read(name); err == nil {
			if o, err := efiboot.ParseLoadOption(b); err == nil {
				m.rep.BootCurrent = name + " " + o.String()
			}
		}
	}
	// The Talos entry an earlier install wrote, if any, and BootOrder:
	// what the firmware kept across the reboot.
	if entries, err := efiboot.Entries(*m.efiVars); err == nil {
		for n := range 0x10000 {
			if e, ok := entries[n]; ok && e.Description == efiboot.TalosEntry {
				m.rep.BootEntry = fmt.Sprintf("Boot%04X %s", n, e)
				break
			}
		}
	}
	if order, err := efiboot.BootOrder(*m.efiVars); err == nil {
		m.rep.BootOrder = efiboot.FormatOrder(order)
	}
	m.log.Info("UEFI boot", "current", m.rep.BootCurrent, "talos_entry", m.rep.BootEntry, "boot_order", m.rep.BootOrder)
}

// bootEntry writes Talos's UEFI boot entry for the ESP on dev (sdboot.go
// setup → CreateBootEntry): BootOrder stays as the firmware has it. A
// failure fails the install, as in Talos. BIOS machines get none.
func (m *machine) bootEntry(dev string) error {
	if m.efiVars == nil {
		return nil
	}
	esp, err := install.FindESPPath(dev)
	if err != nil {
		return err
	}
	r, err := efiboot.CreateBootEntry(*m.efiVars, efiboot.HardDrive{Number: esp.Number, Start: esp.StartLBA, Size: esp.SizeLBAs, GUID: esp.GUID}, efiboot.LoaderFile)
	if err != nil {
		return fmt.Errorf("failed to create boot entry: %w", err)
	}
	m.rep.BootEntry = r.Name() + " " + r.Entry.String()
	order, err := efiboot.BootOrder(*m.efiVars)
	if err != nil {
		m.log.Warn("read BootOrder", "err", err)
	}
	m.rep.BootOrder = efiboot.FormatOrder(order)
	m.log.Info("UEFI boot entry", "entry", m.rep.BootEntry, "removed", r.Removed, "boot_order", m.rep.BootOrder)
	return nil
}

// publish sends an event when a sink is configured; failures are logged
// (Talos keeps its events in a ring and goes on).
func (m *machine) publish(ctx context.Context, ev proto.Message) {
	if m.pub == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, eventsTimeout)
	defer cancel()
	if err := m.pub.Publish(ctx, ev); err != nil {
		m.log.Error("publish event", "type", fmt.Sprintf("%T", ev), "err", err)
	}
}

// blockDisk is Talos's view of a disk.
type blockDisk = block.DiskSpec

// metalMode is Talos's metal runtime mode for config validation.
type metalMode struct{}

func (metalMode) String() string        { return "metal" }
func (metalMode) RequiresInstall() bool { return true }
func (metalMode) InContainer() bool     { return false }

// machineName is the config's hostname (HostnameConfig document, or
// machine.network.hostname through machinery's compatibility view).
func machineName(cfg config.Provider) string {
	if h := cfg.NetworkHostnameConfig(); h != nil {
		return h.Hostname()
	}
	return ""
}

func mountBase() error {
	var errs []error
	for _, mt := range []struct {
		src, dst, fstype string
		flags            uintptr
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV},
	} {
		if err := os.MkdirAll(mt.dst, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := unix.Mount(mt.src, mt.dst, mt.fstype, mt.flags, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", mt.fstype, mt.dst, err))
		}
	}
	return errors.Join(errs...)
}

// loadModules loads dir/<name>.ko for each name in dir/order (dependency
// order, written by scripts/standin-kernel.sh).
func loadModules(log *slog.Logger, dir string) error {
	order, err := os.ReadFile(filepath.Join(dir, "order"))
	if err != nil {
		return fmt.Errorf("read module load order: %w", err)
	}
	for _, name := range strings.Fields(string(order)) {
		err := loadModule(filepath.Join(dir, name+".ko"))
		if errors.Is(err, unix.ENODEV) {
			// Nothing for it here (efivarfs on a BIOS boot).
			log.Info("module not needed", "module", name, "err", err)
			continue
		}
		if err != nil {
			return fmt.Errorf("load module %s: %w", name, err)
		}
	}
	log.Info("modules loaded", "count", len(strings.Fields(string(order))))
	return nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return err
	}
	return nil
}

// waitForDisks probes until the disk list has not changed for a second
// (device probing is asynchronous after the modules load), at most wait.
func waitForDisks(log *slog.Logger, wait time.Duration) ([]blockDisk, error) {
	deadline := time.Now().Add(wait)
	var last []blockDisk
	stableSince := time.Now()
	for {
		cur, err := disks.Probe("/sys/block", "/dev")
		if err != nil {
			return nil, err
		}
		names := func(ds []blockDisk) []string {
			out := make([]string, len(ds))
			for i, d := range ds {
				out[i] = d.DevPath + "/" + strconv.FormatUint(d.Size, 10) + "/" + d.Transport
			}
			return out
		}
		if !slices.Equal(names(cur), names(last)) {
			last = cur
			stableSince = time.Now()
		}
		if len(last) > 0 && time.Since(stableSince) >= time.Second {
			log.Info("disks", "found", names(last))
			return last, nil
		}
		if time.Now().After(deadline) {
			if len(last) == 0 {
				return nil, errors.New("no disks appeared")
			}
			return last, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func hasMeta(dev string) (bool, error) {
	bd, err := blkdev.NewFromPath(dev)
	if err != nil {
		return false, err
	}
	defer bd.Close() //nolint:errcheck
	gd, err := gpt.DeviceFromBlockDevice(bd)
	if err != nil {
		return false, err
	}
	return marker.Has(gd)
}

// configDialer is nil (the kernel's routes choose) unless the kernel
// command line has rackboot.lab.config_link=<MAC> and a link has that MAC
// (a machine without it ignores it): then the config is
// fetched from that link's DHCP address, out of that link (the lab's way to
// make a multi-NIC machine fetch its config from another NIC and address
// than the one that netbooted).
func (m *machine) configDialer(ctx context.Context, nw *network) (*net.Dialer, error) {
	v, ok := m.cmd.Get(cmdline.KeyConfigLink)
	if !ok || v == "" {
		return nil, nil
	}
	mac, err := net.ParseMAC(v)
	if err != nil {
		return nil, fmt.Errorf("%s=%s: not a MAC address", cmdline.KeyConfigLink, v)
	}
	if nw == nil {
		return nil, fmt.Errorf("%s=%s: the network is not up", cmdline.KeyConfigLink, v)
	}
	l := nw.byMAC(mac)
	if l == nil {
		// serve's --kernel-arg goes to every machine: the others ignore it.
		m.log.Warn("no link has the MAC of "+cmdline.KeyConfigLink+": routes choose", "mac", v, "links", nw.macs())
		return nil, nil
	}
	wctx, cancel := context.WithTimeout(ctx, configTimeout)
	defer cancel()
	lease, err := l.wait(wctx)
	if err != nil {
		return nil, fmt.Errorf("%s=%s: %w", cmdline.KeyConfigLink, v, err)
	}
	m.log.Info("config fetch bound to a link", "link", l.name, "mac", l.mac, "ip", lease.IP)
	return boundDialer(l, net.ParseIP(lease.IP)), nil
}

// fetchConfig downloads the machine config like Talos's pkg/download:
// variables re-filled on every attempt, any error or non-200 retried with
// exponential backoff (capped here), a timeout per attempt. dial, when not
// nil, makes the connections. It also returns the local address of the
// connection that got the config.
func fetchConfig(ctx context.Context, log *slog.Logger, raw string, vars cmdline.Vars, dial *net.Dialer) ([]byte, string, error) {
	ctx, cancel := context.WithTimeout(ctx, configTimeout)
	defer cancel()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	if dial != nil {
		tr.DialContext = dial.DialContext
	}
	client := &http.Client{Timeout: attemptLimit, Transport: tr}
	var lastErr error
	for attempt := 0; ; attempt++ {
		u, missing, err := cmdline.Populate(raw, vars)
		if err != nil {
			return nil, "", err
		}
		if len(missing) > 0 {
			log.Warn("talos.config variables without a value", "vars", missing)
		}
		// The URL holds a token: log its host only.
		log.Info("fetching machine config", "attempt", attempt+1, "host", hostOf(u))
		b, from, err := getOnce(ctx, client, u)
		if err == nil {
			log.Info("machine config fetched", "from", from, "bytes", len(b))
			return b, from, nil
		}
		lastErr = err
		delay := events.Backoff(attempt, maxDelay)
		log.Warn("config fetch failed", "err", err, "from", from, "retry_in", delay)
		select {
		case <-ctx.Done():
			return nil, from, fmt.Errorf("fetch machine config: %w (last error: %w)", ctx.Err(), lastErr)
		case <-time.After(delay):
		}
	}
}

// getOnce fetches u once; from is the connection's local address (host).
func getOnce(ctx context.Context, client *http.Client, u string) (_ []byte, from string, _ error) {
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		if host, _, err := net.SplitHostPort(info.Conn.LocalAddr().String()); err == nil {
			from = host
		}
	}}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodGet, u, nil)
	if err != nil {
		return nil, "", err
	}
	b, err := readResponse(client, req, u)
	return b, from, err
}

func readResponse(client *http.Client, req *http.Request, u string) ([]byte, error) {
	resp, err := client.Do(req)
	if err != nil {
		return nil, errors.New(strings.ReplaceAll(err.Error(), u, hostOf(u)))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("failed to download config, status code %d", resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return b, nil
}

func hostOf(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		rest := u[i+3:]
		if j := strings.IndexAny(rest, "/?"); j >= 0 {
			return rest[:j]
		}
		return rest
	}
	return "?"
}

// readMetalISO finds the volume labelled metal-iso (filesystem label or GPT
// partition name), mounts it read-only and reads /config.yaml.
func readMetalISO(ctx context.Context, log *slog.Logger) ([]byte, error) {
	deadline := time.Now().Add(deviceWait)
	for {
		found, err := volume.FindLabel("/sys/block", "/dev", cmdline.MetalISO)
		if err == nil {
			log.Info("metal-iso volume", "dev", found.DevPath(), "fs", found.FSType)
			return volume.ReadFile(found, "/run/metal-iso", "config.yaml")
		}
		if !errors.Is(err, volume.ErrNotFound) || time.Now().After(deadline) {
			return nil, fmt.Errorf("metal-iso: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func readTrim(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func uptime() float64 {
	f := strings.Fields(readTrim("/proc/uptime"))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// firstMAC is the hardware address of the first non-loopback link (by
// interface index), like Talos's FirstHardwareAddr.
func firstMAC() (string, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", err
	}
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 && len(i.HardwareAddr) == 6 {
			return i.HardwareAddr.String(), nil
		}
	}
	return "", errors.New("no network interface")
}
