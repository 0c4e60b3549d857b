// Package bringuptest serves a real gRPC Talos MachineService on loopback for
// tests of the bring-up: the Bootstrap call only, over mutual TLS set up as
// Talos's apid does it (server certificate from the cluster's OS CA, client
// certificates required and verified against the same CA).
package bringuptest

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
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Answer is what the server replies to one Bootstrap call.
type Answer struct {
	// Err is returned as the call's gRPC status (nil: OK).
	Err error
	// InMetadata puts Err in the reply's per-node metadata instead, as apid
	// does when it proxies one call to several nodes.
	InMetadata bool
}

// Apid is the running server. It counts the calls it gets.
type Apid struct {
	machine.UnimplementedMachineServiceServer

	addr    string
	mu      sync.Mutex
	answers []Answer
	calls   int
	nodes   []string
	orgs    [][]string
}

// Start serves on addr (e.g. "127.0.0.1:0") with a server certificate for
// addr's IP signed by b's OS CA, until the test ends. Call i gets answers[i];
// calls after the last answer get the last one (no answers: OK).
func Start(t testing.TB, b *secrets.Bundle, addr string, answers ...Answer) *Apid {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("apid: listen: %v", err)
	}
	ip := ln.Addr().(*net.TCPAddr).IP
	ca, err := x509.NewCertificateAuthorityFromCertificateAndKey(b.Certs.OS)
	if err != nil {
		t.Fatalf("apid: OS CA: %v", err)
	}
	kp, err := x509.NewKeyPair(ca,
		x509.CommonName("apid"),
		x509.IPAddresses([]net.IP{ip}),
		x509.ExtKeyUsage([]stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth}),
		x509.NotAfter(time.Now().Add(time.Hour)))
	if err != nil {
		t.Fatalf("apid: server certificate: %v", err)
	}
	cfg, err := tls.New(
		tls.WithClientAuthType(tls.Mutual),
		tls.WithCACertPEM(b.Certs.OS.Crt),
		tls.WithKeypair(*kp.Certificate),
	)
	if err != nil {
		t.Fatalf("apid: TLS config: %v", err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	a := &Apid{addr: ln.Addr().String(), answers: answers}
	machine.RegisterMachineServiceServer(srv, a)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-done; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("apid: %v", err)
		}
	})
	return a
}

// Addr is the address the server listens on.
func (a *Apid) Addr() string { return a.addr }

// Bootstrap implements the MachineService call.
func (a *Apid) Bootstrap(ctx context.Context, _ *machine.BootstrapRequest) (*machine.BootstrapResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.calls++
	md, _ := metadata.FromIncomingContext(ctx)
	a.nodes = append(a.nodes, md.Get("node")...)
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			a.orgs = append(a.orgs, ti.State.PeerCertificates[0].Subject.Organization)
		}
	}
	var ans Answer
	if len(a.answers) > 0 {
		ans = a.answers[0]
		if len(a.answers) > 1 {
			a.answers = a.answers[1:]
		}
	}
	if ans.Err != nil && ans.InMetadata {
		st, _ := status.FromError(ans.Err)
		return &machine.BootstrapResponse{Messages: []*machine.Bootstrap{{
			Metadata: &common.Metadata{Hostname: "node", Error: st.Message(), Status: st.Proto()},
		}}}, nil
	}
	if ans.Err != nil {
		return nil, ans.Err
	}
	return &machine.BootstrapResponse{Messages: []*machine.Bootstrap{{Metadata: &common.Metadata{Hostname: "node"}}}}, nil
}

// Calls is the number of Bootstrap calls so far.
func (a *Apid) Calls() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls
}

// Nodes are the "node" metadata values the calls carried.
func (a *Apid) Nodes() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.nodes)
}

// Orgs are the organizations (Talos roles) of each call's client
// certificate.
func (a *Apid) Orgs() [][]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.orgs)
}
