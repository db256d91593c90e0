package upgrade

// End-to-end tests: the module inside a real Caddy (caddytest), real
// backends (harness_test.go) and real clients on the wire. Tests here share
// one in-process Caddy and must not run in parallel.

import (
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/gorilla/websocket"
	"github.com/seedf05e/caddy-upgrade/internal/audit"
	"github.com/seedf05e/caddy-upgrade/internal/protocol"
)

// site wraps directives into the plain-HTTP site block on the harness port.
func site(body string) string {
	return fmt.Sprintf(":%d {\n%s\n}\n", harnessHTTPPort, body)
}

// checkForwardedUpgrade fails unless the backend's latest request carried
// exactly the one Upgrade line want (or none when want is "").
func checkForwardedUpgrade(t *testing.T, rec *recordedRequest, want string) {
	t.Helper()
	got := rec.Header["Upgrade"]
	switch {
	case want == "" && len(got) != 0:
		t.Errorf("backend received Upgrade %q for %s, want none", got, rec.RequestURI)
	case want != "" && !reflect.DeepEqual(got, []string{want}):
		t.Errorf("backend received Upgrade %q for %s, want exactly [%q]", got, rec.RequestURI, want)
	}
}

// connectionTokens lists the Connection options of a header, lower-cased.
func connectionTokens(h http.Header) []string {
	var out []string
	for e := range protocol.ListElements(h["Connection"]) {
		out = append(out, strings.ToLower(e))
	}
	return out
}

// 1. A WebSocket echo round trip through Caddy with the module: delegated
// to the embedded proxy, and policy-only followed by reverse_proxy, from a
// Caddyfile and from JSON loaded through the admin API.
func TestIntegrationWebSocketEcho(t *testing.T) {
	backend := newRecordingBackend(t, answerEcho())

	roundTrips := func(t *testing.T, tester *caddytest.Tester) {
		for _, path := range []string{"/proxy/chat", "/policy/chat"} {
			c := mustDialWebSocket(t, path)
			wsEcho(t, c, "hello via "+path)
			wsEcho(t, c, strings.Repeat("x", 70000)) // a frame larger than any buffer
			rec := backend.LastRequest()
			if rec.RequestURI != path || !rec.Switched {
				t.Errorf("backend's latest request is %s (switched %v), want the upgrade of %s", rec.RequestURI, rec.Switched, path)
			}
			checkForwardedUpgrade(t, rec, "websocket")
			c.Close()
		}
		// Let the closed tunnels settle, so that their last bytes are not
		// counted below.
		time.Sleep(100 * time.Millisecond)
		// Without an offer, the delegating route goes on to the next
		// handler and never to its proxy.
		snap := backend.Snapshot()
		tester.AssertGetResponse(caddyURL("/proxy/plain"), 200, "next handler")
		backend.RequireUntouchedSince(snap, "plain request on the delegating route")
	}

	t.Run("caddyfile", func(t *testing.T) {
		tester := loadCaddyfile(t, site(fmt.Sprintf(`
	handle /proxy/* {
		upgrade websocket {
			to %[1]s
		}
		respond "next handler"
	}
	handle /policy/* {
		upgrade websocket
		reverse_proxy %[1]s
	}`, backend.Addr())))
		roundTrips(t, tester)
	})

	t.Run("json", func(t *testing.T) {
		tester := loadCaddyJSON(t, harnessJSONConfig(fmt.Sprintf(`[
	{"match": [{"path": ["/proxy/*"]}], "handle": [
		{"handler": "upgrade", "protocols": ["websocket"],
		 "proxy": {"handler": "reverse_proxy", "upstreams": [{"dial": %[1]q}]}},
		{"handler": "static_response", "body": "next handler"}
	]},
	{"match": [{"path": ["/policy/*"]}], "handle": [
		{"handler": "upgrade", "protocols": ["websocket"]},
		{"handler": "reverse_proxy", "upstreams": [{"dial": %[1]q}]}
	]}
]`, backend.Addr()), ""))
		roundTrips(t, tester)
	})
}

