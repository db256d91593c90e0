package upgrade

// Tests of the lean copy loops (engine.go) inside a real Caddy: bytes
// arrive intact in both modes, including bytes the backend sent in the
// same packet as its 101; idle tunnels hold no copy buffer; and the
// module's own heap per idle tunnel stays under a stated bound. Linux
// only: elsewhere the loops hold a buffer while they wait (socket_other.go)
// and tunnels stay with Caddy's reverse proxy (poller_other.go).

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// loadLeanRoutes puts one backend behind both modes: /proxy/* delegates
// to the module's proxy, /policy/* checks and leaves the copy to the
// route's own reverse_proxy. With logged, the site has an access log, so
// Caddy wraps hijacked connections to count their bytes.
func loadLeanRoutes(t *testing.T, backend string, logged bool) {
	t.Helper()
	loadCaddyfile(t, leanSites(backend, logged))
}

func leanSites(backend string, logged bool) string {
	log := ""
	if logged {
		log = "log {\n\t\toutput discard\n\t}"
	}
	return site(fmt.Sprintf(`
	%[2]s
	handle /proxy/* {
		upgrade websocket foo {
			to %[1]s
		}
	}
	handle /policy/* {
		upgrade websocket foo
		reverse_proxy %[1]s
	}`, backend, log))
}

// openLeanTunnel opens a foo tunnel on path and reads the greeting.
func openLeanTunnel(t testing.TB, path string) *rawClient {
	t.Helper()
	c := dialRaw(t)
	requireStatus(t, c.Do(rawRequest("GET", path, "Connection: Upgrade", "Upgrade: foo")), http.StatusSwitchingProtocols)
	got := make([]byte, len(greeting))
	c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
	if _, err := io.ReadFull(c.R, got); err != nil || string(got) != greeting {
		t.Fatalf("greeting sent with the 101: got %q, %v", got, err)
	}
	c.Conn.SetReadDeadline(time.Time{})
	return c
}

// waitBufsOut waits until the borrowed copy buffers are back to want.
func waitBufsOut(t *testing.T, want int64, what string) {
	t.Helper()
	if !pollUntil(3*time.Second, func() bool { return copyBufsOut.Load() == want }) {
		t.Fatalf("%s: %d copy buffers borrowed, want %d", what, copyBufsOut.Load(), want)
	}
}

// TestLeanTunnelEchoIntegrity: 4 MiB of random bytes go through each mode
// and come back unchanged, the greeting the backend sent with its 101
// first; the loops give every buffer back once the tunnel is quiet.
func TestLeanTunnelEchoIntegrity(t *testing.T) {
	backend := newSwitchBackend(t)
	loadLeanRoutes(t, backend.addr(), true)
	guardLeaks(t)
	base := copyBufsOut.Load()
	for _, route := range []string{"/proxy/x", "/policy/x"} {
		t.Run(route, func(t *testing.T) {
			c := openLeanTunnel(t, route)
			data := make([]byte, 4<<20)
			rand.Read(data)
			werr := make(chan error, 1)
			go func() {
				// Uneven writes, so chunk edges fall anywhere.
				rest := data
				for i := 1; len(rest) > 0; i++ {
					n := min(len(rest), 1+(i*7919)%65536)
					if _, err := c.Conn.Write(rest[:n]); err != nil {
						werr <- err
						return
					}
					rest = rest[n:]
				}
				werr <- nil
			}()
			got := make([]byte, len(data))
			c.Conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadFull(c.R, got); err != nil {
				t.Fatalf("reading the echo: %v", err)
			}
			if err := <-werr; err != nil {
				t.Fatalf("writing: %v", err)
			}
			if !bytes.Equal(got, data) {
				i := 0
				for i < len(got) && got[i] == data[i] {
					i++
				}
				t.Fatalf("echo differs from what was sent at byte %d of %d", i, len(data))
			}
			waitBufsOut(t, base, "quiet tunnel")
			c.Conn.Close()
		})
	}
}

// TestLeanTunnelIdleHoldsNoBuffer: 100 idle tunnels per mode, each having
// carried bytes both ways, hold no copy buffer (Caddy's own copier holds
// 64 KiB per tunnel).
func TestLeanTunnelIdleHoldsNoBuffer(t *testing.T) {
	backend := newSwitchBackend(t)
	for _, logged := range []bool{false, true} {
		loadLeanRoutes(t, backend.addr(), logged)
		if logged {
			guardLeaks(t)
		}
		base := copyBufsOut.Load()
		for _, route := range []string{"/proxy/x", "/policy/x"} {
			what := fmt.Sprintf("%s (access log %v): 100 idle tunnels", route, logged)
			var cs []*rawClient
			for range 100 {
				c := openLeanTunnel(t, route)
				c.Send("ping")
				got := make([]byte, 4)
				c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
				if _, err := io.ReadFull(c.R, got); err != nil || string(got) != "ping" {
					t.Fatalf("%s: echo %q, %v", what, got, err)
				}
				cs = append(cs, c)
			}
			waitBufsOut(t, base, what)
			for _, c := range cs {
				c.Conn.Close()
			}
		}
	}
}

