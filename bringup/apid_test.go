package bringup

import (
	"context"
	stdx509 "crypto/x509"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/siderolabs/crypto/tls"
	"github.com/siderolabs/crypto/x509"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// answer is what the test apid replies to one Bootstrap call.
type answer struct {
	// err is returned as the call's gRPC status (nil: OK).
	err error
	// inMetadata puts err in the reply's per-node metadata instead, as apid
	// does when it proxies one call to several nodes.
	inMetadata bool
}

// apid is a real gRPC server on loopback implementing the Talos
// MachineService Bootstrap call, with TLS set up as Talos's apid does it
// (server certificate from the OS CA, client certificates required and
// verified against the OS CA). It counts the calls it gets.
type apid struct {
	machine.UnimplementedMachineServiceServer

	mu      sync.Mutex
	answers []answer
	calls   int
	nodes   []string   // "node" metadata of each call
	orgs    [][]string // client certificate organizations (Talos roles)
}

func (s *apid) Bootstrap(ctx context.Context, _ *machine.BootstrapRequest) (*machine.BootstrapResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	md, _ := metadata.FromIncomingContext(ctx)
	s.nodes = append(s.nodes, md.Get("node")...)
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			s.orgs = append(s.orgs, ti.State.PeerCertificates[0].Subject.Organization)
		}
	}
	var a answer
	if len(s.answers) > 0 {
		a = s.answers[0]
		if len(s.answers) > 1 {
			s.answers = s.answers[1:]
		}
	}
	if a.err != nil && a.inMetadata {
		st, _ := status.FromError(a.err)
		return &machine.BootstrapResponse{Messages: []*machine.Bootstrap{{
			Metadata: &common.Metadata{Hostname: "cp1", Error: st.Message(), Status: st.Proto()},
		}}}, nil
	}
	if a.err != nil {
		return nil, a.err
	}
	return &machine.BootstrapResponse{Messages: []*machine.Bootstrap{{Metadata: &common.Metadata{Hostname: "cp1"}}}}, nil
}

func (s *apid) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// talosPKI is a rack's secrets bundle and its admin talosconfig.
type talosPKI struct {
	bundle      *secrets.Bundle
	talosconfig *clientconfig.Config
}

func newTalosPKI(t *testing.T) talosPKI {
	t.Helper()
	b, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersion1_13)
	if err != nil {
		t.Fatal(err)
	}
	in, err := generate.NewInput("test", "https://192.0.2.10:6443", "1.36.0",
		generate.WithVersionContract(config.TalosVersion1_13),
		generate.WithSecretsBundle(b),
		generate.WithEndpointList([]string{"127.0.0.1"}))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := in.Talosconfig()
	if err != nil {
		t.Fatal(err)
	}
	return talosPKI{bundle: b, talosconfig: tc}
}

// startApid serves the test apid on 127.0.0.1:0 with a server certificate
// signed by pki's OS CA; it stops when the test ends.
func startApid(t *testing.T, pki talosPKI, answers ...answer) (*apid, string) {
	t.Helper()
	ca, err := x509.NewCertificateAuthorityFromCertificateAndKey(pki.bundle.Certs.OS)
	if err != nil {
		t.Fatal(err)
	}
	kp, err := x509.NewKeyPair(ca,
		x509.CommonName("apid"),
		x509.IPAddresses([]net.IP{net.IPv4(127, 0, 0, 1)}),
		x509.ExtKeyUsage([]stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth}),
		x509.NotAfter(time.Now().Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := tls.New(
		tls.WithClientAuthType(tls.Mutual),
		tls.WithCACertPEM(pki.bundle.Certs.OS.Crt),
		tls.WithKeypair(*kp.Certificate),
	)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	a := &apid{answers: answers}
	machine.RegisterMachineServiceServer(srv, a)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("apid: %v", err)
		}
	})
	return a, ln.Addr().String()
}

func hasRole(orgs []string, role string) bool { return slices.Contains(orgs, role) }
