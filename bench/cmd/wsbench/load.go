package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Client connections take their source address in turn from 127.0.0.1 to
// 127.0.0.<srcIPs>, so that many short connections to one proxy port do not
// run out of ephemeral ports.
var (
	srcIPs  = 8
	srcNext atomic.Uint32
)

func dialTCP(ctx context.Context, network, addr string) (net.Conn, error) {
	n := srcNext.Add(1) % uint32(srcIPs)
	d := net.Dialer{
		Timeout:   5 * time.Second,
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(1+n))},
	}
	return d.DialContext(ctx, network, addr)
}

func wsDialer(bufSize int) *websocket.Dialer {
	return &websocket.Dialer{
		NetDialContext:   dialTCP,
		HandshakeTimeout: 5 * time.Second,
		ReadBufferSize:   bufSize,
		WriteBufferSize:  bufSize,
	}
}

// openEcho opens a WebSocket and checks one 16-byte echo.
func openEcho(d *websocket.Dialer, url string, msg []byte) (*websocket.Conn, error) {
	c, res, err := d.Dial(url, nil)
	if err != nil {
		if res != nil {
			return nil, fmt.Errorf("%v (HTTP %d)", err, res.StatusCode)
		}
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
		c.Close()
		return nil, err
	}
	_, got, err := c.ReadMessage()
	if err != nil {
		c.Close()
		return nil, err
	}
	if len(got) != len(msg) {
		c.Close()
		return nil, fmt.Errorf("echo of %d bytes, want %d", len(got), len(msg))
	}
	c.SetReadDeadline(time.Time{})
	return c, nil
}

// errCounter keeps the number of errors and the first one.
type errCounter struct {
	n     atomic.Int64
	mu    sync.Mutex
	first error
}

func (e *errCounter) add(err error) {
	if e.n.Add(1) == 1 {
		e.mu.Lock()
		e.first = err
		e.mu.Unlock()
	}
}

// warnings collects tolerated errors for the report.
var (
	warningsMu sync.Mutex
	warnings   []string
)

func warnf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	log.Print("warning: " + msg)
	warningsMu.Lock()
	warnings = append(warnings, msg)
	warningsMu.Unlock()
}

