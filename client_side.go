package upgrade

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/seedf05e/caddy-upgrade/internal/protocol"
)

// The client side of a tunnel: the response guard that holds back an
// answer that failed its checks and writes the 101 itself, the hijacked
// client connection, and an extended CONNECT stream.

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
			if reason := protocol.CheckWebSocket101(g.exp.clientHeader, g.Header(), false); reason != "" {
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

// SetWriteDeadline bounds the close frame's write (wsframe.Gate.OutsideWrite), as a
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
// otherwise be forwarded to the backend as tunnel data (docs/behaviour.md §4).
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

// hijacked wraps the client connection of an HTTP/1.1 tunnel: the tunnel
// then lives until that connection closes, not until ServeHTTP returns.
func (t *tunnel) hijacked(c net.Conn) net.Conn {
	tc := &tunnelConn{Conn: c, t: t}
	t.mu.Lock()
	t.conn, t.clientConn = tc, c
	t.wasHijacked = true
	t.mu.Unlock()
	t.clientOut.Store(&sideWriter{c})
	return tc
}

// tunnelConn is the hijacked client connection as Caddy's reverse proxy
// sees it: every byte marks the tunnel active, and closing it ends the
// tunnel.
type tunnelConn struct {
	net.Conn
	t         *tunnel
	closeOnce sync.Once
}

func (c *tunnelConn) Read(p []byte) (int, error) {
	c.t.copierReads(len(p))
	n, err := c.Conn.Read(p)
	c.t.carried(n, true)
	return n, err
}

// Write is for writes from outside the copy loops: Caddy's close frame.
func (c *tunnelConn) Write(p []byte) (int, error) {
	if c.t.down == nil {
		n, err := c.Conn.Write(p)
		c.t.carried(n, false)
		return n, err
	}
	return c.t.outsideWrite(c.t.down, c.Conn, p, func(n int) { c.t.carried(n, false) })
}

// CloseWrite keeps half-close working: Caddy's copier forwards a clean EOF
// as CloseWrite when the connection has one.
func (c *tunnelConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (c *tunnelConn) Close() error {
	if c.t.own.Load() != nil {
		return c.t.closeFromCaddy()
	}
	return c.t.closeSide(func(reset bool) error {
		err := closeConn(c.Conn, reset)
		c.closeOnce.Do(c.t.close)
		return err
	})
}

// WriteTo is the client-to-backend direction, unless the module takes
// the tunnel over (tunnel.go). The loop reads past this wrapper, so it
// counts the bytes.
func (c *tunnelConn) WriteTo(w io.Writer) (int64, error) {
	if c.t.takeOver() {
		return 0, errHandedOver
	}
	dst, _ := pastWrapper(w)
	return pump(dst, sourceOf(c.Conn), c.t.up, c.t.counter(true, true))
}

// ReadFrom is the backend-to-client direction where the backend side is
// not a backendBody (the route's own reverse_proxy after this handler).
func (c *tunnelConn) ReadFrom(r io.Reader) (int64, error) {
	return pump(c.Conn, sourceOf(r), c.t.down, c.t.counter(true, false))
}

// loopConn is what the copy loops read and write past the wrapper, whose
// own Read and Write count the bytes.
func (c *tunnelConn) loopConn() (io.ReadWriter, bool) { return c.Conn, true }

// h2ClientWriter recognises the client side of a WebSocket over extended
// CONNECT in delegation mode: Caddy's h2ReadWriteCloser (the request body
// and the ResponseWriter it was given, here the module's guard). The loop
// then writes past the guard, and the guard takes its Write for Caddy's
// close frame, gated like HTTP/1.1's. Only where the module owns the
// backend side (t.backOut), since only there every loop write is the
// module's: in policy-only mode Caddy's own copy writes through the guard.
func h2ClientWriter(t *tunnel, dst io.Writer) *responseGuard {
	if t.down == nil || t.backOut.Load() == nil {
		return nil
	}
	g, ok := caddyH2StreamWriter(dst).(*responseGuard)
	if !ok || g.tunnel != t {
		return nil
	}
	g.loopOwned.Store(true)
	t.clientOut.Store(&sideWriter{guardOutside{g}})
	return g
}

// countingBody marks an extended CONNECT tunnel active on every byte the
// client sends; the bytes it receives pass through responseGuard.Write.
type countingBody struct {
	io.ReadCloser
	t *tunnel
}

func (b countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.t.carried(n, true)
	return n, err
}
