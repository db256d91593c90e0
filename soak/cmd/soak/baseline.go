package main

// Scenario 5: Caddy's file descriptors and goroutines return to the
// baseline after every scenario, and the sampler behind the peak figures.

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/seedf05e/caddy-upgrade/bench/proc"
)

// Slack over the baseline once a scenario has settled. Caddy keeps a few
// things that come and go on their own: an idle keep-alive connection to
// the backend from the warm-up GETs may be open or not (1 fd, 2
// goroutines), and a reload replaces the config's own goroutines (admin
// server, app timers) by as many new ones. Anything left behind per
// tunnel would exceed this after the first scenario: every scenario opens
// hundreds.
const (
	fdSlack        = 8
	goroutineSlack = 20
)

type usage struct {
	fds, goroutines int
	tunnels         float64 // the module's gauge
}

// measure reads Caddy's fds (/proc), goroutines (pprof) and tunnels gauge.
func (e *env) measure(ctx context.Context) (usage, error) {
	var u usage
	var err error
	if u.goroutines, err = e.goroutines(ctx); err != nil {
		return u, fmt.Errorf("goroutines: %v", err)
	}
	// After the admin request: its connection is closed by then (no
	// keep-alive), so it does not count.
	if u.fds, err = openFDs(e.caddy.PID()); err != nil {
		return u, fmt.Errorf("fds: %v", err)
	}
	if u.tunnels, err = e.tunnelsOpen(ctx); err != nil {
		return u, fmt.Errorf("tunnels gauge: %v", err)
	}
	return u, nil
}

// settle waits up to wait for Caddy to be back within slack of base with
// no tunnel open, and fails with the last reading otherwise.
func (e *env) settle(ctx context.Context, base usage, wait time.Duration) (usage, error) {
	deadline := time.Now().Add(wait)
	for {
		u, err := e.measure(ctx)
		if err == nil && u.fds <= base.fds+fdSlack && u.goroutines <= base.goroutines+goroutineSlack && u.tunnels == 0 {
			return u, nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return u, fmt.Errorf("baseline: %v", err)
			}
			return u, fmt.Errorf("not back to baseline after %v: %d fds (baseline %d), %d goroutines (baseline %d), tunnels gauge %v",
				wait, u.fds, base.fds, u.goroutines, base.goroutines, u.tunnels)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// warmUp opens a few tunnels and plain requests, so that the baseline
// includes what Caddy creates lazily on first use (pools, the metrics
// vectors) rather than count it as a leak of the first scenario.
func warmUp(ctx context.Context, e *env) error {
	d := newDialer()
	for range 5 {
		conn, err := dialWS(ctx, d, e.wsURL())
		if err != nil {
			return err
		}
		if err := conn.WriteMessage(websocket.TextMessage, []byte("warm-up")); err != nil {
			return err
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := conn.ReadMessage(); err != nil {
			return err
		}
		conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		conn.ReadMessage() // the close frame back
		conn.Close()
		if _, err := e.getText(ctx, "/"); err != nil {
			return err
		}
	}
	_, err := e.settle(ctx, usage{fds: 1 << 30, goroutines: 1 << 30}, 5*time.Second) // tunnels gauge back to 0
	return err
}

// sampler reads Caddy's resident memory and goroutine count every two
// seconds, for the peak figures of each scenario and of the whole run.
// (The run's peak memory comes from VmHWM, which the kernel keeps exact.)
type sampler struct {
	e    *env
	done chan struct{}
	wg   sync.WaitGroup

	mu                   sync.Mutex
	rssKiB, goroutines   int64
	allTimeGoroutinePeak int64
}

func startSampler(e *env) *sampler {
	s := &sampler{e: e, done: make(chan struct{})}
	s.wg.Go(s.loop)
	return s
}

func (s *sampler) loop() {
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		rss, _ := proc.StatusKiB(s.e.caddy.PID(), "VmRSS")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		// go_goroutines, not the goroutine profile: with tens of thousands
		// of goroutines the profile stops Caddy's world for a while, which
		// the echo latencies would show.
		g, _ := s.e.metricSum(ctx, "go_goroutines")
		cancel()
		s.mu.Lock()
		s.rssKiB = max(s.rssKiB, rss)
		s.goroutines = max(s.goroutines, int64(g))
		s.allTimeGoroutinePeak = max(s.allTimeGoroutinePeak, int64(g))
		s.mu.Unlock()
	}
}

// reset starts a new scenario's peaks.
func (s *sampler) reset() {
	s.mu.Lock()
	s.rssKiB, s.goroutines = 0, 0
	s.mu.Unlock()
}

func (s *sampler) peaks() (rssKiB, goroutines int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rssKiB, s.goroutines
}

func (s *sampler) allTimePeakGoroutines() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.allTimeGoroutinePeak
}

func (s *sampler) stop() {
	close(s.done)
	s.wg.Wait()
}
