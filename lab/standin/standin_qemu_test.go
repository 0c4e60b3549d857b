package standin_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	eventsapi "github.com/siderolabs/siderolink/api/events"
	sinkpkg "github.com/siderolabs/siderolink/pkg/events"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config"
	docconfig "github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/config/container"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	mtype "github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/config/types/cri"
	"github.com/siderolabs/talos/pkg/machinery/config/types/meta"
	"github.com/siderolabs/talos/pkg/machinery/config/types/network"
	"github.com/siderolabs/talos/pkg/machinery/config/types/v1alpha1"
	"github.com/siderolabs/talos/pkg/machinery/nethelpers"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/dotfile/rackboot/internal/netns"
	"github.com/dotfile/rackboot/internal/registrytest"
	"github.com/dotfile/rackboot/lab/standin"
	"github.com/dotfile/rackboot/lab/standin/installer"
	"github.com/dotfile/rackboot/lab/standin/marker"
	"github.com/dotfile/rackboot/lab/standin/report"
	"github.com/siderolabs/go-blockdevice/v2/partitioning/gpt"
)

const (
	vmMAC     = "52:54:00:aa:00:01"
	vmUUID    = "8a2f6c1e-5b7d-4c3a-9e1f-0d2b4a6c8e01"
	vmSerial  = "SN-STANDIN-1"
	vmName    = "standin-1"
	serverIP  = "10.99.0.1"
	clientIP  = "10.99.0.50"
	bootLimit = 4 * time.Minute
	// The config's installer image, served by a registry mirror (Debian's
	// docker-registry) on the server's address, as rackboot serve does.
	installerRef = "factory.talos.dev/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.13.0"
	mirrorAddr   = serverIP + ":5000"
)

