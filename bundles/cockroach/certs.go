package cockroach

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

// File names in the certificates directory, as cockroach's --certs-dir
// expects them.
const (
	CACertFile   = "ca.crt"
	CAKeyFile    = "ca.key"
	NodeCertFile = "node.crt"
	NodeKeyFile  = "node.key"
	RootCertFile = "client.root.crt"
	RootKeyFile  = "client.root.key"
)

// Validity of what LoadOrCreateCerts issues (cockroach cert's defaults), and
// how far NotBefore is backdated to absorb clock skew between this laptop
// and the nodes.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	CertValidity = 5 * 365 * 24 * time.Hour
	Backdate     = time.Hour
	// RSA 2048 like `cockroach cert`: cockroach takes RSA and ECDSA keys,
	// not Ed25519.
	keyBits = 2048
)

// Certs is the PEM of the CA, node and root client certificates and keys,
// and the directory they are kept in.
type Certs struct {
	Dir      string
	CACert   []byte
	NodeCert []byte
	NodeKey  []byte
	RootCert []byte
	RootKey  []byte
}

// Path returns the path of one of the files above in c.Dir.
func (c *Certs) Path(file string) string { return filepath.Join(c.Dir, file) }

// NodeNames are the DNS names the node certificate must cover for replicas
// pods of the StatefulSet in namespace ns: the public and headless services
// and every pod, each in its short and qualified forms, and the wildcards of
// the headless service (so a later replica is covered too).
func NodeNames(replicas int, ns string) []string {
	forms := func(name string) []string {
		return []string{name, name + "." + ns, name + "." + ns + ".svc", name + "." + ns + ".svc.cluster.local"}
	}
	names := []string{"localhost"}
	names = append(names, forms(PublicService)...)
	names = append(names, forms(HeadlessService)...)
	names = append(names, forms("*."+HeadlessService)...)
	for i := range replicas {
		names = append(names, forms(fmt.Sprintf("%s-%d.%s", StatefulSet, i, HeadlessService))...)
	}
	return names
}

