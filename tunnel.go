package upgrade

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/seedf05e/caddy-upgrade/internal/wsframe"
	"go.uber.org/zap"
)

// A tunnel, from the moment an accepted upgrade is passed on until its
// last connection closes: its limit slot, timers, byte accounting and
// metrics; the close frames of a reload; and the hand-over, where the
// module takes both connections over from Caddy's reverse proxy.
//
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

// tunnel is one accepted upgrade from the moment it is passed on until its
// last connection closes. It frees the limit slot once, counts bytes,
// keeps the metrics, and enforces idle_timeout and max_duration: where
// Caddy runs the copies, by ending the request's context (which makes
// Caddy close the backend connection) and closing the hijacked client
// connection; where the module owns the tunnel, by closing both sockets.
type tunnel struct {
	limit   *tunnelLimit
	cancel  context.CancelFunc
	label   string
	idle    time.Duration
	maxLife time.Duration

	mu          sync.Mutex
	conn        net.Conn // the hijacked client connection, once there is one
	wasHijacked bool     // conn was set, even if an owned tunnel let go of it
	ended       bool
	opened      time.Time
	timers      []*time.Timer
	lastSeen    atomic.Int64                  // unix nanoseconds of the latest byte, either way
	metrics     atomic.Pointer[tunnelMetrics] // set once the tunnel opens

	// up and down order the writes into each direction (client to
	// backend, backend to client): the copy loops' data, and Caddy's
	// close frame on a reload, which must not land inside a WebSocket
	// frame. nil for other protocols.
	up, down *wsframe.Gate
	closing  atomic.Int64 // unix nanoseconds of the first close frame from outside the loops
	// clientOut and backOut are where close frames from outside the copy
	// loops go on each side, set by the sides as they come into being
	// (client_side.go, backend_side.go) and by the hand-over. backOut is
	// set only where the backend side is the module's (delegation).
	clientOut, backOut atomic.Pointer[sideWriter]
	// clientConn is the hijacked client connection as net/http handed it
	// out, and backBody the backend's 101 body as net/http returned it:
	// what the hand-over takes over.
	clientConn net.Conn
	backBody   io.ReadWriteCloser

	// The hand-over. owner is the handler instance's; the rest is set
	// once the backend answered, and own once the module has taken the
	// tunnel over from Caddy's reverse proxy.
	owner     *tunnelOwner
	protocol  string             // the protocol switched to, for the log
	upstream  string             // the backend's address, for the log
	host      *reverseproxy.Host // the upstream's request counter
	takeOnce  sync.Once
	own       atomic.Pointer[owned]
	bytesUp   atomic.Int64
	bytesDown atomic.Int64
}

// closeFrameWait bounds how long a close frame from outside the copy
// loops (Caddy's, on a reload) waits for a frame boundary, and then its
// write: a tunnel mid-frame, or a peer that stopped reading, is closed
// instead after that, and the reload goes on.
const closeFrameWait = time.Second

// outsideWrite writes p, a close frame from Caddy on a reload, through
// gate at a frame boundary, in the background; wrote accounts for the
// bytes. It reports p written: the write is best effort, as Caddy treats
// it. Caddy writes the close frames and closes, tunnel after tunnel,
// holding its connection list: waiting for each tunnel's frame boundary
// in turn would add the waits up (seconds for a few hundred tunnels); in
// the background they overlap, and the reload goes on at once.
//
// Caddy's sweep takes the connections in map order, so it may reach a
// tunnel's other side seconds later: the first close frame of a tunnel
// starts the other side's too, and Caddy's own one is then dropped, as
// RFC 6455 §5.5.1 allows one close frame a direction.
func (t *tunnel) outsideWrite(gate *wsframe.Gate, w io.Writer, p []byte, wrote func(int)) (int, error) {
	t.closing.CompareAndSwap(0, time.Now().UnixNano())
	if !wsframe.HasCloseFrame(p) {
		go gate.OutsideWrite(w, bytes.Clone(p), closeFrameWait)
		return len(p), nil
	}
	t.sendClose(gate, w, p, wrote)
	if back := t.backOut.Load(); back != nil && gate == t.down {
		t.sendClose(t.up, back, wsframe.MaskedCloseGoingAway(), func(int) {})
	}
	if client := t.clientOut.Load(); client != nil && gate == t.up {
		t.sendClose(t.down, client, wsframe.CloseGoingAway(), func(n int) { t.carried(n, false) })
	}
	return len(p), nil
}

