package upgrade

import (
	"errors"
	"io"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
)

// Lean tunnels. Caddy's reverse proxy copies each direction of a tunnel
// with io.CopyBuffer, which hands the copy to the source's WriteTo or the
// destination's ReadFrom when either has one. A *net.TCPConn has both, and
// both allocate a fresh 32 KiB buffer held for the tunnel's whole life, so
// an idle WebSocket costs Caddy 64 KiB of buffers. The module's wrappers
// (tunnelConn on the client side, backendBody on the backend side) take
// the copy over instead: they wait for a socket to become readable holding
// no buffer, borrow one from a pool only while bytes move, and give it
// back before waiting again. Everything else stays Caddy's: upstream
// choice, transport, connection registration, close frames on reload,
// stream_timeout.

// copyBufSize is the size of the buffers the copy loops borrow while bytes
// move. With the proxy pinned to one core (make bench: 64 KiB messages),
// echo throughput against bare Caddy's was 0.70-0.96x with 16 KiB, 0.96x
// with 32 KiB and 1.28x with 64 KiB: there the proxy is CPU-bound, and a
// message read in one piece costs the fewest syscalls. 4 KiB lost ~40%
// even in-process (BenchmarkTunnelEcho). Idle tunnels hold none of them.
var copyBufSize = 64 << 10

var copyBufPool = sync.Pool{New: func() any {
	b := make([]byte, copyBufSize)
	return &b
}}

// copyBufsOut counts the pooled buffers borrowed and not yet given back:
// with every tunnel idle it is 0 (TestLeanTunnelIdleHoldsNoBuffer).
var copyBufsOut atomic.Int64

func getCopyBuf() *[]byte {
	copyBufsOut.Add(1)
	bp := copyBufPool.Get().(*[]byte)
	if len(*bp) != copyBufSize { // the size changed under a benchmark
		b := make([]byte, copyBufSize)
		bp = &b
	}
	return bp
}

func putCopyBuf(bp *[]byte) {
	copyBufsOut.Add(-1)
	copyBufPool.Put(bp)
}

