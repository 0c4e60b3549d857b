package upgrade

import (
	"context"
	"errors"
	"fmt"
	"sync"

	gokube "github.com/siderolabs/go-kubernetes/kubernetes"
	"github.com/siderolabs/talos/pkg/cluster"
	talosk8s "github.com/siderolabs/talos/pkg/kubernetes"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// K8sCluster is the provider Talos's kubernetes.Upgrade runs against, built
// as talosctl upgrade-k8s builds it (a cluster.ConfigClientProvider around
// one default Talos client) with two differences:
//
//   - Kubernetes is reached with rackboot's kubeconfig (the rest.Config
//     given), not one fetched through the Talos API (cluster.KubernetesClient
//     asks a node's MachineService.Kubeconfig);
//   - without endpoints (a tunnel), a call Talos addresses to a node
//     (client.WithNode: "node" in the call's metadata, which a control
//     plane's apid proxies) is sent to that node's own apid instead, with
//     the metadata removed, as TalosAPI asks each node at its own address:
//     nothing depends on apid proxying, and the lab's stand-in, which does
//     not proxy, answers for itself. Calls without a node go to the
//     talosconfig's endpoints.
type K8sCluster struct {
	cluster.ClientProvider

	rest *rest.Config

	mu     sync.Mutex
	helper *talosk8s.Client
	route  *nodeRouter
}

// K8sClusterOption changes how NewK8sCluster reaches the nodes.
type K8sClusterOption func(*k8sClusterOptions)

type k8sClusterOptions struct {
	endpoints    []string
	proxy        bool
	nodeEndpoint func(node string) string
}

// ViaEndpoints sends every call through endpoints (a tunnel) with the node
// in the call's metadata, for their apid to route.
func ViaEndpoints(endpoints ...string) K8sClusterOption {
	return func(o *k8sClusterOptions) { o.endpoints, o.proxy = endpoints, true }
}

// DefaultEndpoints replaces the talosconfig's endpoints for the calls not
// addressed to a node (Talos reads the bootstrap manifests there); calls to
// a node still go to the node.
func DefaultEndpoints(endpoints ...string) K8sClusterOption {
	return func(o *k8sClusterOptions) { o.endpoints = endpoints }
}

// NodeEndpoint maps a node's address (as Kubernetes reports it) to where
// its apid answers (default: the address itself, port 50000); tests serve
// several nodes' APIs on loopback ports.
func NodeEndpoint(f func(node string) string) K8sClusterOption {
	return func(o *k8sClusterOptions) { o.nodeEndpoint = f }
}

// NewK8sCluster builds the provider from the rack's talosconfig and
// kubeconfig. Calls without a node go to the talosconfig's endpoints.
func NewK8sCluster(ctx context.Context, tc *clientconfig.Config, restCfg *rest.Config, opts ...K8sClusterOption) (*K8sCluster, error) {
	var o k8sClusterOptions
	for _, f := range opts {
		f(&o)
	}
	if o.nodeEndpoint == nil {
		o.nodeEndpoint = func(node string) string { return node }
	}
	k := &K8sCluster{rest: rest.CopyConfig(restCfg)}
	copts := []client.OptionFunc{client.WithConfig(tc)}
	if len(o.endpoints) > 0 {
		copts = append(copts, client.WithEndpoints(o.endpoints...))
	}
	if !o.proxy {
		k.route = &nodeRouter{ctx: ctx, cfg: tc, endpoint: o.nodeEndpoint, nodes: map[string]*client.Client{}}
		copts = append(copts, client.WithGRPCDialOptions(
			grpc.WithChainUnaryInterceptor(k.route.unary),
			grpc.WithChainStreamInterceptor(k.route.stream),
		))
	}
	c, err := client.New(ctx, copts...)
	if err != nil {
		return nil, fmt.Errorf("Talos API client: %w", err)
	}
	k.ClientProvider = &cluster.ConfigClientProvider{DefaultClient: c}
	return k, nil
}

// Close is ConfigClientProvider.Close, which leaves the default client
// open (talosctl closes it itself): Talos's upgrade calls it halfway
// (getManifests) and goes on. Shutdown closes everything.
func (k *K8sCluster) Close() error { return k.ClientProvider.Close() }

// Shutdown closes every connection, after the upgrade.
func (k *K8sCluster) Shutdown() error {
	var errs []error
	if c, err := k.ClientProvider.Client(); err == nil {
		errs = append(errs, c.Close())
	}
	errs = append(errs, k.ClientProvider.Close(), k.K8sClose())
	if k.route != nil {
		errs = append(errs, k.route.close())
	}
	return errors.Join(errs...)
}

// Kubeconfig implements cluster.K8sProvider; Talos's upgrade does not call
// it, and rackboot has a rest.Config, not the file.
func (k *K8sCluster) Kubeconfig(context.Context) ([]byte, error) {
	return nil, errors.New("rackboot's Kubernetes upgrade uses its own kubeconfig: no raw kubeconfig from the Talos API")
}

// K8sRestConfig implements cluster.K8sProvider: rackboot's kubeconfig.
func (k *K8sCluster) K8sRestConfig(context.Context) (*rest.Config, error) {
	return rest.CopyConfig(k.rest), nil
}

// K8sClient implements cluster.K8sProvider.
func (k *K8sCluster) K8sClient(ctx context.Context) (*kubernetes.Clientset, error) {
	h, err := k.K8sHelper(ctx)
	if err != nil {
		return nil, err
	}
	return h.Clientset, nil
}

// K8sHelper implements cluster.K8sProvider with Talos's own client wrapper
// (pkg/kubernetes.NewForConfig), cached as cluster.KubernetesClient does.
func (k *K8sCluster) K8sHelper(context.Context) (*talosk8s.Client, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.helper != nil {
		return k.helper, nil
	}
	cfg := rest.CopyConfig(k.rest)
	if len(cfg.CertData) == 0 && cfg.CertFile == "" {
		// Talos's NewForConfig insists on a client certificate (Talos's
		// admin kubeconfig has one); a token or exec kubeconfig gets
		// go-kubernetes's client, which NewForConfig wraps.
		c, err := gokube.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("kubernetes client: %w", err)
		}
		k.helper = &talosk8s.Client{Client: c}
		return k.helper, nil
	}
	h, err := talosk8s.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	k.helper = h
	return h, nil
}

