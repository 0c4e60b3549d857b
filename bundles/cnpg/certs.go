package cnpg

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
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/dotfile/rackboot/internal/atomicfile"
)

// Files of the server certificates in the state directory.
const (
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
)

// certValidity is how long rackboot's CA and server certificate are valid.
const certValidity = 10 * 365 * 24 * time.Hour

// Certs are the PostgreSQL server's CA and certificate, PEM encoded.
type Certs struct {
	Dir        string
	CACert     []byte
	CAKey      []byte
	ServerCert []byte
	ServerKey  []byte
}

// LoadOrCreateCerts returns the CA and server certificate kept in dir,
// creating what is missing (0600 files, each written once, atomically; an
// existing file is never replaced). The server certificate names dnsNames;
// one that does not cover them all, or that another CA signed, is an error
// that names the file (it is not replaced silently: clients trust the CA).
func LoadOrCreateCerts(dir string, dnsNames []string, now func() time.Time) (*Certs, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("postgres certificates: %w", err)
	}
	caCert, caKey, err := loadOrCreate(dir, CACertFile, CAKeyFile, func(key crypto.Signer) (*x509.Certificate, []byte, error) {
		tmpl := template(now(), "rackboot postgres CA", nil)
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
		return tmpl, der, err
	}, nil, nil)
	if err != nil {
		return nil, err
	}
	ca, err := parseCert(caCert)
	if err != nil {
		return nil, fmt.Errorf("postgres CA %s: %w", filepath.Join(dir, CACertFile), err)
	}
	caSigner, err := parseKey(caKey)
	if err != nil {
		return nil, fmt.Errorf("postgres CA key %s: %w", filepath.Join(dir, CAKeyFile), err)
	}
	srvCert, srvKey, err := loadOrCreate(dir, ServerCertFile, ServerKeyFile, func(key crypto.Signer) (*x509.Certificate, []byte, error) {
		tmpl := template(now(), dnsNames[0], dnsNames)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caSigner)
		return tmpl, der, err
	}, ca, dnsNames)
	if err != nil {
		return nil, err
	}
	return &Certs{Dir: dir, CACert: caCert, CAKey: caKey, ServerCert: srvCert, ServerKey: srvKey}, nil
}

// loadOrCreate reads certFile and keyFile, or creates both when neither
// exists. With parent, an existing certificate must be signed by it and name
// every one of dnsNames.
func loadOrCreate(dir, certFile, keyFile string, make func(crypto.Signer) (*x509.Certificate, []byte, error), parent *x509.Certificate, dnsNames []string) ([]byte, []byte, error) {
	certPath, keyPath := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	cert, cerr := os.ReadFile(certPath)
	key, kerr := os.ReadFile(keyPath)
	switch {
	case cerr == nil && kerr == nil:
		c, err := parseCert(cert)
		if err != nil {
			return nil, nil, fmt.Errorf("%s (left untouched): %w", certPath, err)
		}
		if parent != nil {
			if err := c.CheckSignatureFrom(parent); err != nil {
				return nil, nil, fmt.Errorf("%s is not signed by %s (left untouched; move both away to issue new ones, and give the apps the new CA): %w", certPath, filepath.Join(dir, CACertFile), err)
			}
			for _, n := range dnsNames {
				if !slices.Contains(c.DNSNames, n) {
					return nil, nil, fmt.Errorf("%s does not name %s (left untouched): move %s and %s away to issue a new one", certPath, n, certFile, keyFile)
				}
			}
		}
		return cert, key, nil
	case errors.Is(cerr, fs.ErrNotExist) && errors.Is(kerr, fs.ErrNotExist):
	case errors.Is(cerr, fs.ErrNotExist) && kerr == nil:
		// A run stopped between the key and its certificate: issue the
		// certificate for the key on disk (never a new key over it).
		k, err := parseKey(key)
		if err != nil {
			return nil, nil, fmt.Errorf("%s (left untouched): %w", keyPath, err)
		}
		return issueFor(certPath, key, k, make)
	case cerr != nil && !errors.Is(cerr, fs.ErrNotExist):
		return nil, nil, fmt.Errorf("read %s: %w", certPath, cerr)
	case kerr != nil && !errors.Is(kerr, fs.ErrNotExist):
		return nil, nil, fmt.Errorf("read %s: %w", keyPath, kerr)
	default:
		return nil, nil, fmt.Errorf("%s has one of %s and %s but not the other (left untouched): restore the missing one from a backup", dir, certFile, keyFile)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("new key for %s: %w", certPath, err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key for %s: %w", certPath, err)
	}
	key = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	// The key first: a certificate on disk always has its key.
	if err := atomicfile.WriteNew(keyPath, key, 0o600); err != nil {
		return nil, nil, fmt.Errorf("write %s: %w", keyPath, err)
	}
	return issueFor(certPath, key, k, make)
}

// issueFor issues and writes the certificate of key.
func issueFor(certPath string, keyPEM []byte, key crypto.Signer, make func(crypto.Signer) (*x509.Certificate, []byte, error)) ([]byte, []byte, error) {
	_, der, err := make(key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: %w", certPath, err)
	}
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := atomicfile.WriteNew(certPath, cert, 0o600); err != nil {
		return nil, nil, fmt.Errorf("write %s: %w", certPath, err)
	}
	return cert, keyPEM, nil
}

func template(now time.Time, cn string, dns []string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"rackboot"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		DNSNames:     dns,
	}
}

func parseCert(b []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func parseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("not a PEM key")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", k)
	}
	return s, nil
}
