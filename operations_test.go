package upgrade

// Operational behaviour inside a real Caddy: max_connections under load
// and across a dying backend, half-closed and timed-out tunnels, config
// reloads with open tunnels, and the placeholders in access logs.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/seedf05e/caddy-upgrade/internal/audit"
)

// newRecordingBackendOn is newRecordingBackend on a chosen address (to
// restart a backend where Caddy expects it).
func newRecordingBackendOn(t testing.TB, addr string, answer backendAnswer) *recordingBackend {
	t.Helper()
	var ln net.Listener
	var err error
	if !pollUntil(3*time.Second, func() bool {
		ln, err = net.Listen("tcp", addr)
		return err == nil
	}) {
		t.Fatalf("backend listen on %s: %v", addr, err)
	}
	b := &recordingBackend{t: t, answer: answer}
	b.ln = &recordingListener{Listener: ln, b: b}
	b.srv = &http.Server{Handler: http.HandlerFunc(b.serve), ReadHeaderTimeout: 10 * time.Second}
	go b.srv.Serve(b.ln)
	t.Cleanup(b.Close)
	return b
}

// tunnelGoroutines counts goroutines running Caddy's tunnel copies.
func tunnelGoroutines() int {
	buf := make([]byte, 1<<22)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("reverseproxy.switchProtocolCopier")) ||
			bytes.Contains(g, []byte("reverseproxy.(*Handler).handleUpgradeResponse")) {
			n++
		}
	}
	return n
}

// opsDialResult is one concurrent WebSocket dial.
type opsDialResult struct {
	conn *websocket.Conn
	res  *http.Response
	err  error
}

// opsDialConcurrently opens n WebSockets at once on path+"/<i>".
func opsDialConcurrently(t *testing.T, path string, n int) []opsDialResult {
	t.Helper()
	results := make([]opsDialResult, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			d := websocket.Dialer{HandshakeTimeout: 10 * time.Second}
			c, res, err := d.Dial(caddyWSURL(fmt.Sprintf("%s/%d", path, i)), nil)
			results[i] = opsDialResult{c, res, err}
		}()
	}
	close(start)
	wg.Wait()
	for _, r := range results {
		if r.conn != nil {
			t.Cleanup(func() { r.conn.Close() })
		}
	}
	return results
}

// opsSplitResults sorts dial results into open tunnels and 503s; anything
// else fails the test.
func opsSplitResults(t *testing.T, results []opsDialResult) (open []*websocket.Conn, limited int) {
	t.Helper()
	for i, r := range results {
		switch {
		case r.err == nil:
			open = append(open, r.conn)
		case r.res != nil && r.res.StatusCode == http.StatusServiceUnavailable:
			limited++
			if r.res.Header.Get("Retry-After") == "" {
				t.Errorf("dial %d: 503 without Retry-After: %v", i, r.res.Header)
			}
		default:
			status := "no response"
			if r.res != nil {
				status = r.res.Status
			}
			t.Errorf("dial %d: %v (%s), want a tunnel or a 503", i, r.err, status)
		}
	}
	return open, limited
}

// opsRequireLimited dials once more and fails unless the answer is a 503
// with Retry-After.
func opsRequireLimited(t *testing.T, path string) {
	t.Helper()
	_, res, err := dialWebSocket(t, path)
	if err == nil {
		t.Fatalf("%s: a tunnel opened past max_connections", path)
	}
	if res == nil || res.StatusCode != http.StatusServiceUnavailable || res.Header.Get("Retry-After") == "" {
		t.Fatalf("%s: %v, response %v; want 503 with Retry-After", path, err, res)
	}
}