// TestBootInQEMU boots the stand-in image with QEMU (TCG) on a private
// network (a namespace with a bridge and a tap, a DHCP server, the config's
// HTTP server, a siderolink events sink and a registry mirror in it),
// three times: the first finds no installer image on the mirror and must
// fail its install without writing, the second must install (META on the
// NVMe disk only, kernel and initramfs from the pulled installer image),
// the third must see the marker and boot like an installed Talos.
func TestBootInQEMU(t *testing.T) {
	for _, tool := range []struct{ bin, pkg string }{
		{"qemu-system-x86_64", "qemu-system-x86"}, {"qemu-img", "qemu-utils"}, {"ip", "iproute2"},
	} {
		if _, err := exec.LookPath(tool.bin); err != nil {
			t.Fatalf("%s not found: apt-get install %s", tool.bin, tool.pkg)
		}
	}
	work := t.TempDir()
	ctx := context.Background()
	img := buildImage(t, filepath.Join(work, "image"))

	cfg := machineConfig(t)
	cfgSum := sha256.Sum256(cfg)

	// The private network.
	ns := netns.New(t, "standin")
	ns.AddBridge("br0", netip.MustParsePrefix(serverIP+"/24"))
	for _, args := range [][]string{
		{"tuntap", "add", "dev", "tap0", "mode", "tap"},
		{"link", "set", "tap0", "master", "br0"},
		{"link", "set", "tap0", "up"},
	} {
		if out, err := ns.Exec(ctx, "ip", args...); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	if r, err := ns.DefaultRoute(); err != nil || r != "" {
		t.Fatalf("namespace has a default route %q (%v)", r, err)
	}

	srv := startServers(t, ns, cfg)
	inst, err := installer.Image(filepath.Join(work, "image"), "amd64")
	if err != nil {
		t.Fatal(err)
	}
	push := startMirror(t, ns)

	// Disks: garbage everywhere, so that what changes is visible.
	disks := map[string]string{}
	for name, size := range map[string]string{"nvme": "2G", "sata1": "1G", "sata2": "1G"} {
		p := filepath.Join(work, name+".img")
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "raw", p, size).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img create: %v\n%s", err, out)
		}
		head := make([]byte, 2<<20)
		if _, err := rand.Read(head); err != nil {
			t.Fatal(err)
		}
		if err := writeAt(p, head, 0); err != nil {
			t.Fatal(err)
		}
		disks[name] = p
	}
	sataBefore := map[string][]byte{}
	for _, n := range []string{"sata1", "sata2"} {
		sataBefore[n] = readHead(t, disks[n])
	}

	// Boot 0: the mirror lacks the installer image (and skipFallback
	// leaves no other way): the install fails as Talos's does, after its
	// "not found" retries, before anything is written.
	nvmeBefore := readHead(t, disks["nvme"])
	rep, took := bootVM(t, ns, img, disks, srv, work, "boot0")
	t.Logf("boot 0 (no installer image): QEMU start to power-off %s, guest uptime at report %.1f s", took.Round(100*time.Millisecond), rep.Uptime)
	if rep.Result != report.ResultFailed || !strings.Contains(rep.Error, `failed to pull image "`+installerRef+`"`) ||
		!strings.Contains(rep.Error, "http://"+mirrorAddr+"/v2/") || rep.InstallerImage != installerRef || rep.InstallerDigest != "" {
		t.Errorf("boot 0: result %q error %q installer %q digest %q; want failed pulling %s from the mirror", rep.Result, rep.Error, rep.InstallerImage, rep.InstallerDigest, installerRef)
	}
	if seq := srv.sequences(); len(seq) != 2 || seq[0] != "install/START" || !strings.HasPrefix(seq[1], "install/NOOP/FATAL/") || !strings.Contains(seq[1], "failed to pull image") {
		t.Errorf("events after a failed pull: %q", seq)
	}
	if !bytes.Equal(readHead(t, disks["nvme"]), nvmeBefore) {
		t.Error("boot 0: the NVMe disk was written although the installer image could not be pulled")
	}
	srv.reset()
	push(installerRef, inst)

	// Boot 1: install.
	rep, took = bootVM(t, ns, img, disks, srv, work, "boot1")
	t.Logf("boot 1 (install): QEMU start to power-off %s, guest uptime at report %.1f s", took.Round(100*time.Millisecond), rep.Uptime)
	if rep.Result != report.ResultInstalled || rep.Error != "" {
		t.Fatalf("boot 1: result %q error %q", rep.Result, rep.Error)
	}
	if rep.InstallDisk != "/dev/nvme0n1" {
		t.Errorf("install disk %s, want /dev/nvme0n1", rep.InstallDisk)
	}
	if rep.Name != vmName || rep.MAC != vmMAC || rep.IP != clientIP || rep.UUID != vmUUID || rep.Serial != vmSerial {
		t.Errorf("identity: name %q mac %q ip %q uuid %q serial %q", rep.Name, rep.MAC, rep.IP, rep.UUID, rep.Serial)
	}
	if rep.ConfigSHA256 != hex.EncodeToString(cfgSum[:]) || rep.ConfigSource != "http" {
		t.Errorf("config %s from %q, served %x", rep.ConfigSHA256, rep.ConfigSource, cfgSum)
	}
	if !rep.SDUntouched {
		t.Error("report says an sd* disk was touched")
	}
	var devs []string
	for _, d := range rep.Disks {
		devs = append(devs, fmt.Sprintf("%s:%s:%s:%v", d.Dev, d.Transport, d.Serial, d.HasMeta))
	}
	// AHCI disks show no serial: sysfs has none for them, and Talos 1.13
	// asks udev's ata_id/scsi_id only for transports "ata" and "scsi", not
	// "sata" (DisksController.serialFromUdevdHelpers), so Talos sees none too.
	if got := strings.Join(devs, " "); got != "/dev/nvme0n1:nvme:NVME-STANDIN-1:true /dev/sda:sata::false /dev/sdb:sata::false" {
		t.Errorf("disks seen: %s", got)
	}
	// The query values Talos would have sent.
	q := srv.lastQuery()
	if q.Get("mac") != vmMAC || q.Get("uuid") != vmUUID || q.Get("serial") != vmSerial || q.Get("h") != "talos-10-99-0-50" {
		t.Errorf("config request query %v", q)
	}
	// On the host: META on the NVMe image only, SATA heads unchanged.
	if !hasMeta(t, disks["nvme"]) {
		t.Error("nvme.img has no META partition")
	}
	for _, n := range []string{"sata1", "sata2"} {
		if !bytes.Equal(readHead(t, disks[n]), sataBefore[n]) {
			t.Errorf("%s.img: first MiB changed", n)
		}
		if hasMeta(t, disks[n]) {
			t.Errorf("%s.img has META", n)
		}
	}
	seq := srv.sequences()
	if len(seq) != 2 || seq[0] != "install/START" || !strings.HasPrefix(seq[1], "install/NOOP/FATAL/") || !strings.Contains(seq[1], "unix.Reboot") {
		t.Errorf("events after install: %q", seq)
	}
	if rep.EventsSent != 2 {
		t.Errorf("report says %d events sent", rep.EventsSent)
	}
	// The install pulled the installer image from the mirror, all of it.
	wantDigest, _ := inst.Digest()
	raw, _ := inst.RawManifest()
	cfgBlob, _ := inst.RawConfigFile()
	layers, _ := inst.Layers()
	layerSize, _ := layers[0].Size()
	if rep.InstallerImage != installerRef || rep.InstallerDigest != wantDigest.String() || rep.InstallerEndpoint != "http://"+mirrorAddr ||
		rep.InstallerBytes != int64(len(raw)+len(cfgBlob))+layerSize {
		t.Errorf("installer %q digest %s from %q, %d bytes; want %s %s from http://%s, %d bytes",
			rep.InstallerImage, rep.InstallerDigest, rep.InstallerEndpoint, rep.InstallerBytes, installerRef, wantDigest, mirrorAddr, int64(len(raw)+len(cfgBlob))+layerSize)
	}

	// Boot 2: the marker is there, so the stand-in boots like installed Talos.
	srv.reset()
	rep, took = bootVM(t, ns, img, disks, srv, work, "boot2")
	t.Logf("boot 2 (installed): QEMU start to power-off %s, guest uptime at report %.1f s", took.Round(100*time.Millisecond), rep.Uptime)
	if rep.Result != report.ResultBooted || rep.InstallDisk != "/dev/nvme0n1" {
		t.Errorf("boot 2: result %q disk %q error %q", rep.Result, rep.InstallDisk, rep.Error)
	}
	if seq := srv.sequences(); strings.Join(seq, " ") != "boot/START boot/STOP" {
		t.Errorf("events after boot: %q", seq)
	}
	for _, n := range []string{"sata1", "sata2"} {
		if !bytes.Equal(readHead(t, disks[n]), sataBefore[n]) {
			t.Errorf("%s.img: first MiB changed on boot 2", n)
		}
	}
}

