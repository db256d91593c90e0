package upgrade

// Unit tests of tunnel.go: the max_connections counter under concurrency,
// and one tunnel's timers, close and accounting over net.Pipe and TCP
// connections, without Caddy.

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/seedf05e/caddy-upgrade/internal/protocol"
)

// TestTunnelUnitLimitConcurrent hammers acquire/release from many
// goroutines: the count never exceeds max and is exactly 0 afterwards.
func TestTunnelUnitLimitConcurrent(t *testing.T) {
	const max, workers, rounds = 8, 32, 400
	l := newTunnelLimit(max)
	var inUse, peak, acquired, refused atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				if !l.acquire() {
					refused.Add(1)
					runtime.Gosched()
					continue
				}
				acquired.Add(1)
				n := inUse.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				if n > max {
					t.Errorf("%d slots held at once, max %d", n, max)
				}
				if o := l.open.Load(); o > max || o < 1 {
					t.Errorf("open count %d while a slot is held (max %d)", o, max)
				}
				runtime.Gosched()
				inUse.Add(-1)
				l.release()
			}
		}()
	}
	wg.Wait()
	if got := l.open.Load(); got != 0 {
		t.Fatalf("open count after every release: %d, want 0", got)
	}
	if acquired.Load()+refused.Load() != workers*rounds {
		t.Fatalf("acquired %d + refused %d != %d attempts", acquired.Load(), refused.Load(), workers*rounds)
	}
	if peak.Load() > max {
		t.Fatalf("peak %d > max %d", peak.Load(), max)
	}
	t.Logf("acquired %d, refused %d, peak %d", acquired.Load(), refused.Load(), peak.Load())
}

// TestTunnelUnitLimitExactHold: 100 goroutines race for 10 slots and hold
// them: exactly 10 win; releasing them all gives back exactly 10 slots.
func TestTunnelUnitLimitExactHold(t *testing.T) {
	for _, max := range []int{1, 10} {
		l := newTunnelLimit(max)
		var won atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range 100 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if l.acquire() {
					won.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		if won.Load() != int64(max) || l.open.Load() != int64(max) {
			t.Fatalf("max %d: %d acquired, open %d; want exactly %d", max, won.Load(), l.open.Load(), max)
		}
		if l.acquire() {
			t.Fatalf("max %d: acquire succeeded on a full limit", max)
		}
		var rel sync.WaitGroup
		for range max {
			rel.Add(1)
			go func() { defer rel.Done(); l.release() }()
		}
		rel.Wait()
		if got := l.open.Load(); got != 0 {
			t.Fatalf("max %d: open %d after releasing all, want 0", max, got)
		}
		for i := range max {
			if !l.acquire() {
				t.Fatalf("max %d: acquire %d failed after all slots were freed", max, i+1)
			}
		}
		if l.acquire() {
			t.Fatalf("max %d: more than max slots after a full release cycle", max)
		}
	}
}

// TestTunnelUnitLimitUnlimited: max 0 never refuses.
func TestTunnelUnitLimitUnlimited(t *testing.T) {
	l := newTunnelLimit(0)
	var wg sync.WaitGroup
	var refused atomic.Int64
	for range 1000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !l.acquire() {
				refused.Add(1)
			}
		}()
	}
	wg.Wait()
	if refused.Load() != 0 || l.open.Load() != 1000 {
		t.Fatalf("unlimited: refused %d, open %d; want 0 and 1000", refused.Load(), l.open.Load())
	}
	for range 1000 {
		l.release()
	}
	if l.open.Load() != 0 {
		t.Fatalf("unlimited: open %d after releases", l.open.Load())
	}
}

// ---------------------------------------------------------------------------
// One tunnel

// closeCountingConn counts Close calls on the connection underneath a
// tunnelConn.
type closeCountingConn struct {
	net.Conn
	closes atomic.Int32
}

func (c *closeCountingConn) Close() error {
	c.closes.Add(1)
	return c.Conn.Close()
}

// unitTunnel is a tunnel as Handler.pass builds it, with a counted cancel.
type unitTunnel struct {
	*tunnel
	ctx     context.Context
	cancels atomic.Int32
}

