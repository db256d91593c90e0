package upgrade

// Metrics as Caddy serves them (docs/behaviour.md §7): the admin API's
// /metrics, scraped before and after a known mix of requests. The collectors
// are process-global, so every assertion is on a delta between two scrapes.

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// metricSample is one line of the Prometheus text format.
type metricSample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// metricSet maps a series key (name{k="v",...}, labels sorted) to its
// sample.
type metricSet map[string]metricSample

// metricKey is the canonical key of a series.
func metricKey(name string, labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", k, labels[k])
	}
	b.WriteByte('}')
	return b.String()
}

// get is the value of the series name with exactly the labels kv
// ("k", "v", ...); 0 if absent (a labelled series appears on first use).
func (m metricSet) get(name string, kv ...string) float64 {
	labels := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		labels[kv[i]] = kv[i+1]
	}
	return m[metricKey(name, labels)].Value
}

// parseMetricsText parses the Prometheus text exposition format (enough of
// it for what client_golang writes: no timestamps needed, escaped label
// values).
func parseMetricsText(r io.Reader) (metricSet, error) {
	set := metricSet{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := metricSample{Labels: map[string]string{}}
		i := strings.IndexAny(line, "{ ")
		if i < 0 {
			return nil, fmt.Errorf("no value in %q", line)
		}
		s.Name = line[:i]
		rest := line[i:]
		if rest[0] == '{' {
			j := 1
			for {
				for j < len(rest) && (rest[j] == ',' || rest[j] == ' ') {
					j++
				}
				if j >= len(rest) {
					return nil, fmt.Errorf("unterminated labels in %q", line)
				}
				if rest[j] == '}' {
					j++
					break
				}
				eq := strings.IndexByte(rest[j:], '=')
				if eq < 0 || j+eq+1 >= len(rest) || rest[j+eq+1] != '"' {
					return nil, fmt.Errorf("bad label in %q", line)
				}
				name := rest[j : j+eq]
				k := j + eq + 2
				var val strings.Builder
				for ; k < len(rest) && rest[k] != '"'; k++ {
					if rest[k] == '\\' && k+1 < len(rest) {
						k++
						switch rest[k] {
						case 'n':
							val.WriteByte('\n')
						default:
							val.WriteByte(rest[k])
						}
						continue
					}
					val.WriteByte(rest[k])
				}
				if k >= len(rest) {
					return nil, fmt.Errorf("unterminated label value in %q", line)
				}
				s.Labels[name] = val.String()
				j = k + 1
			}
			rest = rest[j:]
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("no value in %q", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("value of %q: %v", line, err)
		}
		s.Value = v
		set[metricKey(s.Name, s.Labels)] = s
	}
	return set, sc.Err()
}

// scrapeAdminMetrics reads the admin API's /metrics (text format).
func scrapeAdminMetrics(t testing.TB) metricSet {
	t.Helper()
	set, err := tryScrapeAdminMetrics()
	if err != nil {
		t.Fatalf("scraping http://%s/metrics: %v", harnessAdmin, err)
	}
	return set
}

func tryScrapeAdminMetrics() (metricSet, error) {
	client := &http.Client{Timeout: harnessIO}
	res, err := client.Get("http://" + harnessAdmin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(res.Body)
		return nil, fmt.Errorf("status %s: %s", res.Status, body)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		return nil, fmt.Errorf("Content-Type %q, want the text format", ct)
	}
	return parseMetricsText(res.Body)
}

// openTunnelsMetric is caddy_upgrade_tunnels_open for protocol.
func openTunnelsMetric(t testing.TB, protocol string) float64 {
	t.Helper()
	return scrapeAdminMetrics(t).get("caddy_upgrade_tunnels_open", "protocol", protocol)
}

// settledOpenTunnels waits until the websocket open gauge holds still for
// 300ms (tunnels of earlier tests close when a new config loads) and
// returns it.
func settledOpenTunnels(t testing.TB, protocol string) float64 {
	t.Helper()
	last := openTunnelsMetric(t, protocol)
	stableSince := time.Now()
	deadline := time.Now().Add(10 * time.Second)
	for time.Since(stableSince) < 300*time.Millisecond {
		if time.Now().After(deadline) {
			t.Fatalf("caddy_upgrade_tunnels_open{protocol=%q} never settled (last %v)", protocol, last)
		}
		time.Sleep(50 * time.Millisecond)
		if v := openTunnelsMetric(t, protocol); v != last {
			last, stableSince = v, time.Now()
		}
	}
	return last
}

// waitOpenTunnels polls until the open gauge for protocol equals want.
func waitOpenTunnels(t testing.TB, protocol string, want float64, d time.Duration) {
	t.Helper()
	var got float64
	if !pollUntil(d, func() bool {
		got = openTunnelsMetric(t, protocol)
		return got == want
	}) {
		t.Fatalf("caddy_upgrade_tunnels_open{protocol=%q} = %v after %v, want %v", protocol, got, d, want)
	}
}

// opsCloseWebSocket sends a close frame and closes the connection.
func opsCloseWebSocket(c *websocket.Conn) {
	c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	c.Close()
}

func TestMetricsParseText(t *testing.T) {
	set, err := parseMetricsText(strings.NewReader(`# HELP x y
# TYPE caddy_upgrade_requests_total counter
caddy_upgrade_requests_total{outcome="accepted",protocol="websocket"} 3
caddy_upgrade_tunnels_open{protocol="we\"ird"} 1e+00
plain 2.5
hist_bucket{le="+Inf",protocol="other"} 7
`))
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string]float64{
		metricKey("caddy_upgrade_requests_total", map[string]string{"protocol": "websocket", "outcome": "accepted"}): 3,
		metricKey("caddy_upgrade_tunnels_open", map[string]string{"protocol": `we"ird`}):                             1,
		metricKey("plain", nil): 2.5,
		metricKey("hist_bucket", map[string]string{"le": "+Inf", "protocol": "other"}): 7,
	}
	for k, want := range checks {
		if got, ok := set[k]; !ok || got.Value != want {
			t.Errorf("%s = %v (present %v), want %v; set %v", k, got.Value, ok, want, set)
		}
	}
	if got := set.get("caddy_upgrade_requests_total", "outcome", "accepted", "protocol", "websocket"); got != 3 {
		t.Errorf("get = %v", got)
	}
}

