package wsframe

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// ErrNoFrameBoundary is what Gate.OutsideWrite returns when the stream
// did not reach a frame boundary in time; it wrote nothing, and the caller
// should close the connection rather than corrupt it.
var ErrNoFrameBoundary = errors.New("websocket stream reached no frame boundary in time")

// Gate lets a writer from outside the copy loop put whole frames into
// one direction of a WebSocket tunnel, between the loop's frames. Caddy's
// reverse proxy writes a close frame (1001) into both sides of every tunnel
// on a config reload, from another goroutine, while the copies may be in the
// middle of a frame; through a gate that frame waits for a boundary, and the
// loop waits for it.
//
// A nil *Gate is a disabled gate, for protocols other than WebSocket:
// both writes go straight to the writer, so call sites need no branch.
//
// The loop holds mu for each write, so the gate costs the loop one lock and
// one atomic load per chunk. An outside writer never waits on mu itself
// while the loop may be blocked in a write (a peer that stopped reading
// would then hold it up past its deadline): it waits for mu in a helper
// goroutine, or for the loop to hand the stream over at a boundary.
type Gate struct {
	mu sync.Mutex // held by whoever writes to the stream
	t  tracker

	// closed is set by the holder of the stream once an outside write
	// carried a close frame: RFC 6455 §5.5.1 allows no frame after it.
	closed bool

	// req is the outside writer's request: reqWaiting, reqGranted once the
	// loop, at a boundary, handed it the stream, and otherwise reqNone, or
	// reqClosed after a close frame, so the loop's one load sees both.
	req     atomic.Int32
	granted chan struct{} // loop to outside: the stream is yours
	done    chan struct{} // outside to loop: finished, the stream is back
	outside sync.Mutex    // one outside writer at a time
	// sent is closed once a close frame went out (closed became true).
	sent chan struct{}
	// closeClaimed is set by the first writer of a close frame from
	// outside the loop; later ones are dropped.
	closeClaimed atomic.Bool
}

const (
	reqNone int32 = iota
	reqWaiting
	reqGranted
	reqClosed
)

// ErrCloseFrameSent is what LoopWrite returns once an outside writer has
// sent a close frame: the loop's direction is over.
var ErrCloseFrameSent = errors.New("websocket close frame sent, no more frames may follow")

// NewGate returns a gate for a WebSocket stream, or nil (no gate) for
// any other protocol.
func NewGate(websocket bool) *Gate {
	if !websocket {
		return nil
	}
	return &Gate{granted: make(chan struct{}, 1), done: make(chan struct{}, 1), sent: make(chan struct{})}
}

// ClaimClose reports whether this is the first claim to write a close
// frame from outside the loop: RFC 6455 §5.5.1 allows one a direction.
func (g *Gate) ClaimClose() bool { return !g.closeClaimed.Swap(true) }

// closedGate stands for a disabled gate's CloseSent: no frames to wait for.
var closedGate = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// CloseSent returns a channel that is closed once an outside writer's close
// frame went out, so that no frame is in flight in this direction any more;
// a disabled gate's is closed already.
func (g *Gate) CloseSent() <-chan struct{} {
	if g == nil {
		return closedGate
	}
	return g.sent
}

