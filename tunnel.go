package upgrade

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// tunnel is one accepted upgrade from the moment it is passed on until its
// last connection closes. Caddy's reverse proxy runs the byte copies; the
// tunnel only watches them: it frees the limit slot once, and enforces
// idle_timeout and max_duration by ending the request's context (which
// makes Caddy close the backend connection) and closing the hijacked
// client connection.
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
	up, down *frameGate
	closing  atomic.Int64 // unix nanoseconds of the first close frame from outside the loops
	// back is the backend side, when it is the module's (delegation).
	back atomic.Pointer[backendBody]
	// h2Client is the guard of an extended CONNECT tunnel whose client
	// side the copy loop writes past (h2ClientWriter).
	h2Client atomic.Pointer[responseGuard]

	// The hand-over (handover.go). owner is the handler instance's; the
	// rest is set once the backend answered, and own once the module has
	// taken the tunnel over from Caddy's reverse proxy.
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
func (t *tunnel) outsideWrite(gate *frameGate, w io.Writer, p []byte, wrote func(int)) (int, error) {
	t.closing.CompareAndSwap(0, time.Now().UnixNano())
	if !hasCloseFrame(p) {
		go gate.outsideWrite(w, bytes.Clone(p), closeFrameWait)
		return len(p), nil
	}
	t.sendClose(gate, w, p, wrote)
	if back := t.back.Load(); back != nil && gate == t.down {
		t.sendClose(t.up, back.conn, maskedCloseFrame(), func(int) {})
	}
	if gate == t.up {
		t.mu.Lock()
		conn := t.conn
		t.mu.Unlock()
		if own := t.own.Load(); own != nil {
			t.sendClose(t.down, own.client.conn, closeFrame1001, func(n int) { t.carried(n, false) })
		} else if tc, ok := conn.(*tunnelConn); ok {
			t.sendClose(t.down, tc.Conn, closeFrame1001, func(n int) { t.carried(n, false) })
		} else if g := t.h2Client.Load(); g != nil {
			t.sendClose(t.down, guardOutside{g}, closeFrame1001, func(n int) { t.carried(n, false) })
		}
	}
	return len(p), nil
}

// sendClose writes the close frame p through gate in the background,
// unless one was already sent or is on its way.
func (t *tunnel) sendClose(gate *frameGate, w io.Writer, p []byte, wrote func(int)) {
	if gate.closeClaimed.Swap(true) {
		return
	}
	p = bytes.Clone(p)
	go func() {
		n, _ := gate.outsideWrite(w, p, closeFrameWait)
		wrote(n)
	}()
}

// closeFrame1001 is a server's close frame, "going away", as Caddy writes
// it on a reload.
var closeFrame1001 = []byte{0x88, 0x02, 1001 >> 8, 1001 & 0xff}

// maskedCloseFrame is closeFrame1001 as a client must send it (masked,
// RFC 6455 §5.3).
func maskedCloseFrame() []byte {
	k := rand.Uint32()
	key := [4]byte{byte(k), byte(k >> 8), byte(k >> 16), byte(k >> 24)}
	return []byte{0x88, 0x82, key[0], key[1], key[2], key[3], closeFrame1001[2] ^ key[0], closeFrame1001[3] ^ key[1]}
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
	waits := []<-chan struct{}{t.down.closeSent()}
	if t.back.Load() != nil {
		waits = append(waits, t.up.closeSent())
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

// hijacked wraps the client connection of an HTTP/1.1 tunnel: the tunnel
// then lives until that connection closes, not until ServeHTTP returns.
func (t *tunnel) hijacked(c net.Conn) net.Conn {
	tc := &tunnelConn{Conn: c, t: t}
	t.mu.Lock()
	t.conn = tc
	t.wasHijacked = true
	t.mu.Unlock()
	return tc
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
	t.conn = nil
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

// tunnelConn is the hijacked client connection as Caddy's reverse proxy
// sees it: every byte marks the tunnel active, and closing it ends the
// tunnel.
type tunnelConn struct {
	net.Conn
	t         *tunnel
	closeOnce sync.Once
}

func (c *tunnelConn) Read(p []byte) (int, error) {
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
