// Command soak is the reliability soak behind `make soak` (full) and
// `make soak-short` (CI): it runs the echo backend (bin/echo) and Caddy
// built with the upgrade module (bin/caddy) as separate processes on
// 127.0.0.1, drives them through the scenarios below, and exits non-zero
// if any assertion fails.
//
//  1. reload:  N WebSockets echo sequence-numbered messages while the
//     config is reloaded (changed, identical, ...) with a stream_close_delay
//     longer than the run: nothing lost, reordered, corrupted or closed.
//  2. close:   the same with a 1 s stream_close_delay: every tunnel a reload
//     closes ends with a 1001 close frame or a clean TCP close, clients
//     reconnect and resend, and every message is echoed in the end.
//  3. backend: the backend is killed and restarted: tunnels close promptly,
//     handshakes get 502 while it is down, and max_connections admits
//     exactly its limit again afterwards.
//  4. hostile: slow handshakes, mute connections, tunnels that never read,
//     half-closes, while normal clients keep a latency bound; the server
//     timeouts and idle_timeout close the hostile ones in time.
//  5. after every scenario, Caddy's fds and goroutines and the tunnels
//     gauge return to the baseline taken at start.
//  6. flood:   2x max_connections clients churn on one route; the tunnels
//     gauge, sampled every 50 ms, never exceeds the limit.
//
// With -tls (make soak-tls, make soak-short-tls) Caddy terminates TLS 1.3
// on a certificate made for the run and every client connects over wss://
// or https://, the hostile ones included (a mute connection then waits
// before or after its TLS handshake, a half-close is a close_notify alert
// and a FIN); the backend stays plain. Every assertion holds the same.
//
// File descriptors: each tunnel costs Caddy two (client and backend side),
// the backend one and the client one. Caddy and the backend run in their
// own processes; the clients are goroutines in this one, which holds one
// fd per tunnel. With the 20,000 open files a process may have here, that
// caps scenario 1 at about 9,900 tunnels (Caddy's side). During a reload
// with a short stream_close_delay Caddy holds up to three per tunnel (the
// old backend side stays open until its serial sweep gets there while the
// client reconnects), so scenario 2 stops at about 6,600. The counts are
// checked against the limits before anything starts.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/seedf05e/caddy-upgrade/bench/proc"
)

type config struct {
	caddy, echo, profile, out, only string
	cpuProfile                      string
	basePort                        int
	bound                           time.Duration // the whole soak; past it, it fails
	tls                             bool          // clients reach Caddy over TLS

	tunnels           int           // scenario 1 (and 2)
	duration          time.Duration // scenario 1
	reloads           int           // scenario 1
	closeTunnels      int           // scenario 2
	closeDuration     time.Duration // scenario 2
	closeReloads      int           // scenario 2
	limit             int           // scenario 3: max_connections
	slow              int           // scenario 4: one-byte-a-second handshakes
	mute              int           // scenario 4: connections that send nothing
	nonReaders        int           // scenario 4: tunnels that never read
	halfClosers       int           // scenario 4: clients that half-close
	normal            int           // scenario 4: well-behaved clients
	hostileDuration   time.Duration // scenario 4
	latencyBound      time.Duration // scenario 4: p99 for normal clients
	floodLimit        int           // scenario 6: max_connections
	floodDuration     time.Duration // scenario 6
	readHeader        time.Duration // servers timeouts read_header
	tunnelIdleTimeout time.Duration // upgrade idle_timeout in scenario 4
	settle            time.Duration // scenario 5: longest wait for the baseline
}

// profiles are the two documented forms; any flag set on the command line
// overrides its profile value.
var profiles = map[string]config{
	"short": {
		bound: 5 * time.Minute,
		// 1. and 2.
		tunnels: 1000, duration: 45 * time.Second, reloads: 4,
		closeTunnels: 1000, closeDuration: 20 * time.Second, closeReloads: 4,
		// 3.
		limit: 300,
		// 4.
		slow: 200, mute: 50, nonReaders: 10, halfClosers: 20, normal: 8,
		hostileDuration: 12 * time.Second, latencyBound: 200 * time.Millisecond,
		readHeader: 5 * time.Second, tunnelIdleTimeout: 5 * time.Second,
		// 5. and 6.
		settle:     15 * time.Second,
		floodLimit: 300, floodDuration: 8 * time.Second,
	},
	"full": {
		bound: 25 * time.Minute,
		// 1. and 2. (2. needs three fds a tunnel in Caddy: checkCaddyFDs)
		tunnels: 9000, duration: 3 * time.Minute, reloads: 10,
		closeTunnels: 6000, closeDuration: 3 * time.Minute, closeReloads: 10,
		// 3.
		limit: 2000,
		// 4.
		slow: 1000, mute: 200, nonReaders: 50, halfClosers: 100, normal: 16,
		hostileDuration: 30 * time.Second, latencyBound: 200 * time.Millisecond,
		readHeader: 5 * time.Second, tunnelIdleTimeout: 5 * time.Second,
		// 5. and 6.
		settle:     30 * time.Second,
		floodLimit: 1000, floodDuration: 30 * time.Second,
	},
}

