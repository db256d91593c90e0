package upgrade

// Shared harness for the tests that run the module inside a real Caddy
// (integration, adversarial, HTTP/2-3, limits):
//
//   - loadCaddyfile / loadCaddyJSON start Caddy in-process through caddytest
//     (admin API on localhost:2999, one Caddy per test binary) and replace
//     its config. Tests that use them must not call t.Parallel.
//   - recordingBackend is an HTTP/1.1 backend on a raw listener that records
//     every byte it receives, every request it parses, and what arrives on a
//     tunnel after it switched protocols; its answer is chosen per backend.
//   - rawClient speaks exact bytes to Caddy and reads responses with
//     http.ReadResponse, so that a connection can be reused (pipelining) and
//     the wire can be inspected.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/gorilla/websocket"
	"github.com/seedf05e/caddy-upgrade/internal/audit"
)

// Addresses of the in-process Caddy. CADDY_UPGRADE_TEST_PORT_OFFSET shifts
// them all, so that several checkouts can run the suite at once.
var (
	harnessPortOffset, _ = strconv.Atoi(os.Getenv("CADDY_UPGRADE_TEST_PORT_OFFSET"))
	harnessAdminPort     = 2999 + harnessPortOffset // caddytest's default admin port
	harnessAdmin         = fmt.Sprintf("localhost:%d", harnessAdminPort)
	harnessHTTPPort      = 9080 + harnessPortOffset
	harnessHTTPSPort     = 9443 + harnessPortOffset
)

const (
	// harnessLogLevel keeps Caddy's log readable in -v runs; the module's
	// warnings (backend mismatches) still show.
	harnessLogLevel = "WARN"
	// harnessIO bounds every network wait of the harness.
	harnessIO = 5 * time.Second
)

// harnessAddr is the host:port clients dial to reach Caddy's HTTP server.
var harnessAddr = fmt.Sprintf("127.0.0.1:%d", harnessHTTPPort)

// caddyURL is an http:// URL on Caddy's HTTP server.
func caddyURL(path string) string { return "http://" + harnessAddr + path }

// caddyWSURL is a ws:// URL on Caddy's HTTP server.
func caddyWSURL(path string) string { return "ws://" + harnessAddr + path }

// harnessGlobalOptions is the Caddyfile global block every test config
// starts with.
func harnessGlobalOptions() string {
	return fmt.Sprintf(`{
	admin %s
	http_port %d
	https_port %d
	grace_period 1ns
	skip_install_trust
	log {
		level %s
	}
}
`, harnessAdmin, harnessHTTPPort, harnessHTTPSPort, harnessLogLevel)
}

// caddyfileConfig prepends the harness's global options to site blocks.
// Sites on port harnessHTTPPort (":9080") are served over plain HTTP.
func caddyfileConfig(sites string) string {
	return harnessGlobalOptions() + "\n" + sites
}

// harnessJSONConfig wraps a list of routes (a JSON array) into a full config
// with one plain-HTTP server on harnessHTTPPort. errorRoutes may be "".
func harnessJSONConfig(routes, errorRoutes string) string {
	errs := ""
	if errorRoutes != "" {
		errs = fmt.Sprintf(`, "errors": {"routes": %s}`, errorRoutes)
	}
	return fmt.Sprintf(`{
	"admin": {"listen": %q},
	"logging": {"logs": {"default": {"level": %q}}},
	"apps": {
		"pki": {"certificate_authorities": {"local": {"install_trust": false}}},
		"http": {
			"http_port": %d,
			"https_port": %d,
			"grace_period": 1,
			"servers": {
				"srv0": {
					"listen": [":%d"],
					"automatic_https": {"disable": true},
					"routes": %s%s
				}
			}
		}
	}
}`, harnessAdmin, harnessLogLevel, harnessHTTPPort, harnessHTTPSPort, harnessHTTPPort, routes, errs)
}

// loadCaddyfile starts Caddy if needed and loads caddyfileConfig(sites).
func loadCaddyfile(t *testing.T, sites string) *caddytest.Tester {
	t.Helper()
	return loadCaddyRaw(t, caddyfileConfig(sites), "caddyfile")
}

