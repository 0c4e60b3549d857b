package upgrade

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/blang/semver/v4"
	"github.com/siderolabs/go-kubernetes/kubernetes/ssa"
	kupgrade "github.com/siderolabs/go-kubernetes/kubernetes/upgrade"
	k8s "github.com/siderolabs/talos/pkg/cluster/kubernetes"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// DefaultReconcileTimeout is talosctl upgrade-k8s's
// --manifests-reconcile-timeout default.
const DefaultReconcileTimeout = 5 * time.Minute

// K8sRequest is what `rackboot upgrade --kubernetes` asks for: the options
// of talosctl v1.13.0's upgrade-k8s (cmd/talosctl/cmd/talos/upgrade-k8s.go)
// that rackboot exposes. Images are Talos's defaults (machinery
// constants), as the rack's generated configs use them; an offline rack's
// nodes pull them through its registry mirror under the same names.
type K8sRequest struct {
	// From is the version to upgrade from; "" detects it from the
	// control plane pods as talosctl does (kubernetes.DetectLowestVersion).
	From string
	// To is the target version (1.36.1 or v1.36.1).
	To string
	// DryRun, PrePullImages, UpgradeKubelet are upgrade-k8s's --dry-run,
	// --pre-pull-images, --upgrade-kubelet.
	DryRun, PrePullImages, UpgradeKubelet bool
	// ControlPlaneEndpoint is upgrade-k8s's --endpoint (Talos uses it for
	// its own Kubernetes client only: rackboot's kubeconfig decides here).
	ControlPlaneEndpoint string
	// ReconcileTimeout is --manifests-reconcile-timeout; 0 does not wait
	// (SkipManifestWait, as talosctl).
	ReconcileTimeout time.Duration
	// Log gets Talos's progress lines.
	Log io.Writer
}

// K8sPath checks the upgrade from → to and returns Talos's path for it.
// Refused: a version that does not parse, a downgrade (the patch level
// too: Talos's path table allows 1.36→1.36 either way, rackboot does not
// go back), and any path go-kubernetes's Path.IsSupported
// (kubernetes/upgrade/path.go, the table kubernetes.Upgrade checks) does not
// list: a skip of more than one minor version or a version it does not know.
// The same version is allowed: Talos then only re-syncs the manifests.
func K8sPath(from, to string) (*kupgrade.Path, error) {
	fv, err := parseK8sVersion("from", from)
	if err != nil {
		return nil, err
	}
	tv, err := parseK8sVersion("target", to)
	if err != nil {
		return nil, err
	}
	if tv.LT(fv) {
		return nil, fmt.Errorf("target Kubernetes %s is older than the cluster's %s: rackboot does not downgrade Kubernetes (etcd's data may not go back); give %s or newer", tv, fv, fv)
	}
	p, err := kupgrade.NewPath(fv.String(), tv.String())
	if err != nil {
		return nil, err
	}
	if !p.IsSupported() {
		if tv.Major == fv.Major && tv.Minor > fv.Minor+1 {
			return nil, fmt.Errorf("going from Kubernetes %s to %s skips %d minor version(s): Kubernetes upgrades one minor version at a time; upgrade to %d.%d.x first, then to %s",
				fv, tv, tv.Minor-fv.Minor-1, fv.Major, fv.Minor+1, tv)
		}
		return nil, fmt.Errorf("Talos v1.13's upgrade code does not support Kubernetes %s → %s (path %s): it knows 1.19 to 1.36, one minor version at a time", fv, tv, p)
	}
	return p, nil
}

// ParseK8sVersion checks a Kubernetes version (1.36.1 or v1.36.1) and
// returns it as the rack file writes it (1.36.1); what names it in the
// error ("target").
func ParseK8sVersion(what, s string) (string, error) {
	v, err := parseK8sVersion(what, s)
	if err != nil {
		return "", err
	}
	return v.String(), nil
}

func parseK8sVersion(what, s string) (semver.Version, error) {
	v, err := semver.Parse(strings.TrimPrefix(strings.TrimSpace(s), "v"))
	if err != nil {
		return semver.Version{}, fmt.Errorf("%s Kubernetes version %q is not a version: write it as 1.36.1", what, s)
	}
	if len(v.Pre) > 0 || len(v.Build) > 0 {
		return semver.Version{}, fmt.Errorf("%s Kubernetes version %q is a pre-release or build: give a release such as %d.%d.%d", what, s, v.Major, v.Minor, v.Patch)
	}
	return v, nil
}

