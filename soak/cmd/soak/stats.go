package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"
)

// latencies collects durations; a soak records at most a few million, so
// keeping them all gives exact percentiles at little cost.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.d)
}

// percentiles returns the given percentiles (0-100) and the maximum.
func (l *latencies) percentiles(ps ...float64) (out []time.Duration, maxD time.Duration) {
	l.mu.Lock()
	s := slices.Clone(l.d)
	l.mu.Unlock()
	out = make([]time.Duration, len(ps))
	if len(s) == 0 {
		return out, 0
	}
	slices.Sort(s)
	for i, p := range ps {
		k := int(float64(len(s)-1) * p / 100)
		out[i] = s[k]
	}
	return out, s[len(s)-1]
}

func (l *latencies) summary() string {
	p, maxD := l.percentiles(50, 99)
	return fmt.Sprintf("n=%d p50=%v p99=%v max=%v", l.count(), round(p[0]), round(p[1]), round(maxD))
}

func round(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(10 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}

// failures keeps the count and the first few messages of what went wrong
// in a scenario; a scenario fails if there is any.
type failures struct {
	mu    sync.Mutex
	n     int
	kinds map[string]int
	first []string
}

const keepFailures = 12

func (f *failures) add(kind, format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if f.kinds == nil {
		f.kinds = map[string]int{}
	}
	f.kinds[kind]++
	if len(f.first) < keepFailures {
		f.first = append(f.first, kind+": "+fmt.Sprintf(format, args...))
	}
}

// of counts the failures of one kind.
func (f *failures) of(kind string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.kinds[kind]
}

// err summarises the failures, or is nil without any.
func (f *failures) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d failure(s) (%s):", f.n, formatCounts(f.kinds))
	for _, s := range f.first {
		b.WriteString("\n    " + s)
	}
	if f.n > len(f.first) {
		fmt.Fprintf(&b, "\n    ... and %d more", f.n-len(f.first))
	}
	return fmt.Errorf("%s", b.String())
}

// tally counts events by kind, e.g. how tunnels closed or which statuses
// handshakes got.
type tally struct {
	mu sync.Mutex
	m  map[string]int
}

func (t *tally) add(kind string) {
	t.mu.Lock()
	if t.m == nil {
		t.m = map[string]int{}
	}
	t.m[kind]++
	t.mu.Unlock()
}

func (t *tally) get(kind string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[kind]
}

func (t *tally) total() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, v := range t.m {
		n += v
	}
	return n
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) == 0 {
		return "none"
	}
	return formatCounts(t.m)
}

func formatCounts(m map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// peak tracks the largest value seen.
type peak struct {
	mu sync.Mutex
	v  int64
}

func (p *peak) see(v int64) {
	p.mu.Lock()
	p.v = max(p.v, v)
	p.mu.Unlock()
}

func (p *peak) get() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.v
}