// 2. A 426 read off the wire: Upgrade lists the allowed protocols in
// configured order, with Connection: Upgrade.
func TestIntegrationRequire426(t *testing.T) {
	loadCaddyfile(t, site(`
	handle /require/* {
		upgrade websocket foo/2 {
			require
		}
		respond "must not be reached"
	}`))

	cases := map[string][]string{
		"no offer":                 nil,
		"stray Upgrade":            {"Upgrade: websocket"},
		"offer of nothing allowed": {"Connection: Upgrade", "Upgrade: bar/1"},
	}
	for name, lines := range cases {
		t.Run(name, func(t *testing.T) {
			res := rawDo(t, rawRequest("GET", "/require/x", lines...))
			requireStatus(t, res, http.StatusUpgradeRequired)
			if got := res.Header["Upgrade"]; !reflect.DeepEqual(got, []string{"websocket, foo/2"}) {
				t.Errorf("426 Upgrade field lines %q, want exactly [\"websocket, foo/2\"]", got)
			}
			if got := res.Header["Connection"]; !reflect.DeepEqual(got, []string{"Upgrade"}) {
				t.Errorf("426 Connection field lines %q, want exactly [\"Upgrade\"]", got)
			}
			if strings.Contains(res.Body, "must not be reached") {
				t.Errorf("426 came with the next handler's body %q", res.Body)
			}
		})
	}
}

// policyRoutes are the routes tests 3, 4, 5 and 8 share: policy-only
// (upgrade then reverse_proxy), one with on_disallowed reject, and a
// delegating route allowing two protocols.
func loadPolicyRoutes(t *testing.T, echo, naive *recordingBackend) {
	t.Helper()
	loadCaddyfile(t, site(fmt.Sprintf(`
	handle /plain/* {
		upgrade websocket
		reverse_proxy %[1]s
	}
	handle /reject/* {
		upgrade websocket {
			on_disallowed reject
		}
		reverse_proxy %[1]s
	}
	handle /naive/* {
		upgrade websocket
		reverse_proxy %[2]s
	}
	handle /pref/* {
		upgrade websocket foo/2 {
			to %[2]s
		}
		respond "next handler"
	}`, echo.Addr(), naive.Addr())))
}

// 3. An h2c upgrade on a route allowing websocket is stripped to a plain
// request (ignore) or refused with 403 (reject).
func TestIntegrationH2CStripped(t *testing.T) {
	echo := newRecordingBackend(t, answerEcho())
	naive := newRecordingBackend(t, answerNaive())
	loadPolicyRoutes(t, echo, naive)

	h2c := []string{
		"Connection: Upgrade, HTTP2-Settings",
		"Upgrade: h2c",
		"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
	}

	t.Run("ignore", func(t *testing.T) {
		res := rawDo(t, rawRequest("GET", "/plain/x2", h2c...))
		if res.StatusCode == http.StatusSwitchingProtocols {
			t.Fatalf("h2c upgrade was switched: %s %v", res.Status, res.Header)
		}
		requireStatus(t, res, 200)
		rec := echo.LastRequest()
		if rec.RequestURI != "/plain/x2" || rec.Method != "GET" {
			t.Fatalf("backend's latest request is %s %s, want GET /plain/x2", rec.Method, rec.RequestURI)
		}
		checkForwardedUpgrade(t, rec, "")
		if v, ok := rec.Header["Http2-Settings"]; ok {
			t.Errorf("backend received HTTP2-Settings %q", v)
		}
		for _, tok := range connectionTokens(rec.Header) {
			if tok == "upgrade" || tok == "http2-settings" {
				t.Errorf("backend received Connection %q", rec.Header["Connection"])
			}
		}
		if bytes := string(echo.RawBytes()); strings.Contains(strings.ToLower(bytes), "h2c") ||
			strings.Contains(bytes, "AAMAAABkAARAAAAAAAIAAAAA") {
			t.Errorf("h2c offer reached the backend's wire:\n%s", bytes)
		}
	})

	t.Run("reject", func(t *testing.T) {
		snap := echo.Snapshot()
		res := rawDo(t, rawRequest("GET", "/reject/h2c", h2c...))
		requireStatus(t, res, http.StatusForbidden)
		time.Sleep(100 * time.Millisecond)
		echo.RequireUntouchedSince(snap, "h2c offer under on_disallowed reject")
	})
}