// loadCaddyJSON starts Caddy if needed and loads a full JSON config through
// the admin API (POST /load).
func loadCaddyJSON(t *testing.T, config string) *caddytest.Tester {
	t.Helper()
	return loadCaddyRaw(t, config, "json")
}

// loadCaddyRaw loads a full config of the given type ("caddyfile" or
// "json"), failing the test at once if Caddy refuses it. caddytest skips
// silently when its prerequisites are missing; this fails instead.
func loadCaddyRaw(t *testing.T, config, configType string) *caddytest.Tester {
	t.Helper()
	requireCaddytestPrerequisites(t)
	lockCaddytest(t)
	tester := caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: harnessAdminPort})
	failedBefore := t.Failed()
	tester.InitServer(config, configType)
	if t.Failed() && !failedBefore {
		t.Fatalf("Caddy did not load the %s config:\n%s", configType, config)
	}
	return tester
}

// harnessLockPath serializes test binaries that use caddytest: they all
// share the admin address localhost:2999, so two running at once (say `go
// test -run Offer .` by one person and the full suite by another) would load
// configs into each other's Caddy.
var harnessLockPath = filepath.Join(harnessLockDir, fmt.Sprintf("caddy-upgrade-caddytest-%d.lock", harnessAdminPort))

var (
	harnessLockOnce sync.Once
	harnessLockErr  error
)

