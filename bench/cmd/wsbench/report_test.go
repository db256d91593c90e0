package main

import (
	"strings"
	"testing"
	"time"
)

// ms turns milliseconds into round trips, sorted as latency returns them.
func ms(vs ...int) []time.Duration {
	out := make([]time.Duration, len(vs))
	for i, v := range vs {
		out[i] = time.Duration(v) * time.Millisecond
	}
	return out
}

// repeat is n copies of d.
func repeat(d, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = d
	}
	return out
}

// The pooled p99 weighs a stall by how often it happens: a 10 ms stall
// over 1.5% of a round's messages decides that round's p99, and the median
// of the rounds' p99s too when two of three rounds have one, but not the
// p99 of all messages together (1% of them stalled).
func TestPooledP99(t *testing.T) {
	r := newResults(&config{})
	stalled := ms(append(repeat(1, 197), 10, 10, 10)...)
	calm := ms(repeat(1, 200)...)
	for _, round := range [][]time.Duration{stalled, stalled, calm} {
		r.addLatencies("a", round)
	}
	for range 3 {
		r.addLatencies("b", calm)
	}
	r.poolLatencies()
	if got := r.median("a", mP99); got != 10000 {
		t.Errorf("median of the rounds' p99 = %v µs, want 10000", got)
	}
	if got := r.median("a", mP99Pooled); got != 1000 {
		t.Errorf("pooled p99 over 600 messages of which 6 stalled = %v µs, want 1000", got)
	}
	often := newResults(&config{})
	often.addLatencies("c", ms(append(repeat(1, 95), repeat(10, 5)...)...))
	often.poolLatencies()
	if got := often.median("c", mP99Pooled); got != 10000 {
		t.Errorf("pooled p99 with 5%% of messages stalled = %v µs, want 10000", got)
	}
}

// The acceptance table must be able to say MISSED: a module target
// slower than bare Caddy beyond the bound fails it, one within passes.
func TestReportBoundVerdicts(t *testing.T) {
	cfg := &config{reps: 3, dur: time.Second, tunnelSteps: []int{2000, 9000}, latencyRate: 2000}
	r := newResults(cfg)
	for _, v := range []float64{1000, 1100, 900} {
		r.add("bare", mHandshakes, v)
		r.add("policy", mHandshakes, v*0.99)   // 0.99×: within ≥ 0.97×
		r.add("delegate", mHandshakes, v*0.90) // 0.90×: missed
	}
	var ts []target
	for _, t := range allTargets {
		if t.key == "bare" || t.key == "policy" || t.key == "delegate" {
			ts = append(ts, t)
		}
	}
	out := r.report(ts, cfg, "0 0 0", "0 0 0", time.Minute)
	var row string
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "| handshakes/s | ≥ 0.97× |") {
			row = line
		}
	}
	if row == "" {
		t.Fatalf("no handshakes/s bound row in:\n%s", out)
	}
	if !strings.Contains(row, "0.99× ok") || !strings.Contains(row, "0.90× **MISSED**") {
		t.Errorf("bound row = %q, want 0.99× ok and 0.90× **MISSED**", row)
	}
}

// boundRow finds the row of a bound table that starts with prefix, in the
// section of the report that starts at heading (up to the next section),
// and returns its cells.
func boundRow(t *testing.T, report, heading, prefix string) []string {
	t.Helper()
	_, section, ok := strings.Cut(report, heading)
	if !ok {
		t.Fatalf("no %q in:\n%s", heading, report)
	}
	if i := strings.Index(section, "\n#"); i >= 0 {
		section = section[:i]
	}
	for _, line := range strings.Split(section, "\n") {
		if strings.HasPrefix(line, prefix) {
			cells := strings.Split(strings.Trim(line, "|"), "|")
			for i := range cells {
				cells[i] = strings.TrimSpace(cells[i])
			}
			return cells
		}
	}
	t.Fatalf("no row %q under %q in:\n%s", prefix, heading, report)
	return nil
}

