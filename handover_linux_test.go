package upgrade

// Tests of the hand-over (tunnel.go) inside a real Caddy: once a tunnel
// through the delegating route is open, Caddy's handler has returned and
// the tunnel idles on the shared poller with no goroutine and no buffer,
// over plain TCP and over TLS; it still counts on its upstream (least_conn
// balances on it); it closes on stream_timeout and, after
// stream_close_delay, on a reload; and it logs one `tunnel closed` line.
// Linux only: the shared poller needs epoll (poller_other.go), and
// elsewhere tunnels stay with Caddy's reverse proxy.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// handOverRoutes is a delegating route and a policy-only one to backend.
func handOverRoutes(backend, proxyExtra string) string {
	return fmt.Sprintf(`
	handle /proxy/* {
		upgrade websocket foo {
			to %[1]s
			%[2]s
		}
	}
	handle /policy/* {
		upgrade websocket foo
		reverse_proxy %[1]s
	}`, backend, proxyExtra)
}

// moduleFrames mark the module's own goroutines: the shared poller and
// flows moving bytes.
var moduleFrames = []string{
	"caddy-upgrade.(*poller).wait",
	"caddy-upgrade.(*flow).run",
}

// TestHandOverIdleTunnels: 100 idle tunnels through the delegating route,
// over plain TCP and over TLS, hold no goroutine of Caddy's handler or
// copiers, at most the one of the shared poller, and no copy buffer; they
// still carry bytes intact, and once closed leave nothing behind. The
// policy-only route keeps Caddy's copiers (the control: the count sees
// them).
func TestHandOverIdleTunnels(t *testing.T) {
	backend := newSwitchBackend(t)
	loadH23Routes(t, handOverRoutes(backend.addr(), ""))
	guardLeaks(t)
	const n = 100
	for _, tc := range []struct {
		name string
		dial func(testing.TB) *rawClient
	}{{"plain", dialRaw}, {"tls", dialTLSRaw}} {
		t.Run(tc.name, func(t *testing.T) {
			cs := make([]*rawClient, n)
			for i := range cs {
				cs[i] = openFoo(t, tc.dial(t), fmt.Sprintf("/proxy/%d", i))
			}
			if !pollUntil(3*time.Second, func() bool { return goroutinesWith(handlerFrames...) == 0 }) {
				t.Fatalf("%d goroutines of Caddy's handler or copiers hold %d idle tunnels", goroutinesWith(handlerFrames...), n)
			}
			if !pollUntil(3*time.Second, func() bool { return goroutinesWith(moduleFrames...) <= 1 }) {
				t.Fatalf("%d goroutines of the module hold %d idle tunnels, want at most the shared poller's", goroutinesWith(moduleFrames...), n)
			}
			waitBufsOut(t, 0, "idle owned tunnels")
			for _, i := range []int{0, n / 2, n - 1} {
				echoCheck(t, cs[i], 200<<10)
			}
			waitBufsOut(t, 0, "owned tunnels idle again")

			policy := openFoo(t, tc.dial(t), "/policy/control")
			if !pollUntil(3*time.Second, func() bool { return goroutinesWith(handlerFrames...) > 0 }) {
				t.Fatalf("the policy-only tunnel shows no goroutine of Caddy's: the count is blind")
			}
			echoCheck(t, policy, 1000)
			policy.Conn.Close()
			for _, c := range cs {
				c.Conn.Close()
			}
			if !pollUntil(5*time.Second, func() bool { return goroutinesWith(moduleFrames...) == 0 && goroutinesWith(handlerFrames...) == 0 }) {
				t.Fatalf("after closing: %d module goroutines, %d of Caddy's handler", goroutinesWith(moduleFrames...), goroutinesWith(handlerFrames...))
			}
		})
	}
}

// countingSwitchBackend is a switchBackend that counts its open
// connections: with one tunnel per connection, the tunnels it carries.
func countingSwitchBackend(t testing.TB) (addr string, open *atomic.Int32) {
	open = new(atomic.Int32)
	ln := serveRaw(t, func(c net.Conn, _ int) {
		open.Add(1)
		defer open.Add(-1)
		handle101(c)
	})
	return ln.Addr().String(), open
}

// settleUpstreamRequests waits until the upstreams' num_requests add up
// to want: for a moment after each switch, Caddy's handler still holds
// its own count beside the module's, and a tunnel counts twice; least_conn
// picking then would see more than the open tunnels.
func settleUpstreamRequests(t *testing.T, want int) {
	t.Helper()
	var got map[string]int
	if !pollUntil(3*time.Second, func() bool {
		got = adminUpstreamRequests(t)
		sum := 0
		for _, n := range got {
			sum += n
		}
		return sum == want
	}) {
		t.Fatalf("num_requests %v do not add up to the %d open tunnels", got, want)
	}
}

