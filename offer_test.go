package upgrade

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// offerRequest builds a request as Caddy's server would hand it to the
// handler: proto version and header lines set directly, so that tests can
// send what net/http's client would never write (several lines, odd case).
func offerRequest(method string, major, minor int, hdr http.Header) *http.Request {
	r := httptest.NewRequest(method, "http://example.com/ws", nil)
	r.ProtoMajor, r.ProtoMinor = major, minor
	r.Proto = "HTTP/" + strconv.Itoa(major) + "." + strconv.Itoa(minor)
	r.Header = hdr
	if r.Header == nil {
		r.Header = http.Header{}
	}
	return r
}

// protos builds the expected protocol list from "name" / "name/version".
func protos(ss ...string) []protocol {
	var out []protocol
	for _, s := range ss {
		name, version, _ := strings.Cut(s, "/")
		out = append(out, protocol{name: name, version: version})
	}
	return out
}

// numberedProtocols returns "p0, p1, ..." with n elements.
func numberedProtocols(n int) string {
	ps := make([]string, n)
	for i := range ps {
		ps[i] = "p" + strconv.Itoa(i)
	}
	return strings.Join(ps, ", ")
}

func TestParseOfferHTTP1(t *testing.T) {
	long256 := strings.Repeat("a", 256)
	long255 := strings.Repeat("b", 255)
	tests := []struct {
		name    string
		minor   int
		hdr     http.Header
		want    []protocol // nil: no offer
		wantErr bool
	}{
		// Recognising an offer (SPEC §2, first bullet).
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

		// Not an offer (SPEC §2, second bullet).
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

		// Malformed offers (SPEC §2, fourth bullet): 400.
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
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {numberedProtocols(16)}},
			want: protos(strings.Split(numberedProtocols(16), ", ")...)},
		{name: "16 protocols over several lines", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {numberedProtocols(8), "q0, q1, q2, q3, q4, q5, q6, q7"}},
			want: protos(append(strings.Split(numberedProtocols(8), ", "), "q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7")...)},
		{name: "17 protocols", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {numberedProtocols(17)}}, wantErr: true},
		{name: "17 protocols over several lines", minor: 1,
			hdr: http.Header{"Connection": {"Upgrade"}, "Upgrade": {numberedProtocols(16), "websocket"}}, wantErr: true},
		{name: "empty elements do not count as protocols", minor: 1,
			hdr:  http.Header{"Connection": {"Upgrade"}, "Upgrade": {numberedProtocols(16) + ",,,,,"}},
			want: protos(strings.Split(numberedProtocols(16), ", ")...)},
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

		// Connection options naming protected fields (SPEC §3 order: malformed).
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
			r := offerRequest(http.MethodGet, 1, tc.minor, tc.hdr)
			before := r.Header.Clone()
			o, err := parseOffer(r)
			if !reflect.DeepEqual(r.Header, before) {
				t.Errorf("parseOffer changed the header: %v, was %v", r.Header, before)
			}
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parseOffer(%q) = %+v, nil; want an error", tc.hdr, o)
				}
				if !errors.Is(err, errMalformedOffer) {
					t.Fatalf("parseOffer(%q) error %v is not errMalformedOffer", tc.hdr, err)
				}
				if o.present() {
					t.Errorf("parseOffer(%q) returned an offer %+v with its error", tc.hdr, o)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseOffer(%q) error: %v", tc.hdr, err)
			}
			if o.extendedConnect {
				t.Errorf("HTTP/1 offer marked extendedConnect")
			}
			if tc.want == nil {
				if o.present() {
					t.Fatalf("parseOffer(%q) = %+v; want no offer", tc.hdr, o.protocols)
				}
				return
			}
			if !o.present() {
				t.Fatalf("parseOffer(%q): no offer; want %v", tc.hdr, tc.want)
			}
			if !reflect.DeepEqual(o.protocols, tc.want) {
				t.Fatalf("parseOffer(%q) = %v; want %v", tc.hdr, o.protocols, tc.want)
			}
		})
	}
}

