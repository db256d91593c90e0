package main

import (
	"fmt"
	"runtime"
	"strings"
	"time"
)

// scenarioResult is one scenario's outcome and figures.
type scenarioResult struct {
	title     string
	err       error // a failed assertion
	settleErr error // scenario 5 after this one
	elapsed   time.Duration
	notes     []string

	// Counted into the run's totals.
	tunnels  int64 // tunnels opened (handshakes answered 101)
	messages int64 // messages echoed
	reloads  int
	lost     int64 // sent and never echoed, by the end
	// echoes out of order or corrupted (each also fails its scenario)
	badEchoes int
	// most tunnels the scenario held open at once, by its clients' count
	concurrent int64

	peakRSSKiB, peakGoroutines int64
	after                      usage
}

// note records a figure and prints it as the soak goes.
func (r *scenarioResult) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	r.notes = append(r.notes, s)
	logf("  %s", s)
}

type results struct {
	profile               string
	base                  usage
	scenarios             []*scenarioResult
	elapsed               time.Duration
	loadBefore, loadAfter string
	hwmKiB                int64 // Caddy's peak RSS over the run (VmHWM)
	peakGoroutines        int64
}

// counts says how many scenarios passed and failed, scenario 5's check
// after each included.
func (res *results) counts() (passed, failed int) {
	for _, r := range res.scenarios {
		if r.err != nil || r.settleErr != nil {
			failed++
		} else {
			passed++
		}
	}
	return passed, failed
}

func (res *results) markdown() string {
	var b strings.Builder
	var tunnels, messages, lost, concurrent int64
	reloads, bad := 0, 0
	for _, r := range res.scenarios {
		bad += r.badEchoes
		concurrent = max(concurrent, r.concurrent)
		tunnels += r.tunnels
		messages += r.messages
		lost += r.lost
		reloads += r.reloads
	}
	fmt.Fprintf(&b, "# Soak results (%s)\n\n", res.profile)
	fmt.Fprintf(&b, "%s, %s, GOMAXPROCS %d, load average %s before and %s after; %v in all.\n\n",
		time.Now().UTC().Format("2006-01-02 15:04 UTC"), runtime.Version(), runtime.GOMAXPROCS(0),
		res.loadBefore, res.loadAfter, res.elapsed.Round(time.Second))
	fmt.Fprintf(&b, "| figure | value |\n|---|---:|\n")
	fmt.Fprintf(&b, "| tunnels opened | %d |\n", tunnels)
	fmt.Fprintf(&b, "| most tunnels open at once | %d |\n", concurrent)
	fmt.Fprintf(&b, "| messages echoed and verified | %d |\n", messages)
	fmt.Fprintf(&b, "| config reloads | %d |\n", reloads)
	fmt.Fprintf(&b, "| messages never echoed | %d |\n", lost)
	fmt.Fprintf(&b, "| echoes out of order or corrupted | %d |\n", bad)
	fmt.Fprintf(&b, "| Caddy peak RSS (VmHWM) | %.0f MiB |\n", float64(res.hwmKiB)/1024)
	fmt.Fprintf(&b, "| Caddy peak goroutines (sampled every 2 s) | %d |\n", res.peakGoroutines)
	fmt.Fprintf(&b, "| Caddy baseline | %d fds, %d goroutines |\n\n", res.base.fds, res.base.goroutines)

	fmt.Fprintf(&b, "| scenario | result | time | peak RSS | peak goroutines | after (fds, goroutines) |\n|---|---|---:|---:|---:|---:|\n")
	for _, r := range res.scenarios {
		result := "pass"
		if r.err != nil || r.settleErr != nil {
			result = "**FAIL**"
		}
		fmt.Fprintf(&b, "| %s | %s | %v | %.0f MiB | %d | %d, %d |\n", r.title, result, r.elapsed.Round(time.Second),
			float64(r.peakRSSKiB)/1024, r.peakGoroutines, r.after.fds, r.after.goroutines)
	}
	for _, r := range res.scenarios {
		fmt.Fprintf(&b, "\n## %s\n\n", r.title)
		for _, n := range r.notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
		if err := joinErrs(r.err, r.settleErr); err != "" {
			fmt.Fprintf(&b, "- **FAIL**: %s\n", strings.ReplaceAll(err, "\n", "\n  "))
		}
	}
	return b.String()
}