func parseFlags() *config {
	var cfg config
	flag.StringVar(&cfg.profile, "profile", "short", "short (CI, about 2 minutes) or full")
	flag.StringVar(&cfg.caddy, "caddy", "bin/caddy", "Caddy built with the upgrade module")
	flag.StringVar(&cfg.echo, "echo", "bin/echo", "the WebSocket echo backend")
	flag.StringVar(&cfg.out, "out", "", "also write the results as Markdown to this file")
	flag.StringVar(&cfg.only, "only", "", "comma-separated scenarios to run (reload,close,backend,hostile,flood); default all")
	flag.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write the soak process's own CPU profile here (to see what the clients cost)")
	flag.IntVar(&cfg.basePort, "port", 18960, "Caddy listens here, the backend on port+1, the admin API on port+2")
	flag.BoolVar(&cfg.tls, "tls", false, "Caddy terminates TLS 1.3 on a throwaway certificate; clients use wss:// and https://")
	flag.DurationVar(&cfg.bound, "bound", 0, "fail if the whole soak takes longer")
	flag.IntVar(&cfg.tunnels, "tunnels", 0, "reload: concurrent WebSockets")
	flag.DurationVar(&cfg.duration, "duration", 0, "reload: how long they echo")
	flag.IntVar(&cfg.reloads, "reloads", 0, "reload: config reloads during the run")
	flag.IntVar(&cfg.closeTunnels, "close-tunnels", 0, "close: concurrent WebSockets")
	flag.DurationVar(&cfg.closeDuration, "close-duration", 0, "close: how long they echo")
	flag.IntVar(&cfg.closeReloads, "close-reloads", 0, "close: config reloads during the run")
	flag.IntVar(&cfg.limit, "limit", 0, "backend: max_connections")
	flag.IntVar(&cfg.slow, "slow", 0, "hostile: handshakes sent one byte a second")
	flag.IntVar(&cfg.mute, "mute", 0, "hostile: connections that send nothing")
	flag.IntVar(&cfg.nonReaders, "non-readers", 0, "hostile: tunnels that write and never read")
	flag.IntVar(&cfg.halfClosers, "half-closers", 0, "hostile: clients that half-close")
	flag.IntVar(&cfg.normal, "normal", 0, "hostile: well-behaved clients measuring latency")
	flag.DurationVar(&cfg.hostileDuration, "hostile-duration", 0, "hostile: how long normal clients run")
	flag.DurationVar(&cfg.latencyBound, "latency-bound", 0, "hostile: p99 bound for normal clients' handshakes and echoes")
	flag.IntVar(&cfg.floodLimit, "flood-limit", 0, "flood: max_connections (2x as many clients)")
	flag.DurationVar(&cfg.floodDuration, "flood-duration", 0, "flood: how long it lasts")
	flag.DurationVar(&cfg.readHeader, "read-header", 0, "servers timeouts read_header")
	flag.DurationVar(&cfg.tunnelIdleTimeout, "idle-timeout", 0, "hostile: upgrade idle_timeout")
	flag.DurationVar(&cfg.settle, "settle", 0, "longest wait for Caddy to return to its baseline")
	flag.Parse()

	p, ok := profiles[cfg.profile]
	if !ok {
		log.Fatalf("-profile: %q is neither short nor full", cfg.profile)
	}
	fillInt := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	fillDur := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	fillDur(&cfg.bound, p.bound)
	fillInt(&cfg.tunnels, p.tunnels)
	fillDur(&cfg.duration, p.duration)
	fillInt(&cfg.reloads, p.reloads)
	fillInt(&cfg.closeTunnels, p.closeTunnels)
	fillDur(&cfg.closeDuration, p.closeDuration)
	fillInt(&cfg.closeReloads, p.closeReloads)
	fillInt(&cfg.limit, p.limit)
	fillInt(&cfg.slow, p.slow)
	fillInt(&cfg.mute, p.mute)
	fillInt(&cfg.nonReaders, p.nonReaders)
	fillInt(&cfg.halfClosers, p.halfClosers)
	fillInt(&cfg.normal, p.normal)
	fillDur(&cfg.hostileDuration, p.hostileDuration)
	fillDur(&cfg.latencyBound, p.latencyBound)
	fillInt(&cfg.floodLimit, p.floodLimit)
	fillDur(&cfg.floodDuration, p.floodDuration)
	fillDur(&cfg.readHeader, p.readHeader)
	fillDur(&cfg.tunnelIdleTimeout, p.tunnelIdleTimeout)
	fillDur(&cfg.settle, p.settle)
	return &cfg
}

