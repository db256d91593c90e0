package upgrade

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/seedf05e/caddy-upgrade/internal/protocol"
)

// provisionHandler provisions h in a bare context, as Caddy's own module
// tests do. It cannot load a proxy (reverse_proxy needs a loaded config):
// use loadHandler for that.
func provisionHandler(t *testing.T, h *Handler) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("Provision: %v", err)
	}
}

// harnessApp is a test-only Caddy app whose Provision runs harnessRun with
// a context that belongs to a loaded config, so that nested modules which
// ask for other apps (reverse_proxy asks for "events") can be provisioned.
type harnessApp struct{}

var harnessRun func(ctx caddy.Context) error

func init() { caddy.RegisterModule(harnessApp{}) }

func (harnessApp) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "upgrade_test_harness", New: func() caddy.Module { return new(harnessApp) }}
}
func (*harnessApp) Provision(ctx caddy.Context) error { return harnessRun(ctx) }
func (*harnessApp) Start() error                      { return nil }
func (*harnessApp) Stop() error                       { return nil }

// loadHandler loads the JSON config of an upgrade handler the way Caddy
// does for a route's handler: ctx.LoadModuleByID decodes it, provisions it
// (loading its proxy) and validates it.
func loadHandler(t *testing.T, raw string) (*Handler, error) {
	t.Helper()
	var h *Handler
	var loadErr error
	harnessRun = func(ctx caddy.Context) error {
		mod, err := ctx.LoadModuleByID("http.handlers.upgrade", json.RawMessage(raw))
		if err != nil {
			loadErr = err
			return nil
		}
		h = mod.(*Handler)
		return nil
	}
	defer func() { harnessRun = nil }()
	cfg := &caddy.Config{AppsRaw: caddy.ModuleMap{"upgrade_test_harness": json.RawMessage(`{}`)}}
	if err := caddy.Validate(cfg); err != nil {
		t.Fatalf("harness config: %v", err)
	}
	return h, loadErr
}

func TestModuleRegistered(t *testing.T) {
	info, err := caddy.GetModule("http.handlers.upgrade")
	if err != nil {
		t.Fatalf("GetModule: %v", err)
	}
	if info.ID != "http.handlers.upgrade" {
		t.Errorf("ID = %q", info.ID)
	}
	if info.ID.Name() != "upgrade" || info.ID.Namespace() != "http.handlers" {
		t.Errorf("ID name %q namespace %q", info.ID.Name(), info.ID.Namespace())
	}
	if _, ok := info.New().(*Handler); !ok {
		t.Errorf("New() = %T; want *Handler", info.New())
	}
	if got := (Handler{}).CaddyModule().ID; got != "http.handlers.upgrade" {
		t.Errorf("CaddyModule().ID = %q", got)
	}
}