func TestParseOfferExtendedConnect(t *testing.T) {
	tests := []struct {
		name    string
		method  string
		major   int
		proto   string // r.Proto; "" keeps what offerRequest sets
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
			r := offerRequest(tc.method, tc.major, 0, tc.hdr)
			if tc.proto != "" {
				r.Proto = tc.proto
			}
			before := r.Header.Clone()
			o, err := parseOffer(r)
			if !reflect.DeepEqual(r.Header, before) {
				t.Errorf("parseOffer changed the header: %v, was %v", r.Header, before)
			}
			if tc.wantErr {
				if err == nil {
					t.Fatalf("parseOffer = %+v, nil; want an error", o)
				}
				if !errors.Is(err, errMalformedOffer) {
					t.Fatalf("error %v is not errMalformedOffer", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseOffer error: %v", err)
			}
			if tc.want == "" {
				if o.present() || o.extendedConnect {
					t.Fatalf("parseOffer = %+v; want no offer", o)
				}
				return
			}
			want := offer{protocols: []protocol{{name: tc.want}}, extendedConnect: true}
			if !reflect.DeepEqual(o, want) {
				t.Fatalf("parseOffer = %+v; want %+v", o, want)
			}
		})
	}
}

func TestOfferErrorMessage(t *testing.T) {
	r := offerRequest(http.MethodGet, 1, 1, http.Header{"Connection": {"Upgrade"}, "Upgrade": {"a/b/c"}})
	_, err := parseOffer(r)
	if err == nil || !strings.Contains(err.Error(), `"a/b/c"`) {
		t.Fatalf("error %v does not quote the bad element", err)
	}
	// A hostile element is cut in the message (SPEC §7: no value over 256
	// bytes is logged).
	bad := strings.Repeat("x", 300) + "@"
	r = offerRequest(http.MethodGet, 1, 1, http.Header{"Connection": {"Upgrade"}, "Upgrade": {bad}})
	_, err = parseOffer(r)
	if err == nil || !errors.Is(err, errMalformedOffer) {
		t.Fatalf("parseOffer(%q) = %v; want errMalformedOffer", bad, err)
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
		p, ok := parseProtocol(tc.in)
		if !ok {
			t.Errorf("parseProtocol(%q) not ok", tc.in)
			continue
		}
		if p.name != tc.name || p.version != tc.version {
			t.Errorf("parseProtocol(%q) = {%q %q}; want {%q %q}", tc.in, p.name, p.version, tc.name, tc.version)
		}
		// Round trip: String gives back what was parsed.
		if s := p.String(); s != tc.in {
			t.Errorf("parseProtocol(%q).String() = %q", tc.in, s)
		}
		if q, ok := parseProtocol(p.String()); !ok || q != p {
			t.Errorf("parseProtocol(%q) round trip = %+v, %v", p.String(), q, ok)
		}
	}
	bad := []string{"", "/", "a/", "/a", "a/b/c", "a//b", "a b", " a", "a ", "a\t", "a,b", "a;b", "a=b",
		`"a"`, "(a)", "a:b", "a@b", "a?b", "a[b]", "a{b}", "a\\b", "a\x00", "a\x7f", "é", "a/b c", "a/é"}
	for _, s := range bad {
		if p, ok := parseProtocol(s); ok {
			t.Errorf("parseProtocol(%q) = %+v, ok; want not ok", s, p)
		}
	}
}

func TestIsToken(t *testing.T) {
	const tchars = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	for c := 0; c < 256; c++ {
		want := strings.IndexByte(tchars, byte(c)) >= 0
		if got := isToken(string([]byte{byte(c)})); got != want {
			t.Errorf("isToken(%q) = %v; want %v", string([]byte{byte(c)}), got, want)
		}
		if got := isToken("a" + string([]byte{byte(c)}) + "b"); got != want {
			t.Errorf("isToken(%q) = %v; want %v", "a"+string([]byte{byte(c)})+"b", got, want)
		}
	}
	if isToken("") {
		t.Error(`isToken("") = true`)
	}
	if !isToken(tchars) {
		t.Errorf("isToken(%q) = false", tchars)
	}
	// A token is a protocol without a version, and back.
	for _, s := range []string{"websocket", "h2c", "Foo-1.0", tchars} {
		p, ok := parseProtocol(s)
		if !ok || p.version != "" || p.name != s || !isToken(p.String()) {
			t.Errorf("token %q: parseProtocol = %+v, %v", s, p, ok)
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
		if got := connectionHasToken(h, "upgrade"); got != tc.want {
			t.Errorf("connectionHasToken(%q) = %v; want %v", tc.lines, got, tc.want)
		}
	}
}