// 4. HTTP/1.0 cannot upgrade: the offer is dropped before the backend.
func TestIntegrationHTTP10NotUpgraded(t *testing.T) {
	echo := newRecordingBackend(t, answerEcho())
	naive := newRecordingBackend(t, answerNaive())
	loadPolicyRoutes(t, echo, naive)

	for _, route := range []struct {
		path string
		b    *recordingBackend
	}{{"/plain/http10", echo}, {"/naive/http10", naive}} {
		t.Run(route.path, func(t *testing.T) {
			key := newWebSocketKey()
			res := rawDo(t, rawRequestProto("GET", route.path, "HTTP/1.0", wsHandshakeLines(key)...))
			if res.StatusCode == http.StatusSwitchingProtocols {
				t.Fatalf("HTTP/1.0 request was upgraded: %s %v", res.Status, res.Header)
			}
			requireStatus(t, res, 200)
			rec := route.b.LastRequest()
			if rec.RequestURI != route.path {
				t.Fatalf("backend's latest request is %s, want %s", rec.RequestURI, route.path)
			}
			checkForwardedUpgrade(t, rec, "")
			if rec.Switched {
				t.Errorf("backend switched protocols for an HTTP/1.0 request")
			}
		})
	}
}

// 5. Several protocols in one line or several lines: only the selected
// one reaches the backend, and the client's order of preference wins.
func TestIntegrationMultiValueUpgrade(t *testing.T) {
	echo := newRecordingBackend(t, answerEcho())
	naive := newRecordingBackend(t, answerNaive())
	loadPolicyRoutes(t, echo, naive)

	cases := []struct {
		name     string
		path     string
		upgrades []string // Upgrade field lines
		want     string   // the one protocol the backend must be asked for
	}{
		{"list, first not allowed", "/naive/list", []string{"Upgrade: foo, websocket"}, "websocket"},
		{"two lines", "/naive/lines", []string{"Upgrade: h2c", "Upgrade: websocket"}, "websocket"},
		{"empty elements and spaces", "/naive/ows", []string{"Upgrade: ,\t foo ,, websocket ,"}, "websocket"},
		{"client prefers foo/2", "/pref/foo", []string{"Upgrade: foo/2, websocket"}, "foo/2"},
		{"client prefers websocket", "/pref/ws", []string{"Upgrade: websocket, foo/2"}, "websocket"},
		{"version not allowed", "/pref/foo1", []string{"Upgrade: foo/1, websocket"}, "websocket"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			key := newWebSocketKey()
			lines := append([]string{"Connection: Upgrade"}, tc.upgrades...)
			lines = append(lines, "Sec-WebSocket-Key: "+key, "Sec-WebSocket-Version: 13")
			c := dialRaw(t)
			res := c.Do(rawRequest("GET", tc.path, lines...))
			requireStatus(t, res, http.StatusSwitchingProtocols)
			rec := naive.LastRequest()
			if rec.RequestURI != tc.path {
				t.Fatalf("backend's latest request is %s, want %s", rec.RequestURI, tc.path)
			}
			checkForwardedUpgrade(t, rec, tc.want)
			if got := res.Header.Get("Upgrade"); !strings.EqualFold(got, tc.want) {
				t.Errorf("client's 101 names %q, want %q", got, tc.want)
			}
			// The tunnel carries bytes both ways.
			c.Send("ping through the tunnel")
			buf := make([]byte, len("ping through the tunnel"))
			c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
			if _, err := io.ReadFull(c.R, buf); err != nil || string(buf) != "ping through the tunnel" {
				t.Errorf("tunnel echo: %q, %v", buf, err)
			}
		})
	}
}

