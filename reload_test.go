package upgrade

// Config reloads with WebSocket tunnels open. When a reload ends
// a handler, Caddy's reverse proxy writes a close frame (1001) into both
// sides of every tunnel from another goroutine than the copies, and then
// closes them; a copy in the middle of a frame gets that close frame in the
// middle of its frame. The clients here read the raw TCP stream and parse
// it with package wsframetest's reference parser, so a corrupted stream cannot
// hide behind a WebSocket library, and every payload byte is checked.
//
// The backend writes each large message in two writes a tick apart, as a
// backend producing it over time would: each tunnel spends part of its time
// in the middle of a frame, which is when a reload corrupts stock Caddy's
// tunnels.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
	"github.com/seedf05e/caddy-upgrade/internal/audit"
	"github.com/seedf05e/caddy-upgrade/internal/wsframe/wsframetest"
	"golang.org/x/net/http2"
)

const (
	rlTunnels = 200                   // tunnels per round
	rlRounds  = 3                     // reloads per handler
	rlTick    = 40 * time.Millisecond // a backend writes once per tick
	rlTraffic = 300 * time.Millisecond
	// rlCloseBound is how long after /load returns every tunnel must be
	// closed, and rlLoadBound how long /load itself may take.
	rlCloseBound = 5 * time.Second
	rlLoadBound  = 5 * time.Second
	// rlStockLoadBound is how long the baseline waits for stock Caddy's
	// reload before it closes the slow client to let the reload go on.
	rlStockLoadBound = 2 * time.Second
)

// rlPattern is where payload bytes come from: a fixed pseudo-random table,
// so that a byte out of place (a close frame inside a payload) shows.
var rlPattern = func() []byte {
	r := mrand.New(mrand.NewPCG(6455, 1001))
	b := make([]byte, 128<<10)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}()

// rlPayload is message seq of a tunnel: seq, then pattern bytes chosen by
// seq. n is at least 4 and at most 64 KiB + 4.
func rlPayload(seq uint32, n int) []byte {
	p := make([]byte, n)
	binary.BigEndian.PutUint32(p, seq)
	off := rlOffset(seq)
	copy(p[4:], rlPattern[off:off+n-4])
	return p
}

func rlOffset(seq uint32) int { return int(seq*2654435761) % (len(rlPattern) - 64<<10 - 4) }

// rlPayloadOK reports whether p is a prefix of rlPayload(seq, n) for any n.
func rlPayloadOK(seq uint32, p []byte) bool {
	var s [4]byte
	binary.BigEndian.PutUint32(s[:], seq)
	if k := min(4, len(p)); !bytes.Equal(p[:k], s[:k]) {
		return false
	}
	if len(p) <= 4 {
		return true
	}
	off := rlOffset(seq)
	return len(p)-4 <= 64<<10 && bytes.Equal(p[4:], rlPattern[off:off+len(p)-4])
}

// rlBackend is a WebSocket backend on a raw listener that never stops
// sending: unmasked binary frames, 16–64 B, and one in ten 32–64 KiB. On a
// path containing "flood" it writes without pause, whole frames, until a
// write fails; otherwise once per tick, a large frame split over two ticks.
type rlBackend struct {
	ln      net.Listener
	flooded atomic.Int64 // bytes written by flood tunnels
}

func newRLBackend(t *testing.T) *rlBackend {
	t.Helper()
	b := &rlBackend{}
	b.ln = serveRaw(t, b.serve)
	return b
}

func (b *rlBackend) Addr() string { return b.ln.Addr().String() }