// 1. max_connections 50 under 100 concurrent handshakes, slots freed by
// closing clients and by a dying backend.
func TestOpsMaxConnectionsUnderLoad(t *testing.T) {
	const max = 50
	backend := newRecordingBackend(t, answerEcho())
	addr := backend.Addr()
	loadCaddyfile(t, site(fmt.Sprintf(`
	handle /cap/* {
		upgrade websocket {
			max_connections %d
			to %s
		}
	}`, max, addr)))
	guardLeaks(t)
	openBefore := settledOpenTunnels(t, "websocket")
	metricsBefore := scrapeAdminMetrics(t)
	accepted, refused := 0, 0 // every tunnel and every 503 the clients saw

	// 100 at once: exactly 50 tunnels, exactly 50 refusals.
	open, limited := opsSplitResults(t, opsDialConcurrently(t, "/cap/a", 2*max))
	accepted, refused = accepted+len(open), refused+limited
	if len(open) != max || limited != max {
		t.Fatalf("100 concurrent handshakes: %d tunnels and %d 503s, want exactly %d and %d", len(open), limited, max, max)
	}
	for i, c := range open {
		wsEcho(t, c, fmt.Sprintf("tunnel %d", i))
	}
	switched := 0
	for _, r := range backend.Requests() {
		if r.Switched {
			switched++
		}
	}
	if n := len(backend.Requests()); n != max || switched != max {
		t.Errorf("backend received %d requests (%d switched), want exactly %d: a refused handshake reached it", n, switched, max)
	}
	if got := openTunnelsMetric(t, "websocket"); got-openBefore != max {
		t.Errorf("tunnels_open{websocket} up by %v, want %d", got-openBefore, max)
	}

	// Close 10: exactly 10 new ones fit.
	for _, c := range open[:10] {
		opsCloseWebSocket(c)
	}
	open = open[10:]
	for i := range 10 {
		var c *websocket.Conn
		if !pollUntil(5*time.Second, func() bool {
			conn, res, err := dialWebSocket(t, fmt.Sprintf("/cap/b/%d", i))
			if err != nil && (res == nil || res.StatusCode != http.StatusServiceUnavailable) {
				t.Fatalf("dial after closing 10: %v (%v), want a tunnel or a 503", err, res)
			}
			if err != nil {
				refused++
			}
			c = conn
			return err == nil
		}) {
			t.Fatalf("replacement tunnel %d did not open within 5s after 10 closed", i)
		}
		wsEcho(t, c, "replacement")
		open = append(open, c)
		accepted++
	}
	opsRequireLimited(t, "/cap/c")
	refused++
	waitOpenTunnels(t, "websocket", openBefore+max, 5*time.Second)

	// Kill the backend: every client sees its tunnel end, and closes it.
	backend.Close()
	for i, c := range open {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := c.ReadMessage()
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Fatalf("tunnel %d: still open 5s after the backend died (read: %v)", i, err)
		}
		c.Close()
	}
	waitOpenTunnels(t, "websocket", openBefore, 5*time.Second)
	if !pollUntil(5*time.Second, func() bool { return tunnelGoroutines() == 0 }) {
		t.Errorf("%d goroutines of Caddy's tunnel copies still run after every tunnel closed", tunnelGoroutines())
	}

	// Restart the backend where it was: the instance's count is back to 0,
	// so exactly 50 open again.
	newRecordingBackendOn(t, addr, answerEcho())
	open, limited = opsSplitResults(t, opsDialConcurrently(t, "/cap/d", max))
	accepted, refused = accepted+len(open), refused+limited
	if len(open) != max || limited != 0 {
		t.Fatalf("after the backend restarted: %d tunnels and %d 503s, want %d and 0 (slots of the dead backend's tunnels not freed?)", len(open), limited, max)
	}
	for _, c := range open {
		wsEcho(t, c, "again")
	}
	opsRequireLimited(t, "/cap/e")
	refused++
	for _, c := range open {
		opsCloseWebSocket(c)
	}
	waitOpenTunnels(t, "websocket", openBefore, 5*time.Second)

	// Every tunnel and every 503 was counted once, under concurrency.
	metricsAfter := scrapeAdminMetrics(t)
	for outcome, want := range map[string]int{"accepted": accepted, "limited": refused} {
		d := metricsAfter.get("caddy_upgrade_requests_total", "outcome", outcome, "protocol", "websocket") -
			metricsBefore.get("caddy_upgrade_requests_total", "outcome", outcome, "protocol", "websocket")
		if d != float64(want) {
			t.Errorf("requests_total{websocket,%s} moved by %v, want %d", outcome, d, want)
		}
	}
	d := metricsAfter.get("caddy_upgrade_tunnel_duration_seconds_count", "protocol", "websocket") -
		metricsBefore.get("caddy_upgrade_tunnel_duration_seconds_count", "protocol", "websocket")
	if d != float64(accepted) {
		t.Errorf("tunnel_duration_seconds_count{websocket} moved by %v, want %d", d, accepted)
	}
	t.Logf("%d tunnels, %d refusals", accepted, refused)
}

