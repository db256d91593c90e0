package upgrade

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// expectation is what an accepted upgrade's answer must look like (SPEC §5).
// It travels in the request context from ServeHTTP to the transport wrapper
// and the response guard, and carries back the reason an answer failed.
type expectation struct {
	selected        string // the one protocol the backend was asked for
	websocket       bool
	extendedConnect bool
	// clientHeader is the request header as forwarded by this handler: its
	// subprotocols and extensions bound what the answer may choose.
	clientHeader http.Header
	// invalid is the first reason the answer failed, "" while it passes.
	invalid string
	label   string // the metric label
	counted bool
	// tunnel is the accounting the backend side of the tunnel joins.
	tunnel *tunnel
}

// count records the accepted request once, when its answer goes out.
func (e *expectation) count() {
	if !e.counted {
		e.counted = true
		countRequest(e.label, outcomeAccepted)
	}
}

type expectationKey struct{}

func expectationFrom(ctx context.Context) *expectation {
	e, _ := ctx.Value(expectationKey{}).(*expectation)
	return e
}

// errBackendInvalid is returned up the stack where an answer failed its
// checks; ServeHTTP turns it into a 502.
var errBackendInvalid = errors.New("backend answered the upgrade incorrectly")

// check101 checks a backend's 101 (RFC 9110 §15.2.2, RFC 6455 §4.2.2)
// against the request that was forwarded. checkAccept is false where
// Caddy made up the key itself (extended CONNECT) or the answer no longer
// carries the Accept. It returns "" when the answer passes.
func (e *expectation) check101(forwarded, res http.Header, checkAccept bool) string {
	if !connectionHasToken(res, "upgrade") {
		return "101 without Connection: upgrade"
	}
	if got := res["Upgrade"]; len(got) != 1 || !strings.EqualFold(trimOWS(got[0]), e.selected) {
		return "101 switches to " + quoteForLog(strings.Join(got, ", ")) + ", not " + quoteForLog(e.selected)
	}
	if e.websocket {
		return checkWebSocket101(forwarded, res, checkAccept)
	}
	return ""
}

// guardedTransport checks the backend's raw answer to an accepted upgrade
// before Caddy's reverse proxy sees it: the proxy rewrites Connection and
// Upgrade of every 101 and, for extended CONNECT, drops the Accept, so
// this is the last place the answer is whole. Embedding the HTTP transport
// keeps the optional interfaces Caddy looks for (TLS, h2c, PROXY protocol,
// health check scheme, header ops).
type guardedTransport struct {
	*reverseproxy.HTTPTransport
}

func guardTransport(rp *reverseproxy.Handler) bool {
	t, ok := rp.Transport.(*reverseproxy.HTTPTransport)
	if ok {
		rp.Transport = &guardedTransport{t}
		// Every tunnel through this proxy gets a backendBody, whose
		// loops copy both directions (tunnel_copy.go); the buffer Caddy's
		// copier allocates per direction before handing over would be
		// garbage at once.
		rp.StreamBufferSize = 1
	}
	return ok
}

func (t *guardedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := t.HTTPTransport.RoundTrip(req)
	e := expectationFrom(req.Context())
	if err != nil || e == nil {
		return res, err
	}
	var reason string
	switch {
	case res.StatusCode == http.StatusSwitchingProtocols:
		reason = e.check101(req.Header, res.Header, true)
	case e.extendedConnect && res.StatusCode < 300 && res.StatusCode >= 200:
		// Caddy would relay this 2xx as if it were a tunnel.
		reason = "backend answered " + res.Status + " instead of switching protocols"
	}
	if reason == "" {
		if rwc, ok := res.Body.(io.ReadWriteCloser); ok && res.StatusCode == http.StatusSwitchingProtocols && e.tunnel != nil {
			e.tunnel.protocol = e.selected
			if di, ok := reverseproxy.GetDialInfo(req.Context()); ok {
				e.tunnel.upstream = di.Address
				if di.Upstream != nil {
					e.tunnel.host = di.Upstream.Host
				}
			}
			res.Body = newBackendBody(rwc, e.tunnel)
		}
		return res, nil
	}
	if e.invalid == "" {
		e.invalid = reason
	}
	res.Body.Close() // for a 101 the body is the backend connection
	return nil, errBackendInvalid
}