func (b *rlBackend) serve(c net.Conn, id int) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	if _, err := fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
		audit.AcceptFor(req.Header.Get("Sec-WebSocket-Key"))); err != nil {
		return
	}
	// Whatever comes back (Caddy's own close frame on a reload) is read
	// and dropped; the end of it ends the writes too.
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, br)
		close(stop)
	}()
	flood := strings.Contains(req.URL.Path, "flood")
	if flood {
		c.(*net.TCPConn).SetWriteBuffer(64 << 10)
	}
	rng := mrand.New(mrand.NewPCG(uint64(id), 9))
	var seq uint32
	var rest []byte // the second part of a large frame
	tick := time.NewTimer(0)
	defer tick.Stop()
	for {
		buf := rest
		rest = nil
		for range 1 + rng.IntN(4) {
			buf = wsframetest.Append(buf, true, 0x2, false, rlPayload(seq, 16+rng.IntN(49)))
			seq++
		}
		if rng.IntN(4) == 0 {
			f := wsframetest.Append(nil, true, 0x2, false, rlPayload(seq, 32<<10+rng.IntN(32<<10+1)))
			seq++
			cut := 1 + rng.IntN(len(f)-1)
			if flood {
				cut = len(f)
			}
			buf, rest = append(buf, f[:cut]...), f[cut:]
		}
		n, err := c.Write(buf)
		if flood {
			b.flooded.Add(int64(n))
		}
		if err != nil {
			return
		}
		if flood {
			select {
			case <-stop:
				return
			default:
			}
			continue
		}
		tick.Reset(rlTick/2 + time.Duration(rng.Int64N(int64(rlTick))))
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

// rlClient is one tunnel's client: a raw TCP connection that did the
// handshake (or an HTTP/2 stream that did, conn nil) and then checks every
// frame it reads.
type rlClient struct {
	conn net.Conn
	br   *bufio.Reader

	// Set by read.
	end       string // how the stream ended: rlEnd*
	corrupt   string // why the stream is corrupted, "" if it is not
	data      int    // complete data frames
	nextSeq   uint32
	closeSeen bool
}

// How a client's stream ended.
const (
	rlEndCloseFrame = "close frame 1001"
	rlEndClean      = "TCP close at a frame boundary"
	rlEndMidFrame   = "TCP close mid-frame" // no corrupted byte, frame cut short
	rlEndReset      = "TCP reset"
	rlEndOpen       = "still open"
	rlEndError      = "read error"
	// rlEndH3Closed: the HTTP/3 stream or connection ended with
	// H3_NO_ERROR (on a reload, Caddy closes the old server's QUIC
	// connections at once, before any close frame can go out).
	rlEndH3Closed = "HTTP/3 closed (H3_NO_ERROR)"
)

// rlDial opens a WebSocket tunnel through Caddy; rcvbuf > 0 shrinks the
// client's receive buffer.
func rlDial(path string, rcvbuf int) (*rlClient, error) {
	conn, err := net.DialTimeout("tcp", harnessAddr, harnessIO)
	if err != nil {
		return nil, err
	}
	if rcvbuf > 0 {
		conn.(*net.TCPConn).SetReadBuffer(rcvbuf)
	}
	key := make([]byte, 16)
	rand.Read(key)
	conn.SetDeadline(time.Now().Add(harnessIO))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
		path, harnessAddr, base64.StdEncoding.EncodeToString(key)); err != nil {
		conn.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	res.Body.Close()
	if res.StatusCode != http.StatusSwitchingProtocols {
		conn.Close()
		return nil, fmt.Errorf("%s: %s", path, res.Status)
	}
	conn.SetDeadline(time.Time{})
	return &rlClient{conn: conn, br: br}, nil
}

// rlDialAll opens n tunnels on prefix/0 .. prefix/n-1, a few at a time.
func rlDialAll(t *testing.T, prefix string, n int) []*rlClient {
	t.Helper()
	clients := make([]*rlClient, n)
	errs := make([]error, n)
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			clients[i], errs[i] = rlDial(fmt.Sprintf("%s/%d", prefix, i), 0)
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range clients {
			if c != nil {
				c.conn.Close()
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("opening %d tunnels on %s: %v", n, prefix, err)
	}
	return clients
}

// read reads the stream until it ends, checking each frame as it comes.
func (c *rlClient) read() {
	var pending []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := c.br.Read(buf)
		if c.corrupt == "" {
			pending = append(pending, buf[:n]...)
			frames, rest := wsframetest.Parse(pending)
			for _, f := range frames {
				if c.checkFrame(pending[f.Start], f); c.corrupt != "" {
					break
				}
			}
			pending = append(pending[:0], pending[rest:]...)
		}
		if err == nil {
			continue
		}
		var ne net.Error
		switch {
		case errors.Is(err, io.EOF):
			switch {
			case len(pending) > 0 && c.corrupt == "":
				c.checkTail(pending)
				c.end = rlEndMidFrame
			case c.closeSeen:
				c.end = rlEndCloseFrame
			default:
				c.end = rlEndClean
			}
		case errors.Is(err, syscall.ECONNRESET), strings.HasPrefix(err.Error(), "stream reset by the server"):
			c.end = rlEndReset
		case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, errH23Timeout):
			c.end = rlEndOpen
		case strings.Contains(err.Error(), "H3_NO_ERROR"):
			c.end = rlEndH3Closed
		default:
			c.end = rlEndError + ": " + err.Error()
		}
		return
	}
}