// TestMetricsRequestOutcomes: after N accepted WebSockets, M stripped h2c
// offers, K 426s for an offer of nothing allowed, one malformed offer and
// one backend 101 refused, caddy_upgrade_requests_total moves by exactly
// those counts, with protocol "websocket" or "other" only; the open gauge,
// the duration histogram and the byte counters follow the tunnels.
func TestMetricsRequestOutcomes(t *testing.T) {
	echo := newRecordingBackend(t, answerEcho())
	bad := newRecordingBackend(t, answerSwitch(false, "Connection: Upgrade", "Upgrade: websocket",
		"Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
	loadCaddyfile(t, site(fmt.Sprintf(`
	handle /m/ws/* {
		upgrade websocket {
			to %[1]s
		}
	}
	handle /m/plain/* {
		upgrade websocket
		respond "plain"
	}
	handle /m/require/* {
		upgrade websocket {
			require
		}
		respond "never"
	}
	handle /m/bad/* {
		upgrade websocket {
			to %[2]s
		}
	}
	handle /m/policybad/* {
		upgrade websocket
		reverse_proxy %[2]s
	}
	handle /m/mixedcfg/* {
		upgrade WebSocket {
			to %[1]s
		}
	}
	handle /m/reject/* {
		upgrade websocket {
			on_disallowed reject
		}
		respond "never"
	}
	handle /m/origin/* {
		upgrade websocket {
			origins https://good.example
			to %[1]s
		}
	}
	handle /m/limit/* {
		upgrade websocket {
			max_connections 1
			to %[1]s
		}
	}`, echo.Addr(), bad.Addr())))

	const (
		gorillaTunnels = 3
		rawTunnels     = 1 // "Upgrade: WebSocket", mixed case: still labelled websocket
		otherTunnels   = 2 // one through "upgrade WebSocket", one through max_connections 1
		accepted       = gorillaTunnels + rawTunnels + otherTunnels
		ignored        = 2
		required       = 2
		payload        = 1000
	)
	openBefore := settledOpenTunnels(t, "websocket")
	before := scrapeAdminMetrics(t)

	// N accepted tunnels, each carrying payload bytes each way.
	var conns []*websocket.Conn
	for i := range gorillaTunnels {
		c := mustDialWebSocket(t, fmt.Sprintf("/m/ws/%d", i))
		wsEcho(t, c, strings.Repeat(string(rune('a'+i)), payload))
		conns = append(conns, c)
	}
	raw := dialRaw(t)
	res := raw.Do(rawRequest("GET", "/m/ws/raw", "Connection: Upgrade", "Upgrade: WebSocket",
		"Sec-WebSocket-Key: "+newWebSocketKey(), "Sec-WebSocket-Version: 13"))
	requireStatus(t, res, http.StatusSwitchingProtocols)
	mixed := mustDialWebSocket(t, "/m/mixedcfg/x") // configured as "WebSocket": label "websocket"
	wsEcho(t, mixed, "x")
	limit := mustDialWebSocket(t, "/m/limit/1")
	wsEcho(t, limit, "y")
	conns = append(conns, mixed, limit)

	during := scrapeAdminMetrics(t)
	if d := during.get("caddy_upgrade_tunnels_open", "protocol", "websocket") - openBefore; d != accepted {
		t.Errorf("tunnels_open{websocket} went up by %v while %d tunnels are open, want %d", d, accepted, accepted)
	}

	// M ignored, K required (plus requests without an offer, not counted),
	// one invalid, one backend_invalid.
	h2c := []string{"Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"}
	for range ignored {
		res := rawDo(t, rawRequest("GET", "/m/plain/h2c", h2c...))
		requireStatus(t, res, http.StatusOK)
		if res.Body != "plain" {
			t.Fatalf("stripped h2c offer: body %q", res.Body)
		}
	}
	for range required {
		requireStatus(t, rawDo(t, rawRequest("GET", "/m/require/x", "Connection: Upgrade", "Upgrade: foo/1")), http.StatusUpgradeRequired)
	}
	requireStatus(t, rawDo(t, rawRequest("GET", "/m/require/none")), http.StatusUpgradeRequired) // no offer: not counted
	requireStatus(t, rawDo(t, rawRequest("GET", "/m/plain/none")), http.StatusOK)                // no offer: not counted
	requireStatus(t, rawDo(t, rawRequest("GET", "/m/plain/stray", "Upgrade: websocket")), http.StatusOK)
	requireStatus(t, rawDo(t, rawRequest("GET", "/m/plain/bad", "Connection: Upgrade", "Upgrade: websocket, foo@1")), http.StatusBadRequest)
	for _, path := range []string{"/m/bad/x", "/m/policybad/x"} {
		if _, res, err := dialWebSocket(t, path); err == nil || res == nil || res.StatusCode != http.StatusBadGateway {
			status := "no response"
			if res != nil {
				status = res.Status
			}
			t.Fatalf("%s: WebSocket to a backend with a wrong Accept: %v (%s), want 502", path, err, status)
		}
	}
	// One more of each other outcome.
	requireStatus(t, rawDo(t, rawRequest("GET", "/m/reject/x", "Connection: Upgrade", "Upgrade: foo")), http.StatusForbidden)
	requireStatus(t, rawDo(t, rawRequest("GET", "/m/origin/x", append(wsHandshakeLines(newWebSocketKey()), "Origin: https://evil.example")...)), http.StatusForbidden)
	requireStatus(t, rawDo(t, rawRequest("GET", "/m/plain/v8", "Connection: Upgrade", "Upgrade: websocket",
		"Sec-WebSocket-Key: "+newWebSocketKey(), "Sec-WebSocket-Version: 8")), http.StatusUpgradeRequired)
	requireStatus(t, rawDo(t, rawRequest("GET", "/m/plain/key", "Connection: Upgrade", "Upgrade: websocket",
		"Sec-WebSocket-Key: short", "Sec-WebSocket-Version: 13")), http.StatusBadRequest)
	opsRequireLimited(t, "/m/limit/2")

	// Close every tunnel; the gauge returns to where it was.
	for _, c := range conns {
		opsCloseWebSocket(c)
	}
	raw.Conn.Close()
	waitOpenTunnels(t, "websocket", openBefore, 5*time.Second)
	// The duration is observed as the tunnel closes, with the gauge.
	time.Sleep(50 * time.Millisecond)
	after := scrapeAdminMetrics(t)

	wantRequests := map[[2]string]float64{
		{"websocket", "accepted"}:        accepted,
		{"other", "ignored"}:             ignored,
		{"other", "required"}:            required,
		{"other", "invalid"}:             1,
		{"websocket", "backend_invalid"}: 2,
		{"other", "rejected"}:            1,
		{"websocket", "rejected"}:        1,
		{"websocket", "required"}:        1,
		{"websocket", "invalid"}:         1,
		{"websocket", "limited"}:         1,
	}
	seen := map[[2]string]bool{}
	for key, s := range after {
		if !strings.HasPrefix(s.Name, "caddy_upgrade_") {
			continue
		}
		delta := s.Value - before[key].Value
		if delta != 0 {
			if p := s.Labels["protocol"]; p != "websocket" && p != "other" {
				t.Errorf("%s moved by %v: protocol label %q is neither websocket nor other", key, delta, p)
			}
		}
		if s.Name != "caddy_upgrade_requests_total" {
			continue
		}
		k := [2]string{s.Labels["protocol"], s.Labels["outcome"]}
		seen[k] = true
		if want := wantRequests[k]; delta != want {
			t.Errorf("requests_total{protocol=%q,outcome=%q} moved by %v, want %v", k[0], k[1], delta, want)
		}
	}
	for k, want := range wantRequests {
		if !seen[k] {
			t.Errorf("requests_total{protocol=%q,outcome=%q} absent from /metrics, want a delta of %v", k[0], k[1], want)
		}
	}
	if d := after.get("caddy_upgrade_tunnels_open", "protocol", "websocket") - openBefore; d != 0 {
		t.Errorf("tunnels_open{websocket} is %v off its value before the tunnels opened", d)
	}
	if d := after.get("caddy_upgrade_tunnel_duration_seconds_count", "protocol", "websocket") -
		before.get("caddy_upgrade_tunnel_duration_seconds_count", "protocol", "websocket"); d != accepted {
		t.Errorf("tunnel_duration_seconds_count{websocket} moved by %v, want %d (one per closed tunnel; none for the refused 101)", d, accepted)
	}
	sent := float64(gorillaTunnels * payload)
	for _, dir := range []string{"upstream", "downstream"} {
		d := after.get("caddy_upgrade_tunnel_bytes_total", "direction", dir, "protocol", "websocket") -
			before.get("caddy_upgrade_tunnel_bytes_total", "direction", dir, "protocol", "websocket")
		if d < sent {
			t.Errorf("tunnel_bytes_total{websocket,%s} moved by %v, want at least the %v payload bytes carried", dir, d, sent)
		}
		// Frame overhead is a few bytes per frame; a header counted as
		// tunnel bytes, or bytes counted twice, would show here.
		if d > 2*sent {
			t.Errorf("tunnel_bytes_total{websocket,%s} moved by %v for %v payload bytes: counted twice?", dir, d, sent)
		}
		if d := after.get("caddy_upgrade_tunnel_bytes_total", "direction", dir, "protocol", "other") -
			before.get("caddy_upgrade_tunnel_bytes_total", "direction", dir, "protocol", "other"); d != 0 {
			t.Errorf("tunnel_bytes_total{other,%s} moved by %v; no such tunnel opened", dir, d)
		}
	}
	if n := len(bad.Requests()); n != 2 {
		t.Errorf("the bad backend received %d requests, want 2", n)
	}
}

// TestMetricsEarlyDataBytes: for a protocol other than WebSocket, bytes a
// client sends right behind its upgrade request (early data, which the
// README allows for such protocols) are carried to the backend, so
// tunnel_bytes_total{direction="upstream"} counts them like any other
// tunnel byte.
func TestMetricsEarlyDataBytes(t *testing.T) {
	backend := newRawSwitchBackend(t, nil, false) // echoes, closes at EOF
	loadCaddyfile(t, site(fmt.Sprintf(`
	handle /early/* {
		upgrade foo {
			to %s
		}
	}`, backend.Addr())))
	openBefore := settledOpenTunnels(t, "foo")
	before := scrapeAdminMetrics(t)

	const early, later = "EARLY-DATA", "later"
	c := dialRaw(t)
	c.Send(rawRequest("GET", "/early/x", "Connection: Upgrade", "Upgrade: foo") + early) // one write
	requireStatus(t, c.Read(), http.StatusSwitchingProtocols)
	buf := make([]byte, len(early))
	c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
	if _, err := io.ReadFull(c.R, buf); err != nil || string(buf) != early {
		t.Fatalf("early data echo: %q, %v", buf, err)
	}
	c.Send(later)
	buf = make([]byte, len(later))
	if _, err := io.ReadFull(c.R, buf); err != nil || string(buf) != later {
		t.Fatalf("echo: %q, %v", buf, err)
	}
	if got, _ := backend.received(); string(got) != early+later {
		t.Fatalf("backend received %q on the tunnel, want %q", got, early+later)
	}
	c.Conn.Close()
	waitOpenTunnels(t, "foo", openBefore, 5*time.Second)
	after := scrapeAdminMetrics(t)
	for _, dir := range []string{"upstream", "downstream"} {
		d := after.get("caddy_upgrade_tunnel_bytes_total", "direction", dir, "protocol", "foo") -
			before.get("caddy_upgrade_tunnel_bytes_total", "direction", dir, "protocol", "foo")
		if want := float64(len(early + later)); d != want {
			t.Errorf("tunnel_bytes_total{foo,%s} moved by %v, want %v (%q then %q carried)", dir, d, want, early, later)
		}
	}
}