// 6. A backend 101 that does not match what was asked: 502, no tunnel, and
// the backend connection is closed.
func TestIntegrationBackendBad101(t *testing.T) {
	h2c := newRecordingBackend(t, answerSwitch(false, "Connection: Upgrade", "Upgrade: h2c", "Sec-WebSocket-Accept: {accept}"))
	noConn := newRecordingBackend(t, answerSwitch(false, "Upgrade: websocket", "Sec-WebSocket-Accept: {accept}"))
	badAccept := newRecordingBackend(t, answerSwitch(false, "Connection: Upgrade", "Upgrade: websocket",
		"Sec-WebSocket-Accept: "+audit.AcceptFor("not the key")))
	noAccept := newRecordingBackend(t, answerSwitch(false, "Connection: Upgrade", "Upgrade: websocket"))
	loadCaddyfile(t, site(fmt.Sprintf(`
	handle /proxy/h2c/* {
		upgrade websocket {
			to %[1]s
		}
	}
	handle /proxy/noconn/* {
		upgrade websocket {
			to %[2]s
		}
	}
	handle /proxy/accept/* {
		upgrade websocket {
			to %[3]s
		}
	}
	handle /proxy/noaccept/* {
		upgrade websocket {
			to %[4]s
		}
	}
	handle /policy/h2c/* {
		upgrade websocket
		reverse_proxy %[1]s
	}
	handle /policy/accept/* {
		upgrade websocket
		reverse_proxy %[3]s
	}
	handle /policy/noaccept/* {
		upgrade websocket
		reverse_proxy %[4]s
	}`, h2c.Addr(), noConn.Addr(), badAccept.Addr(), noAccept.Addr())))

	cases := []struct {
		path string
		b    *recordingBackend
	}{
		{"/proxy/h2c/x", h2c},
		{"/proxy/noconn/x", noConn},
		{"/proxy/accept/x", badAccept},
		{"/proxy/noaccept/x", noAccept},
		{"/policy/h2c/x", h2c},
		{"/policy/accept/x", badAccept},
		{"/policy/noaccept/x", noAccept},
	}
	for _, tc := range cases {
		t.Run(tc.path, func(t *testing.T) {
			c := dialRaw(t)
			req, _ := wsHandshake(tc.path)
			res := c.Do(req)
			requireStatus(t, res, http.StatusBadGateway)
			for _, name := range []string{"Upgrade", "Sec-Websocket-Accept"} {
				if v, ok := res.Header[name]; ok {
					t.Errorf("502 carries the backend's %s %q (all headers: %v)", name, v, res.Header)
				}
			}
			for _, tok := range connectionTokens(res.Header) {
				if tok == "upgrade" {
					t.Errorf("502 carries Connection %q", res.Header["Connection"])
				}
			}
			rec := tc.b.LastRequest()
			if rec.RequestURI != tc.path || !rec.Switched {
				t.Fatalf("backend's latest request is %s (switched %v), want its 101 to %s", rec.RequestURI, rec.Switched, tc.path)
			}
			// The client connection is no tunnel: bytes sent now never
			// reach the backend, which sees its connection closed.
			probe := "RAW-BYTES-AFTER-502 " + tc.path + "\r\n\r\n"
			c.Conn.Write([]byte(probe))
			if !rec.WaitTunnelClosed(3 * time.Second) {
				t.Errorf("backend connection still open 3s after the 502")
			}
			time.Sleep(100 * time.Millisecond)
			if got := rec.TunnelBytes(); len(got) != 0 {
				t.Errorf("backend received %q after its refused 101", got)
			}
			if strings.Contains(string(tc.b.RawBytes()), "RAW-BYTES-AFTER-502") {
				t.Errorf("the client's bytes after the 502 reached the backend")
			}
		})
	}
}

