package profiles

import (
	"fmt"
	"slices"
	"strings"
	"time"

	coreconfig "github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"

	"github.com/dotfile/rackboot/registry"
)

// Image is one container image the rack's machines pull: what the registry
// mirror must hold for the rack to install and run with no internet.
type Image struct {
	// Ref is the normalized reference (registry.ParseRef): registry host,
	// repository, tag and/or digest, e.g. registry.k8s.io/pause:3.10.1,
	// docker.io/library/busybox:1.37.
	Ref string
	// Platforms are the OCI platforms the machines using the image need,
	// sorted: "linux/amd64", "linux/arm64".
	Platforms []string
	// Sources say who needs the image, for messages, in the order found:
	// "installer of machine amdusias-ii (machine.install.image)",
	// "Kubernetes v1.36.0 kube-apiserver (cluster.apiServer.image)".
	Sources []string
}

// SandboxImage is the pod sandbox (pause) image of the containerd that Talos
// v1.13 ships. Talos does not set it in its CRI config: it is containerd's
// built-in default, which Talos records only in its main module,
// github.com/siderolabs/talos pkg/images/list.go (DefaultSandboxImage, "the
// integration test verifies that our constant is accurate"), not in
// machinery. TestImagesMatchTalos checks this copy against that code.
const SandboxImage = "registry.k8s.io/pause:3.10.1"

// flannelImage and kubeNetworkPoliciesImage are built as Talos v1.13's
// pkg/images/list.go builds them, from machinery's constants.
var (
	flannelImage             = "ghcr.io/siderolabs/flannel:" + constants.FlannelVersion
	kubeNetworkPoliciesImage = "registry.k8s.io/networking/kube-network-policies:" + constants.KubeNetworkPoliciesVersion
)

// imagesSecretsTime dates the throwaway secrets Images generates configs
// with (images do not depend on secrets).
var imagesSecretsTime = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Images lists every container image the rack's machines pull to install
// Talos and run Kubernetes, at the rack's Talos and Kubernetes versions,
// with the platforms (from each machine's arch) that need it. The result is
// the same for the same rack file; it needs no network and no secrets (it
// generates configs with throwaway ones).
//
// The images are read from each machine's generated config (GenerateConfig:
// rack settings, then cluster and machine patches), through machinery's
// accessors, the way Talos v1.13 itself picks them, so a patch that changes
// an image is honoured:
//   - machine.install.image of every machine (the Image Factory installer of
//     its schematic; the installer pulls it: T internal/pkg/install/pull.go);
//   - machine.kubelet.image of every machine (T internal/app/machined/pkg/
//     system/services/kubelet.go);
//   - on control planes, cluster.etcd.image (T .../services/etcd.go), and
//     the static pods' cluster.apiServer/controllerManager/scheduler.image
//     (T internal/app/machined/pkg/controllers/k8s/control_plane.go);
//   - the bootstrap manifests a control plane renders
//     (control_plane.go, BootstrapManifestsConfigSpec), whose pods run on
//     every node: kube-proxy (cluster.proxy.image) when enabled, CoreDNS
//     (cluster.coreDNS.image) when enabled, and with the built-in flannel
//     CNI the flannel image and, when its network policies are enabled,
//     kube-network-policies, both from machinery constants as
//     T pkg/images/list.go builds them (flannel's pod uses the one image for
//     its init containers too: T .../k8stemplates/flannel.go);
//   - the pause sandbox image (SandboxImage) on every machine.
//
// T is github.com/siderolabs/talos v1.13.0. Talos's own pkg/images.List is
// not imported: it needs the main talos module, whose requirements would
// move about twenty of rackboot's modules.
//
// unlisted names what the configs ask Talos to deploy whose images cannot
// be known offline (a custom CNI's manifest URLs, extraManifests,
// inlineManifests): those images must be mirrored by hand.
func (r *Rack) Images() (images []Image, unlisted []string, err error) {
	b, err := newBundle(imagesSecretsTime)
	if err != nil {
		return nil, nil, fmt.Errorf("list images: make throwaway secrets: %w", err)
	}
	k8s := "Kubernetes v" + strings.TrimPrefix(r.Cluster.KubernetesVersion, "v")
	talos := "Talos " + r.Cluster.TalosVersion
	var l imageList
	allArch := map[string]bool{}
	var addons []func(platforms []string) error
	for i := range r.Machines {
		m := &r.Machines[i]
		arch := m.ArchOrDefault()
		allArch[arch] = true
		cfg, err := r.machineConfig(m, b)
		if err != nil {
			return nil, nil, fmt.Errorf("list images: %w", err)
		}
		add := func(ref, source string) error {
			return l.add(ref, []string{"linux/" + arch}, source)
		}
		if err := add(cfg.Machine().Install().Image(), "installer of machine "+m.Name+" (machine.install.image)"); err != nil {
			return nil, nil, err
		}
		if err := add(cfg.Machine().Kubelet().Image(), k8s+" kubelet (machine.kubelet.image)"); err != nil {
			return nil, nil, err
		}
		if m.Role != RoleControlPlane {
			continue
		}
		c := cfg.Cluster()
		for _, im := range []struct{ ref, source string }{
			{c.Etcd().Image(), "etcd (cluster.etcd.image)"},
			{c.APIServer().Image(), k8s + " kube-apiserver (cluster.apiServer.image)"},
			{c.ControllerManager().Image(), k8s + " kube-controller-manager (cluster.controllerManager.image)"},
			{c.Scheduler().Image(), k8s + " kube-scheduler (cluster.scheduler.image)"},
		} {
			if err := add(im.ref, im.source); err != nil {
				return nil, nil, err
			}
		}
		addons = append(addons, func(platforms []string) error {
			return l.addAddons(cfg, platforms, k8s, talos)
		})
		for _, u := range unlistedManifests(cfg) {
			if !slices.Contains(unlisted, u) {
				unlisted = append(unlisted, u)
			}
		}
	}
	// The manifests' pods (DaemonSets, CoreDNS) and the sandbox run on
	// every node.
	var platforms []string
	for a := range allArch {
		platforms = append(platforms, "linux/"+a)
	}
	for _, f := range addons {
		if err := f(platforms); err != nil {
			return nil, nil, err
		}
	}
	if len(r.Machines) > 0 {
		if err := l.add(SandboxImage, platforms, talos+" pod sandbox (containerd's pause image)"); err != nil {
			return nil, nil, err
		}
	}
	return l.images, unlisted, nil
}

