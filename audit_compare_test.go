//go:build auditcompare

package upgrade

// The comparison table of docs/audit.md: the audit, in the canary mode,
// against stock Caddy, Caddy with the upgrade module, nginx and HAProxy,
// each set up for WebSockets as its own documentation shows, each in front
// of the same canary and terminating TLS on 127.0.0.1.
//
// It needs the nginx and haproxy binaries (Debian: apt-get install nginx
// haproxy) and fails without them. Run it with
//
//	go test -tags auditcompare -run TestAuditCompare -count=1 -v .
//
// It is behind a build tag so that `make test`, which must not skip, does
// not depend on those packages.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/seedf05e/caddy-upgrade/internal/audit"
)

// compareCert writes a self-signed ECDSA P-256 certificate for localhost
// and 127.0.0.1 and returns the paths of its certificate and key.
func compareCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}

// freePort is a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startProxy runs a proxy in the foreground until the test ends and waits
// until it accepts connections on port.
func startProxy(t *testing.T, port int, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, name, args...)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
	})
	if !pollUntil(10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		t.Fatalf("%s does not listen on %d: %s", name, port, out.Bytes())
	}
}

// versionOf runs a binary's version flag and returns the first line.
func versionOf(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
}

// startNginx serves the WebSocket proxying setup of nginx's documentation
// (the $connection_upgrade map), over TLS with HTTP/2.
func startNginx(t *testing.T, dir, cert, key, canary string) int {
	t.Helper()
	port := freePort(t)
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log stderr error;
events { worker_connections 256; }
http {
	access_log off;
	client_body_temp_path %[1]s/body;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	map $http_upgrade $connection_upgrade {
		default upgrade;
		''      close;
	}
	server {
		listen 127.0.0.1:%[2]d ssl http2;
		server_name localhost;
		ssl_certificate %[3]s;
		ssl_certificate_key %[4]s;
		ssl_protocols TLSv1.2 TLSv1.3;
		location /ws {
			proxy_pass http://%[5]s;
			proxy_http_version 1.1;
			proxy_set_header Upgrade $http_upgrade;
			proxy_set_header Connection $connection_upgrade;
			proxy_set_header Host $host;
		}
	}
}
`, dir, port, cert, key, canary)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	startProxy(t, port, "nginx", "-p", dir, "-c", path)
	return port
}

// startHAProxy serves HAProxy's documented WebSocket setup (mode http and
// a tunnel timeout; HAProxy handles the upgrade itself), over TLS with h2
// and HTTP/1.1 by ALPN.
func startHAProxy(t *testing.T, dir, cert, key, canary string) int {
	t.Helper()
	port := freePort(t)
	pemFile := filepath.Join(dir, "haproxy.pem")
	c, _ := os.ReadFile(cert)
	k, _ := os.ReadFile(key)
	if err := os.WriteFile(pemFile, append(c, k...), 0o600); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`global
	log stderr format raw local0 err
defaults
	mode http
	log global
	timeout connect 5s
	timeout client 30s
	timeout server 30s
	timeout tunnel 1h
frontend fe
	bind 127.0.0.1:%d ssl crt %s alpn h2,http/1.1
	default_backend be
backend be
	server canary %s
`, port, pemFile, canary)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	startProxy(t, port, "haproxy", "-db", "-f", path)
	return port
}

func TestAuditCompare(t *testing.T) {
	for _, bin := range []string{"nginx", "haproxy"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is needed (apt-get install nginx haproxy): %v", bin, err)
		}
	}
	dir := t.TempDir()
	cert, key := compareCert(t, dir)
	c, err := audit.NewCanary("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	loadH23Routes(t, advRoutes(c.Addr()))
	nginxPort := startNginx(t, dir, cert, key, c.Addr())
	haproxyPort := startHAProxy(t, dir, cert, key, c.Addr())

	type column struct{ name, url string }
	cols := []column{
		{"stock Caddy `reverse_proxy`", auditURL("stock")},
		{"Caddy + `upgrade`", auditURL("module")},
		{"nginx", fmt.Sprintf("https://localhost:%d/ws", nginxPort)},
		{"HAProxy", fmt.Sprintf("https://localhost:%d/ws", haproxyPort)},
	}
	reports := make([]*audit.Report, len(cols))
	for i, col := range cols {
		u, _ := url.Parse(col.url)
		rep, err := audit.Audit(context.Background(), audit.Config{
			Target: u, Origin: advOrigin, InternalPath: "/admin", Insecure: true, Canary: c, Timeout: harnessIO,
		}, audit.Catalogue())
		if err != nil {
			t.Fatalf("%s: %v", col.name, err)
		}
		if !rep.Control.OK {
			t.Fatalf("%s: control failed: %s", col.name, rep.Control.Evidence)
		}
		reports[i] = rep
		var full strings.Builder
		rep.WriteTable(&full)
		t.Logf("%s:\n%s", col.name, full.String())
	}
	if reports[1].LetThrough != 0 {
		t.Errorf("Caddy + upgrade let %d through", reports[1].LetThrough)
	}

	var md strings.Builder
	fmt.Fprintf(&md, "Run %s; Caddy v2.11.9, %s, %s; canary mode, TLS on 127.0.0.1.\n\n",
		time.Now().UTC().Format("2006-01-02"), versionOf(t, "nginx", "-v"), versionOf(t, "haproxy", "-v"))
	md.WriteString("| attack |")
	for _, col := range cols {
		md.WriteString(" " + col.name + " |")
	}
	md.WriteString("\n|---|" + strings.Repeat("---|", len(cols)) + "\n")
	for i, a := range audit.Catalogue() {
		md.WriteString("| " + strings.ReplaceAll(a.Name, "|", `\|`) + " |")
		for _, rep := range reports {
			r := rep.Results[i]
			cell := string(r.Verdict)
			if r.Verdict == audit.LetThrough {
				cell = "**let through**"
			}
			if r.Obs != nil {
				cell += " (" + strings.ReplaceAll(audit.Status(a, r.Obs), "|", `\|`) + ")"
			}
			md.WriteString(" " + cell + " |")
		}
		md.WriteString("\n")
	}
	md.WriteString("| **let through / blocked / can't tell** |")
	for _, rep := range reports {
		fmt.Fprintf(&md, " %d / %d / %d |", rep.LetThrough, rep.Blocked, rep.CantTell)
	}
	md.WriteString("\n")
	t.Logf("comparison:\n\n%s", md.String())
	if out := os.Getenv("AUDIT_COMPARE_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(md.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
