package proc

import (
	"os"
	"testing"
)

// The scheduler's nanoseconds and /proc's ticks count the same CPU time:
// once this process has burnt two more ticks, at least one tick's worth
// (10 ms) must show in GroupCPUNanos too.
func TestGroupCPUNanosFollowsTicks(t *testing.T) {
	pid := os.Getpid()
	ns0, ok := GroupCPUNanos(pid)
	if !ok {
		t.Fatal("no schedstat for this process")
	}
	t0, ok := CPUTicks(pid)
	if !ok {
		t.Fatal("no /proc/<pid>/stat for this process")
	}
	x := uint64(1)
	for {
		for range 1 << 20 {
			x = x*6364136223846793005 + 1442695040888963407
		}
		if t1, _ := CPUTicks(pid); t1 >= t0+2 {
			break
		}
	}
	ns1, _ := GroupCPUNanos(pid)
	if ns1-ns0 < 1e9/UserHZ {
		t.Errorf("two ticks of CPU (%d) but %d ns in schedstat", x&1, ns1-ns0)
	}
}
