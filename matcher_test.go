package upgrade

// Tests of the `upgrade` request matcher (docs/behaviour.md §8): unit tests
// over built requests, Validate, Caddyfile unmarshalling, and routing inside
// Caddy, as a named matcher and as a CEL expression.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/seedf05e/caddy-upgrade/internal/protocol/protocoltest"
)

// matcherHeader builds a header from "Name: value" lines, each kept as its own
// field line.
func matcherHeader(lines ...string) http.Header {
	h := http.Header{}
	for _, l := range lines {
		name, value, _ := strings.Cut(l, ":")
		h[http.CanonicalHeaderKey(strings.TrimSpace(name))] = append(h[http.CanonicalHeaderKey(strings.TrimSpace(name))], strings.TrimSpace(value))
	}
	return h
}

func TestMatcherMatchWithError(t *testing.T) {
	h2 := func(method, proto string) *http.Request {
		r := protocoltest.Request(method, 2, 0, http.Header{":protocol": {proto}})
		return r
	}
	h3 := func(method, proto string) *http.Request {
		r := protocoltest.Request(method, 3, 0, nil)
		r.Proto = proto
		return r
	}
	h1 := func(lines ...string) *http.Request { return protocoltest.Request("GET", 1, 1, matcherHeader(lines...)) }
	tests := []struct {
		name    string
		matcher MatchUpgrade
		req     *http.Request
		want    bool
	}{
		// HTTP/1.1 offers
		{"plain websocket", MatchUpgrade{"websocket"}, h1("Connection: Upgrade", "Upgrade: websocket"), true},
		{"no offer", MatchUpgrade{"websocket"}, h1(), false},
		{"other protocol only", MatchUpgrade{"websocket"}, h1("Connection: Upgrade", "Upgrade: foo"), false},
		{"second of a list", MatchUpgrade{"websocket"}, h1("Connection: Upgrade", "Upgrade: foo/1, websocket"), true},
		{"second of several lines", MatchUpgrade{"websocket"}, h1("Connection: Upgrade", "Upgrade: foo/1", "Upgrade: websocket"), true},
		{"empty elements skipped", MatchUpgrade{"websocket"}, h1("Connection: Upgrade", "Upgrade: ,, \t websocket ,"), true},
		{"Connection token in a second line", MatchUpgrade{"websocket"}, h1("Connection: keep-alive", "Connection: Upgrade", "Upgrade: websocket"), true},
		{"Connection token in a list, odd case", MatchUpgrade{"websocket"}, h1("Connection: keep-alive, uPgRaDe", "Upgrade: websocket"), true},
		{"Upgrade without Connection", MatchUpgrade{"websocket"}, h1("Upgrade: websocket"), false},
		{"Connection without the upgrade token", MatchUpgrade{"websocket"}, h1("Connection: keep-alive", "Upgrade: websocket"), false},
		{"Connection: upgrade without Upgrade", MatchUpgrade{"websocket"}, h1("Connection: Upgrade"), false},
		{"HTTP/1.0", MatchUpgrade{"websocket"}, protocoltest.Request("GET", 1, 0, matcherHeader("Connection: Upgrade", "Upgrade: websocket")), false},
		// name and version rules
		{"name case-insensitive (offer)", MatchUpgrade{"websocket"}, h1("Connection: Upgrade", "Upgrade: WebSocket"), true},
		{"name case-insensitive (matcher)", MatchUpgrade{"WEBSOCKET"}, h1("Connection: Upgrade", "Upgrade: websocket"), true},
		{"bare name matches any version", MatchUpgrade{"foo"}, h1("Connection: Upgrade", "Upgrade: foo/7"), true},
		{"bare name matches no version", MatchUpgrade{"foo"}, h1("Connection: Upgrade", "Upgrade: foo"), true},
		{"version matches exactly", MatchUpgrade{"foo/2"}, h1("Connection: Upgrade", "Upgrade: foo/2"), true},
		{"other version", MatchUpgrade{"foo/2"}, h1("Connection: Upgrade", "Upgrade: foo/1"), false},
		{"versioned entry, unversioned offer", MatchUpgrade{"foo/2"}, h1("Connection: Upgrade", "Upgrade: foo"), false},
		{"version case-sensitive", MatchUpgrade{"foo/v2"}, h1("Connection: Upgrade", "Upgrade: foo/V2"), false},
		{"name case-insensitive with version", MatchUpgrade{"foo/v2"}, h1("Connection: Upgrade", "Upgrade: FOO/v2"), true},
		{"several entries", MatchUpgrade{"websocket", "foo/2"}, h1("Connection: Upgrade", "Upgrade: bar, foo/2"), true},
		{"name is not a prefix", MatchUpgrade{"web"}, h1("Connection: Upgrade", "Upgrade: websocket"), false},
		// malformed offers are no match (the handler answers them)
		{"malformed element", MatchUpgrade{"websocket"}, h1("Connection: Upgrade", "Upgrade: websocket, foo@1"), false},
		{"folded line", MatchUpgrade{"websocket"}, h1("Connection: Upgrade", "Upgrade: h2c websocket"), false},
		{"17 protocols", MatchUpgrade{"websocket"}, h1("Connection: Upgrade", "Upgrade: "+protocoltest.NumberedProtocols(16)+", websocket"), false},
		{"Connection names Sec-WebSocket-Key", MatchUpgrade{"websocket"}, h1("Connection: Upgrade, Sec-WebSocket-Key", "Upgrade: websocket"), false},
		// extended CONNECT
		{"h2 :protocol", MatchUpgrade{"websocket"}, h2("CONNECT", "websocket"), true},
		{"h2 :protocol, matcher case", MatchUpgrade{"WebSocket"}, h2("CONNECT", "websocket"), true},
		{"h2 :protocol not listed", MatchUpgrade{"websocket"}, h2("CONNECT", "foo"), false},
		{"h2 :protocol against a versioned entry", MatchUpgrade{"foo/2"}, h2("CONNECT", "foo"), false},
		{"h2 :protocol against a bare entry", MatchUpgrade{"foo/2", "foo"}, h2("CONNECT", "foo"), true},
		{"h2 :protocol on GET", MatchUpgrade{"websocket"}, h2("GET", "websocket"), false},
		{"h2 :protocol not a token", MatchUpgrade{"websocket"}, h2("CONNECT", "web socket"), false},
		{"h2 :protocol with a slash", MatchUpgrade{"foo"}, h2("CONNECT", "foo/2"), false},
		{"h2 plain CONNECT", MatchUpgrade{"websocket"}, protocoltest.Request("CONNECT", 2, 0, nil), false},
		{"h2 stray Upgrade header", MatchUpgrade{"websocket"}, protocoltest.Request("GET", 2, 0, matcherHeader("Connection: Upgrade", "Upgrade: websocket")), false},
		{"h3 extended CONNECT", MatchUpgrade{"websocket"}, h3("CONNECT", "websocket"), true},
		{"h3 plain CONNECT", MatchUpgrade{"websocket"}, h3("CONNECT", "HTTP/3.0"), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.req.Header.Clone()
			got, err := tc.matcher.MatchWithError(tc.req)
			if err != nil {
				t.Fatalf("MatchWithError: unexpected error %v", err)
			}
			if got != tc.want {
				t.Errorf("%v.MatchWithError(%s %s %v) = %v, want %v", tc.matcher, tc.req.Method, tc.req.Proto, tc.req.Header, got, tc.want)
			}
			if m := tc.matcher.Match(tc.req); m != got {
				t.Errorf("Match = %v, MatchWithError = %v", m, got)
			}
			if !reflect.DeepEqual(before, tc.req.Header) {
				t.Errorf("the matcher changed the request header: %v -> %v", before, tc.req.Header)
			}
		})
	}
}

