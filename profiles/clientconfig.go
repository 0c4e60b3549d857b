package profiles

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Talosconfig is the admin talosconfig for the rack's cluster (talosctl's
// client config), with a client certificate signed by the bundle's Talos CA,
// valid from kubeconfigBackdate before the bundle's clock.
//
// Endpoints and nodes are the control planes' own addresses, not the VIP:
// the VIP is held by whichever control plane wins an election through etcd,
// so it answers only after etcd has been bootstrapped, which needs talosctl
// (and later, during an etcd outage, the VIP is gone exactly when talosctl is
// needed most). Talos's apid proxies to any node from any endpoint anyway.
func Talosconfig(r *Rack, b *secrets.Bundle) ([]byte, error) {
	cps := r.controlPlaneIPs()
	if len(cps) == 0 {
		return nil, errors.New("talosconfig: no control plane has a static address: give at least one control plane an address such as 192.168.1.11/24")
	}
	// A new client certificate for every command: valid from a little
	// before now, as the kubeconfig's, so a node whose clock is behind
	// this laptop's (one without NTP yet; a lab VM) does not refuse it as
	// not yet valid ("tls: expired certificate").
	bc := *b
	clk := b.Clock
	if clk == nil {
		clk = secrets.NewClock()
	}
	bc.Clock = backdated{clk, kubeconfigBackdate}
	in, err := r.newInput(&bc)
	if err != nil {
		return nil, fmt.Errorf("talosconfig: %w", err)
	}
	cfg, err := in.Talosconfig()
	if err != nil {
		return nil, fmt.Errorf("talosconfig: sign client certificate: %w", err)
	}
	ctx, ok := cfg.Contexts[r.Cluster.Name]
	if !ok {
		return nil, fmt.Errorf("talosconfig: no context %q generated", r.Cluster.Name)
	}
	ctx.Nodes = cps
	out, err := cfg.Bytes()
	if err != nil {
		return nil, fmt.Errorf("talosconfig: encode: %w", err)
	}
	return out, nil
}

// backdated is a clock behind another by a fixed duration.
type backdated struct {
	clock secrets.Clock
	by    time.Duration
}

func (c backdated) Now() time.Time { return c.clock.Now().Add(-c.by) }

// kubeconfigBackdate covers a little clock skew between this laptop and the
// API server.
const kubeconfigBackdate = 5 * time.Minute

// AdminKubeconfig is a cluster-admin kubeconfig for https://<vip>:6443: a
// client certificate (CN admin, O system:masters, valid one year from now)
// signed by the bundle's Kubernetes CA, as Talos's own `talosctl kubeconfig`
// issues; cluster, user and context named as talosctl names them.
func AdminKubeconfig(r *Rack, b *secrets.Bundle, now time.Time) ([]byte, error) {
	if b == nil || b.Certs == nil || b.Certs.K8s == nil {
		return nil, errors.New("kubeconfig: the secrets bundle has no Kubernetes CA")
	}
	if ip := net.ParseIP(r.Cluster.VIP); ip == nil {
		return nil, fmt.Errorf("kubeconfig: cluster.vip %q is not an IP address", r.Cluster.VIP)
	}
	caCert, caKey, err := parseCA(b.Certs.K8s.Crt, b.Certs.K8s.Key)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: Kubernetes CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: generate client key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: serial number: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: constants.KubernetesAdminCertCommonName, Organization: []string{constants.KubernetesAdminCertOrganization}},
		NotBefore:    now.Add(-kubeconfigBackdate),
		NotAfter:     now.Add(constants.KubernetesAdminCertDefaultLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: sign client certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: encode client key: %w", err)
	}

	cluster := r.Cluster.Name
	user := "admin@" + cluster
	kc := clientcmdapi.NewConfig()
	kc.Clusters[cluster] = &clientcmdapi.Cluster{
		Server:                   r.clusterEndpoint(),
		CertificateAuthorityData: b.Certs.K8s.Crt,
	}
	kc.AuthInfos[user] = &clientcmdapi.AuthInfo{
		ClientCertificateData: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		ClientKeyData:         pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
	kc.Contexts[user] = &clientcmdapi.Context{Cluster: cluster, AuthInfo: user, Namespace: "default"}
	kc.CurrentContext = user
	out, err := clientcmd.Write(*kc)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: encode: %w", err)
	}
	return out, nil
}

// parseCA parses a PEM CA certificate and its private key.
func parseCA(crtPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer, error) {
	blk, _ := pem.Decode(crtPEM)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, nil, errors.New("certificate is not PEM")
	}
	crt, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parse certificate: %w", err)
	}
	if !crt.IsCA {
		return nil, nil, errors.New("certificate is not a CA")
	}
	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return nil, nil, err
	}
	return crt, key, nil
}

// parsePrivateKey parses a PEM private key in any of the encodings Talos
// bundles use (EC, PKCS#1 RSA, PKCS#8 incl. Ed25519).
func parsePrivateKey(keyPEM []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(keyPEM)
	if blk == nil {
		return nil, errors.New("private key is not PEM")
	}
	if k, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse private key (%s): %w", blk.Type, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", k)
	}
	return s, nil
}