// 1b. A slot is freed when the request ends without a tunnel
// (docs/behaviour.md §5): backend refusals, a dead backend, a refused 101 and
// a client that did not wait for the 101 never use up max_connections 1.
func TestOpsLimitFreedWithoutTunnel(t *testing.T) {
	refuser := newRecordingBackend(t, answerRefuse(http.StatusForbidden))
	bad := newRecordingBackend(t, answerSwitch(false, "Connection: Upgrade", "Upgrade: websocket",
		"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
	echo := newRecordingBackend(t, answerEcho())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	loadCaddyfile(t, site(fmt.Sprintf(`
	handle /refuse/* {
		upgrade websocket {
			max_connections 1
			to %[1]s
		}
	}
	handle /dead/* {
		upgrade websocket {
			max_connections 1
			to %[2]s
		}
	}
	handle /bad/* {
		upgrade websocket {
			max_connections 1
			to %[3]s
		}
	}
	handle /early/* {
		upgrade websocket {
			max_connections 1
			to %[4]s
		}
	}
	handle /policyrefuse/* {
		upgrade websocket {
			max_connections 1
		}
		reverse_proxy %[1]s
	}`, refuser.Addr(), dead, bad.Addr(), echo.Addr())))
	openBefore := settledOpenTunnels(t, "websocket")

	// attempt runs one handshake and returns its status. The slot of the
	// previous attempt is freed when its request ends on the server, which
	// may be just after the client read its answer: a 503 is retried for
	// up to 2s, so only a slot that stays taken fails.
	attempt := func(what string, want int, do func() int) {
		t.Helper()
		var got int
		if !pollUntil(2*time.Second, func() bool {
			got = do()
			return got != http.StatusServiceUnavailable
		}) {
			t.Fatalf("%s: still 503 after 2s: an earlier attempt that opened no tunnel kept its slot", what)
		}
		if got != want {
			t.Fatalf("%s: status %d, want %d", what, got, want)
		}
	}
	for _, tc := range []struct {
		path string
		want int
	}{
		{"/refuse/x", http.StatusForbidden},
		{"/dead/x", http.StatusBadGateway},
		{"/bad/x", http.StatusBadGateway},
		{"/policyrefuse/x", http.StatusForbidden},
	} {
		for i := range 4 {
			attempt(fmt.Sprintf("%s attempt %d", tc.path, i+1), tc.want, func() int {
				req, _ := wsHandshake(tc.path)
				return rawDo(t, req).StatusCode
			})
		}
	}
	for i := range 4 {
		attempt(fmt.Sprintf("early bytes attempt %d", i+1), http.StatusBadRequest, func() int {
			req, _ := wsHandshake("/early/x")
			c := dialRaw(t)
			c.Send(req + "\x81\x05hello") // a frame before the 101
			res := c.Read()
			c.Conn.Close()
			return res.StatusCode
		})
	}
	// The early-bytes route still has its one slot.
	var c *websocket.Conn
	if !pollUntil(2*time.Second, func() bool {
		conn, _, err := dialWebSocket(t, "/early/ok")
		c = conn
		return err == nil
	}) {
		t.Fatalf("no tunnel could open on the early-bytes route (max_connections 1) 2s after its refusals")
	}
	wsEcho(t, c, "slot free")
	opsRequireLimited(t, "/early/full")
	opsCloseWebSocket(c)
	waitOpenTunnels(t, "websocket", openBefore, 5*time.Second)
}

// rawSwitchBackend is a raw TCP backend that answers any upgrade with a
// 101 naming what was asked (with the right Accept for a WebSocket key),
// then echoes tunnel bytes until EOF; on EOF it sends tail and closes, or
// (hold) keeps the connection open without writing.
type rawSwitchBackend struct {
	t    testing.TB
	ln   net.Listener
	tail []byte
	hold bool

	mu   sync.Mutex
	got  []byte
	eofs int
}

func newRawSwitchBackend(t testing.TB, tail []byte, hold bool) *rawSwitchBackend {
	t.Helper()
	b := &rawSwitchBackend{t: t, tail: tail, hold: hold}
	b.ln = serveRaw(t, func(c net.Conn, _ int) { b.serve(c) })
	return b
}

func (b *rawSwitchBackend) Addr() string { return b.ln.Addr().String() }

func (b *rawSwitchBackend) serve(c net.Conn) {
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		c.Close()
		return
	}
	head := "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + req.Header.Get("Upgrade") + "\r\n"
	if key := req.Header.Get("Sec-WebSocket-Key"); key != "" {
		head += "Sec-WebSocket-Accept: " + audit.AcceptFor(key) + "\r\n"
	}
	if _, err := io.WriteString(c, head+"\r\n"); err != nil {
		c.Close()
		return
	}
	buf := make([]byte, 4096)
	for {
		n, err := br.Read(buf)
		if n > 0 {
			b.mu.Lock()
			b.got = append(b.got, buf[:n]...)
			b.mu.Unlock()
			if _, werr := c.Write(buf[:n]); werr != nil {
				c.Close()
				return
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			c.Close()
			return
		}
	}
	b.mu.Lock()
	b.eofs++
	b.mu.Unlock()
	if b.hold {
		return // closed at cleanup
	}
	time.Sleep(50 * time.Millisecond) // the client's side is half-closed meanwhile
	c.Write(b.tail)
	c.Close()
}

func (b *rawSwitchBackend) received() ([]byte, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.got...), b.eofs
}

// opsOpenRawTunnel sends an upgrade request on a fresh connection and fails
// unless the answer is a 101.
func opsOpenRawTunnel(t *testing.T, path string, lines ...string) *rawClient {
	t.Helper()
	c := dialRaw(t)
	res := c.Do(rawRequest("GET", path, lines...))
	requireStatus(t, res, http.StatusSwitchingProtocols)
	return c
}

// 2. A half-closed tunnel still carries the backend's remaining bytes;
// idle_timeout still ends a half-closed tunnel; stream_timeout and
// max_duration: the shorter one wins.
func TestOpsHalfCloseAndTimeouts(t *testing.T) {
	tail := append(bytes.Repeat([]byte("0123456789abcdef"), 64*1024/16), []byte("bye")...)
	echoBye := newRawSwitchBackend(t, tail, false)
	holder := newRawSwitchBackend(t, nil, true)
	loadCaddyfile(t, site(fmt.Sprintf(`
	handle /half/proxy/* {
		upgrade websocket foo {
			max_connections 1
			to %[1]s
		}
	}
	handle /half/policy/* {
		upgrade websocket foo {
			max_connections 1
		}
		reverse_proxy %[1]s
	}
	handle /halfidle/* {
		upgrade foo {
			idle_timeout 300ms
			max_connections 1
			to %[2]s
		}
	}
	handle /idlepolicy/* {
		upgrade foo {
			idle_timeout 300ms
		}
		reverse_proxy %[2]s
	}
	handle /life/stream/* {
		upgrade foo {
			max_duration 10s
			to %[2]s
			stream_timeout 300ms
		}
	}
	handle /life/max/* {
		upgrade foo {
			max_duration 300ms
			to %[2]s
			stream_timeout 10s
		}
	}`, echoBye.Addr(), holder.Addr())))
	guardLeaks(t)
	openBefore := map[string]float64{"websocket": settledOpenTunnels(t, "websocket"), "foo": settledOpenTunnels(t, "foo")}

	for _, route := range []string{"/half/proxy", "/half/policy"} {
		for _, proto := range []string{"foo", "websocket"} {
			t.Run(route+" "+proto, func(t *testing.T) {
				lines := []string{"Connection: Upgrade", "Upgrade: " + proto}
				if proto == "websocket" {
					lines = append(lines, "Sec-WebSocket-Key: "+newWebSocketKey(), "Sec-WebSocket-Version: 13")
				}
				gotBefore, eofsBefore := echoBye.received()
				// Twice: max_connections 1 proves the first tunnel's slot
				// was freed after its half-close ending.
				for round := range 2 {
					c := opsOpenRawTunnel(t, route+"/x", lines...)
					msg := fmt.Sprintf("hello %d", round)
					c.Send(msg)
					buf := make([]byte, len(msg))
					c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
					if _, err := io.ReadFull(c.R, buf); err != nil || string(buf) != msg {
						t.Fatalf("echo before half-close: %q, %v", buf, err)
					}
					if err := c.Conn.(*net.TCPConn).CloseWrite(); err != nil {
						t.Fatal(err)
					}
					c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
					rest, err := io.ReadAll(c.R)
					if err != nil {
						t.Fatalf("round %d: reading after CloseWrite: %v after %d bytes; the tunnel did not end cleanly", round, err, len(rest))
					}
					if !bytes.Equal(rest, tail) {
						t.Fatalf("round %d: after CloseWrite the client got %d bytes ending %q, want the backend's %d remaining bytes ending \"bye\"",
							round, len(rest), harnessTail(rest, 16), len(tail))
					}
					c.Conn.Close()
					// The slot is freed once Caddy closes its side, just
					// after the client read EOF.
					waitOpenTunnels(t, proto, openBefore[proto], 5*time.Second)
				}
				got, eofs := echoBye.received()
				if eofs-eofsBefore != 2 {
					t.Errorf("backend saw EOF on %d of 2 tunnels: the client's half-close was not forwarded", eofs-eofsBefore)
				}
				if want := "hello 0hello 1"; string(got[len(gotBefore):]) != want {
					t.Errorf("backend received %q on the tunnels, want %q", got[len(gotBefore):], want)
				}
			})
		}
	}
	for p, v := range openBefore {
		waitOpenTunnels(t, p, v, 5*time.Second)
	}

	// A half-closed tunnel with no more bytes is still an idle one.
	t.Run("idle half-closed", func(t *testing.T) {
		c := opsOpenRawTunnel(t, "/halfidle/x", "Connection: Upgrade", "Upgrade: foo")
		c.Send("x")
		buf := make([]byte, 1)
		c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
		if _, err := io.ReadFull(c.R, buf); err != nil {
			t.Fatal(err)
		}
		c.Conn.(*net.TCPConn).CloseWrite()
		start := time.Now()
		rest, closed := c.ReadUntilClosed(5 * time.Second)
		if !closed {
			t.Fatalf("half-closed idle tunnel still open 5s later (idle_timeout 300ms)")
		}
		if el := time.Since(start); el < 200*time.Millisecond || el > 3*time.Second {
			t.Errorf("half-closed idle tunnel ended after %v, want about 300ms", el)
		}
		if len(rest) != 0 {
			t.Errorf("client got %q from a silent backend", rest)
		}
		waitOpenTunnels(t, "foo", openBefore["foo"], 5*time.Second)
		// Its slot is free again.
		c2 := opsOpenRawTunnel(t, "/halfidle/y", "Connection: Upgrade", "Upgrade: foo")
		c2.Conn.Close()
	})

	// Policy-only mode: the next handler's reverse_proxy runs the copies,
	// the module's idle timer still ends the tunnel on both sides.
	t.Run("idle policy-only", func(t *testing.T) {
		c := opsOpenRawTunnel(t, "/idlepolicy/x", "Connection: Upgrade", "Upgrade: foo")
		c.Send("ping")
		buf := make([]byte, 4)
		c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
		if _, err := io.ReadFull(c.R, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo: %q, %v", buf, err)
		}
		start := time.Now()
		rest, closed := c.ReadUntilClosed(5 * time.Second)
		if !closed {
			t.Fatalf("idle tunnel (policy-only) still open 5s later (idle_timeout 300ms)")
		}
		if el := time.Since(start); el < 200*time.Millisecond || el > 3*time.Second {
			t.Errorf("idle tunnel (policy-only) ended after %v, want about 300ms", el)
		}
		if len(rest) != 0 {
			t.Errorf("client got %q from a silent backend", rest)
		}
		waitOpenTunnels(t, "foo", openBefore["foo"], 5*time.Second)
	})

	for _, tc := range []struct{ path, why string }{
		{"/life/stream/x", "stream_timeout 300ms under max_duration 10s"},
		{"/life/max/x", "max_duration 300ms under stream_timeout 10s"},
	} {
		t.Run(tc.why, func(t *testing.T) {
			c := opsOpenRawTunnel(t, tc.path, "Connection: Upgrade", "Upgrade: foo")
			start := time.Now()
			var err error
			for time.Since(start) < 5*time.Second {
				c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err = c.Conn.Write([]byte("tick")); err != nil {
					break
				}
				buf := make([]byte, 4)
				c.Conn.SetReadDeadline(time.Now().Add(time.Second))
				if _, err = io.ReadFull(c.R, buf); err != nil {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			el := time.Since(start)
			if err == nil {
				t.Fatalf("busy tunnel still open after 5s (%s)", tc.why)
			}
			if el < 200*time.Millisecond || el > 3*time.Second {
				t.Errorf("tunnel ended after %v (%v), want about 300ms (%s)", el, err, tc.why)
			}
			waitOpenTunnels(t, "foo", openBefore["foo"], 5*time.Second)
		})
	}
}

// opsPostLoad posts a config to the admin API's /load; force asks for a
// reload even when the config is unchanged.
func opsPostLoad(t *testing.T, body, contentType string, force bool) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+harnessAdmin+"/load", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	if force {
		req.Header.Set("Cache-Control", "must-revalidate")
	}
	res, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST /load: %v", err)
	}
	defer res.Body.Close()
	msg, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("POST /load: %s: %s", res.Status, msg)
	}
}

