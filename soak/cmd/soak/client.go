package main

// The echo clients of the long-running scenarios: each holds one WebSocket
// through Caddy, sends a sequence-numbered message every period, and checks
// that the echoes come back in order and intact.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// newDialer returns a WebSocket dialer sized for thousands of mostly idle
// connections: small read buffers and pooled write buffers.
func newDialer() *websocket.Dialer {
	return &websocket.Dialer{
		NetDialContext:   (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		HandshakeTimeout: 15 * time.Second,
		ReadBufferSize:   1024,
		WriteBufferSize:  1024,
		WriteBufferPool:  &sync.Pool{},
		TLSClientConfig:  clientTLS,
	}
}

// Message layout: client id (8 bytes), sequence number (8), send time in
// Unix nanoseconds (8), then a payload of 16-256 bytes that both ends can
// derive from (id, seq). Any corruption, truncation or message from
// another tunnel fails the check.
const msgHeader = 24

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func fillPayload(b []byte, id, seq uint64) {
	s := splitmix(id<<32 ^ seq)
	for i := range b {
		if i%8 == 0 {
			s = splitmix(s)
		}
		b[i] = byte(s >> (8 * (i % 8)))
	}
}

func encodeMsg(id, seq uint64, now time.Time) []byte {
	size := msgHeader + 16 + int(splitmix(id^seq<<20)%241)
	b := make([]byte, size)
	binary.BigEndian.PutUint64(b[0:], id)
	binary.BigEndian.PutUint64(b[8:], seq)
	binary.BigEndian.PutUint64(b[16:], uint64(now.UnixNano()))
	fillPayload(b[msgHeader:], id, seq)
	return b
}

var errCorrupt = errors.New("corrupted echo")

// decodeMsg checks an echo addressed to client id and returns its sequence
// number and send time.
func decodeMsg(b []byte, id uint64) (seq uint64, sent time.Time, err error) {
	if len(b) < msgHeader {
		return 0, time.Time{}, fmt.Errorf("%w: %d bytes", errCorrupt, len(b))
	}
	if got := binary.BigEndian.Uint64(b[0:]); got != id {
		return 0, time.Time{}, fmt.Errorf("%w: echo for client %d reached client %d", errCorrupt, got, id)
	}
	seq = binary.BigEndian.Uint64(b[8:])
	sent = time.Unix(0, int64(binary.BigEndian.Uint64(b[16:])))
	want := encodeMsg(id, seq, sent)
	if len(want) != len(b) || string(want[msgHeader:]) != string(b[msgHeader:]) {
		return 0, time.Time{}, fmt.Errorf("%w: seq %d: %d bytes, want %d, or payload differs", errCorrupt, seq, len(b), len(want))
	}
	return seq, sent, nil
}

// closeKind names how a tunnel ended as the client saw it: "close-1001"
// (a close frame with that code), "fin" (clean TCP close without a close
// frame: gorilla reports it as 1006 "unexpected EOF"), "rst" (reset),
// "timeout", or "error".
func closeKind(err error) string {
	var ce *websocket.CloseError
	var ne net.Error
	switch {
	case errors.As(err, &ce) && ce.Code == websocket.CloseAbnormalClosure && ce.Text == io.ErrUnexpectedEOF.Error():
		return "fin"
	case errors.As(err, &ce):
		return fmt.Sprintf("close-%d", ce.Code)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "rst"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "fin"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	default:
		return "error"
	}
}

// echoRun is what the echo clients of one scenario share.
type echoRun struct {
	url     string
	dialer  *websocket.Dialer
	period  time.Duration // one message per client per period
	overdue time.Duration // an echo this late is a failure
	// reconnect reopens a closed tunnel and resends what it did not echo;
	// without it a client stops at its first close.
	reconnect bool
	// closeOK says whether a tunnel closing this way is expected; nil
	// means no close is.
	closeOK func(kind string) bool

	// onClose, if set, sees the time of every close a client saw.
	onClose func(at time.Time)

	fail        *failures
	closes      tally // how tunnels ended under the clients
	finalCloses tally // how the clients' own closing handshakes ended
	rtt         latencies
	sent        atomic.Int64 // messages written, resends included
	echoed      atomic.Int64
	reconnects  atomic.Int64
}

func newEchoRun(url string, period time.Duration, fail *failures) *echoRun {
	return &echoRun{url: url, dialer: newDialer(), period: period, overdue: 10 * time.Second, fail: fail}
}

// echoClient is one tunnel's client, over however many connections
// reconnects take.
type echoClient struct {
	id  uint64
	run *echoRun

	highest atomic.Uint64 // highest sequence number sent so far
	acked   atomic.Uint64 // every message up to this one was echoed

	mu      sync.Mutex
	pending []time.Time // send times of the messages not echoed yet, in order

	closedAt atomic.Int64 // Unix nanoseconds of the latest close the client saw
}

// open dials n clients, conc at a time, retrying each handshake twice: a
// ramp of thousands of handshakes may overflow a listen backlog, which is
// not what the soak is about. Any client that still cannot connect fails.
func (r *echoRun) open(ctx context.Context, n int, firstID uint64, conc int) ([]*echoClient, []*websocket.Conn, error) {
	clients := make([]*echoClient, n)
	conns := make([]*websocket.Conn, n)
	var mu sync.Mutex
	var firstErr error
	var retried atomic.Int64
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := range n {
		clients[i] = &echoClient{id: firstID + uint64(i), run: r}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			for attempt := 0; ; attempt++ {
				conn, err := dialWS(ctx, r.dialer, r.url)
				if err == nil {
					conns[i] = conn
					return
				}
				if attempt == 2 || ctx.Err() != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("client %d: %v", clients[i].id, err)
					}
					mu.Unlock()
					return
				}
				retried.Add(1)
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	if n := retried.Load(); n > 0 {
		logf("  %d handshake(s) of the ramp were retried", n)
	}
	if firstErr != nil {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		return nil, nil, firstErr
	}
	return clients, conns, nil
}

// dialWS opens a WebSocket and turns a refused handshake into an error
// naming the status.
func dialWS(ctx context.Context, d *websocket.Dialer, url string) (*websocket.Conn, error) {
	conn, res, err := d.DialContext(ctx, url, nil)
	if err != nil {
		if res != nil {
			return nil, &statusError{status: res.StatusCode, header: res.Header}
		}
		return nil, err
	}
	return conn, nil
}

type statusError struct {
	status int
	header http.Header
}

func (e *statusError) Error() string { return fmt.Sprintf("handshake answered %d", e.status) }

// start runs every client from its open connection until stop closes;
// the returned WaitGroup is done when every client has drained and closed.
func (r *echoRun) start(clients []*echoClient, conns []*websocket.Conn, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Go(func() { c.live(conns[i], stop) })
	}
	return &wg
}

