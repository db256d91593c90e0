package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

type metricKey string

const (
	mHandshakes metricKey = "hs"
	mMBps       metricKey = "mbps"
	mP50        metricKey = "p50"
	mP99        metricKey = "p99"
	// mP99Pooled is the p99 of every message of every repetition together.
	// One stall of a process (a GC cycle, the host) delays every message in
	// flight, so a repetition's p99 is often one event's doing: the p99 of
	// one 3 s window swung 1.6-5.7 ms for the same bare Caddy. Pooled, a
	// stall weighs by how often it happens, which is what the bound is about.
	mP99Pooled metricKey = "p99all"
	mRSS1      metricKey = "rss1"
	mRSS2      metricKey = "rss2"
	mGets      metricKey = "gets"
	// mCPUConn is the proxy's CPU time (user+system, all its processes)
	// during the handshakes measurement over the connections it served.
	mCPUConn metricKey = "cpuconn"
	// mPerGiB1 and mPerGiB2 derive from mRSS1 and mRSS2: how many idle
	// tunnels 1 GiB of proxy RSS holds at that rate.
	mPerGiB1 metricKey = "pergib1"
	mPerGiB2 metricKey = "pergib2"
	// mGoroutines is Caddy's go_goroutines growth per idle tunnel at the
	// largest tunnel count (Caddy targets only: nginx and HAProxy have an
	// event loop, and /proc's task count would be threads, not goroutines).
	mGoroutines metricKey = "goroutines"
	// mCPUMsg is the proxy's CPU time during the latency measurement over
	// the 64-byte messages it echoed: the cost of moving a small message
	// through a tunnel, both ways.
	mCPUMsg metricKey = "cpumsg"
)

const kibPerGiB = 1 << 20

func rssMetric(i int) metricKey    { return []metricKey{mRSS1, mRSS2}[i] }
func perGiBMetric(i int) metricKey { return []metricKey{mPerGiB1, mPerGiB2}[i] }

type metric struct {
	key         metricKey
	label       string
	short       string // chart label
	lowerBetter bool
	// the module's bound against bare Caddy: the ratio must be at least
	// bound (higher is better) or at most bound (lower is better); 0: none.
	bound float64
	// derived metrics restate another one (tunnels per GiB is 1/RSS per
	// tunnel): a row of the table, not a bar of the chart.
	derived bool
}

func metricsFor(cfg *config) []metric {
	ms := []metric{
		{mHandshakes, "handshakes/s (open, echo 16 B, close; 32 conc.)", "handshakes/s", false, 0.97, false},
		{mCPUConn, "proxy CPU µs per WebSocket connection (open, echo 16 B, close)", "CPU/conn", true, 0, false},
		{mMBps, "tunnel MB/s (8 conns, 64 KiB msgs, echoed)", "MB/s", false, 0.97, false},
		{mP50, fmt.Sprintf("latency p50 µs (64 B, 64 conns, %.0f msg/s)", cfg.latencyRate), "p50", true, 0, false},
		{mP99, fmt.Sprintf("latency p99 µs, median of the repetitions' (64 B, 64 conns, %.0f msg/s)", cfg.latencyRate), "p99 (median)", true, 0, true},
		{mP99Pooled, "latency p99 µs over every repetition's messages", "p99", true, 1.05, false},
		{mCPUMsg, fmt.Sprintf("proxy CPU µs per 64 B message echoed (latency test, %.0f msg/s)", cfg.latencyRate), "CPU/msg", true, 0, false},
	}
	for i, n := range cfg.tunnelSteps {
		if i < 2 {
			ms = append(ms, metric{rssMetric(i), fmt.Sprintf("proxy RSS KiB per idle tunnel @%d", n),
				fmt.Sprintf("RSS/tunnel @%d", n), true, 1.03, false})
		}
	}
	if n := len(cfg.tunnelSteps); n > 0 {
		ms = append(ms, metric{mGoroutines, fmt.Sprintf("Caddy goroutines per idle tunnel @%d (go_goroutines)", cfg.tunnelSteps[n-1]),
			"goroutines/tunnel", true, 0, false})
	}
	for i, n := range cfg.tunnelSteps {
		if i < 2 {
			ms = append(ms, metric{perGiBMetric(i), fmt.Sprintf("idle tunnels per GiB of proxy RSS @%d", n),
				fmt.Sprintf("tunnels/GiB @%d", n), false, 0, true})
		}
	}
	ms = append(ms, metric{mGets, "GET req/s, no upgrade (keep-alive, 32 conc.)", "GET/s", false, 0.98, false})
	return ms
}

