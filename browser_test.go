package upgrade

// End to end in a real browser: headless Chromium (/usr/bin/chromium, Debian
// package `chromium`; .ci/run installs it) driven over the DevTools protocol
// with github.com/chromedp/chromedp, against the in-process Caddy of
// harness_test.go serving HTTPS with `tls internal`.
//
// A page opens a WebSocket through the module to the echo backend of
// internal/echo and echoes a message. Caddy's JSON access log then shows
// how the browser got there: over HTTP/2 extended CONNECT when the server
// advertises it (Chromium uses RFC 8441 by default; Caddy v2.11.9 advertises
// it only with GODEBUG=http2xconnect=1 in its environment, which here is the
// test process's), and over an HTTP/1.1 GET upgrade when the server speaks
// HTTP/1.1 only. The same page served from another origin is refused (403)
// by the route's `origins`.
//
// The browser is required: without /usr/bin/chromium the test fails.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/seedf05e/caddy-upgrade/internal/echo"
)

const (
	browserPath = "/usr/bin/chromium"
	// browserStep bounds each browser step (navigate, wait for the echo).
	browserStep = 20 * time.Second
	// browserForeignHost is a second origin for the same Caddy, mapped to
	// 127.0.0.1 inside Chromium with --host-resolver-rules.
	browserForeignHost = "foreign.test"
	browserMessage     = "hello from chromium"
)

// browserPage opens a WebSocket to wsURL, sends browserMessage and sets
// window.result to "echo:<reply>", or to "error"/"closed:<code>" if the
// WebSocket fails. It is served as a file, so that no Caddy placeholder
// touches the script's braces.
//
// Chromium sends a WebSocket over HTTP/2 only on an HTTP/2 connection it
// already has to that host, in the page's network partition (top-level
// site) and with credentials; a page from another origin has none. So the
// page first fetches warmURL (same host as the WebSocket, credentialed, so
// in the same socket pool) and opens the WebSocket when that is done. The
// fetch's answer does not matter.
const browserPage = `<!doctype html>
<html><head><meta charset="utf-8"><title>upgrade browser test</title></head>
<body>
<script>
window.result = null;
function openWS() {
  try {
    const ws = new WebSocket(%q);
    ws.onopen = () => ws.send(%q);
    ws.onmessage = (e) => { window.result = "echo:" + e.data; ws.close(1000, "done"); };
    ws.onerror = () => { if (window.result === null) window.result = "error"; };
    ws.onclose = (e) => { if (window.result === null) window.result = "closed:" + e.code; };
  } catch (err) {
    window.result = "exception:" + err;
  }
}
fetch(%q, {mode: "no-cors", credentials: "include", cache: "no-store"}).then(openWS, openWS);
</script>
</body></html>
`

// browserAccessEntry is the part of a Caddy JSON access log line the test
// reads.
type browserAccessEntry struct {
	Logger  string `json:"logger"`
	Status  int    `json:"status"`
	Request struct {
		Proto   string              `json:"proto"`
		Method  string              `json:"method"`
		Host    string              `json:"host"`
		URI     string              `json:"uri"`
		Headers map[string][]string `json:"headers"`
	} `json:"request"`
}

func (e browserAccessEntry) origin() string {
	if v := e.Request.Headers["Origin"]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (e browserAccessEntry) String() string {
	return fmt.Sprintf("%s %s %s%s (Origin %q) -> %d", e.Request.Proto, e.Request.Method, e.Request.Host, e.Request.URI, e.origin(), e.Status)
}

// readBrowserAccessLog parses every complete line of the access log.
func readBrowserAccessLog(t *testing.T, path string) []browserAccessEntry {
	t.Helper()
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatalf("access log: %v", err)
	}
	defer f.Close()
	var out []browserAccessEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e browserAccessEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil && e.Request.URI != "" {
			out = append(out, e)
		}
	}
	return out
}

// waitBrowserAccessEntry polls the access log for the /ws request whose
// Origin is origin, and returns it.
func waitBrowserAccessEntry(t *testing.T, path, origin string) (browserAccessEntry, bool) {
	t.Helper()
	var found browserAccessEntry
	ok := pollUntil(10*time.Second, func() bool {
		for _, e := range readBrowserAccessLog(t, path) {
			if e.Request.URI == "/ws" && e.origin() == origin {
				found = e
				return true
			}
		}
		return false
	})
	return found, ok
}

// newBrowser starts a headless Chromium with a fresh profile; it is stopped
// when the test ends.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	skipEndToEnd(t)
	if _, err := os.Stat(browserPath); err != nil {
		t.Fatalf("Chromium is required for this test (%v): apt-get install -y chromium (.ci/run does)", err)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(browserPath),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("ignore-certificate-errors", true),
		chromedp.Flag("host-resolver-rules", "MAP "+browserForeignHost+" 127.0.0.1"),
		chromedp.UserDataDir(t.TempDir()),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(allocCtx)
	t.Cleanup(func() {
		cancelCtx()
		cancelAlloc()
	})
	// The first Run starts the browser; its context must not time out
	// (that would stop the browser), so it is bounded from outside.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx, chromedp.Navigate("about:blank")) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("starting Chromium: %v", err)
		}
	case <-time.After(browserStep):
		t.Fatalf("Chromium did not start within %v", browserStep)
	}
	return ctx
}

