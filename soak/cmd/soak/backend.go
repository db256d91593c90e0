package main

// Scenario 3: the backend dies under open tunnels and comes back.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// closeBound is how soon after the backend dies its tunnels must close for
// the clients: Caddy sees the backend's FIN or RST at once and passes the
// close on; the bound leaves room for a loaded 2-core machine.
const closeBound = 3 * time.Second

func runBackendKill(ctx context.Context, e *env, r *scenarioResult, limit int) error {
	site := siteConfig{Generation: e.site.Generation + 1, MaxConns: limit}
	if err := e.loadScenario(ctx, site); err != nil {
		return err
	}
	if err := checkExactLimit(ctx, e, r, limit, "before the kill"); err != nil {
		return err
	}

	// limit tunnels echoing every 500 ms when the backend dies.
	fail := &failures{}
	run := newEchoRun(e.wsURL(), 500*time.Millisecond, fail)
	var killed atomic.Bool
	run.closeOK = func(string) bool { return killed.Load() }
	clients, conns, err := run.open(ctx, limit, 1, 64)
	if err != nil {
		return fmt.Errorf("opening %d tunnels: %v", limit, err)
	}
	r.tunnels += int64(limit)
	r.concurrent = int64(limit)
	stop := make(chan struct{})
	wg := run.start(clients, conns, stop)
	time.Sleep(2 * time.Second)

	killed.Store(true)
	killedAt := time.Now()
	e.backend.Kill()
	r.note("backend killed (SIGKILL) under %d open tunnels", limit)
	slowest, open := waitClosed(clients, killedAt, closeBound+2*time.Second)
	close(stop)
	wg.Wait()
	r.messages += run.echoed.Load()
	r.note("clients saw their tunnels close within %v of the kill (bound %v): %s", round(slowest), closeBound, run.closes.String())
	if err := fail.err(); err != nil {
		return err
	}
	if open > 0 {
		return fmt.Errorf("%d of %d tunnels still open %v after the backend died", open, limit, closeBound+2*time.Second)
	}
	if slowest > closeBound {
		return fmt.Errorf("the slowest tunnel closed %v after the kill (bound %v)", round(slowest), closeBound)
	}

	if err := handshakesWhileDown(ctx, e, r); err != nil {
		return err
	}
	if err := waitGauge(ctx, e, 0, 5*time.Second); err != nil {
		return fmt.Errorf("backend down: %v", err)
	}
	t0 := time.Now()
	if err := e.startBackend(); err != nil {
		return fmt.Errorf("restarting the backend: %v", err)
	}
	r.note("backend restarted in %v", time.Since(t0).Round(10*time.Millisecond))
	return checkExactLimit(ctx, e, r, limit, "after the restart")
}

// waitClosed waits until every client saw its tunnel close, or until wait
// has passed; it returns the slowest close after since and how many are
// still open.
func waitClosed(clients []*echoClient, since time.Time, wait time.Duration) (slowest time.Duration, open int) {
	deadline := since.Add(wait)
	for {
		slowest, open = 0, 0
		for _, c := range clients {
			at := c.closedAt.Load()
			if at == 0 {
				open++
				continue
			}
			slowest = max(slowest, time.Unix(0, at).Sub(since))
		}
		if open == 0 || time.Now().After(deadline) {
			return slowest, open
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// handshakesWhileDown checks that new handshakes get 502 while the backend
// is down, in a concurrent burst and one by one.
func handshakesWhileDown(ctx context.Context, e *env, r *scenarioResult) error {
	const burst, serial = 50, 20
	statuses := &tally{}
	d := newDialer()
	var wg sync.WaitGroup
	for range burst {
		wg.Go(func() { statuses.add(handshakeStatus(ctx, d, e.wsURL())) })
	}
	wg.Wait()
	for range serial {
		statuses.add(handshakeStatus(ctx, d, e.wsURL()))
	}
	r.note("handshakes while the backend was down: %s", statuses.String())
	if n := statuses.get("502"); n != burst+serial {
		return fmt.Errorf("handshakes while the backend was down: %s; want %d x 502", statuses.String(), burst+serial)
	}
	return nil
}

// handshakeStatus opens and at once closes a WebSocket, and names the
// outcome: the status code, or the error.
func handshakeStatus(ctx context.Context, d *websocket.Dialer, url string) string {
	conn, err := dialWS(ctx, d, url)
	if err == nil {
		conn.Close()
		return "101"
	}
	var se *statusError
	if errors.As(err, &se) {
		return fmt.Sprint(se.status)
	}
	return "error: " + err.Error()
}

// checkExactLimit checks max_connections accounting: exactly limit tunnels
// open (each echoing), the next handshake gets 503 with Retry-After: 1, and
// once they close the gauge is back to 0.
func checkExactLimit(ctx context.Context, e *env, r *scenarioResult, limit int, when string) error {
	fail := &failures{}
	run := newEchoRun(e.wsURL(), time.Second, fail)
	_, conns, err := run.open(ctx, limit, 1, 64)
	if err != nil {
		return fmt.Errorf("%s: only part of max_connections %d could open: %v", when, limit, err)
	}
	r.tunnels += int64(limit)
	defer closeAll(conns)
	for i, conn := range conns {
		if err := echoOnce(conn, []byte("limit")); err != nil {
			return fmt.Errorf("%s: tunnel %d of %d: %v", when, i+1, limit, err)
		}
	}
	r.messages += int64(limit)
	conn, err := dialWS(ctx, run.dialer, e.wsURL())
	if err == nil {
		conn.Close()
		return fmt.Errorf("%s: tunnel %d opened past max_connections %d", when, limit+1, limit)
	}
	var se *statusError
	if !errors.As(err, &se) || se.status != http.StatusServiceUnavailable || se.header.Get("Retry-After") != "1" {
		return fmt.Errorf("%s: tunnel %d past max_connections got %v, want 503 with Retry-After: 1", when, limit+1, err)
	}
	closeAll(conns)
	if err := waitGauge(ctx, e, 0, 5*time.Second); err != nil {
		return fmt.Errorf("%s: %v", when, err)
	}
	r.note("%s: exactly %d tunnels opened and echoed, the next got 503", when, limit)
	return nil
}

// echoOnce sends msg and checks that it comes back.
func echoOnce(conn *websocket.Conn, msg []byte) error {
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := conn.WriteMessage(websocket.TextMessage, msg); err != nil {
		return err
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, got, err := conn.ReadMessage()
	if err != nil {
		return err
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	conn.SetReadDeadline(time.Time{})
	return nil
}

// closeAll closes connections with a close frame, then the socket; the
// second call of a pair finds them closed and does nothing harmful.
func closeAll(conns []*websocket.Conn) {
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
	for _, c := range conns {
		if c != nil {
			c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
			c.Close()
		}
	}
}

// waitGauge waits until the module's tunnels gauge reads want.
func waitGauge(ctx context.Context, e *env, want float64, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		got, err := e.tunnelsOpen(ctx)
		if err == nil && got == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tunnels gauge %v after %v, want %v (%v)", got, wait, want, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