// K8sOptions builds Talos's UpgradeOptions as upgradeKubernetes in
// talosctl's upgrade-k8s.go does with its default flags: Talos's images
// (constants.KubeletImage, KubernetesAPIServerImage, ...), configs written
// with documentation and examples (--with-docs, --with-examples), the
// AdoptIfNoInventory manifest inventory policy, pruning on, no forced
// re-creation.
func K8sOptions(req K8sRequest, path *kupgrade.Path) k8s.UpgradeOptions {
	opts := k8s.UpgradeOptions{
		Path:                   path,
		DryRun:                 req.DryRun,
		ControlPlaneEndpoint:   req.ControlPlaneEndpoint,
		LogOutput:              req.Log,
		PrePullImages:          req.PrePullImages,
		UpgradeKubelet:         req.UpgradeKubelet,
		EncoderOpt:             encoder.WithComments(encoder.CommentsDocs | encoder.CommentsExamples),
		KubeletImage:           constants.KubeletImage,
		APIServerImage:         constants.KubernetesAPIServerImage,
		ControllerManagerImage: constants.KubernetesControllerManagerImage,
		SchedulerImage:         constants.KubernetesSchedulerImage,
		ProxyImage:             constants.KubeProxyImage,
		InventoryPolicy:        ssa.InventoryPolicyAdoptIfNoInventory,
		ReconcileTimeout:       req.ReconcileTimeout,
		SkipManifestWait:       req.ReconcileTimeout == 0,
	}
	if opts.LogOutput == nil {
		opts.LogOutput = io.Discard
	}
	opts.LogOutput = lineWriter{opts.LogOutput}
	return opts
}

// lineWriter ends each write with a newline: Talos's UpgradeOptions.Log
// writes a line to LogOutput without one (to stdout it adds it).
type lineWriter struct{ w io.Writer }

func (l lineWriter) Write(p []byte) (int, error) {
	if len(p) > 0 && p[len(p)-1] == '\n' {
		return l.w.Write(p)
	}
	if _, err := l.w.Write(append(p[:len(p):len(p)], '\n')); err != nil {
		return 0, err
	}
	return len(p), nil
}

// K8sConfig is one Kubernetes upgrade.
type K8sConfig struct {
	Request K8sRequest
	// Cluster reaches the Talos API and Kubernetes (NewK8sCluster).
	Cluster k8s.UpgradeProvider
	// Gates must hold before anything changes (etcd, nodes Ready); a dry
	// run prints their state instead.
	Gates       []Gate
	GateTimeout time.Duration
	Poll        time.Duration
	Out         io.Writer
	Clock       Clock
}

// ErrK8sGate is what RunKubernetes wraps when a gate does not hold.
var ErrK8sGate = errors.New("a health gate does not hold")

// ErrK8sUpgrade is what RunKubernetes wraps when Talos's upgrade itself
// failed (it may have changed some nodes already).
var ErrK8sUpgrade = errors.New("the Kubernetes upgrade (Talos's code) failed")

// RunKubernetes waits for the gates (a dry run prints them), detects the
// version to upgrade from when none is given, checks the path (K8sPath)
// and runs Talos's kubernetes.Upgrade. It returns the path taken.
func RunKubernetes(ctx context.Context, cfg K8sConfig) (*kupgrade.Path, error) {
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	req := cfg.Request
	if req.Log == nil {
		req.Log = out
	}
	if err := k8sGates(ctx, cfg, out); err != nil {
		return nil, err
	}
	if req.From == "" {
		from, err := k8s.DetectLowestVersion(ctx, cfg.Cluster, K8sOptions(req, nil))
		if err != nil {
			return nil, fmt.Errorf("find the cluster's Kubernetes version (from the kube-system pods' images): %w; give it with --kubernetes-from", err)
		}
		fmt.Fprintf(out, "the cluster runs Kubernetes %s (the lowest of its control plane and kube-proxy pods)\n", from)
		req.From = from
	}
	path, err := K8sPath(req.From, req.To)
	if err != nil {
		return nil, err
	}
	if err := k8s.Upgrade(ctx, cfg.Cluster, K8sOptions(req, path)); err != nil {
		return path, fmt.Errorf("%w: Kubernetes %s → %s: %w", ErrK8sUpgrade, path.FromVersion(), path.ToVersion(), err)
	}
	return path, nil
}

func k8sGates(ctx context.Context, cfg K8sConfig, out io.Writer) error {
	if cfg.Request.DryRun {
		for _, g := range CheckGates(ctx, cfg.Gates) {
			if g.OK {
				fmt.Fprintf(out, "gate ok: %s\n", g.Gate)
			} else {
				fmt.Fprintf(out, "gate NOT ok: %s: %s\n", g.Gate, g.Why)
			}
		}
		return nil
	}
	timeout, poll, clk := cfg.GateTimeout, cfg.Poll, cfg.Clock
	if timeout == 0 {
		timeout = DefaultGateTimeout
	}
	if poll == 0 {
		poll = DefaultPoll
	}
	if clk == nil {
		clk = realClock{}
	}
	failed, err := waitGates(ctx, cfg.Gates, timeout, poll, clk)
	if err != nil {
		return err
	}
	if failed != nil {
		return fmt.Errorf("%w: %s: %s (waited %s; nothing was changed)", ErrK8sGate, failed.Gate, failed.Why, timeout)
	}
	return nil
}