// errBeyond fails only when errors exceed frac of the successful
// operations: a loaded machine drops the odd connection; a broken target
// fails them all. Tolerated errors become warnings.
func (e *errCounter) errBeyond(what string, ok int64, frac float64) error {
	n := e.n.Load()
	if n == 0 {
		return nil
	}
	if float64(n) > frac*float64(ok) {
		return e.err()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	warnf("%s: %d errors tolerated over %d operations, first: %v", what, n, ok, e.first)
	return nil
}

func (e *errCounter) err() error {
	if n := e.n.Load(); n > 0 {
		e.mu.Lock()
		defer e.mu.Unlock()
		return fmt.Errorf("%d errors, first: %v", n, e.first)
	}
	return nil
}

// handshakes: each of conc workers opens a WebSocket, echoes 16 bytes,
// closes it with a close handshake, and starts over. Returns completed
// cycles per second (those completed within dur), and the number of cycles
// completed in all (with those that finish after dur, which the proxy also
// served: the denominator of its CPU time over the whole run).
func handshakes(url string, conc int, dur time.Duration) (perSec float64, total int64, err error) {
	d := wsDialer(1024)
	msg := make([]byte, 16)
	closeMsg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	var done, all atomic.Int64
	var errs errCounter
	start := time.Now()
	end := start.Add(dur)
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			for time.Now().Before(end) {
				c, err := openEcho(d, url, msg)
				if err != nil {
					errs.add(err)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				c.WriteControl(websocket.CloseMessage, closeMsg, time.Now().Add(5*time.Second))
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, _, err = c.ReadMessage()
				c.Close()
				if !websocket.IsCloseError(err, websocket.CloseNormalClosure) {
					errs.add(fmt.Errorf("close handshake: %v", err))
					continue
				}
				all.Add(1)
				if time.Now().Before(end) {
					done.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return float64(done.Load()) / dur.Seconds(), all.Load(), errs.errBeyond("handshakes "+url, done.Load(), 0.01)
}

// throughput: conns WebSockets each send msgSize binary messages as fast
// as they go while reading the echoes. Returns echoed MB/s (10^6 bytes,
// counted once, as received back by the client) after a warm-up.
func throughput(url string, conns, msgSize int, warm, dur time.Duration) (float64, error) {
	d := wsDialer(msgSize + 64)
	msg := make([]byte, msgSize)
	cs, err := openEchoes(d, url, conns, msg[:16])
	defer closeAll(cs)
	if err != nil {
		return 0, err
	}
	var received atomic.Int64
	var stop atomic.Bool
	var errs errCounter
	var wg sync.WaitGroup
	for _, c := range cs {
		wg.Go(func() {
			for !stop.Load() {
				if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
					if !stop.Load() {
						errs.add(err)
					}
					return
				}
			}
		})
		wg.Go(func() {
			buf := make([]byte, 64<<10)
			for {
				_, r, err := c.NextReader()
				if err != nil {
					if !stop.Load() {
						errs.add(err)
					}
					return
				}
				n, err := io.CopyBuffer(io.Discard, r, buf)
				received.Add(n)
				if err != nil {
					if !stop.Load() {
						errs.add(err)
					}
					return
				}
			}
		})
	}
	time.Sleep(warm)
	b0, t0 := received.Load(), time.Now()
	time.Sleep(dur)
	b1, t1 := received.Load(), time.Now()
	stop.Store(true)
	for _, c := range cs {
		c.UnderlyingConn().Close() // unblocks both loops
	}
	wg.Wait()
	return float64(b1-b0) / 1e6 / t1.Sub(t0).Seconds(), errs.err()
}

// latency: conns WebSockets together send rate 64-byte messages a second,
// each on a fixed schedule, one outstanding at a time; the latency of a
// message runs from its scheduled send time to its echo (so a late send
// counts). Returns the sorted round trips of the messages sent after the
// warm-up.
func latency(url string, conns int, rate float64, warm, dur time.Duration) ([]time.Duration, error) {
	d := wsDialer(1024)
	msg := make([]byte, 64)
	cs, err := openEchoes(d, url, conns, msg[:16])
	defer closeAll(cs)
	if err != nil {
		return nil, err
	}
	interval := time.Duration(float64(time.Second) / rate)
	period := interval * time.Duration(conns)
	begin := time.Now().Add(20 * time.Millisecond)
	measureFrom := begin.Add(warm)
	end := measureFrom.Add(dur)
	var mu sync.Mutex
	var samples []time.Duration
	var errs errCounter
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			var local []time.Duration
			for k := 0; ; k++ {
				at := begin.Add(time.Duration(i)*interval + time.Duration(k)*period)
				if !at.Before(end) {
					break
				}
				time.Sleep(time.Until(at))
				c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
					errs.add(err)
					return
				}
				if _, _, err := c.ReadMessage(); err != nil {
					errs.add(err)
					return
				}
				if !at.Before(measureFrom) {
					local = append(local, time.Since(at))
				}
			}
			mu.Lock()
			samples = append(samples, local...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(samples) == 0 {
		return nil, errors.Join(errors.New("no latency samples"), errs.err())
	}
	slices.Sort(samples)
	return samples, errs.err()
}

// gets: conc workers send plain GETs over keep-alive connections. Returns
// requests per second.
func gets(url string, conc int, dur time.Duration) (float64, error) {
	tr := &http.Transport{
		DialContext:         dialTCP,
		MaxIdleConns:        conc * 2,
		MaxIdleConnsPerHost: conc * 2,
		DisableCompression:  true,
		IdleConnTimeout:     30 * time.Second,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	var done atomic.Int64
	var errs errCounter
	end := time.Now().Add(dur)
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			buf := make([]byte, 4096)
			for time.Now().Before(end) {
				res, err := client.Get(url)
				if err != nil {
					errs.add(err)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				_, err = io.CopyBuffer(io.Discard, res.Body, buf)
				res.Body.Close()
				if err != nil || res.StatusCode != http.StatusOK {
					errs.add(fmt.Errorf("status %d, %v", res.StatusCode, err))
					continue
				}
				if time.Now().Before(end) {
					done.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return float64(done.Load()) / dur.Seconds(), errs.errBeyond("GETs "+url, done.Load(), 0.01)
}

// idleRSS opens idle tunnels (handshake plus one echo each) up to every
// step in turn and returns the growth of the proxy's RSS per open tunnel
// at each step, in KiB, measured from just before the first tunnel.
func idleRSS(url string, rss func() (int64, error), steps []int, settle time.Duration) ([]float64, error) {
	d := wsDialer(512)
	msg := make([]byte, 16)
	var cs []*websocket.Conn
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	base, err := rss()
	if err != nil {
		return nil, err
	}
	var out []float64
	for _, n := range steps {
		need := n - len(cs)
		var mu sync.Mutex
		var errs errCounter
		var next atomic.Int64
		var wg sync.WaitGroup
		for range 32 {
			wg.Go(func() {
				for next.Add(1) <= int64(need) {
					// A loaded machine may drop the odd dial: retry twice.
					for try := 1; ; try++ {
						c, err := openEcho(d, url, msg)
						if err == nil {
							mu.Lock()
							cs = append(cs, c)
							mu.Unlock()
							break
						}
						errs.add(err)
						if try == 3 {
							return
						}
						time.Sleep(100 * time.Millisecond)
					}
				}
			})
		}
		wg.Wait()
		if len(cs) < n {
			return out, fmt.Errorf("opened %d of %d tunnels: %v", len(cs), n, errs.err())
		}
		if err := errs.errBeyond("opening idle tunnels "+url, int64(len(cs)), 1); err != nil {
			return out, err
		}
		time.Sleep(settle)
		now, err := rss()
		if err != nil {
			return out, err
		}
		out = append(out, float64(now-base)/float64(n))
	}
	return out, nil
}

// statusOf sends one raw HTTP/1.1 request and returns the response status.
func statusOf(addr, request string) (int, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, request); err != nil {
		return 0, err
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	res.Body.Close()
	return res.StatusCode, nil
}

// openEchoes opens n WebSockets with openEcho; on an error it returns the
// ones already open, for the caller to close.
func openEchoes(d *websocket.Dialer, url string, n int, first []byte) ([]*websocket.Conn, error) {
	cs := make([]*websocket.Conn, 0, n)
	for range n {
		c, err := openEcho(d, url, first)
		if err != nil {
			return cs, err
		}
		cs = append(cs, c)
	}
	return cs, nil
}

func closeAll(cs []*websocket.Conn) {
	for _, c := range cs {
		c.Close()
	}
}