// moduleHeapBound is what the module itself may keep on the heap per idle
// tunnel: the tunnel and its wrappers, the request's context and
// expectation, and its timers; about 1.5 KiB measured, so a regression
// that pins a buffer (a 4 KiB one at least) fails.
const moduleHeapBound = 3 << 10

// TestLeanIdleTunnelsModuleHeap: 1,000 idle tunnels through the module's
// proxy keep under moduleHeapBound each of heap allocated by the module's
// own code, counted exactly with a heap profile at rate 1.
func TestLeanIdleTunnelsModuleHeap(t *testing.T) {
	st := measureIdleTunnels(t, 1000)
	t.Logf("1000 idle tunnels: module heap %.0f B/tunnel, whole process heap %.0f B/tunnel", st.modulePer, st.heapPer)
	if st.modulePer > moduleHeapBound {
		t.Fatalf("module heap %.0f B per idle tunnel, bound %d B; top sites:\n%s", st.modulePer, moduleHeapBound, st.top)
	}
}

// BenchmarkIdleTunnels reports the heap kept per idle tunnel, the
// module's own and the whole process's (Caddy, and this test's clients and
// backend), over 1,000 tunnels:
//
//	go test -run '^$' -bench IdleTunnels -benchtime 1x .
func BenchmarkIdleTunnels(b *testing.B) {
	var st idleStats
	for b.Loop() {
		st = measureIdleTunnels(b, 1000)
	}
	b.ReportMetric(st.modulePer, "module-B/tunnel")
	b.ReportMetric(st.heapPer, "heap-B/tunnel")
}

type idleStats struct {
	modulePer, heapPer float64
	top                string
}

// measureIdleTunnels opens n idle tunnels through the module's proxy and
// compares the heap before and after, with every allocation sampled.
func measureIdleTunnels(t testing.TB, n int) idleStats {
	backend := newSwitchBackend(t)
	leanConfig := leanSites(backend.addr(), true)
	if tt, ok := t.(*testing.T); ok {
		loadCaddyfile(tt, leanConfig)
	} else {
		loadBenchCaddyfile(t.(*testing.B), leanConfig)
	}
	rate := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	defer func() { runtime.MemProfileRate = rate }()
	openLeanTunnel(t, "/proxy/warm").Conn.Close()

	heap0, mod0, _ := heapNow()
	cs := make([]*rawClient, 0, n)
	for range n {
		cs = append(cs, openLeanTunnel(t, "/proxy/x"))
	}
	heap1, mod1, top := heapNow()
	for _, c := range cs {
		c.Conn.Close()
	}
	return idleStats{
		modulePer: float64(mod1-mod0) / float64(n),
		heapPer:   float64(heap1-heap0) / float64(n),
		top:       top,
	}
}

// heapNow returns the heap in use and the part of it the module's own code
// allocated: live bytes whose allocation's first frame outside the runtime
// and the standard library is in this package (so context.WithCancel
// called by the module counts; net/http called by Caddy does not). top
// lists the module's largest sites.
func heapNow() (heap, module int64, top string) {
	// The profile is as of the last completed GC cycle, and sync.Pool
	// keeps its contents through one: three make it current.
	for range 3 {
		runtime.GC()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var recs []runtime.MemProfileRecord
	for {
		n, ok := runtime.MemProfile(recs, false)
		if ok {
			recs = recs[:n]
			break
		}
		recs = make([]runtime.MemProfileRecord, n+64)
	}
	sites := map[string]int64{}
	for _, r := range recs {
		f := allocatingFrame(r.Stack())
		if strings.HasPrefix(f.Function, modulePath) && !strings.HasSuffix(f.File, "_test.go") {
			module += r.InUseBytes()
			sites[f.Function] += r.InUseBytes()
		}
	}
	var b strings.Builder
	for fn, n := range sites {
		if n > 0 {
			fmt.Fprintf(&b, "  %8d B  %s\n", n, fn)
		}
	}
	return int64(ms.HeapInuse), module, b.String()
}

const modulePath = "github.com/seedf05e/caddy-upgrade."

// allocatingFrame is the first frame of the stack that is neither the
// runtime's nor the standard library's.
func allocatingFrame(stack []uintptr) runtime.Frame {
	frames := runtime.CallersFrames(stack)
	for {
		f, more := frames.Next()
		// A path whose first element has a dot is not the standard
		// library's; names without a slash are (or the runtime's).
		if first, _, slash := strings.Cut(f.Function, "/"); slash && strings.Contains(first, ".") {
			return f
		}
		if !more {
			return runtime.Frame{}
		}
	}
}
