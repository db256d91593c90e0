package main

// Open-file limits and counts (the child processes themselves: package
// github.com/seedf05e/caddy-upgrade/bench/proc).

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// openFDs counts the file descriptors a process holds.
func openFDs(pid int) (int, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	return len(entries), nil
}

// nofileLimit reads the soft "Max open files" limit of a process.
func nofileLimit(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			if f := strings.Fields(rest); len(f) >= 1 {
				return strconv.Atoi(f[0])
			}
		}
	}
	return 0, fmt.Errorf("no open files limit in /proc/%d/limits", pid)
}

// raiseNofile lifts this process's soft RLIMIT_NOFILE to the hard limit.
// Children inherit it (Go's runtime would also do this for itself, but the
// soak states it rather than rely on that).
func raiseNofile() (int, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return 0, err
		}
	}
	return int(rl.Cur), nil
}
