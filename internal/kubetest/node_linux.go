package kubetest

// A real node for an Env: a private containerd (CRI) and a real kubelet
// v1.35.8 (scripts/kubetest-build.sh builds it), both inside a network
// namespace the test made and a private mount namespace this file makes.
//
//	ns := netns.New(t, "node")
//	ns.AddBridge("br0", netip.MustParsePrefix("10.77.0.2/24"))
//	n := kubetest.StartNode(t, env, ns, "10.77.0.2", kubetest.WithMirror("10.77.0.2:5000", "ghcr.io"))
//
// What is not the machine's own, said here:
//   - Kernel tunables. A kubelet sets vm.overcommit_memory, vm.panic_on_oom,
//     kernel.panic, kernel.panic_on_oops and the root key quotas at start,
//     for the whole machine, or (protectKernelDefaults, as Talos runs it)
//     refuses to start when they differ. The test machine is shared, so the
//     node runs with protectKernelDefaults and sees, in its mount
//     namespace only, files holding the values Talos sets (bind-mounted
//     over /proc/sys/...): the host's settings are never touched.
//   - The pod sandbox image: no registry is reachable, so it is Kubernetes'
//     own pause (build/pause/linux/pause.c of the pinned module, compiled
//     by the build script) in a one-layer image imported into containerd.
//   - kube-proxy: the API server's Service address (10.0.0.1:443, the
//     "kubernetes" Service pods get in KUBERNETES_SERVICE_HOST) is a TCP
//     proxy in the namespace to the API server; so is the API server's own
//     loopback address, so the kubelet's kubeconfig is the Env's.
//   - OOM scores: the test machine drops CAP_SYS_RESOURCE, without which no
//     process may lower an oom_score_adj below 0, and runc fails to start a
//     pod sandbox at the -998 the CRI asks for ("can't get final child's PID
//     from pipe: EOF"); containerd's restrict_oom_score_adj (made for
//     rootless runs) keeps every score at or above its own.
// Mounts the kubelet and containerd make (volumes, rootfs overlays) stay in
// the private mount namespace and go with it.

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/internal/netns"
	"github.com/dotfile/rackboot/internal/tcpproxy"
)

// PauseImage is the pod sandbox image every node's containerd uses (see
// the file comment): Kubernetes' pause, not pulled but imported.
const PauseImage = "kubetest.invalid/pause:3.10.1"

// ServiceIP is the API server's address in the cluster (the first address
// of --service-cluster-ip-range), in the node's namespace.
const ServiceIP = "10.0.0.1"

// CNIBinDir is where Debian's containernetworking-plugins puts the plugins.
const CNIBinDir = "/usr/lib/cni"

// kernelDefaults are the tunables the kubelet checks
// (pkg/kubelet/cm/container_manager_linux.go setupKernelTunables), with
// the values it wants.
var kernelDefaults = map[string]string{
	"vm/overcommit_memory":      "1",
	"vm/panic_on_oom":           "0",
	"kernel/panic":              "10",
	"kernel/panic_on_oops":      "1",
	"kernel/keys/root_maxkeys":  "1000000",
	"kernel/keys/root_maxbytes": "25000000",
}

// fixedPaths are the host paths the node gets its own directory at.
var fixedPaths = []string{"/var/lib/kubelet", "/var/log/containers", "/var/lib/cni"}

// NodeOption changes a node.
type NodeOption func(*nodeSettings)

type nodeSettings struct {
	name       string
	mirror     string
	registries []string
	labels     map[string]string
	timeout    time.Duration
}

// WithNodeName names the node (default node1).
func WithNodeName(n string) NodeOption { return func(s *nodeSettings) { s.name = n } }

// WithMirror makes containerd pull every image of the given registries
// (ghcr.io, registry.k8s.io...) from a registry mirror at host:port over
// HTTP, through hosts.toml files like the ones Talos writes.
func WithMirror(hostPort string, registries ...string) NodeOption {
	return func(s *nodeSettings) { s.mirror, s.registries = hostPort, registries }
}

// WithNodeLabels labels the Node once it registered (as the cluster's
// admin: a kubelet may not set node-role.kubernetes.io/* itself).
func WithNodeLabels(l map[string]string) NodeOption { return func(s *nodeSettings) { s.labels = l } }