// LoadOrCreateCerts returns the certificates kept in dir, creating what is
// missing: a CA, a node certificate (CN node, server and client auth, SANs
// from NodeNames and 127.0.0.1) and a root client certificate (CN root).
// Files are written once, mode 0600, and never regenerated over existing
// ones; an unreadable, corrupt or inconsistent file (a certificate without
// its key, one not signed by the CA, a node certificate that does not cover
// a pod name) is an error naming it.
func LoadOrCreateCerts(dir string, replicas int, ns string, now func() time.Time) (*Certs, error) {
	if replicas < 1 {
		return nil, fmt.Errorf("cockroach certificates: %d replicas", replicas)
	}
	if ns == "" {
		return nil, errors.New("cockroach certificates: no namespace")
	}
	t := now()
	ca, caKey, caPEM, err := loadOrCreatePair(dir, CACertFile, CAKeyFile, nil, nil, func() (*x509.Certificate, crypto.Signer, error) {
		return caTemplate(t)
	})
	if err != nil {
		return nil, err
	}
	ipLocal := []net.IP{net.IPv4(127, 0, 0, 1).To4()}
	node, _, nodePEM, err := loadOrCreatePair(dir, NodeCertFile, NodeKeyFile, ca, caKey, func() (*x509.Certificate, crypto.Signer, error) {
		return leafTemplate(t, "node", NodeNames(replicas, ns), ipLocal, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	})
	if err != nil {
		return nil, err
	}
	for _, name := range append(NodeNames(replicas, ns), "127.0.0.1") {
		if name[0] == '*' {
			continue
		}
		if err := node.VerifyHostname(name); err != nil {
			return nil, fmt.Errorf("cockroach certificates: %s does not cover %s (remove %s and %s to issue a new one): %w",
				filepath.Join(dir, NodeCertFile), name, NodeCertFile, NodeKeyFile, err)
		}
	}
	if !hasUsages(node, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth) || node.Subject.CommonName != "node" {
		return nil, fmt.Errorf("cockroach certificates: %s is not a node certificate (CN node, server and client auth)", filepath.Join(dir, NodeCertFile))
	}
	root, _, rootPEM, err := loadOrCreatePair(dir, RootCertFile, RootKeyFile, ca, caKey, func() (*x509.Certificate, crypto.Signer, error) {
		return leafTemplate(t, "root", nil, nil, x509.ExtKeyUsageClientAuth)
	})
	if err != nil {
		return nil, err
	}
	if !hasUsages(root, x509.ExtKeyUsageClientAuth) || root.Subject.CommonName != "root" {
		return nil, fmt.Errorf("cockroach certificates: %s is not a root client certificate (CN root, client auth)", filepath.Join(dir, RootCertFile))
	}
	return &Certs{Dir: dir, CACert: caPEM.cert, NodeCert: nodePEM.cert, NodeKey: nodePEM.key, RootCert: rootPEM.cert, RootKey: rootPEM.key}, nil
}

type pemPair struct{ cert, key []byte }

// loadOrCreatePair loads certFile+keyFile from dir, or when both are absent
// creates them with mk, signed by parent (self-signed when parent is nil).
// A loaded certificate must match its key and be signed by parent.
func loadOrCreatePair(dir, certFile, keyFile string, parent *x509.Certificate, parentKey crypto.Signer,
	mk func() (*x509.Certificate, crypto.Signer, error)) (*x509.Certificate, crypto.Signer, pemPair, error) {
	certPath, keyPath := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	certMissing, keyMissing := errors.Is(certErr, fs.ErrNotExist), errors.Is(keyErr, fs.ErrNotExist)
	switch {
	case certErr != nil && !certMissing:
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: read %s: %w", certPath, certErr)
	case keyErr != nil && !keyMissing:
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: read %s: %w", keyPath, keyErr)
	case certMissing && keyMissing:
		return create(certPath, keyPath, parent, parentKey, mk)
	case certMissing || keyMissing:
		have, missing := certPath, keyPath
		if certMissing {
			have, missing = keyPath, certPath
		}
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %s exists but %s is missing: restore it (or remove both to issue new ones)", have, missing)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %s: %w", certPath, err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %s: %w", keyPath, err)
	}
	if !publicKeyEqual(cert.PublicKey, key.Public()) {
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %s does not belong to %s", keyPath, certPath)
	}
	signer := parent
	if signer == nil {
		signer = cert
		if !cert.IsCA {
			return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %s is not a CA certificate", certPath)
		}
	}
	if err := cert.CheckSignatureFrom(signer); err != nil {
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %s is not signed by the CA %s: %w", certPath, filepath.Join(dir, CACertFile), err)
	}
	return cert, key, pemPair{certPEM, keyPEM}, nil
}

func create(certPath, keyPath string, parent *x509.Certificate, parentKey crypto.Signer,
	mk func() (*x509.Certificate, crypto.Signer, error)) (*x509.Certificate, crypto.Signer, pemPair, error) {
	tmpl, key, err := mk()
	if err != nil {
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: prepare %s: %w", certPath, err)
	}
	signer, signerKey := parent, parentKey
	if signer == nil {
		signer, signerKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, key.Public(), signerKey)
	if err != nil {
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: sign %s: %w", certPath, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: parse new %s: %w", certPath, err)
	}
	rsaKey, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %T is not an RSA key", key)
	}
	p := pemPair{
		cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		key:  pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}),
	}
	// The key first: a certificate on disk always has its key beside it.
	if err := atomicfile.WriteNew(keyPath, p.key, 0o600); err != nil {
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %w", err)
	}
	if err := atomicfile.WriteNew(certPath, p.cert, 0o600); err != nil {
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %w", err)
	}
	return cert, key, p, nil
}

func caTemplate(now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, serial, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "rackboot CockroachDB CA", Organization: []string{"Cockroach"}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}, key, nil
}

func leafTemplate(now time.Time, cn string, dns []string, ips []net.IP, usages ...x509.ExtKeyUsage) (*x509.Certificate, crypto.Signer, error) {
	key, serial, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	return &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"Cockroach"}},
		NotBefore:             now.Add(-Backdate),
		NotAfter:              now.Add(CertValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           usages,
		BasicConstraintsValid: true,
		DNSNames:              dns,
		IPAddresses:           ips,
	}, key, nil
}

func newKey() (*rsa.PrivateKey, *big.Int, error) {
	key, err := rsa.GenerateKey(rand.Reader, keyBits)
	if err != nil {
		return nil, nil, fmt.Errorf("generate RSA key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("serial number: %w", err)
	}
	return key, serial, nil
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return c, nil
}

func parseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	switch blk.Type {
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse RSA key: %w", err)
		}
		return k, nil
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse PKCS#8 key: %w", err)
		}
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, fmt.Errorf("%T is not a signing key", k)
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse EC key: %w", err)
		}
		return k, nil
	}
	return nil, fmt.Errorf("unexpected PEM block %q", blk.Type)
}

func publicKeyEqual(a crypto.PublicKey, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

func hasUsages(c *x509.Certificate, want ...x509.ExtKeyUsage) bool {
	for _, w := range want {
		found := false
		for _, u := range c.ExtKeyUsage {
			found = found || u == w
		}
		if !found {
			return false
		}
	}
	return true
}