// checkFrame checks one complete frame; b0 is its first byte.
func (c *rlClient) checkFrame(b0 byte, f wsframetest.Frame) {
	switch {
	case c.closeSeen:
		c.corrupt = fmt.Sprintf("frame (opcode %#x) after the close frame", f.Opcode)
	case b0&0x70 != 0:
		c.corrupt = fmt.Sprintf("RSV bits in %#x", b0)
	case f.Masked:
		c.corrupt = "masked frame toward the client"
	case f.Opcode == 0x8:
		if len(f.Payload) != 2 || binary.BigEndian.Uint16(f.Payload) != 1001 {
			c.corrupt = fmt.Sprintf("close frame with payload %x", f.Payload)
		}
		c.closeSeen = true
	case f.Opcode == 0x2 && f.Fin:
		if len(f.Payload) < 16 || len(f.Payload) > 64<<10 || !rlPayloadOK(c.nextSeq, f.Payload) {
			c.corrupt = fmt.Sprintf("data frame %d (%d bytes) is not the one sent", c.nextSeq, len(f.Payload))
		}
		c.nextSeq++
		c.data++
	default:
		c.corrupt = fmt.Sprintf("unexpected frame: FIN %v opcode %#x", f.Fin, f.Opcode)
	}
}

// checkTail checks the partial frame a stream ended in: it must be the
// start of the next data frame, or of the close frame (whose write may
// have been cut short by a deadline).
func (c *rlClient) checkTail(tail []byte) {
	if c.closeSeen {
		c.corrupt = fmt.Sprintf("%d bytes after the close frame", len(tail))
		return
	}
	if bytes.HasPrefix(wsframetest.CaddyClose, tail) {
		return
	}
	if tail[0] != 0x82 {
		c.corrupt = fmt.Sprintf("partial frame starts with %#x", tail[0])
		return
	}
	if len(tail) < 2 {
		return
	}
	size, length, ok := wsframetest.Header(tail)
	switch {
	case tail[1]&0x80 != 0:
		c.corrupt = "masked partial frame toward the client"
	case tail[1]&0x7f < 16:
		c.corrupt = fmt.Sprintf("partial frame with length %d", tail[1]&0x7f)
	case !ok:
		// the rest of the header is missing
	case length < 16 || length > 64<<10:
		c.corrupt = fmt.Sprintf("partial frame with length %d", length)
	case !rlPayloadOK(c.nextSeq, tail[size:]):
		c.corrupt = fmt.Sprintf("partial data frame %d: its first %d payload bytes are not the ones sent", c.nextSeq, len(tail)-size)
	}
}

// rlTally counts how a round's streams ended.
type rlTally struct {
	ends     map[string]int
	corrupt  int
	examples []string
	data     int
}

func rlCount(clients []*rlClient) rlTally {
	r := rlTally{ends: map[string]int{}}
	for i, c := range clients {
		r.ends[c.end]++
		r.data += c.data
		if c.corrupt != "" {
			r.corrupt++
			if len(r.examples) < 3 {
				r.examples = append(r.examples, fmt.Sprintf("tunnel %d: %s (%s)", i, c.corrupt, c.end))
			}
		}
	}
	return r
}

func (r rlTally) String() string {
	var parts []string
	for _, e := range []string{rlEndCloseFrame, rlEndClean, rlEndMidFrame, rlEndReset, rlEndOpen, rlEndH3Closed} {
		if n := r.ends[e]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, e))
		}
	}
	for e, n := range r.ends {
		if strings.HasPrefix(e, rlEndError) {
			parts = append(parts, fmt.Sprintf("%d %s", n, e))
		}
	}
	return fmt.Sprintf("%s; %d corrupted %v; %d data frames checked", strings.Join(parts, ", "), r.corrupt, r.examples, r.data)
}

