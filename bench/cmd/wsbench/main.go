// Command wsbench is the load harness behind `make bench`: it starts the
// WebSocket echo backend, then each target in turn (the backend direct,
// Caddy with bare reverse_proxy, Caddy with the upgrade module in
// policy-only mode and delegating, nginx, HAProxy), measures it, and writes
// a table of medians (bench/results.md) and a bar chart (bench/results.png).
//
// Each proxy is measured in two modes (-tls): plain, ws:// and http://, and
// TLS, wss:// and https:// with the proxy terminating TLS 1.3 on a
// certificate made for the run (bench/tlscert); the backend behind it stays
// plain ws:// either way. Ratios are taken to bare Caddy in the same mode;
// the TLS chart is bench/results-tls.png.
//
// The proxy under test is pinned to one core (taskset -c <proxy-cpu>); run
// wsbench itself, the load generator, pinned to the other core with the
// backend (bench/run.sh does: taskset -c 1 wsbench ...).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/seedf05e/caddy-upgrade/bench/proc"
	"github.com/seedf05e/caddy-upgrade/bench/tlscert"
)

type config struct {
	caddy, echo, nginx, haproxy string
	configs, out, work          string
	proxyCPU, loadCPU           string
	reps                        int
	dur, warm, settle           time.Duration
	targets                     []string
	tunnelSteps                 []int
	latencyRate                 float64
	// modes lists the modes to run, in order: false is plain, true TLS.
	modes []bool
	// cert is the run's certificate, nil if no mode is TLS.
	cert *tlscert.Cert
	// steps selects the measurements by name (rss, handshakes, mbps,
	// latency, gets); the report leaves out the lines of the others.
	steps map[string]bool
}

type target struct {
	key   string // short name used on the command line
	label string // column heading
	port  int
	kind  string // direct, caddy, nginx, haproxy
	conf  string // config template in -configs
	// module marks targets that run the upgrade module in front of the
	// WebSocket path: a version-12 handshake must get its 426.
	module bool
	// tls: clients reach the target over TLS, which it terminates.
	tls bool
}

const (
	backendPort = 18900
	// A target's TLS instance listens tlsPortOffset above its plain one,
	// and a Caddy target's admin API adminPortOffset above its site.
	tlsPortOffset   = 10
	adminPortOffset = 100
)

// id keys the target's samples: the TLS instance's are apart from the
// plain one's.
func (t target) id() string {
	if t.tls {
		return t.key + "-tls"
	}
	return t.key
}

// name is the target's label, marked for the TLS instance.
func (t target) name() string {
	if t.tls {
		return t.label + " (TLS)"
	}
	return t.label
}

