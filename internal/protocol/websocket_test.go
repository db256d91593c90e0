package protocol

import (
	"encoding/base64"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// The sample handshake of RFC 6455 §1.3.
const (
	wsSampleKey    = "dGhlIHNhbXBsZSBub25jZQ=="
	wsSampleAccept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
)

// hdr builds a header from name/value pairs; a name given twice gives two
// field lines, in order.
func wsHdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

func TestAcceptKey(t *testing.T) {
	if got := AcceptKey(wsSampleKey); got != wsSampleAccept {
		t.Fatalf("AcceptKey(%q) = %q, want %q (RFC 6455 §1.3)", wsSampleKey, got, wsSampleAccept)
	}
}

func TestCheckWebSocketRequest(t *testing.T) {
	// A 16-byte key whose standard encoding holds '+' and '/', to check that
	// the URL-safe alphabet is refused.
	plusSlash := base64.StdEncoding.EncodeToString([]byte{0xfb, 0xff, 0xbf, 0xfb, 0xff, 0xbf, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	urlSafe := strings.NewReplacer("+", "-", "/", "_").Replace(plusSlash)
	if plusSlash == urlSafe {
		t.Fatal("test key has no '+' or '/'")
	}
	const key, ver = "Sec-WebSocket-Key", "Sec-WebSocket-Version"
	tests := []struct {
		name       string
		method     string
		h          http.Header
		xconnect   bool
		wantStatus int
		wantReason string // substring
	}{
		{"valid", "GET", wsHdr(key, wsSampleKey, ver, "13"), false, 0, ""},
		{"valid key with +/", "GET", wsHdr(key, plusSlash, ver, "13"), false, 0, ""},
		{"OWS around values", "GET", wsHdr(key, " \t"+wsSampleKey+" ", ver, " 13\t"), false, 0, ""},
		{"POST", "POST", wsHdr(key, wsSampleKey, ver, "13"), false, 400, "GET"},
		{"method is case-sensitive", "get", wsHdr(key, wsSampleKey, ver, "13"), false, 400, "GET"},
		{"CONNECT on HTTP/1.1", "CONNECT", wsHdr(key, wsSampleKey, ver, "13"), false, 400, "GET"},
		{"method before key", "POST", wsHdr(ver, "13"), false, 400, "GET"},
		{"missing key", "GET", wsHdr(ver, "13"), false, 400, "missing Sec-WebSocket-Key"},
		{"duplicate key", "GET", wsHdr(key, wsSampleKey, key, wsSampleKey, ver, "13"), false, 400, "duplicate Sec-WebSocket-Key"},
		{"empty key", "GET", wsHdr(key, "", ver, "13"), false, 400, "16 bytes"},
		{"key not base64", "GET", wsHdr(key, "not base64 at all!!!!!!!", ver, "13"), false, 400, "16 bytes"},
		{"key of 15 bytes", "GET", wsHdr(key, base64.StdEncoding.EncodeToString(make([]byte, 15)), ver, "13"), false, 400, "16 bytes"},
		{"key of 17 bytes", "GET", wsHdr(key, base64.StdEncoding.EncodeToString(make([]byte, 17)), ver, "13"), false, 400, "16 bytes"},
		{"key unpadded", "GET", wsHdr(key, strings.TrimRight(wsSampleKey, "="), ver, "13"), false, 400, "16 bytes"},
		{"key non-zero pad bits", "GET", wsHdr(key, "dGhlIHNhbXBsZSBub25jZR==", ver, "13"), false, 400, "16 bytes"},
		{"key URL-safe alphabet", "GET", wsHdr(key, urlSafe, ver, "13"), false, 400, "16 bytes"},
		{"key with line break", "GET", wsHdr(key, wsSampleKey[:10]+"\n"+wsSampleKey[10:22], ver, "13"), false, 400, "16 bytes"},
		{"key as list", "GET", wsHdr(key, wsSampleKey+", "+wsSampleKey, ver, "13"), false, 400, "16 bytes"},
		{"key before version", "GET", wsHdr(key, "x", ver, "8"), false, 400, "16 bytes"},
		{"missing version", "GET", wsHdr(key, wsSampleKey), false, 400, "missing Sec-WebSocket-Version"},
		{"duplicate version", "GET", wsHdr(key, wsSampleKey, ver, "13", ver, "13"), false, 400, "duplicate Sec-WebSocket-Version"},
		{"duplicate version before 426", "GET", wsHdr(key, wsSampleKey, ver, "8", ver, "13"), false, 400, "duplicate Sec-WebSocket-Version"},
		{"version 8", "GET", wsHdr(key, wsSampleKey, ver, "8"), false, 426, `"8"`},
		{"version list", "GET", wsHdr(key, wsSampleKey, ver, "13, 8"), false, 426, "13 required"},
		{"version empty", "GET", wsHdr(key, wsSampleKey, ver, ""), false, 426, "Sec-WebSocket-Version"},
		{"version 013", "GET", wsHdr(key, wsSampleKey, ver, "013"), false, 426, "Sec-WebSocket-Version"},

		{"xconnect valid", "CONNECT", wsHdr(ver, "13"), true, 0, ""},
		{"xconnect ignores method", "GET", wsHdr(ver, "13"), true, 0, ""},
		{"xconnect ignores key", "CONNECT", wsHdr(key, "x", key, "y", ver, "13"), true, 0, ""},
		{"xconnect missing version", "CONNECT", wsHdr(), true, 400, "missing Sec-WebSocket-Version"},
		{"xconnect duplicate version", "CONNECT", wsHdr(ver, "13", ver, "13"), true, 400, "duplicate Sec-WebSocket-Version"},
		{"xconnect version 8", "CONNECT", wsHdr(ver, "8"), true, 426, `"8"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, reason := CheckWebSocketRequest(tt.method, tt.h, tt.xconnect)
			if status != tt.wantStatus || !strings.Contains(reason, tt.wantReason) || (status == 0) != (reason == "") {
				t.Errorf("CheckWebSocketRequest(%q, %v, %v) = %d, %q; want %d, %q",
					tt.method, tt.h, tt.xconnect, status, reason, tt.wantStatus, tt.wantReason)
			}
		})
	}
}

func TestCheckWebSocketRequestLongVersionReason(t *testing.T) {
	_, reason := CheckWebSocketRequest("GET", wsHdr("Sec-WebSocket-Key", wsSampleKey, "Sec-WebSocket-Version", strings.Repeat("9", 10000)), false)
	if len(reason) > logValueCap+64 || strings.Contains(reason, strings.Repeat("9", 10000)) {
		t.Errorf("reason is %d bytes, want the value cut at %d", len(reason), logValueCap)
	}
}

func TestHeaderElements(t *testing.T) {
	tests := []struct {
		in   []string
		want []string
	}{
		{nil, nil},
		{[]string{""}, nil},
		{[]string{" , ,\t,"}, nil},
		{[]string{"a"}, []string{"a"}},
		{[]string{"a, b", "c"}, []string{"a", "b", "c"}},
		{[]string{" a ,\tb\t,, ", "", " c"}, []string{"a", "b", "c"}},
		{[]string{"a b, c"}, []string{"a b", "c"}},
		{[]string{`x="a,b"`}, []string{`x="a`, `b"`}}, // not quote-aware
	}
	for _, tt := range tests {
		if got := slices.Collect(ListElements(tt.in)); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ListElements(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestHeaderListElements(t *testing.T) {
	tests := []struct {
		in   []string
		want []string
	}{
		{nil, nil},
		{[]string{" , ,"}, nil},
		{[]string{"a, b", " c "}, []string{"a", "b", "c"}},
		{[]string{`pmd; x="a, b", foo`}, []string{`pmd; x="a, b"`, "foo"}},
		{[]string{`e; x="a\", b", f`}, []string{`e; x="a\", b"`, "f"}},
		{[]string{`e; x="a\\", f`}, []string{`e; x="a\\"`, "f"}},
		{[]string{`e; x="open, f`, "g, h"}, []string{`e; x="open, f`, "g", "h"}}, // a quote ends with its line
		{[]string{`a\, b`}, []string{`a\`, "b"}},                                 // backslash outside quotes is literal
	}
	for _, tt := range tests {
		if got := quotedListElements(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("quotedListElements(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestFilterSubprotocols(t *testing.T) {
	tests := []struct {
		offered, allowed, want []string
	}{
		{nil, []string{"chat"}, nil},
		{[]string{"chat"}, nil, nil},
		{[]string{"chat, superchat"}, []string{"chat"}, []string{"chat"}},
		{[]string{"superchat, chat"}, []string{"chat", "superchat"}, []string{"superchat", "chat"}}, // client order
		{[]string{"a", "b, c"}, []string{"c", "a"}, []string{"a", "c"}},                             // lines join in order
		{[]string{" a ,\t, b "}, []string{"a", "b"}, []string{"a", "b"}},
		{[]string{"Chat"}, []string{"chat"}, nil}, // exact compare
		{[]string{"other"}, []string{"chat"}, nil},
		{[]string{"", ","}, []string{""}, nil}, // empty elements are skipped
	}
	for _, tt := range tests {
		got := filterSubprotocols(tt.offered, tt.allowed)
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("filterSubprotocols(%q, %q) = %#v, want %#v", tt.offered, tt.allowed, got, tt.want)
		}
	}
}

func TestCheckWebSocket101(t *testing.T) {
	const (
		key    = "Sec-WebSocket-Key"
		accept = "Sec-WebSocket-Accept"
		proto  = "Sec-WebSocket-Protocol"
		ext    = "Sec-WebSocket-Extensions"
	)
	req := func(kv ...string) http.Header { return wsHdr(append([]string{key, wsSampleKey}, kv...)...) }
	res := func(kv ...string) http.Header { return wsHdr(append([]string{accept, wsSampleAccept}, kv...)...) }
	tests := []struct {
		name        string
		req, res    http.Header
		checkAccept bool
		wantReason  string // substring; "" means accepted
	}{
		{"valid", req(), res(), true, ""},
		{"accept with OWS", req(), wsHdr(accept, " "+wsSampleAccept+"\t"), true, ""},
		{"key with OWS", wsHdr(key, " "+wsSampleKey+" "), res(), true, ""},
		{"missing accept", req(), wsHdr(), true, "missing Sec-WebSocket-Accept"},
		{"duplicate accept", req(), wsHdr(accept, wsSampleAccept, accept, wsSampleAccept), true, "duplicate Sec-WebSocket-Accept"},
		{"wrong accept", req(), wsHdr(accept, AcceptKey("x")), true, "wrong Sec-WebSocket-Accept"},
		{"accept of the decoded key", req(), wsHdr(accept, AcceptKey("the sample nonce")), true, "wrong"},
		{"request without key", wsHdr(), res(), true, "Sec-WebSocket-Key"},
		{"request with two keys", wsHdr(key, wsSampleKey, key, wsSampleKey), res(), true, "Sec-WebSocket-Key"},
		{"no accept check", wsHdr(), wsHdr(), false, ""},
		{"no accept check ignores a wrong accept", wsHdr(), wsHdr(accept, "x"), false, ""},

		{"subprotocol chosen", req(proto, "chat, superchat"), res(proto, "superchat"), true, ""},
		{"subprotocol from second line", req(proto, "chat", proto, "v2"), res(proto, " v2 "), true, ""},
		{"subprotocol offered none", req(), res(proto, "chat"), true, `"chat" was not offered`},
		{"subprotocol not offered", req(proto, "chat"), res(proto, "superchat"), true, "not offered"},
		{"subprotocol exact compare", req(proto, "chat"), res(proto, "Chat"), true, "not offered"},
		{"subprotocol two lines", req(proto, "a, b"), res(proto, "a", proto, "a"), true, "duplicate Sec-WebSocket-Protocol"},
		{"subprotocol list", req(proto, "a, b"), res(proto, "a, b"), true, "not one subprotocol"},
		{"subprotocol trailing comma", req(proto, "a"), res(proto, "a,"), true, "not one subprotocol"},
		{"subprotocol empty", req(proto, "a"), res(proto, ""), true, "not one subprotocol"},
		{"no subprotocol chosen", req(proto, "a, b"), res(), true, ""},

		{"extension accepted", req(ext, "permessage-deflate; client_max_window_bits"), res(ext, "permessage-deflate; server_no_context_takeover"), true, ""},
		{"extension case-insensitive", req(ext, "permessage-deflate"), res(ext, "Permessage-Deflate ; client_max_window_bits=10"), true, ""},
		{"extension offered twice with other params", req(ext, "permessage-deflate; client_max_window_bits, permessage-deflate"), res(ext, "permessage-deflate"), true, ""},
		{"extension from second line", req(ext, "foo", ext, "bar; x=1"), res(ext, "bar, foo"), true, ""},
		{"extension not offered", req(ext, "permessage-deflate"), res(ext, "x-webkit-deflate-frame"), true, `"x-webkit-deflate-frame" was not offered`},
		{"extension offered none", req(), res(ext, "permessage-deflate"), true, "not offered"},
		{"one of two not offered", req(ext, "permessage-deflate"), res(ext, "permessage-deflate, foo"), true, `"foo" was not offered`},
		{"extension name empty", req(ext, "permessage-deflate"), res(ext, "; x=1"), true, "not offered"},
		{"extension name not a token", req(ext, `"pmd"`), res(ext, `"pmd"`), true, "not offered"},
		{"quoted comma in params", req(ext, "pmd"), res(ext, `pmd; x="a, foo"`), true, ""},
		{"quoted comma in offer", req(ext, `pmd; x="a, foo", bar`), res(ext, "bar"), true, ""},
		{"quoted text is no offer", req(ext, `pmd; x="a, foo"`), res(ext, "foo"), true, "not offered"},
		{"empty extensions line", req(ext, "pmd"), res(ext, ""), true, ""},
		{"extensions without accept check", wsHdr(ext, "pmd"), wsHdr(ext, "pmd, foo"), false, `"foo"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := CheckWebSocket101(tt.req, tt.res, tt.checkAccept)
			if (got == "") != (tt.wantReason == "") || !strings.Contains(got, tt.wantReason) {
				t.Errorf("CheckWebSocket101(%v, %v, %v) = %q, want %q", tt.req, tt.res, tt.checkAccept, got, tt.wantReason)
			}
		})
	}
}

func FuzzCheckWebSocketRequest(f *testing.F) {
	f.Add("GET", wsSampleKey, "13", false)
	f.Add("GET", " "+wsSampleKey+"\n"+wsSampleKey, "13", false)
	f.Add("POST", wsSampleKey, "8", false)
	f.Add("GET", "dGhlIHNhbXBsZSBub25jZR==", "13\n13", false)
	f.Add("CONNECT", "", "13", true)
	f.Add("CONNECT", "", "8", true)
	f.Fuzz(func(t *testing.T, method, keys, versions string, xconnect bool) {
		h := http.Header{}
		if k := fzLines(keys); k != nil {
			h["Sec-Websocket-Key"] = k
		}
		if v := fzLines(versions); v != nil {
			h["Sec-Websocket-Version"] = v
		}
		status, reason := CheckWebSocketRequest(method, h, xconnect)
		if (status == 0) != (reason == "") {
			t.Fatalf("status %d with reason %q", status, reason)
		}

		// An independent oracle of the rules.
		keyOK := xconnect
		if !xconnect && method == "GET" && len(h["Sec-Websocket-Key"]) == 1 {
			k := strings.Trim(h["Sec-Websocket-Key"][0], " \t")
			b, err := base64.StdEncoding.DecodeString(k)
			keyOK = err == nil && len(b) == 16 && base64.StdEncoding.EncodeToString(b) == k
		}
		vs := h["Sec-Websocket-Version"]
		want := http.StatusBadRequest
		switch {
		case keyOK && len(vs) == 1 && strings.Trim(vs[0], " \t") == "13":
			want = 0
		case keyOK && len(vs) == 1:
			want = http.StatusUpgradeRequired
		}
		if status != want {
			t.Fatalf("CheckWebSocketRequest(%q, %q, %v) = %d %q, oracle says %d", method, h, xconnect, status, reason, want)
		}
	})
}

func FuzzCheckWebSocket101(f *testing.F) {
	f.Add(wsSampleKey, "chat, superchat", "permessage-deflate; client_max_window_bits", wsSampleAccept, "chat", "permessage-deflate", true, false)
	f.Add(wsSampleKey, "", "", "", "", "", true, true)
	f.Add("k\nk", "a", `pmd; x="a, b", c`, "x", "a\nb", `c, pmd; y="q\"r"`, false, false)
	f.Fuzz(func(t *testing.T, keys, reqProto, reqExt, accepts, resProto, resExt string, checkAccept, correctAccept bool) {
		req, res := fzHandshake(keys, reqProto, reqExt, accepts, resProto, resExt, correctAccept)

		reason := CheckWebSocket101(req, res, checkAccept)
		if reason != "" {
			if correctAccept && len(req["Sec-Websocket-Key"]) == 1 && len(res["Sec-Websocket-Protocol"]) == 0 && len(res["Sec-Websocket-Extensions"]) == 0 {
				t.Fatalf("a correct bare 101 was refused: %q", reason)
			}
			return
		}
		// Accepted: re-check the rules independently.
		if checkAccept {
			k, a := req["Sec-Websocket-Key"], res["Sec-Websocket-Accept"]
			if len(k) != 1 || len(a) != 1 || strings.Trim(a[0], " \t") != AcceptKey(strings.Trim(k[0], " \t")) {
				t.Fatalf("accepted a wrong Accept: key %q accept %q", k, a)
			}
		}
		if p := res["Sec-Websocket-Protocol"]; len(p) > 0 {
			v := strings.Trim(p[0], " \t")
			found := false
			for _, o := range fzElements(req["Sec-Websocket-Protocol"]) {
				found = found || o == v
			}
			if len(p) != 1 || v == "" || strings.Contains(v, ",") || !found {
				t.Fatalf("accepted subprotocol %q for offer %q", p, req["Sec-Websocket-Protocol"])
			}
		}
		if !strings.Contains(resExt+reqExt, `"`) { // without quotes a plain split is exact
			offered := map[string]bool{}
			for _, e := range fzElements(req["Sec-Websocket-Extensions"]) {
				n, _, _ := strings.Cut(e, ";")
				offered[strings.ToLower(strings.Trim(n, " \t"))] = true
			}
			for _, e := range fzElements(res["Sec-Websocket-Extensions"]) {
				n, _, _ := strings.Cut(e, ";")
				if n = strings.ToLower(strings.Trim(n, " \t")); n == "" || !offered[n] {
					t.Fatalf("accepted extension %q for offer %q", e, req["Sec-Websocket-Extensions"])
				}
			}
		}
	})
}