// 4. Reloads while tunnels are open (kept by stream_close_delay): no
// panic, tunnels still echo, metrics still serve, each new instance counts
// its own tunnels, and the gauge returns once they close.
func TestOpsReloadWithOpenTunnels(t *testing.T) {
	backend := newRecordingBackend(t, answerEcho())
	config := func(version string) string {
		return caddyfileConfig(site(fmt.Sprintf(`
	handle /reload/* {
		upgrade websocket {
			max_connections 5
			to %s
			stream_close_delay 1m
		}
	}
	handle /version {
		respond "%s"
	}`, backend.Addr(), version)))
	}
	loadCaddyRaw(t, config("A"), "caddyfile")
	openBefore := settledOpenTunnels(t, "websocket")
	durationsBefore := scrapeAdminMetrics(t).get("caddy_upgrade_tunnel_duration_seconds_count", "protocol", "websocket")

	var conns []*websocket.Conn
	for i := range 5 {
		c := mustDialWebSocket(t, fmt.Sprintf("/reload/a%d", i))
		wsEcho(t, c, "before reload")
		conns = append(conns, c)
	}
	opsRequireLimited(t, "/reload/a-full")

	echoAll := func(when string) {
		t.Helper()
		for i, c := range conns {
			wsEcho(t, c, fmt.Sprintf("%s %d", when, i))
		}
	}
	checkServing := func(version string, open int) {
		t.Helper()
		res := rawDo(t, rawRequest("GET", "/version"))
		if res.Body != version {
			t.Fatalf("config %s expected to be running, /version says %q", version, res.Body)
		}
		set, err := tryScrapeAdminMetrics()
		if err != nil {
			t.Fatalf("metrics after reload to %s: %v", version, err)
		}
		if got := set.get("caddy_upgrade_tunnels_open", "protocol", "websocket") - openBefore; got != float64(open) {
			t.Errorf("after reload to %s: tunnels_open{websocket} up by %v, want %d", version, got, open)
		}
	}

	// Identical config, forced: a new handler instance with its own count.
	opsPostLoad(t, config("A"), "text/caddyfile", true)
	echoAll("after identical reload")
	checkServing("A", 5)
	for i := range 5 {
		c := mustDialWebSocket(t, fmt.Sprintf("/reload/b%d", i))
		wsEcho(t, c, "new instance")
		conns = append(conns, c)
	}
	opsRequireLimited(t, "/reload/b-full")

	// Changed config.
	opsPostLoad(t, config("B"), "text/caddyfile", false)
	echoAll("after changed reload")
	checkServing("B", 10)
	c := mustDialWebSocket(t, "/reload/c0")
	wsEcho(t, c, "third instance")
	conns = append(conns, c)
	checkServing("B", 11)

	for _, c := range conns {
		opsCloseWebSocket(c)
	}
	waitOpenTunnels(t, "websocket", openBefore, 5*time.Second)
	time.Sleep(50 * time.Millisecond)
	if d := scrapeAdminMetrics(t).get("caddy_upgrade_tunnel_duration_seconds_count", "protocol", "websocket") - durationsBefore; d != float64(len(conns)) {
		t.Errorf("tunnel_duration_seconds_count{websocket} moved by %v, want %d", d, len(conns))
	}
	if !pollUntil(5*time.Second, func() bool { return tunnelGoroutines() == 0 }) {
		t.Errorf("%d goroutines of Caddy's tunnel copies still run after every tunnel closed", tunnelGoroutines())
	}
}