// 7. A backend that refuses the upgrade: its status reaches the client and
// the connection stays HTTP (a pipelined request is parsed as one).
func TestIntegrationBackendRefuses(t *testing.T) {
	b403 := newRecordingBackend(t, answerRefuse(http.StatusForbidden))
	b426 := newRecordingBackend(t, answerRefuse(http.StatusUpgradeRequired, "Upgrade: foo/2", "Connection: Upgrade"))
	loadCaddyfile(t, site(fmt.Sprintf(`
	handle /proxy/403/* {
		upgrade websocket {
			to %[1]s
		}
		reverse_proxy %[1]s
	}
	handle /policy/403/* {
		upgrade websocket
		reverse_proxy %[1]s
	}
	handle /proxy/426/* {
		upgrade websocket {
			to %[2]s
		}
		reverse_proxy %[2]s
	}
	handle /policy/426/* {
		upgrade websocket
		reverse_proxy %[2]s
	}`, b403.Addr(), b426.Addr())))

	cases := []struct {
		prefix string
		status int
		b      *recordingBackend
	}{
		{"/proxy/403", 403, b403},
		{"/policy/403", 403, b403},
		{"/proxy/426", 426, b426},
		{"/policy/426", 426, b426},
	}
	for _, tc := range cases {
		t.Run(tc.prefix, func(t *testing.T) {
			c := dialRaw(t)
			hs, _ := wsHandshake(tc.prefix + "/ws")
			next := rawRequest("GET", tc.prefix+"/next")
			// Pipelined: the second request is on the wire before the
			// first is answered.
			c.Send(hs + next)
			res := c.Read()
			requireStatus(t, res, tc.status)
			if res.Body != "refused" {
				t.Errorf("refusal body %q, want the backend's %q", res.Body, "refused")
			}
			res2, err := c.TryRead("")
			if err != nil {
				t.Fatalf("no response to the pipelined GET %s/next: %v", tc.prefix, err)
			}
			requireStatus(t, res2, 200)
			if want := "backend GET " + tc.prefix + "/next"; res2.Body != want {
				t.Errorf("pipelined response body %q, want %q", res2.Body, want)
			}
			rec := tc.b.LastRequest()
			if rec.RequestURI != tc.prefix+"/next" || rec.Method != "GET" {
				t.Errorf("backend's latest parsed request is %s %s, want GET %s/next", rec.Method, rec.RequestURI, tc.prefix)
			}
			checkForwardedUpgrade(t, rec, "")
			for _, r := range tc.b.Requests() {
				if r.Switched {
					t.Errorf("backend switched protocols for %s", r.RequestURI)
				}
			}
		})
	}
}

// 8. Malformed offers get 400 and never reach the backend.
func TestIntegrationMalformedUpgrade(t *testing.T) {
	echo := newRecordingBackend(t, answerEcho())
	naive := newRecordingBackend(t, answerNaive())
	loadPolicyRoutes(t, echo, naive)

	var seventeen []string
	for i := 1; i <= 17; i++ {
		seventeen = append(seventeen, fmt.Sprintf("p%d", i))
	}
	key := "Sec-WebSocket-Key: " + newWebSocketKey()
	version := "Sec-WebSocket-Version: 13"
	cases := map[string][]string{
		"non-token element":                  {"Connection: Upgrade", "Upgrade: websocket, foo@1", key, version},
		"non-token version":                  {"Connection: Upgrade", "Upgrade: websocket, foo/1/2", key, version},
		"quoted element":                     {"Connection: Upgrade", `Upgrade: "websocket"`, key, version},
		"17 protocols":                       {"Connection: Upgrade", "Upgrade: " + strings.Join(seventeen[:16], ", ") + ", websocket", key, version},
		"17 protocols over lines":            {"Connection: Upgrade", "Upgrade: " + strings.Join(seventeen[:9], ","), "Upgrade: " + strings.Join(seventeen[9:16], ",") + ",websocket", key, version},
		"513 bytes":                          {"Connection: Upgrade", "Upgrade: websocket, " + strings.Repeat("a", 502), key, version},
		"513 bytes over lines":               {"Connection: Upgrade", "Upgrade: websocket, " + strings.Repeat("a", 240), "Upgrade: " + strings.Repeat("b", 262), key, version},
		"Connection names Sec-WebSocket-Key": {"Connection: Upgrade, Sec-WebSocket-Key", "Upgrade: websocket", key, version},
		"Connection names Origin":            {"Connection: Upgrade", "Connection: Origin", "Upgrade: websocket", key, version, "Origin: http://evil.example"},
		"folded Upgrade line":                {"Connection: Upgrade", "Upgrade: h2c\r\n websocket", key, version},
	}
	// Controls: right at the limits, the same offers are accepted.
	limits := map[string][]string{
		"16 protocols":         {"Connection: Upgrade", "Upgrade: " + strings.Join(seventeen[:15], ", ") + ", websocket", key, version},
		"512 bytes":            {"Connection: Upgrade", "Upgrade: websocket, " + strings.Repeat("a", 501), key, version},
		"512 bytes over lines": {"Connection: Upgrade", "Upgrade: websocket, " + strings.Repeat("a", 240), "Upgrade: " + strings.Repeat("b", 261), key, version},
	}
	for name, lines := range limits {
		t.Run("control "+name, func(t *testing.T) {
			res := rawDo(t, rawRequest("GET", "/naive/limit", lines...))
			requireStatus(t, res, http.StatusSwitchingProtocols)
			checkForwardedUpgrade(t, naive.LastRequest(), "websocket")
		})
	}
	for name, lines := range cases {
		t.Run(name, func(t *testing.T) {
			for _, b := range []*recordingBackend{echo, naive} {
				path := "/plain/bad"
				if b == naive {
					path = "/pref/bad"
				}
				snap := b.Snapshot()
				res := rawDo(t, rawRequest("GET", path, lines...))
				if res.StatusCode != http.StatusBadRequest {
					t.Errorf("%s: status %s, want 400; body %q", path, res.Status, res.Body)
				}
				time.Sleep(50 * time.Millisecond)
				b.RequireUntouchedSince(snap, path)
			}
		})
	}
}

