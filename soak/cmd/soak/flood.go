package main

// Scenario 6: twice max_connections clients churn on one route; the limit
// must hold at every instant.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// gaugeEvery is how often the tunnels gauge is read during the flood.
const (
	gaugeEvery  = 50 * time.Millisecond
	maxSampling = 16
)

func runFlood(ctx context.Context, e *env, r *scenarioResult, limit int, dur time.Duration) error {
	site := siteConfig{Generation: e.site.Generation + 1, MaxConns: limit}
	if err := e.loadScenario(ctx, site); err != nil {
		return err
	}
	fail := &failures{}
	f := &flood{e: e, limit: limit, fail: fail}
	stopSampling := make(chan struct{})
	var sampling sync.WaitGroup
	sampling.Go(func() { f.sample(ctx, stopSampling) })

	until := time.Now().Add(dur)
	var workers sync.WaitGroup
	for range 2 * limit {
		workers.Go(func() { f.worker(ctx, until) })
	}
	workers.Wait()
	close(stopSampling)
	sampling.Wait()

	r.tunnels += int64(f.statuses.get("101"))
	r.concurrent = f.clientPeak.get()
	r.messages += int64(f.statuses.get("101"))
	r.note("%d clients for max_connections %d over %v: handshakes %s", 2*limit, limit, dur, f.statuses.String())
	r.note("tunnels gauge sampled %d times (every %v, %d ticks skipped): peak %d; clients' own count of open tunnels: peak %d",
		f.samples.Load(), gaugeEvery, f.skipped.Load(), f.gaugePeak.get(), f.clientPeak.get())
	if err := fail.err(); err != nil {
		return err
	}
	if f.gaugePeak.get() > int64(limit) || f.clientPeak.get() > int64(limit) {
		return fmt.Errorf("max_connections %d exceeded: gauge peak %d, clients' peak %d", limit, f.gaugePeak.get(), f.clientPeak.get())
	}
	// A flood that never reached the limit proved nothing about it.
	if f.clientPeak.get() < int64(limit)*9/10 || f.statuses.get("503") == 0 {
		return fmt.Errorf("the flood did not reach max_connections %d (peak %d, %d refusals)", limit, f.clientPeak.get(), f.statuses.get("503"))
	}
	if f.samples.Load() < int64(dur/gaugeEvery)*9/10 {
		return fmt.Errorf("the gauge was sampled only %d times in %v", f.samples.Load(), dur)
	}
	if err := waitGauge(ctx, e, 0, 5*time.Second); err != nil {
		return fmt.Errorf("after the flood: %v", err)
	}
	return checkExactLimit(ctx, e, r, limit, "after the flood")
}

type flood struct {
	e     *env
	limit int
	fail  *failures

	statuses   tally
	open       atomic.Int64
	clientPeak peak
	gaugePeak  peak
	samples    atomic.Int64
	skipped    atomic.Int64 // ticks with maxSampling reads still in flight
}

// worker opens a tunnel, echoes once, holds it a little and closes it,
// and again; on 503 it waits 100-400 ms, less than Retry-After asks, to
// keep the pressure on.
//
// Its count of open tunnels goes up after the 101 and down before the
// close, so it can only be below Caddy's own: a peak over the limit here
// is a real excess.
func (f *flood) worker(ctx context.Context, until time.Time) {
	d := newDialer()
	for time.Now().Before(until) {
		conn, err := dialWS(ctx, d, f.e.wsURL())
		var se *statusError
		switch {
		case err == nil:
			f.clientPeak.see(f.open.Add(1))
			f.statuses.add("101")
			if err := echoOnce(conn, []byte("flood")); err != nil {
				f.fail.add("flood echo", "%v", err)
			}
			time.Sleep(200*time.Millisecond + rand.N(600*time.Millisecond))
			f.open.Add(-1)
			closeAll([]*websocket.Conn{conn})
		case errors.As(err, &se) && se.status == http.StatusServiceUnavailable:
			f.statuses.add("503")
			if ra := se.header.Get("Retry-After"); ra != "1" {
				f.fail.add("503", "Retry-After %q, want 1", ra)
			}
			time.Sleep(100*time.Millisecond + rand.N(300*time.Millisecond))
		default:
			f.statuses.add("other")
			f.fail.add("flood handshake", "%v", err)
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// sample starts a read of the module's tunnels gauge every gaugeEvery. In
// the flood Caddy's admin API answers in a few hundred milliseconds (it
// shares Caddy's scheduler with thousands of handshakes), so reads overlap,
// up to maxSampling, rather than fall behind the clock.
func (f *flood) sample(ctx context.Context, stop <-chan struct{}) {
	t := time.NewTicker(gaugeEvery)
	defer t.Stop()
	sem := make(chan struct{}, maxSampling)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		select {
		case sem <- struct{}{}:
		default:
			f.skipped.Add(1)
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			f.sampleOnce(ctx)
		})
	}
}

func (f *flood) sampleOnce(ctx context.Context) {
	v, err := f.e.tunnelsOpen(ctx)
	if err != nil {
		f.fail.add("gauge", "%v", err)
		return
	}
	f.samples.Add(1)
	f.gaugePeak.see(int64(v))
	if v > float64(f.limit) {
		f.fail.add("limit", "tunnels gauge %v over max_connections %d", v, f.limit)
	}
}