// bootVM runs QEMU in the namespace until the guest powers off, and
// returns its report.
func bootVM(t *testing.T, ns *netns.NS, img *standin.Result, disks map[string]string, srv *servers, work, tag string) (report.Report, time.Duration) {
	t.Helper()
	serial := filepath.Join(work, tag+"-serial.log")
	appendArgs := strings.Join([]string{
		"console=ttyS0", "talos.platform=metal", "panic=-1", "loglevel=4",
		"talos.config=http://" + srv.httpAddr + "/config?mac=${mac}&uuid=&serial=${serial}&h=${hostname}",
		"talos.events.sink=" + srv.sinkAddr,
	}, " ")
	args := []string{
		"-machine", "q35,graphics=off", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512",
		"-nodefaults", "-display", "none", "-no-reboot",
		"-serial", "file:" + serial,
		"-kernel", img.Kernel, "-initrd", img.Initramfs, "-append", appendArgs,
		"-smbios", "type=1,uuid=" + vmUUID + ",serial=" + vmSerial,
		"-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
		// romfile= drops the NIC's iPXE ROM: -kernel boots need no PXE.
		"-device", "e1000,netdev=n0,romfile=,mac=" + vmMAC,
		"-drive", "if=none,id=nv,format=raw,file=" + disks["nvme"],
		"-device", "nvme,drive=nv,serial=NVME-STANDIN-1",
		"-drive", "if=none,id=s1,format=raw,file=" + disks["sata1"],
		"-device", "ide-hd,drive=s1,bus=ide.0,serial=SATA-STANDIN-1",
		"-drive", "if=none,id=s2,format=raw,file=" + disks["sata2"],
		"-device", "ide-hd,drive=s2,bus=ide.1,serial=SATA-STANDIN-2",
	}
	t.Logf("%s: ip netns exec %s qemu-system-x86_64 %s", tag, ns.Name(), shellQuote(args))
	start := time.Now()
	p := ns.Start("qemu-system-x86_64", args...)
	select {
	case <-p.Done():
	case <-time.After(bootLimit):
		_ = p.Cmd.Process.Kill()
		<-p.Done()
		keepLog(t, serial)
		t.Fatalf("%s: no power-off within %s", tag, bootLimit)
	}
	took := time.Since(start)
	if p.Err() != nil {
		keepLog(t, serial)
		t.Fatalf("%s: qemu: %v\n%s", tag, p.Err(), p.Output())
	}
	log, err := os.ReadFile(serial)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := report.Find(log)
	if err != nil {
		keepLog(t, serial)
		t.Fatalf("%s: %v", tag, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			keepLog(t, serial)
		}
	})
	return rep, took
}