func (t target) addr() string {
	port := t.port
	if t.tls {
		port += tlsPortOffset
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// adminAddr is where a Caddy target's admin API listens.
func (t target) adminAddr() string {
	port := t.port + adminPortOffset
	if t.tls {
		port += tlsPortOffset
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// refID is the id of the target every ratio of t's mode is taken to.
func refID(tls bool) string { return target{key: "bare", tls: tls}.id() }

var allTargets = []target{
	{key: "direct", label: "direct", port: backendPort, kind: "direct"},
	{key: "bare", label: "caddy bare", port: 18901, kind: "caddy", conf: "Caddyfile.bare"},
	{key: "policy", label: "caddy+upgrade", port: 18902, kind: "caddy", conf: "Caddyfile.policy", module: true},
	{key: "delegate", label: "caddy+upgrade to", port: 18903, kind: "caddy", conf: "Caddyfile.delegate", module: true},
	{key: "nginx", label: "nginx", port: 18904, kind: "nginx", conf: "nginx.conf"},
	{key: "haproxy", label: "haproxy", port: 18905, kind: "haproxy", conf: "haproxy.cfg"},
}

func main() {
	var cfg config
	var targets, steps, only, pidFile, modes string
	flag.StringVar(&cfg.caddy, "caddy", "bin/caddy", "Caddy binary with the upgrade module")
	flag.StringVar(&cfg.echo, "echo", "bin/echo", "WebSocket echo backend binary")
	flag.StringVar(&cfg.nginx, "nginx", "/usr/sbin/nginx", "nginx binary")
	flag.StringVar(&cfg.haproxy, "haproxy", "/usr/sbin/haproxy", "HAProxy binary")
	flag.StringVar(&cfg.configs, "configs", "bench/configs", "directory of config templates")
	flag.StringVar(&cfg.out, "out", "bench", "directory for results.md and results.png")
	flag.StringVar(&cfg.proxyCPU, "proxy-cpu", "0", "CPU list the proxy is pinned to")
	flag.StringVar(&cfg.loadCPU, "load-cpu", "1", "CPU list the backend is pinned to (run wsbench there too)")
	flag.IntVar(&cfg.reps, "reps", 3, "repetitions of every measurement (medians are reported)")
	flag.DurationVar(&cfg.dur, "dur", 3*time.Second, "duration of each measurement")
	flag.DurationVar(&cfg.warm, "warm", 500*time.Millisecond, "warm-up before throughput and latency measurements")
	flag.DurationVar(&cfg.settle, "settle", 700*time.Millisecond, "wait before reading RSS after opening tunnels")
	flag.StringVar(&targets, "targets", "direct,bare,policy,delegate,nginx,haproxy", "targets to run, in order")
	flag.StringVar(&steps, "tunnels", "2000,9000", "idle tunnel counts at which RSS is read")
	flag.Float64Var(&cfg.latencyRate, "rate", 2000, "latency test: messages per second over all 64 connections")
	flag.StringVar(&only, "steps", "rss,handshakes,mbps,latency,gets", "measurements to run, e.g. -steps latency")
	flag.StringVar(&modes, "tls", "plain,tls", "modes to run, in order: plain (ws://) and tls (wss://, each proxy terminating TLS 1.3)")
	flag.StringVar(&pidFile, "pidfile", "", "file listing the process groups of running children")
	flag.Parse()
	proc.SetPIDFile(pidFile)
	log.SetFlags(log.Ltime)

	cfg.targets = strings.Split(targets, ",")
	cfg.steps = map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		switch s = strings.TrimSpace(s); s {
		case "rss", "handshakes", "mbps", "latency", "gets":
			cfg.steps[s] = true
		default:
			log.Fatalf("-steps: unknown measurement %q", s)
		}
	}
	for _, s := range strings.Split(modes, ",") {
		switch s = strings.TrimSpace(s); s {
		case "plain", "tls":
			tls := s == "tls"
			if slices.Contains(cfg.modes, tls) {
				log.Fatalf("-tls: %q twice", s)
			}
			cfg.modes = append(cfg.modes, tls)
		default:
			log.Fatalf("-tls: unknown mode %q (plain or tls)", s)
		}
	}
	for _, s := range strings.Split(steps, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			log.Fatalf("-tunnels: %q is not a positive count", s)
		}
		cfg.tunnelSteps = append(cfg.tunnelSteps, n)
	}
	var err error
	if cfg.work, err = os.MkdirTemp("", "wsbench-"); err != nil {
		log.Fatal(err)
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sig
		log.Printf("%v: killing children", s)
		proc.KillAll()
		os.Exit(130)
	}()

	code := 0
	if err := run(&cfg); err != nil {
		log.Printf("FAILED: %v (logs in %s)", err, cfg.work)
		code = 1
	}
	proc.KillAll()
	if code == 0 {
		os.RemoveAll(cfg.work)
	}
	os.Exit(code)
}

func run(cfg *config) error {
	chosen, err := instances(cfg.targets, cfg.modes)
	if err != nil {
		return err
	}
	if slices.Contains(cfg.modes, true) {
		if cfg.cert, err = tlscert.Write(cfg.work); err != nil {
			return fmt.Errorf("certificate: %v", err)
		}
		clientTLS = cfg.cert.ClientConfig()
	}
	load0 := proc.LoadAvg()
	started := time.Now()
	log.Printf("wsbench: GOMAXPROCS=%d, %d reps x %v per measurement, work dir %s, load average %s",
		runtime.GOMAXPROCS(0), cfg.reps, cfg.dur, cfg.work, load0)

	backendAddr := fmt.Sprintf("127.0.0.1:%d", backendPort)
	if err := proc.PortFree(backendAddr); err != nil {
		return err
	}
	backend, err := proc.Start("echo", filepath.Join(cfg.work, "echo.log"), proc.Options{CPU: cfg.loadCPU}, cfg.echo, "-listen", backendAddr)
	if err != nil {
		return err
	}
	if err := proc.WaitListening(backend, backendAddr, 10*time.Second); err != nil {
		return err
	}

	res := newResults(cfg)
	for rep := 1; rep <= cfg.reps; rep++ {
		// Each repetition starts one target further along the list, so that
		// no target always runs first (or right after the same neighbour).
		order := make([]target, len(chosen))
		for i := range chosen {
			order[i] = chosen[(i+rep-1)%len(chosen)]
		}
		if cfg.steps["rss"] {
			if err := measureRSS(cfg, order, rep, res); err != nil {
				return err
			}
		}
		if err := measurePerf(cfg, order, rep, res); err != nil {
			return err
		}
	}
	res.poolLatencies()
	report := res.report(chosen, cfg, load0, proc.LoadAvg(), time.Since(started))
	fmt.Print("\n" + report)
	written := []string{filepath.Join(cfg.out, "results.md")}
	if err := os.WriteFile(written[0], []byte(report), 0o644); err != nil {
		return err
	}
	for _, tls := range cfg.modes {
		path := filepath.Join(cfg.out, chartFile(tls))
		if err := res.chart(ofMode(chosen, tls), path); err != nil {
			return fmt.Errorf("chart: %v", err)
		}
		written = append(written, path)
	}
	log.Printf("wrote %s in %v", strings.Join(written, ", "), time.Since(started).Round(time.Second))
	return nil
}

// instances are the targets to run, by key, in each mode in turn. The
// backend has no TLS, so direct is a plain target only.
func instances(keys []string, modes []bool) ([]target, error) {
	var out []target
	for _, tls := range modes {
		for _, k := range keys {
			i := slices.IndexFunc(allTargets, func(t target) bool { return t.key == k })
			if i < 0 {
				return nil, fmt.Errorf("unknown target %q", k)
			}
			t := allTargets[i]
			if tls && t.kind == "direct" {
				continue
			}
			t.tls = tls
			out = append(out, t)
		}
	}
	return out, nil
}

// ofMode keeps the targets of one mode.
func ofMode(ts []target, tls bool) []target {
	var out []target
	for _, t := range ts {
		if t.tls == tls {
			out = append(out, t)
		}
	}
	return out
}

func chartFile(tls bool) string {
	if tls {
		return "results-tls.png"
	}
	return "results.png"
}

// measureRSS runs the idle-tunnel test on each proxy in turn, each freshly
// started so that no earlier load has grown its heap.
func measureRSS(cfg *config, order []target, rep int, res *results) error {
	for _, t := range order {
		if t.kind == "direct" {
			continue
		}
		t0 := time.Now()
		p, err := startTarget(cfg, t, rep, "rss")
		if err != nil {
			return err
		}
		wsURL, getURL := urls(t)
		if err := warmUp(wsURL, getURL); err != nil {
			p.Stop()
			return fmt.Errorf("%s: %v", t.name(), err)
		}
		time.Sleep(300 * time.Millisecond)
		var goroutines func() (int, error)
		if t.kind == "caddy" {
			goroutines = func() (int, error) { return caddyGoroutines(t.adminAddr()) }
		}
		per, err := idleRSS(wsURL, func() (int64, error) { return proc.GroupRSSKiB(p.PID()) }, goroutines, cfg.tunnelSteps, cfg.settle)
		p.Stop()
		if err != nil {
			return fmt.Errorf("%s (rep %d): idle tunnels: %v", t.name(), rep, err)
		}
		var line []string
		for i, n := range cfg.tunnelSteps {
			if i < 2 {
				res.add(t.id(), rssMetric(i), per[i].rssKiB)
				if per[i].rssKiB > 0 {
					res.add(t.id(), perGiBMetric(i), kibPerGiB/per[i].rssKiB)
				}
			}
			if i == len(cfg.tunnelSteps)-1 && goroutines != nil {
				res.add(t.id(), mGoroutines, per[i].goroutines)
			}
			part := fmt.Sprintf("@%d %.1f KiB", n, per[i].rssKiB)
			if goroutines != nil {
				part += fmt.Sprintf(" %.2f goroutines", per[i].goroutines)
			}
			line = append(line, part)
		}
		log.Printf("rep %d %-23s per idle tunnel %s (%v)", rep, t.name(), strings.Join(line, ", "),
			time.Since(t0).Round(100*time.Millisecond))
	}
	return nil
}

// measurePerf starts every target at once (an idle proxy costs nothing)
// and runs each measurement on all of them back to back, so that the
// targets compared are measured seconds apart, under the same conditions
// on a shared machine.
func measurePerf(cfg *config, order []target, rep int, res *results) error {
	var running []*proc.Proc
	procOf := map[string]*proc.Proc{} // by target key; none for direct
	defer func() {
		for _, p := range running {
			p.Stop()
		}
	}()
	for _, t := range order {
		p, err := startTarget(cfg, t, rep, "perf")
		if err != nil {
			return err
		}
		if p != nil {
			running = append(running, p)
			procOf[t.id()] = p
		}
		if t.tls {
			desc, err := tlsParams(t.addr())
			if err != nil {
				return fmt.Errorf("%s: %v", t.name(), err)
			}
			res.tlsParams[t.id()] = desc
		}
		if t.module {
			addr := t.addr()
			st, err := statusOf(addr, t.tls, "GET /ws HTTP/1.1\r\nHost: "+addr+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
				"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n")
			if err != nil || st != 426 {
				return fmt.Errorf("%s: the upgrade module is not in the path: version-12 handshake got %d, %v (want 426)", t.name(), st, err)
			}
		}
		wsURL, getURL := urls(t)
		if err := warmUp(wsURL, getURL); err != nil {
			return fmt.Errorf("%s: %v", t.name(), err)
		}
	}
	type step struct {
		name    string
		metrics []metricKey
		run     func(t target) (string, error)
	}
	steps := []step{
		{"handshakes", []metricKey{mHandshakes, mCPUConn}, func(t target) (string, error) {
			wsURL, _ := urls(t)
			p := procOf[t.id()]
			var cpu0 uint64
			if p != nil {
				cpu0 = proc.GroupCPUTicks(p.PID())
			}
			hs, n, err := handshakes(wsURL, 32, cfg.dur)
			res.add(t.id(), mHandshakes, hs)
			cpu1 := cpu0
			if p != nil {
				cpu1 = proc.GroupCPUTicks(p.PID())
			}
			// cpu1 < cpu0: a process of the group exited, taking its time.
			if p == nil || n == 0 || cpu1 < cpu0 {
				return fmt.Sprintf("%.0f/s", hs), err
			}
			// USER_HZ ticks (10 ms each) over every connection served.
			us := float64(cpu1-cpu0) * 1e6 / proc.UserHZ / float64(n)
			res.add(t.id(), mCPUConn, us)
			return fmt.Sprintf("%.0f/s %.0f µs CPU/conn", hs, us), err
		}},
		{"mbps", []metricKey{mMBps}, func(t target) (string, error) {
			wsURL, _ := urls(t)
			mbps, err := throughput(wsURL, 8, 64<<10, cfg.warm, cfg.dur)
			res.add(t.id(), mMBps, mbps)
			return fmt.Sprintf("%.0f MB/s", mbps), err
		}},
		{"latency", []metricKey{mP50, mP99, mCPUMsg}, func(t target) (string, error) {
			wsURL, _ := urls(t)
			var cpu func() (uint64, bool)
			if p := procOf[t.id()]; p != nil {
				cpu = func() (uint64, bool) { return proc.GroupCPUNanos(p.PID()) }
			}
			lr, err := latency(wsURL, 64, cfg.latencyRate, cfg.warm, cfg.dur, cpu)
			if len(lr.rts) == 0 {
				return "", err
			}
			p50, p99 := res.addLatencies(t.id(), lr.rts)
			out := fmt.Sprintf("p50 %v p99 %v", p50.Round(time.Microsecond), p99.Round(time.Microsecond))
			if lr.cpuOK && lr.echoed > 0 {
				us := float64(lr.cpuNanos) / 1e3 / float64(lr.echoed)
				res.add(t.id(), mCPUMsg, us)
				out += fmt.Sprintf(" %.1f µs CPU/msg", us)
			}
			return out, err
		}},
		{"gets", []metricKey{mGets}, func(t target) (string, error) {
			_, getURL := urls(t)
			rps, err := gets(getURL, 32, cfg.dur)
			res.add(t.id(), mGets, rps)
			return fmt.Sprintf("%.0f/s", rps), err
		}},
	}
	for _, st := range steps {
		if !cfg.steps[st.name] {
			continue
		}
		var line []string
		for _, t := range order {
			before := takeCPUSample()
			out, err := st.run(t)
			if err != nil {
				return fmt.Errorf("%s (rep %d): %s: %v", t.name(), rep, st.name, err)
			}
			other, steal := foreignCPU(before, takeCPUSample(), onlineCPUs())
			for _, k := range st.metrics {
				res.addForeign(t.id(), k, other+steal)
			}
			line = append(line, fmt.Sprintf("%s %s [other %.0f%%]", t.id(), out, other+steal))
		}
		for _, p := range running {
			if p.Exited() {
				return fmt.Errorf("%s exited during the run", p.Name)
			}
		}
		log.Printf("rep %d %-11s %s", rep, st.name, strings.Join(line, ", "))
	}
	return nil
}

func urls(t target) (wsURL, getURL string) {
	if t.tls {
		return "wss://" + t.addr() + "/ws", "https://" + t.addr() + "/"
	}
	return "ws://" + t.addr() + "/ws", "http://" + t.addr() + "/"
}

// warmUp opens a few WebSockets and sends a few GETs, so that the first
// measurement does not pay for lazy initialisation.
func warmUp(wsURL, getURL string) error {
	if _, _, err := handshakes(wsURL, 4, 150*time.Millisecond); err != nil {
		return fmt.Errorf("warm-up handshakes: %v", err)
	}
	if _, err := gets(getURL, 4, 150*time.Millisecond); err != nil {
		return fmt.Errorf("warm-up GETs: %v", err)
	}
	return nil
}

// startTarget renders the target's config and starts it pinned to the
// proxy CPU; it returns nil for the direct target.
func startTarget(cfg *config, t target, rep int, phase string) (*proc.Proc, error) {
	if t.kind == "direct" {
		return nil, nil
	}
	addr := t.addr()
	if err := proc.PortFree(addr); err != nil {
		return nil, err
	}
	if t.kind == "caddy" {
		if err := proc.PortFree(t.adminAddr()); err != nil {
			return nil, err
		}
	}
	dir := filepath.Join(cfg.work, fmt.Sprintf("%s-%d-%s", t.id(), rep, phase))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	maxConn := 9600
	if n := cfg.tunnelSteps[len(cfg.tunnelSteps)-1] + 200; n > maxConn {
		maxConn = n
	}
	vars := map[string]any{
		"Port":              strings.TrimPrefix(addr, "127.0.0.1:"),
		"AdminPort":         strings.TrimPrefix(t.adminAddr(), "127.0.0.1:"),
		"TLS":               t.tls,
		"Backend":           fmt.Sprintf("127.0.0.1:%d", backendPort),
		"Dir":               dir,
		"MaxConn":           maxConn,
		"NoFile":            noFileLimit(),
		"WorkerConnections": noFileLimit() - 100,
	}
	if t.tls {
		vars["Cert"], vars["Key"], vars["Bundle"] = cfg.cert.CertFile, cfg.cert.KeyFile, cfg.cert.BundleFile
	}
	tmpl, err := template.ParseFiles(filepath.Join(cfg.configs, t.conf))
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, vars); err != nil {
		return nil, err
	}
	confPath := filepath.Join(dir, t.conf)
	if err := os.WriteFile(confPath, buf.Bytes(), 0o644); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "output.log")
	var p *proc.Proc
	switch t.kind {
	case "caddy":
		env := []string{"HOME=" + dir, "XDG_CONFIG_HOME=" + dir, "XDG_DATA_HOME=" + dir}
		p, err = proc.Start(t.id(), logPath, proc.Options{CPU: cfg.proxyCPU, Env: env}, cfg.caddy, "run", "--adapter", "caddyfile", "--config", confPath)
	case "nginx":
		p, err = proc.Start(t.id(), logPath, proc.Options{CPU: cfg.proxyCPU}, cfg.nginx, "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "nginx-error.log"))
	case "haproxy":
		p, err = proc.Start(t.id(), logPath, proc.Options{CPU: cfg.proxyCPU}, cfg.haproxy, "-db", "-f", confPath)
	default:
		return nil, fmt.Errorf("unknown kind %q", t.kind)
	}
	if err != nil {
		return nil, err
	}
	if err := proc.WaitListening(p, addr, 15*time.Second); err != nil {
		out, _ := os.ReadFile(logPath)
		p.Stop()
		return nil, fmt.Errorf("%v\n%s", err, tail(out, 2000))
	}
	return p, nil
}

func noFileLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 20000
	}
	return int(rl.Max)
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