// 9. Placeholders, and refusals rendered through handle_errors with their
// headers still set.
func TestIntegrationPlaceholdersAndErrors(t *testing.T) {
	loadCaddyfile(t, site(`
	handle /ph/* {
		upgrade websocket
		respond "outcome={http.upgrade.outcome} protocol={http.upgrade.protocol} offered={http.upgrade.offered}"
	}
	handle /err/require/* {
		upgrade websocket foo/2 {
			require
		}
		respond "accepted"
	}
	handle /err/reject/* {
		upgrade websocket {
			on_disallowed reject
		}
		respond "accepted"
	}
	handle_errors {
		respond "{err.status_code} {err.message} outcome={http.upgrade.outcome}"
	}`))

	t.Run("placeholders", func(t *testing.T) {
		key := newWebSocketKey()
		cases := []struct {
			name  string
			lines []string
			want  string
		}{
			{"no offer", nil, "outcome=none protocol= offered="},
			{"stray Upgrade", []string{"Upgrade: websocket"}, "outcome=none protocol= offered="},
			{"stripped offer", []string{"Connection: Upgrade", "Upgrade: foo/1"}, "outcome=ignored protocol= offered=foo/1"},
			{"stripped multi-line offer", []string{"Connection: Upgrade", "Upgrade: h2c", "Upgrade: foo"}, "outcome=ignored protocol= offered=h2c, foo"},
			{"accepted, next handler answers 200", []string{"Connection: Upgrade", "Upgrade: foo, WebSocket", "Sec-WebSocket-Key: " + key, "Sec-WebSocket-Version: 13"},
				"outcome=accepted protocol=WebSocket offered=foo, WebSocket"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				res := rawDo(t, rawRequest("GET", "/ph/x", tc.lines...))
				requireStatus(t, res, 200)
				if res.Body != tc.want {
					t.Errorf("body %q, want %q", res.Body, tc.want)
				}
			})
		}
	})

	t.Run("426", func(t *testing.T) {
		res := rawDo(t, rawRequest("GET", "/err/require/x"))
		requireStatus(t, res, http.StatusUpgradeRequired)
		if !strings.HasPrefix(res.Body, "426 ") || !strings.Contains(res.Body, "websocket, foo/2") || !strings.HasSuffix(res.Body, "outcome=required") {
			t.Errorf("handle_errors body %q, want \"426 <message naming websocket, foo/2> outcome=required\"", res.Body)
		}
		if got := res.Header["Upgrade"]; !reflect.DeepEqual(got, []string{"websocket, foo/2"}) {
			t.Errorf("426 through handle_errors: Upgrade %q, want [\"websocket, foo/2\"]", got)
		}
		if got := res.Header["Connection"]; !reflect.DeepEqual(got, []string{"Upgrade"}) {
			t.Errorf("426 through handle_errors: Connection %q, want [\"Upgrade\"]", got)
		}
	})

	t.Run("426 WebSocket version", func(t *testing.T) {
		res := rawDo(t, rawRequest("GET", "/err/reject/x", "Connection: Upgrade", "Upgrade: websocket",
			"Sec-WebSocket-Key: "+newWebSocketKey(), "Sec-WebSocket-Version: 8"))
		requireStatus(t, res, http.StatusUpgradeRequired)
		if !strings.HasPrefix(res.Body, "426 ") || !strings.HasSuffix(res.Body, "outcome=required") {
			t.Errorf("handle_errors body %q", res.Body)
		}
		if got := res.Header.Get("Sec-WebSocket-Version"); got != "13" {
			t.Errorf("426 Sec-WebSocket-Version %q, want 13", got)
		}
		if got := res.Header.Get("Upgrade"); got != "websocket" {
			t.Errorf("426 Upgrade %q, want websocket", got)
		}
	})

	t.Run("403", func(t *testing.T) {
		res := rawDo(t, rawRequest("GET", "/err/reject/x", "Connection: Upgrade", "Upgrade: foo"))
		requireStatus(t, res, http.StatusForbidden)
		if !strings.HasPrefix(res.Body, "403 ") || !strings.HasSuffix(res.Body, "outcome=rejected") || len(res.Body) < len("403  outcome=rejected")+5 {
			t.Errorf("handle_errors body %q, want \"403 <reason> outcome=rejected\"", res.Body)
		}
	})

	t.Run("400", func(t *testing.T) {
		res := rawDo(t, rawRequest("GET", "/err/require/x", "Connection: Upgrade", "Upgrade: foo@1"))
		requireStatus(t, res, http.StatusBadRequest)
		if !strings.HasPrefix(res.Body, "400 ") || !strings.HasSuffix(res.Body, "outcome=invalid") || !strings.Contains(res.Body, "foo@1") {
			t.Errorf("handle_errors body %q, want \"400 <reason naming foo@1> outcome=invalid\"", res.Body)
		}
	})
}

