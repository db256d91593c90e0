package main

// Scenarios 1 and 2: echo traffic on thousands of tunnels while the config
// is reloaded through the admin API.

import (
	"context"
	"fmt"
	"sync"
	"time"
)

type reloadParams struct {
	tunnels  int
	duration time.Duration
	reloads  int
	// closeDelay is the proxy's stream_close_delay. Longer than the run
	// (scenario 1), a reload must not disturb any tunnel; short (scenario
	// 2), each reload closes the old config's tunnels after it.
	closeDelay time.Duration
}

// keepsTunnels reports whether no tunnel may close during the run.
func (p reloadParams) keepsTunnels() bool { return p.closeDelay > p.duration }

// sweepPerTunnel is what the bound on closes after a reload allows for each
// open tunnel. Caddy's reverse proxy closes an old config's tunnels one at
// a time, under a lock, each Close waiting for that tunnel's goroutine to
// run (closeConnections), while every closed client reconnects at once: on
// this 2-core machine 9,000 tunnels took up to ~13 s to close, and a
// tunnel whose backend side went first is silent until its client side is
// reached (soak/repro/closesweep reproduces both with stock Caddy).
const sweepPerTunnel = 2 * time.Millisecond

// closeWithin bounds how long after a reload an old tunnel may stay open,
// and how long a message may go without echo or close in scenario 2.
func (p reloadParams) closeWithin() time.Duration {
	return p.closeDelay + closeBound + time.Duration(p.tunnels)*sweepPerTunnel
}

func runReloads(ctx context.Context, e *env, r *scenarioResult, p reloadParams) error {
	site := siteConfig{Generation: e.site.Generation + 1, CloseDelay: p.closeDelay}
	if err := e.loadScenario(ctx, site); err != nil {
		return err
	}
	fail := &failures{}
	run := newEchoRun(e.wsURL(), time.Second, fail)
	reloads := &reloadLog{}
	if !p.keepsTunnels() {
		// Caddy closes an old config's WebSocket with a 1001 close frame,
		// or at least a clean TCP close; anything else fails.
		run.reconnect = true
		run.closeOK = func(kind string) bool { return kind == "close-1001" || kind == "fin" }
		run.onClose = reloads.closed
		run.overdue = max(run.overdue, p.closeWithin())
	}

	t0 := time.Now()
	clients, conns, err := run.open(ctx, p.tunnels, 1, 64)
	if err != nil {
		return fmt.Errorf("opening %d tunnels: %v", p.tunnels, err)
	}
	r.tunnels += int64(p.tunnels)
	r.concurrent = int64(p.tunnels)
	r.note("%d tunnels open in %v", p.tunnels, time.Since(t0).Round(100*time.Millisecond))

	if p.keepsTunnels() {
		// The module's gauge must count every tunnel, and keep counting
		// them across reloads (reloadDuring checks again after each).
		if err := waitGauge(ctx, e, float64(p.tunnels), 5*time.Second); err != nil {
			closeAll(conns)
			return err
		}
	}
	stop := make(chan struct{})
	wg := run.start(clients, conns, stop)
	start := time.Now()
	reloadErr := reloadDuring(ctx, e, r, p, start, reloads)
	time.Sleep(time.Until(start.Add(p.duration)))
	close(stop)
	wg.Wait()
	if reloadErr != nil {
		return reloadErr
	}

	lostN := lost(clients)
	r.lost += lostN
	r.badEchoes += fail.of("reorder") + fail.of("corrupt")
	r.messages += run.echoed.Load()
	r.tunnels += run.reconnects.Load()
	r.note("%d messages sent (%d of them resent after a reconnect), %d echoed in order and intact, %d lost",
		run.sent.Load(), run.sent.Load()-run.echoed.Load()-lostN, run.echoed.Load(), lostN)
	r.note("echo round trip: %s", run.rtt.summary())
	r.note("tunnels closed under the clients: %d (%s); reconnects: %d", run.closes.total(), run.closes.String(), run.reconnects.Load())
	r.note("the clients' closing handshakes at the end: %s", run.finalCloses.String())
	if !p.keepsTunnels() {
		r.note("closes after the reload before them: %s (stream_close_delay %v, bound %v)", reloads.sinceReload.summary(), p.closeDelay, p.closeWithin())
	}

	if err := fail.err(); err != nil {
		return err
	}
	if lostN > 0 {
		return fmt.Errorf("%d messages sent were never echoed", lostN)
	}
	if !p.keepsTunnels() && run.closes.total() < p.tunnels {
		// Every reload swaps every handler instance, so each must close
		// the tunnels of the one before: fewer closes than one full wave
		// means the short delay was not exercised.
		return fmt.Errorf("only %d tunnels closed over %d reloads of %d tunnels", run.closes.total(), p.reloads, p.tunnels)
	}
	if !p.keepsTunnels() {
		return reloads.checkDelay(p.closeDelay, p.closeWithin())
	}
	return nil
}