// responseGuard wraps the client's response writer for an accepted upgrade.
// It holds back a switch the checks refuse (the handler then answers 502),
// and hands the tunnel's client connection to the accounting in tunnel.go.
type responseGuard struct {
	http.ResponseWriter
	exp         *expectation
	tunnel      *tunnel
	wroteHeader bool
	// pending101 is a checked HTTP/1.1 101 not yet sent: it goes out on
	// Hijack, after the client is found to have waited for it.
	pending101 bool
	switched   bool // a 101 (HTTP/1.1) or a 2xx (extended CONNECT) went out
	// earlyBytes is set when the client sent data before the 101; it got a
	// raw 400 on the hijacked connection.
	earlyBytes bool

	// loopOwned is set when the module's copy loop writes the tunnel's
	// bytes to the client past the guard (delegation over HTTP/2-3, see
	// tunnel.h2ClientWriter): Write then carries only writes from outside
	// the loop, Caddy's close frame on a reload, which must wait for a
	// frame boundary as on HTTP/1.1.
	loopOwned atomic.Bool
	// outsideMu orders outside writes, which run in the background, with
	// the end of the handler: net/http panics on a write to a stream whose
	// handler has returned.
	outsideMu sync.Mutex
	finished  bool
	// streamMu serializes Write and FlushError on an extended CONNECT
	// tunnel whose bytes Caddy's own copy writes (policy-only mode):
	// Caddy's close frame and flush on a reload come from another
	// goroutine, and the ResponseWriter is not safe for concurrent use
	// (the race detector reports it, and streams got bytes out of order).
	streamMu sync.Mutex
}

func (g *responseGuard) WriteHeader(code int) {
	if g.wroteHeader || g.exp.invalid != "" {
		return
	}
	if code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
		g.ResponseWriter.WriteHeader(code)
		return
	}
	g.wroteHeader = true
	switch {
	case code == http.StatusSwitchingProtocols && !g.exp.extendedConnect:
		if reason := g.exp.check101(g.exp.clientHeader, g.Header(), true); reason != "" {
			g.exp.invalid = reason
			return
		}
		g.pending101 = true
		return
	case g.exp.extendedConnect && code >= 200 && code < 300:
		if g.exp.websocket {
			if reason := checkWebSocket101(g.exp.clientHeader, g.Header(), false); reason != "" {
				g.exp.invalid = reason
				return
			}
		}
		g.switched = true
		g.tunnel.start()
	}
	g.exp.count()
	g.ResponseWriter.WriteHeader(code)
}

func (g *responseGuard) Write(p []byte) (int, error) {
	if g.loopOwned.Load() {
		t := g.tunnel
		return t.outsideWrite(t.down, guardOutside{g}, p, func(n int) { t.carried(n, false) })
	}
	if g.switched && g.exp.extendedConnect {
		g.streamMu.Lock()
		defer g.streamMu.Unlock()
	}
	if !g.wroteHeader {
		g.WriteHeader(http.StatusOK)
	}
	if g.exp.invalid != "" || g.pending101 {
		return 0, errBackendInvalid
	}
	n, err := g.ResponseWriter.Write(p)
	if g.switched {
		g.tunnel.carried(n, false)
	}
	return n, err
}

// writeFlushed writes p to the client of an extended CONNECT tunnel and
// flushes it, as Caddy's own writer of such a tunnel does.
func (g *responseGuard) writeFlushed(p []byte) (int, error) {
	n, err := g.ResponseWriter.Write(p)
	if err == nil {
		err = http.NewResponseController(g.ResponseWriter).Flush()
	}
	return n, err
}

