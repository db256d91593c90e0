package main

import (
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/seedf05e/caddy-upgrade/bench/proc"
)

// cpuSample is a snapshot for telling this benchmark's CPU use from that
// of other processes on the machine (the VM is shared).
type cpuSample struct {
	at          time.Time
	busy, steal uint64 // all CPUs, clock ticks: user+nice+system, steal
	ours        uint64 // utime+stime of wsbench and every child group
}

func takeCPUSample() cpuSample {
	s := cpuSample{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
		n := func(i int) uint64 {
			if i < len(f) {
				v, _ := strconv.ParseUint(f[i], 10, 64)
				return v
			}
			return 0
		}
		s.busy = n(1) + n(2) + n(3)
		s.steal = n(8)
	}
	pids := proc.Descendants(os.Getpid())
	for _, p := range proc.All() {
		pids = append(pids, proc.Descendants(p.PID())...)
	}
	seen := map[int]bool{}
	for _, pid := range pids {
		if seen[pid] {
			continue
		}
		seen[pid] = true
		t, _ := proc.CPUTicks(pid)
		s.ours += t
	}
	return s
}

// foreignCPU is the share of all CPUs, in percent, that other processes
// used (and the hypervisor stole) between a and b.
func foreignCPU(a, b cpuSample, ncpu int) (other, steal float64) {
	total := b.at.Sub(a.at).Seconds() * proc.UserHZ * float64(ncpu)
	if total <= 0 {
		return 0, 0
	}
	busy := float64(b.busy-a.busy) - float64(b.ours-a.ours)
	return max(0, busy) / total * 100, float64(b.steal-a.steal) / total * 100
}
