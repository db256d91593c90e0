package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/seedf05e/caddy-upgrade/bench/tlscert"
)

// clientTLS is what every wss:// and https:// client of the run dials
// with: TLS 1.3, the run's certificate pinned, no session resumption. Nil
// when no mode is TLS.
var clientTLS *tls.Config

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
		TLSClientConfig:  clientTLS,
	}
}

// rawConn is the TCP connection under c, below TLS if any.
func rawConn(c *websocket.Conn) net.Conn {
	nc := c.NetConn()
	if tc, ok := nc.(*tls.Conn); ok {
		return tc.NetConn()
	}
	return nc
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
		// Below TLS: a TLS close would first try to send its close_notify
		// alert behind the blocked writer.
		rawConn(c).Close() // unblocks both loops
	}
	wg.Wait()
	return float64(b1-b0) / 1e6 / t1.Sub(t0).Seconds(), errs.err()
}

// latencyRun is what latency measured.
type latencyRun struct {
	rts []time.Duration // sorted round trips of the messages sent after the warm-up
	// echoed counts every message echoed, warm-up included, and cpuNanos
	// is the proxy's CPU time over the same span (cpuOK: it was read),
	// from the first send to the last echo: the connections' handshakes
	// are outside it.
	echoed   int64
	cpuNanos uint64
	cpuOK    bool
}

// latency: conns WebSockets together send rate 64-byte messages a second,
// each on a fixed schedule, one outstanding at a time; the latency of a
// message runs from its scheduled send time to its echo (so a late send
// counts). proxyCPU, if not nil, reads the proxy's CPU time.
func latency(url string, conns int, rate float64, warm, dur time.Duration, proxyCPU func() (uint64, bool)) (latencyRun, error) {
	var lr latencyRun
	d := wsDialer(1024)
	msg := make([]byte, 64)
	cs, err := openEchoes(d, url, conns, msg[:16])
	defer closeAll(cs)
	if err != nil {
		return lr, err
	}
	var cpu0 uint64
	if proxyCPU != nil {
		cpu0, lr.cpuOK = proxyCPU()
	}
	interval := time.Duration(float64(time.Second) / rate)
	period := interval * time.Duration(conns)
	begin := time.Now().Add(20 * time.Millisecond)
	measureFrom := begin.Add(warm)
	end := measureFrom.Add(dur)
	var mu sync.Mutex
	var samples []time.Duration
	var echoed atomic.Int64
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
				echoed.Add(1)
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
	if proxyCPU != nil {
		cpu1, ok := proxyCPU()
		// cpu1 < cpu0: a thread of the proxy exited, taking its time.
		lr.cpuOK = lr.cpuOK && ok && cpu1 >= cpu0
		lr.cpuNanos = cpu1 - cpu0
	}
	lr.echoed = echoed.Load()
	if len(samples) == 0 {
		return lr, errors.Join(errors.New("no latency samples"), errs.err())
	}
	slices.Sort(samples)
	lr.rts = samples
	return lr, errs.err()
}

// gets: conc workers send plain GETs over keep-alive connections. Returns
// requests per second.
func gets(url string, conc int, dur time.Duration) (float64, error) {
	tr := &http.Transport{
		DialContext:         dialTCP,
		TLSClientConfig:     clientTLS,
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

// idleStep is what idleRSS read at one step, per open tunnel.
type idleStep struct {
	rssKiB     float64
	goroutines float64 // NaN without a goroutine counter
}

// idleRSS opens idle tunnels (handshake plus one echo each) up to every
// step in turn and returns the growth of the proxy's RSS per open tunnel
// at each step, in KiB, and of its goroutines if goroutines is not nil,
// both measured from just before the first tunnel.
func idleRSS(url string, rss func() (int64, error), goroutines func() (int, error), steps []int, settle time.Duration) ([]idleStep, error) {
	d := wsDialer(512)
	msg := make([]byte, 16)
	var cs []*websocket.Conn
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	// Goroutines first: whatever reading them allocates is then in the
	// base RSS, not in the tunnels'.
	var g0 int
	if goroutines != nil {
		var err error
		if g0, err = goroutines(); err != nil {
			return nil, fmt.Errorf("goroutines: %v", err)
		}
	}
	base, err := rss()
	if err != nil {
		return nil, err
	}
	var out []idleStep
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
		step := idleStep{rssKiB: float64(now-base) / float64(n), goroutines: math.NaN()}
		if goroutines != nil {
			g, err := goroutines()
			if err != nil {
				return out, fmt.Errorf("goroutines: %v", err)
			}
			step.goroutines = float64(g-g0) / float64(n)
		}
		out = append(out, step)
	}
	return out, nil
}

// adminClient reads Caddy's admin API. No keep-alive: a pooled connection
// would hold a goroutine in Caddy between two readings.
var adminClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// caddyGoroutines reads go_goroutines from the /metrics of the Caddy
// whose admin API listens on adminAddr.
func caddyGoroutines(adminAddr string) (int, error) {
	res, err := adminClient.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, err
	}
	if res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET /metrics: %s", res.Status)
	}
	return gaugeValue(body, "go_goroutines")
}

// gaugeValue finds an unlabelled sample in a Prometheus text exposition.
func gaugeValue(exposition []byte, name string) (int, error) {
	for line := range strings.SplitSeq(string(exposition), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %q: %v", name, line, err)
			}
			return int(v), nil
		}
	}
	return 0, fmt.Errorf("no %s in the metrics", name)
}

// tlsParams makes one TLS connection to addr and names what it negotiated
// for the report; anything but TLS 1.3 fails.
func tlsParams(addr string) (string, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, clientTLS)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	cs := conn.ConnectionState()
	if cs.Version != tls.VersionTLS13 {
		return "", fmt.Errorf("negotiated %s, want TLS 1.3", tls.VersionName(cs.Version))
	}
	return tlscert.Describe(cs), nil
}

// statusOf sends one raw HTTP/1.1 request, over TLS if useTLS, and
// returns the response status.
func statusOf(addr string, useTLS bool, request string) (int, error) {
	var c net.Conn
	var err error
	d := &net.Dialer{Timeout: 2 * time.Second}
	if useTLS {
		c, err = tls.DialWithDialer(d, "tcp", addr, clientTLS)
	} else {
		c, err = d.Dial("tcp", addr)
	}
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