// 4b. A reload closes the old instance's tunnels: at once without
// stream_close_delay, after it with one. Caddy closes the wrapped client
// connection, and that alone frees the gauge (the clients do nothing).
func TestOpsReloadClosesOldTunnels(t *testing.T) {
	backend := newRecordingBackend(t, answerEcho())
	config := func(version string) string {
		return caddyfileConfig(site(fmt.Sprintf(`
	handle /now/* {
		upgrade websocket {
			max_connections 2
			to %[1]s
		}
	}
	handle /delay/* {
		upgrade websocket {
			max_connections 2
			to %[1]s
			stream_close_delay 700ms
		}
	}
	handle /version {
		respond "%[2]s"
	}`, backend.Addr(), version)))
	}
	loadCaddyRaw(t, config("A"), "caddyfile")
	openBefore := settledOpenTunnels(t, "websocket")
	var now, delayed []*websocket.Conn
	for i := range 2 {
		c := mustDialWebSocket(t, fmt.Sprintf("/now/%d", i))
		wsEcho(t, c, "now")
		now = append(now, c)
		c = mustDialWebSocket(t, fmt.Sprintf("/delay/%d", i))
		wsEcho(t, c, "delay")
		delayed = append(delayed, c)
	}
	waitOpenTunnels(t, "websocket", openBefore+4, 2*time.Second)

	reloaded := time.Now()
	opsPostLoad(t, config("B"), "text/caddyfile", false)
	if res := rawDo(t, rawRequest("GET", "/version")); res.Body != "B" {
		t.Fatalf("config B not running: /version %q", res.Body)
	}
	for i, c := range now {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, _, err := c.ReadMessage()
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Errorf("tunnel /now/%d still open 3s after a reload without stream_close_delay (%v)", i, err)
		}
	}
	if time.Since(reloaded) < 500*time.Millisecond {
		for i, c := range delayed {
			wsEcho(t, c, fmt.Sprintf("within stream_close_delay %d", i))
		}
	}
	// Closed by Caddy after the delay; the clients never close.
	waitOpenTunnels(t, "websocket", openBefore, 5*time.Second)
	if el := time.Since(reloaded); el < 600*time.Millisecond {
		t.Errorf("tunnels with stream_close_delay 700ms gone %v after the reload", el)
	}
	for i, c := range delayed {
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, _, err := c.ReadMessage()
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Errorf("tunnel /delay/%d still open after stream_close_delay (%v)", i, err)
		}
	}
	// The new instances start from zero.
	for _, p := range []string{"/now", "/delay"} {
		for i := range 2 {
			c := mustDialWebSocket(t, fmt.Sprintf("%s/new%d", p, i))
			wsEcho(t, c, "new")
			defer opsCloseWebSocket(c)
		}
		opsRequireLimited(t, p+"/full")
	}
}

