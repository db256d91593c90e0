// Package proc runs the child processes of the load tools
// (bench/cmd/wsbench and soak/cmd/soak: Caddy, nginx, HAProxy, the echo
// backend), each in a process group of its own so that a kill reaches
// whatever it forks (nginx's workers), and reads what /proc says about
// them. Linux only, as the tools are.
package proc

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

// Proc is a running child.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	done chan struct{}
}

// Options of Start.
type Options struct {
	CPU    string   // pin to this CPU list (taskset -c); "" for none
	Append bool     // append to the log instead of truncating it
	Env    []string // added to this process's environment
}

var (
	mu      sync.Mutex
	running = map[*Proc]bool{}
	pidFile string
)

// SetPIDFile names a file that lists the process groups of the running
// children, one a line, so that a calling script can kill them even if
// this process dies hard.
func SetPIDFile(path string) {
	mu.Lock()
	pidFile = path
	mu.Unlock()
}

// Start runs argv with its output to logPath. Pdeathsig kills the child if
// this process dies without cleaning up.
func Start(name, logPath string, opt Options, argv ...string) (*Proc, error) {
	flags := os.O_CREATE | os.O_WRONLY | os.O_TRUNC
	if opt.Append {
		flags = os.O_CREATE | os.O_WRONLY | os.O_APPEND
	}
	logf, err := os.OpenFile(logPath, flags, 0o644)
	if err != nil {
		return nil, err
	}
	if opt.CPU != "" {
		argv = append([]string{"taskset", "-c", opt.CPU}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), opt.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("%s: %v", name, err)
	}
	p := &Proc{Name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	mu.Lock()
	running[p] = true
	writePIDFileLocked()
	mu.Unlock()
	return p, nil
}

func writePIDFileLocked() {
	if pidFile == "" {
		return
	}
	var b strings.Builder
	for p := range running {
		fmt.Fprintf(&b, "%d\n", p.PID())
	}
	os.WriteFile(pidFile, []byte(b.String()), 0o644)
}

// PID is the child's process ID, also its process group's.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the child has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM to the group, then SIGKILL after a grace period.
func (p *Proc) Stop() {
	syscall.Kill(-p.PID(), syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(3 * time.Second):
	}
	p.Kill()
}

// Kill sends SIGKILL to the group (which may outlive its leader: nginx's
// workers) and waits for the leader to be reaped, so that its sockets are
// closed when Kill returns.
func (p *Proc) Kill() {
	syscall.Kill(-p.PID(), syscall.SIGKILL)
	p.reaped()
}

func (p *Proc) reaped() {
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
	mu.Lock()
	delete(running, p)
	writePIDFileLocked()
	mu.Unlock()
}

// KillAll kills every child group still running, all at once.
func KillAll() {
	list := All()
	for _, p := range list {
		syscall.Kill(-p.PID(), syscall.SIGKILL)
	}
	for _, p := range list {
		p.reaped()
	}
}

// All returns the children still running.
func All() []*Proc {
	mu.Lock()
	defer mu.Unlock()
	list := make([]*Proc, 0, len(running))
	for p := range running {
		list = append(list, p)
	}
	return list
}

// WaitListening waits until addr accepts TCP connections; p, if not nil,
// is the child that should be listening there.
func WaitListening(p *Proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p != nil && p.Exited() {
			return fmt.Errorf("%s exited before listening on %s", p.Name, addr)
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

// PortFree reports an error if something already listens on addr: a tool
// must not measure someone else's server.
func PortFree(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is already in use", addr)
	}
	return nil
}

// UserHZ is the unit of the CPU times in /proc (USER_HZ, 100 on Linux
// whatever the kernel's HZ).
const UserHZ = 100

// StatFields returns the fields of /proc/<pid>/stat after "(comm)":
// state, ppid, ... (field 3 of proc(5) is index 0); nil if pid is gone.
func StatFields(pid int) []string {
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

// CPUTicks is utime+stime of pid in USER_HZ ticks, all its threads (those
// gone included); ok is false if pid is gone.
func CPUTicks(pid int) (ticks uint64, ok bool) {
	f := StatFields(pid)
	if len(f) <= 12 {
		return 0, false
	}
	u, _ := strconv.ParseUint(f[11], 10, 64)
	k, _ := strconv.ParseUint(f[12], 10, 64)
	return u + k, true
}

// Descendants returns pid and every process below it.
func Descendants(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if f := StatFields(child); len(f) >= 2 {
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

// GroupCPUTicks sums CPUTicks over pid and all its descendants.
func GroupCPUTicks(pid int) uint64 {
	var total uint64
	for _, p := range Descendants(pid) {
		t, _ := CPUTicks(p)
		total += t
	}
	return total
}

// GroupCPUNanos is the CPU time of pid and all its descendants in
// nanoseconds, from the scheduler's per-thread counters
// (/proc/<pid>/task/<tid>/schedstat). Their resolution is what a few
// hundred milliseconds of CPU need: utime and stime count 10 ms ticks.
// Threads that exit take their time with them, so compare readings of
// processes whose threads live on (Go's runtime keeps its threads;
// nginx's and HAProxy's are fixed). ok is false where the kernel has no
// schedstat.
func GroupCPUNanos(pid int) (ns uint64, ok bool) {
	for _, p := range Descendants(pid) {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		if err != nil {
			continue
		}
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", p, t.Name()))
			if err != nil {
				continue
			}
			f := strings.Fields(string(b)) // on-CPU ns, wait ns, timeslices
			if len(f) < 1 {
				continue
			}
			v, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				continue
			}
			ns += v
			ok = true
		}
	}
	return ns, ok
}

// GroupRSSKiB sums VmRSS over pid and all its descendants.
func GroupRSSKiB(pid int) (int64, error) {
	var total int64
	seen := false
	for _, p := range Descendants(pid) {
		kib, err := StatusKiB(p, "VmRSS")
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

// StatusKiB reads a "<field>: <n> kB" line of /proc/<pid>/status, e.g.
// VmRSS (resident now) or VmHWM (the peak resident size so far). Kernel
// threads and zombies have no VmRSS: 0.
func StatusKiB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			if f := strings.Fields(rest); len(f) >= 1 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, nil
}

// LoadAvg is the 1, 5 and 15 minute load average, "?" if unknown.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
