package upgrade

import (
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// frameTracker follows RFC 6455 §5.2 frame boundaries in one direction of a
// WebSocket stream, so that a frame written from outside the copy loop (the
// close frame Caddy's reverse proxy sends on a config reload) can go in
// between two frames instead of into the middle of one. It reads headers
// only: payloads are skipped by count, never copied or unmasked, so the copy
// loop pays a few arithmetic steps per chunk, and bytes may arrive split
// anywhere, a header one byte at a time included.
//
// The zero value is a stream at its start, which is a boundary. Extensions
// (RSV bits), opcodes and the rules on control frames are not checked: the
// endpoints do that, and a tracker that refused a frame would only stop
// tracking. A 64-bit length with its top bit set (a protocol error) is taken
// as the uint64 it is; such a stream never reaches a boundary again, which
// only means nothing can be written into it from outside.
type frameTracker struct {
	payload uint64 // payload bytes of the current frame still to pass
	length  uint64 // payload length being read from the header
	hdrSeen uint8  // header bytes of the current frame passed so far
	hdrLen  uint8  // full header length, known once byte 1 has passed
	lenEnd  uint8  // header offset just past the extended length
}

// atBoundary reports whether no frame is partially passed.
func (t *frameTracker) atBoundary() bool { return t.hdrSeen == 0 && t.payload == 0 }

// advance accounts for p having passed.
func (t *frameTracker) advance(p []byte) {
	for len(p) > 0 {
		p = p[t.step(p):]
	}
}

// nextBoundary returns how many leading bytes of p must pass, if p passes
// next, for the stream to be at a boundary for the first time (1..len(p)),
// or -1 if that does not happen within p. It leaves t unchanged.
func (t *frameTracker) nextBoundary(p []byte) int {
	c := *t
	n := c.step(p)
	if n > 0 && c.atBoundary() {
		return n
	}
	return -1
}

// step passes bytes of p until the stream reaches a boundary or p runs out,
// and returns how many it passed: at least one when p is not empty.
func (t *frameTracker) step(p []byte) int {
	n := 0
	for n < len(p) {
		if t.hdrSeen == 0 {
			if t.payload > 0 {
				if left := uint64(len(p) - n); t.payload > left {
					t.payload -= left
					return len(p)
				}
				n += int(t.payload)
				t.payload = 0
				return n
			}
			// The usual case, a whole header at hand, at once.
			if h, length, ok := frameHeader(p[n:]); ok {
				n += h
				if t.payload = length; length == 0 {
					return n
				}
				continue
			}
		}
		b := p[n]
		n++
		t.hdrSeen++
		switch {
		case t.hdrSeen == 1:
			// FIN, RSV and opcode: nothing the boundary depends on.
			continue
		case t.hdrSeen == 2:
			t.hdrLen, t.lenEnd = 2, 2
			switch l := uint64(b & 0x7f); l {
			case 126:
				t.lenEnd += 2
			case 127:
				t.lenEnd += 8
			default:
				t.length = l
			}
			t.hdrLen = t.lenEnd
			if b&0x80 != 0 {
				t.hdrLen += 4 // masking key
			}
		case t.hdrSeen <= t.lenEnd:
			t.length = t.length<<8 | uint64(b)
		}
		if t.hdrSeen == t.hdrLen {
			t.payload, t.length, t.hdrSeen = t.length, 0, 0
			if t.payload == 0 {
				return n
			}
		}
	}
	return n
}

// frameHeader reads the header at the start of p: its size and the payload
// length, or ok false if p does not hold all of it.
func frameHeader(p []byte) (size int, length uint64, ok bool) {
	if len(p) < 2 {
		return 0, 0, false
	}
	size, length = 2, uint64(p[1]&0x7f)
	switch length {
	case 126:
		size = 4
	case 127:
		size = 10
	}
	if p[1]&0x80 != 0 {
		size += 4
	}
	if len(p) < size {
		return 0, 0, false
	}
	switch length {
	case 126:
		length = uint64(binary.BigEndian.Uint16(p[2:]))
	case 127:
		length = binary.BigEndian.Uint64(p[2:])
	}
	return size, length, true
}

// errNoFrameBoundary is what frameGate.outsideWrite returns when the stream
// did not reach a frame boundary in time; it wrote nothing, and the caller
// should close the connection rather than corrupt it.
var errNoFrameBoundary = errors.New("websocket stream reached no frame boundary in time")

// frameGate lets a writer from outside the copy loop put whole frames into
// one direction of a WebSocket tunnel, between the loop's frames. Caddy's
// reverse proxy writes a close frame (1001) into both sides of every tunnel
// on a config reload, from another goroutine, while the copies may be in the
// middle of a frame; through a gate that frame waits for a boundary, and the
// loop waits for it.
//
// A nil *frameGate is a disabled gate, for protocols other than WebSocket:
// both writes go straight to the writer, so call sites need no branch.
//
// The loop holds mu for each write, so the gate costs the loop one lock and
// one atomic load per chunk. An outside writer never waits on mu itself
// while the loop may be blocked in a write (a peer that stopped reading
// would then hold it up past its deadline): it waits for mu in a helper
// goroutine, or for the loop to hand the stream over at a boundary.
type frameGate struct {
	mu sync.Mutex // held by whoever writes to the stream
	t  frameTracker

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

// errCloseFrameSent is what loopWrite returns once an outside writer has
// sent a close frame: the loop's direction is over.
var errCloseFrameSent = errors.New("websocket close frame sent, no more frames may follow")

// newFrameGate returns a gate for a WebSocket stream, or nil (no gate) for
// any other protocol.
func newFrameGate(websocket bool) *frameGate {
	if !websocket {
		return nil
	}
	return &frameGate{granted: make(chan struct{}, 1), done: make(chan struct{}, 1), sent: make(chan struct{})}
}

// claimClose reports whether this is the first claim to write a close
// frame from outside the loop: RFC 6455 §5.5.1 allows one a direction.
func (g *frameGate) claimClose() bool { return !g.closeClaimed.Swap(true) }

// closedGate stands for a disabled gate's closeSent: no frames to wait for.
var closedGate = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// closeSent is closed once an outside writer's close frame went out, so
// that no frame is in flight in this direction any more.
func (g *frameGate) closeSent() <-chan struct{} {
	if g == nil {
		return closedGate
	}
	return g.sent
}

// loopWrite writes p, the copy loop's next chunk, to w. When an outside
// writer waits, the chunk is split at the first frame boundary in it and the
// outside writer goes in between. Once an outside writer has sent a close
// frame, loopWrite writes nothing more and returns errCloseFrameSent.
func (g *frameGate) loopWrite(w io.Writer, p []byte) (int, error) {
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

// loopWriteSplit is loopWrite while an outside writer waits or after it
// sent a close frame; g.mu is held.
func (g *frameGate) loopWriteSplit(w io.Writer, p []byte) (int, error) {
	if g.handOver(); g.closed {
		return 0, errCloseFrameSent
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
			return written, errCloseFrameSent
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
func (g *frameGate) handOver() {
	if !g.t.atBoundary() || !g.req.CompareAndSwap(reqWaiting, reqGranted) {
		return
	}
	g.granted <- struct{}{}
	<-g.done
}

// outsideWrite writes p, whole frames, to w at a frame boundary, with the
// loop held off while it writes. If the stream reaches no boundary within
// wait, it writes nothing and returns errNoFrameBoundary. When w can take a
// write deadline (a net.Conn), the write itself gets wait too, and the
// deadline is cleared afterwards: Caddy writes its close frames to one
// tunnel after another while holding its connection list, so a peer that
// stopped reading must not hold up the reload.
func (g *frameGate) outsideWrite(w io.Writer, p []byte, wait time.Duration) (int, error) {
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
				return 0, errNoFrameBoundary
			}
			// The loop handed over just now.
			<-g.granted
			return g.writeGranted(w, p, wait)
		}
	}
}

// writeGranted writes p while the loop waits in handOver, then lets it go on.
func (g *frameGate) writeGranted(w io.Writer, p []byte, wait time.Duration) (int, error) {
	n, err := g.write(w, p, wait)
	g.req.Store(g.idleReq())
	g.done <- struct{}{}
	return n, err
}

// write is the outside write itself, by whoever holds the stream.
func (g *frameGate) write(w io.Writer, p []byte, wait time.Duration) (int, error) {
	if dw, ok := w.(interface{ SetWriteDeadline(time.Time) error }); ok {
		if dw.SetWriteDeadline(time.Now().Add(wait)) == nil {
			defer dw.SetWriteDeadline(time.Time{})
		}
	}
	n, err := w.Write(p)
	g.t.advance(p[:n])
	if n > 0 && hasCloseFrame(p[:n]) && !g.closed {
		g.closed = true
		close(g.sent)
	}
	return n, err
}

// idleReq is req with no outside writer waiting; only outside writers set
// closed, one at a time, so they may read it without holding the stream.
func (g *frameGate) idleReq() int32 {
	if g.closed {
		return reqClosed
	}
	return reqNone
}

// hasCloseFrame reports whether p, frames from a boundary on, holds the
// start of a close frame (opcode 8).
func hasCloseFrame(p []byte) bool {
	var t frameTracker
	for len(p) > 0 {
		if p[0]&0x0f == 0x8 {
			return true
		}
		k := t.nextBoundary(p)
		if k < 0 {
			return false
		}
		p = p[k:]
	}
	return false
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
