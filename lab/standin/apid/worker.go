package apid

import (
	"context"
	stdtls "crypto/tls"
	stdx509 "crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/siderolabs/crypto/x509"
	securityapi "github.com/siderolabs/talos/pkg/machinery/api/security"
	"github.com/siderolabs/talos/pkg/machinery/client/resolver"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// WorkerRenewal is how often a worker asks trustd for a new certificate
// (APIController.reconcile's refresh ticker: half the validity).
const WorkerRenewal = x509.DefaultCertificateValidityDuration / 2

// trustdAttempt bounds one Certificate call, as RemoteGenerator's
// retry.WithAttemptTimeout; trustdBackoff is the first wait after a
// failure, doubled up to trustdMaxBackoff.
const (
	trustdAttempt    = 10 * time.Second
	trustdBackoff    = time.Second
	trustdMaxBackoff = 30 * time.Second
)

// Lookup resolves a host name to addresses (net.Resolver.LookupNetIP
// with network "ip").
type Lookup func(ctx context.Context, host string) ([]netip.Addr, error)

// TrustdEndpoints are where a worker finds trustd, as Talos's worker
// without a kubelet sees them: StaticEndpointController's endpoint, the
// host of cluster.controlPlane.endpoint resolved to its addresses (sorted,
// as EndpointList.Merge keeps them), plus the name itself when it is not
// one IP address. Talos adds the API server's EndpointSlice addresses once
// the kubelet runs; the stand-in has no kubelet. RemoteGenerator dials
// each on TrustdPort.
func TrustdEndpoints(ctx context.Context, host string, lookup Lookup) ([]string, error) {
	addrs, err := lookup(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("error resolving %q: %w", host, err)
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.Unmap())
	}
	slices.SortFunc(out, netip.Addr.Compare)
	out = slices.Compact(out)
	var eps []string
	for _, a := range out {
		eps = append(eps, a.String())
	}
	if len(out) != 1 || out[0].String() != host {
		eps = append(eps, host)
	}
	return eps, nil
}

// ConfigureWorker switches the server to configured mode with a worker's
// config, the way secrets.APIController.generateWorker gets apid its
// certificate: a CSR for the node's names (a key of the OS CA's type)
// sent to trustd at the endpoints (Config.TrustdEndpoints, else
// TrustdEndpoints of cluster.controlPlane.endpoint's host) with machine.token, retried until a
// control plane signs it or ctx ends. The server certificate is trustd's
// answer; client certificates are verified against the CAs trustd sends.
// Call it again every WorkerRenewal.
func (s *Server) ConfigureWorker(ctx context.Context, cfg config.Provider) error {
	sec := cfg.Machine().Security()
	accepted := acceptedCAs(cfg)
	if len(accepted) == 0 {
		return errors.New("the machine config has no machine.ca: a worker needs its certificate to trust trustd")
	}
	// The last accepted CA (the issuing one) decides the key type.
	tmpl, err := lastCert(accepted)
	if err != nil {
		return fmt.Errorf("machine.ca: %w", err)
	}
	ips, dns, cn := names(cfg, s.cfg.Addresses, s.cfg.Hostname)
	csr, ident, err := x509.NewCSRAndIdentityFromCA(tmpl, x509.IPAddresses(ips), x509.DNSNames(dns), x509.CommonName(cn))
	if err != nil {
		return fmt.Errorf("failed to generate API server CSR: %w", err)
	}
	endpoints := s.cfg.TrustdEndpoints
	if len(endpoints) == 0 {
		if cfg.Cluster() == nil || cfg.Cluster().Endpoint() == nil {
			return errors.New("the machine config has no cluster.controlPlane.endpoint: a worker finds trustd at its host")
		}
		var r net.Resolver
		if endpoints, err = TrustdEndpoints(ctx, cfg.Cluster().Endpoint().Hostname(), func(ctx context.Context, host string) ([]netip.Addr, error) {
			return r.LookupNetIP(ctx, "ip", host)
		}); err != nil {
			return err
		}
	}
	s.log.Info("asking trustd for the API certificate", "endpoints", endpoints)
	ca, crt, err := s.requestCertificate(ctx, sec.Token(), endpoints, accepted, csr.X509CertificateRequestPEM)
	if err != nil {
		return fmt.Errorf("failed to sign API server CSR: %w", err)
	}
	cert, err := stdtls.X509KeyPair(crt, ident.Key)
	if err != nil {
		return fmt.Errorf("trustd's certificate: %w", err)
	}
	tc, err := mutualTLS(cert, ca)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tls, s.machine = tc, cfg
	s.log.Info("API in configured mode (certificate from trustd)", "port", Port)
	return nil
}

// lastCert parses the last certificate of a PEM bundle.
func lastCert(bundle []byte) (*stdx509.Certificate, error) {
	var last []byte
	for rest := bundle; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			last = b.Bytes
		}
	}
	if last == nil {
		return nil, errors.New("no PEM certificate")
	}
	return stdx509.ParseCertificate(last)
}

// requestCertificate is RemoteGenerator.IdentityContext: Certificate
// through a round-robin connection to the endpoints (TLS trusting the
// accepted CAs, the token as per-call metadata), each attempt bounded,
// retried with a growing wait until one answers or ctx ends.
func (s *Server) requestCertificate(ctx context.Context, token string, endpoints []string, accepted, csr []byte) (ca, crt []byte, err error) {
	pool := stdx509.NewCertPool()
	if !pool.AppendCertsFromPEM(accepted) {
		return nil, nil, errors.New("the machine config's CAs hold no PEM certificate")
	}
	target := resolver.RoundRobinResolverScheme + ":///" + strings.Join(resolver.EnsureEndpointsHavePorts(endpoints, TrustdPort), ",")
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(credentials.NewTLS(&stdtls.Config{RootCAs: pool, MinVersion: stdtls.VersionTLS12})),
		grpc.WithPerRPCCredentials(tokenCredentials(token)))
	if err != nil {
		return nil, nil, fmt.Errorf("failed creating trustd client: %w", err)
	}
	defer conn.Close() //nolint:errcheck
	client := securityapi.NewSecurityServiceClient(conn)
	wait := trustdBackoff
	for {
		actx, cancel := context.WithTimeout(ctx, trustdAttempt)
		resp, err := client.Certificate(actx, &securityapi.CertificateRequest{Csr: csr})
		cancel()
		if err == nil {
			return resp.GetCa(), resp.GetCrt(), nil
		}
		s.log.Warn("trustd did not sign the API certificate: retrying", "endpoints", endpoints, "in", wait.String(), "err", err)
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("%w (last answer: %w)", ctx.Err(), err)
		case <-time.After(wait):
		}
		wait = min(2*wait, trustdMaxBackoff)
	}
}

// tokenCredentials is basic.TokenCredentials on the client side: the
// machine token in the "token" metadata of every call, over TLS only.
type tokenCredentials string

func (t tokenCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"token": string(t)}, nil
}

func (tokenCredentials) RequireTransportSecurity() bool { return true }
