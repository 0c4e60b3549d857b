package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/assetimage"
	"github.com/dotfile/rackboot/ociimage"
)

// handoffAssets builds the assets image (the boot files and the registry
// mirror's images, package assetimage) from the state directory and, unless
// dryRun, puts it into the laptop's image store, where the running serve's
// mirror serves it to the nodes. It returns its reference by digest for the
// Deployment's image volume, or "" (with a warning) when the cache is empty.
func handoffAssets(a *app, out io.Writer, dryRun bool) (string, error) {
	store, err := openImageStore(a)
	if err != nil {
		return "", err
	}
	created, err := ociimage.Epoch(os.Getenv)
	if err != nil {
		return "", err
	}
	b, err := assetimage.Build(assetimage.Config{AssetsDir: assetsDir(a), Images: store, Created: created})
	if errors.Is(err, assetimage.ErrEmpty) {
		fmt.Fprintf(out, "handoff: warning: %v; the replicas will serve no boot files and no images, keep the laptop's serve for netboots\n", err)
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("build the assets image (or pass --no-assets): %w", err)
	}
	if !dryRun {
		if err := assetimage.Put(store, b); err != nil {
			return "", err
		}
	}
	verb := "is in the laptop's registry mirror"
	if dryRun {
		verb = "would be put into the laptop's registry mirror"
	}
	fmt.Fprintf(out, "handoff: the assets image %s (%d boot file sets, %d images, %d MiB) %s\n",
		b.Ref(), len(b.Sets), len(b.Images), b.Bytes>>20, verb)
	return b.Ref(), nil
}

// checkImageVolumes refuses a cluster whose Kubernetes has the ImageVolume
// feature off by default (before 1.35: k8s.io/kubernetes
// pkg/features/kube_features.go), saying how to turn it on, or whose
// control planes run a containerd without image volumes (before 2.1).
func checkImageVolumes(ctx context.Context, cs kubernetes.Interface) error {
	if err := checkServerVersion(cs.Discovery()); err != nil {
		return err
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: "node-role.kubernetes.io/control-plane"})
	if err != nil {
		return fmt.Errorf("list the control-plane nodes: %w", err)
	}
	for _, n := range nodes.Items {
		if rt := n.Status.NodeInfo.ContainerRuntimeVersion; !runtimeHasImageVolumes(rt) {
			return fmt.Errorf("node %s runs %s, which cannot mount image volumes (containerd 2.1 or later can; Talos v1.13 ships 2.2.3): upgrade Talos on it, or pass --no-assets", n.Name, rt)
		}
	}
	return nil
}

// runtimeHasImageVolumes reports whether a node's container runtime
// ("containerd://2.2.3") mounts image volumes: containerd from 2.1
// (containerd/containerd#10579), CRI-O (from 1.31); others are assumed to.
func runtimeHasImageVolumes(rt string) bool {
	v, ok := strings.CutPrefix(rt, "containerd://")
	if !ok {
		return true
	}
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > 2 || (ma == 2 && mi >= 1)
}

func checkServerVersion(dc discovery.ServerVersionInterface) error {
	v, err := dc.ServerVersion()
	if err != nil {
		return fmt.Errorf("read the cluster's Kubernetes version: %w", err)
	}
	if imageVolumesByDefault(v.Major, v.Minor) {
		return nil
	}
	return fmt.Errorf("the cluster runs Kubernetes %s.%s, where image volumes (the assets image's) are off by default (on from 1.35): "+
		"patch the control planes' Talos config with cluster.apiServer.extraArgs and machine.kubelet.extraArgs "+
		"feature-gates: ImageVolume=true, or upgrade Kubernetes (rackboot upgrade --kubernetes 1.35.0), or pass --no-assets", v.Major, v.Minor)
}

// imageVolumesByDefault reports whether Kubernetes major.minor (as the
// version API writes them, "1", "35+") has ImageVolume on by default.
func imageVolumesByDefault(major, minor string) bool {
	ma, err1 := strconv.Atoi(major)
	mi, err2 := strconv.Atoi(strings.TrimSuffix(minor, "+"))
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > 1 || (ma == 1 && mi >= 35)
}