// opsAccessLogEntry is the part of a JSON access log line the test reads.
type opsAccessLogEntry struct {
	Request struct {
		URI string `json:"uri"`
	} `json:"request"`
	Status         int    `json:"status"`
	UpgradeOutcome any    `json:"upgrade_outcome"`
	UpgradeProto   any    `json:"upgrade_protocol"`
	UpgradeOffered any    `json:"upgrade_offered"`
	Logger         string `json:"logger"`
}

// opsReadAccessLog parses every complete line of the access log.
func opsReadAccessLog(t *testing.T, path string) []opsAccessLogEntry {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		t.Fatal(err)
	}
	var out []opsAccessLogEntry
	for _, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var e opsAccessLogEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			continue // a line being written
		}
		out = append(out, e)
	}
	return out
}

// 5. {http.upgrade.outcome} in a JSON access log, through log_append:
// the final outcome of each request, and status 101 for a tunnel.
func TestOpsAccessLogPlaceholders(t *testing.T) {
	echo := newRecordingBackend(t, answerEcho())
	bad := newRecordingBackend(t, answerSwitch(false, "Connection: Upgrade", "Upgrade: websocket",
		"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
	logPath := filepath.Join(t.TempDir(), "access.log")
	loadCaddyfile(t, site(fmt.Sprintf(`
	log {
		output file %[1]s
		format json
	}
	log_append upgrade_outcome {http.upgrade.outcome}
	log_append upgrade_protocol {http.upgrade.protocol}
	log_append upgrade_offered {http.upgrade.offered}
	handle /log/ws/* {
		upgrade websocket {
			to %[2]s
		}
	}
	handle /log/plain/* {
		upgrade websocket
		respond "plain"
	}
	handle /log/require/* {
		upgrade websocket {
			require
		}
	}
	handle /log/bad/* {
		upgrade websocket {
			to %[3]s
		}
	}
	handle /log/reject/* {
		upgrade websocket {
			on_disallowed reject
		}
	}
	handle /log/limit/* {
		upgrade websocket {
			max_connections 1
			to %[2]s
		}
	}`, logPath, echo.Addr(), bad.Addr())))

	c := mustDialWebSocket(t, "/log/ws/tunnel")
	wsEcho(t, c, "logged")
	opsCloseWebSocket(c)
	requireStatus(t, rawDo(t, rawRequest("GET", "/log/plain/h2c", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c",
		"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA")), http.StatusOK)
	requireStatus(t, rawDo(t, rawRequest("GET", "/log/require/426", "Connection: Upgrade", "Upgrade: foo/1")), http.StatusUpgradeRequired)
	requireStatus(t, rawDo(t, rawRequest("GET", "/log/plain/none")), http.StatusOK)
	requireStatus(t, rawDo(t, rawRequest("GET", "/log/plain/bad", "Connection: Upgrade", "Upgrade: foo@1")), http.StatusBadRequest)
	if _, res, err := dialWebSocket(t, "/log/bad/502"); err == nil || res == nil || res.StatusCode != http.StatusBadGateway {
		t.Fatalf("bad backend: %v, %v; want 502", err, res)
	}
	requireStatus(t, rawDo(t, rawRequest("GET", "/log/reject/403", "Connection: Upgrade", "Upgrade: foo, h2c")), http.StatusForbidden)
	requireStatus(t, rawDo(t, rawRequest("GET", "/log/plain/stray", "Upgrade: websocket")), http.StatusOK)
	holder := mustDialWebSocket(t, "/log/limit/holder")
	opsRequireLimited(t, "/log/limit/503")
	opsCloseWebSocket(holder)

	want := map[string]struct {
		status   int
		outcome  string
		protocol string
		offered  string
	}{
		"/log/ws/tunnel":    {http.StatusSwitchingProtocols, "accepted", "websocket", "websocket"},
		"/log/plain/h2c":    {http.StatusOK, "ignored", "", "h2c"},
		"/log/require/426":  {http.StatusUpgradeRequired, "required", "", "foo/1"},
		"/log/plain/none":   {http.StatusOK, "none", "", ""},
		"/log/plain/stray":  {http.StatusOK, "none", "", ""},
		"/log/plain/bad":    {http.StatusBadRequest, "invalid", "", "foo@1"},
		"/log/bad/502":      {http.StatusBadGateway, "backend_invalid", "websocket", "websocket"},
		"/log/reject/403":   {http.StatusForbidden, "rejected", "", "foo, h2c"},
		"/log/limit/holder": {http.StatusSwitchingProtocols, "accepted", "websocket", "websocket"},
		"/log/limit/503":    {http.StatusServiceUnavailable, "limited", "websocket", "websocket"},
	}
	var entries []opsAccessLogEntry
	pollUntil(5*time.Second, func() bool {
		entries = opsReadAccessLog(t, logPath)
		seen := 0
		for _, e := range entries {
			if _, ok := want[e.Request.URI]; ok {
				seen++
			}
		}
		return seen >= len(want)
	})
	byURI := map[string]opsAccessLogEntry{}
	for _, e := range entries {
		if _, dup := byURI[e.Request.URI]; dup {
			t.Errorf("%s logged twice", e.Request.URI)
		}
		byURI[e.Request.URI] = e
	}
	for uri, w := range want {
		e, ok := byURI[uri]
		if !ok {
			t.Errorf("%s: no access log line (log has %d lines)", uri, len(entries))
			continue
		}
		if e.Status != w.status {
			t.Errorf("%s: access log status %d, want %d", uri, e.Status, w.status)
		}
		if e.UpgradeOutcome != w.outcome {
			t.Errorf("%s: upgrade_outcome %#v, want %q", uri, e.UpgradeOutcome, w.outcome)
		}
		if e.UpgradeProto != w.protocol {
			t.Errorf("%s: upgrade_protocol %#v, want %q", uri, e.UpgradeProto, w.protocol)
		}
		if e.UpgradeOffered != w.offered {
			t.Errorf("%s: upgrade_offered %#v, want %q (docs/behaviour.md §7: the offer as received)", uri, e.UpgradeOffered, w.offered)
		}
	}
	if t.Failed() {
		data, _ := os.ReadFile(logPath)
		t.Logf("access log:\n%s", data)
	}
}