// 10. max_connections: the third WebSocket gets 503 with Retry-After, and
// a slot frees when a tunnel closes.
func TestIntegrationMaxConnections(t *testing.T) {
	backend := newRecordingBackend(t, answerEcho())
	loadCaddyfile(t, site(fmt.Sprintf(`
	handle /limit/* {
		upgrade websocket {
			max_connections 2
			to %s
		}
	}`, backend.Addr())))

	c1 := mustDialWebSocket(t, "/limit/1")
	wsEcho(t, c1, "one")
	c2 := mustDialWebSocket(t, "/limit/2")
	wsEcho(t, c2, "two")

	snap := backend.Snapshot()
	_, res, err := dialWebSocket(t, "/limit/3")
	if err == nil {
		t.Fatalf("third WebSocket opened past max_connections 2")
	}
	if res == nil || res.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("third WebSocket: %v, response %v; want 503", err, res)
	}
	if res.Header.Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After: %v", res.Header)
	}
	backend.RequireUntouchedSince(snap, "upgrade refused by max_connections")
	wsEcho(t, c1, "one still open")

	c1.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	c1.Close()
	var c4 *websocket.Conn
	if !pollUntil(5*time.Second, func() bool {
		c, _, err := dialWebSocket(t, "/limit/4")
		c4 = c
		return err == nil
	}) {
		t.Fatalf("no WebSocket could open within 5s after one of two closed")
	}
	wsEcho(t, c4, "four")
	wsEcho(t, c2, "two still open")
}