// targetBound is an acceptance bar for some module targets, checked
// besides the metrics' own bounds.
type targetBound struct {
	metric   metricKey
	source   string   // the set of bars it belongs to, named in its row
	targets  []string // target keys it applies to, in either mode
	max      bool     // the value must be at most limit (else at least)
	limit    float64
	absolute bool   // limit is in the metric's unit (median), not a ratio to bare Caddy
	unit     string // for absolute limits
}

// tunnelSource names the tunnel targets' rows.
const tunnelSource = "tunnel target"

// targetBounds are the tunnel targets for the module delegating to its
// embedded proxy, in the mode given: an idle tunnel in at most 16 KiB of
// RSS (24 KiB over TLS, which adds crypto/tls's connection state) and two
// goroutines; throughput at least bare Caddy's and CPU per small message
// no more than its own; CPU per connection 15% below it and p99 within 5%.
// Handshakes/s keeps the bound every module target has.
func targetBounds(cfg *config, tls bool) []targetBound {
	delegate := []string{"delegate"}
	rss := 16.0
	if tls {
		rss = 24
	}
	var bs []targetBound
	for i := range cfg.tunnelSteps {
		if i < 2 {
			bs = append(bs, targetBound{rssMetric(i), tunnelSource, delegate, true, rss, true, "KiB"})
		}
	}
	return append(bs,
		targetBound{mGoroutines, tunnelSource, delegate, true, 2, true, ""},
		targetBound{mMBps, tunnelSource, delegate, false, 1.0, false, ""},
		targetBound{mCPUMsg, tunnelSource, delegate, true, 1.0, false, ""},
		targetBound{mCPUConn, tunnelSource, delegate, true, 0.85, false, ""},
		targetBound{mP99Pooled, tunnelSource, delegate, true, 1.05, false, ""},
	)
}

type results struct {
	samples map[string]map[metricKey][]float64
	// latencies holds every message's round trip, by target, over all
	// repetitions (for mP99Pooled).
	latencies map[string][]time.Duration
	// foreign is, for each sample, the share of the machine's CPUs that
	// other processes used (or the hypervisor stole) while it was taken.
	foreign map[string]map[metricKey][]float64
	// tlsParams names what each TLS target negotiated, by target id.
	tlsParams map[string]string
	cfg       *config
}

func newResults(cfg *config) *results {
	return &results{samples: map[string]map[metricKey][]float64{}, foreign: map[string]map[metricKey][]float64{},
		latencies: map[string][]time.Duration{}, tlsParams: map[string]string{}, cfg: cfg}
}

// addLatencies records one repetition's round trips of a target: its p50
// and p99 as samples, and the round trips for the pooled p99.
func (r *results) addLatencies(target string, rts []time.Duration) (p50, p99 time.Duration) {
	p50, p99 = percentile(rts, 0.50), percentile(rts, 0.99)
	r.add(target, mP50, float64(p50.Microseconds()))
	r.add(target, mP99, float64(p99.Microseconds()))
	r.latencies[target] = append(r.latencies[target], rts...)
	return p50, p99
}

// poolLatencies adds each target's pooled p99 (one sample a target).
func (r *results) poolLatencies() {
	for target, rts := range r.latencies {
		slices.Sort(rts)
		r.add(target, mP99Pooled, float64(percentile(rts, 0.99).Microseconds()))
	}
}

// percentile of sorted round trips.
func percentile(sorted []time.Duration, p float64) time.Duration {
	return sorted[int(p*float64(len(sorted)-1))]
}

func (r *results) add(target string, m metricKey, v float64) {
	if r.samples[target] == nil {
		r.samples[target] = map[metricKey][]float64{}
	}
	r.samples[target][m] = append(r.samples[target][m], v)
}