// rlConfig is rlRoutes as the harness's plain-HTTP site.
func rlConfig(backend, version string) string {
	return caddyfileConfig(site(rlRoutes(backend, version)))
}

// rlRoutes routes /up/* through upgrade (delegating to its proxy),
// /pol/* through upgrade in policy-only mode before a reverse_proxy and
// /stock/* through a bare reverse_proxy, all to backend, without
// stream_close_delay: a reload closes their tunnels at once. version is
// served on /version, so that each reload changes the config.
func rlRoutes(backend, version string) string {
	return fmt.Sprintf(`
	handle /up/* {
		upgrade websocket {
			to %[1]s
		}
	}
	handle /pol/* {
		upgrade websocket
		reverse_proxy %[1]s
	}
	handle /stock/* {
		reverse_proxy %[1]s
	}
	handle /version {
		respond "%[2]s"
	}`, backend, version)
}

// rlPostLoad posts a Caddyfile to the admin API's /load and returns how
// long it took; it may run outside the test goroutine.
func rlPostLoad(config string) (time.Duration, error) {
	start := time.Now()
	res, err := (&http.Client{Timeout: time.Minute}).Post("http://"+harnessAdmin+"/load", "text/caddyfile", strings.NewReader(config))
	if err != nil {
		return time.Since(start), err
	}
	defer res.Body.Close()
	msg, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return time.Since(start), fmt.Errorf("%s: %s", res.Status, msg)
	}
	return time.Since(start), nil
}

// rlReloadRound opens rlTunnels tunnels under prefix, lets the backend
// send for a while, reloads to a changed config, and returns how each
// stream ended and how long /load took.
func rlReloadRound(t *testing.T, backend *rlBackend, prefix, version string) (rlTally, time.Duration) {
	t.Helper()
	clients := rlDialAll(t, prefix, rlTunnels)
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(c.read)
	}
	time.Sleep(rlTraffic)
	took, err := rlPostLoad(rlConfig(backend.Addr(), version))
	if err != nil {
		t.Fatalf("reload to %s: %v", version, err)
	}
	deadline := time.Now().Add(rlCloseBound)
	for _, c := range clients {
		c.conn.SetReadDeadline(deadline)
	}
	wg.Wait()
	for _, c := range clients {
		c.conn.Close()
	}
	return rlCount(clients), took
}

// TestReloadCloseFramesIntact reloads the config while hundreds of
// WebSocket tunnels carry data, and checks every stream the clients read:
// through upgrade, no frame is corrupted, and a stream ends with Caddy's
// close frame (1001) after its last data frame, or with a TCP close (FIN)
// without a wrong byte: at a frame boundary, or cut short in the middle of
// a frame when none came in time (Caddy may also close the backend side
// first, and the client's with it, before its close frame). The
// same rounds through a bare reverse_proxy are the baseline, whose
// corrupted tunnels are counted, not failed, and must show at least once so
// that the check cannot go blind.
func TestReloadCloseFramesIntact(t *testing.T) {
	backend := newRLBackend(t)
	loadCaddyRaw(t, rlConfig(backend.Addr(), "r0"), "caddyfile")
	version := 0
	reload := func(t *testing.T, prefix string, round int) rlTally {
		t.Helper()
		version++
		tally, took := rlReloadRound(t, backend, fmt.Sprintf("%s/r%d", prefix, round), fmt.Sprintf("r%d", version))
		t.Logf("round %d: /load took %v; %d tunnels: %v", round, took.Round(time.Millisecond), rlTunnels, tally)
		// Stock Caddy's reload time is the baseline's own business.
		if took > rlLoadBound && !strings.HasPrefix(prefix, "/stock") {
			t.Errorf("round %d: /load took %v, more than %v", round, took, rlLoadBound)
		}
		return tally
	}

	t.Run("upgrade", func(t *testing.T) {
		for round := range rlRounds {
			tally := reload(t, "/up", round)
			if tally.corrupt > 0 {
				t.Errorf("round %d: %d of %d tunnels corrupted by the reload: %v", round, tally.corrupt, rlTunnels, tally.examples)
			}
			for end, n := range tally.ends {
				switch end {
				case rlEndCloseFrame, rlEndClean, rlEndMidFrame:
				case rlEndReset:
					// A frame that did not complete within the bound
					// (closeFrameWait): reset, not corrupted.
					t.Logf("round %d: %d tunnels reset after a frame stayed incomplete", round, n)
				default:
					t.Errorf("round %d: %d tunnels ended with %s", round, n, end)
				}
			}
		}
	})

	// Policy-only mode: the route's own reverse_proxy holds the backend
	// side, and Caddy closes it at once, so a frame the backend was
	// sending is cut: the client's close frame cannot follow it, and that
	// client gets a reset after the bound. Never a corrupted frame.
	t.Run("upgrade policy-only", func(t *testing.T) {
		for round := range rlRounds {
			tally := reload(t, "/pol", round)
			if tally.corrupt > 0 {
				t.Errorf("round %d: %d of %d tunnels corrupted by the reload: %v", round, tally.corrupt, rlTunnels, tally.examples)
			}
		}
	})

	t.Run("stock reverse_proxy", func(t *testing.T) {
		corrupted := 0
		for round := range rlRounds {
			corrupted += reload(t, "/stock", round).corrupt
		}
		t.Logf("stock reverse_proxy: %d of %d tunnels corrupted over %d reloads", corrupted, rlRounds*rlTunnels, rlRounds)
		if corrupted == 0 {
			t.Errorf("no tunnel through stock reverse_proxy was corrupted in %d reloads: the check may have gone blind", rlRounds)
		}
	})
}

