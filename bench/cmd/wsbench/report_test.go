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