// lost counts the messages sent but never echoed, over clients.
func lost(clients []*echoClient) int64 {
	var n int64
	for _, c := range clients {
		n += int64(c.highest.Load() - c.acked.Load())
	}
	return n
}

// sessionEnd is how one connection of a client ended.
type sessionEnd int

const (
	endDone   sessionEnd = iota // stop was closed; drained and closed cleanly
	endClosed                   // the tunnel closed under the client
	endFatal                    // a failure the client cannot go on after
)

// live runs the client until stop closes, reconnecting if the run does.
func (c *echoClient) live(conn *websocket.Conn, stop <-chan struct{}) {
	for {
		if c.session(conn, stop) != endClosed || !c.run.reconnect {
			return
		}
		if conn = c.redial(); conn == nil {
			return
		}
	}
}

// redial reopens the tunnel after a random wait of up to a second, so that
// thousands of clients closed at once do not all come back at once (as
// real clients should not), then backs off; giving up after 30 s fails.
func (c *echoClient) redial() *websocket.Conn {
	time.Sleep(rand.N(time.Second))
	giveUp := time.Now().Add(30 * time.Second)
	wait := 200 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		conn, err := dialWS(ctx, c.run.dialer, c.run.url)
		cancel()
		if err == nil {
			c.run.reconnects.Add(1)
			return conn
		}
		if time.Now().After(giveUp) {
			c.run.fail.add("reconnect", "client %d could not reopen its tunnel for 30 s: %v", c.id, err)
			return nil
		}
		time.Sleep(wait + rand.N(wait))
		wait = min(2*wait, 2*time.Second)
	}
}

// session drives one connection: it first resends whatever the previous
// connection did not get echoed, then sends a new message every period.
func (c *echoClient) session(conn *websocket.Conn, stop <-chan struct{}) sessionEnd {
	defer conn.Close()
	c.mu.Lock()
	c.pending = c.pending[:0]
	c.mu.Unlock()
	readErr := make(chan error, 1)
	go func() { readErr <- c.readEchoes(conn) }()

	for seq := c.acked.Load() + 1; seq <= c.highest.Load(); seq++ {
		if err := c.send(conn, seq); err != nil {
			return c.ended(conn, readErr)
		}
	}
	// A random first tick spreads the clients' sends over the period.
	tick := time.NewTimer(rand.N(c.run.period))
	defer tick.Stop()
	for {
		select {
		case err := <-readErr:
			return c.closed(err)
		case <-stop:
			return c.finish(conn, readErr)
		case <-tick.C:
			if age := c.oldestPending(); age > c.run.overdue {
				c.run.fail.add("overdue", "client %d: message %d not echoed after %v", c.id, c.acked.Load()+1, round(age))
				conn.Close()
				<-readErr
				return endFatal
			}
			if err := c.send(conn, c.highest.Load()+1); err != nil {
				return c.ended(conn, readErr)
			}
			tick.Reset(c.run.period)
		}
	}
}