// rlH2Tunnels is how many extended CONNECT tunnels share one HTTP/2
// connection in TestReloadH2CloseFramesIntact (Caddy allows 250 streams).
const rlH2Tunnels = 100

// TestReloadH2CloseFramesIntact is TestReloadCloseFramesIntact's upgrade
// case over extended CONNECT (HTTP/2, RFC 8441; HTTP/3, RFC 9220), where
// Caddy writes its close frame into the response stream: delegating, the
// module's copy loop writes past its guard, and the guard gates Caddy's
// close frame to a frame boundary as on HTTP/1.1. (In policy-only mode
// Caddy's own copy writes through the guard, and its close frame is not
// gated; the guard only keeps Caddy's two goroutines from writing to the
// stream at once, which -race reported.) As on HTTP/1.1, a stream may also end without a close frame,
// cut at or inside a frame but never with a wrong byte: Caddy may close
// the backend side first, or a frame may not pass within closeFrameWait.
// Over HTTP/3 the old
// server's QUIC connections close at once (H3_NO_ERROR; the harness's
// grace_period is 1 ns) before any close frame goes out, stock or not: its
// streams must still carry no corrupted frame.
//
// The stream checker is TestReloadCloseFramesIntact's, whose stock
// baseline shows it sees corruption; stock reverse_proxy cannot be the
// baseline here: under -race its reload is a data race (its sweep flushes
// the response stream while the copy writes to it), and without -race it
// corrupted 25-28 of 100 tunnels a round. With the module's writer
// recognition switched off, 100 of 100 got frames after the close frame.
func TestReloadH2CloseFramesIntact(t *testing.T) {
	backend := newRLBackend(t)
	loadH23Routes(t, rlRoutes(backend.Addr(), "h0"))
	version := 0
	// round runs one reload round of tunnels under prefix and returns how
	// their streams ended.
	round := func(t *testing.T, tr h23Transport, prefix string) rlTally {
		t.Helper()
		// A reload ends the old server's connections for new streams:
		// new connections a round.
		var wg sync.WaitGroup
		clients := rlOpenH23(t, tr, prefix, &wg)
		time.Sleep(rlTraffic)
		version++
		took, err := rlPostLoad(h23Config(rlRoutes(backend.Addr(), fmt.Sprintf("h%d", version))))
		if err != nil {
			t.Fatalf("%s: reload: %v", prefix, err)
		}
		wg.Wait() // a stream without data for harnessIO ends as "still open"
		tally := rlCount(clients)
		t.Logf("%s: /load took %v; %d tunnels: %v", prefix, took.Round(time.Millisecond), len(clients), tally)
		if took > rlLoadBound {
			t.Errorf("%s: /load took %v, more than %v", prefix, took, rlLoadBound)
		}
		if tally.data == 0 {
			t.Errorf("%s: no data frame reached a client", prefix)
		}
		return tally
	}
	for _, tr := range []h23Transport{h23H2C, h23H3} {
		t.Run(string(tr), func(t *testing.T) {
			closeFrames := 0
			for r := range rlRounds {
				prefix := fmt.Sprintf("/up/%s%d", tr, r)
				tally := round(t, tr, prefix)
				closeFrames += tally.ends[rlEndCloseFrame]
				if tally.corrupt > 0 {
					t.Errorf("%s: %d of %d tunnels corrupted by the reload: %v", prefix, tally.corrupt, rlH2Tunnels, tally.examples)
				}
				for end, n := range tally.ends {
					switch {
					case end == rlEndCloseFrame, end == rlEndClean, end == rlEndMidFrame:
					case end == rlEndReset:
						t.Logf("%s: %d tunnels reset after a frame stayed incomplete", prefix, n)
					case end == rlEndH3Closed && tr == h23H3:
					default:
						t.Errorf("%s: %d tunnels ended with %s", prefix, n, end)
					}
				}
			}
			// Some tunnels must have had their close frame through the
			// gate, or the test saw only streams cut short.
			if tr == h23H2C && closeFrames == 0 {
				t.Errorf("no HTTP/2 tunnel ended with Caddy's close frame in %d reloads", rlRounds)
			}
		})
	}
	// Policy-only mode: Caddy's own copy writes through the guard, so its
	// close frame cannot be gated; but its flush after the close frame
	// must not run concurrently with the copy's writes (stock Caddy's data
	// race, which -race reports), and no stream may end in an error.
	t.Run("h2c policy-only", func(t *testing.T) {
		for r := range rlRounds {
			prefix := fmt.Sprintf("/pol/h2c%d", r)
			tally := round(t, h23H2C, prefix)
			for end, n := range tally.ends {
				switch end {
				case rlEndCloseFrame, rlEndClean, rlEndMidFrame, rlEndReset:
				default:
					t.Errorf("%s: %d tunnels ended with %s", prefix, n, end)
				}
			}
		}
	})

}