// lockCaddytest takes an exclusive lock on harnessLockPath for the rest of
// the process (the kernel drops it when the test binary exits), waiting up
// to 5 minutes for another test binary to finish.
func lockCaddytest(t testing.TB) {
	t.Helper()
	harnessLockOnce.Do(func() {
		f, err := os.OpenFile(harnessLockPath, os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			harnessLockErr = err
			return
		}
		deadline := time.Now().Add(5 * time.Minute)
		logged := false
		for {
			busy, err := tryLock(f)
			if err == nil {
				return // f stays open, and locked, until the process exits
			}
			if !busy || time.Now().After(deadline) {
				f.Close()
				harnessLockErr = fmt.Errorf("locking %s: %w", harnessLockPath, err)
				return
			}
			if !logged {
				t.Logf("waiting for another test binary that uses caddytest (lock %s)", harnessLockPath)
				logged = true
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	if harnessLockErr != nil {
		t.Fatalf("cannot get exclusive use of caddytest's Caddy: %v", harnessLockErr)
	}
}

// skipEndToEnd skips, under -short, a test that starts Caddy or a browser,
// so that `go test -short ./...` runs the unit tests on any machine in
// seconds. make test and CI run without -short and fail on any skip.
func skipEndToEnd(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test (starts Caddy or a browser): not run under -short")
	}
}

// requireCaddytestPrerequisites turns caddytest's silent skip into a
// failure: when its certificates cannot be found next to its source (a
// -trimpath build), it would skip every test. Under -short the test is
// skipped here, as intended.
func requireCaddytestPrerequisites(t *testing.T) {
	t.Helper()
	skipEndToEnd(t)
	pc := reflect.ValueOf(caddytest.NewTester).Pointer()
	file, _ := runtime.FuncForPC(pc).FileLine(pc)
	dir := filepath.Dir(file)
	for _, c := range caddytest.Default.Certificates {
		if _, err := os.Stat(dir + c); err != nil {
			t.Fatalf("caddytest would skip: its certificate %s is missing (%v); was the test built with -trimpath?", dir+c, err)
		}
	}
}

// ---------------------------------------------------------------------------
// Recording backend

// recordedRequest is one request a recordingBackend parsed.
type recordedRequest struct {
	Method     string
	RequestURI string
	Proto      string
	Header     http.Header // as received, a copy
	Body       []byte

	// Set when the backend switched protocols for this request.
	Switched bool
	tunnel   *lockedBuffer // raw tunnel bytes (answerSwitch, answerNaive)
	closed   chan struct{} // closed when the backend's tunnel side ends
}

// TunnelBytes is what arrived on the tunnel after the backend's 101.
func (r *recordedRequest) TunnelBytes() []byte {
	if r.tunnel == nil {
		return nil
	}
	return r.tunnel.Bytes()
}

// WaitTunnelClosed reports whether the backend's tunnel connection was
// closed by the peer (or failed) within d; false if it never switched.
func (r *recordedRequest) WaitTunnelClosed(d time.Duration) bool {
	if r.closed == nil {
		return false
	}
	select {
	case <-r.closed:
		return true
	case <-time.After(d):
		return false
	}
}

// backendAnswer decides how a recordingBackend answers one request. It
// may hijack; rec is already recorded (its Header and Body are filled).
type backendAnswer func(b *recordingBackend, w http.ResponseWriter, r *http.Request, rec *recordedRequest)

// recordingBackend is an HTTP/1.1 server on a raw listener. Every byte any
// connection delivers is recorded (RawBytes), every parsed request is
// recorded (Requests), and after a 101 every tunnel byte is recorded on the
// request (recordedRequest.TunnelBytes).
type recordingBackend struct {
	t      testing.TB
	ln     net.Listener
	srv    *http.Server
	answer backendAnswer

	mu       sync.Mutex
	conns    []*recordingConn
	requests []*recordedRequest
	hijacked []net.Conn
}

// newRecordingBackend starts a backend on 127.0.0.1 that answers with
// answer (answerEcho() if nil). It is closed when the test ends.
func newRecordingBackend(t testing.TB, answer backendAnswer) *recordingBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	if answer == nil {
		answer = answerEcho()
	}
	b := &recordingBackend{t: t, answer: answer}
	b.ln = &recordingListener{Listener: ln, b: b}
	b.srv = &http.Server{
		Handler:           http.HandlerFunc(b.serve),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          nil,
	}
	go b.srv.Serve(b.ln)
	t.Cleanup(b.Close)
	return b
}

// serveRaw listens on 127.0.0.1 and hands every accepted connection, with
// its number, to handle on a goroutine of its own. When the test ends it
// closes the listener and every connection, and waits for the handlers.
func serveRaw(t testing.TB, handle func(c net.Conn, id int)) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("backend listen: %v", err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Go(func() {
		for id := 0; ; id++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { handle(c, id) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln
}

// greeting is what switchBackend sends right behind its 101, in the same
// write, so that Caddy's transport reads it together with the 101.
const greeting = "hello from the backend\n"

// switchBackend answers every request with a 101 to the protocol asked
// for (with the WebSocket Accept when there is a key), the greeting in
// the same write, and then echoes every byte. It holds no buffer per
// tunnel beyond its reader, so that heap figures show the proxy's.
type switchBackend struct {
	ln net.Listener
}

func newSwitchBackend(t testing.TB) *switchBackend {
	t.Helper()
	return &switchBackend{ln: serveRaw(t, func(c net.Conn, _ int) { handle101(c) })}
}

func (b *switchBackend) addr() string { return b.ln.Addr().String() }

func handle101(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, 512)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	head := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + req.Header.Get("Upgrade") + "\r\n"
	if key := req.Header.Get("Sec-WebSocket-Key"); key != "" {
		head += "Sec-WebSocket-Accept: " + audit.AcceptFor(key) + "\r\n"
	}
	if _, err := io.WriteString(c, head+"\r\n"+greeting); err != nil {
		return
	}
	io.Copy(c, br)
}

// Addr is the backend's host:port.
func (b *recordingBackend) Addr() string { return b.ln.Addr().String() }

// Close stops the server and closes every connection, hijacked ones too.
func (b *recordingBackend) Close() {
	b.srv.Close()
	b.mu.Lock()
	hj := b.hijacked
	b.hijacked = nil
	b.mu.Unlock()
	for _, c := range hj {
		c.Close()
	}
}

func (b *recordingBackend) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := &recordedRequest{
		Method:     r.Method,
		RequestURI: r.RequestURI,
		Proto:      r.Proto,
		Header:     r.Header.Clone(),
		Body:       body,
	}
	b.mu.Lock()
	b.requests = append(b.requests, rec)
	b.mu.Unlock()
	b.answer(b, w, r, rec)
}

// Requests returns the requests parsed so far, in arrival order.
func (b *recordingBackend) Requests() []*recordedRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*recordedRequest(nil), b.requests...)
}

// LastRequest is the latest parsed request; the test fails if there is none.
func (b *recordingBackend) LastRequest() *recordedRequest {
	b.t.Helper()
	reqs := b.Requests()
	if len(reqs) == 0 {
		b.t.Fatalf("backend %s received no request", b.Addr())
	}
	return reqs[len(reqs)-1]
}

// Conns is the number of connections accepted so far.
func (b *recordingBackend) Conns() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// RawBytes is every byte received so far, over all connections, in
// connection order.
func (b *recordingBackend) RawBytes() []byte {
	b.mu.Lock()
	conns := append([]*recordingConn(nil), b.conns...)
	b.mu.Unlock()
	var all []byte
	for _, c := range conns {
		all = append(all, c.rx.Bytes()...)
	}
	return all
}

// backendSnapshot is what a backend has seen at one moment; compare two to
// prove that nothing reached it in between.
type backendSnapshot struct {
	Conns, Requests, Bytes int
}

func (b *recordingBackend) Snapshot() backendSnapshot {
	return backendSnapshot{Conns: b.Conns(), Requests: len(b.Requests()), Bytes: len(b.RawBytes())}
}

// RequireUntouchedSince fails the test if anything reached the backend
// after s was taken.
func (b *recordingBackend) RequireUntouchedSince(s backendSnapshot, what string) {
	b.t.Helper()
	if now := b.Snapshot(); now != s {
		b.t.Errorf("%s: backend was reached: before %+v, after %+v; raw bytes since: %q",
			what, s, now, harnessTail(b.RawBytes(), now.Bytes-s.Bytes))
	}
}

func harnessTail(p []byte, n int) []byte {
	if n <= 0 || n > len(p) {
		return p[:0]
	}
	return p[len(p)-n:]
}

type recordingListener struct {
	net.Listener
	b *recordingBackend
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	rc := &recordingConn{Conn: c, rx: new(lockedBuffer)}
	l.b.mu.Lock()
	l.b.conns = append(l.b.conns, rc)
	l.b.mu.Unlock()
	return rc, nil
}

// recordingConn records every byte read from the connection.
type recordingConn struct {
	net.Conn
	rx *lockedBuffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.rx.Write(p[:n])
	}
	return n, err
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.buf.Bytes()...)
}

