package upgrade

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// The hand-over. Caddy's reverse proxy does everything up to the switch:
// upstream choice, load balancing, dial, the backend handshake, and the
// module's checks of the 101 (backend_side.go). Then it starts two copy
// goroutines, which call the module's wrappers (tunnelConn.WriteTo and
// backendBody.WriteTo). There the module takes both connections over:
// the copiers return errHandedOver, Caddy's handler returns, and
// net/http's connection goroutine, the request, its buffers and Caddy's
// copiers are gone. The tunnel then lives on the shared poller: no
// goroutine and no buffer while it is idle.
//
// What Caddy did for a tunnel, the module now does: stream_timeout,
// closing on a reload after stream_close_delay with close frames on a
// frame boundary (tunnelRegistry), counting the tunnel as an active
// request on its upstream, and a log line when it closes.

// errHandedOver is what Caddy's copiers get back once the module owns the
// tunnel; Caddy logs it at debug level and returns.
var errHandedOver = errors.New("tunnel handed over to the upgrade module")

// tunnelOwner is what a handler instance lends its tunnels for the
// hand-over.
type tunnelOwner struct {
	logger   *zap.Logger
	registry *tunnelRegistry
	// delegating is set when the handler has its own reverse proxy: only
	// then are both sides of a tunnel the module's wrappers.
	delegating    bool
	streamTimeout time.Duration
	warned        sync.Map // reason -> struct{}: fallbacks already logged
}

// warn logs, once per handler instance and reason, that a tunnel stays
// with Caddy.
func (o *tunnelOwner) warn(reason string) {
	if _, seen := o.warned.LoadOrStore(reason, struct{}{}); !seen {
		o.logger.Warn("tunnels stay with Caddy's reverse proxy (more memory per idle tunnel)", zap.String("reason", reason))
	}
}

// owned is the state of a tunnel once the module has taken it over.
type owned struct {
	client, back *endpoint
	flows        [2]*flow // client to backend, backend to client
	requests     *atomic.Int64
	reason       atomic.Pointer[string]
	finishOnce   sync.Once
}

// takeOver is called from Caddy's copiers; the first call decides.
func (t *tunnel) takeOver() bool {
	t.takeOnce.Do(t.tryOwn)
	return t.own.Load() != nil
}

func (t *tunnel) tryOwn() {
	o := t.owner
	if o == nil {
		return
	}
	if !o.delegating {
		o.warn("policy-only mode: the next handler runs the tunnel")
		return
	}
	client, back, why := t.endpoints()
	if why != "" {
		o.warn(why)
		return
	}
	own := &owned{client: client, back: back, requests: upstreamRequests(t.host)}
	own.flows[0] = &flow{t: t, src: client, dst: back, gate: t.up, upstream: true}
	own.flows[1] = &flow{t: t, src: back, dst: client, gate: t.down}
	for i, f := range own.flows {
		if err := sharedPoller.add(f); err != nil {
			for _, added := range own.flows[:i] {
				sharedPoller.remove(added)
			}
			o.warn("shared poller: " + err.Error())
			return
		}
	}
	if own.requests != nil {
		own.requests.Add(1) // before Caddy's reverse proxy lets go of its own
	} else if t.host != nil {
		o.warn("reverseproxy.Host." + caddyHostCounter + " not recognised: open tunnels no longer count on their upstream")
	}
	t.own.Store(own)
	if o.streamTimeout > 0 {
		t.addTimer(time.AfterFunc(o.streamTimeout, func() { t.endBecause("stream_timeout") }))
	}
	o.registry.add(t)
	t.letGoOfRequest()
	// Bytes may wait above the sockets already (TLS records, what
	// net/http read past the 101): each flow drains them, then arms.
	for _, f := range own.flows {
		go f.run(false)
	}
}