// WithNodeTimeout bounds the wait for the node's Ready (default 3 min).
func WithNodeTimeout(d time.Duration) NodeOption { return func(s *nodeSettings) { s.timeout = d } }

// Node is a running kubelet and containerd.
type Node struct {
	Name string
	IP   string // the node's InternalIP: a host-network pod's address
	// Dir holds the configs, the state of both and their logs
	// containerd.log, kubelet.log.
	Dir string
	// ReadyIn is how long it took from starting containerd to the Node's
	// Ready condition.
	ReadyIn time.Duration
	// Sock is containerd's socket (for ctr --address).
	Sock string

	t      testing.TB
	env    *Env
	ns     *netns.NS
	set    nodeSettings
	mntns  string // the bind-mounted mount namespace file
	cgroup string // the cgroup root (same path in every v1 hierarchy)
	// cgroupDirs are the cgroup directories cgroupRoot made, parents first.
	cgroupDirs []string
	proxies    []*tcpproxy.Proxy

	mu    sync.Mutex
	procs []*proc
}

// NodeRequirements returns an error naming what is missing to run a node,
// with the Debian package to install, or nil.
func NodeRequirements() error {
	if os.Geteuid() != 0 {
		return errors.New("a kubelet needs root: run the tests as root")
	}
	for _, tool := range []struct{ name, pkg string }{
		{"containerd", "containerd"}, {"ctr", "containerd"}, {"containerd-shim-runc-v2", "containerd"},
		{"runc", "runc"}, {"nsenter", "util-linux"}, {"unshare", "util-linux"}, {"mount", "mount"}, {"umount", "mount"},
	} {
		if _, err := exec.LookPath(tool.name); err != nil {
			return fmt.Errorf("%s not found: apt-get install %s", tool.name, tool.pkg)
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(CNIBinDir, p)); err != nil {
			return fmt.Errorf("CNI plugin %s not found in %s: apt-get install containernetworking-plugins", p, CNIBinDir)
		}
	}
	bin, err := BinDir()
	if err != nil {
		return err
	}
	for _, b := range []string{"kubelet", "pause"} {
		if fi, err := os.Stat(filepath.Join(bin, b)); err != nil || fi.Mode()&0o111 == 0 {
			return fmt.Errorf("%w: no executable %s in %s (%s overrides the directory)", ErrNoBinaries, b, bin, BinDirEnv)
		}
	}
	return nil
}

// StartNode starts containerd and a kubelet for env inside ns, the node's
// InternalIP being ip (an address ns already has), waits until the Node
// is Ready, and stops both at the end of the test (by PID), with every
// container they started. The test fails when that is not possible.
func StartNode(t testing.TB, env *Env, ns *netns.NS, ip string, opts ...NodeOption) *Node {
	t.Helper()
	set := nodeSettings{name: "node1", timeout: 3 * time.Minute}
	for _, o := range opts {
		o(&set)
	}
	if err := NodeRequirements(); err != nil {
		t.Fatalf("kubetest: %v", err)
	}
	// Short: containerd's socket path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "kn")
	if err != nil {
		t.Fatalf("kubetest: node directory: %v", err)
	}
	n := &Node{Name: set.name, IP: ip, Dir: dir, Sock: filepath.Join(dir, "c.sock"), t: t, env: env, ns: ns, set: set}
	t.Cleanup(n.stop)
	t0 := time.Now()
	for _, step := range []func() error{n.proxyAPI, n.mountNamespace, n.cgroupRoot, n.writeContainerdConfig, n.startContainerd, n.importPause, n.startKubelet} {
		if err := step(); err != nil {
			t.Fatalf("kubetest: node %s: %v", n.Name, err)
		}
	}
	if err := n.waitReady(); err != nil {
		t.Fatalf("kubetest: node %s: %v", n.Name, err)
	}
	n.ReadyIn = time.Since(t0)
	t.Logf("kubetest: node %s (kubelet %s, containerd) Ready in %v", n.Name, Version, n.ReadyIn.Round(time.Millisecond))
	return n
}