// newUnitTunnel reserves a slot of l and builds a tunnel labelled "other"
// (a label the handler really uses, so that the process-global metrics
// keep a bounded label set).
func newUnitTunnel(t *testing.T, l *tunnelLimit, idle, maxLife time.Duration) *unitTunnel {
	t.Helper()
	if err := registerMetrics(nil); err != nil {
		t.Fatal(err)
	}
	if !l.acquire() {
		t.Fatalf("no slot free for a new unit tunnel")
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	u := &unitTunnel{ctx: ctx}
	u.tunnel = &tunnel{limit: l, cancel: func() { u.cancels.Add(1); cancel() }, label: protocol.LabelOther, idle: idle, maxLife: maxLife}
	return u
}

// tunnelMetricsSnapshot reads the process-global tunnel metrics for one
// label; tests compare snapshots, since other tests move them too.
type tunnelMetricsSnapshot struct {
	open, durations, upstream, downstream float64
}

func readTunnelMetrics(t *testing.T, label string) tunnelMetricsSnapshot {
	t.Helper()
	if err := registerMetrics(nil); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(upgradeMetrics.open, upgradeMetrics.duration, upgradeMetrics.bytes)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var s tunnelMetricsSnapshot
	for _, mf := range families {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if labels["protocol"] != label {
				continue
			}
			switch mf.GetName() {
			case "caddy_upgrade_tunnels_open":
				s.open = m.GetGauge().GetValue()
			case "caddy_upgrade_tunnel_duration_seconds":
				s.durations = float64(m.GetHistogram().GetSampleCount())
			case "caddy_upgrade_tunnel_bytes_total":
				switch labels["direction"] {
				case "upstream":
					s.upstream = m.GetCounter().GetValue()
				case "downstream":
					s.downstream = m.GetCounter().GetValue()
				}
			}
		}
	}
	return s
}

func tunnelWaitDone(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return true
	case <-time.After(d):
		return false
	}
}

// tunnelPipePair is a hijacked-connection stand-in: the tunnel's side (counted)
// and the peer's side, whose reader drains what the tunnel writes.
func tunnelPipePair(t *testing.T) (tunnelSide *closeCountingConn, peer net.Conn) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return &closeCountingConn{Conn: a}, b
}

// TestTunnelUnitIdleTimeout: a quiet tunnel is ended by its idle timer:
// the context is canceled, the hijacked connection closed exactly once, and
// the slot and open gauge released exactly once even when Caddy closes the
// connection again afterwards.
func TestTunnelUnitIdleTimeout(t *testing.T) {
	l := newTunnelLimit(1)
	before := readTunnelMetrics(t, protocol.LabelOther)
	u := newUnitTunnel(t, l, 60*time.Millisecond, 0)
	cc, peer := tunnelPipePair(t)
	started := time.Now()
	u.start()
	tc := u.hijacked(cc)
	if got := readTunnelMetrics(t, protocol.LabelOther).open - before.open; got != 1 {
		t.Fatalf("open gauge delta %v after start, want 1", got)
	}
	if !tunnelWaitDone(u.ctx, 3*time.Second) {
		t.Fatalf("idle tunnel's context not canceled 3s after start (idle 60ms)")
	}
	if el := time.Since(started); el < 50*time.Millisecond {
		t.Errorf("idle tunnel ended after %v, before its 60ms idle timeout", el)
	}
	// The peer sees the close.
	peer.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("peer read after idle end: %v, want EOF", err)
	}
	if !pollUntil(time.Second, func() bool { return l.open.Load() == 0 }) {
		t.Fatalf("slot not released after idle end: open %d", l.open.Load())
	}
	if n := cc.closes.Load(); n != 1 {
		t.Errorf("end() closed the hijacked connection %d times, want exactly 1", n)
	}
	// Caddy's copier closes its (wrapped) connection again when the copies
	// end; that must not release or count again.
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); tc.Close() }()
	}
	wg.Wait()
	u.finish()
	if got := l.open.Load(); got != 0 {
		t.Fatalf("open count %d after repeated closes, want 0 (a second release would make it negative)", got)
	}
	after := readTunnelMetrics(t, protocol.LabelOther)
	if d := after.open - before.open; d != 0 {
		t.Errorf("open gauge delta %v after close, want 0", d)
	}
	if d := after.durations - before.durations; d != 1 {
		t.Errorf("duration observations delta %v, want exactly 1", d)
	}
}

