package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process (proxy or backend), started in its own process
// group so that it and everything it forks (nginx's worker) can be killed
// together.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

var (
	procsMu sync.Mutex
	procs   = map[*proc]bool{}
	// pidFile lists the process groups of running children, one a line, so
	// that the calling script can kill them even if this process dies hard.
	pidFile string
)

// startProc runs argv pinned to cpu (taskset -c), output to logPath.
func startProc(name, cpu, logPath string, env []string, argv ...string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args := append([]string{"-c", cpu}, argv...)
	cmd := exec.Command("taskset", args...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	procsMu.Lock()
	procs[p] = true
	writePidFileLocked()
	procsMu.Unlock()
	return p, nil
}

func writePidFileLocked() {
	if pidFile == "" {
		return
	}
	var b strings.Builder
	for p := range procs {
		fmt.Fprintf(&b, "%d\n", p.cmd.Process.Pid)
	}
	os.WriteFile(pidFile, []byte(b.String()), 0o644)
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the group, then SIGKILL after a grace period.
func (p *proc) stop() {
	pgid := p.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
	}
	// The group may outlive its leader (nginx workers): kill it whatever.
	syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
	}
	procsMu.Lock()
	delete(procs, p)
	writePidFileLocked()
	procsMu.Unlock()
}

// killAll kills every child group still running.
func killAll() {
	procsMu.Lock()
	list := make([]*proc, 0, len(procs))
	for p := range procs {
		list = append(list, p)
	}
	procsMu.Unlock()
	for _, p := range list {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	}
	for _, p := range list {
		select {
		case <-p.done:
		case <-time.After(2 * time.Second):
		}
	}
	procsMu.Lock()
	procs = map[*proc]bool{}
	writePidFileLocked()
	procsMu.Unlock()
}

// waitListening waits until addr accepts TCP connections.
func waitListening(p *proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p != nil && p.exited() {
			return fmt.Errorf("%s exited before listening on %s", p.name, addr)
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("nothing listening on %s after %v", addr, timeout)
}

// portFree reports an error if something already listens on addr.
func portFree(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is already in use", addr)
	}
	return nil
}

// descendants returns pid and every process below it.
func descendants(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := procStatFields(child); len(f) >= 2 {
			ppid, _ := strconv.Atoi(f[1])
			children[ppid] = append(children[ppid], child)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		out = append(out, p)
		queue = append(queue, children[p]...)
	}
	return out
}

// procStatFields returns the fields of /proc/<pid>/stat after "(comm)":
// state, ppid, ... (field 3 of proc(5) is index 0).
func procStatFields(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// groupRSSKiB sums VmRSS over pid and all its descendants.
func groupRSSKiB(pid int) (int64, error) {
	var total int64
	seen := false
	for _, p := range descendants(pid) {
		kib, err := vmRSSKiB(p)
		if err != nil {
			continue
		}
		seen = true
		total += kib
	}
	if !seen {
		return 0, errors.New("no process left to measure")
	}
	return total, nil
}

// userHZ is the unit of the CPU times in /proc/<pid>/stat (USER_HZ,
// 100 on Linux whatever the kernel's HZ).
const userHZ = 100

// groupCPUTicks sums utime+stime, in USER_HZ ticks, over pid and all its
// descendants (nginx's workers): the CPU time the proxy has used so far.
// Each process's figure covers all its threads, those gone included.
func groupCPUTicks(pid int) uint64 {
	var total uint64
	for _, p := range descendants(pid) {
		if f := procStatFields(p); len(f) > 12 {
			u, _ := strconv.ParseUint(f[11], 10, 64)
			k, _ := strconv.ParseUint(f[12], 10, 64)
			total += u + k
		}
	}
	return total
}

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
	pids := descendants(os.Getpid())
	procsMu.Lock()
	for p := range procs {
		pids = append(pids, descendants(p.pid())...)
	}
	procsMu.Unlock()
	seen := map[int]bool{}
	for _, pid := range pids {
		if seen[pid] {
			continue
		}
		seen[pid] = true
		if f := procStatFields(pid); len(f) > 12 {
			u, _ := strconv.ParseUint(f[11], 10, 64)
			k, _ := strconv.ParseUint(f[12], 10, 64)
			s.ours += u + k
		}
	}
	return s
}

// foreignCPU is the share of all CPUs, in percent, that other processes
// used (and the hypervisor stole) between a and b.
func foreignCPU(a, b cpuSample, ncpu int) (other, steal float64) {
	total := b.at.Sub(a.at).Seconds() * userHZ * float64(ncpu)
	if total <= 0 {
		return 0, 0
	}
	busy := float64(b.busy-a.busy) - float64(b.ours-a.ours)
	return max(0, busy) / total * 100, float64(b.steal-a.steal) / total * 100
}

func vmRSSKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) >= 1 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, nil // kernel threads, zombies
}
