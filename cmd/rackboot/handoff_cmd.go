package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/dotfile/rackboot/assetimage"
	"github.com/dotfile/rackboot/bundles"
	"github.com/dotfile/rackboot/handoff"
	"github.com/dotfile/rackboot/internal/atomicfile"
	"github.com/dotfile/rackboot/inventory"
	"github.com/dotfile/rackboot/kubestate"
	"github.com/dotfile/rackboot/ociimage"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

func init() {
	subcommands = append(subcommands, newHandoffCmd)
}

type handoffFlags struct {
	kubeconfig, namespace, image, imageLayout string
	dhcp, dhcpRange                           string
	replicas, httpPort                        int
	dryRun, back, noAssets                    bool
	timeout                                   time.Duration
	poll                                      time.Duration // tests
}

func newHandoffCmd(a *app) *cobra.Command {
	f := handoffFlags{poll: 2 * time.Second}
	cmd := &cobra.Command{
		Use:   "handoff",
		Short: "Move rackboot into the cluster it built (state, RBAC, a 2-replica Deployment), or back to this laptop with --back",
		Long: `After rackboot up, copy this laptop's state into the cluster (the rack file,
the secrets bundle, the config-token key, BMC passwords, machine states, DHCP
leases, spent config tokens: namespace ` + handoff.Namespace + `), apply rackboot's
ServiceAccount, Role, RoleBinding, a host-network Deployment of
"rackboot serve --kube" on the control-plane nodes (2 replicas, one per node;
only the holder of the Lease answers DHCP) and a PodDisruptionBudget, and wait
until a replica answers on its node's address. Then stop the laptop's serve.

The nodes pull rackboot's image through the laptop's registry mirror: handoff
puts it into the mirror's store as ` + ociimage.Repository + `:<version> (from
--image-layout, make release's dist/oci, else built from this binary) and names
it by digest; keep the laptop's serve running until this command is done.
--image names an image the nodes can pull elsewhere instead.

The boot files and the mirror's images go too: handoff builds the assets image
(` + assetimage.Repository + `:<digest>) from the asset cache, puts it into the
mirror's store, and the replicas mount it read-only as an image volume (needs
Kubernetes 1.35 or later and containerd 2.1 or later on the control planes;
--no-assets leaves it out).

--back copies the state from the cluster into the state directory and scales
the Deployment to 0 first, so two DHCP servers never run: the cluster's
replicas are stopped before the laptop serves again. A secrets bundle that
differs from the one here is never replaced, on either side.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.back {
				return runHandoffBack(cmd, a, &f)
			}
			return runHandoff(cmd, a, &f)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "admin kubeconfig of the cluster (default: the state directory's, written by rackboot kubeconfig; else $KUBECONFIG)")
	fl.StringVar(&f.namespace, "namespace", handoff.Namespace, "the namespace rackboot runs in")
	fl.StringVar(&f.image, "image", "", "rackboot's image as the nodes pull it, best name@sha256:digest (default: put into the laptop's registry mirror as "+ociimage.Repository+":<this version>, from --image-layout or this binary, and pulled by digest)")
	fl.StringVar(&f.imageLayout, "image-layout", "", "the OCI layout make release writes (dist/oci): put into the laptop's registry mirror instead of an image built from this binary (needed when the control planes are of another architecture)")
	fl.IntVar(&f.replicas, "replicas", 0, "replicas, one per control-plane node at most (default 2, or 1 with one control plane)")
	fl.StringVar(&f.dhcp, "dhcp", "proxy", "DHCP mode of the replicas: proxy, full (with --range) or off; the leader answers")
	fl.StringVar(&f.dhcpRange, "range", "", "address range for --dhcp full, e.g. 192.168.1.100-192.168.1.199")
	fl.IntVar(&f.httpPort, "http-port", handoff.DefaultHTTPPort, "the replicas' HTTP port on their node (iPXE scripts, configs, status page)")
	fl.BoolVar(&f.dryRun, "dry-run", false, "print the objects and the state files that would be copied; send the objects as a server-side dry run when the namespace exists; change nothing")
	fl.BoolVar(&f.noAssets, "no-assets", false, "do not build the assets image (boot files and the mirror's images, mounted by the replicas as an image volume): the replicas then serve no boot files and no images")
	fl.BoolVar(&f.back, "back", false, "bring the state back to this laptop and stop the cluster's replicas")
	fl.DurationVar(&f.timeout, "timeout", 10*time.Minute, "how long to wait for a replica to answer (or, with --back, for the replicas to stop)")
	return cmd
}

// handoffParams are the objects' parameters from the flags and the rack.
func handoffParams(r *profiles.Rack, f *handoffFlags) handoff.Params {
	p := handoff.Params{Namespace: f.namespace, Image: f.image, Replicas: int32(f.replicas),
		HTTPPort: f.httpPort, DHCP: f.dhcp, Range: f.dhcpRange}
	if p.Image == "" {
		p.Image = ociimage.ImageName(version)
	}
	if p.Replicas == 0 {
		p.Replicas = int32(min(2, max(1, len(r.ControlPlanes()))))
	}
	return p
}

// stateFiles are the state directory's files handoff copies.
var stateFiles = []string{profiles.SecretsFile, pxe.TokenKeyFile, profiles.BMCPasswordsFile,
	kubestate.LeasesKey, inventory.FileName, pxe.SpentFile}

func runHandoff(cmd *cobra.Command, a *app, f *handoffFlags) error {
	ctx, out := cmd.Context(), cmd.OutOrStdout()
	r, err := a.loadRack(cmd)
	if err != nil {
		return err
	}
	state := a.StateDir()
	if _, err := os.Stat(filepath.Join(state, profiles.SecretsFile)); err != nil {
		return fmt.Errorf("no secrets bundle at %s: nothing to hand off (rackboot up makes it; --state names another state directory): %w",
			filepath.Join(state, profiles.SecretsFile), err)
	}
	params := handoffParams(r, f)
	if _, err := handoff.Render(params); err != nil { // flags checked before anything is written
		return err
	}
	cfg, where, err := a.restConfig(f.kubeconfig)
	if err != nil {
		return err
	}
	if f.image == "" && !f.dryRun {
		if params.Image, err = putHandoffImage(a, f.imageLayout); err != nil {
			return err
		}
		fmt.Fprintf(out, "handoff: rackboot's image %s is in the laptop's registry mirror (keep serve running until this command is done)\n", params.Image)
	}
	if !f.noAssets {
		if params.AssetsImage, err = handoffAssets(a, out, f.dryRun); err != nil {
			return err
		}
	}
	objs, err := handoff.Render(params)
	if err != nil {
		return err
	}
	if f.dryRun {
		return handoffDryRun(ctx, out, cfg, objs, state, f.namespace)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	fmt.Fprintf(out, "handoff: cluster from %s, namespace %s\n", where, f.namespace)
	if params.AssetsImage != "" {
		if err := checkImageVolumes(ctx, cs); err != nil {
			return err
		}
	}
	// The namespace first, the state next, the appliance last: its pods
	// find their state when they start.
	if err := handoffApply(ctx, out, a, cfg, objs[:1]); err != nil {
		return err
	}
	st, err := kubestate.New(cs, f.namespace, kubestate.WithLogger(a.log.With("service", "kubestate")))
	if err != nil {
		return err
	}
	if err := st.Import(ctx, state, a.rackPath); err != nil {
		return fmt.Errorf("copy the state into namespace %s: %w", f.namespace, err)
	}
	fmt.Fprintf(out, "handoff: state copied from %s and %s (secrets byte for byte)\n", state, a.rackPath)
	if err := handoffApply(ctx, out, a, cfg, objs[1:]); err != nil {
		return err
	}
	fmt.Fprintf(out, "handoff: waiting up to %v for a replica to answer on its node's port %d\n", f.timeout, f.httpPort)
	ans, err := handoff.WaitAnswer(ctx, handoff.WaitConfig{Client: cs, Namespace: f.namespace, HTTPPort: f.httpPort,
		Timeout: f.timeout, Poll: f.poll, Log: a.log,
		Progress: func(why string) { fmt.Fprintf(out, "handoff: waiting: %s\n", why) }})
	if err != nil {
		return fmt.Errorf("%w (the state is in the cluster; the laptop's serve can keep serving; run rackboot handoff again once fixed)", err)
	}
	fmt.Fprintf(out, `handoff: replica %s on %s answers at %s
handoff: rackboot now runs in the cluster. Next:
  1. stop rackboot serve (or up) on this laptop now: only one DHCP server may answer the rack
  2. watch it: kubectl -n %s get pods -l app.kubernetes.io/name=rackboot; status page at %s
  3. to serve from a laptop again: rackboot handoff --back (it stops the cluster's replicas first)
`, ans.Pod, ans.Node, ans.URL, f.namespace, ans.URL)
	if addr := r.Cluster.Network.Rackboot; addr != "" && params.AssetsImage != "" {
		fmt.Fprintf(out, "  4. the machines pull images from %s:%d (cluster.network.rackboot), this laptop's address: give it to a control-plane node running a replica as a second address, or new pulls go to the internet (and fail with cluster.offline)\n", addr, profiles.RegistryPort)
	}
	return nil
}

// putHandoffImage puts rackboot's image into the laptop's image store,
// where the running serve's registry mirror serves it to the nodes (ghcr.io
// is mirrored), and returns its name by digest.
func putHandoffImage(a *app, layout string) (string, error) {
	store, err := openImageStore(a)
	if err != nil {
		return "", err
	}
	var d v1.Hash
	if layout != "" {
		d, err = ociimage.PutLayout(store, layout, version)
	} else {
		var created time.Time
		if created, err = ociimage.Epoch(os.Getenv); err == nil {
			d, err = ociimage.PutSelf(store, version, "", created)
		}
	}
	if err != nil {
		return "", fmt.Errorf("put rackboot's image into the registry mirror (or name one with --image): %w", err)
	}
	return ociimage.ImageName(version) + "@" + d.String(), nil
}

func handoffApply(ctx context.Context, out io.Writer, a *app, cfg *rest.Config, objs []*unstructured.Unstructured) error {
	res, err := bundles.Apply(ctx, cfg, objs, bundles.WithLogger(a.log),
		bundles.WithProgress(func(r bundles.ObjectResult) {
			if r.Err == nil {
				fmt.Fprintf(out, "handoff: %s %s\n", r.Ref, r.Action)
			}
		}))
	if err != nil {
		return fmt.Errorf("apply rackboot's objects: %w", err)
	}
	a.log.Debug("handoff applied", "created", res.Created, "configured", res.Configured, "unchanged", res.Unchanged)
	return nil
}

// handoffGVR is where each kind handoff renders lives.
var handoffGVR = map[string]schema.GroupVersionResource{
	"Namespace":           {Version: "v1", Resource: "namespaces"},
	"ServiceAccount":      {Version: "v1", Resource: "serviceaccounts"},
	"Role":                {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	"RoleBinding":         {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
	"Deployment":          {Group: "apps", Version: "v1", Resource: "deployments"},
	"PodDisruptionBudget": {Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"},
}

// handoffDryRun prints the objects and the files that would be copied
// and, when the namespace exists, sends the objects as a server-side dry
// run (validation, admission). It changes nothing.
func handoffDryRun(ctx context.Context, out io.Writer, cfg *rest.Config, objs []*unstructured.Unstructured, state, ns string) error {
	for _, o := range objs {
		b, err := yaml.Marshal(o.Object)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "---\n%s", b)
	}
	fmt.Fprintf(out, "# state that would be copied into namespace %s:\n", ns)
	for _, name := range stateFiles {
		if fi, err := os.Stat(filepath.Join(state, name)); err == nil {
			fmt.Fprintf(out, "#   %s (%d bytes)\n", filepath.Join(state, name), fi.Size())
		}
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	if _, err := dyn.Resource(handoffGVR["Namespace"]).Get(ctx, ns, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		fmt.Fprintf(out, "# namespace %s does not exist yet: the server cannot check the other objects before it does; nothing was changed\n", ns)
		return nil
	} else if err != nil {
		return fmt.Errorf("look for namespace %s: %w", ns, err)
	}
	var errs []error
	for _, o := range objs {
		ri := dyn.Resource(handoffGVR[o.GetKind()])
		var res dynamic.ResourceInterface = ri
		if o.GetNamespace() != "" {
			res = ri.Namespace(o.GetNamespace())
		}
		_, err := res.Apply(ctx, o.GetName(), o, metav1.ApplyOptions{FieldManager: bundles.FieldManager, Force: true, DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s: %w", o.GetKind(), o.GetName(), err))
			continue
		}
		fmt.Fprintf(out, "# %s %s: accepted (server-side dry run)\n", o.GetKind(), o.GetName())
	}
	if len(errs) > 0 {
		return fmt.Errorf("the server refuses: %w", errors.Join(errs...))
	}
	fmt.Fprintln(out, "# nothing was changed")
	return nil
}

func runHandoffBack(cmd *cobra.Command, a *app, f *handoffFlags) error {
	ctx, out := cmd.Context(), cmd.OutOrStdout()
	for _, name := range []string{"dry-run", "image", "image-layout", "replicas", "dhcp", "range", "http-port"} {
		if cmd.Flags().Changed(name) {
			return fmt.Errorf("--%s is for handing off to the cluster, not for --back: leave it out", name)
		}
	}
	cfg, _, err := a.restConfig(f.kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	st, err := kubestate.New(cs, f.namespace, kubestate.WithLogger(a.log.With("service", "kubestate")))
	if err != nil {
		return err
	}
	state := a.StateDir()
	// Refuse before stopping anything: a different bundle here is never
	// replaced, and the cluster's replicas keep serving.
	if err := checkSecretsBack(ctx, cs, f.namespace, state); err != nil {
		return err
	}
	rackFile, aside, err := rackFileBack(ctx, st, a.rackPath)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "handoff --back: stopping the cluster's replicas (deployment %s/%s to 0) so two DHCP servers never run\n", f.namespace, handoff.Name)
	if err := handoff.ScaleDown(ctx, cs, f.namespace, f.timeout, f.poll); err != nil {
		return err
	}
	if err := st.Export(ctx, state, rackFile); err != nil {
		return fmt.Errorf("copy the state from namespace %s to %s: %w (the cluster's replicas are stopped; rackboot handoff starts them again)", f.namespace, state, err)
	}
	fmt.Fprintf(out, "handoff --back: state copied to %s (secrets byte for byte)\n", state)
	if aside != "" {
		fmt.Fprintf(out, "handoff --back: the cluster's rack file differs from %s: it is in %s; compare them and keep the one you want\n", a.rackPath, aside)
	}
	fmt.Fprintln(out, "handoff --back: the cluster's replicas are stopped; start sudo rackboot serve (or up) on this laptop now")
	return nil
}

// checkSecretsBack refuses when the namespace holds no secrets bundle, or
// one that differs from the state directory's.
func checkSecretsBack(ctx context.Context, cs kubernetes.Interface, ns, state string) error {
	sec, err := cs.CoreV1().Secrets(ns).Get(ctx, kubestate.SecretsName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("namespace %s holds no rackboot state (no secret %s): nothing to bring back; was it handed off with another --namespace?", ns, kubestate.SecretsName)
	}
	if err != nil {
		return fmt.Errorf("read secret %s/%s: %w", ns, kubestate.SecretsName, err)
	}
	path := filepath.Join(state, profiles.SecretsFile)
	local, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("read %s: %w", path, err)
	case !bytes.Equal(local, sec.Data[kubestate.SecretsKey]):
		return fmt.Errorf("%s: %w than the cluster's (secret %s/%s); nothing was changed and the cluster's replicas keep serving (use another --state directory)",
			path, kubestate.ErrSecretsDiffer, ns, kubestate.SecretsName)
	}
	return nil
}

// rackFileBack says where Export writes the cluster's rack file: the rack
// file itself when it is missing or the same (exportTo), else nowhere: the
// cluster's is written to <rack>.from-cluster (aside), so edits made on the
// laptop are never lost.
func rackFileBack(ctx context.Context, st *kubestate.Store, rackPath string) (exportTo, aside string, err error) {
	data, err := st.RackFile(ctx)
	if errors.Is(err, kubestate.ErrNotFound) {
		return "", "", nil
	}
	if err != nil {
		return "", "", err
	}
	local, err := os.ReadFile(rackPath)
	switch {
	case errors.Is(err, fs.ErrNotExist), err == nil && bytes.Equal(local, data):
		return rackPath, "", nil
	case err != nil:
		return "", "", fmt.Errorf("read %s: %w", rackPath, err)
	}
	aside = rackPath + ".from-cluster"
	if err := atomicfile.Write(aside, data, 0o644); err != nil {
		return "", "", fmt.Errorf("write the cluster's rack file: %w", err)
	}
	return "", aside, nil
}
