package protocol

import (
	"net/http"
	"reflect"
	"testing"

	"github.com/seedf05e/caddy-upgrade/internal/protocol/protocoltest"
)

func TestRemoveStrayUpgrade(t *testing.T) {
	tests := []struct {
		name  string
		major int
		minor int
		hdr   http.Header
		want  http.Header
	}{
		{name: "h1.1 Upgrade without Connection", major: 1, minor: 1,
			hdr:  http.Header{"Upgrade": {"websocket"}, "X-Other": {"1"}},
			want: http.Header{"X-Other": {"1"}}},
		{name: "h1.1 Upgrade with Connection lacking the token", major: 1, minor: 1,
			hdr:  http.Header{"Upgrade": {"websocket"}, "Connection": {"keep-alive"}},
			want: http.Header{"Connection": {"keep-alive"}}},
		{name: "h1.1 Connection upgrade without Upgrade", major: 1, minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}},
			want: http.Header{}},
		{name: "h1.1 upgrade token removed, other tokens kept", major: 1, minor: 1,
			hdr:  http.Header{"Connection": {"keep-alive, UPGRADE, X-Hop"}, "X-Hop": {"1"}},
			want: http.Header{"Connection": {"keep-alive, X-Hop"}, "X-Hop": {"1"}}},
		{name: "h1.1 upgrade token removed across lines", major: 1, minor: 1,
			hdr:  http.Header{"Connection": {"keep-alive", "upgrade", " close\t"}},
			want: http.Header{"Connection": {"keep-alive, close"}}},
		{name: "h1.0 Upgrade and Connection upgrade", major: 1, minor: 0,
			hdr:  http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade, keep-alive"}},
			want: http.Header{"Connection": {"keep-alive"}}},
		{name: "h1.0 only token is upgrade", major: 1, minor: 0,
			hdr:  http.Header{"Upgrade": {"websocket"}, "Connection": {"upgrade"}},
			want: http.Header{}},
		{name: "h1.1 nothing to remove", major: 1, minor: 1,
			hdr:  http.Header{"Connection": {"keep-alive"}, "X-Other": {"1"}},
			want: http.Header{"Connection": {"keep-alive"}, "X-Other": {"1"}}},
		{name: "h1.1 no upgrade fields at all", major: 1, minor: 1,
			hdr:  http.Header{"X-Other": {"1"}},
			want: http.Header{"X-Other": {"1"}}},
		{name: "h2 both removed", major: 2,
			hdr:  http.Header{"Upgrade": {"websocket"}, "Connection": {"keep-alive, Upgrade"}, "X-Other": {"1"}},
			want: http.Header{"X-Other": {"1"}}},
		{name: "h2 Connection alone removed", major: 2,
			hdr:  http.Header{"Connection": {"keep-alive"}},
			want: http.Header{}},
		{name: "h3 both removed", major: 3,
			hdr:  http.Header{"Upgrade": {"websocket"}, "Connection": {"Upgrade"}},
			want: http.Header{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := protocoltest.Request(http.MethodGet, tc.major, tc.minor, tc.hdr)
			RemoveStrayUpgrade(r)
			if !reflect.DeepEqual(r.Header, tc.want) {
				t.Fatalf("RemoveStrayUpgrade: header %v; want %v", r.Header, tc.want)
			}
			if o, err := ParseOffer(r); err != nil || o.Present() {
				t.Errorf("after RemoveStrayUpgrade ParseOffer = %+v, %v; want no offer", o, err)
			}
		})
	}
}