// rlOpenH23 opens rlH2Tunnels WebSocket tunnels on prefix/0 .. prefix/n-1
// over new HTTP/2 (h2c) or HTTP/3 connections, and starts reading each
// in wg as it opens: unread HTTP/3 streams would fill the connection's
// flow-control window, and the next response could not come.
func rlOpenH23(t *testing.T, tr h23Transport, prefix string, wg *sync.WaitGroup) []*rlClient {
	t.Helper()
	clients := make([]*rlClient, rlH2Tunnels)
	switch tr {
	case h23H2C:
		c := dialH23H2(t, false)
		c.requireExtendedConnect()
		// Windows as a browser opens them (Chrome: 6 MiB a stream, 15 MiB
		// the connection). With HTTP/2's default 64 KiB shared by 100 busy
		// streams, a frame can take longer than closeFrameWait to pass,
		// and its tunnel is cut instead of closed: two CI runs had 23-86
		// of 100 cut so, and twice as many data frames pass with these.
		err := c.write(func(fr *http2.Framer) error {
			if err := fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 6 << 20}); err != nil {
				return err
			}
			return fr.WriteWindowUpdate(0, 15<<20)
		})
		if err != nil {
			t.Fatalf("HTTP/2 window: %v", err)
		}
		for i := range clients {
			s := c.Open(h23H2Connect(false, "websocket", fmt.Sprintf("%s/%d", prefix, i), "sec-websocket-version", "13"), false)
			if res := s.Response(); res.Err != nil || res.Status != http.StatusOK {
				t.Fatalf("tunnel %d: status %d, %v", i, res.Status, res.Err)
			}
			clients[i] = &rlClient{br: bufio.NewReaderSize(s, 64<<10)}
			wg.Go(clients[i].read)
		}
	case h23H3:
		var cc *http3.ClientConn
		for i := range clients {
			// A few a connection, as browsers spread them.
			if i%25 == 0 {
				cc = dialH23H3(t)
			}
			res, str := h23H3Do(t, cc, h23H3Request(t, http.MethodConnect, "websocket", fmt.Sprintf("%s/%d", prefix, i), "Sec-WebSocket-Version", "13"))
			if res.StatusCode != http.StatusOK {
				t.Fatalf("tunnel %d: status %d", i, res.StatusCode)
			}
			clients[i] = &rlClient{br: bufio.NewReaderSize(h23H3Stream{str}, 64<<10)}
			wg.Go(clients[i].read)
		}
	default:
		t.Fatalf("rlOpenH23: transport %s", tr)
	}
	return clients
}

