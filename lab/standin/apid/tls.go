package apid

import (
	stdtls "crypto/tls"
	stdx509 "crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/siderolabs/crypto/tls"
	"github.com/siderolabs/crypto/x509"
	"github.com/siderolabs/talos/pkg/machinery/config"
)

// ErrNoIssuingCA: the machine config has the OS CA's certificate without
// its key (a worker's config), so the machine cannot sign its own apid
// certificate. Talos's worker asks trustd on a control plane for one
// (secrets.APIController generateWorker): Server.ConfigureWorker.
var ErrNoIssuingCA = errors.New("the machine config's machine.ca has no key (a worker's config): a worker gets its API certificate from trustd on a control plane (Server.ConfigureWorker), not from Configure")

// sans are the server certificate's names, as Talos's APICertSANsController
// makes them: the config's machine.certSANs, the node's addresses, the
// hostname and its FQDN.
func sans(certSANs []string, addrs []netip.Addr, hostname string) (ips []net.IP, dns []string) {
	for _, s := range certSANs {
		if a, err := netip.ParseAddr(s); err == nil {
			addrs = append(addrs, a)
		} else {
			dns = append(dns, s)
		}
	}
	for _, a := range addrs {
		ip := net.IP(a.Unmap().AsSlice())
		if !slices.ContainsFunc(ips, ip.Equal) {
			ips = append(ips, ip)
		}
	}
	if hostname != "" {
		dns = append(dns, hostname)
	}
	slices.Sort(dns)
	return ips, slices.Compact(dns)
}

// maintenanceTLS is the maintenance API's TLS: a server certificate from a
// CA made up at boot (secrets.MaintenanceRootController,
// APIController.reconcileMaintenance), no client certificate asked
// (APIServiceConfig SkipVerifyingClientCert → tls.ServerOnly).
func maintenanceTLS(now time.Time, addrs []netip.Addr, hostname string) (*stdtls.Config, error) {
	ca, err := x509.NewSelfSignedCertificateAuthority(x509.ECDSA(true), x509.Organization("talos"),
		x509.NotBefore(now.Add(-time.Minute)), x509.NotAfter(now.Add(x509.DefaultCertificateValidityDuration)))
	if err != nil {
		return nil, fmt.Errorf("maintenance CA: %w", err)
	}
	ips, dns := sans(nil, addrs, hostname)
	kp, err := x509.NewKeyPair(ca,
		x509.IPAddresses(ips), x509.DNSNames(dns), x509.CommonName(firstOf(hostname, "maintenance")),
		x509.NotBefore(now.Add(-time.Minute)), x509.NotAfter(now.Add(x509.DefaultCertificateValidityDuration)),
		x509.KeyUsage(stdx509.KeyUsageDigitalSignature),
		x509.ExtKeyUsage([]stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth}))
	if err != nil {
		return nil, fmt.Errorf("maintenance certificate: %w", err)
	}
	return tls.New(tls.WithClientAuthType(tls.ServerOnly), tls.WithKeypair(*kp.Certificate))
}

// configuredTLS is apid's TLS once the machine has its config
// (provider.NewTLSConfig ServerConfig, with the certificate
// secrets.APIController.generateControlPlane issues): a server
// certificate signed by the config's machine CA for the node's names,
// client certificates required and verified against the accepted CAs
// (the issuing CA and machine.acceptedCAs), each client certificate with
// the client-auth extended key usage only (service.go verifyExtKeyUsage).
func configuredTLS(now time.Time, cfg config.Provider, addrs []netip.Addr, hostname string) (*stdtls.Config, error) {
	sec := cfg.Machine().Security()
	issuing := sec.IssuingCA()
	if issuing == nil || len(issuing.Crt) == 0 {
		return nil, errors.New("the machine config has no machine.ca")
	}
	if len(issuing.Key) == 0 {
		return nil, ErrNoIssuingCA
	}
	ca, err := x509.NewCertificateAuthorityFromCertificateAndKey(issuing)
	if err != nil {
		return nil, fmt.Errorf("machine CA: %w", err)
	}
	ips, dns, cn := names(cfg, addrs, hostname)
	kp, err := x509.NewKeyPair(ca,
		x509.IPAddresses(ips), x509.DNSNames(dns), x509.CommonName(cn),
		x509.NotBefore(now.Add(-time.Minute)), x509.NotAfter(now.Add(x509.DefaultCertificateValidityDuration)),
		x509.KeyUsage(stdx509.KeyUsageDigitalSignature),
		x509.ExtKeyUsage([]stdx509.ExtKeyUsage{stdx509.ExtKeyUsageServerAuth}))
	if err != nil {
		return nil, fmt.Errorf("API server certificate: %w", err)
	}
	return mutualTLS(*kp.Certificate, acceptedCAs(cfg))
}

// names are the API certificate's names for a configured machine
// (APICertSANsController): IP and DNS SANs and the common name, the
// hostname (the config's, else the machine's: Talos's HostnameStatus).
func names(cfg config.Provider, addrs []netip.Addr, hostname string) (ips []net.IP, dns []string, cn string) {
	cn = hostname
	if h := cfg.NetworkHostnameConfig(); h != nil && h.Hostname() != "" {
		cn = h.Hostname()
	}
	ips, dns = sans(cfg.Machine().Security().CertSANs(), addrs, cn)
	return ips, dns, cn
}

// mutualTLS is apid's configured-mode server TLS for a certificate:
// client certificates required, verified against cas (PEM), with the
// client-auth extended key usage only.
func mutualTLS(cert stdtls.Certificate, cas []byte) (*stdtls.Config, error) {
	tc, err := tls.New(tls.WithClientAuthType(tls.Mutual), tls.WithCACertPEM(cas), tls.WithKeypair(cert))
	if err != nil {
		return nil, err
	}
	tc.VerifyPeerCertificate = verifyExtKeyUsage
	return tc, nil
}

// verifyExtKeyUsage is apid's (internal/app/apid/service.go): every
// non-CA certificate of the verified chain has exactly the client-auth
// extended key usage.
func verifyExtKeyUsage(_ [][]byte, chains [][]*stdx509.Certificate) error {
	if len(chains) == 0 {
		return errors.New("no verified chains")
	}
	for _, c := range chains[0] {
		if c.IsCA {
			continue
		}
		if !slices.Equal(c.ExtKeyUsage, []stdx509.ExtKeyUsage{stdx509.ExtKeyUsageClientAuth}) {
			return fmt.Errorf("certificate %q is missing the client auth extended key usage", c.Subject)
		}
	}
	return nil
}