// reloadLog keeps when each reload started, and how long after the latest
// one each tunnel closed: stream_close_delay must hold the old tunnels
// open that long, and they must close within closeWithin.
type reloadLog struct {
	mu          sync.Mutex
	starts      []time.Time
	sinceReload latencies
	early       int // closes before any reload, or sooner than the delay
}

func (l *reloadLog) started(at time.Time) {
	l.mu.Lock()
	l.starts = append(l.starts, at)
	l.mu.Unlock()
}

func (l *reloadLog) closed(at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var latest time.Time
	for _, s := range l.starts {
		if s.Before(at) {
			latest = s
		}
	}
	if latest.IsZero() {
		l.early++
		return
	}
	l.sinceReload.add(at.Sub(latest))
}

func (l *reloadLog) checkDelay(delay, within time.Duration) error {
	l.mu.Lock()
	early := l.early
	l.mu.Unlock()
	p, slowest := l.sinceReload.percentiles(0)
	if early > 0 || p[0] < delay {
		return fmt.Errorf("tunnels closed before stream_close_delay %v had passed since a reload (%d before any reload, earliest %v after one)", delay, early, round(p[0]))
	}
	if slowest > within {
		return fmt.Errorf("a tunnel closed %v after a reload, past the bound %v", round(slowest), within)
	}
	return nil
}

// reloadDuring loads p.reloads configs spread evenly over the run,
// alternately a changed one (a new generation) and an identical one
// (forced, so that Caddy swaps the handlers anyway), and checks after each
// that the generation served is the one loaded.
func reloadDuring(ctx context.Context, e *env, r *scenarioResult, p reloadParams, start time.Time, log *reloadLog) error {
	var took latencies
	dropped := 0
	for i := 1; i <= p.reloads; i++ {
		time.Sleep(time.Until(start.Add(p.duration * time.Duration(i) / time.Duration(p.reloads+1))))
		site := e.site
		changed := i%2 == 1
		if changed {
			site.Generation++
		}
		t0 := time.Now()
		log.started(t0)
		if err := e.load(ctx, site, !changed); err != nil {
			return fmt.Errorf("reload %d: %v", i, err)
		}
		took.add(time.Since(t0))
		n, err := e.checkGeneration(ctx)
		dropped += n
		if err != nil {
			return fmt.Errorf("reload %d: %v", i, err)
		}
		if p.keepsTunnels() {
			if err := waitGauge(ctx, e, float64(p.tunnels), 2*time.Second); err != nil {
				return fmt.Errorf("reload %d: %v", i, err)
			}
		}
		r.reloads++
	}
	r.note("%d reloads (changed and identical alternately), POST /load took %s", r.reloads, took.summary())
	if dropped > 0 {
		r.note("GET /generation right after a reload: %d request(s) got no answer and were retried (Caddy's reload race, soak/repro/reload-eof.sh)", dropped)
	}
	return nil
}