// validateCases are configs Validate must refuse, with the text the error
// must contain to name the offending field and value.
var validateCases = []struct {
	name string
	json string
	want []string
}{
	{"no protocols key", `{}`, []string{"protocols"}},
	{"empty protocols", `{"protocols": []}`, []string{"protocols"}},
	{"non-token protocol", `{"protocols": ["web socket"]}`, []string{"protocols", `web socket`}},
	{"empty protocol", `{"protocols": [""]}`, []string{"protocols", `""`}},
	{"a/b/c", `{"protocols": ["a/b/c"]}`, []string{"protocols", "a/b/c"}},
	{"trailing slash", `{"protocols": ["foo/"]}`, []string{"protocols", "foo/"}},
	{"leading slash", `{"protocols": ["/2"]}`, []string{"protocols", "/2"}},
	{"protocol with comma", `{"protocols": ["websocket,foo"]}`, []string{"protocols", "websocket,foo"}},
	{"duplicate websocket WebSocket", `{"protocols": ["websocket", "WebSocket"]}`, []string{"protocols", "WebSocket"}},
	{"exact duplicate", `{"protocols": ["foo/2", "foo/2"]}`, []string{"protocols", "foo/2"}},
	{"websocket/13", `{"protocols": ["websocket/13"]}`, []string{"protocols", "websocket/13"}},
	{"WebSocket/13", `{"protocols": ["foo", "WebSocket/13"]}`, []string{"protocols", "WebSocket/13"}},
	{"h2c", `{"protocols": ["websocket", "h2c"]}`, []string{"protocols", "h2c"}},
	{"H2C/1", `{"protocols": ["H2C/1"]}`, []string{"protocols", "H2C/1"}},
	{"HTTP", `{"protocols": ["HTTP"]}`, []string{"protocols", "HTTP"}},
	{"http/2.0", `{"protocols": ["http/2.0"]}`, []string{"protocols", "http/2.0"}},
	{"HTTP/1.1", `{"protocols": ["HTTP/1.1"]}`, []string{"protocols", "HTTP/1.1"}},
	{"unknown on_disallowed", `{"protocols": ["websocket"], "on_disallowed": "maybe"}`, []string{"on_disallowed", "maybe"}},
	{"on_disallowed wrong case", `{"protocols": ["websocket"], "on_disallowed": "Reject"}`, []string{"on_disallowed", "Reject"}},
	{"negative max_connections", `{"protocols": ["websocket"], "max_connections": -1}`, []string{"max_connections", "-1"}},
	{"negative idle_timeout", `{"protocols": ["websocket"], "idle_timeout": "-1s"}`, []string{"idle_timeout"}},
	{"negative idle_timeout as number", `{"protocols": ["websocket"], "idle_timeout": -1}`, []string{"idle_timeout"}},
	{"negative max_duration", `{"protocols": ["websocket"], "max_duration": "-5m"}`, []string{"max_duration"}},
	{"websocket block without websocket", `{"protocols": ["foo/2"], "websocket": {"subprotocols": ["chat"]}}`, []string{"websocket"}},
	{"empty websocket block without websocket", `{"protocols": ["foo"], "websocket": {}}`, []string{"websocket"}},
	{"origin with path", `{"protocols": ["websocket"], "websocket": {"origins": ["https://a.com/path"]}}`, []string{"origin", "https://a.com/path"}},
	{"origin with trailing slash", `{"protocols": ["websocket"], "websocket": {"origins": ["https://a.com/"]}}`, []string{"origin", "https://a.com/"}},
	{"origin null", `{"protocols": ["websocket"], "websocket": {"origins": ["https://ok.com", "null"]}}`, []string{"origin", "null"}},
	{"origin with userinfo", `{"protocols": ["websocket"], "websocket": {"origins": ["https://user@a.com"]}}`, []string{"origin", "https://user@a.com"}},
	{"origin without scheme", `{"protocols": ["websocket"], "websocket": {"origins": ["a.com"]}}`, []string{"origin", "a.com"}},
	{"origin placeholder with path", `{"protocols": ["websocket"], "websocket": {"origins": ["{http.request.scheme}://{http.request.host}/x"]}}`, []string{"origin", "{http.request.scheme}://{http.request.host}/x"}},
	{"non-token subprotocol", `{"protocols": ["websocket"], "websocket": {"subprotocols": ["a b"]}}`, []string{"subprotocols", "a b"}},
}

// TestValidate calls Validate on the decoded config, without Provision.
func TestValidate(t *testing.T) {
	for _, tc := range validateCases {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			if err := json.Unmarshal([]byte(tc.json), &h); err != nil {
				t.Fatalf("unmarshal: %v", err)
			}
			err := h.Validate()
			if err == nil {
				t.Fatalf("Validate(%s) = nil; want an error", tc.json)
			}
			t.Logf("error: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate(%s) = %q; want it to name %q", tc.json, err, w)
				}
			}
		})
	}
}

// TestValidateLoaded runs the same table the way Caddy loads a handler
// (Provision, then Validate): the config is still refused, and the error
// still names the value.
func TestValidateLoaded(t *testing.T) {
	for _, tc := range validateCases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadHandler(t, tc.json)
			if err == nil {
				t.Fatalf("loading %s succeeded; want an error", tc.json)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("loading %s: %q; want it to name %q", tc.json, err, w)
				}
			}
		})
	}
}

var validConfigs = []string{
	`{"protocols": ["websocket"]}`,
	`{"protocols": ["WebSocket"]}`,
	`{"protocols": ["websocket", "foo/2"]}`,
	`{"protocols": ["foo/2"]}`,
	`{"protocols": ["foo"], "require": true, "on_disallowed": "reject"}`,
	`{"protocols": ["foo/2", "bar/2"], "on_disallowed": "ignore"}`,
	`{"protocols": ["h2cx", "xhttp", "https2", "http-ish"]}`,
	`{"protocols": ["websocket"], "max_connections": 0, "idle_timeout": 0, "max_duration": 0}`,
	`{"protocols": ["websocket"], "max_connections": 100, "idle_timeout": "5m", "max_duration": "1h"}`,
	`{"protocols": ["websocket"], "websocket": {}}`,
	`{"protocols": ["foo", "WebSocket"], "websocket": {"require_origin": true}}`,
	`{"protocols": ["websocket"], "websocket": {"origins": ["https://example.com", "https://*.example.com", "http://localhost:8080", "https://Good.Example:443"], "subprotocols": ["chat", "v2.json"]}}`,
	`{"protocols": ["websocket"], "websocket": {"origins": ["{http.request.scheme}://{http.request.hostport}"]}}`,
}

