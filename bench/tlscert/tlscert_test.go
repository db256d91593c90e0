package tlscert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"os"
	"strings"
	"testing"
)

// The files load as a key pair (separately and as HAProxy's bundle), the
// key is ECDSA P-256, and a client with ClientConfig completes a TLS 1.3
// handshake with a server presenting them.
func TestWriteAndHandshake(t *testing.T) {
	c, err := Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.LoadX509KeyPair(c.BundleFile, c.BundleFile); err != nil {
		t.Fatalf("bundle: %v", err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		t.Fatalf("key is %T, want ECDSA P-256", pair.PrivateKey)
	}
	if fi, err := os.Stat(c.KeyFile); err != nil || fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("key file mode %v, %v: readable by others", fi.Mode(), err)
	}

	cs, err := handshake(t, pair, c.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	if cs.Version != tls.VersionTLS13 {
		t.Errorf("negotiated %s, want TLS 1.3", tls.VersionName(cs.Version))
	}
	if d := Describe(cs); !strings.HasPrefix(d, "TLS 1.3, TLS_") {
		t.Errorf("Describe = %q", d)
	}
}

// The pin refuses any other certificate, and the client refuses TLS 1.2.
func TestClientConfigRefuses(t *testing.T) {
	c, err := Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	other, err := Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	otherPair, err := tls.LoadX509KeyPair(other.CertFile, other.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(t, otherPair, c.ClientConfig()); err == nil {
		t.Error("handshake with another certificate succeeded")
	}
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := handshakeMax(t, pair, c.ClientConfig(), tls.VersionTLS12); err == nil {
		t.Error("handshake with a TLS 1.2 server succeeded")
	}
	block, _ := pem.Decode(mustRead(t, c.CertFile))
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.VerifyHostname("127.0.0.1"); err != nil {
		t.Errorf("certificate: %v", err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func handshake(t *testing.T, pair tls.Certificate, client *tls.Config) (tls.ConnectionState, error) {
	return handshakeMax(t, pair, client, 0)
}

// handshakeMax runs a server with pair (at most maxVersion, if set) on a
// loopback listener and returns what the client negotiated.
func handshakeMax(t *testing.T, pair tls.Certificate, client *tls.Config, maxVersion uint16) (tls.ConnectionState, error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}, MaxVersion: maxVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		conn.(*tls.Conn).Handshake()
		io.Copy(io.Discard, conn)
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), client)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer conn.Close()
	return conn.ConnectionState(), nil
}
