package upgrade

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/seedf05e/caddy-upgrade/internal/wsframe"
)

// The copy engine: it moves a tunnel's bytes holding a buffer only while
// bytes move. Two loops share it. pump runs inside Caddy's copiers for
// tunnels Caddy keeps (extended CONNECT, policy-only mode, a fallback):
// Caddy's io.CopyBuffer hands it the copy through the wrappers' WriteTo
// and ReadFrom. flow runs a tunnel the module owns (tunnel.go): it reads
// what is there, lingers on Go's poller for more, then leaves the socket
// to the shared poller (poller_linux.go) and ends, so an idle tunnel holds
// no goroutine and no buffer.

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

// bufferedAbove reports whether net/http's 101 body still holds bytes
// read past the 101.
func (s *source) bufferedAbove() bool { return stillHolds(&s.body) }

// stillHolds reports whether the buffer field *body of net/http's 101
// body still holds bytes. Once drained, net/http drops that buffer for
// good, and so does *body.
func stillHolds(body **reflect.Value) bool {
	if *body == nil {
		return false
	}
	if (*body).IsNil() {
		*body = nil
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

// endpoint is one connection of an owned tunnel.
type endpoint struct {
	conn net.Conn        // writes and closes go here
	raw  syscall.RawConn // the socket under conn, waited on and read
	tls  *tls.Conn       // reads go through it when the socket carries TLS
	// above reads what a reader above the socket still holds (net/http's
	// 101 body, while body, its buffer field, is set), before the socket.
	above io.Reader
	body  *reflect.Value
	// deadline is the read deadline await set last (zero: none); only
	// the flow reading this endpoint touches it.
	deadline time.Time

	// The callbacks of raw.Read and their results: method values made
	// once, so that a read allocates nothing (a closure per call would).
	readFn, awaitFn func(fd uintptr) bool
	cbBuf           []byte
	cbN             int
	cbErr           error
	cbFirst         bool
}

func newEndpoint(conn net.Conn, raw syscall.RawConn, tc *tls.Conn) *endpoint {
	e := &endpoint{conn: conn, raw: raw, tls: tc}
	e.readFn, e.awaitFn = e.readCallback, e.awaitCallback
	return e
}

func (e *endpoint) readCallback(fd uintptr) bool {
	e.cbN, e.cbErr = readSocket(fd, e.cbBuf)
	return true // never park here: await or the shared poller waits
}

// awaitCallback looks once (a peek), then takes each wake-up of the
// runtime's poller for readiness.
func (e *endpoint) awaitCallback(fd uintptr) bool {
	if e.cbFirst {
		e.cbFirst = false
		return readable(fd)
	}
	return true
}

// connEndpoint takes plain TCP or Unix sockets, and TLS over them; other
// connections may hold bytes above the socket that only their Read knows.
func connEndpoint(c net.Conn) *endpoint {
	if tc, ok := c.(*tls.Conn); ok {
		if raw := rawSocket(tc.NetConn()); raw != nil {
			return newEndpoint(tc, raw, tc)
		}
		return nil
	}
	if raw := rawSocket(c); raw != nil {
		return newEndpoint(c, raw, nil)
	}
	return nil
}

// errWouldBlock: nothing more to read now; wait for the socket.
var errWouldBlock = errors.New("would block")

// longAgo is a read deadline in the past: a read through *tls.Conn then
// returns what it decrypted or holds whole records of, without touching
// the socket, and a timeout when it holds nothing (crypto/tls does not
// keep that timeout: the connection reads on afterwards).
var longAgo = time.Unix(1, 0)

// read reads what is there without waiting. fresh says the socket was
// just found readable. (n > 0, errWouldBlock) means: these bytes, then
// wait.
func (e *endpoint) read(p []byte, fresh bool) (int, error) {
	n, err := e.readNow(p, fresh)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// await's deadline, moved lazily, passed between its wait and
		// this read (a loaded machine): not an error, wait again.
		err = errWouldBlock
	}
	return n, err
}

func (e *endpoint) readNow(p []byte, fresh bool) (int, error) {
	if stillHolds(&e.body) {
		return e.above.Read(p)
	}
	if e.tls == nil {
		return e.readSocket(p)
	}
	if fresh {
		// The record may still be arriving: that read waits for it,
		// holding the buffer, as any TLS proxy must.
		return e.tls.Read(p)
	}
	e.tls.SetReadDeadline(longAgo)
	n, err := e.tls.Read(p)
	e.tls.SetReadDeadline(e.deadline)
	return n, err
}

func (e *endpoint) readSocket(p []byte) (n int, err error) {
	e.cbBuf = p
	err = e.raw.Read(e.readFn)
	n, rerr := e.cbN, e.cbErr
	e.cbBuf, e.cbErr = nil, nil
	switch {
	case err != nil:
		return 0, err
	case rerr == syscall.EAGAIN:
		return 0, errWouldBlock
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	case n < len(p):
		// The socket is most likely drained: wait rather than pay a
		// read that says so. A level-triggered arm fires at once if not.
		return n, errWouldBlock
	}
	return n, nil
}

// lingerFor is how long a flow that ran out of bytes waits for more on
// Go's own poller, holding its goroutine but no buffer, before it hands
// its socket to the shared poller and ends. A busy tunnel then costs what
// Caddy's copier costs per message (a read that would block and a wake-up
// by the runtime); only tunnels quiet for longer pay the shared poller's
// round trip (an epoll_ctl, a wake-up of its goroutine, a new goroutine),
// which measured twice the CPU per 64-byte message. Idle tunnels hold no
// goroutine: they are the ones quiet for longer.
const lingerFor = 200 * time.Millisecond

// await waits up to d for the socket to become readable (bytes, end of
// stream or an error), holding no buffer. Only the first look costs a
// syscall (a peek): after that the runtime wakes the wait on readiness.
//
// The read deadline that ends the wait is moved only when less than half
// of d is left, not on every wait: a busy tunnel then pays no timer
// operations per message, and an idle one goes to the shared poller
// between d/2 and d after its last bytes.
func (e *endpoint) await(d time.Duration) (ready bool, err error) {
	if now := time.Now(); e.deadline.Sub(now) < d/2 {
		e.deadline = now.Add(d)
		if err := e.conn.SetReadDeadline(e.deadline); err != nil {
			return false, err
		}
	}
	e.cbFirst = true
	err = e.raw.Read(e.awaitFn)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// Reads after the shared poller's wake-up must not time out.
		e.deadline = time.Time{}
		return false, e.conn.SetReadDeadline(e.deadline)
	}
	return err == nil, err
}