// endpoints recognises both connections, or says why they cannot be owned.
func (t *tunnel) endpoints() (client, back *endpoint, why string) {
	if !pollerSupported {
		return nil, nil, "the module's tunnel engine needs Linux (epoll)"
	}
	t.mu.Lock()
	tc, _ := t.conn.(*tunnelConn)
	t.mu.Unlock()
	b := t.back.Load()
	if tc == nil || b == nil {
		return nil, nil, "extended CONNECT (HTTP/2, HTTP/3): the stream belongs to Caddy's handler"
	}
	var inner net.Conn = tc.Conn
	if hc, ok := caddyHijackedConn(inner); ok {
		inner = hc
	} else if reflect.TypeOf(inner).Name() == caddyHijackType {
		return nil, nil, "caddyhttp." + caddyHijackType + " not recognised"
	}
	if client = connEndpoint(inner); client == nil {
		return nil, nil, fmt.Sprintf("client connection %T not recognised", inner)
	}
	br, conn, ok := switchedBody(b.rwc)
	if !ok {
		return nil, nil, fmt.Sprintf("backend body %T not recognised (net/http's %s)", b.rwc, goSwitchedBody)
	}
	nc, _ := conn.(net.Conn)
	if back = connEndpoint(nc); back == nil {
		return nil, nil, fmt.Sprintf("backend connection %T not recognised", conn)
	}
	back.above, back.body = b.rwc, &br
	return client, back, ""
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
	if e.body != nil {
		if !e.body.IsNil() {
			return e.above.Read(p)
		}
		e.body = nil
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
	if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, errWouldBlock
	}
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
	t        *tunnel
	src, dst *endpoint
	gate     *frameGate
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
			nw, werr := f.gate.loopWrite(f.dst.conn, (*bp)[:n])
			f.t.carried(nw, f.upstream)
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
func (f *flow) eof() {
	by := "backend closed"
	if f.upstream {
		by = "client closed"
	}
	f.t.own.Load().setReason(by)
	cw, ok := f.dst.conn.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		f.t.finishOwned(by, false)
		return
	}
	f.done.Store(true)
	if f.other().done.Load() {
		f.t.finishOwned(by, false)
	}
}

func (f *flow) other() *flow {
	own := f.t.own.Load()
	if own.flows[0] == f {
		return own.flows[1]
	}
	return own.flows[0]
}

// stop ends the tunnel on an error. A direction that carried the close
// frame of a reload is only over: closeSide ends the tunnel.
func (f *flow) stop(err error) {
	if errors.Is(err, errCloseFrameSent) {
		f.done.Store(true)
		return
	}
	f.t.finishOwned("error: "+err.Error(), false)
}

// setReason keeps the first reason given for the tunnel's end.
func (o *owned) setReason(reason string) {
	o.reason.CompareAndSwap(nil, &reason)
}

// finishOwned closes an owned tunnel once, for the first reason given.
func (t *tunnel) finishOwned(reason string, reset bool) {
	own := t.own.Load()
	own.setReason(reason)
	own.finishOnce.Do(func() {
		for _, f := range own.flows {
			sharedPoller.remove(f)
		}
		closeConn(own.client.conn, reset)
		closeConn(own.back.conn, reset)
		if own.requests != nil {
			own.requests.Add(-1)
		}
		t.owner.registry.remove(t)
		t.mu.Lock()
		opened := t.opened
		t.mu.Unlock()
		t.close()
		t.owner.logger.Info("tunnel closed",
			zap.String("protocol", t.protocol),
			zap.String("upstream", t.upstream),
			zap.Duration("duration", time.Since(opened)),
			zap.Int64("bytes_up", t.bytesUp.Load()),
			zap.Int64("bytes_down", t.bytesDown.Load()),
			zap.String("reason", *own.reason.Load()))
	})
}

// goAway closes an owned tunnel for a reload or shutdown as Caddy's
// reverse proxy would: a WebSocket gets close frames (1001) both ways at
// a frame boundary, then both connections close.
func (t *tunnel) goAway() {
	reason := "reload"
	if caddy.Exiting() {
		reason = "shutdown"
	}
	own := t.own.Load()
	own.setReason(reason)
	if t.down != nil {
		t.outsideWrite(t.down, own.client.conn, closeFrame1001, func(n int) { t.carried(n, false) })
	}
	t.closeSide(func(reset bool) error {
		t.finishOwned(reason, reset)
		return nil
	})
}