// TestReloadSlowReader: a client that stopped reading, its receive buffer
// full and the backend still sending, must not stall the reload: /load
// returns within rlLoadBound, the other tunnels get their close frames, and
// the slow client's connection is closed. (Stock Caddy blocks its close
// frame write behind the copy's, and the reload with it; that is logged.)
func TestReloadSlowReader(t *testing.T) {
	backend := newRLBackend(t)
	loadCaddyRaw(t, rlConfig(backend.Addr(), "s0"), "caddyfile")
	for i, prefix := range []string{"/up", "/stock"} {
		stock := prefix == "/stock"
		slow, err := rlDial(prefix+"/flood", 4096)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { slow.conn.Close() })
		readers := rlDialAll(t, prefix+"/slow-reader-peers", 5)
		var wg sync.WaitGroup
		for _, c := range readers {
			wg.Go(c.read)
		}
		// Wait until the flood is held up: every buffer on the way full.
		last, still := backend.flooded.Load(), time.Now()
		for time.Since(still) < 300*time.Millisecond {
			time.Sleep(50 * time.Millisecond)
			if n := backend.flooded.Load(); n != last {
				last, still = n, time.Now()
			}
			if time.Since(still) > 10*time.Second {
				t.Fatal("the backend's flood never stopped: is the slow client reading?")
			}
		}

		type result struct {
			took time.Duration
			err  error
		}
		loaded := make(chan result, 1)
		go func() {
			took, err := rlPostLoad(rlConfig(backend.Addr(), fmt.Sprintf("s%d", i+1)))
			loaded <- result{took, err}
		}()
		var r result
		stalled := false
		bound := rlLoadBound
		if stock {
			bound = rlStockLoadBound
		}
		select {
		case r = <-loaded:
		case <-time.After(bound):
			stalled = true
			// Unblock the reload: the peer goes away.
			slow.conn.Close()
			r = <-loaded
		}
		if r.err != nil {
			t.Fatalf("%s: reload: %v", prefix, r.err)
		}
		if stock {
			if stalled {
				t.Logf("stock reverse_proxy: /load stalled behind the slow reader until it closed (%v)", r.took.Round(time.Millisecond))
			} else {
				t.Logf("stock reverse_proxy: /load took %v with a slow reader", r.took.Round(time.Millisecond))
			}
		} else if stalled {
			t.Errorf("%s: /load did not return within %v with a client that stopped reading (returned %v after that client closed)", prefix, rlLoadBound, r.took.Round(time.Millisecond))
		} else {
			t.Logf("%s: /load took %v with a slow reader", prefix, r.took.Round(time.Millisecond))
		}

		deadline := time.Now().Add(rlCloseBound)
		for _, c := range readers {
			c.conn.SetReadDeadline(deadline)
		}
		wg.Wait()
		tally := rlCount(readers)
		t.Logf("%s: the slow client's peers: %v", prefix, tally)

		if !stalled {
			slow.conn.SetReadDeadline(deadline)
			slow.read()
			t.Logf("%s: slow client: %s after %d data frames, corrupted: %q", prefix, slow.end, slow.data, slow.corrupt)
			if !stock {
				switch slow.end {
				case rlEndCloseFrame, rlEndClean, rlEndMidFrame, rlEndReset:
				default:
					t.Errorf("%s: the slow client's connection: %s %v after the reload", prefix, slow.end, rlCloseBound)
				}
				if slow.corrupt != "" {
					t.Errorf("%s: the slow client's stream is corrupted: %s", prefix, slow.corrupt)
				}
			}
		}
		slow.conn.Close()
		if !stock && tally.corrupt > 0 {
			t.Errorf("%s: %d tunnels corrupted by the reload: %v", prefix, tally.corrupt, tally.examples)
		}
		if !stock && tally.ends[rlEndOpen] > 0 {
			t.Errorf("%s: %d tunnels still open %v after the reload", prefix, tally.ends[rlEndOpen], rlCloseBound)
		}
	}
}
