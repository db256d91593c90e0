package upgrade

// Canaries: every recognition of caddy_internals.go, checked on the Caddy
// this package is built with by opening real tunnels. `make canary` runs
// them against the newest Caddy release, so a Caddy that changed one of
// the internals is caught on the day it is pinned, not in production.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// canaryConfig is loadH23Routes's configuration with the module's
// warnings written to logFile and an access log on both sites (so that
// Caddy wraps hijacked connections to count their bytes).
func canaryConfig(routes, logFile string) string {
	routes = "\tlog {\n\t\toutput discard\n\t}\n" + routes
	return h23GlobalOptions(fmt.Sprintf(`
	auto_https disable_redirects
	servers {
		protocols h1 h2 h2c h3
	}
	log upgrade {
		output file %s
		include http.handlers.upgrade
		level WARN
	}`, logFile)) + fmt.Sprintf(`
:%d {
%s
}

localhost:%d {
	tls internal
%s
}
`, harnessHTTPPort, routes, harnessHTTPSPort, routes)
}

// TestCanaryCaddyInternals fails when a recognition of Caddy's or Go's
// internals stops working:
//   - hand-over over TCP and TLS with access logs on: Caddy's
//     hijackedConn unwrapped, net/http's 101 body (with the bytes the
//     backend sent behind its 101) recognised, and Caddy's copiers
//     handing the copy to WriteTo (io.CopyBuffer). Seen as: no goroutine
//     of Caddy's handler or copiers left, the greeting intact;
//   - reverseproxy.Host's request count: num_requests counts the tunnels;
//   - reverseproxy.h2ReadWriteCloser: a WebSocket over extended CONNECT
//     (h2c and h2) delegated without the module's warning;
//   - no "not recognised" warning, nor any fallback but extended
//     CONNECT's (which stays with Caddy by design), logged.
func TestCanaryCaddyInternals(t *testing.T) {
	foo := newSwitchBackend(t)
	ws := newRecordingBackend(t, answerEcho())
	logFile := filepath.Join(t.TempDir(), "upgrade.log")
	loadCaddyRaw(t, canaryConfig(fmt.Sprintf(`
	handle /foo/* {
		upgrade foo {
			to %s
		}
	}
	handle /ws/* {
		upgrade websocket {
			to %s
		}
	}`, foo.addr(), ws.Addr()), logFile), "caddyfile")
	waitH23Certificate(t, h23HTTPSAddr, "localhost")

	var tunnels []*rawClient
	for i := range 3 {
		tunnels = append(tunnels, openFoo(t, dialRaw(t), fmt.Sprintf("/foo/plain%d", i)))
		tunnels = append(tunnels, openFoo(t, dialTLSRaw(t), fmt.Sprintf("/foo/tls%d", i)))
	}
	if !pollUntil(3*time.Second, func() bool { return goroutinesWith(handlerFrames...) == 0 }) {
		t.Errorf("hand-over: %d goroutines of Caddy's handler or copiers still hold the tunnels", goroutinesWith(handlerFrames...))
	}
	for _, c := range tunnels {
		echoCheck(t, c, 5000)
	}
	if !pollUntil(3*time.Second, func() bool { return adminUpstreamRequests(t)[foo.addr()] == len(tunnels) }) {
		t.Errorf("reverseproxy.Host count: num_requests of %s is %d with %d tunnels open", foo.addr(), adminUpstreamRequests(t)[foo.addr()], len(tunnels))
	}

	for _, tr := range []h23Transport{h23H2C, h23H2} {
		res := h23Do(t, tr, "/ws/h2", h23Offer{protocol: "websocket"})
		if res.Tunnel == nil {
			t.Fatalf("%s: extended CONNECT got %d, no tunnel", tr, res.Status)
		}
		h23WSEcho(t, res.Tunnel, "canary over "+string(tr))
	}

	for _, c := range tunnels {
		c.Conn.Close()
	}
	time.Sleep(200 * time.Millisecond)
	data, err := os.ReadFile(logFile)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		// Extended CONNECT stays with Caddy by design (docs/tunnels.md);
		// every other warning is a fallback.
		if len(line) > 0 && !bytes.Contains(line, []byte(`"reason":"extended CONNECT`)) {
			t.Errorf("the module warned: %s", line)
		}
	}
	if t.Failed() {
		t.Log("a Caddy or Go internal the module relies on changed: see caddy_internals.go for what each one costs")
	}
}

// TestCanaryWarnsOnFallback: the warnings the canary looks for are really
// written where a tunnel stays with Caddy (here: policy-only mode), so a
// silent log does not pass for a clean one.
func TestCanaryWarnsOnFallback(t *testing.T) {
	backend := newSwitchBackend(t)
	logFile := filepath.Join(t.TempDir(), "upgrade.log")
	loadCaddyRaw(t, canaryConfig(fmt.Sprintf(`
	handle /policy/* {
		upgrade foo
		reverse_proxy %s
	}`, backend.addr()), logFile), "caddyfile")
	waitH23Certificate(t, h23HTTPSAddr, "localhost")
	for i := range 2 {
		c := openFoo(t, dialRaw(t), fmt.Sprintf("/policy/%d", i))
		echoCheck(t, c, 100)
		c.Conn.Close()
	}
	var data []byte
	if !pollUntil(3*time.Second, func() bool {
		data, _ = os.ReadFile(logFile)
		return bytes.Contains(data, []byte("policy-only mode"))
	}) {
		t.Fatalf("no fallback warning logged for policy-only mode; log: %q", data)
	}
	if n := strings.Count(string(data), "policy-only mode"); n != 1 {
		t.Errorf("the fallback warning was logged %d times for two tunnels, want once", n)
	}
}