// keepLog copies a serial log out of the test's temporary directory.
func keepLog(t *testing.T, serial string) {
	dst := filepath.Join(os.TempDir(), fmt.Sprintf("standin-%d-%s", os.Getpid(), filepath.Base(serial)))
	b, err := os.ReadFile(serial)
	if err != nil {
		t.Logf("serial log %s: %v", serial, err)
		return
	}
	_ = os.WriteFile(dst, b, 0o644)
	tail := b
	if len(tail) > 6000 {
		tail = tail[len(tail)-6000:]
	}
	t.Logf("serial log kept at %s; tail:\n%s", dst, tail)
}

type servers struct {
	httpAddr, sinkAddr string

	mu     sync.Mutex
	query  map[string][]string
	events []sinkpkg.Event
}

func (s *servers) lastQuery() urlValues {
	s.mu.Lock()
	defer s.mu.Unlock()
	return urlValues(s.query)
}

func (s *servers) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = nil
	s.query = nil
}

// sequences lists the sequence events, de-duplicated by ID, as
// "seq/ACTION" or "seq/ACTION/CODE/message".
func (s *servers) sequences() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, e := range s.events {
		ev, ok := e.Payload.(*machine.SequenceEvent)
		if !ok || seen[e.ID] {
			continue
		}
		seen[e.ID] = true
		line := ev.GetSequence() + "/" + ev.GetAction().String()
		if ev.GetError() != nil {
			line += "/" + ev.GetError().GetCode().String() + "/" + ev.GetError().GetMessage()
		}
		out = append(out, line)
	}
	return out
}

func (s *servers) HandleEvent(_ context.Context, e sinkpkg.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, e)
	return nil
}

type urlValues map[string][]string

func (v urlValues) Get(k string) string {
	if len(v[k]) == 0 {
		return ""
	}
	return v[k][0]
}