// isUpgradeRequest reports whether a request, as the backend got it, asks
// to upgrade (Connection: upgrade and an Upgrade field).
func isUpgradeRequest(r *http.Request) bool {
	return len(r.Header["Upgrade"]) > 0 && slices.Contains(connectionTokens(r.Header), "upgrade")
}

// plainAnswer writes the default answer to a request that is not an
// upgrade: 200, body "backend <method> <uri>".
func plainAnswer(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "backend %s %s", r.Method, r.RequestURI)
}

// answerEcho: a real WebSocket echo server (gorilla) for WebSocket
// upgrades, plainAnswer for the rest (an upgrade to anything else gets
// plainAnswer too).
func answerEcho() backendAnswer {
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	return func(b *recordingBackend, w http.ResponseWriter, r *http.Request, rec *recordedRequest) {
		if !websocket.IsWebSocketUpgrade(r) {
			plainAnswer(w, r)
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		rec.Switched = true
		rec.closed = make(chan struct{})
		b.mu.Lock()
		b.hijacked = append(b.hijacked, c.NetConn())
		b.mu.Unlock()
		go func() {
			defer close(rec.closed)
			defer c.Close()
			for {
				mt, msg, err := c.ReadMessage()
				if err != nil {
					return
				}
				if err := c.WriteMessage(mt, msg); err != nil {
					return
				}
			}
		}()
	}
}

// answerSwitch answers every upgrade request with a raw 101 carrying the
// given header lines, then records (and, with echo, sends back) every
// tunnel byte. In lines, {upgrade} expands to the request's first Upgrade
// value, {accept} to the correct Sec-WebSocket-Accept for its key and
// {key} to the key itself. Requests that are not upgrades get plainAnswer.
func answerSwitch(echo bool, lines ...string) backendAnswer {
	return func(b *recordingBackend, w http.ResponseWriter, r *http.Request, rec *recordedRequest) {
		if !isUpgradeRequest(r) {
			plainAnswer(w, r)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			b.t.Errorf("backend hijack: %v", err)
			return
		}
		b.mu.Lock()
		b.hijacked = append(b.hijacked, conn)
		b.mu.Unlock()
		rec.Switched = true
		rec.tunnel = new(lockedBuffer)
		rec.closed = make(chan struct{})

		key := r.Header.Get("Sec-WebSocket-Key")
		exp := strings.NewReplacer("{upgrade}", r.Header.Get("Upgrade"), "{accept}", audit.AcceptFor(key), "{key}", key)
		var head strings.Builder
		head.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
		for _, l := range lines {
			head.WriteString(exp.Replace(l) + "\r\n")
		}
		head.WriteString("\r\n")
		brw.WriteString(head.String())
		brw.Flush()
		go func() {
			defer close(rec.closed)
			defer conn.Close()
			buf := make([]byte, 4096)
			for {
				n, err := brw.Read(buf)
				if n > 0 {
					rec.tunnel.Write(buf[:n])
					if echo {
						if _, werr := conn.Write(buf[:n]); werr != nil {
							return
						}
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// answerNaive is the 101-to-anything backend: every upgrade request gets a
// 101 naming the protocol it asked for, with Connection: Upgrade and the
// correct Sec-WebSocket-Accept if it sent a key; tunnel bytes are recorded
// and echoed.
func answerNaive() backendAnswer {
	return func(b *recordingBackend, w http.ResponseWriter, r *http.Request, rec *recordedRequest) {
		lines := []string{"Connection: Upgrade", "Upgrade: {upgrade}"}
		if r.Header.Get("Sec-WebSocket-Key") != "" {
			lines = append(lines, "Sec-WebSocket-Accept: {accept}")
		}
		answerSwitch(true, lines...)(b, w, r, rec)
	}
}

// answerRefuse answers every upgrade request with status and the given
// header lines ("Name: value"), body "refused"; other requests get
// plainAnswer.
func answerRefuse(status int, lines ...string) backendAnswer {
	return func(b *recordingBackend, w http.ResponseWriter, r *http.Request, rec *recordedRequest) {
		if !isUpgradeRequest(r) {
			plainAnswer(w, r)
			return
		}
		for _, l := range lines {
			name, value, _ := strings.Cut(l, ":")
			w.Header().Add(strings.TrimSpace(name), strings.TrimSpace(value))
		}
		w.WriteHeader(status)
		io.WriteString(w, "refused")
	}
}

// answerStatus answers every request, upgrade or not, with status and body.
func answerStatus(status int, body string) backendAnswer {
	return func(b *recordingBackend, w http.ResponseWriter, r *http.Request, rec *recordedRequest) {
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// ---------------------------------------------------------------------------
// WebSocket helpers

// newWebSocketKey is a fresh random Sec-WebSocket-Key.
func newWebSocketKey() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// rawRequest builds an HTTP/1.1 request head: "METHOD path HTTP/1.1",
// Host, then the given header lines verbatim (several lines with one name
// stay separate), then the blank line.
func rawRequest(method, path string, lines ...string) string {
	return rawRequestProto(method, path, "HTTP/1.1", lines...)
}

// rawRequestProto is rawRequest with a chosen protocol version.
func rawRequestProto(method, path, proto string, lines ...string) string {
	var s strings.Builder
	fmt.Fprintf(&s, "%s %s %s\r\nHost: %s\r\n", method, path, proto, harnessAddr)
	for _, l := range lines {
		s.WriteString(l + "\r\n")
	}
	s.WriteString("\r\n")
	return s.String()
}

// wsHandshakeLines are the header lines of a valid WebSocket handshake
// with key.
func wsHandshakeLines(key string) []string {
	return []string{
		"Connection: Upgrade",
		"Upgrade: websocket",
		"Sec-WebSocket-Key: " + key,
		"Sec-WebSocket-Version: 13",
	}
}

// wsHandshake is a valid raw WebSocket handshake for path; extra lines are
// appended after the standard ones. It returns the request and its key.
func wsHandshake(path string, extra ...string) (req, key string) {
	key = newWebSocketKey()
	return rawRequest("GET", path, append(wsHandshakeLines(key), extra...)...), key
}

// dialWebSocket opens a WebSocket through Caddy with gorilla; it returns
// the handshake response even when the handshake fails.
func dialWebSocket(t testing.TB, path string) (*websocket.Conn, *http.Response, error) {
	t.Helper()
	d := websocket.Dialer{HandshakeTimeout: harnessIO}
	c, res, err := d.Dial(caddyWSURL(path), nil)
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, res, err
}

// mustDialWebSocket is dialWebSocket that fails the test unless the
// handshake succeeds.
func mustDialWebSocket(t testing.TB, path string) *websocket.Conn {
	t.Helper()
	c, res, err := dialWebSocket(t, path)
	if err != nil {
		status := "no response"
		if res != nil {
			status = res.Status
		}
		t.Fatalf("WebSocket dial %s: %v (%s)", path, err, status)
	}
	return c
}

// wsEcho sends msg and fails the test unless the same text comes back.
func wsEcho(t testing.TB, c *websocket.Conn, msg string) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(harnessIO))
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatalf("WebSocket write: %v", err)
	}
	c.SetReadDeadline(time.Now().Add(harnessIO))
	mt, got, err := c.ReadMessage()
	if err != nil {
		t.Fatalf("WebSocket read: %v", err)
	}
	if mt != websocket.TextMessage || string(got) != msg {
		t.Fatalf("WebSocket echo: got type %d %q, want text %q", mt, got, msg)
	}
}

// ---------------------------------------------------------------------------
// Raw TCP client

// rawClient is one TCP connection to Caddy, written with exact bytes and
// read with http.ReadResponse; it can carry several requests in a row.
type rawClient struct {
	t    testing.TB
	Conn net.Conn
	R    *bufio.Reader
}

// rawResponse is a response read off the wire, its body read in full.
type rawResponse struct {
	*http.Response
	Body string
}

// dialRaw connects to Caddy's HTTP port; the connection is closed when the
// test ends.
func dialRaw(t testing.TB) *rawClient {
	t.Helper()
	return dialRawAddr(t, harnessAddr)
}

// dialRawAddr connects to addr.
func dialRawAddr(t testing.TB, addr string) *rawClient {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, harnessIO)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, Conn: c, R: bufio.NewReader(c)}
}

// dialTLSRaw connects to Caddy's HTTPS site over TLS with HTTP/1.1.
func dialTLSRaw(t testing.TB) *rawClient {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: harnessIO}, "tcp", h23HTTPSAddr, &tls.Config{
		ServerName: "localhost", InsecureSkipVerify: true, NextProtos: []string{"http/1.1"},
	})
	if err != nil {
		t.Fatalf("dial %s over TLS: %v", h23HTTPSAddr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, Conn: c, R: bufio.NewReader(c)}
}

// openFoo opens a foo tunnel on c and reads the backend's greeting.
func openFoo(t testing.TB, c *rawClient, path string) *rawClient {
	t.Helper()
	req := rawRequest("GET", path, "Connection: Upgrade", "Upgrade: foo")
	if _, ok := c.Conn.(*tls.Conn); ok {
		req = strings.Replace(req, "Host: "+harnessAddr, "Host: "+h23Authority, 1)
	}
	requireStatus(t, c.Do(req), http.StatusSwitchingProtocols)
	got := make([]byte, len(greeting))
	c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
	defer c.Conn.SetReadDeadline(time.Time{})
	if _, err := io.ReadFull(c.R, got); err != nil || string(got) != greeting {
		t.Fatalf("greeting sent with the 101: got %q, %v", got, err)
	}
	return c
}

// echoCheck sends n random bytes through c and wants them back.
func echoCheck(t testing.TB, c *rawClient, n int) {
	t.Helper()
	want := make([]byte, n)
	rand.Read(want)
	errc := make(chan error, 1)
	go func() {
		c.Conn.SetWriteDeadline(time.Now().Add(harnessIO))
		_, err := c.Conn.Write(want)
		errc <- err
	}()
	got := make([]byte, n)
	c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
	defer c.Conn.SetReadDeadline(time.Time{})
	if _, err := io.ReadFull(c.R, got); err != nil {
		t.Fatalf("echo of %d bytes: %v", n, err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("echo write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("echo of %d bytes came back changed", n)
	}
}

// goroutinesWith counts the goroutines whose stack mentions any of frames.
func goroutinesWith(frames ...string) int {
	buf := make([]byte, 1<<24)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		for _, f := range frames {
			if bytes.Contains(g, []byte(f)) {
				n++
				break
			}
		}
	}
	return n
}

// The frames of a goroutine that holds a request: net/http's connection
// goroutine serving through Caddy's handler chain, and Caddy's tunnel.
var handlerFrames = []string{
	"caddyhttp.(*Server).ServeHTTP",
	"reverseproxy.(*Handler).handleUpgradeResponse",
	"reverseproxy.switchProtocolCopier",
}

// adminUpstreamRequests reads num_requests per upstream from the admin API.
func adminUpstreamRequests(t *testing.T) map[string]int {
	t.Helper()
	res, err := http.Get("http://" + harnessAdmin + "/reverse_proxy/upstreams")
	if err != nil {
		t.Fatalf("admin API: %v", err)
	}
	defer res.Body.Close()
	var ups []struct {
		Address     string `json:"address"`
		NumRequests int    `json:"num_requests"`
	}
	if err := json.NewDecoder(res.Body).Decode(&ups); err != nil {
		t.Fatalf("admin API /reverse_proxy/upstreams: %v", err)
	}
	out := map[string]int{}
	for _, u := range ups {
		out[u.Address] = u.NumRequests
	}
	return out
}

// Send writes s as is.
func (c *rawClient) Send(s string) {
	c.t.Helper()
	c.Conn.SetWriteDeadline(time.Now().Add(harnessIO))
	if _, err := io.WriteString(c.Conn, s); err != nil {
		c.t.Fatalf("raw write: %v", err)
	}
}

// TryRead reads one response (and its whole body) within harnessIO.
// method is the request's method ("" for GET); it matters for HEAD.
func (c *rawClient) TryRead(method string) (*rawResponse, error) {
	c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
	defer c.Conn.SetReadDeadline(time.Time{})
	var req *http.Request
	if method != "" {
		req = &http.Request{Method: method}
	}
	res, err := http.ReadResponse(c.R, req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("reading body of %s: %w", res.Status, err)
	}
	return &rawResponse{Response: res, Body: string(body)}, nil
}

// Read is TryRead that fails the test on error.
func (c *rawClient) Read() *rawResponse {
	c.t.Helper()
	res, err := c.TryRead("")
	if err != nil {
		c.t.Fatalf("raw read response: %v", err)
	}
	return res
}

// Do sends s and reads one response.
func (c *rawClient) Do(s string) *rawResponse {
	c.t.Helper()
	c.Send(s)
	return c.Read()
}

// ReadUntilClosed reads whatever arrives until the peer closes or d
// passes; closed is false if d passed first.
func (c *rawClient) ReadUntilClosed(d time.Duration) (data []byte, closed bool) {
	c.Conn.SetReadDeadline(time.Now().Add(d))
	defer c.Conn.SetReadDeadline(time.Time{})
	data, err := io.ReadAll(c.R)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return data, false
	}
	return data, true
}

// rawDo sends s on a fresh connection and reads one response.
func rawDo(t testing.TB, s string) *rawResponse {
	t.Helper()
	return dialRaw(t).Do(s)
}

// ---------------------------------------------------------------------------
// Small assertion helpers

// requireStatus fails the test unless res has the given status.
func requireStatus(t testing.TB, res *rawResponse, want int) {
	t.Helper()
	if res.StatusCode != want {
		t.Fatalf("status %s, want %d; headers %v; body %q", res.Status, want, res.Header, res.Body)
	}
}

// pollUntil polls cond every 20ms until it holds or d passes.
func pollUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestHarnessRecordingBackend checks the harness itself, without Caddy:
// each backend answer, the raw client and pipelining, and the snapshots.
func TestHarnessRecordingBackend(t *testing.T) {
	t.Run("naive", func(t *testing.T) {
		b := newRecordingBackend(t, answerNaive())
		c := dialRawAddr(t, b.Addr())
		req, key := wsHandshake("/n")
		res := c.Do(req)
		requireStatus(t, res, http.StatusSwitchingProtocols)
		if res.Header.Get("Upgrade") != "websocket" || res.Header.Get("Sec-WebSocket-Accept") != audit.AcceptFor(key) {
			t.Fatalf("naive 101 headers %v", res.Header)
		}
		c.Send("tunnel bytes")
		buf := make([]byte, len("tunnel bytes"))
		c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
		if _, err := io.ReadFull(c.R, buf); err != nil || string(buf) != "tunnel bytes" {
			t.Fatalf("naive echo %q, %v", buf, err)
		}
		rec := b.LastRequest()
		if !rec.Switched || string(rec.TunnelBytes()) != "tunnel bytes" || rec.RequestURI != "/n" {
			t.Fatalf("recorded %+v, tunnel %q", rec, rec.TunnelBytes())
		}
		c.Conn.Close()
		if !rec.WaitTunnelClosed(harnessIO) {
			t.Fatalf("backend did not notice the client closing the tunnel")
		}
		if !bytes.Contains(b.RawBytes(), []byte("GET /n HTTP/1.1\r\n")) {
			t.Fatalf("raw bytes %q lack the request line", b.RawBytes())
		}
	})

	t.Run("refuse and pipelining", func(t *testing.T) {
		b := newRecordingBackend(t, answerRefuse(http.StatusForbidden, "X-Why: test"))
		c := dialRawAddr(t, b.Addr())
		req, _ := wsHandshake("/r")
		c.Send(req + rawRequest("GET", "/next"))
		res := c.Read()
		requireStatus(t, res, http.StatusForbidden)
		if res.Body != "refused" || res.Header.Get("X-Why") != "test" {
			t.Fatalf("refusal %v %q", res.Header, res.Body)
		}
		res = c.Read()
		requireStatus(t, res, http.StatusOK)
		if res.Body != "backend GET /next" {
			t.Fatalf("plain answer %q", res.Body)
		}
		if n := len(b.Requests()); n != 2 {
			t.Fatalf("%d requests recorded, want 2", n)
		}
		snap := b.Snapshot()
		if snap.Conns != 1 || snap.Requests != 2 || snap.Bytes == 0 {
			t.Fatalf("snapshot %+v", snap)
		}
	})

	t.Run("switch with chosen headers", func(t *testing.T) {
		b := newRecordingBackend(t, answerSwitch(false, "Upgrade: h2c", "X-Key: {key}"))
		c := dialRawAddr(t, b.Addr())
		req, key := wsHandshake("/s")
		res := c.Do(req)
		requireStatus(t, res, http.StatusSwitchingProtocols)
		if res.Header.Get("Upgrade") != "h2c" || res.Header.Get("X-Key") != key || res.Header.Get("Connection") != "" {
			t.Fatalf("101 headers %v", res.Header)
		}
		c.Send("x")
		if !pollUntil(harnessIO, func() bool { return string(b.LastRequest().TunnelBytes()) == "x" }) {
			t.Fatalf("tunnel byte not recorded")
		}
	})

	t.Run("websocket echo", func(t *testing.T) {
		b := newRecordingBackend(t, answerEcho())
		c, _, err := websocket.DefaultDialer.Dial("ws://"+b.Addr()+"/e", nil)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer c.Close()
		wsEcho(t, c, "echo")
		c.Close()
		if !b.LastRequest().WaitTunnelClosed(harnessIO) {
			t.Fatalf("echo backend did not notice the close")
		}
		res := dialRawAddr(t, b.Addr()).Do(rawRequest("GET", "/plain"))
		if res.StatusCode != 200 || res.Body != "backend GET /plain" {
			t.Fatalf("plain answer %s %q", res.Status, res.Body)
		}
	})

	t.Run("status and close", func(t *testing.T) {
		b := newRecordingBackend(t, answerStatus(http.StatusTeapot, "short"))
		c := dialRawAddr(t, b.Addr())
		res := c.Do(rawRequest("GET", "/t", "Connection: close"))
		if res.StatusCode != http.StatusTeapot || res.Body != "short" {
			t.Fatalf("status answer %s %q", res.Status, res.Body)
		}
		if rest, closed := c.ReadUntilClosed(harnessIO); !closed || len(rest) != 0 {
			t.Fatalf("after Connection: close: closed %v, extra bytes %q", closed, rest)
		}
	})
}
