package main

// CPU accounting per scenario: on a shared 2-core machine a latency figure
// means little without knowing who had the cores.

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/seedf05e/caddy-upgrade/bench/proc"
)

// cpuSnapshot holds CPU times in clock ticks: the machine's busy time over
// every core, and each watched process's utime+stime.
type cpuSnapshot struct {
	at    time.Time
	busy  uint64
	procs map[string]uint64
	pids  map[string]int
}

// takeCPU reads /proc/stat and the watched processes.
func takeCPU(pids map[string]int) cpuSnapshot {
	s := cpuSnapshot{at: time.Now(), procs: map[string]uint64{}, pids: pids}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
		for i, v := range f[1:] {
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			n, _ := strconv.ParseUint(v, 10, 64)
			s.busy += n
		}
	}
	for name, pid := range pids {
		if t, ok := proc.CPUTicks(pid); ok {
			s.procs[name] = t
		}
	}
	return s
}

// cpuSince says how many cores each watched process used since a, and
// what the rest of the machine used. A process that was replaced in
// between (the backend in scenario 3) is left out.
func cpuSince(a cpuSnapshot, pids map[string]int) string {
	b := takeCPU(pids)
	wall := b.at.Sub(a.at).Seconds() * proc.UserHZ
	if wall <= 0 {
		return "?"
	}
	var parts []string
	var ours uint64
	for _, name := range []string{"caddy", "echo", "soak"} {
		t0, ok0 := a.procs[name]
		t1, ok1 := b.procs[name]
		if !ok0 || !ok1 || a.pids[name] != b.pids[name] {
			continue
		}
		ours += t1 - t0
		parts = append(parts, fmt.Sprintf("%s %.2f", name, float64(t1-t0)/wall))
	}
	other := (float64(b.busy-a.busy) - float64(ours)) / wall
	parts = append(parts, fmt.Sprintf("everything else %.2f", max(0, other)))
	return "CPU in cores: " + strings.Join(parts, ", ")
}

// watched are the processes whose CPU the report shows.
func (e *env) watched() map[string]int {
	return map[string]int{"caddy": e.caddy.PID(), "echo": e.backend.PID(), "soak": os.Getpid()}
}
