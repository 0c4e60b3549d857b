package apid

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	stdtls "crypto/tls"
	stdx509 "crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/siderolabs/crypto/tls"
	"github.com/siderolabs/crypto/x509"
	securityapi "github.com/siderolabs/talos/pkg/machinery/api/security"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// TrustdPort is trustd's port (constants.TrustdPort).
const TrustdPort = constants.TrustdPort

// TrustdConfig configures a control plane's trustd.
type TrustdConfig struct {
	Log *slog.Logger
	// Now is the clock (certificate validity); time.Now when nil.
	Now func() time.Time
	// Machine is the control plane's config: machine.ca with its key
	// signs, machine.token authenticates.
	Machine config.Provider
	// Addresses and Hostname go into trustd's server certificate (a
	// worker dials one of them, or a name in machine.certSANs).
	Addresses []netip.Addr
	Hostname  string
}

// Trustd is trustd (internal/app/trustd): SecurityService.Certificate,
// which signs a worker's apid certificate with the OS CA for a caller
// that knows the machine token.
type Trustd struct {
	securityapi.UnimplementedSecurityServiceServer

	log      *slog.Logger
	token    string
	issuing  *x509.PEMEncodedCertificateAndKey
	accepted []byte // PEM, the issuing CA last (RootOSController)
	tls      *stdtls.Config
}

// NewTrustd builds trustd for a control plane's config; a config whose
// machine.ca has no key (a worker's) is refused with ErrNoIssuingCA.
func NewTrustd(cfg TrustdConfig) (*Trustd, error) {
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sec := cfg.Machine.Machine().Security()
	issuing := sec.IssuingCA()
	if issuing == nil || len(issuing.Crt) == 0 {
		return nil, errors.New("the machine config has no machine.ca")
	}
	if len(issuing.Key) == 0 {
		return nil, ErrNoIssuingCA
	}
	if sec.Token() == "" {
		return nil, errors.New("the machine config has no machine.token: trustd could not tell a worker from anyone else")
	}
	accepted := acceptedCAs(cfg.Machine)
	tc, err := trustdTLS(now(), cfg, accepted)
	if err != nil {
		return nil, err
	}
	return &Trustd{log: log, token: sec.Token(), issuing: issuing, accepted: accepted, tls: tc}, nil
}

// acceptedCAs is RootOSController's OSRoot.AcceptedCAs: machine.acceptedCAs,
// then the issuing CA's certificate.
func acceptedCAs(cfg config.Provider) []byte {
	sec := cfg.Machine().Security()
	var cas [][]byte
	for _, a := range sec.AcceptedCAs() {
		cas = append(cas, a.Crt)
	}
	if i := sec.IssuingCA(); i != nil {
		cas = append(cas, i.Crt)
	}
	return bytes.Join(cas, nil)
}

// trustdTLS is trustd's server TLS (trustd/internal/provider ServerConfig
// with the certificate secrets.TrustdController makes): signed by the OS
// CA for apid's names, no client certificate asked.
func trustdTLS(now time.Time, cfg TrustdConfig, accepted []byte) (*stdtls.Config, error) {
	ca, err := x509.NewCertificateAuthorityFromCertificateAndKey(cfg.Machine.Machine().Security().IssuingCA())
	if err != nil {
		return nil, fmt.Errorf("machine CA: %w", err)
	}
	ips, dns, cn := names(cfg.Machine, cfg.Addresses, cfg.Hostname)
	kp, err := x509.NewKeyPair(ca,
		x509.IPAddresses(ips), x509.DNSNames(dns), x509.CommonName(cn),
		x509.NotBefore(now.Add(-time.Minute)), x509.NotAfter(now.Add(x509.DefaultCertificateValidityDuration)),
		x509.KeyUsage(stdx509.KeyUsageDigitalSignature|stdx509.KeyUsageKeyEncipherment),
		x509.ExtKeyUsage([]stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth}))
	if err != nil {
		return nil, fmt.Errorf("trustd server certificate: %w", err)
	}
	return tls.New(tls.WithClientAuthType(tls.ServerOnly), tls.WithCACertPEM(accepted), tls.WithKeypair(*kp.Certificate))
}

// Serve answers on ln until ctx ends.
func (t *Trustd) Serve(ctx context.Context, ln net.Listener) error {
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(t.tls)),
		grpc.UnaryInterceptor(t.unary),
		grpc.StreamInterceptor(func(any, grpc.ServerStream, *grpc.StreamServerInfo, grpc.StreamHandler) error {
			return status.Error(codes.Unimplemented, "streaming APIs are not supported")
		}),
	)
	securityapi.RegisterSecurityServiceServer(srv, t)
	t.log.Info("trustd listening", "addr", ln.Addr().String())
	return serveGRPC(ctx, srv, ln)
}

func (t *Trustd) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if err := CheckToken(md, t.token); err != nil {
		t.log.Warn("trustd call refused", "method", info.FullMethod, "err", err)
		return nil, err
	}
	return h(ctx, req)
}

// CheckToken is trustd's token check (pkg/grpc/middleware/auth/basic
// TokenCredentials.authenticate): the call's "token" metadata must be the
// machine token, compared as SHA-256 hashes in constant time; Unauthenticated
// "missing token" or "invalid token" otherwise.
func CheckToken(md metadata.MD, token string) error {
	if len(md["token"]) == 0 {
		return status.Error(codes.Unauthenticated, "missing token")
	}
	got := sha256.Sum256([]byte(md["token"][0]))
	want := sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		return status.Error(codes.Unauthenticated, "invalid token")
	}
	return nil
}

// Certificate is trustd's reg.Registrator.Certificate: the CSR signed by
// the OS CA as a server-auth certificate (any organization dropped, so it
// can never carry a role), answered with the accepted CAs.
func (t *Trustd) Certificate(ctx context.Context, in *securityapi.CertificateRequest) (*securityapi.CertificateResponse, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.PermissionDenied, "peer not found")
	}
	block, _ := pem.Decode(in.GetCsr())
	if block == nil {
		return nil, status.Errorf(codes.InvalidArgument, "failed to decode CSR")
	}
	req, err := stdx509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "failed to parse CSR: %s", err)
	}
	t.log.Info("received CSR signing request", "from", p.Addr.String(), "subject", req.Subject.String(), "dns_names", req.DNSNames, "addresses", req.IPAddresses)
	opts := []x509.Option{
		x509.KeyUsage(stdx509.KeyUsageDigitalSignature),
		x509.ExtKeyUsage([]stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth}),
	}
	if len(req.Subject.Organization) > 0 {
		t.log.Info("removing client auth organization from CSR", "organization", req.Subject.Organization)
		opts = append(opts, x509.OverrideSubject(func(s *pkix.Name) { s.Organization = nil }))
	}
	signed, err := x509.NewCertificateFromCSRBytes(t.issuing.Crt, t.issuing.Key, in.GetCsr(), opts...)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "failed to sign CSR: %s", err)
	}
	return &securityapi.CertificateResponse{Ca: t.accepted, Crt: signed.X509CertificatePEM}, nil
}