// sideWriter is one side's writer for close frames from outside the copy
// loops.
type sideWriter struct{ io.Writer }

// SetWriteDeadline bounds a close frame's write (wsframe.Gate.OutsideWrite) where
// the side's writer takes one.
func (w *sideWriter) SetWriteDeadline(d time.Time) error {
	if dw, ok := w.Writer.(interface{ SetWriteDeadline(time.Time) error }); ok {
		return dw.SetWriteDeadline(d)
	}
	return errors.ErrUnsupported
}

// sendClose writes the close frame p through gate in the background,
// unless one was already sent or is on its way.
func (t *tunnel) sendClose(gate *wsframe.Gate, w io.Writer, p []byte, wrote func(int)) {
	if !gate.ClaimClose() {
		return
	}
	p = bytes.Clone(p)
	go func() {
		n, _ := gate.OutsideWrite(w, p, closeFrameWait)
		wrote(n)
	}()
}

// closeSide closes one side of the tunnel with closeNow. While a reload
// closes the tunnel, that waits, in the background, until each direction
// whose writes pass through the module carried its close frame: closing
// either side earlier would cut the other direction's frame in flight.
// After 2×closeFrameWait it closes with reset set instead: a peer that
// stopped reading gets a reset rather than a connection the kernel gives
// up on in silence, its unsent bytes held.
func (t *tunnel) closeSide(closeNow func(reset bool) error) error {
	start := t.closing.Load()
	if start == 0 {
		return closeNow(false)
	}
	waits := []<-chan struct{}{t.down.CloseSent()}
	if t.backOut.Load() != nil {
		waits = append(waits, t.up.CloseSent())
	}
	go func() {
		timer := time.NewTimer(time.Until(time.Unix(0, start).Add(2 * closeFrameWait)))
		defer timer.Stop()
		for _, sent := range waits {
			select {
			case <-sent:
			case <-timer.C:
				closeNow(true)
				return
			}
		}
		closeNow(false)
	}()
	return nil
}

// closeConn closes c, with a reset (no linger) if asked and c is TCP,
// under Caddy's hijacked-connection wrapper or not.
func closeConn(c io.Closer, reset bool) error {
	if reset {
		inner := any(c)
		if r, ok := c.(io.Reader); ok {
			if hc, ok := caddyHijackedConn(r); ok {
				inner = hc
			}
		}
		if tc, ok := inner.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
	}
	return c.Close()
}

// start arms the timeouts and counts the tunnel as open: the switch went
// out to the client.
func (t *tunnel) start() {
	m := newTunnelMetrics(t.label)
	m.open.Inc()
	t.mu.Lock()
	t.opened = time.Now()
	t.mu.Unlock()
	t.metrics.Store(m)
	t.lastSeen.Store(time.Now().UnixNano())
	if t.maxLife > 0 {
		t.addTimer(time.AfterFunc(t.maxLife, func() { t.endBecause("max_duration") }))
	}
	if t.idle > 0 {
		var timer *time.Timer
		timer = time.AfterFunc(t.idle, func() {
			quiet := time.Since(time.Unix(0, t.lastSeen.Load()))
			if quiet >= t.idle {
				t.endBecause("idle_timeout")
				return
			}
			timer.Reset(t.idle - quiet)
		})
		t.addTimer(timer)
	}
}

// addTimer keeps timer to be stopped when the tunnel closes, or stops it
// now if the tunnel has closed already.
func (t *tunnel) addTimer(timer *time.Timer) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ended {
		timer.Stop()
		return
	}
	t.timers = append(t.timers, timer)
}