func (r *results) addForeign(target string, m metricKey, pct float64) {
	if r.foreign[target] == nil {
		r.foreign[target] = map[metricKey][]float64{}
	}
	r.foreign[target][m] = append(r.foreign[target][m], pct)
}

// pairedRatio is the median over repetitions of a's sample divided by b's
// sample of the same repetition (taken seconds apart), which cancels slow
// drifts of a shared machine better than a ratio of medians.
func (r *results) pairedRatio(a, b string, m metricKey) float64 {
	sa, sb := r.samples[a][m], r.samples[b][m]
	var rs []float64
	for i := range min(len(sa), len(sb)) {
		if x := ratio(sa[i], sb[i]); !math.IsNaN(x) {
			rs = append(rs, x)
		}
	}
	return medianOf(rs)
}

// medianForeign is the median share of the CPUs other processes took
// over all samples.
func (r *results) medianForeign() float64 {
	var all []float64
	for _, byMetric := range r.foreign {
		for _, f := range byMetric {
			all = append(all, f...)
		}
	}
	if len(all) == 0 {
		return 0
	}
	slices.Sort(all)
	return all[len(all)/2]
}

// median returns the median sample, NaN if there is none.
func (r *results) median(target string, m metricKey) float64 {
	return medianOf(slices.Clone(r.samples[target][m]))
}