func TestMatcherValidate(t *testing.T) {
	valid := []MatchUpgrade{{"websocket"}, {"websocket", "foo/2"}, {"Foo/v2.1"}, {"h2c"}}
	for _, m := range valid {
		if err := m.Validate(); err != nil {
			t.Errorf("%q: Validate: %v", []string(m), err)
		}
	}
	invalid := map[string]MatchUpgrade{
		"empty":             {},
		"nil":               nil,
		"empty entry":       {""},
		"not a token":       {"foo@1"},
		"two slashes":       {"foo/1/2"},
		"empty version":     {"foo/"},
		"empty name":        {"/2"},
		"space":             {"web socket"},
		"one bad of two":    {"websocket", "bad entry"},
		"quoted":            {`"websocket"`},
		"comma list as one": {"websocket,foo"},
	}
	for name, m := range invalid {
		t.Run(name, func(t *testing.T) {
			err := m.Validate()
			if err == nil {
				t.Fatalf("Validate(%q) = nil, want an error", []string(m))
			}
			if !strings.Contains(err.Error(), "upgrade matcher") {
				t.Errorf("error %q does not name the upgrade matcher", err)
			}
		})
	}
}

func TestMatcherUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		input string
		want  MatchUpgrade
	}{
		{"upgrade websocket", MatchUpgrade{"websocket"}},
		{"upgrade websocket foo/2", MatchUpgrade{"websocket", "foo/2"}},
		{"upgrade websocket\nupgrade foo/2", MatchUpgrade{"websocket", "foo/2"}},
	}
	for _, tc := range tests {
		var m MatchUpgrade
		if err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
			t.Errorf("%q: %v", tc.input, err)
			continue
		}
		if !reflect.DeepEqual(m, tc.want) {
			t.Errorf("%q: got %q, want %q", tc.input, []string(m), []string(tc.want))
		}
	}
	for _, bad := range []string{"upgrade", "upgrade websocket {\n\tfoo\n}"} {
		var m MatchUpgrade
		if err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("%q: no error, got %q", bad, []string(m))
		}
	}
}