// carried accounts for n bytes moved; upstream is client to backend.
func (t *tunnel) carried(n int, upstream bool) {
	if n <= 0 {
		return
	}
	if t.idle > 0 {
		t.lastSeen.Store(time.Now().UnixNano())
	}
	if upstream {
		t.bytesUp.Add(int64(n))
	} else {
		t.bytesDown.Add(int64(n))
	}
	if m := t.metrics.Load(); m != nil {
		if upstream {
			m.upstream.Add(float64(n))
		} else {
			m.downstream.Add(float64(n))
		}
	}
}

// copierReads notes a Read of a tunnel wrapper with a buffer of n bytes.
// Caddy's copiers are given a 1-byte buffer and are expected to hand the
// copy to the wrappers' WriteTo (io.CopyBuffer does): a Read of one byte
// means a Caddy that copies through Read, a byte at a time.
func (t *tunnel) copierReads(n int) {
	if n == 1 && t.owner != nil && t.owner.delegating {
		t.owner.warn(msgNotRecognised, "Caddy's copier reads the tunnel through Read, not io.CopyBuffer's WriteTo: it copies a byte at a time; set the proxy's stream_buffer_size")
	}
}

// counter is the accounting of a copy loop that went past a counting
// wrapper, or nil.
func (t *tunnel) counter(counts, upstream bool) func(int) {
	if !counts {
		return nil
	}
	return func(n int) { t.carried(n, upstream) }
}

// end closes both sides of the tunnel; the copies then finish on their own.
func (t *tunnel) end() { t.endBecause("closed by the module") }

// endBecause is end with the reason an owned tunnel logs.
func (t *tunnel) endBecause(reason string) {
	if t.own.Load() != nil {
		t.finishOwned(reason, false)
		return
	}
	t.mu.Lock()
	cancel, conn := t.cancel, t.conn
	t.mu.Unlock()
	cancel()
	if conn != nil {
		conn.Close()
	}
}

// letGoOfRequest drops what ties an owned tunnel to the request that
// opened it, so that the garbage collector can take it: the request's
// context (its cancel func holds the context chain: Caddy's replacer,
// variables, the original request) and the wrapped client connection
// (Caddy's wrapper holds its response recorder, and through it net/http's
// connection and buffers). The owned tunnel holds its sockets itself.
func (t *tunnel) letGoOfRequest() {
	t.mu.Lock()
	cancel := t.cancel
	t.cancel = func() {}
	t.conn, t.clientConn = nil, nil
	t.mu.Unlock()
	cancel()
}

// finish is called when ServeHTTP returns: a tunnel that never hijacked a
// connection (extended CONNECT, or no switch at all) ends there.
func (t *tunnel) finish() {
	t.mu.Lock()
	hijacked := t.wasHijacked
	t.mu.Unlock()
	if !hijacked {
		t.close()
	}
}

// close frees the tunnel's resources exactly once.
func (t *tunnel) close() {
	t.mu.Lock()
	if t.ended {
		t.mu.Unlock()
		return
	}
	t.ended = true
	timers, cancel := t.timers, t.cancel
	t.mu.Unlock()
	for _, timer := range timers {
		timer.Stop()
	}
	cancel()
	t.limit.release()
	if m := t.metrics.Load(); m != nil {
		m.open.Dec()
		m.duration.Observe(time.Since(t.opened).Seconds())
	}
}

// closeFromCaddy is Caddy's Close of a connection the module owns: Caddy's
// handler returning after the hand-over, which leaves the tunnel open; or,
// if Caddy's reload sweep reached the tunnel in the moment before, the
// end of its close frames, which closes it as a reload.
func (t *tunnel) closeFromCaddy() error {
	if t.closing.Load() == 0 {
		return nil
	}
	return t.closeSide(func(reset bool) error {
		t.finishOwned("reload", reset)
		return nil
	})
}

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
	warned        sync.Map // message and reason -> struct{}: fallbacks already logged
}