// form names the run: its profile, and TLS if it is one.
func (cfg *config) form() string {
	if cfg.tls {
		return cfg.profile + ", TLS"
	}
	return cfg.profile
}

var started = time.Now()

// logf prints with the time since the soak started, which is what one
// compares when reading a run.
func logf(format string, args ...any) {
	fmt.Printf("%7.1fs  %s\n", time.Since(started).Seconds(), fmt.Sprintf(format, args...))
}

func main() {
	cfg := parseFlags()
	log.SetFlags(0)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sig
		logf("%v: killing Caddy and the backend", s)
		proc.KillAll()
		os.Exit(130)
	}()
	// The watchdog keeps the soak bounded even if something it waits on
	// hangs: a hung soak is a failed one.
	go func() {
		time.Sleep(cfg.bound)
		logf("FAIL: the soak did not finish within -bound %v", cfg.bound)
		proc.KillAll()
		os.Exit(1)
	}()

	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		pprof.StartCPUProfile(f)
	}
	passed, failed, err := run(cfg)
	pprof.StopCPUProfile()
	proc.KillAll()
	if err != nil {
		logf("FAIL: %v", err)
		failed = max(failed, 1)
	} else {
		logf("PASS (%v)", time.Since(started).Round(time.Second))
	}
	// The plain summary line CI reads as a test runner's closing line.
	fmt.Printf("soak: %d passed, %d failed\n", passed, failed)
	if failed > 0 {
		os.Exit(1)
	}
}

// run sets up and runs the soak; it returns how many scenarios passed and
// failed, and an error if any did or the setup failed.
func run(cfg *config) (passed, failed int, err error) {
	limit, err := raiseNofile()
	if err != nil {
		return 0, 0, fmt.Errorf("raising RLIMIT_NOFILE: %v", err)
	}
	if err := checkFDBudget(cfg, limit); err != nil {
		return 0, 0, err
	}
	logf("soak %s: GOMAXPROCS=%d, open files %d, load average %s", cfg.form(), runtime.GOMAXPROCS(0), limit, proc.LoadAvg())

	e, err := newEnv(cfg)
	if err != nil {
		return 0, 0, err
	}
	logf("work dir %s (Caddy and backend logs; removed after a pass)", e.work)
	if err := e.startBackend(); err != nil {
		return 0, 0, err
	}
	if err := e.startCaddy(siteConfig{Generation: 1, CloseDelay: time.Hour}); err != nil {
		return 0, 0, err
	}
	if err := checkCaddyFDs(e, cfg); err != nil {
		return 0, 0, err
	}
	res, err := runScenarios(e, cfg)
	if err == nil {
		os.RemoveAll(e.work)
	}
	if res != nil {
		md := res.markdown()
		fmt.Print("\n" + md)
		if cfg.out != "" {
			if werr := os.WriteFile(cfg.out, []byte(md), 0o644); werr != nil && err == nil {
				err = werr
			}
		}
		passed, failed = res.counts()
	}
	return passed, failed, err
}

// checkFDBudget refuses a run that cannot fit this process's open files:
// one per client connection, the largest number of which is the tunnels
// of scenario 1 or 2 plus a margin for reconnects.
func checkFDBudget(cfg *config, limit int) error {
	need := max(cfg.tunnels, cfg.closeTunnels, 2*cfg.floodLimit,
		cfg.slow+cfg.mute+cfg.nonReaders+cfg.halfClosers+cfg.normal, cfg.limit+1) + 200
	if need > limit {
		return fmt.Errorf("the clients need about %d open files and this process may have %d", need, limit)
	}
	return nil
}