// addAddons adds the images of the bootstrap manifests a control plane's
// config makes Talos deploy.
func (l *imageList) addAddons(cfg coreconfig.Provider, platforms []string, k8s, talos string) error {
	c := cfg.Cluster()
	var ims []struct{ ref, source string }
	if c.Proxy().Enabled() {
		ims = append(ims, struct{ ref, source string }{c.Proxy().Image(), k8s + " kube-proxy (cluster.proxy.image)"})
	}
	if c.CoreDNS().Enabled() {
		ims = append(ims, struct{ ref, source string }{c.CoreDNS().Image(), "CoreDNS (cluster.coreDNS.image)"})
	}
	if cni := c.Network().CNI(); cni.Name() == constants.FlannelCNI {
		ims = append(ims, struct{ ref, source string }{flannelImage, talos + " flannel CNI (cluster.network.cni)"})
		if cni.Flannel().KubeNetworkPoliciesEnabled() {
			ims = append(ims, struct{ ref, source string }{kubeNetworkPoliciesImage, talos + " flannel kube-network-policies (cluster.network.cni.flannel)"})
		}
	}
	for _, im := range ims {
		if err := l.add(im.ref, platforms, im.source); err != nil {
			return err
		}
	}
	return nil
}

// unlistedManifests names the manifests a control plane's config deploys
// whose images rackboot cannot list.
func unlistedManifests(cfg coreconfig.Provider) []string {
	c := cfg.Cluster()
	var out []string
	switch cni := c.Network().CNI(); cni.Name() {
	case constants.FlannelCNI:
	case constants.NoneCNI:
		out = append(out, "the images of the CNI you deploy yourself (cluster.network.cni.name: none)")
	default:
		for _, u := range cni.URLs() {
			out = append(out, fmt.Sprintf("the images of CNI manifest %s (cluster.network.cni.urls)", u))
		}
	}
	for _, u := range c.ExtraManifestURLs() {
		out = append(out, fmt.Sprintf("the images of extra manifest %s (cluster.extraManifests)", u))
	}
	for _, im := range c.InlineManifests() {
		out = append(out, fmt.Sprintf("the images of inline manifest %q (cluster.inlineManifests)", im.Name()))
	}
	return out
}

// imageList gathers images by normalized reference, in the order first
// found.
type imageList struct {
	images []Image
	index  map[string]int
}

func (l *imageList) add(ref string, platforms []string, source string) error {
	if ref == "" {
		return fmt.Errorf("list images: %s names no image", source)
	}
	n, err := registry.ParseRef(ref)
	if err != nil {
		return fmt.Errorf("list images: %s: %w", source, err)
	}
	key := n.String()
	if l.index == nil {
		l.index = map[string]int{}
	}
	i, ok := l.index[key]
	if !ok {
		i = len(l.images)
		l.index[key] = i
		l.images = append(l.images, Image{Ref: key})
	}
	im := &l.images[i]
	for _, p := range platforms {
		if !slices.Contains(im.Platforms, p) {
			im.Platforms = append(im.Platforms, p)
		}
	}
	slices.Sort(im.Platforms)
	if !slices.Contains(im.Sources, source) {
		im.Sources = append(im.Sources, source)
	}
	return nil
}