// startServers opens, inside the namespace, a DHCP server on br0, the
// config's HTTP server and the events sink, all on 10.99.0.1.
func startServers(t *testing.T, ns *netns.NS, cfg []byte) *servers {
	t.Helper()
	s := &servers{}
	var (
		dhcp     *server4.Server
		httpLn   net.Listener
		sinkLn   net.Listener
		leaseMAC = mustMAC(vmMAC)
	)
	err := ns.Run(func() error {
		var err error
		dhcp, err = server4.NewServer("br0", &net.UDPAddr{IP: net.IPv4zero, Port: 67}, func(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
			reply, ok := dhcpReply(m, leaseMAC)
			if !ok {
				return
			}
			dst := &net.UDPAddr{IP: net.IPv4bcast, Port: 68}
			if _, err := conn.WriteTo(reply.ToBytes(), dst); err != nil {
				t.Logf("dhcp reply: %v", err)
			}
		})
		if err != nil {
			return fmt.Errorf("dhcp server: %w", err)
		}
		if httpLn, err = net.Listen("tcp", serverIP+":0"); err != nil {
			return err
		}
		sinkLn, err = net.Listen("tcp", serverIP+":0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	go dhcp.Serve() //nolint:errcheck
	t.Cleanup(func() { dhcp.Close() })

	mux := http.NewServeMux()
	mux.HandleFunc("GET /config", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.query = r.URL.Query()
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/yaml")
		_, _ = w.Write(cfg)
	})
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(httpLn) //nolint:errcheck
	t.Cleanup(func() { hs.Close() })
	s.httpAddr = httpLn.Addr().String()

	gs := grpc.NewServer()
	eventsapi.RegisterEventSinkServiceServer(gs, sinkpkg.NewSink(s, []proto.Message{&machine.SequenceEvent{}}))
	go gs.Serve(sinkLn) //nolint:errcheck
	t.Cleanup(gs.Stop)
	s.sinkAddr = sinkLn.Addr().String()
	return s
}

// startMirror runs Debian's docker-registry on mirrorAddr in the namespace
// (the config mirrors factory.talos.dev to it, skipFallback: nothing else
// is reachable); push puts an image there as ref (a factory.talos.dev
// reference).
func startMirror(t *testing.T, ns *netns.NS) (push func(ref string, img v1.Image)) {
	t.Helper()
	if _, err := os.Stat(registrytest.Binary); err != nil {
		t.Fatalf("%s not found: apt-get install docker-registry", registrytest.Binary)
	}
	conf, _, err := registrytest.Config(t.TempDir(), mirrorAddr, registrytest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := ns.Start(registrytest.Binary, "serve", conf)
	// The host's side reaches the namespace through sockets opened in it.
	tr := &http.Transport{Proxy: nil, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Run(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://" + mirrorAddr + "/v2/")
		if err == nil {
			resp.Body.Close()
			break
		}
		select {
		case <-p.Done():
			t.Fatalf("docker-registry exited: %v\n%s", p.Err(), p.Output())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry on %s not ready: %v\n%s", mirrorAddr, err, p.Output())
		}
	}
	return func(image string, img v1.Image) {
		t.Helper()
		ref, err := name.ParseReference(strings.Replace(image, "factory.talos.dev", mirrorAddr, 1), name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img, remote.WithTransport(tr)); err != nil {
			t.Fatalf("push the installer image to the mirror: %v", err)
		}
	}
}

// dhcpReply answers the VM's DISCOVER with an OFFER and its REQUEST with
// an ACK for 10.99.0.50/24; no router, so nothing can leave.
func dhcpReply(m *dhcpv4.DHCPv4, mac net.HardwareAddr) (*dhcpv4.DHCPv4, bool) {
	if !bytes.Equal(m.ClientHWAddr, mac) {
		return nil, false
	}
	var typ dhcpv4.MessageType
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		typ = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		typ = dhcpv4.MessageTypeAck
	default:
		return nil, false
	}
	reply, err := dhcpv4.NewReplyFromRequest(m,
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithYourIP(net.ParseIP(clientIP)),
		dhcpv4.WithServerIP(net.ParseIP(serverIP)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(serverIP))),
		dhcpv4.WithOption(dhcpv4.OptSubnetMask(net.CIDRMask(24, 32))),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(time.Hour)),
	)
	if err != nil {
		return nil, false
	}
	return reply, true
}

// machineConfig is a real Talos worker config from machinery, named
// standin-1, installing to the first NVMe disk.
func machineConfig(t *testing.T) []byte {
	t.Helper()
	cfg, _ := machineConfigAndTalosconfig(t, mtype.TypeWorker)
	return cfg
}

// machineConfigAndTalosconfig is machineConfig for a machine of typ with
// its admin talosconfig (the same secrets); certSANs go into
// machine.certSANs.
func machineConfigAndTalosconfig(t *testing.T, typ mtype.Type, certSANs ...string) ([]byte, *clientconfig.Config) {
	t.Helper()
	bundle, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersion1_13)
	if err != nil {
		t.Fatal(err)
	}
	in, err := generate.NewInput("standin", "https://10.99.0.10:6443", "1.36.0",
		generate.WithVersionContract(config.TalosVersion1_13), generate.WithSecretsBundle(bundle), generate.WithInstallImage(installerRef))
	if err != nil {
		t.Fatal(err)
	}
	gen, err := in.Config(typ)
	if err != nil {
		t.Fatal(err)
	}
	var docs []docconfig.Document
	for _, d := range gen.Documents() {
		d = d.Clone()
		switch d := d.(type) {
		case *v1alpha1.Config:
			d.MachineConfig.MachineInstall.InstallDisk = ""
			d.MachineConfig.MachineInstall.InstallDiskSelector = &v1alpha1.InstallDiskSelector{Type: "nvme"}
			d.MachineConfig.MachineCertSANs = certSANs
		case *network.HostnameConfigV1Alpha1:
			d.ConfigAuto = new(nethelpers.AutoHostnameKindOff)
			d.ConfigHostname = vmName
		}
		docs = append(docs, d)
	}
	// factory.talos.dev through the mirror only (Talos v1.13's document).
	mirror := cri.NewRegistryMirrorConfigV1Alpha1("factory.talos.dev")
	mirror.RegistryEndpoints = []cri.RegistryEndpoint{{EndpointURL: meta.URL{URL: &url.URL{Scheme: "http", Host: mirrorAddr}}}}
	mirror.RegistrySkipFallback = new(true)
	docs = append(docs, mirror)
	c, err := container.New(docs...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.EncodeBytes(encoder.WithComments(encoder.CommentsDisabled))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := in.Talosconfig()
	if err != nil {
		t.Fatal(err)
	}
	return out, tc
}

func hasMeta(t *testing.T, p string) bool {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev, err := gpt.DeviceFromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	ok, err := marker.Has(dev)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	return ok
}

func readHead(t *testing.T, p string) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1<<20)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func writeAt(p string, b []byte, off int64) error {
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(b, off); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func mustMAC(s string) net.HardwareAddr {
	m, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

func shellQuote(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " $&?;") {
			a = "'" + a + "'"
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

// buildImage builds the stand-in boot image from this checkout into dir
// (materializing the pinned kernel first when it is missing or stale).
func buildImage(t *testing.T, dir string) *standin.Result {
	t.Helper()
	root, err := standin.FindModuleRoot(".")
	if err != nil {
		t.Fatal(err)
	}
	kernelDir := filepath.Join(root, "lab", "standin", "build", "kernel")
	if why := standin.KernelStale(kernelDir); why != nil {
		t.Logf("materializing the kernel: %v", why)
		if err := standin.EnsureKernel(context.Background(), root, kernelDir, nil); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	img, err := standin.Build(context.Background(), standin.BuildOptions{KernelDir: kernelDir, OutDir: dir, ModuleRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image built in %s: initramfs %d bytes (init %d bytes), %d modules", time.Since(start).Round(time.Millisecond), img.InitramfsSize, img.InitSize, len(img.Modules))
	return img
}
