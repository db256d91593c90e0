package main

import (
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/seedf05e/caddy-upgrade/bench/tlscert"
)

// A TLS soak's Caddyfile serves the site over https on the run's
// certificate, TLS 1.3 only, without HTTP/3; a plain one has no tls.
func TestRenderTLS(t *testing.T) {
	cert, err := tlscert.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	e := &env{listen: "127.0.0.1:18960", backendAddr: "127.0.0.1:18961", adminAddr: "127.0.0.1:18962", cert: cert}
	site := siteConfig{Generation: 3, MaxConns: 10}
	conf, err := e.render(site)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"https://127.0.0.1:18960 {",
		"tls " + cert.CertFile + " " + cert.KeyFile + " {",
		"protocols tls1.3",
		"protocols h1 h2",
		"max_connections 10",
	} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("TLS config lacks %q:\n%s", want, conf)
		}
	}
	e.cert = nil
	conf, err = e.render(site)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), "http://127.0.0.1:18960 {") || strings.Contains(string(conf), "tls ") || strings.Contains(string(conf), "protocols") {
		t.Errorf("plain config:\n%s", conf)
	}
	if e.wsURL() != "ws://127.0.0.1:18960/ws" || e.siteURL("/generation") != "http://127.0.0.1:18960/generation" {
		t.Errorf("plain URLs %s, %s", e.wsURL(), e.siteURL("/generation"))
	}
	e.cert = cert
	if e.wsURL() != "wss://127.0.0.1:18960/ws" || e.siteURL("/generation") != "https://127.0.0.1:18960/generation" {
		t.Errorf("TLS URLs %s, %s", e.wsURL(), e.siteURL("/generation"))
	}
}

// halfCloseConn over TLS ends the client's sending side only: the server
// reads what was sent and then EOF, and can still answer.
func TestHalfCloseConnTLS(t *testing.T) {
	cert, err := tlscert.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(cert.CertFile, cert.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			got <- err.Error()
			return
		}
		defer conn.Close()
		b, err := io.ReadAll(conn) // up to the client's half-close
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(b)
		conn.Write([]byte("answer after the half-close"))
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), cert.ClientConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if err := halfCloseConn(conn); err != nil {
		t.Fatal(err)
	}
	if s := <-got; s != "request" {
		t.Fatalf("server read %q, want the request then EOF", s)
	}
	answer, err := io.ReadAll(conn)
	if string(answer) != "answer after the half-close" {
		t.Errorf("client read %q, %v after its half-close", answer, err)
	}
	if _, ok := tcpConn(conn).(*net.TCPConn); !ok {
		t.Errorf("tcpConn(%T) = %T", conn, tcpConn(conn))
	}
}