// TestHandOverCountsOnUpstream: an owned tunnel is an active request on
// its upstream for its whole life, as in stock Caddy: the admin API's
// num_requests sees it, and least_conn sends new tunnels to the backend
// with fewer open ones.
func TestHandOverCountsOnUpstream(t *testing.T) {
	a, openA := countingSwitchBackend(t)
	b, openB := countingSwitchBackend(t)
	loadCaddyfile(t, site(fmt.Sprintf(`
	handle /lb/* {
		upgrade foo {
			to %s %s
			lb_policy least_conn
		}
	}`, a, b)))

	var onA []*rawClient
	for i := range 4 {
		before := openA.Load()
		c := openFoo(t, dialRaw(t), fmt.Sprintf("/lb/%d", i))
		if openA.Load() > before {
			onA = append(onA, c)
		}
		settleUpstreamRequests(t, i+1)
	}
	if openA.Load() != 2 || openB.Load() != 2 {
		t.Fatalf("4 tunnels with least_conn: %d on a, %d on b; want 2 and 2", openA.Load(), openB.Load())
	}
	// Caddy's handler lets go of its own count a moment after the switch.
	var got map[string]int
	if !pollUntil(3*time.Second, func() bool { got = adminUpstreamRequests(t); return got[a] == 2 && got[b] == 2 }) {
		t.Fatalf("admin API num_requests %v with 2 open tunnels on each of %s and %s", got, a, b)
	}
	// Close both tunnels on a: the next two must go to a.
	for _, c := range onA {
		echoCheck(t, c, 10)
		c.Conn.Close()
	}
	if !pollUntil(3*time.Second, func() bool { return openA.Load() == 0 }) {
		t.Fatalf("a still has %d open tunnels after its clients closed", openA.Load())
	}
	if !pollUntil(3*time.Second, func() bool { return adminUpstreamRequests(t)[a] == 0 }) {
		t.Fatalf("num_requests of %s stays %d with no tunnel open there", a, adminUpstreamRequests(t)[a])
	}
	bBefore := openB.Load()
	for i := range 2 {
		openFoo(t, dialRaw(t), fmt.Sprintf("/lb/new%d", i))
		settleUpstreamRequests(t, int(bBefore)+i+1)
	}
	if openA.Load() != 2 || openB.Load() != bBefore {
		t.Fatalf("least_conn: the 2 new tunnels went %d to a (had 0) and %d to b (had %d); want both on a",
			openA.Load(), openB.Load()-bBefore, bBefore)
	}
	if !pollUntil(3*time.Second, func() bool { got = adminUpstreamRequests(t); return got[a] == 2 && got[b] == int(bBefore) }) {
		t.Fatalf("admin API num_requests %v, want %d on %s and %d on %s", got, 2, a, bBefore, b)
	}
}

// closedLine is a `tunnel closed` log line.
type closedLine struct {
	Msg       string  `json:"msg"`
	Protocol  string  `json:"protocol"`
	Upstream  string  `json:"upstream"`
	Duration  float64 `json:"duration"`
	BytesUp   int64   `json:"bytes_up"`
	BytesDown int64   `json:"bytes_down"`
	Reason    string  `json:"reason"`
}

// logConfig is a JSON config with routes on the HTTP port whose module
// log (info and up) goes to file.
func logConfig(routes, file string) string {
	c := harnessJSONConfig(routes, "")
	return strings.Replace(c, `"logging": {"logs": {`, fmt.Sprintf(
		`"logging": {"logs": {"upgrade": {"level": "INFO", "include": ["http.handlers.upgrade"], "writer": {"output": "file", "filename": %q}, "encoder": {"format": "json"}},`, file), 1)
}

// readClosedLines returns the `tunnel closed` lines of the log file.
func readClosedLines(t *testing.T, file string) []closedLine {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []closedLine
	for _, l := range bytes.Split(data, []byte("\n")) {
		var c closedLine
		if json.Unmarshal(l, &c) == nil && c.Msg == "tunnel closed" {
			out = append(out, c)
		}
	}
	return out
}