// modeTargets instantiates the given target keys in both modes.
func modeTargets(t *testing.T, keys ...string) []target {
	t.Helper()
	ts, err := instances(keys, []bool{false, true})
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// The delegating module's tunnel targets: RSS per idle tunnel at most
// 16 KiB plain and 24 KiB over TLS, at most two goroutines, MB/s at least
// bare Caddy's and CPU per message at most its own, each in its mode. A
// target outside its bound is MISSED, one within is ok, and the policy
// column has no tunnel target rows.
func TestReportTunnelTargets(t *testing.T) {
	cfg := &config{reps: 3, dur: time.Second, tunnelSteps: []int{2000, 9000}, latencyRate: 2000, modes: []bool{false, true}}
	r := newResults(cfg)
	for _, v := range []float64{100, 110, 90} {
		for _, id := range []string{"bare", "bare-tls"} {
			r.add(id, mRSS1, 100)
			r.add(id, mRSS2, 100)
			r.add(id, mGoroutines, 4)
			r.add(id, mMBps, v)
			r.add(id, mCPUMsg, v)
		}
		r.add("policy", mMBps, v)
		r.add("delegate", mMBps, v*1.05)      // ≥ 1.00×: ok
		r.add("delegate", mCPUMsg, v*0.9)     // ≤ 1.00×: ok
		r.add("delegate-tls", mMBps, v*0.95)  // missed
		r.add("delegate-tls", mCPUMsg, v*1.2) // missed
	}
	for range 3 {
		r.add("delegate", mRSS1, 15)      // ≤ 16: ok
		r.add("delegate", mRSS2, 17)      // missed
		r.add("delegate", mGoroutines, 2) // ≤ 2: ok
		r.add("delegate-tls", mRSS1, 23)  // ≤ 24 over TLS: ok (it would miss 16)
		r.add("delegate-tls", mRSS2, 25)  // missed
		r.add("delegate-tls", mGoroutines, 4)
	}
	out := r.report(modeTargets(t, "bare", "policy", "delegate"), cfg, "0 0 0", "0 0 0", time.Minute)
	plain, tls := "### Module against bare Caddy, plain", "### Module against bare Caddy, TLS"
	for _, c := range []struct {
		heading, prefix string
		want            []string // bound, policy cell, delegate cell
	}{
		{plain, "| RSS/tunnel @2000 (tunnel target) |", []string{"≤ 16.0 KiB", "", "15.0 KiB ok"}},
		{plain, "| RSS/tunnel @9000 (tunnel target) |", []string{"≤ 16.0 KiB", "", "17.0 KiB **MISSED**"}},
		{plain, "| goroutines/tunnel (tunnel target) |", []string{"≤ 2.00", "", "2.00 ok"}},
		{plain, "| MB/s (tunnel target) |", []string{"≥ 1.00×", "", "1.05× ok"}},
		{plain, "| CPU/msg (tunnel target) |", []string{"≤ 1.00×", "", "0.90× ok"}},
		{plain, "| CPU/conn (tunnel target) |", []string{"≤ 0.85×", "", "— n/a"}},
		{plain, "| handshakes/s |", []string{"≥ 0.97×", "— n/a", "— n/a"}},
		{tls, "| RSS/tunnel @2000 (tunnel target) |", []string{"≤ 24.0 KiB", "", "23.0 KiB ok"}},
		{tls, "| RSS/tunnel @9000 (tunnel target) |", []string{"≤ 24.0 KiB", "", "25.0 KiB **MISSED**"}},
		{tls, "| goroutines/tunnel (tunnel target) |", []string{"≤ 2.00", "", "4.00 **MISSED**"}},
		{tls, "| MB/s (tunnel target) |", []string{"≥ 1.00×", "", "0.95× **MISSED**"}},
		{tls, "| CPU/msg (tunnel target) |", []string{"≤ 1.00×", "", "1.20× **MISSED**"}},
		{tls, "| p99 (tunnel target) |", []string{"≤ 1.05×", "", "— n/a"}},
	} {
		got := boundRow(t, out, c.heading, c.prefix)[1:]
		if strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("%s %s cells = %q, want %q", c.heading, c.prefix, got, c.want)
		}
	}
}