func TestStripOffer(t *testing.T) {
	tests := []struct {
		name string
		hdr  http.Header
		want http.Header
	}{
		{name: "h2c offer from curl",
			hdr: http.Header{
				"Connection":     {"Upgrade, HTTP2-Settings"},
				"Upgrade":        {"h2c"},
				"Http2-Settings": {"AAMAAABkAARAAAAAAAIAAAAA"},
				"Content-Type":   {"application/x-www-form-urlencoded"},
			},
			want: http.Header{"Content-Type": {"application/x-www-form-urlencoded"}}},
		{name: "every field named in Connection removed, others kept",
			hdr: http.Header{
				"Connection":  {"keep-alive, upgrade, X-Hop", "x-other-hop"},
				"Upgrade":     {"foo/1", "bar"},
				"Keep-Alive":  {"timeout=5"},
				"X-Hop":       {"1"},
				"X-Other-Hop": {"2"},
				"X-Keep":      {"3"},
			},
			want: http.Header{"X-Keep": {"3"}}},
		{name: "HTTP2-Settings removed even when not named",
			hdr: http.Header{
				"Connection":     {"Upgrade"},
				"Upgrade":        {"h2c"},
				"Http2-Settings": {"x"},
			},
			want: http.Header{}},
		{name: "Connection names absent fields",
			hdr: http.Header{
				"Connection": {"Upgrade, X-Absent, close"},
				"Upgrade":    {"bar"},
				"Accept":     {"*/*"},
			},
			want: http.Header{"Accept": {"*/*"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.hdr.Clone()
			StripOffer(h)
			if !reflect.DeepEqual(h, tc.want) {
				t.Fatalf("StripOffer: header %v; want %v", h, tc.want)
			}
		})
	}
}

func TestRewriteAcceptedHTTP1(t *testing.T) {
	tests := []struct {
		name         string
		allowed      []string
		subprotocols []string
		hdr          http.Header
		want         http.Header
	}{
		{name: "websocket, hop fields removed",
			allowed: []string{"websocket"},
			hdr: http.Header{
				"Connection":            {"keep-alive, Upgrade, X-Hop"},
				"Upgrade":               {"foo/1, websocket", "bar"},
				"Keep-Alive":            {"timeout=5"},
				"X-Hop":                 {"1"},
				"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
				"Sec-Websocket-Version": {"13"},
				"Origin":                {"https://example.com"},
			},
			want: http.Header{
				"Connection":            {"Upgrade"},
				"Upgrade":               {"websocket"},
				"Sec-Websocket-Key":     {"dGhlIHNhbXBsZSBub25jZQ=="},
				"Sec-Websocket-Version": {"13"},
				"Origin":                {"https://example.com"},
			}},
		{name: "selected as the client wrote it",
			allowed: []string{"websocket"},
			hdr:     http.Header{"Connection": {"upgrade"}, "Upgrade": {"WebSocket"}},
			want:    http.Header{"Connection": {"Upgrade"}, "Upgrade": {"WebSocket"}}},
		{name: "versioned selection",
			allowed: []string{"websocket", "foo/2"},
			hdr: http.Header{"Connection": {"Upgrade, HTTP2-Settings"}, "Upgrade": {"h2c, foo/2, websocket"},
				"Http2-Settings": {"x"}},
			want: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"foo/2"}}},
		{name: "bare entry, versioned offer",
			allowed: []string{"foo"},
			hdr:     http.Header{"Connection": {"Upgrade"}, "Upgrade": {"foo/3"}},
			want:    http.Header{"Connection": {"Upgrade"}, "Upgrade": {"foo/3"}}},
		{name: "subprotocols filtered for websocket",
			allowed: []string{"websocket"}, subprotocols: []string{"chat", "v2"},
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"},
				"Sec-Websocket-Protocol": {"superchat, v2", "chat"}},
			want: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"},
				"Sec-Websocket-Protocol": {"v2, chat"}}},
		{name: "subprotocols: nothing left removes the field",
			allowed: []string{"websocket"}, subprotocols: []string{"chat"},
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"},
				"Sec-Websocket-Protocol": {"superchat"}},
			want: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}},
		{name: "subprotocols not configured: list untouched",
			allowed: []string{"websocket"},
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"},
				"Sec-Websocket-Protocol": {"superchat, chat"}},
			want: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"},
				"Sec-Websocket-Protocol": {"superchat, chat"}}},
		{name: "subprotocols only apply to websocket",
			allowed: []string{"websocket", "foo"}, subprotocols: []string{"chat"},
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"foo"},
				"Sec-Websocket-Protocol": {"superchat"}},
			want: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"foo"},
				"Sec-Websocket-Protocol": {"superchat"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := protocoltest.Request(http.MethodGet, 1, 1, tc.hdr.Clone())
			o, err := ParseOffer(r)
			if err != nil || !o.Present() {
				t.Fatalf("ParseOffer = %+v, %v", o, err)
			}
			v := testPolicy(t, false, false, tc.allowed...).Decide(o, 1)
			if v.Outcome != OutcomeAccepted {
				t.Fatalf("decide = %s", v.Outcome)
			}
			RewriteAccepted(r, o, v, tc.subprotocols)
			if !reflect.DeepEqual(r.Header, tc.want) {
				t.Fatalf("RewriteAccepted: header\n%v\nwant\n%v", r.Header, tc.want)
			}
			if got, want := ForwardedProtocol(o, v), tc.want.Get("Upgrade"); got != want {
				t.Errorf("ForwardedProtocol = %q; want %q", got, want)
			}
			// What goes on is again an offer of the selected protocol alone.
			o2, err := ParseOffer(r)
			if err != nil || len(o2.Protocols) != 1 || o2.Protocols[0] != v.Selected {
				t.Errorf("after rewrite ParseOffer = %+v, %v; want just %v", o2, err, v.Selected)
			}
		})
	}
}