// warn logs, once per handler instance and message, that the module
// falls back to a path that costs more or guards less.
func (o *tunnelOwner) warn(msg, reason string) {
	if _, seen := o.warned.LoadOrStore(msg+"\x00"+reason, struct{}{}); !seen {
		o.logger.Warn(msg, zap.String("reason", reason))
	}
}

// The fallbacks' messages.
const (
	msgStaysWithCaddy = "tunnels stay with Caddy's reverse proxy (more memory per idle tunnel)"
	msgNotRecognised  = "a Caddy or Go internal is not recognised: the module falls back"
)

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
		o.warn(msgStaysWithCaddy, "policy-only mode: the next handler runs the tunnel")
		return
	}
	client, back, why := t.endpoints()
	if why != "" {
		o.warn(msgStaysWithCaddy, why)
		return
	}
	own := &owned{client: client, back: back, requests: upstreamRequests(t.host)}
	own.flows[0] = &flow{events: t, src: client, dst: back, gate: t.up, upstream: true}
	own.flows[1] = &flow{events: t, src: back, dst: client, gate: t.down}
	for i, f := range own.flows {
		if err := sharedPoller.add(f); err != nil {
			for _, added := range own.flows[:i] {
				sharedPoller.remove(added)
			}
			o.warn(msgStaysWithCaddy, "shared poller: "+err.Error())
			return
		}
	}
	if own.requests != nil {
		own.requests.Add(1) // before Caddy's reverse proxy lets go of its own
	} else if t.host != nil {
		o.warn(msgNotRecognised, "reverseproxy.Host."+caddyHostCounter+" not recognised: open tunnels no longer count on their upstream")
	}
	t.own.Store(own)
	// Close frames from outside the loops go to the sockets the module
	// owns now, past Caddy's wrappers.
	t.clientOut.Store(&sideWriter{client.conn})
	t.backOut.Store(&sideWriter{back.conn})
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
	inner, body := t.clientConn, t.backBody
	t.mu.Unlock()
	if inner == nil || body == nil {
		return nil, nil, "extended CONNECT (HTTP/2, HTTP/3): the stream belongs to Caddy's handler"
	}
	if hc, ok := caddyHijackedConn(inner); ok {
		inner = hc
	}
	if client = connEndpoint(inner); client == nil {
		return nil, nil, fmt.Sprintf("client connection %T not recognised (caddyhttp.%s unwrapped?)", inner, caddyHijackType)
	}
	br, conn, ok := switchedBody(body)
	if !ok {
		return nil, nil, fmt.Sprintf("backend body %T not recognised (net/http's %s)", body, goSwitchedBody)
	}
	nc, _ := conn.(net.Conn)
	if back = connEndpoint(nc); back == nil {
		return nil, nil, fmt.Sprintf("backend connection %T not recognised", conn)
	}
	back.above, back.body = body, &br
	return client, back, ""
}

// flowEnded is the engine's report that one direction of an owned tunnel
// ended. A clean end is a half-close, as with Caddy's copiers: the tunnel
// ends when both directions have, or when the half-close failed.
func (t *tunnel) flowEnded(f *flow, eof bool, err error) {
	own := t.own.Load()
	switch {
	case eof:
		by := "backend closed"
		if f.upstream {
			by = "client closed"
		}
		own.setReason(by)
		if err != nil || own.other(f).done.Load() {
			t.finishOwned(by, false)
		}
	case errors.Is(err, wsframe.ErrCloseFrameSent):
		// A reload's close frame ended this direction; closeSide ends
		// the tunnel once both close frames are out.
	default:
		t.finishOwned("error: "+err.Error(), false)
	}
}

func (o *owned) other(f *flow) *flow {
	if o.flows[0] == f {
		return o.flows[1]
	}
	return o.flows[0]
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
		t.outsideWrite(t.down, own.client.conn, wsframe.CloseGoingAway(), func(n int) { t.carried(n, false) })
	}
	t.closeSide(func(reset bool) error {
		t.finishOwned(reason, reset)
		return nil
	})
}
