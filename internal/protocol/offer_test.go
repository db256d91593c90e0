package protocol

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/seedf05e/caddy-upgrade/internal/protocol/protocoltest"
)

// protos builds the expected protocol list from "name" / "name/version".
func protos(ss ...string) []Protocol {
	var out []Protocol
	for _, s := range ss {
		name, version, _ := strings.Cut(s, "/")
		out = append(out, Protocol{Name: name, Version: version})
	}
	return out
}

func TestParseOfferHTTP1(t *testing.T) {
	long256 := strings.Repeat("a", 256)
	long255 := strings.Repeat("b", 255)
	tests := []struct {
		name    string
		minor   int
		hdr     http.Header
		want    []Protocol // nil: no offer
		wantErr bool
	}{
		// Recognising an offer (docs/behaviour.md §2, HTTP/1.1).
		{name: "plain websocket", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}},
			want: protos("websocket")},
		{name: "connection token lower case", minor: 1,
			hdr:  http.Header{"Connection": {"upgrade"}, "Upgrade": {"websocket"}},
			want: protos("websocket")},
		{name: "connection token upper case", minor: 1,
			hdr:  http.Header{"Connection": {"UPGRADE"}, "Upgrade": {"websocket"}},
			want: protos("websocket")},
		{name: "connection token mixed case in a comma list", minor: 1,
			hdr:  http.Header{"Connection": {"keep-alive, uPgRaDe"}, "Upgrade": {"websocket"}},
			want: protos("websocket")},
		{name: "connection token in a second line", minor: 1,
			hdr:  http.Header{"Connection": {"keep-alive", "close, Upgrade"}, "Upgrade": {"websocket"}},
			want: protos("websocket")},
		{name: "connection token with tabs and empty elements", minor: 1,
			hdr:  http.Header{"Connection": {",\tkeep-alive ,, \tUpgrade\t,"}, "Upgrade": {"websocket"}},
			want: protos("websocket")},
		{name: "upgrade lines join in order", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {"foo/2, bar", "websocket", "baz/1"}},
			want: protos("foo/2", "bar", "websocket", "baz/1")},
		{name: "empty list elements skipped", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {",, websocket ,,, foo/2,", ",", ""}},
			want: protos("websocket", "foo/2")},
		{name: "spaces and tabs around elements", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {" \twebsocket\t ,\t foo/2 \t"}},
			want: protos("websocket", "foo/2")},
		{name: "name/version kept as written", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {"WebSocket, Foo/2.0-Beta"}},
			want: protos("WebSocket", "Foo/2.0-Beta")},
		{name: "every tchar", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {"!#$%&'*+-.^_`|~09azAZ/!#$%&'*+-.^_`|~09azAZ"}},
			want: protos("!#$%&'*+-.^_`|~09azAZ/!#$%&'*+-.^_`|~09azAZ")},
		{name: "h2c offer with HTTP2-Settings is still an offer", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade, HTTP2-Settings"}, "Upgrade": {"h2c"}, "Http2-Settings": {"AAMAAABkAARAAAAAAAIAAAAA"}},
			want: protos("h2c")},

		// Not an offer (docs/behaviour.md §2, Not an offer).
		{name: "HTTP/1.0 with Connection upgrade", minor: 0,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}},
		{name: "HTTP/1.0 with malformed Upgrade is not an offer either", minor: 0,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"a/b/c"}}},
		{name: "Upgrade without Connection", minor: 1,
			hdr: http.Header{"Upgrade": {"websocket"}}},
		{name: "Upgrade with Connection lacking the upgrade token", minor: 1,
			hdr: http.Header{"Connection": {"keep-alive"}, "Upgrade": {"websocket"}}},
		{name: "Connection token that only contains upgrade", minor: 1,
			hdr: http.Header{"Connection": {"upgraded, x-upgrade, upgrade-insecure"}, "Upgrade": {"websocket"}}},
		{name: "Connection upgrade without Upgrade", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}}},
		{name: "Upgrade holding only empty elements", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {" , ,\t,"}}},
		{name: "no headers at all", minor: 1, hdr: http.Header{}},

		// Malformed offers (docs/behaviour.md §2, Malformed offers): 400.
		{name: "space inside a protocol", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"web socket"}}, wantErr: true},
		{name: "folded line joined with a space", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"h2c websocket"}}, wantErr: true},
		{name: "separator ;", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket;q=1"}}, wantErr: true},
		{name: "separator @", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"web@socket"}}, wantErr: true},
		{name: "quoted", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {`"websocket"`}}, wantErr: true},
		{name: "NUL byte", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket\x00"}}, wantErr: true},
		{name: "non-ASCII byte", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"wébsocket"}}, wantErr: true},
		{name: "a/b/c", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"a/b/c"}}, wantErr: true},
		{name: "/x", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"/x"}}, wantErr: true},
		{name: "x/", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"x/"}}, wantErr: true},
		{name: "lone /", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"/"}}, wantErr: true},
		{name: "space around the slash", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"foo / 2"}}, wantErr: true},
		{name: "malformed element after a good one", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket", "x/"}}, wantErr: true},
		{name: "16 protocols", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {protocoltest.NumberedProtocols(16)}},
			want: protos(strings.Split(protocoltest.NumberedProtocols(16), ", ")...)},
		{name: "16 protocols over several lines", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {protocoltest.NumberedProtocols(8), "q0, q1, q2, q3, q4, q5, q6, q7"}},
			want: protos(append(strings.Split(protocoltest.NumberedProtocols(8), ", "), "q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7")...)},
		{name: "17 protocols", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {protocoltest.NumberedProtocols(17)}}, wantErr: true},
		{name: "17 protocols over several lines", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {protocoltest.NumberedProtocols(16), "websocket"}}, wantErr: true},
		{name: "empty elements do not count as protocols", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {protocoltest.NumberedProtocols(16) + ",,,,,"}},
			want: protos(strings.Split(protocoltest.NumberedProtocols(16), ", ")...)},
		{name: "Upgrade of exactly 512 bytes over two lines", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {long256, "x/" + strings.Repeat("c", 254)}},
			want: protos(long256, "x/"+strings.Repeat("c", 254))},
		{name: "Upgrade of 513 bytes over two lines", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {long256, "x/" + strings.Repeat("c", 255)}}, wantErr: true},
		{name: "Upgrade of 513 bytes: each line short", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {long256, long255, "ab"}}, wantErr: true},
		{name: "Upgrade of exactly 512 bytes in one line, whitespace counted", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket" + strings.Repeat(" ", 512-len("websocket"))}},
			want: protos("websocket")},
		{name: "Upgrade of 513 bytes in one line, whitespace counted", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket" + strings.Repeat(" ", 513-len("websocket"))}}, wantErr: true},
		{name: "Upgrade of 513 bytes, empty elements counted", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket" + strings.Repeat(",", 513-len("websocket"))}}, wantErr: true},

		// Connection options naming protected fields (docs/behaviour.md §3
		// order: malformed).
		{name: "Connection names Host", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade, Host"}, "Upgrade": {"websocket"}}, wantErr: true},
		{name: "Connection names host in lower case", minor: 1,
			hdr: http.Header{"Connection": {"upgrade, host"}, "Upgrade": {"websocket"}}, wantErr: true},
		{name: "Connection names Origin in a second line", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade", "Origin"}, "Upgrade": {"websocket"}}, wantErr: true},
		{name: "Connection names Sec-WebSocket-Key", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade, Sec-WebSocket-Key"}, "Upgrade": {"websocket"}}, wantErr: true},
		{name: "Connection names sec-websocket-version", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade,\tsec-websocket-version"}, "Upgrade": {"websocket"}}, wantErr: true},
		{name: "Connection names SEC-WEBSOCKET-PROTOCOL", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade, SEC-WEBSOCKET-PROTOCOL"}, "Upgrade": {"websocket"}}, wantErr: true},
		{name: "Connection names Sec-WebSocket-Extensions on a non-websocket offer", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade, Sec-WebSocket-Extensions"}, "Upgrade": {"foo/2"}}, wantErr: true},
		{name: "Connection names an ordinary field", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade, X-Hop, HTTP2-Settings, Sec-Fetch-Mode"}, "Upgrade": {"websocket"}},
			want: protos("websocket")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := protocoltest.Request(http.MethodGet, 1, tc.minor, tc.hdr)
			before := r.Header.Clone()
			o, err := ParseOffer(r)
			if !reflect.DeepEqual(r.Header, before) {
				t.Errorf("ParseOffer changed the header: %v, was %v", r.Header, before)
			}
			if tc.wantErr {
				if err == nil {
					t.Fatalf("ParseOffer(%q) = %+v, nil; want an error", tc.hdr, o)
				}
				if !errors.Is(err, ErrMalformedOffer) {
					t.Fatalf("ParseOffer(%q) error %v is not ErrMalformedOffer", tc.hdr, err)
				}
				if o.Present() {
					t.Errorf("ParseOffer(%q) returned an offer %+v with its error", tc.hdr, o)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseOffer(%q) error: %v", tc.hdr, err)
			}
			if o.ExtendedConnect {
				t.Errorf("HTTP/1 offer marked extendedConnect")
			}
			if tc.want == nil {
				if o.Present() {
					t.Fatalf("ParseOffer(%q) = %+v; want no offer", tc.hdr, o.Protocols)
				}
				return
			}
			if !o.Present() {
				t.Fatalf("ParseOffer(%q): no offer; want %v", tc.hdr, tc.want)
			}
			if !reflect.DeepEqual(o.Protocols, tc.want) {
				t.Fatalf("ParseOffer(%q) = %v; want %v", tc.hdr, o.Protocols, tc.want)
			}
		})
	}
}

func TestParseOfferExtendedConnect(t *testing.T) {
	tests := []struct {
		name    string
		method  string
		major   int
		proto   string // r.Proto; "" keeps what protocoltest.Request sets
		hdr     http.Header
		want    string // the offered :protocol; "" means no offer
		wantErr bool
	}{
		// HTTP/2 (RFC 8441): Caddy exposes :protocol as a header.
		{name: "h2 websocket", method: http.MethodConnect, major: 2,
			hdr: http.Header{":protocol": {"websocket"}}, want: "websocket"},
		{name: "h2 other token kept as written", method: http.MethodConnect, major: 2,
			hdr: http.Header{":protocol": {"Foo-Bar"}}, want: "Foo-Bar"},
		{name: "h2 plain CONNECT", method: http.MethodConnect, major: 2, hdr: http.Header{}},
		{name: "h2 GET", method: http.MethodGet, major: 2, hdr: http.Header{}},
		{name: "h2 GET with Upgrade fields is not an offer", method: http.MethodGet, major: 2,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}},
		{name: "h2 :protocol on GET", method: http.MethodGet, major: 2,
			hdr: http.Header{":protocol": {"websocket"}}, wantErr: true},
		{name: "h2 :protocol on POST", method: http.MethodPost, major: 2,
			hdr: http.Header{":protocol": {"websocket"}}, wantErr: true},
		{name: "h2 :protocol with a version", method: http.MethodConnect, major: 2,
			hdr: http.Header{":protocol": {"websocket/13"}}, wantErr: true},
		{name: "h2 :protocol with a space", method: http.MethodConnect, major: 2,
			hdr: http.Header{":protocol": {"web socket"}}, wantErr: true},
		{name: "h2 :protocol list", method: http.MethodConnect, major: 2,
			hdr: http.Header{":protocol": {"websocket, foo"}}, wantErr: true},
		{name: "h2 empty :protocol", method: http.MethodConnect, major: 2,
			hdr: http.Header{":protocol": {""}}, wantErr: true},
		{name: "h2 two :protocol values", method: http.MethodConnect, major: 2,
			hdr: http.Header{":protocol": {"websocket", "websocket"}}, wantErr: true},

		// HTTP/3 (RFC 9220): quic-go puts :protocol in r.Proto.
		{name: "h3 websocket", method: http.MethodConnect, major: 3, proto: "websocket", want: "websocket"},
		{name: "h3 other token", method: http.MethodConnect, major: 3, proto: "connect-udp", want: "connect-udp"},
		{name: "h3 plain CONNECT", method: http.MethodConnect, major: 3, proto: "HTTP/3.0"},
		{name: "h3 plain GET", method: http.MethodGet, major: 3, proto: "HTTP/3.0"},
		{name: "h3 GET with Upgrade fields is not an offer", method: http.MethodGet, major: 3, proto: "HTTP/3.0",
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}}},
		{name: "h3 non-token :protocol", method: http.MethodConnect, major: 3, proto: "web socket", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := protocoltest.Request(tc.method, tc.major, 0, tc.hdr)
			if tc.proto != "" {
				r.Proto = tc.proto
			}
			before := r.Header.Clone()
			o, err := ParseOffer(r)
			if !reflect.DeepEqual(r.Header, before) {
				t.Errorf("ParseOffer changed the header: %v, was %v", r.Header, before)
			}
			if tc.wantErr {
				if err == nil {
					t.Fatalf("ParseOffer = %+v, nil; want an error", o)
				}
				if !errors.Is(err, ErrMalformedOffer) {
					t.Fatalf("error %v is not ErrMalformedOffer", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseOffer error: %v", err)
			}
			if tc.want == "" {
				if o.Present() || o.ExtendedConnect {
					t.Fatalf("ParseOffer = %+v; want no offer", o)
				}
				return
			}
			want := Offer{Protocols: []Protocol{{Name: tc.want}}, ExtendedConnect: true}
			if !reflect.DeepEqual(o, want) {
				t.Fatalf("ParseOffer = %+v; want %+v", o, want)
			}
		})
	}
}

func TestOfferErrorMessage(t *testing.T) {
	r := protocoltest.Request(http.MethodGet, 1, 1, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"a/b/c"}})
	_, err := ParseOffer(r)
	if err == nil || !strings.Contains(err.Error(), `"a/b/c"`) {
		t.Fatalf("error %v does not quote the bad element", err)
	}
	// A hostile element is cut in the message (docs/behaviour.md §7: no value
	// over 256 bytes is logged).
	bad := strings.Repeat("x", 300) + "@"
	r = protocoltest.Request(http.MethodGet, 1, 1, http.Header{"Connection": {"Upgrade"}, "Upgrade": {bad}})
	_, err = ParseOffer(r)
	if err == nil || !errors.Is(err, ErrMalformedOffer) {
		t.Fatalf("ParseOffer(%q) = %v; want ErrMalformedOffer", bad, err)
	}
	if len(err.Error()) > 400 {
		t.Errorf("error message is %d bytes long; want the element cut", len(err.Error()))
	}
}

func TestParseProtocol(t *testing.T) {
	good := []struct {
		in            string
		name, version string
	}{
		{"websocket", "websocket", ""},
		{"WebSocket", "WebSocket", ""},
		{"foo/2", "foo", "2"},
		{"Foo/2.0", "Foo", "2.0"},
		{"h2c", "h2c", ""},
		{"HTTP/1.1", "HTTP", "1.1"},
		{"a/b", "a", "b"},
		{"x-y.z/~1", "x-y.z", "~1"},
		{"!#$%&'*+-.^_`|~/!#$%&'*+-.^_`|~", "!#$%&'*+-.^_`|~", "!#$%&'*+-.^_`|~"},
	}
	for _, tc := range good {
		p, ok := ParseProtocol(tc.in)
		if !ok {
			t.Errorf("ParseProtocol(%q) not ok", tc.in)
			continue
		}
		if p.Name != tc.name || p.Version != tc.version {
			t.Errorf("ParseProtocol(%q) = {%q %q}; want {%q %q}", tc.in, p.Name, p.Version, tc.name, tc.version)
		}
		// Round trip: String gives back what was parsed.
		if s := p.String(); s != tc.in {
			t.Errorf("ParseProtocol(%q).String() = %q", tc.in, s)
		}
		if q, ok := ParseProtocol(p.String()); !ok || q != p {
			t.Errorf("ParseProtocol(%q) round trip = %+v, %v", p.String(), q, ok)
		}
	}
	bad := []string{"", "/", "a/", "/a", "a/b/c", "a//b", "a b", " a", "a ", "a\t", "a,b", "a;b", "a=b",
		`"a"`, "(a)", "a:b", "a@b", "a?b", "a[b]", "a{b}", "a\\b", "a\x00", "a\x7f", "é", "a/b c", "a/é"}
	for _, s := range bad {
		if p, ok := ParseProtocol(s); ok {
			t.Errorf("ParseProtocol(%q) = %+v, ok; want not ok", s, p)
		}
	}
}

func TestIsToken(t *testing.T) {
	const tchars = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	for c := 0; c < 256; c++ {
		want := strings.IndexByte(tchars, byte(c)) >= 0
		if got := IsToken(string([]byte{byte(c)})); got != want {
			t.Errorf("IsToken(%q) = %v; want %v", string([]byte{byte(c)}), got, want)
		}
		if got := IsToken("a" + string([]byte{byte(c)}) + "b"); got != want {
			t.Errorf("IsToken(%q) = %v; want %v", "a"+string([]byte{byte(c)})+"b", got, want)
		}
	}
	if IsToken("") {
		t.Error(`IsToken("") = true`)
	}
	if !IsToken(tchars) {
		t.Errorf("IsToken(%q) = false", tchars)
	}
	// A token is a protocol without a version, and back.
	for _, s := range []string{"websocket", "h2c", "Foo-1.0", tchars} {
		p, ok := ParseProtocol(s)
		if !ok || p.Version != "" || p.Name != s || !IsToken(p.String()) {
			t.Errorf("token %q: ParseProtocol = %+v, %v", s, p, ok)
		}
	}
}

func TestConnectionHasToken(t *testing.T) {
	tests := []struct {
		lines []string
		want  bool
	}{
		{nil, false},
		{[]string{"upgrade"}, true},
		{[]string{"Upgrade"}, true},
		{[]string{"keep-alive, UPGRADE"}, true},
		{[]string{"keep-alive", " upgrade\t"}, true},
		{[]string{"keep-alive", "close"}, false},
		{[]string{"upgrades"}, false},
		{[]string{"up grade"}, false},
		{[]string{""}, false},
	}
	for _, tc := range tests {
		h := http.Header{}
		if tc.lines != nil {
			h["Connection"] = tc.lines
		}
		if got := ConnectionHasToken(h, "upgrade"); got != tc.want {
			t.Errorf("ConnectionHasToken(%q) = %v; want %v", tc.lines, got, tc.want)
		}
	}
}

// fzProtected reports whether a Connection option names Host, Origin or a
// Sec-WebSocket-* field (docs/behaviour.md §3: malformed). Only a valid field
// name can name a field.
func fzProtected(opt string) bool {
	if !fzToken(opt) {
		return false
	}
	l := strings.ToLower(opt)
	return l == "host" || l == "origin" || strings.HasPrefix(l, "sec-websocket-")
}

// fzOfferOracle is docs/behaviour.md §2 for an HTTP/1.x request: whether
// ParseOffer must fail, and the protocols it must return otherwise.
func fzOfferOracle(upgrade, connection []string, minor int) (wantErr bool, want []string) {
	if upgrade == nil || minor == 0 {
		return false, nil
	}
	hasUpgradeOpt := false
	for _, opt := range fzElements(connection) {
		if strings.EqualFold(opt, "upgrade") {
			hasUpgradeOpt = true
		}
	}
	if !hasUpgradeOpt {
		return false, nil
	}
	for _, opt := range fzElements(connection) {
		if fzProtected(opt) {
			return true, nil
		}
	}
	size := 0
	for _, l := range upgrade {
		size += len(l)
	}
	if size > 512 {
		return true, nil
	}
	elems := fzElements(upgrade)
	if len(elems) > 16 {
		return true, nil
	}
	for _, e := range elems {
		if !fzProtocolOK(e) {
			return true, nil
		}
	}
	return false, elems
}

func fzProtocolStrings(o Offer) []string {
	var out []string
	for _, p := range o.Protocols {
		out = append(out, p.String())
	}
	return out
}

func fzParseLines(t *testing.T, lines []string) Offer {
	t.Helper()
	r := &http.Request{ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{
		"Connection": {"Upgrade"},
		"Upgrade":    lines,
	}}
	o, err := ParseOffer(r)
	if err != nil {
		t.Fatalf("re-parsing %q: %v", lines, err)
	}
	return o
}

func FuzzParseOffer(f *testing.F) {
	// RFC 9110 §7.8 and RFC 6455 §1.2 examples, h2csmuggler, the attack
	// cases of adversarial_test.go, and the limits.
	seeds := []struct {
		upgrade, connection string
		minor               uint8
	}{
		{"HTTP/2.0, SHTTP/1.3, IRC/6.9, RTA/x11", "Upgrade", 1},
		{"websocket", "Upgrade", 1},
		{"websocket", "keep-alive, Upgrade", 1},
		{"WebSocket", "upgrade", 1},
		{"h2c", "Upgrade, HTTP2-Settings", 1},
		{"h2c", "Upgrade", 1},
		{"H2C", "UPGRADE", 1},
		{"h2c", "", 1},
		{"websocket", "Upgrade", 0},
		{"h2c\nwebsocket", "Upgrade", 1},
		{"websocket, h2c", "Upgrade", 1},
		{"h2c websocket", "Upgrade", 1},
		{`"websocket"`, "Upgrade", 1},
		{"web\u0455ocket", "Upgrade", 1},
		{"websocket;q=1", "Upgrade", 1},
		{"websocket/13, foo/1/2", "Upgrade", 1},
		{",\t foo ,, websocket ,", "Upgrade", 1},
		{" , ", "Upgrade", 1},
		{"websocket", "Upgrade, Sec-WebSocket-Key", 1},
		{"websocket", "Upgrade\nOrigin", 1},
		{"websocket", "Upgrade, Host", 1},
		{"websocket", "close,\tUpgrade ,", 1},
		{"websocket, " + strings.Repeat("a", 501), "Upgrade", 1},
		{"websocket, " + strings.Repeat("a", 502), "Upgrade", 1},
		{strings.Repeat("a,", 15) + "websocket", "Upgrade", 1},
		{strings.Repeat("a,", 16) + "websocket", "Upgrade", 1},
		{strings.Repeat("p\n", 16) + "websocket", "Upgrade", 1},
		{"a/b", "Upgrade", 9},
	}
	for _, s := range seeds {
		f.Add(s.upgrade, s.connection, s.minor)
	}
	f.Fuzz(func(t *testing.T, upgrade, connection string, minor uint8) {
		m := int(minor % 10) // HTTP/1.0 through HTTP/1.9, as Go parses them
		h := http.Header{}
		up, conn := fzLines(upgrade), fzLines(connection)
		if up != nil {
			h["Upgrade"] = up
		}
		if conn != nil {
			h["Connection"] = conn
		}
		before := h.Clone()
		r := &http.Request{Method: "GET", ProtoMajor: 1, ProtoMinor: m, Header: h}
		o, err := ParseOffer(r)
		if !reflect.DeepEqual(h, before) {
			t.Fatalf("ParseOffer changed the header: %q, was %q", h, before)
		}

		wantErr, want := fzOfferOracle(up, conn, m)
		if (err != nil) != wantErr {
			t.Fatalf("ParseOffer(Upgrade %q, Connection %q, HTTP/1.%d): err %v, oracle wants error: %v", up, conn, m, err, wantErr)
		}
		if err != nil {
			if !errors.Is(err, ErrMalformedOffer) {
				t.Fatalf("error %v does not wrap ErrMalformedOffer", err)
			}
			if o.Present() {
				t.Fatalf("an error came with an offer %v", o)
			}
			return
		}
		got := fzProtocolStrings(o)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("ParseOffer(Upgrade %q, Connection %q, HTTP/1.%d) = %q, oracle %q", up, conn, m, got, want)
		}
		if o.ExtendedConnect {
			t.Fatalf("an HTTP/1.%d request gave an extended CONNECT offer", m)
		}
		if !o.Present() {
			return
		}

		// An accepted offer: 1–16 protocols, at most 512 bytes received,
		// each token["/"token].
		if n := len(o.Protocols); n < 1 || n > 16 {
			t.Fatalf("accepted offer of %d protocols", n)
		}
		size := 0
		for _, l := range up {
			size += len(l)
		}
		if size > 512 {
			t.Fatalf("accepted %d bytes of Upgrade", size)
		}
		for _, p := range o.Protocols {
			if !fzToken(p.Name) || (p.Version != "" && !fzToken(p.Version)) || !fzProtocolOK(p.String()) {
				t.Fatalf("accepted protocol %q (name %q, version %q)", p.String(), p.Name, p.Version)
			}
		}

		// parse(format(x)) == x: one protocol per line (never longer than
		// what was received), and joined with ", " into one line, which
		// must round-trip unless the separators push it past 512 bytes.
		if again := fzProtocolStrings(fzParseLines(t, got)); !reflect.DeepEqual(again, got) {
			t.Fatalf("one per line: %q re-parses as %q", got, again)
		}
		joined := strings.Join(got, ", ")
		r2 := &http.Request{ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{"Connection": {"Upgrade"}, "Upgrade": {joined}}}
		o2, err := ParseOffer(r2)
		switch {
		case len(joined) > 512:
			if err == nil {
				t.Fatalf("joined %d bytes accepted", len(joined))
			}
		case err != nil:
			t.Fatalf("joined %q: %v", joined, err)
		default:
			if again := fzProtocolStrings(o2); !reflect.DeepEqual(again, got) {
				t.Fatalf("joined %q re-parses as %q, want %q", joined, again, got)
			}
		}
	})
}

// BenchmarkParseOffer parses the typical offer and the largest one the
// grammar accepts (16 protocols, ~500 bytes over several lines).
func BenchmarkParseOffer(b *testing.B) {
	var worst []string
	var line []string
	size := 0
	for i := range maxOfferedProtocols {
		p := "protocol-name-" + strings.Repeat("x", 6) + "/" + strings.Repeat("v", 5) + string(rune('a'+i))
		line = append(line, p)
		if len(line) == 4 {
			s := strings.Join(line, " ,\t")
			worst = append(worst, s)
			size += len(s)
			line = nil
		}
	}
	if size > maxUpgradeBytes || size < 400 {
		b.Fatalf("worst case is %d bytes; want 400..512", size)
	}
	for _, tc := range []struct {
		name  string
		lines []string
		n     int
	}{
		{"typical", []string{"websocket"}, 1},
		{"worst", worst, maxOfferedProtocols},
	} {
		b.Run(tc.name, func(b *testing.B) {
			r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
			r.Header = http.Header{"Connection": {"Upgrade"}, "Upgrade": tc.lines}
			b.ReportAllocs()
			for b.Loop() {
				o, err := ParseOffer(r)
				if err != nil || len(o.Protocols) != tc.n {
					b.Fatalf("ParseOffer: %d protocols, %v", len(o.Protocols), err)
				}
			}
		})
	}
}