func TestRewriteAcceptedExtendedConnect(t *testing.T) {
	tests := []struct {
		name    string
		major   int
		allowed []string
		offered string
		want    string
	}{
		{"h2 lower-case configured name", 2, []string{"WebSocket"}, "websocket", "websocket"},
		{"h2 offered case replaced", 2, []string{"websocket"}, "WEBSOCKET", "websocket"},
		{"h2 other protocol", 2, []string{"foo/2", "Foo"}, "fOo", "foo"},
		{"h3 lower-case configured name", 3, []string{"WebSocket"}, "websocket", "websocket"},
		{"h3 offered case replaced", 3, []string{"websocket"}, "WebSocket", "websocket"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			hdr := http.Header{
				"Sec-Websocket-Version": {"13"},
				"Origin":                {"https://example.com"},
				"X-Other":               {"1"},
			}
			r := protocoltest.Request(http.MethodConnect, tc.major, 0, hdr)
			if tc.major == 2 {
				r.Header[":protocol"] = []string{tc.offered}
			} else {
				r.Proto = tc.offered
			}
			before := r.Header.Clone()
			o, err := ParseOffer(r)
			if err != nil || !o.ExtendedConnect {
				t.Fatalf("ParseOffer = %+v, %v", o, err)
			}
			v := testPolicy(t, false, false, tc.allowed...).Decide(o, tc.major)
			if v.Outcome != OutcomeAccepted {
				t.Fatalf("decide = %s", v.Outcome)
			}
			RewriteAccepted(r, o, v, nil)
			want := before
			if tc.major == 2 {
				want[":protocol"] = []string{tc.want}
			} else if r.Proto != tc.want {
				t.Errorf("r.Proto = %q; want %q", r.Proto, tc.want)
			}
			if !reflect.DeepEqual(r.Header, want) {
				t.Errorf("RewriteAccepted: header %v; want %v (no Connection or Upgrade added)", r.Header, want)
			}
			if got := ForwardedProtocol(o, v); got != tc.want {
				t.Errorf("ForwardedProtocol = %q; want %q", got, tc.want)
			}
		})
	}
}

func TestRewriteAcceptedExtendedConnectSubprotocols(t *testing.T) {
	r := protocoltest.Request(http.MethodConnect, 2, 0, http.Header{
		":protocol":              {"websocket"},
		"Sec-Websocket-Version":  {"13"},
		"Sec-Websocket-Protocol": {"a, chat", "b"},
	})
	o, err := ParseOffer(r)
	if err != nil {
		t.Fatal(err)
	}
	v := testPolicy(t, false, false, "websocket").Decide(o, 2)
	RewriteAccepted(r, o, v, []string{"b", "chat"})
	if got := r.Header["Sec-Websocket-Protocol"]; !reflect.DeepEqual(got, []string{"chat, b"}) {
		t.Errorf("Sec-WebSocket-Protocol = %q; want [\"chat, b\"]", got)
	}
	if _, ok := r.Header["Connection"]; ok {
		t.Errorf("Connection added on HTTP/2")
	}
	if _, ok := r.Header["Upgrade"]; ok {
		t.Errorf("Upgrade added on HTTP/2")
	}
}