// LoopWrite writes p, the copy loop's next chunk, to w. When an outside
// writer waits, the chunk is split at the first frame boundary in it and the
// outside writer goes in between. Once an outside writer has sent a close
// frame, LoopWrite writes nothing more and returns ErrCloseFrameSent.
func (g *Gate) LoopWrite(w io.Writer, p []byte) (int, error) {
	if g == nil {
		return w.Write(p)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.req.Load() != reqNone {
		return g.loopWriteSplit(w, p)
	}
	n, err := w.Write(p)
	g.t.advance(p[:n])
	return n, err
}

// loopWriteSplit is LoopWrite while an outside writer waits or after it
// sent a close frame; g.mu is held.
func (g *Gate) loopWriteSplit(w io.Writer, p []byte) (int, error) {
	if g.handOver(); g.closed {
		return 0, ErrCloseFrameSent
	}
	written := 0
	if k := g.t.nextBoundary(p); k > 0 && k < len(p) && g.req.Load() == reqWaiting {
		n, err := w.Write(p[:k])
		g.t.advance(p[:n])
		written, p = n, p[k:]
		if err != nil {
			return written, err
		}
		if g.handOver(); g.closed {
			return written, ErrCloseFrameSent
		}
	}
	n, err := w.Write(p)
	g.t.advance(p[:n])
	written += n
	if err == nil {
		g.handOver()
	}
	return written, err
}

// handOver lets a waiting outside writer write if the stream is at a
// boundary, and returns once it has. g.mu is held throughout, so the stream
// passes to the outside writer and back without the loop letting go of it.
func (g *Gate) handOver() {
	if !g.t.atBoundary() || !g.req.CompareAndSwap(reqWaiting, reqGranted) {
		return
	}
	g.granted <- struct{}{}
	<-g.done
}

// OutsideWrite writes p, whole frames, to w at a frame boundary, with the
// loop held off while it writes. If the stream reaches no boundary within
// wait, it writes nothing and returns ErrNoFrameBoundary. When w can take a
// write deadline (a net.Conn), the write itself gets wait too, and the
// deadline is cleared afterwards: Caddy writes its close frames to one
// tunnel after another while holding its connection list, so a peer that
// stopped reading must not hold up the reload.
func (g *Gate) OutsideWrite(w io.Writer, p []byte, wait time.Duration) (int, error) {
	if g == nil {
		return w.Write(p)
	}
	g.outside.Lock()
	defer g.outside.Unlock()
	timer := time.NewTimer(wait)
	defer timer.Stop()

	g.req.Store(reqWaiting)
	// The loop may be blocked in a write for as long as its peer does not
	// read, so mu is taken in a helper that lets it go again if this call
	// has returned by the time it gets it.
	locked := make(chan struct{})
	gaveUp := make(chan struct{})
	defer close(gaveUp)
	go func() {
		g.mu.Lock()
		select {
		case locked <- struct{}{}:
		case <-gaveUp:
			g.mu.Unlock()
		}
	}()

	for {
		select {
		case <-locked:
			locked = nil
			// The loop is not writing, and cannot hand over while mu is
			// held here, so req is still reqWaiting.
			if g.t.atBoundary() {
				n, err := g.write(w, p, wait)
				g.req.Store(g.idleReq())
				g.mu.Unlock()
				return n, err
			}
			// Idle in the middle of a frame: the loop's next chunk
			// reaches the boundary and hands over there.
			g.mu.Unlock()
		case <-g.granted:
			return g.writeGranted(w, p, wait)
		case <-timer.C:
			if g.req.CompareAndSwap(reqWaiting, g.idleReq()) {
				return 0, ErrNoFrameBoundary
			}
			// The loop handed over just now.
			<-g.granted
			return g.writeGranted(w, p, wait)
		}
	}
}

// writeGranted writes p while the loop waits in handOver, then lets it go on.
func (g *Gate) writeGranted(w io.Writer, p []byte, wait time.Duration) (int, error) {
	n, err := g.write(w, p, wait)
	g.req.Store(g.idleReq())
	g.done <- struct{}{}
	return n, err
}

// write is the outside write itself, by whoever holds the stream.
func (g *Gate) write(w io.Writer, p []byte, wait time.Duration) (int, error) {
	if dw, ok := w.(interface{ SetWriteDeadline(time.Time) error }); ok {
		if dw.SetWriteDeadline(time.Now().Add(wait)) == nil {
			defer dw.SetWriteDeadline(time.Time{})
		}
	}
	n, err := w.Write(p)
	g.t.advance(p[:n])
	if n > 0 && HasCloseFrame(p[:n]) && !g.closed {
		g.closed = true
		close(g.sent)
	}
	return n, err
}

// idleReq is req with no outside writer waiting; only outside writers set
// closed, one at a time, so they may read it without holding the stream.
func (g *Gate) idleReq() int32 {
	if g.closed {
		return reqClosed
	}
	return reqNone
}