func TestValidateValid(t *testing.T) {
	for _, raw := range validConfigs {
		t.Run(raw, func(t *testing.T) {
			var h Handler
			if err := json.Unmarshal([]byte(raw), &h); err != nil {
				t.Fatalf("unmarshal: %v", err)
			}
			provisionHandler(t, &h)
			if err := h.Validate(); err != nil {
				t.Fatalf("Validate(%s): %v", raw, err)
			}
			if _, err := loadHandler(t, raw); err != nil {
				t.Fatalf("loading %s: %v", raw, err)
			}
		})
	}
}

func TestValidateProxy(t *testing.T) {
	refused := []struct {
		name string
		json string
		want []string
	}{
		{"static_response", `{"protocols": ["websocket"], "proxy": {"handler": "static_response", "status_code": 200}}`,
			[]string{"proxy", "reverse_proxy"}},
		{"request_buffers", `{"protocols": ["websocket"], "proxy": {"handler": "reverse_proxy", "upstreams": [{"dial": "localhost:9"}], "request_buffers": 1024}}`,
			[]string{"proxy", "request_buffers"}},
		{"response_buffers", `{"protocols": ["websocket"], "proxy": {"handler": "reverse_proxy", "upstreams": [{"dial": "localhost:9"}], "response_buffers": -1}}`,
			[]string{"proxy", "response_buffers"}},
		{"fastcgi transport", `{"protocols": ["websocket"], "proxy": {"handler": "reverse_proxy", "upstreams": [{"dial": "localhost:9"}], "transport": {"protocol": "fastcgi"}}}`,
			[]string{"proxy", "transport"}},
		{"unknown handler", `{"protocols": ["websocket"], "proxy": {"handler": "no_such_handler"}}`,
			[]string{"proxy", "no_such_handler"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loadHandler(t, tc.json)
			if err == nil {
				t.Fatalf("loading %s succeeded; want an error", tc.json)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("loading %s: %q; want it to name %q", tc.json, err, w)
				}
			}
		})
	}

	good := []string{
		`{"protocols": ["websocket"], "proxy": {"handler": "reverse_proxy", "upstreams": [{"dial": "localhost:9"}]}}`,
		`{"protocols": ["websocket"], "proxy": {"handler": "reverse_proxy", "upstreams": [{"dial": "localhost:9"}], "transport": {"protocol": "http", "versions": ["1.1"]}, "stream_close_delay": "5m"}}`,
	}
	for _, raw := range good {
		t.Run("valid "+raw, func(t *testing.T) {
			h, err := loadHandler(t, raw)
			if err != nil {
				t.Fatalf("loading %s: %v", raw, err)
			}
			rp, ok := h.proxy.(*reverseproxy.Handler)
			if !ok {
				t.Fatalf("proxy = %T; want *reverseproxy.Handler", h.proxy)
			}
			// The backend's answer is checked on the raw response
			// (docs/behaviour.md §5).
			if _, ok := rp.Transport.(*guardedTransport); !ok {
				t.Errorf("proxy transport = %T; want it wrapped", rp.Transport)
			}
			if err := h.Validate(); err != nil {
				t.Errorf("Validate after load: %v", err)
			}
		})
	}
}

// TestValidateProxyInHTTPApp loads the handler inside a full http app
// config, as `caddy run` would (without starting it).
func TestValidateProxyInHTTPApp(t *testing.T) {
	server := func(handler string) *caddy.Config {
		return &caddy.Config{AppsRaw: caddy.ModuleMap{"http": json.RawMessage(`{"servers": {"srv0": {
			"listen": ["127.0.0.1:0"], "automatic_https": {"disable": true},
			"routes": [{"handle": [` + handler + `]}]}}}`)}}
	}
	ok := `{"handler": "upgrade", "protocols": ["websocket"], "proxy": {"handler": "reverse_proxy", "upstreams": [{"dial": "localhost:9"}]}}`
	if err := caddy.Validate(server(ok)); err != nil {
		t.Errorf("valid config refused: %v", err)
	}
	bad := `{"handler": "upgrade", "protocols": ["websocket"], "proxy": {"handler": "static_response"}}`
	if err := caddy.Validate(server(bad)); err == nil {
		t.Errorf("proxy static_response accepted")
	}
}

// specExample is the JSON config of docs/behaviour.md §6.
const specExample = `{
  "handler": "upgrade",
  "protocols": ["websocket", "foo/2"],
  "require": false,
  "on_disallowed": "ignore",
  "websocket": {"origins": ["https://example.com"], "require_origin": false, "subprotocols": ["chat"]},
  "max_connections": 0,
  "idle_timeout": "5m",
  "max_duration": "0",
  "proxy": {"handler": "reverse_proxy", "upstreams": [{"dial": "localhost:9000"}]}
}`