// TestTunnelUnitIdleResetByTraffic: bytes either way keep an idle timer at
// bay; once they stop, the timer ends the tunnel.
func TestTunnelUnitIdleResetByTraffic(t *testing.T) {
	l := newTunnelLimit(0)
	u := newUnitTunnel(t, l, 100*time.Millisecond, 0)
	cc, peer := tunnelPipePair(t)
	u.start()
	tc := u.hijacked(cc)
	go io.Copy(io.Discard, peer)
	busyUntil := time.Now().Add(450 * time.Millisecond)
	var lastByte time.Time
	for i := 0; time.Now().Before(busyUntil); i++ {
		if i%2 == 0 {
			if _, err := tc.Write([]byte("x")); err != nil {
				t.Fatalf("write on a busy tunnel: %v", err)
			}
		} else {
			u.carried(1, true) // as a Read through tunnelConn would
		}
		lastByte = time.Now()
		if u.ctx.Err() != nil {
			t.Fatalf("busy tunnel ended by its idle timeout after %d ticks", i)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !tunnelWaitDone(u.ctx, 3*time.Second) {
		t.Fatalf("tunnel still open 3s after traffic stopped (idle 100ms)")
	}
	if el := time.Since(lastByte); el < 95*time.Millisecond {
		t.Errorf("tunnel ended %v after the last byte, before the 100ms idle timeout", el)
	}
	if !pollUntil(time.Second, func() bool { return l.open.Load() == 0 }) {
		t.Fatalf("slot not released: open %d", l.open.Load())
	}
}

// TestTunnelUnitMaxDuration: max_duration ends a busy tunnel.
func TestTunnelUnitMaxDuration(t *testing.T) {
	l := newTunnelLimit(2)
	u := newUnitTunnel(t, l, 0, 150*time.Millisecond)
	cc, peer := tunnelPipePair(t)
	started := time.Now()
	u.start()
	tc := u.hijacked(cc)
	go io.Copy(io.Discard, peer)
	for u.ctx.Err() == nil && time.Since(started) < 3*time.Second {
		tc.Write([]byte("busy"))
		time.Sleep(10 * time.Millisecond)
	}
	el := time.Since(started)
	if u.ctx.Err() == nil {
		t.Fatalf("busy tunnel still open after 3s (max_duration 150ms)")
	}
	if el < 140*time.Millisecond {
		t.Errorf("tunnel ended after %v, before max_duration 150ms", el)
	}
	if !pollUntil(time.Second, func() bool { return l.open.Load() == 0 }) {
		t.Fatalf("slot not released: open %d", l.open.Load())
	}
	if n := cc.closes.Load(); n != 1 {
		t.Errorf("max_duration closed the hijacked connection %d times, want 1", n)
	}
}

// TestTunnelUnitConcurrentClose: end(), finish() and Close() from many
// goroutines at once release the slot, the gauge and the duration exactly
// once, and cancel the context.
func TestTunnelUnitConcurrentClose(t *testing.T) {
	for round := range 20 {
		l := newTunnelLimit(1)
		before := readTunnelMetrics(t, protocol.LabelOther)
		u := newUnitTunnel(t, l, time.Millisecond, 2*time.Millisecond)
		cc, _ := tunnelPipePair(t)
		u.start()
		tc := u.hijacked(cc)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range 24 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				switch i % 3 {
				case 0:
					tc.Close()
				case 1:
					u.end()
				case 2:
					u.finish()
				}
			}()
		}
		close(start)
		wg.Wait()
		if u.ctx.Err() == nil {
			t.Fatalf("round %d: context not canceled", round)
		}
		// The timers may still fire once after the closes: give them time.
		time.Sleep(10 * time.Millisecond)
		if got := l.open.Load(); got != 0 {
			t.Fatalf("round %d: open count %d, want exactly 0", round, got)
		}
		if !l.acquire() || l.acquire() {
			t.Fatalf("round %d: the limit of 1 does not hold exactly one slot after the closes", round)
		}
		after := readTunnelMetrics(t, protocol.LabelOther)
		if d := after.open - before.open; d != 0 {
			t.Fatalf("round %d: open gauge delta %v, want 0", round, d)
		}
		if d := after.durations - before.durations; d != 1 {
			t.Fatalf("round %d: %v duration observations, want exactly 1", round, d)
		}
	}
}

// TestTunnelUnitFinishWithoutSwitch: a request that ends without a tunnel
// frees its slot at finish, once, and never touches the tunnel metrics.
func TestTunnelUnitFinishWithoutSwitch(t *testing.T) {
	l := newTunnelLimit(1)
	before := readTunnelMetrics(t, protocol.LabelOther)
	u := newUnitTunnel(t, l, 0, 0)
	u.finish()
	u.finish()
	if got := l.open.Load(); got != 0 {
		t.Fatalf("open %d after finish without switch, want 0", got)
	}
	if u.ctx.Err() == nil {
		t.Errorf("finish without switch left the request context alive")
	}
	if after := readTunnelMetrics(t, protocol.LabelOther); after != before {
		t.Errorf("tunnel metrics moved for a request that never switched: %+v -> %+v", before, after)
	}
}

