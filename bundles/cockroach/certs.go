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
	"strings"
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
//
// Every pair is written key first, then certificate, so a run killed between
// two writes leaves keys without their certificates; the next run issues the
// missing certificate from the key already on disk (never a new key over
// it), so any such state is taken up where it stopped. A CA is only created
// or completed while no node or client file exists: those were signed by
// the CA that is missing, and a new one would not verify them.
func LoadOrCreateCerts(dir string, replicas int, ns string, now func() time.Time) (*Certs, error) {
	return loadOrCreateCerts(dir, replicas, ns, now, nil)
}

// loadOrCreateCerts is LoadOrCreateCerts; afterWrite, when not nil, is
// called after each file is written (the crash tests stop the process there).
func loadOrCreateCerts(dir string, replicas int, ns string, now func() time.Time, afterWrite func(path string)) (*Certs, error) {
	if replicas < 1 {
		return nil, fmt.Errorf("cockroach certificates: %d replicas", replicas)
	}
	if ns == "" {
		return nil, errors.New("cockroach certificates: no namespace")
	}
	if err := checkCAPresent(dir); err != nil {
		return nil, err
	}
	t := now()
	ca, caKey, caPEM, err := loadOrCreatePair(dir, CACertFile, CAKeyFile, nil, nil, afterWrite, func(key crypto.Signer) (*x509.Certificate, error) {
		return caTemplate(t, key)
	})
	if err != nil {
		return nil, err
	}
	ipLocal := []net.IP{net.IPv4(127, 0, 0, 1).To4()}
	node, _, nodePEM, err := loadOrCreatePair(dir, NodeCertFile, NodeKeyFile, ca, caKey, afterWrite, func(key crypto.Signer) (*x509.Certificate, error) {
		return leafTemplate(t, key, "node", NodeNames(replicas, ns), ipLocal, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
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
	root, _, rootPEM, err := loadOrCreatePair(dir, RootCertFile, RootKeyFile, ca, caKey, afterWrite, func(key crypto.Signer) (*x509.Certificate, error) {
		return leafTemplate(t, key, "root", nil, nil, x509.ExtKeyUsageClientAuth)
	})
	if err != nil {
		return nil, err
	}
	if !hasUsages(root, x509.ExtKeyUsageClientAuth) || root.Subject.CommonName != "root" {
		return nil, fmt.Errorf("cockroach certificates: %s is not a root client certificate (CN root, client auth)", filepath.Join(dir, RootCertFile))
	}
	return &Certs{Dir: dir, CACert: caPEM.cert, NodeCert: nodePEM.cert, NodeKey: nodePEM.key, RootCert: rootPEM.cert, RootKey: rootPEM.key}, nil
}

// checkCAPresent refuses a directory whose CA certificate is missing while
// node or client files exist. Creation writes the CA first, so no crash
// leaves this state: someone removed the CA, and a new one (or a CA
// certificate issued again) is not what the cluster trusts.
func checkCAPresent(dir string) error {
	caPath := filepath.Join(dir, CACertFile)
	if _, err := os.Lstat(caPath); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return nil // present, or an error loadOrCreatePair reports
	}
	var found []string
	for _, f := range []string{NodeCertFile, NodeKeyFile, RootCertFile, RootKeyFile} {
		if _, err := os.Lstat(filepath.Join(dir, f)); err == nil {
			found = append(found, f)
		}
	}
	if len(found) == 0 {
		return nil
	}
	return fmt.Errorf("cockroach certificates: %s is missing but %s in %s were issued by it: restore %s and %s from your backup "+
		"(or remove the whole directory to issue a new set, which the running database will not trust)",
		caPath, strings.Join(found, ", "), dir, CACertFile, CAKeyFile)
}

type pemPair struct{ cert, key []byte }

// loadOrCreatePair loads certFile+keyFile from dir. When both are absent it
// creates them with mk, signed by parent (self-signed when parent is nil);
// when only the certificate is absent it issues it for the key on disk. A
// loaded certificate must match its key and be signed by parent.
func loadOrCreatePair(dir, certFile, keyFile string, parent *x509.Certificate, parentKey crypto.Signer, afterWrite func(string),
	mk func(key crypto.Signer) (*x509.Certificate, error)) (*x509.Certificate, crypto.Signer, pemPair, error) {
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
		key, err := newKey()
		if err != nil {
			return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %s: %w", keyPath, err)
		}
		keyPEM, err := encodeKey(key)
		if err != nil {
			return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %s: %w", keyPath, err)
		}
		// The key first: a certificate on disk always has its key beside it,
		// and a key alone is completed by the next run (the case below).
		if err := atomicfile.WriteNew(keyPath, keyPEM, 0o600); err != nil {
			return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %w", err)
		}
		if afterWrite != nil {
			afterWrite(keyPath)
		}
		return issue(certPath, key, keyPEM, parent, parentKey, afterWrite, mk)
	case certMissing:
		// Left by a run that stopped between the two writes.
		key, err := parseKey(keyPEM)
		if err != nil {
			return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %s: %w", keyPath, err)
		}
		return issue(certPath, key, keyPEM, parent, parentKey, afterWrite, mk)
	case keyMissing:
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %s exists but %s is missing: restore it (or remove both to issue new ones)", certPath, keyPath)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %s: %w", certPath, err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %s: %w", keyPath, err)
	}
	if err := checkPair(certPath, keyPath, cert, key, parent, dir); err != nil {
		return nil, nil, pemPair{}, err
	}
	return cert, key, pemPair{certPEM, keyPEM}, nil
}

// checkPair checks that cert belongs to key and is signed by parent (by
// itself, as a CA, when parent is nil).
func checkPair(certPath, keyPath string, cert *x509.Certificate, key crypto.Signer, parent *x509.Certificate, dir string) error {
	if !publicKeyEqual(cert.PublicKey, key.Public()) {
		return fmt.Errorf("cockroach certificates: %s does not belong to %s", keyPath, certPath)
	}
	signer := parent
	if signer == nil {
		signer = cert
		if !cert.IsCA {
			return fmt.Errorf("cockroach certificates: %s is not a CA certificate", certPath)
		}
	}
	if err := cert.CheckSignatureFrom(signer); err != nil {
		return fmt.Errorf("cockroach certificates: %s is not signed by the CA %s: %w", certPath, filepath.Join(dir, CACertFile), err)
	}
	return nil
}

// issue signs a certificate from mk for key (already on disk as keyPEM) with
// parent, or self-signed when parent is nil, and writes it to certPath.
func issue(certPath string, key crypto.Signer, keyPEM []byte, parent *x509.Certificate, parentKey crypto.Signer, afterWrite func(string),
	mk func(key crypto.Signer) (*x509.Certificate, error)) (*x509.Certificate, crypto.Signer, pemPair, error) {
	tmpl, err := mk(key)
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
	p := pemPair{cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: keyPEM}
	if err := atomicfile.WriteNew(certPath, p.cert, 0o600); err != nil {
		return nil, nil, pemPair{}, fmt.Errorf("cockroach certificates: %w", err)
	}
	if afterWrite != nil {
		afterWrite(certPath)
	}
	return cert, key, p, nil
}

// encodeKey is PKCS#1 PEM, as `cockroach cert` writes RSA keys.
func encodeKey(key crypto.Signer) ([]byte, error) {
	rsaKey, ok := key.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%T is not an RSA key", key)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}), nil
}

func caTemplate(now time.Time, key crypto.Signer) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
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
	}, nil
}

func leafTemplate(now time.Time, key crypto.Signer, cn string, dns []string, ips []net.IP, usages ...x509.ExtKeyUsage) (*x509.Certificate, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
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
	}, nil
}

func newKey() (*rsa.PrivateKey, error) {
	key, err := rsa.GenerateKey(rand.Reader, keyBits)
	if err != nil {
		return nil, fmt.Errorf("generate RSA key: %w", err)
	}
	return key, nil
}

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return serial, nil
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