// flow is one direction of an owned tunnel.
type flow struct {
	events   flowEvents
	src, dst *endpoint
	gate     *wsframe.Gate
	upstream bool // client to backend
	token    uint64
	armed    atomic.Bool // in the epoll set
	done     atomic.Bool
}

// ready runs the flow after the poller found its socket readable.
func (f *flow) ready() { f.run(true) }

// run moves what can be read now, then arms the socket again. The pooled
// buffer is held only while bytes move.
func (f *flow) run(fresh bool) {
	for {
		bp := getCopyBuf()
		n, err := f.src.read(*bp, fresh)
		fresh = false
		if n > 0 {
			nw, werr := f.gate.LoopWrite(f.dst.conn, (*bp)[:n])
			f.events.carried(nw, f.upstream)
			if werr == nil && nw != n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				putCopyBuf(bp)
				f.stop(werr)
				return
			}
		}
		putCopyBuf(bp)
		switch {
		case err == nil:
		case errors.Is(err, errWouldBlock):
			ready, err := f.src.await(lingerFor)
			if err != nil {
				f.stop(err)
				return
			}
			if ready {
				fresh = true
				continue
			}
			if err := sharedPoller.arm(f); err != nil {
				f.stop(err)
			}
			return
		case errors.Is(err, io.EOF):
			f.eof()
			return
		default:
			f.stop(err)
			return
		}
	}
}

// eof passes a clean end of one direction on as a half-close, as Caddy's
// copier does; the tunnel ends when both directions have ended.

// stop ends the tunnel on an error. A direction that carried the close
// frame of a reload is only over: closeSide ends the tunnel.

// pump moves bytes from s to w until s ends, as io.Copy would, and
// returns nil at a clean EOF so Caddy's copier half-closes the other
// side. account, if set, counts the bytes where the loop went past the
// wrapper that would have.
func pump(w io.Writer, s source, gate *wsframe.Gate, account func(int)) (int64, error) {
	var written int64
	for {
		bp, n, rerr := s.next()
		if n > 0 {
			nw, werr := gate.LoopWrite(w, (*bp)[:n])
			written += int64(nw)
			if account != nil {
				account(nw)
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

// sourceOf finds the cheapest way to read src, a connection or body under
// the module's wrappers.
func sourceOf(src io.Reader) (s source) {
	s.r = src
	if conn, ok := caddyHijackedConn(src); ok {
		s.raw = rawSocket(conn)
		s.peek = true
		return s
	}
	if br, conn, ok := switchedBody(src); ok {
		if raw := rawSocket(conn); raw != nil {
			s.raw = raw
			s.body = &br
		}
		return s
	}
	s.raw = rawSocket(src)
	return s
}

// flowEvents is what a flow tells the tunnel it belongs to.
type flowEvents interface {
	// carried accounts for n bytes moved; upstream is client to backend.
	carried(n int, upstream bool)
	// flowEnded: the flow's source ended (eof, with err the half-close
	// of its destination's), or the flow failed with err.
	flowEnded(f *flow, eof bool, err error)
}

// errNoHalfClose: the destination of a flow whose source ended cannot
// close its write half.
var errNoHalfClose = errors.New("connection cannot half-close")

// eof passes a clean end of one direction on as a half-close, as Caddy's
// copier does.
func (f *flow) eof() {
	err := errNoHalfClose
	if cw, ok := f.dst.conn.(interface{ CloseWrite() error }); ok {
		err = cw.CloseWrite()
	}
	f.done.Store(true)
	f.events.flowEnded(f, true, err)
}

// stop reports an error; a direction that carried the close frame of a
// reload is only over.
func (f *flow) stop(err error) {
	if errors.Is(err, wsframe.ErrCloseFrameSent) {
		f.done.Store(true)
	}
	f.events.flowEnded(f, false, err)
}

// loopSide is a module wrapper (tunnelConn, backendBody) whose Read and
// Write the copy loops go past: its Write is kept for writes from outside
// the loops, Caddy's close frames.
type loopSide interface {
	loopConn() (rw io.ReadWriter, counts bool)
}

// pastWrapper is what a loop writes to for dst; counts reports that the
// wrapper it went past would have counted the bytes.
func pastWrapper(dst io.Writer) (io.Writer, bool) {
	if s, ok := dst.(loopSide); ok {
		return s.loopConn()
	}
	return dst, false
}