// K8sClose implements cluster.K8sProvider.
func (k *K8sCluster) K8sClose() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.helper == nil {
		return nil
	}
	err := k.helper.Close()
	k.helper = nil
	return err
}

// nodeRouter sends a call addressed to a node (metadata "node") over a
// connection to that node's own apid.
type nodeRouter struct {
	ctx      context.Context
	cfg      *clientconfig.Config
	endpoint func(node string) string

	mu    sync.Mutex
	nodes map[string]*client.Client
}

// target is the connection for ctx's node (nil: none, call the default)
// and ctx without the node.
func (r *nodeRouter) target(ctx context.Context) (*grpc.ClientConn, context.Context, error) {
	md, ok := metadata.FromOutgoingContext(ctx)
	if !ok {
		return nil, ctx, nil
	}
	nodes := md.Get("node")
	if len(nodes) == 0 {
		if len(md.Get("nodes")) > 0 {
			return nil, nil, errors.New("a call to several nodes at once (metadata nodes): rackboot's routing sends one node's calls to that node only")
		}
		return nil, ctx, nil
	}
	md = md.Copy()
	md.Delete("node")
	ctx = metadata.NewOutgoingContext(ctx, md)
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.nodes[nodes[0]]
	if c == nil {
		var err error
		if c, err = client.New(r.ctx, client.WithConfig(r.cfg), client.WithEndpoints(r.endpoint(nodes[0]))); err != nil {
			return nil, nil, fmt.Errorf("Talos API client for %s: %w", nodes[0], err)
		}
		r.nodes[nodes[0]] = c
	}
	return c.Conn(), ctx, nil
}

func (r *nodeRouter) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	conn, ctx, err := r.target(ctx)
	if err != nil {
		return err
	}
	if conn == nil {
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	return conn.Invoke(ctx, method, req, reply, opts...)
}

func (r *nodeRouter) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	conn, ctx, err := r.target(ctx)
	if err != nil {
		return nil, err
	}
	if conn == nil {
		return streamer(ctx, desc, cc, method, opts...)
	}
	return conn.NewStream(ctx, desc, method, opts...)
}

func (r *nodeRouter) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for n, c := range r.nodes {
		errs = append(errs, c.Close())
		delete(r.nodes, n)
	}
	return errors.Join(errs...)
}