// 11. idle_timeout and max_duration close tunnels; traffic keeps an idle
// timeout at bay.
func TestIntegrationTunnelTimeouts(t *testing.T) {
	backend := newRecordingBackend(t, answerEcho())
	loadCaddyfile(t, site(fmt.Sprintf(`
	handle /idle/* {
		upgrade websocket {
			idle_timeout 500ms
			to %[1]s
		}
	}
	handle /life/* {
		upgrade websocket {
			max_duration 1s
			to %[1]s
		}
	}`, backend.Addr())))

	t.Run("idle tunnel closed", func(t *testing.T) {
		c := mustDialWebSocket(t, "/idle/quiet")
		wsEcho(t, c, "hello")
		start := time.Now()
		c.SetReadDeadline(start.Add(6 * time.Second))
		_, _, err := c.ReadMessage()
		elapsed := time.Since(start)
		if err == nil {
			t.Fatalf("an idle tunnel delivered a message")
		}
		if ne, ok := err.(interface{ Timeout() bool }); ok && ne.Timeout() {
			t.Fatalf("idle tunnel still open after 6s (idle_timeout 500ms)")
		}
		if elapsed < 300*time.Millisecond || elapsed > 4*time.Second {
			t.Errorf("idle tunnel closed after %v, want about 500ms", elapsed)
		}
		if !backend.LastRequest().WaitTunnelClosed(3 * time.Second) {
			t.Errorf("backend side of the idle tunnel still open 3s after the client side closed")
		}
	})

	t.Run("chatty tunnel stays open", func(t *testing.T) {
		c := mustDialWebSocket(t, "/idle/chatty")
		start := time.Now()
		for i := 0; time.Since(start) < 1600*time.Millisecond; i++ {
			wsEcho(t, c, fmt.Sprintf("tick %d", i))
			time.Sleep(100 * time.Millisecond)
		}
	})

	t.Run("max_duration closes a chatty tunnel", func(t *testing.T) {
		c := mustDialWebSocket(t, "/life/chatty")
		start := time.Now()
		var err error
		for i := 0; time.Since(start) < 6*time.Second; i++ {
			c.SetWriteDeadline(time.Now().Add(time.Second))
			if err = c.WriteMessage(websocket.TextMessage, []byte("tick")); err != nil {
				break
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			if _, _, err = c.ReadMessage(); err != nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		elapsed := time.Since(start)
		if err == nil {
			t.Fatalf("tunnel still open after 6s (max_duration 1s)")
		}
		if elapsed < 700*time.Millisecond || elapsed > 4*time.Second {
			t.Errorf("tunnel closed after %v (%v), want about 1s", elapsed, err)
		}
		if !backend.LastRequest().WaitTunnelClosed(3 * time.Second) {
			t.Errorf("backend side of the tunnel still open 3s after max_duration closed the client side")
		}
	})
}

// 12. websocket.subprotocols: a client whose offered subprotocols are all
// outside the list gets 403 naming the allowed ones, and the backend is
// never contacted; an allowed one among them, or no offer at all, passes.
func TestIntegrationSubprotocolsRefused(t *testing.T) {
	backend := newRecordingBackend(t, answerEcho())
	loadCaddyfile(t, site(fmt.Sprintf(`
	handle /sub/* {
		upgrade websocket {
			subprotocols chat v2.chat
			to %s
		}
	}
	handle_errors {
		respond "{err.status_code} {err.message} outcome={http.upgrade.outcome}"
	}`, backend.Addr())))

	lines := func(protocols ...string) []string {
		l := wsHandshakeLines(newWebSocketKey())
		for _, p := range protocols {
			l = append(l, "Sec-WebSocket-Protocol: "+p)
		}
		return l
	}
	for name, offered := range map[string][]string{
		"one unknown":          {"mqtt"},
		"two unknown, 2 lines": {"mqtt", "soap"},
		"case differs":         {"Chat"},
	} {
		t.Run(name, func(t *testing.T) {
			snap := backend.Snapshot()
			res := rawDo(t, rawRequest("GET", "/sub/x", lines(offered...)...))
			requireStatus(t, res, http.StatusForbidden)
			if !strings.Contains(res.Body, "(allowed: chat, v2.chat)") || !strings.Contains(res.Body, "outcome=rejected") {
				t.Errorf("403 body %q does not name the allowed subprotocols and outcome rejected", res.Body)
			}
			time.Sleep(50 * time.Millisecond)
			backend.RequireUntouchedSince(snap, "offer of no allowed subprotocol")
		})
	}
	for name, tc := range map[string]struct {
		offered []string
		want    string // forwarded Sec-WebSocket-Protocol
	}{
		"allowed among unknown": {[]string{"mqtt, v2.chat", "chat"}, "v2.chat, chat"},
		"none offered":          {nil, ""},
	} {
		t.Run(name, func(t *testing.T) {
			res := rawDo(t, rawRequest("GET", "/sub/x", lines(tc.offered...)...))
			requireStatus(t, res, http.StatusSwitchingProtocols)
			if got := strings.Join(backend.LastRequest().Header["Sec-Websocket-Protocol"], "|"); got != tc.want {
				t.Errorf("backend got Sec-WebSocket-Protocol %q, want %q", got, tc.want)
			}
		})
	}
}