// proxyAPI makes the API server reachable inside the namespace at its own
// address and at ServiceIP:443.
func (n *Node) proxyAPI() error {
	api := strings.TrimPrefix(n.env.URL, "https://")
	if _, err := n.ns.Exec(context.Background(), "ip", "addr", "add", ServiceIP+"/32", "dev", "lo"); err != nil {
		return fmt.Errorf("add the Service address: %w", err)
	}
	for _, addr := range []string{api, net.JoinHostPort(ServiceIP, "443")} {
		var ln net.Listener
		if err := n.ns.Run(func() (err error) { ln, err = net.Listen("tcp", addr); return err }); err != nil {
			return fmt.Errorf("listen on %s in the node's namespace: %w", addr, err)
		}
		n.proxies = append(n.proxies, tcpproxy.Start(ln, api))
	}
	return nil
}

// mountNamespace makes the private mount namespace (a file bound to it, so
// that the processes can join it) and the kernel tunables' files in it.
func (n *Node) mountNamespace() error {
	n.mntns = filepath.Join(n.Dir, "mnt")
	if err := os.WriteFile(n.mntns, nil, 0o600); err != nil {
		return err
	}
	if out, err := exec.Command("unshare", "--mount="+n.mntns, "--propagation", "private", "true").CombinedOutput(); err != nil {
		n.mntns = ""
		return fmt.Errorf("make a mount namespace: %w: %s", err, bytes.TrimSpace(out))
	}
	// Paths the kubelet and containerd's CNI library use whatever their
	// configuration says (the device plugins' socket, the serving
	// certificate, the container log links, the CNI cache): the node's own
	// directories there, in its mount namespace. Only the empty mount
	// points are made on the host.
	for _, hp := range fixedPaths {
		own := filepath.Join(n.Dir, "host", strings.ReplaceAll(strings.Trim(hp, "/"), "/", "-"))
		if err := os.MkdirAll(own, 0o755); err != nil {
			return err
		}
		if err := os.MkdirAll(hp, 0o755); err != nil {
			return fmt.Errorf("make the mount point %s: %w", hp, err)
		}
		if out, err := n.inNS(false, "mount", "--bind", own, hp).CombinedOutput(); err != nil {
			return fmt.Errorf("give the node its own %s: %w: %s", hp, err, bytes.TrimSpace(out))
		}
	}
	sys := filepath.Join(n.Dir, "sysctl")
	for key, val := range kernelDefaults {
		f := filepath.Join(sys, strings.ReplaceAll(key, "/", "."))
		if err := os.MkdirAll(sys, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(f, []byte(val+"\n"), 0o644); err != nil {
			return err
		}
		if out, err := n.inNS(false, "mount", "--bind", "-o", "ro", f, "/proc/sys/"+key).CombinedOutput(); err != nil {
			return fmt.Errorf("show %s=%s to the kubelet: %w: %s", key, val, err, bytes.TrimSpace(out))
		}
	}
	return nil
}

// inNS is a command in the node's mount namespace (and network namespace
// with net).
func (n *Node) inNS(net bool, name string, args ...string) *exec.Cmd {
	a := []string{"--mount=" + n.mntns}
	if net {
		a = append(a, "--net="+n.ns.Path())
	}
	cmd := exec.Command("nsenter", append(append(a, "--", name), args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// cgroupRoot makes the node's cgroup root below this process's own cgroup
// in every v1 hierarchy (the kubelet wants it to exist).
func (n *Node) cgroupRoot() error {
	own, err := ownCgroups()
	if err != nil {
		return err
	}
	var r [4]byte
	_, _ = rand.Read(r[:])
	// The memory hierarchy is where the sandbox nests this process; every
	// hierarchy gets the same path (the cgroupfs driver uses one path).
	n.cgroup = filepath.Join(own["memory"], "kubetest-"+hex.EncodeToString(r[:]))
	for _, m := range cgroupMounts() {
		d := m
		for _, part := range strings.Split(strings.Trim(n.cgroup, "/"), "/") {
			d = filepath.Join(d, part)
			err := os.Mkdir(d, 0o755)
			if errors.Is(err, os.ErrExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("make cgroup %s: %w", d, err)
			}
			n.cgroupDirs = append(n.cgroupDirs, d)
			if err := inheritCpuset(d); err != nil {
				return err
			}
		}
	}
	return nil
}

// inheritCpuset gives a new cpuset cgroup its parent's CPUs and memory
// nodes: with cgroup.clone_children 0 (the default) it starts with none,
// and no process could join it or its children (runc's "can't get final
// child's PID from pipe: EOF"). Other hierarchies have no such files.
func inheritCpuset(dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read the parent's %s: %w", f, err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			return fmt.Errorf("write %s of %s: %w", f, dir, err)
		}
	}
	return nil
}

// ownCgroups reads /proc/self/cgroup: controller -> path.
func ownCgroups() (map[string]string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, fmt.Errorf("read this process's cgroups: %w", err)
	}
	out := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(l, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			out[c] = f[2]
		}
	}
	if out["memory"] == "" {
		return nil, errors.New("no v1 memory cgroup in /proc/self/cgroup: these node tests need cgroup v1 as on the test machines")
	}
	return out, nil
}