// Each mode's ratios are to bare Caddy in that mode: over TLS, half the
// plain handshake rate is level with bare Caddy over TLS, not a miss. The
// TLS table has no direct column (the backend has no TLS), and the raw
// samples tell the modes apart.
func TestReportModesApart(t *testing.T) {
	cfg := &config{reps: 1, dur: time.Second, tunnelSteps: []int{2000, 9000}, latencyRate: 2000, modes: []bool{false, true}}
	r := newResults(cfg)
	r.add("direct", mHandshakes, 4000)
	r.add("bare", mHandshakes, 2000)
	r.add("delegate", mHandshakes, 1800) // 0.90×: missed
	r.add("bare-tls", mHandshakes, 1000)
	r.add("delegate-tls", mHandshakes, 990) // 0.99× of bare over TLS: ok
	r.tlsParams["bare-tls"] = "TLS 1.3, TLS_AES_128_GCM_SHA256, X25519MLKEM768"
	out := r.report(modeTargets(t, "direct", "bare", "delegate"), cfg, "0 0 0", "0 0 0", time.Minute)

	if got := boundRow(t, out, "### Module against bare Caddy, plain", "| handshakes/s |"); got[2] != "0.90× **MISSED**" {
		t.Errorf("plain handshakes/s row = %q, want 0.90× **MISSED**", got)
	}
	if got := boundRow(t, out, "### Module against bare Caddy, TLS", "| handshakes/s |"); got[2] != "0.99× ok" {
		t.Errorf("TLS handshakes/s row = %q, want 0.99× ok", got)
	}
	plainHead := boundRow(t, out, "## Plain: ws:// and http://", "| metric |")
	tlsHead := boundRow(t, out, "## TLS: wss:// and https://", "| metric |")
	if want := []string{"metric", "direct", "caddy bare", "caddy+upgrade to"}; strings.Join(plainHead, "|") != strings.Join(want, "|") {
		t.Errorf("plain table columns %q, want %q", plainHead, want)
	}
	if want := []string{"metric", "caddy bare", "caddy+upgrade to"}; strings.Join(tlsHead, "|") != strings.Join(want, "|") {
		t.Errorf("TLS table columns %q, want %q", tlsHead, want)
	}
	if got := boundRow(t, out, "## TLS: wss:// and https://", "| handshakes/s (open"); got[1] != "1000 (1.00×)" || got[2] != "990 (0.99×)" {
		t.Errorf("TLS handshakes/s medians %q, want ratios to bare Caddy over TLS", got)
	}
	if !strings.Contains(out, "caddy bare: TLS 1.3, TLS_AES_128_GCM_SHA256, X25519MLKEM768") {
		t.Errorf("the negotiated TLS parameters are missing:\n%s", out)
	}
	if got := boundRow(t, out, "## Raw samples", "| handshakes/s | caddy+upgrade to (TLS) |"); got[2] != "990" {
		t.Errorf("raw TLS sample row %q", got)
	}
}

// One mode alone: no section of the other, and plain-only runs keep the
// table they always had.
func TestReportOneMode(t *testing.T) {
	cfg := &config{reps: 1, dur: time.Second, tunnelSteps: []int{2000, 9000}, latencyRate: 2000, modes: []bool{true}}
	r := newResults(cfg)
	r.add("bare-tls", mMBps, 100)
	r.add("delegate-tls", mMBps, 100)
	ts, err := instances([]string{"direct", "bare", "delegate"}, cfg.modes)
	if err != nil {
		t.Fatal(err)
	}
	out := r.report(ts, cfg, "0 0 0", "0 0 0", time.Minute)
	if strings.Contains(out, "## Plain") || strings.Contains(out, "| direct |") {
		t.Errorf("a TLS-only run reports plain figures or direct:\n%s", out)
	}
	if got := boundRow(t, out, "### Module against bare Caddy, TLS", "| MB/s (tunnel target) |"); got[2] != "1.00× ok" {
		t.Errorf("MB/s tunnel target row %q", got)
	}
}