func TestJSONRoundTrip(t *testing.T) {
	var h Handler
	if err := json.Unmarshal([]byte(specExample), &h); err != nil {
		t.Fatalf("unmarshal the docs/behaviour.md §6 example: %v", err)
	}
	want := Handler{
		Protocols:    []string{"websocket", "foo/2"},
		OnDisallowed: "ignore",
		WebSocket:    &WebSocketConfig{Origins: []string{"https://example.com"}, Subprotocols: []string{"chat"}},
		IdleTimeout:  caddy.Duration(5 * time.Minute),
	}
	gotProxy := h.ProxyRaw
	h.ProxyRaw = nil
	if !reflect.DeepEqual(h, want) {
		t.Errorf("decoded %+v; want %+v", h, want)
	}
	if !jsonEqual(t, gotProxy, []byte(`{"handler": "reverse_proxy", "upstreams": [{"dial": "localhost:9000"}]}`)) {
		t.Errorf("proxy = %s", gotProxy)
	}
	h.ProxyRaw = gotProxy

	// Marshalled as Caddy does for a handler (with its "handler" key), the
	// config is the docs/behaviour.md §6 example without its zero values;
	// durations come back as nanoseconds, which Caddy reads as well.
	out := caddyconfig.JSONModuleObject(h, "handler", "upgrade", nil)
	wantOut := `{
	  "handler": "upgrade",
	  "protocols": ["websocket", "foo/2"],
	  "on_disallowed": "ignore",
	  "websocket": {"origins": ["https://example.com"], "subprotocols": ["chat"]},
	  "idle_timeout": 300000000000,
	  "proxy": {"handler": "reverse_proxy", "upstreams": [{"dial": "localhost:9000"}]}
	}`
	if !jsonEqual(t, out, []byte(wantOut)) {
		t.Errorf("marshalled:\n%s\nwant:\n%s", out, wantOut)
	}

	// And it decodes to the same config again.
	var h2 Handler
	if err := json.Unmarshal(out, &h2); err != nil {
		t.Fatalf("unmarshal round trip: %v", err)
	}
	if !jsonEqual(t, h2.ProxyRaw, h.ProxyRaw) {
		t.Errorf("proxy after round trip = %s; want %s", h2.ProxyRaw, h.ProxyRaw)
	}
	h.ProxyRaw, h2.ProxyRaw = nil, nil
	if !reflect.DeepEqual(h, h2) {
		t.Errorf("after round trip %+v; want %+v", h2, h)
	}

	// The docs/behaviour.md §6 example is a valid config. (Caddy strips the
	// "handler" key before decoding a handler's config; LoadModuleByID does
	// not.)
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(specExample), &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "handler")
	raw, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := loadHandler(t, string(raw)); err != nil {
		t.Errorf("loading the docs/behaviour.md §6 example: %v", err)
	}
}

// jsonEqual compares two JSON documents semantically.
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("bad JSON %s: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("bad JSON %s: %v", b, err)
	}
	return reflect.DeepEqual(va, vb)
}

// TestPolicyFromProvision checks that Provision builds the policy the
// table expects from the JSON fields.
func TestPolicyFromProvision(t *testing.T) {
	tests := []struct {
		h           Handler
		wantRequire bool
		wantReject  bool
		wantList    string
	}{
		{Handler{Protocols: []string{"websocket", "foo/2"}}, false, false, "websocket, foo/2"},
		{Handler{Protocols: []string{"websocket"}, Require: true}, true, false, "websocket"},
		{Handler{Protocols: []string{"websocket"}, OnDisallowed: "reject"}, false, true, "websocket"},
		{Handler{Protocols: []string{"websocket"}, OnDisallowed: "ignore"}, false, false, "websocket"},
	}
	for _, tc := range tests {
		h := tc.h
		provisionHandler(t, &h)
		// require shows in the answer to no offer, on_disallowed in the
		// answer to an offer of nothing allowed.
		require := h.policy.Decide(protocol.Offer{}, 1).Outcome == protocol.OutcomeRequired
		reject := h.policy.Decide(protocol.Offer{Protocols: []protocol.Protocol{{Name: "bar"}}}, 1).Outcome == protocol.OutcomeRejected
		if require != tc.wantRequire || reject != tc.wantReject || h.policy.RequiredList() != tc.wantList {
			t.Errorf("%+v: policy = require %v reject %v list %q; want %v %v %q", tc.h,
				require, reject, h.policy.RequiredList(), tc.wantRequire, tc.wantReject, tc.wantList)
		}
	}
}