// pump moves bytes from src to dst until src ends, as io.Copy would, and
// returns nil at a clean EOF so Caddy's copier half-closes the other side.
// upstream is the direction from client to backend. The loop does the
// tunnel's accounting where it went past tunnelConn, which would have done
// it otherwise.
func (t *tunnel) pump(dst io.Writer, src io.Reader, upstream bool) (int64, error) {
	w, wentPastW := t.loopWriter(dst)
	s, wentPastR := sourceOf(src)
	account := wentPastW || wentPastR
	gate := t.down
	if upstream {
		gate = t.up
	}
	var written int64
	for {
		bp, n, rerr := s.next()
		if n > 0 {
			nw, werr := gate.loopWrite(w, (*bp)[:n])
			written += int64(nw)
			if account {
				t.carried(nw, upstream)
			}
			if werr == nil && nw != n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				putCopyBuf(bp)
				return written, werr
			}
		}
		if bp != nil {
			putCopyBuf(bp)
		}
		if rerr == io.EOF {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

// loopWriter is where a copy loop writes dst's bytes: past the module's
// own wrappers, whose Write is kept for writes from outside the loop.
// wentPast reports that the accounting of tunnelConn or responseGuard was
// skipped.
func (t *tunnel) loopWriter(dst io.Writer) (w io.Writer, wentPast bool) {
	switch d := dst.(type) {
	case *tunnelConn:
		return d.Conn, true
	case *backendBody:
		return d.rwc, false
	}
	if g := t.h2ClientWriter(dst); g != nil {
		return guardLoop{g}, true
	}
	return dst, false
}

// h2ClientWriter recognises the client side of a WebSocket over extended
// CONNECT in delegation mode: Caddy's h2ReadWriteCloser (the request body
// and the ResponseWriter it was given, here the module's guard). The loop
// then writes past the guard, and the guard takes its Write for Caddy's
// close frame, gated like HTTP/1.1's. Only where the module owns the
// backend side (t.back), since only there every loop write is the
// module's: in policy-only mode Caddy's own copy writes through the guard.
func (t *tunnel) h2ClientWriter(dst io.Writer) *responseGuard {
	if t.down == nil || t.back.Load() == nil {
		return nil
	}
	g, ok := caddyH2StreamWriter(dst).(*responseGuard)
	if !ok || g.tunnel != t {
		return nil
	}
	g.loopOwned.Store(true)
	t.h2Client.Store(g)
	return g
}

// source is one direction's read side as the copy loop sees it.
type source struct {
	r io.Reader
	// raw is the plain socket under r, when there is one: the loop waits
	// on it for readability with no buffer held.
	raw syscall.RawConn
	// body is the buffer field of net/http's 101 response body while it
	// still holds bytes read past the backend's 101: they must be read
	// through r before the socket is waited on.
	body *reflect.Value
	// peek is set where r must do the reading (it counts bytes for
	// Caddy's access log): raw is only waited on, by peeking.
	peek bool
}

// sourceOf finds the cheapest way to read src. wentPast reports that
// tunnelConn's accounting was skipped.
func sourceOf(src io.Reader) (s source, wentPast bool) {
	switch r := src.(type) {
	case *tunnelConn:
		s, _ = sourceOf(r.Conn)
		return s, true
	case *backendBody:
		s, _ = sourceOf(r.rwc)
		return s, false
	}
	s.r = src
	if conn, ok := caddyHijackedConn(src); ok {
		s.raw = rawSocket(conn)
		s.peek = true
		return s, false
	}
	if br, conn, ok := switchedBody(src); ok {
		if raw := rawSocket(conn); raw != nil {
			s.raw = raw
			s.body = &br
		}
		return s, false
	}
	s.raw = rawSocket(src)
	return s, false
}

// bufferedAbove reports whether net/http's 101 body still holds bytes
// read past the 101. Once drained, net/http drops that buffer for good.
func (s *source) bufferedAbove() bool {
	if s.body == nil {
		return false
	}
	if s.body.IsNil() {
		s.body = nil
		return false
	}
	return true
}

// next returns the next bytes of the source in a pooled buffer, which the
// caller gives back; bp is nil when n is 0.
func (s *source) next() (bp *[]byte, n int, err error) {
	if s.peek && s.raw != nil {
		if err := s.raw.Read(readable); err != nil {
			return nil, 0, err
		}
	}
	if s.raw == nil || s.peek || s.bufferedAbove() {
		// Reads from what net/http buffered, or after a peek, return at
		// once; other sources have no socket to wait on, so a buffer is
		// held while the read blocks.
		bp = getCopyBuf()
		n, err = s.r.Read(*bp)
		if n <= 0 {
			putCopyBuf(bp)
			return nil, 0, err
		}
		return bp, n, err
	}
	var rerr error
	err = s.raw.Read(func(fd uintptr) bool {
		bp = getCopyBuf()
		n, rerr = readSocket(fd, *bp)
		if rerr == syscall.EAGAIN {
			putCopyBuf(bp)
			bp = nil
			return false // wait for readability; no buffer is held meanwhile
		}
		return true
	})
	switch {
	case err != nil:
	case rerr != nil:
		err = os.NewSyscallError("read", rerr)
	case n == 0:
		err = io.EOF
	}
	if err != nil || n <= 0 {
		if bp != nil {
			putCopyBuf(bp)
		}
		return nil, 0, err
	}
	return bp, n, nil
}

// backendBody is the backend side of a tunnel that Caddy's reverse proxy
// got from the module's transport wrapper: net/http's 101 body, with the
// copy loops of both directions.
type backendBody struct {
	rwc io.ReadWriteCloser
	t   *tunnel
	// conn is the backend connection under rwc, where writes from outside
	// the loops go: unlike rwc it takes a write deadline.
	conn io.Writer
}

func newBackendBody(rwc io.ReadWriteCloser, t *tunnel) *backendBody {
	b := &backendBody{rwc: rwc, t: t, conn: rwc}
	if _, conn, ok := switchedBody(rwc); ok {
		b.conn = conn
	}
	t.back.Store(b)
	return b
}

func (b *backendBody) Read(p []byte) (int, error) { return b.rwc.Read(p) }

// Write is for writes from outside the copy loops: Caddy's close frame,
// and bytes a client sent right behind its request.
func (b *backendBody) Write(p []byte) (int, error) {
	if b.t.up == nil {
		return b.conn.Write(p)
	}
	return b.t.outsideWrite(b.t.up, b.conn, p, func(int) {})
}

func (b *backendBody) Close() error {
	if b.t.own.Load() != nil {
		return b.t.closeFromCaddy()
	}
	return b.t.closeSide(func(reset bool) error {
		if c, ok := b.conn.(io.Closer); ok && reset {
			closeConn(c, true) // the body's Close closes it too
		}
		return b.rwc.Close()
	})
}

// CloseWrite forwards a client's half-close to the backend.
func (b *backendBody) CloseWrite() error {
	if cw, ok := b.rwc.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// WriteTo is the backend-to-client direction, unless the module takes
// the tunnel over (handover.go).
func (b *backendBody) WriteTo(w io.Writer) (int64, error) {
	if b.t.takeOver() {
		return 0, errHandedOver
	}
	return b.t.pump(w, b, false)
}

// ReadFrom is the client-to-backend direction where the client side has
// no WriteTo of its own (extended CONNECT).
func (b *backendBody) ReadFrom(r io.Reader) (int64, error) { return b.t.pump(b, r, true) }

// WriteTo is the client-to-backend direction, unless the module takes
// the tunnel over (handover.go).
func (c *tunnelConn) WriteTo(w io.Writer) (int64, error) {
	if c.t.takeOver() {
		return 0, errHandedOver
	}
	return c.t.pump(w, c, true)
}

// ReadFrom is the backend-to-client direction where the backend side is
// not a backendBody (the route's own reverse_proxy after this handler).
func (c *tunnelConn) ReadFrom(r io.Reader) (int64, error) { return c.t.pump(c, r, false) }