// cgroupMounts are the mount points of the hierarchies of a type: cgroup
// (v1, the default) or cgroup2.
func cgroupMounts(fsType ...string) []string {
	typ := "cgroup"
	if len(fsType) > 0 {
		typ = fsType[0]
	}
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 2 && f[2] == typ {
			out = append(out, f[1])
		}
	}
	return out
}

func (n *Node) writeContainerdConfig() error {
	d := n.Dir
	cfg := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = %[3]q
[ttrpc]
  address = %[4]q
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[5]q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[6]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = %[9]q
`, filepath.Join(d, "root"), filepath.Join(d, "state"), n.Sock, filepath.Join(d, "t.sock"), PauseImage,
		filepath.Join(d, "runc"), CNIBinDir, filepath.Join(d, "cni"), filepath.Join(d, "certs.d"))
	files := map[string]string{
		"containerd.toml": cfg,
		// Pods on the host network (all of rackboot's) need no CNI; the
		// runtime reports its network ready only with a configuration.
		"cni/10-kubetest.conflist": fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "kubetest", "plugins": [
  {"type": "bridge", "bridge": "kt0", "isGateway": true, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/24"}]], "dataDir": %q}}
]}
`, filepath.Join(d, "cni-ipam")),
	}
	for _, reg := range n.set.registries {
		files["certs.d/"+reg+"/hosts.toml"] = fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n",
			"https://"+reg, "http://"+n.set.mirror)
	}
	for f, body := range files {
		p := filepath.Join(d, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// start runs a command in both namespaces with its output in Dir/<name>.log.
func (n *Node) start(name, bin string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(filepath.Join(n.Dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := n.inNS(true, bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logf}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	n.mu.Lock()
	n.procs = append(n.procs, p)
	n.mu.Unlock()
	return p, nil
}

func (n *Node) startContainerd() error {
	p, err := n.start("containerd", "containerd", "--config", filepath.Join(n.Dir, "containerd.toml"))
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", n.Sock); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("containerd exited (%v):\n%s", p.err, n.tail("containerd"))
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd did not open %s in 30 s:\n%s", n.Sock, n.tail("containerd"))
		}
		time.Sleep(50 * time.Millisecond) // a real process starting: nothing to inject
	}
}

// importPause builds the sandbox image from the pause binary and imports it
// into containerd's k8s.io namespace (the CRI's).
func (n *Node) importPause() error {
	bin, err := BinDir()
	if err != nil {
		return err
	}
	img, err := pauseImage(filepath.Join(bin, "pause"))
	if err != nil {
		return err
	}
	ref, err := name.ParseReference(PauseImage)
	if err != nil {
		return err
	}
	tarPath := filepath.Join(n.Dir, "pause.tar")
	if err := tarball.WriteToFile(tarPath, ref, img); err != nil {
		return fmt.Errorf("write the pause image: %w", err)
	}
	out, err := n.inNS(true, "ctr", "--address", n.Sock, "--namespace", "k8s.io", "images", "import", tarPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ctr images import pause: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}

// pauseImage is a one-layer image holding the pause binary as /pause, its
// entrypoint.
func pauseImage(path string) (v1.Image, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pause: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "pause", Mode: 0o755, Size: int64(len(b)), Typeflag: tar.TypeReg}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(b); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Entrypoint = []string{"/pause"}
	cf.Config.User = "65535:65535"
	return mutate.ConfigFile(img, cf)
}

func (n *Node) kubeletConfig() string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]q
port: 10250
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://%[2]s
cgroupDriver: cgroupfs
cgroupsPerQOS: true
cgroupRoot: %[3]q
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: true
podLogsDir: %[4]q
resolvConf: ""
serializeImagePulls: false
registerNode: true
enforceNodeAllocatable: ["pods"]
evictionHard: {memory.available: "1%%", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 2s
syncFrequency: 5s
fileCheckFrequency: 5s
`, n.IP, n.Sock, n.cgroup, filepath.Join(n.Dir, "pod-logs"))
}

func (n *Node) startKubelet() error {
	bin, err := BinDir()
	if err != nil {
		return err
	}
	cfg := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(cfg, []byte(n.kubeletConfig()), 0o644); err != nil {
		return err
	}
	_, err = n.start("kubelet", filepath.Join(bin, "kubelet"),
		"--config="+cfg, "--kubeconfig="+n.env.Kubeconfig,
		"--root-dir="+filepath.Join(n.Dir, "kubelet"),
		"--hostname-override="+n.Name, "--node-ip="+n.IP, "--v=2")
	return err
}

// waitReady waits for the Node's Ready condition, labels it, and fails
// early when a process exits.
func (n *Node) waitReady() error {
	cs, err := kubernetes.NewForConfig(n.env.Config)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.set.timeout)
	defer cancel()
	last := "not registered yet"
	labelled := len(n.set.labels) == 0
	for {
		n.mu.Lock()
		procs := n.procs
		n.mu.Unlock()
		for _, p := range procs {
			select {
			case <-p.done:
				return fmt.Errorf("%s exited (%v); last lines of its log:\n%s", p.name, p.err, n.tail(p.name))
			default:
			}
		}
		node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err == nil {
			if !labelled {
				for k, v := range n.set.labels {
					if node.Labels == nil {
						node.Labels = map[string]string{}
					}
					node.Labels[k] = v
				}
				if _, err := cs.CoreV1().Nodes().Update(ctx, node, metav1.UpdateOptions{}); err == nil {
					labelled = true
				}
			}
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady {
					if c.Status == corev1.ConditionTrue && labelled {
						return nil
					}
					last = fmt.Sprintf("Ready=%s: %s", c.Status, c.Message)
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not Ready after %v (%s); last lines of kubelet.log:\n%s", n.set.timeout, last, n.tail("kubelet"))
		case <-time.After(200 * time.Millisecond): // polling a real API server
		}
	}
}

func (n *Node) tail(name string) string { return tailFile(filepath.Join(n.Dir, name+".log"), 4000) }

// stop ends the kubelet, every container (through containerd, then by the
// PIDs containerd recorded), containerd, the proxies, the mount namespace
// and the cgroups; Dir is removed unless the test failed.
func (n *Node) stop() {
	n.mu.Lock()
	procs := n.procs
	n.procs = nil
	n.mu.Unlock()
	t0 := time.Now()
	var containerd *proc
	for _, p := range procs {
		if p.name == "containerd" {
			containerd = p
			continue
		}
		stopProc(p)
	}
	tKubelet := time.Since(t0)
	if containerd != nil {
		n.stopTasks()
		stopProc(containerd)
		n.killShims()
	}
	n.t.Logf("kubetest: node %s stopped in %v (kubelet %v)", n.Name, time.Since(t0).Round(time.Millisecond), tKubelet.Round(time.Millisecond))
	for _, p := range n.proxies {
		_ = p.Cut()
	}
	if n.mntns != "" {
		if out, err := exec.Command("umount", n.mntns).CombinedOutput(); err != nil {
			n.t.Errorf("kubetest: release the node's mount namespace: %v: %s", err, bytes.TrimSpace(out))
		}
	}
	// In a hybrid host runc also makes the pods' cgroups in the v2
	// hierarchy, below the same root; then, deepest first, each directory
	// cgroupRoot made with what the kubelet made in it.
	if n.cgroup != "" {
		for _, m := range cgroupMounts("cgroup2") {
			if err := removeCgroupTree(filepath.Join(m, n.cgroup)); err != nil {
				n.t.Errorf("kubetest: remove the node's cgroups: %v", err)
			}
		}
	}
	for i := len(n.cgroupDirs) - 1; i >= 0; i-- {
		if err := removeCgroupTree(n.cgroupDirs[i]); err != nil {
			n.t.Errorf("kubetest: remove the node's cgroups: %v", err)
		}
	}
	if n.t.Failed() {
		n.t.Logf("kubetest: node %s: logs and state kept in %s", n.Name, n.Dir)
		return
	}
	_ = os.RemoveAll(n.Dir)
}

func stopProc(p *proc) {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
	p.log.Close()
}

// taskDirs are containerd's records of the CRI's running containers.
func (n *Node) taskDirs() []string {
	d, _ := filepath.Glob(filepath.Join(n.Dir, "state", "io.containerd.runtime.v2.task", "k8s.io", "*"))
	return d
}

// stopTasks kills and deletes every container through containerd, so that
// each shim exits and removes its socket.
func (n *Node) stopTasks() {
	for _, d := range n.taskDirs() {
		id := filepath.Base(d)
		_ = n.inNS(true, "ctr", "--address", n.Sock, "--namespace", "k8s.io", "tasks", "kill", "--signal", "SIGKILL", id).Run()
	}
	for _, d := range n.taskDirs() {
		id := filepath.Base(d)
		for try := 0; try < 50; try++ {
			// The CRI deletes a task once it exited: "not found" is done.
			out, err := n.inNS(true, "ctr", "--address", n.Sock, "--namespace", "k8s.io", "tasks", "delete", id).CombinedOutput()
			if err == nil || bytes.Contains(out, []byte("not found")) {
				break
			}
			time.Sleep(100 * time.Millisecond) // the killed process being reaped
		}
	}
}

// killShims kills, by the PIDs containerd wrote, any container process or
// shim left after stopTasks.
func (n *Node) killShims() {
	for _, d := range n.taskDirs() {
		for _, f := range []string{"init.pid", "shim.pid"} {
			b, err := os.ReadFile(filepath.Join(d, f))
			if err != nil {
				continue
			}
			var pid int
			if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 1 {
				n.t.Logf("kubetest: node %s: killing %s %d left by containerd", n.Name, f, pid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// removeCgroupTree removes a cgroup directory and its children, deepest
// first (cgroup directories are removed with rmdir, never their files).
func removeCgroupTree(root string) error {
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		var rerr error
		for try := 0; try < 50; try++ {
			if rerr = syscall.Rmdir(dirs[i]); rerr == nil || errors.Is(rerr, syscall.ENOENT) {
				rerr = nil
				break
			}
			time.Sleep(100 * time.Millisecond) // processes leaving the cgroup
		}
		if rerr != nil {
			return fmt.Errorf("rmdir %s: %w", dirs[i], rerr)
		}
	}
	return nil
}

// WaitPod waits until the pod is Running with every container ready and
// returns it; the test fails when it ends (Succeeded, Failed) or the time
// is up, with the pod's status and events.
func WaitPod(t testing.TB, cs kubernetes.Interface, ns, name string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	return waitPod(t, cs, ns, name, timeout, func(p *corev1.Pod) (bool, error) {
		switch p.Status.Phase {
		case corev1.PodRunning:
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
					return true, nil
				}
			}
		case corev1.PodSucceeded, corev1.PodFailed:
			return false, fmt.Errorf("pod %s/%s ended: %s", ns, name, p.Status.Phase)
		}
		return false, nil
	})
}

// WaitPodDone waits until the pod Succeeded or Failed and returns it.
func WaitPodDone(t testing.TB, cs kubernetes.Interface, ns, name string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	return waitPod(t, cs, ns, name, timeout, func(p *corev1.Pod) (bool, error) {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed, nil
	})
}

func waitPod(t testing.TB, cs kubernetes.Interface, ns, name string, timeout time.Duration, done func(*corev1.Pod) (bool, error)) *corev1.Pod {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var p *corev1.Pod
	var err error
	for {
		p, err = cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			ok, derr := done(p)
			if ok {
				return p
			}
			if derr != nil {
				err = derr
				break
			}
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("pod %s/%s not there after %v (%v)", ns, name, timeout, err)
			break
		}
		time.Sleep(200 * time.Millisecond) // polling a real API server
	}
	var b strings.Builder
	if p != nil {
		fmt.Fprintf(&b, "phase %s", p.Status.Phase)
		for _, c := range p.Status.ContainerStatuses {
			fmt.Fprintf(&b, "; container %s: %+v", c.Name, c.State)
		}
	}
	if ev, eerr := cs.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + name}); eerr == nil {
		for _, e := range ev.Items {
			fmt.Fprintf(&b, "\n  event %s %s: %s", e.Type, e.Reason, e.Message)
		}
	}
	t.Fatalf("kubetest: %v; %s", err, b.String())
	return nil
}