// browserWebSocket loads pageURL in a new tab of browser and waits for the
// page's WebSocket outcome (window.result).
func browserWebSocket(t *testing.T, browser context.Context, pageURL string) string {
	t.Helper()
	tab, cancelTab := chromedp.NewContext(browser)
	defer cancelTab()
	ctx, cancel := context.WithTimeout(tab, browserStep)
	defer cancel()
	if err := chromedp.Do(ctx, chromedp.Navigate(pageURL)); err != nil {
		t.Fatalf("navigate %s: %v", pageURL, err)
	}
	res, err := chromedp.Run(ctx, chromedp.Poll[string]("window.result",
		chromedp.WithPollingInterval(50*time.Millisecond),
		chromedp.WithPollingTimeout(browserStep-time.Second)))
	if err != nil {
		t.Fatalf("%s: waiting for the WebSocket outcome: %v", pageURL, err)
	}
	return res
}

// TestBrowserWebSocket: Chromium's WebSocket through the module, over HTTP/2
// extended CONNECT, then over HTTP/1.1 with HTTP/2 off, and refused from a
// foreign origin each time.
func TestBrowserWebSocket(t *testing.T) {
	start := time.Now()
	backend := httptest.NewServer(echo.Handler())
	t.Cleanup(backend.Close)
	backendAddr := strings.TrimPrefix(backend.URL, "http://")

	docroot := t.TempDir()
	wsURL := fmt.Sprintf("wss://localhost:%d/ws", harnessHTTPSPort)
	if err := os.WriteFile(filepath.Join(docroot, "index.html"),
		[]byte(fmt.Sprintf(browserPage, wsURL, browserMessage, fmt.Sprintf("https://localhost:%d/warm.txt", harnessHTTPSPort))), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(docroot, "warm.txt"), []byte("warm\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sameOrigin := fmt.Sprintf("https://localhost:%d", harnessHTTPSPort)
	foreignOrigin := fmt.Sprintf("https://%s:%d", browserForeignHost, harnessHTTPSPort)

	load := func(t *testing.T, protocols, accessLog string) {
		t.Helper()
		cfg := h23GlobalOptions(fmt.Sprintf(`
	auto_https disable_redirects
	servers {
		protocols %s
	}`, protocols)) + fmt.Sprintf(`
localhost:%[1]d {
	tls internal
	log {
		output file %[2]s
		format json
	}
	handle /ws {
		upgrade websocket {
			origins %[3]s
			to %[4]s
		}
	}
	handle {
		root * %[5]s
		file_server
	}
}

%[6]s:%[1]d {
	tls internal
	root * %[5]s
	file_server
}
`, harnessHTTPSPort, accessLog, sameOrigin, backendAddr, docroot, browserForeignHost)
		loadCaddyRaw(t, cfg, "caddyfile")
		waitH23Certificate(t, h23HTTPSAddr, "localhost")
		waitH23Certificate(t, h23HTTPSAddr, browserForeignHost)
	}

	cases := []struct {
		name      string
		protocols string
		// what the access log must show for the browser's WebSocket
		proto, method string
		status        int
		hint          string
	}{
		{"h2 extended CONNECT", "h1 h2", "HTTP/2.0", "CONNECT", 200,
			"with HTTP/2 on, Chromium uses extended CONNECT only if the server sends SETTINGS_ENABLE_CONNECT_PROTOCOL; " + h23GODEBUGHint},
		{"h1 GET", "h1", "HTTP/1.1", "GET", 101, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			stepStart := time.Now()
			accessLog := filepath.Join(t.TempDir(), "access.log")
			load(t, c.protocols, accessLog)
			browser := newBrowser(t)

			// Same origin: the echo comes back, over the expected protocol.
			got := browserWebSocket(t, browser, sameOrigin+"/")
			if got != "echo:"+browserMessage {
				t.Errorf("same-origin page: WebSocket outcome %q, want %q", got, "echo:"+browserMessage)
			}
			e, ok := waitBrowserAccessEntry(t, accessLog, sameOrigin)
			if !ok {
				t.Fatalf("no access log entry for the same-origin /ws; log has %v", readBrowserAccessLog(t, accessLog))
			}
			if e.Request.Proto != c.proto || e.Request.Method != c.method || e.Status != c.status {
				t.Errorf("same-origin WebSocket logged as %v, want %s %s -> %d. %s", e, c.proto, c.method, c.status, c.hint)
			}
			t.Logf("%s: page outcome %q from the same origin; %v", c.name, got, e)

			// Foreign origin: the page on foreign.test connects to
			// localhost's /ws; the route's origins refuse it.
			got = browserWebSocket(t, browser, foreignOrigin+"/")
			if strings.HasPrefix(got, "echo:") {
				t.Errorf("foreign-origin page: WebSocket outcome %q, want a failure", got)
			}
			e, ok = waitBrowserAccessEntry(t, accessLog, foreignOrigin)
			if !ok {
				t.Fatalf("no access log entry for the foreign-origin /ws; log has %v", readBrowserAccessLog(t, accessLog))
			}
			if e.Status != 403 || e.Request.Proto != c.proto {
				t.Errorf("foreign-origin WebSocket logged as %v, want %s -> 403", e, c.proto)
			}
			t.Logf("%s: page outcome %q from the foreign origin; %v (%.1fs)", c.name, got, e, time.Since(stepStart).Seconds())
		})
	}
	t.Logf("browser test took %.1fs", time.Since(start).Seconds())
}
