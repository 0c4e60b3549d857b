package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/dotfile/rackboot/internal/containerdtest"
)

// pulledStore fills a store from a real docker-registry the way rackboot
// will: a multi-arch image for amd64+arm64 (s390x left out) as
// registry.k8s.io/multi:1.
func pulledStore(t *testing.T) (*Store, v1.ImageIndex, v1.Hash) {
	t.Helper()
	up := startUpstream(t)
	idx := multiArch(t, 64<<10, amd64, arm64, s390x)
	d := push(t, up, "multi:1", idx)
	s, err := Open(t.TempDir(), WithUpstream("registry.k8s.io", up))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pull(context.Background(), "registry.k8s.io/multi:1", []v1.Platform{amd64, {OS: "linux", Architecture: "arm64"}}, nil); err != nil {
		t.Fatal(err)
	}
	return s, idx, d
}

func childFor(t *testing.T, idx v1.ImageIndex, arch string) v1.Descriptor {
	t.Helper()
	im, _ := idx.IndexManifest()
	for _, c := range im.Manifests {
		if c.Platform.Architecture == arch {
			return c
		}
	}
	t.Fatalf("no %s child", arch)
	return v1.Descriptor{}
}

func run(t *testing.T, name string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	t.Logf("%s %s\n%s", name, strings.Join(args, " "), out)
	return out, err
}

// TestSkopeoThroughMirror: skopeo (path form, it cannot send ns) copies
// by tag and by digest, inspects, and is refused a push.
func TestSkopeoThroughMirror(t *testing.T) {
	skopeo := need(t, "skopeo", "skopeo")
	s, idx, idxDigest := pulledStore(t)
	m := startMirror(t, s)
	host := strings.TrimPrefix(m.url, "http://")
	src := "docker://" + host + "/registry.k8s.io/multi"
	amd := childFor(t, idx, "amd64")
	arm := childFor(t, idx, "arm64")
	s390 := childFor(t, idx, "s390x")
	tmp := t.TempDir()

	// By tag into a dir: (manifest kept as is), for this host's amd64.
	d1 := filepath.Join(tmp, "by-tag")
	if _, err := run(t, skopeo, "copy", "--src-tls-verify=false", "--override-os", "linux", "--override-arch", "amd64", src+":1", "dir:"+d1); err != nil {
		t.Fatal(err)
	}
	if got := fileDigest(t, filepath.Join(d1, "manifest.json")); got != amd.Digest.String() {
		t.Fatalf("copied manifest %s, want the amd64 child %s", got, amd.Digest)
	}
	// By the index digest, arm64 into an OCI layout.
	if _, err := run(t, skopeo, "copy", "--src-tls-verify=false", "--override-arch", "arm64", "--override-variant", "v8", src+"@"+idxDigest.String(), "oci:"+filepath.Join(tmp, "oci")+":multi"); err != nil {
		t.Fatal(err)
	}
	// The child manifest by its own digest.
	if _, err := run(t, skopeo, "copy", "--src-tls-verify=false", src+"@"+arm.Digest.String(), "dir:"+filepath.Join(tmp, "arm")); err != nil {
		t.Fatal(err)
	}
	// The s390x child was not pulled: not served.
	if out, err := run(t, skopeo, "copy", "--src-tls-verify=false", src+"@"+s390.Digest.String(), "dir:"+filepath.Join(tmp, "s390x")); err == nil {
		t.Fatal("skopeo copied the s390x image the store does not hold")
	} else if !strings.Contains(string(out), "manifest unknown") {
		t.Errorf("s390x refusal does not say manifest unknown")
	}
	// inspect --raw gives the upstream index byte for byte.
	out, err := exec.Command(skopeo, "inspect", "--tls-verify=false", "--raw", src+":1").Output()
	if err != nil || !bytes.Equal(out, rawOf(t, idx)) {
		t.Fatalf("skopeo inspect --raw: %v\n%s", err, out)
	}
	// A push is refused.
	if _, err := run(t, skopeo, "copy", "--dest-tls-verify=false", "dir:"+d1, "docker://"+host+"/registry.k8s.io/pushed:1"); err == nil {
		t.Fatal("skopeo pushed to the read-only mirror")
	}
	refused := false
	for _, e := range m.eventsCopy() {
		if e.Method != "GET" && e.Method != "HEAD" && e.Status == 405 {
			refused = true
		}
		if e.Via == "ns" {
			t.Errorf("skopeo sent ns? %+v", e)
		}
	}
	if !refused {
		t.Fatal("the mirror never answered 405 to skopeo's push")
	}
}

func fileDigest(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

// TestContainerdThroughMirror runs a private containerd and pulls with ctr
// through a hosts.toml like the one Talos writes: by tag and by digest,
// for amd64; containerd verifies every digest, and sends ns.
func TestContainerdThroughMirror(t *testing.T) {
	containerd := need(t, "containerd", "containerd")
	ctr := need(t, "ctr", "containerd")
	s, idx, idxDigest := pulledStore(t)
	m := startMirror(t, s)
	host := strings.TrimPrefix(m.url, "http://")

	// Short paths: unix socket paths are limited to 108 bytes.
	tmp, err := os.MkdirTemp("", "rbctr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	hostsDir := filepath.Join(tmp, "certs.d")
	os.MkdirAll(filepath.Join(hostsDir, "registry.k8s.io"), 0o755)
	os.WriteFile(filepath.Join(hostsDir, "registry.k8s.io", "hosts.toml"), []byte(fmt.Sprintf(`server = "https://registry.k8s.io"

[host."http://%s"]
  capabilities = ["pull", "resolve"]
`, host)), 0o644)

	sock := containerdtest.Start(t, containerd, tmp)
	pull := func(ref string) {
		t.Helper()
		if _, err := run(t, ctr, "--address", sock, "--namespace", "rackboot-test", "images", "pull",
			"--hosts-dir", hostsDir, "--platform", "linux/amd64", ref); err != nil {
			t.Fatalf("ctr pull %s: %v", ref, err)
		}
	}
	pull("registry.k8s.io/multi:1")
	pull("registry.k8s.io/multi@" + idxDigest.String())
	out, err := run(t, ctr, "--address", sock, "--namespace", "rackboot-test", "images", "ls")
	if err != nil || !strings.Contains(string(out), idxDigest.String()) {
		t.Fatalf("ctr images ls does not list %s: %v", idxDigest, err)
	}
	amd := childFor(t, idx, "amd64")
	sawNS, sawChild, blobs := false, false, 0
	for _, e := range m.eventsCopy() {
		if e.Status == 200 && e.Via == "ns" && e.Registry == "registry.k8s.io" {
			sawNS = true
		}
		if e.Digest == amd.Digest && e.Status == 200 {
			sawChild = true
		}
		if e.Kind == KindBlob && e.Status == 200 {
			blobs++
		}
	}
	if !sawNS || !sawChild || blobs < 3 {
		t.Fatalf("mirror events: ns seen %v, amd64 manifest served %v, %d blobs served; events %+v", sawNS, sawChild, blobs, m.eventsCopy())
	}
}