// TestMatcherAdaptedJSON: `@ws upgrade websocket foo/2` adapts to the
// matcher's JSON form, a list of strings.
func TestMatcherAdaptedJSON(t *testing.T) {
	out, err := adaptCaddyfile(t, `:8080 {
	@ws upgrade websocket foo/2
	respond @ws "ws"
}`)
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	var doc any
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	found := false
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if m, ok := v["match"].([]any); ok {
				for _, set := range m {
					if set, ok := set.(map[string]any); ok {
						if raw, ok := set["upgrade"]; ok {
							found = true
							if !reflect.DeepEqual(raw, []any{"websocket", "foo/2"}) {
								t.Errorf("upgrade matcher JSON %v, want [websocket foo/2]", raw)
							}
						}
					}
				}
			}
			for _, e := range v {
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(doc)
	if !found {
		t.Fatalf("no upgrade matcher in the adapted config:\n%s", out)
	}
}

// TestMatcherLoadedByCaddy: the module is registered under
// http.matchers.upgrade and loads from JSON as a RequestMatcherWithError.
func TestMatcherLoadedByCaddy(t *testing.T) {
	info, err := caddy.GetModule("http.matchers.upgrade")
	if err != nil {
		t.Fatal(err)
	}
	mod := info.New()
	if err := json.Unmarshal([]byte(`["websocket"]`), mod); err != nil {
		t.Fatal(err)
	}
	m, ok := mod.(caddyhttp.RequestMatcherWithError)
	if !ok {
		t.Fatalf("%T is not a RequestMatcherWithError", mod)
	}
	got, err := m.MatchWithError(protocoltest.Request("GET", 1, 1, matcherHeader("Connection: Upgrade", "Upgrade: websocket")))
	if err != nil || !got {
		t.Fatalf("loaded matcher: %v, %v; want a match", got, err)
	}
}

// TestMatcherIntegrationRouting: inside Caddy, `@ws upgrade websocket`
// sends WebSocket offers to one backend and everything else (an Upgrade
// without Connection included) to another; the CEL form routes the same.
func TestMatcherIntegrationRouting(t *testing.T) {
	wsBackend := newRecordingBackend(t, answerEcho())
	other := newRecordingBackend(t, answerEcho())
	loadCaddyfile(t, site(fmt.Sprintf(`
	handle /named/* {
		@ws upgrade websocket foo/2
		reverse_proxy @ws %[1]s
		reverse_proxy %[2]s
	}
	handle /cel/* {
		@ws expression upgrade('websocket')
		reverse_proxy @ws %[1]s
		reverse_proxy %[2]s
	}
	handle /cel2/* {
		@ws expression upgrade('foo/2', 'websocket') && path('/cel2/ws')
		respond @ws "cel matched"
		respond "cel did not match"
	}`, wsBackend.Addr(), other.Addr())))

	for _, prefix := range []string{"/named", "/cel"} {
		t.Run(prefix, func(t *testing.T) {
			// A WebSocket goes to the WebSocket backend and echoes.
			c := mustDialWebSocket(t, prefix+"/ws")
			wsEcho(t, c, "routed "+prefix)
			if rec := wsBackend.LastRequest(); rec.RequestURI != prefix+"/ws" || !rec.Switched {
				t.Errorf("WebSocket backend's latest request %s (switched %v), want the upgrade of %s/ws", rec.RequestURI, rec.Switched, prefix)
			}
			c.Close()

			cases := []struct {
				name  string
				lines []string
				toWS  bool
				// status is the answer's status; 0: whatever the backend
				// says (gorilla refuses a malformed handshake with 400).
				status int
			}{
				{"plain GET", nil, false, http.StatusOK},
				{"Upgrade without Connection", []string{"Upgrade: websocket", "Sec-WebSocket-Key: " + newWebSocketKey(), "Sec-WebSocket-Version: 13"}, false, http.StatusOK},
				{"h2c offer", []string{"Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"}, false, http.StatusOK},
				{"malformed offer", []string{"Connection: Upgrade", "Upgrade: websocket, foo@1"}, false, 0},
				{"mixed-case websocket", []string{"Connection: keep-alive, Upgrade", "Upgrade: WebSocket", "Sec-WebSocket-Key: " + newWebSocketKey(), "Sec-WebSocket-Version: 13"}, true, http.StatusSwitchingProtocols},
			}
			for i, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					path := fmt.Sprintf("%s/case%d", prefix, i)
					wsSnap, otherSnap := wsBackend.Snapshot(), other.Snapshot()
					c := dialRaw(t)
					res := c.Do(rawRequest("GET", path, tc.lines...))
					c.Conn.Close()
					want, untouched := other, wsBackend
					wantSnap, untouchedSnap := otherSnap, wsSnap
					if tc.toWS {
						want, untouched, wantSnap, untouchedSnap = wsBackend, other, wsSnap, otherSnap
					}
					if tc.status != 0 {
						requireStatus(t, res, tc.status)
					}
					if !pollUntil(harnessIO, func() bool { return len(want.Requests()) > wantSnap.Requests }) {
						t.Fatalf("%s did not reach the expected backend", path)
					}
					if rec := want.LastRequest(); rec.RequestURI != path {
						t.Errorf("expected backend's latest request is %s, want %s", rec.RequestURI, path)
					}
					if n := len(untouched.Requests()); n != untouchedSnap.Requests {
						t.Errorf("%s also reached the other backend (%d new requests)", path, n-untouchedSnap.Requests)
					}
				})
			}
		})
	}

	t.Run("cel with several protocols", func(t *testing.T) {
		res := rawDo(t, rawRequest("GET", "/cel2/ws", "Connection: Upgrade", "Upgrade: foo/2"))
		requireStatus(t, res, http.StatusOK)
		if res.Body != "cel matched" {
			t.Errorf("foo/2 offer: body %q, want \"cel matched\"", res.Body)
		}
		res = rawDo(t, rawRequest("GET", "/cel2/ws", "Connection: Upgrade", "Upgrade: foo/1"))
		if res.Body != "cel did not match" {
			t.Errorf("foo/1 offer: body %q, want \"cel did not match\"", res.Body)
		}
		res = rawDo(t, rawRequest("GET", "/cel2/ws", "Upgrade: foo/2"))
		if res.Body != "cel did not match" {
			t.Errorf("Upgrade without Connection: body %q, want \"cel did not match\"", res.Body)
		}
	})
}

// TestMatcherCELRejectsNonConstant: the CEL form takes string constants
// only, like Caddy's other list matchers; a config with anything else is
// refused at load.
func TestMatcherCELRejectsNonConstant(t *testing.T) {
	for _, expr := range []string{"upgrade()", "upgrade(1)", "upgrade(true)"} {
		out, err := adaptCaddyfile(t, ":8080 {\n\t@ws expression "+expr+"\n\trespond @ws \"ws\"\n}\n")
		if err == nil {
			// The adapter does not compile CEL; provisioning does.
			cfg := new(caddy.Config)
			if jerr := json.Unmarshal(out, cfg); jerr != nil {
				t.Fatal(jerr)
			}
			err = caddy.Validate(cfg)
		}
		if err == nil {
			t.Errorf("expression %s was accepted", expr)
		}
	}
}