// checkCaddyFDs refuses a run whose tunnels would not fit Caddy's open
// files or the backend's (one per tunnel). Caddy holds two per tunnel, but
// three while a reload with a short stream_close_delay closes the old
// config's tunnels (scenario 2): the clients whose side is closed
// reconnect at once, while Caddy's serial sweep keeps the old backend side
// open until it gets there (soak/repro/closesweep).
func checkCaddyFDs(e *env, cfg *config) error {
	for _, p := range []struct {
		proc *proc.Proc
		need int
	}{{e.caddy, max(2*cfg.tunnels, 3*cfg.closeTunnels) + 200}, {e.backend, max(cfg.tunnels, 2*cfg.closeTunnels) + 100}} {
		limit, err := nofileLimit(p.proc.PID())
		if err != nil {
			return err
		}
		if p.need > limit {
			return fmt.Errorf("the tunnels need about %d open files in %s, which may have %d", p.need, p.proc.Name, limit)
		}
	}
	return nil
}

// scenario is one part of the soak. run returns an error for any failed
// assertion, and notes its figures in the report.
type scenario struct {
	key, title string
	run        func(ctx context.Context, e *env, r *scenarioResult) error
}

func scenarios(cfg *config) []scenario {
	all := []scenario{
		{"reload", "1. reloads with long stream_close_delay", func(ctx context.Context, e *env, r *scenarioResult) error {
			return runReloads(ctx, e, r, reloadParams{tunnels: cfg.tunnels, duration: cfg.duration, reloads: cfg.reloads, closeDelay: time.Hour})
		}},
		{"close", "2. reloads with 1 s stream_close_delay", func(ctx context.Context, e *env, r *scenarioResult) error {
			return runReloads(ctx, e, r, reloadParams{tunnels: cfg.closeTunnels, duration: cfg.closeDuration, reloads: cfg.closeReloads, closeDelay: time.Second})
		}},
		{"backend", "3. backend killed and restarted", func(ctx context.Context, e *env, r *scenarioResult) error {
			return runBackendKill(ctx, e, r, cfg.limit)
		}},
		{"hostile", "4. slow and hostile clients", func(ctx context.Context, e *env, r *scenarioResult) error {
			return runHostile(ctx, e, r, cfg)
		}},
		{"flood", "6. flood at 2x max_connections", func(ctx context.Context, e *env, r *scenarioResult) error {
			return runFlood(ctx, e, r, cfg.floodLimit, cfg.floodDuration)
		}},
	}
	if cfg.only == "" {
		return all
	}
	var chosen []scenario
	for _, s := range all {
		if strings.Contains(","+cfg.only+",", ","+s.key+",") {
			chosen = append(chosen, s)
		}
	}
	return chosen
}

// runScenarios runs each scenario, then checks that Caddy returned to its
// baseline (scenario 5). A failed scenario does not stop the others: one
// run reports every failure.
func runScenarios(e *env, cfg *config) (*results, error) {
	ctx := context.Background()
	if err := warmUp(ctx, e); err != nil {
		return nil, fmt.Errorf("warm-up: %v", err)
	}
	base, err := e.measure(ctx)
	if err != nil {
		return nil, err
	}
	logf("baseline: Caddy has %d fds and %d goroutines", base.fds, base.goroutines)
	res := &results{profile: cfg.form(), base: base, loadBefore: proc.LoadAvg()}
	s := startSampler(e)
	defer s.stop()

	var failed []string
	for _, sc := range scenarios(cfg) {
		r := &scenarioResult{title: sc.title}
		s.reset()
		logf("== %s", sc.title)
		t0 := time.Now()
		cpu0 := takeCPU(e.watched())
		logAt := e.logOffset()
		r.err = sc.run(ctx, e, r)
		r.elapsed = time.Since(t0)
		r.note("%s", cpuSince(cpu0, e.watched()))
		r.peakRSSKiB, r.peakGoroutines = s.peaks()
		after, serr := e.settle(ctx, base, cfg.settle)
		r.after = after
		r.settleErr = errors.Join(serr, e.scanLog(logAt))
		res.scenarios = append(res.scenarios, r)
		if r.err != nil || r.settleErr != nil {
			failed = append(failed, sc.key)
			logf("FAIL %s: %v", sc.title, joinErrs(r.err, r.settleErr))
			continue
		}
		logf("ok   %s (%v); back to %d fds, %d goroutines", sc.title, r.elapsed.Round(100*time.Millisecond), after.fds, after.goroutines)
	}
	res.elapsed = time.Since(started)
	res.loadAfter = proc.LoadAvg()
	res.hwmKiB, _ = proc.StatusKiB(e.caddy.PID(), "VmHWM")
	res.peakGoroutines = s.allTimePeakGoroutines()
	if len(failed) > 0 {
		return res, fmt.Errorf("failed: %s", strings.Join(failed, ", "))
	}
	return res, nil
}

func joinErrs(errs ...error) string {
	var parts []string
	for _, err := range errs {
		if err != nil {
			parts = append(parts, err.Error())
		}
	}
	return strings.Join(parts, "; ")
}
