// Package tlscert makes the throwaway certificate the load tools
// (bench/cmd/wsbench, soak/cmd/soak) have their proxies terminate TLS with:
// a self-signed ECDSA P-256 certificate for 127.0.0.1, written at run time
// into a directory the tool removes, so that no key is ever committed.
package tlscert

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Cert is a certificate and its key on disk.
type Cert struct {
	CertFile string // the certificate, PEM (Caddy's and nginx's certificate)
	KeyFile  string // its PKCS #8 private key, PEM
	// BundleFile has the certificate and the key in one PEM file, the form
	// HAProxy's crt takes.
	BundleFile string
	DER        []byte // the certificate, for pinning
}

// Write makes a certificate valid for 127.0.0.1 and localhost from an hour
// ago (a clock that drifts a little must not reject it) to a week ahead
// (longer than any run, and far enough off that Caddy does not warn of
// its expiry), and writes its files into dir.
func Write(dir string) (*Cert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	c := &Cert{
		CertFile:   filepath.Join(dir, "cert.pem"),
		KeyFile:    filepath.Join(dir, "key.pem"),
		BundleFile: filepath.Join(dir, "bundle.pem"),
		DER:        der,
	}
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{c.CertFile, certPEM, 0o644},
		{c.KeyFile, keyPEM, 0o600},
		{c.BundleFile, append(append([]byte{}, certPEM...), keyPEM...), 0o600},
	} {
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// ClientConfig is a client's TLS configuration that accepts this
// certificate and no other, over TLS 1.3 only. The certificate is pinned
// rather than verified as a chain: a chain check would cost the load
// generator a second signature verification per handshake, on the core it
// shares with the backend, and prove nothing more. It keeps no session
// cache, so that every connection makes a full handshake, as a new
// client's would.
func (c *Cert) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // replaced by the pin in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, c.DER) {
				return errors.New("tlscert: the server did not present the run's certificate")
			}
			return nil
		},
	}
}

// Describe names what a handshake negotiated, e.g. "TLS 1.3,
// TLS_AES_128_GCM_SHA256, X25519MLKEM768".
func Describe(cs tls.ConnectionState) string {
	return fmt.Sprintf("%s, %s, %s", tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite), cs.CurveID)
}