// finish marks the handler done: outside writes still on their way fail
// instead of writing.
func (g *responseGuard) finish() {
	g.outsideMu.Lock()
	g.finished = true
	g.outsideMu.Unlock()
}

// guardLoop is the copy loop's writer to the client of an extended
// CONNECT tunnel; the loop ends before the handler does.
type guardLoop struct{ g *responseGuard }

func (w guardLoop) Write(p []byte) (int, error) {
	return w.g.writeFlushed(p)
}

// guardOutside is the writer of a close frame from outside the copy loop
// to the client of an extended CONNECT tunnel, until the handler ends.
type guardOutside struct{ g *responseGuard }

func (w guardOutside) Write(p []byte) (int, error) {
	w.g.outsideMu.Lock()
	defer w.g.outsideMu.Unlock()
	if w.g.finished {
		return 0, net.ErrClosed
	}
	return w.g.writeFlushed(p)
}

// SetWriteDeadline bounds the close frame's write (frameGate.write), as a
// net.Conn's does on HTTP/1.1.
func (w guardOutside) SetWriteDeadline(d time.Time) error {
	w.g.outsideMu.Lock()
	defer w.g.outsideMu.Unlock()
	if w.g.finished {
		return net.ErrClosed
	}
	return http.NewResponseController(w.g.ResponseWriter).SetWriteDeadline(d)
}

// FlushError keeps a flush from sending an implicit 200 for an answer the
// guard held back or has not sent yet.
func (g *responseGuard) FlushError() error {
	if g.exp.invalid != "" {
		return errBackendInvalid
	}
	if g.loopOwned.Load() {
		// The writes of the loop and the outside ones flush themselves;
		// a flush from outside (Caddy's, after its close frame) would run
		// concurrently with them on a ResponseWriter that is not safe for
		// it: it sent the close frame twice.
		return nil
	}
	if g.pending101 {
		return nil
	}
	if g.switched && g.exp.extendedConnect {
		g.streamMu.Lock()
		defer g.streamMu.Unlock()
	}
	return http.NewResponseController(g.ResponseWriter).Flush()
}

// Hijack sends a checked 101 and hands out the client connection, wrapped
// so that the tunnel's limits, timeouts and metrics see its bytes.
//
// The 101 is written here, on the hijacked connection, rather than by
// net/http: only after hijacking can the handler see whether the client
// sent bytes before the 101, which RFC 6455 §4.1 forbids and which would
// otherwise be forwarded to the backend as tunnel data (SPEC §4).
func (g *responseGuard) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if !g.pending101 {
		return nil, nil, errBackendInvalid
	}
	g.pending101 = false
	conn, brw, err := http.NewResponseController(g.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	early := brw.Reader.Buffered()
	if g.exp.websocket && early > 0 {
		g.earlyBytes = true
		refuseEarlyBytes(conn, brw)
		return nil, nil, errEarlyBytes
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	g.Header().Write(brw)
	brw.WriteString("\r\n")
	// The connection is hijacked, so net/http only logs this call at
	// debug level; Caddy's response recorders see the 101 for access logs.
	g.ResponseWriter.WriteHeader(http.StatusSwitchingProtocols)
	g.switched = true
	g.tunnel.start()
	g.exp.count()
	// Caddy's reverse proxy sends the bytes already buffered straight to
	// the backend, past the wrapped connection: count them here.
	g.tunnel.carried(early, true)
	return g.tunnel.hijacked(conn), brw, nil
}

var errEarlyBytes = errors.New("client sent data before the 101")

// refuseEarlyBytes answers a client that did not wait for the 101 with a
// raw 400, then closes gracefully (RFC 9112 §9.6): half-close, drain for up
// to a second so the client reads the 400 rather than a reset, and close.
func refuseEarlyBytes(conn net.Conn, brw *bufio.ReadWriter) {
	brw.WriteString("HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
	brw.Flush()
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	conn.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, conn)
	conn.Close()
}

func (g *responseGuard) Unwrap() http.ResponseWriter { return g.ResponseWriter }