// send writes message seq; its send time is queued before the write so
// that the reader cannot see the echo first.
func (c *echoClient) send(conn *websocket.Conn, seq uint64) error {
	now := time.Now()
	c.mu.Lock()
	c.pending = append(c.pending, now)
	c.mu.Unlock()
	if seq > c.highest.Load() {
		c.highest.Store(seq)
	}
	conn.SetWriteDeadline(now.Add(10 * time.Second))
	if err := conn.WriteMessage(websocket.BinaryMessage, encodeMsg(c.id, seq, now)); err != nil {
		return err
	}
	c.run.sent.Add(1)
	return nil
}

// ended handles a failed write: the reader sees the same close and says
// how it happened.
func (c *echoClient) ended(conn *websocket.Conn, readErr <-chan error) sessionEnd {
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	return c.closed(<-readErr)
}

func (c *echoClient) oldestPending() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.pending) == 0 {
		return 0
	}
	return time.Since(c.pending[0])
}

// readEchoes checks every echo against the next message the client waits
// for; it returns the error that ended the connection.
func (c *echoClient) readEchoes(conn *websocket.Conn) error {
	for {
		mt, data, err := conn.ReadMessage()
		if err != nil {
			return err
		}
		if mt != websocket.BinaryMessage {
			c.run.fail.add("corrupt", "client %d: echo of type %d, want binary", c.id, mt)
			return errCorrupt
		}
		seq, sent, err := decodeMsg(data, c.id)
		if err != nil {
			c.run.fail.add("corrupt", "client %d: %v", c.id, err)
			return errCorrupt
		}
		if want := c.acked.Load() + 1; seq != want || seq > c.highest.Load() {
			c.run.fail.add("reorder", "client %d: echo of message %d while waiting for %d (highest sent %d)", c.id, seq, want, c.highest.Load())
			return errCorrupt
		}
		c.acked.Store(seq)
		c.mu.Lock()
		if len(c.pending) > 0 {
			c.pending = c.pending[1:]
		}
		c.mu.Unlock()
		c.run.echoed.Add(1)
		c.run.rtt.add(time.Since(sent))
	}
}

// closed records a tunnel that closed under the client.
func (c *echoClient) closed(err error) sessionEnd {
	if errors.Is(err, errCorrupt) {
		return endFatal // already recorded
	}
	now := time.Now()
	c.closedAt.Store(now.UnixNano())
	if c.run.onClose != nil {
		c.run.onClose(now)
	}
	kind := closeKind(err)
	c.run.closes.add(kind)
	if c.run.closeOK == nil || !c.run.closeOK(kind) {
		c.run.fail.add("closed", "client %d: tunnel closed (%s): %v", c.id, kind, err)
		return endFatal
	}
	return endClosed
}

// finish waits for the echoes still due, then closes with a close
// handshake: the client's 1000 goes through Caddy to the backend, whose
// answering close frame must come back.
func (c *echoClient) finish(conn *websocket.Conn, readErr <-chan error) sessionEnd {
	deadline := time.Now().Add(c.run.overdue)
	for c.acked.Load() < c.highest.Load() && time.Now().Before(deadline) {
		select {
		case err := <-readErr:
			return c.closed(err) // reconnects and resends if the run does
		case <-time.After(20 * time.Millisecond):
		}
	}
	// Whatever is still not echoed counts as lost in lost().
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	if err := conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(5*time.Second)); err != nil {
		c.run.fail.add("close handshake", "client %d: writing close: %v", c.id, err)
		return endFatal
	}
	select {
	case err := <-readErr:
		var ce *websocket.CloseError
		switch kind := closeKind(err); {
		case errors.As(err, &ce) && ce.Code == websocket.CloseNormalClosure:
			c.run.finalCloses.add("close-1000")
		case kind == "fin":
			// The echo backend answers a close frame with a 1 s write
			// deadline (gorilla's default close handler), which a CPU
			// starved backend can miss; it then closes with a FIN
			// alone. Counted, not failed: the tunnel closed cleanly.
			c.run.finalCloses.add(kind)
		default:
			c.run.finalCloses.add(kind)
			c.run.fail.add("close handshake", "client %d: close answered with %v", c.id, err)
		}
	case <-time.After(10 * time.Second):
		c.run.fail.add("close handshake", "client %d: no close frame back within 10 s", c.id)
	}
	return endDone
}