// TestTunnelUnitFinishKeepsHijackedTunnel: once hijacked, the tunnel
// outlives ServeHTTP and ends with its connection.
func TestTunnelUnitFinishKeepsHijackedTunnel(t *testing.T) {
	l := newTunnelLimit(1)
	u := newUnitTunnel(t, l, 0, 0)
	cc, _ := tunnelPipePair(t)
	u.start()
	tc := u.hijacked(cc)
	u.finish()
	if got := l.open.Load(); got != 1 {
		t.Fatalf("open %d after finish of a hijacked tunnel, want 1", got)
	}
	if u.ctx.Err() != nil {
		t.Fatalf("finish canceled a hijacked tunnel's context")
	}
	tc.Close()
	if got := l.open.Load(); got != 0 {
		t.Fatalf("open %d after the hijacked connection closed, want 0", got)
	}
}

// TestTunnelUnitTimersStopOnClose: after the tunnel closed, its timers do
// not fire (no late end(), no late cancel).
func TestTunnelUnitTimersStopOnClose(t *testing.T) {
	l := newTunnelLimit(1)
	u := newUnitTunnel(t, l, 40*time.Millisecond, 80*time.Millisecond)
	u.start()
	u.finish() // no hijack: closes now
	cancels := u.cancels.Load()
	time.Sleep(250 * time.Millisecond)
	if got := u.cancels.Load(); got != cancels {
		t.Errorf("timers fired after close: cancel called %d more times", got-cancels)
	}
	if l.open.Load() != 0 {
		t.Errorf("open %d, want 0", l.open.Load())
	}
}

// TestTunnelUnitByteAccounting: bytes read through tunnelConn are upstream
// (client to backend), bytes written downstream.
func TestTunnelUnitByteAccounting(t *testing.T) {
	l := newTunnelLimit(0)
	before := readTunnelMetrics(t, protocol.LabelOther)
	u := newUnitTunnel(t, l, 0, 0)
	cc, peer := tunnelPipePair(t)
	u.start()
	tc := u.hijacked(cc)
	go func() {
		peer.Write([]byte("1234567")) // 7 bytes upstream
		io.Copy(io.Discard, peer)
	}()
	buf := make([]byte, 7)
	if _, err := io.ReadFull(tc, buf); err != nil {
		t.Fatal(err)
	}
	if _, err := tc.Write([]byte("0123456789")); err != nil { // 10 downstream
		t.Fatal(err)
	}
	after := readTunnelMetrics(t, protocol.LabelOther)
	if d := after.upstream - before.upstream; d != 7 {
		t.Errorf("upstream bytes delta %v, want 7", d)
	}
	if d := after.downstream - before.downstream; d != 10 {
		t.Errorf("downstream bytes delta %v, want 10", d)
	}
	tc.Close()
}

// TestTunnelUnitCloseWrite: tunnelConn forwards CloseWrite (half-close)
// to a TCP connection, and reports ErrUnsupported on one without it.
func TestTunnelUnitCloseWrite(t *testing.T) {
	t.Run("pipe", func(t *testing.T) {
		l := newTunnelLimit(0)
		u := newUnitTunnel(t, l, 0, 0)
		cc, _ := tunnelPipePair(t)
		u.start()
		tc := u.hijacked(cc)
		defer tc.Close()
		cw, ok := tc.(interface{ CloseWrite() error })
		if !ok {
			t.Fatalf("tunnelConn has no CloseWrite")
		}
		if err := cw.CloseWrite(); !errors.Is(err, errors.ErrUnsupported) {
			t.Fatalf("CloseWrite on a pipe: %v, want ErrUnsupported", err)
		}
	})
	t.Run("tcp", func(t *testing.T) {
		client, server := tcpPair(t)

		l := newTunnelLimit(1)
		u := newUnitTunnel(t, l, 0, 0)
		u.start()
		tc := u.hijacked(server)
		if _, err := tc.Write([]byte("last words")); err != nil {
			t.Fatal(err)
		}
		if err := tc.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatalf("CloseWrite on TCP: %v", err)
		}
		client.SetReadDeadline(time.Now().Add(2 * time.Second))
		got, err := io.ReadAll(client)
		if err != nil || string(got) != "last words" {
			t.Fatalf("client read %q, %v; want \"last words\" then EOF", got, err)
		}
		// The other half still works.
		if _, err := client.Write([]byte("reply")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		tc.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadFull(tc, buf); err != nil || string(buf) != "reply" {
			t.Fatalf("read after CloseWrite: %q, %v", buf, err)
		}
		if l.open.Load() != 1 {
			t.Fatalf("half-close released the slot: open %d", l.open.Load())
		}
		tc.Close()
		if l.open.Load() != 0 {
			t.Fatalf("open %d after close", l.open.Load())
		}
	})
}

// tcpPair is a connected pair of TCP sockets on loopback.
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b = <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}