// medianOf sorts s in place and returns its median, NaN if it is empty.
func medianOf(s []float64) float64 {
	if len(s) == 0 {
		return math.NaN()
	}
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func fmtNum(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func ratio(a, b float64) float64 {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return math.NaN()
	}
	return a / b
}

func fmtRatio(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	return fmt.Sprintf("%.2f×", v)
}

// report renders, for each mode run, the markdown table of medians with
// ratios to bare Caddy (and to direct, plain only) and the acceptance
// check of the module against bare Caddy; then the raw samples.
func (r *results) report(ts []target, cfg *config, load0, load1 string, took time.Duration) string {
	ms := metricsFor(cfg)
	var b strings.Builder
	fmt.Fprintf(&b, "# WebSocket proxy benchmark\n\n")
	fmt.Fprintf(&b, "%s · %s/%s · %d CPUs · proxy pinned to CPU %s, load generator and echo backend on CPU %s · "+
		"medians of %d runs of %v each · load average %s at start, %s at end · %v in all\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.GOOS, runtime.GOARCH, onlineCPUs(),
		cfg.proxyCPU, cfg.loadCPU, cfg.reps, cfg.dur, load0, load1, took.Round(time.Second))
	if f := r.medianForeign(); f > 10 {
		fmt.Fprintf(&b, "**Warning: other processes used a median %.0f%% of the machine's CPUs during the measurements** "+
			"(per sample in brackets under Raw samples). Throughput and latency differences of a few percent are noise "+
			"here; only the RSS rows are reliable. Rerun on an idle machine, or with `BENCH_NICE=-10 make bench` "+
			"to take priority over the other work.\n\n", f)
	}
	for _, tls := range []bool{false, true} {
		if mts := ofMode(ts, tls); len(mts) > 0 {
			r.modeReport(&b, mts, ms, cfg, tls)
		}
	}

	b.WriteString("## Raw samples\n\nIn brackets: the share of the machine's CPUs other processes used (or the hypervisor stole) during that sample; above a few percent the sample is disturbed.\n\n| metric | target | runs |\n|---|---|---|\n")
	for _, m := range ms {
		for _, t := range ts {
			s := r.samples[t.id()][m.key]
			if len(s) == 0 || m.key == mP99Pooled { // one figure, in the table already
				continue
			}
			parts := make([]string, len(s))
			f := r.foreign[t.id()][m.key]
			for i, v := range s {
				parts[i] = fmtNum(v)
				if i < len(f) {
					parts[i] += fmt.Sprintf(" [%.0f%%]", f[i])
				}
			}
			fmt.Fprintf(&b, "| %s | %s | %s |\n", m.short, t.name(), strings.Join(parts, ", "))
		}
	}
	if len(warnings) > 0 {
		b.WriteString("\n## Warnings\n\n")
		for _, w := range warnings {
			fmt.Fprintf(&b, "- %s\n", w)
		}
	}
	b.WriteString("\nConfigs: bench/configs/. Reproduce with `make bench`.\n")
	return b.String()
}

// modeReport renders one mode's table of medians and its bounds.
func (r *results) modeReport(b *strings.Builder, ts []target, ms []metric, cfg *config, tls bool) {
	ref := refID(tls)
	has := func(id string) bool {
		return slices.ContainsFunc(ts, func(t target) bool { return t.id() == id })
	}
	mode := "plain"
	if tls {
		mode = "TLS"
		fmt.Fprintf(b, "## TLS: wss:// and https://\n\nEach proxy terminates TLS 1.3 on a self-signed ECDSA P-256 certificate "+
			"made for the run; the echo backend behind it stays plain ws://, so there is no direct column. "+
			"Clients make a full handshake for every connection (no resumption).")
		var params []string
		for _, t := range ts {
			if p, ok := r.tlsParams[t.id()]; ok {
				params = append(params, fmt.Sprintf("%s: %s", t.label, p))
			}
		}
		if len(params) > 0 {
			fmt.Fprintf(b, " Negotiated: %s.", strings.Join(params, "; "))
		}
		b.WriteString("\n\nEach cell: median (ratio to caddy bare over TLS). Lower is better for latency, CPU, RSS and goroutines.\n\n")
	} else {
		b.WriteString("## Plain: ws:// and http://\n\nEach cell: median (ratio to caddy bare / ratio to direct). " +
			"Lower is better for latency, CPU, RSS and goroutines.\n\n")
	}

	b.WriteString("| metric |")
	for _, t := range ts {
		fmt.Fprintf(b, " %s |", t.label)
	}
	b.WriteString("\n|---|")
	for range ts {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, m := range ms {
		fmt.Fprintf(b, "| %s |", m.label)
		for _, t := range ts {
			v := r.median(t.id(), m.key)
			cell := fmtNum(v)
			if !math.IsNaN(v) {
				var rs []string
				if has(ref) {
					rs = append(rs, fmtRatio(ratio(v, r.median(ref, m.key))))
				}
				if has("direct") {
					rs = append(rs, fmtRatio(ratio(v, r.median("direct", m.key))))
				}
				if len(rs) > 0 {
					cell += " (" + strings.Join(rs, " / ") + ")"
				}
			}
			fmt.Fprintf(b, " %s |", cell)
		}
		b.WriteString("\n")
	}
	if !has(ref) {
		b.WriteString("\n")
		return
	}

	fmt.Fprintf(b, "\n### Module against bare Caddy, %s\n\nMedian over repetitions of the ratio of samples taken in the same repetition, seconds apart; "+
		"absolute bounds (no ×) are checked against the target's median. Rows marked %q are the tunnel targets, for the delegating module only.\n\n| metric | bound |",
		mode, tunnelSource)
	var mods []target
	for _, t := range ts {
		if t.module {
			mods = append(mods, t)
			fmt.Fprintf(b, " %s |", t.label)
		}
	}
	b.WriteString("\n|---|---|")
	for range mods {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	short := map[metricKey]string{}
	for _, m := range ms {
		short[m.key] = m.short
	}
	row := func(name string, bd targetBound) {
		op := "≥"
		if bd.max {
			op = "≤"
		}
		switch {
		case bd.absolute && bd.unit != "":
			fmt.Fprintf(b, "| %s | %s %s %s |", name, op, fmtNum(bd.limit), bd.unit)
		case bd.absolute:
			fmt.Fprintf(b, "| %s | %s %s |", name, op, fmtNum(bd.limit))
		default:
			fmt.Fprintf(b, "| %s | %s %.2f× |", name, op, bd.limit)
		}
		for _, t := range mods {
			if bd.targets != nil && !slices.Contains(bd.targets, t.key) {
				b.WriteString(" |")
				continue
			}
			var x float64
			var cell string
			if bd.absolute {
				x = r.median(t.id(), bd.metric)
				cell = strings.TrimSpace(fmtNum(x) + " " + bd.unit)
			} else {
				x = r.pairedRatio(t.id(), ref, bd.metric)
				cell = fmtRatio(x)
			}
			verdict := "ok"
			switch {
			case math.IsNaN(x):
				verdict = "n/a"
			case bd.max && x > bd.limit, !bd.max && x < bd.limit:
				verdict = "**MISSED**"
			}
			fmt.Fprintf(b, " %s %s |", cell, verdict)
		}
		b.WriteString("\n")
	}
	for _, m := range ms {
		if m.bound != 0 {
			row(m.short, targetBound{metric: m.key, max: m.lowerBetter, limit: m.bound})
		}
	}
	for _, bd := range targetBounds(cfg, tls) {
		applies := slices.ContainsFunc(mods, func(t target) bool { return slices.Contains(bd.targets, t.key) })
		if _, ok := short[bd.metric]; ok && applies {
			row(fmt.Sprintf("%s (%s)", short[bd.metric], bd.source), bd)
		}
	}
	b.WriteString("\n")
}

var palette = []color.Color{
	color.RGBA{0x59, 0x59, 0x59, 0xff}, // direct
	color.RGBA{0x1f, 0x77, 0xb4, 0xff}, // bare
	color.RGBA{0x2c, 0xa0, 0x2c, 0xff}, // policy
	color.RGBA{0x17, 0xbe, 0xcf, 0xff}, // delegate
	color.RGBA{0xff, 0x7f, 0x0e, 0xff}, // nginx
	color.RGBA{0xd6, 0x27, 0x28, 0xff}, // haproxy
}

// chart draws, per metric, one bar per target of one mode: its median
// divided by bare Caddy's in that mode (1.0 = bare Caddy).
func (r *results) chart(ts []target, path string) error {
	if len(ts) == 0 {
		return nil
	}
	var ms []metric
	for _, m := range metricsFor(r.cfg) {
		if !m.derived {
			ms = append(ms, m)
		}
	}
	ref := refID(ts[0].tls)
	if _, ok := r.samples[ref]; !ok {
		ref = ts[0].id()
	}
	p := plot.New()
	p.Title.Text = "Ratio to bare Caddy (medians; latency, CPU, RSS and goroutines: lower is better)"
	if ts[0].tls {
		p.Title.Text = "Over TLS: ratio to bare Caddy over TLS (medians; latency, CPU, RSS and goroutines: lower is better)"
	}
	p.Y.Label.Text = "× caddy bare"
	names := make([]string, len(ms))
	for i, m := range ms {
		names[i] = m.short
	}
	w := vg.Points(60 / float64(len(ts)))
	top := 1.0
	for i, t := range ts {
		vals := make(plotter.Values, len(ms))
		for j, m := range ms {
			v := ratio(r.median(t.id(), m.key), r.median(ref, m.key))
			if math.IsNaN(v) {
				v = 0
			}
			vals[j] = v
			top = max(top, v)
		}
		bars, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return err
		}
		bars.LineStyle.Width = 0
		// A target keeps its colour in both modes' charts.
		bars.Color = palette[slices.IndexFunc(allTargets, func(a target) bool { return a.key == t.key })%len(palette)]
		bars.Offset = w * vg.Length(float64(i)-float64(len(ts)-1)/2)
		p.Add(bars)
		p.Legend.Add(t.label, bars)
	}
	one := plotter.NewFunction(func(float64) float64 { return 1 })
	one.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	one.Color = color.Gray{0x40}
	p.Add(one)
	p.Legend.Top = true
	p.NominalX(names...)
	p.Y.Min = 0
	p.Y.Max = top * 1.35 // room for the legend above the bars
	// 1.25 inches a metric keeps the labels under their bars apart.
	return p.Save(max(10, 1.25*vg.Length(len(ms)))*vg.Inch, 5*vg.Inch, path)
}

// onlineCPUs counts the machine's CPUs (runtime.NumCPU only sees the ones
// this process is pinned to).
func onlineCPUs() int {
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for part := range strings.SplitSeq(strings.TrimSpace(string(b)), ",") {
		lo, hi, found := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		c := a
		var err2 error
		if found {
			c, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil {
			return runtime.NumCPU()
		}
		n += c - a + 1
	}
	return n
}