// TestHandOverClosedLogAndTimeouts: an owned tunnel logs one `tunnel
// closed` line with its protocol, upstream, duration, bytes each way and
// the reason: the client closing, the proxy's stream_timeout, the
// module's idle_timeout.
func TestHandOverClosedLogAndTimeouts(t *testing.T) {
	backend := newSwitchBackend(t)
	file := filepath.Join(t.TempDir(), "upgrade.log")
	loadCaddyJSON(t, logConfig(fmt.Sprintf(`[
	{"match": [{"path": ["/plain/*"]}], "handle": [{"handler": "upgrade", "protocols": ["foo"],
		"proxy": {"handler": "reverse_proxy", "upstreams": [{"dial": %[1]q}]}}]},
	{"match": [{"path": ["/stream/*"]}], "handle": [{"handler": "upgrade", "protocols": ["foo"],
		"proxy": {"handler": "reverse_proxy", "stream_timeout": "300ms", "upstreams": [{"dial": %[1]q}]}}]},
	{"match": [{"path": ["/idle/*"]}], "handle": [{"handler": "upgrade", "protocols": ["foo"], "idle_timeout": "300ms",
		"proxy": {"handler": "reverse_proxy", "upstreams": [{"dial": %[1]q}]}}]}
]`, backend.addr()), file))

	c := openFoo(t, dialRaw(t), "/plain/x")
	echoCheck(t, c, 1000)
	c.Conn.Close()

	for _, path := range []string{"/stream/x", "/idle/x"} {
		c := openFoo(t, dialRaw(t), path)
		start := time.Now()
		if _, closed := c.ReadUntilClosed(3 * time.Second); !closed {
			t.Fatalf("%s: tunnel still open after 3s", path)
		}
		if d := time.Since(start); d < 250*time.Millisecond {
			t.Errorf("%s: tunnel closed after %v, before its 300ms", path, d)
		}
	}
	var lines []closedLine
	if !pollUntil(3*time.Second, func() bool { lines = readClosedLines(t, file); return len(lines) == 3 }) {
		t.Fatalf("want 3 tunnel closed lines, got %+v", lines)
	}
	byReason := map[string]closedLine{}
	for _, l := range lines {
		if l.Protocol != "foo" || l.Upstream != backend.addr() || l.Duration <= 0 {
			t.Errorf("line %+v: want protocol foo, upstream %s, a duration", l, backend.addr())
		}
		byReason[l.Reason] = l
	}
	want := int64(len(greeting))
	if l, ok := byReason["client closed"]; !ok || l.BytesUp != 1000 || l.BytesDown != 1000+want {
		t.Errorf("client closed line %+v: want bytes_up 1000, bytes_down %d", l, 1000+want)
	}
	for _, r := range []string{"stream_timeout", "idle_timeout"} {
		if l, ok := byReason[r]; !ok || l.BytesDown != want {
			t.Errorf("no %s line with bytes_down %d in %+v", r, want, lines)
		}
	}
}

// TestHandOverReloadCloseDelay: a reload leaves an owned WebSocket open
// for the old proxy's stream_close_delay, carrying messages, then closes
// it with a close frame (1001, going away), and logs reason reload.
func TestHandOverReloadCloseDelay(t *testing.T) {
	backend := newRecordingBackend(t, answerEcho())
	file := filepath.Join(t.TempDir(), "upgrade.log")
	config := func(version string) string {
		return logConfig(fmt.Sprintf(`[
	{"match": [{"path": ["/ws/*"]}], "handle": [{"handler": "upgrade", "protocols": ["websocket"],
		"proxy": {"handler": "reverse_proxy", "stream_close_delay": "1s", "upstreams": [{"dial": %q}]}}]},
	{"handle": [{"handler": "static_response", "body": %q}]}
]`, backend.Addr(), version), file)
	}
	loadCaddyJSON(t, config("A"))
	c := mustDialWebSocket(t, "/ws/x")
	wsEcho(t, c, "before reload")
	reloaded := time.Now()
	opsPostLoad(t, config("B"), "application/json", false)
	if res := rawDo(t, rawRequest("GET", "/version")); res.Body != "B" {
		t.Fatalf("config B not running: %q", res.Body)
	}
	wsEcho(t, c, "during stream_close_delay")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := c.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
		t.Fatalf("after stream_close_delay: %v, want a close frame 1001", err)
	}
	if d := time.Since(reloaded); d < 900*time.Millisecond {
		t.Errorf("closed %v after the reload, before stream_close_delay (1s)", d)
	}
	var lines []closedLine
	if !pollUntil(3*time.Second, func() bool { lines = readClosedLines(t, file); return len(lines) == 1 }) {
		t.Fatalf("want 1 tunnel closed line, got %+v", lines)
	}
	if lines[0].Reason != "reload" || lines[0].Protocol != "websocket" {
		t.Errorf("closed line %+v, want reason reload, protocol websocket", lines[0])
	}
}
