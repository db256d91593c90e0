package main

// Caddy's log is scanned after each scenario for what no client would see
// directly: running out of file descriptors (Caddy then fails dials and
// accepts, which clients only see as refused handshakes they retry) and
// recovered panics.

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// logProblems are substrings of Caddy log lines that fail a scenario.
var logProblems = []string{"too many open files", "panic"}

// logOffset is the size of Caddy's log now: the next scan starts there.
func (e *env) logOffset() int64 {
	fi, err := os.Stat(filepath.Join(e.work, "caddy.log"))
	if err != nil {
		return 0
	}
	return fi.Size()
}

// scanLog counts the problem lines Caddy logged since offset and returns
// an error naming them, with the first one.
func (e *env) scanLog(offset int64) error {
	f, err := os.Open(filepath.Join(e.work, "caddy.log"))
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return err
	}
	counts := map[string]int{}
	first := ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, p := range logProblems {
			if strings.Contains(line, p) {
				counts[p]++
				if first == "" {
					first = line
				}
			}
		}
	}
	if len(counts) == 0 {
		return sc.Err()
	}
	if len(first) > 400 {
		first = first[:400] + "..."
	}
	return fmt.Errorf("errors in the Caddy log: %s; first: %s", formatCounts(counts), first)
}
