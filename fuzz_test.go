package upgrade

// Fuzz targets for the offer grammar, the policy's selection and the check
// of a backend's 101 through (*expectation).check101. Each checks its
// target against an independent oracle written here from the SPEC, not
// from the code. (websocket_test.go and origin_test.go hold
// FuzzCheckWebSocketRequest, FuzzCheckWebSocket101 and FuzzOrigin.)
//
// Multi-line header inputs are one string with "\n" between field lines;
// "" means the field is absent.

import (
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// fzLines splits a fuzz string into field lines ("" = no field).
func fzLines(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// fzSetLines sets field name of h to the lines of a fuzz string, if any.
func fzSetLines(h http.Header, name, lines string) {
	if l := fzLines(lines); l != nil {
		h[name] = l
	}
}

// fzHandshake builds a WebSocket request's and a 101's header fields from
// fuzz strings; with correctAccept and one key, the 101 gets that key's
// correct Sec-WebSocket-Accept instead of accepts.
func fzHandshake(keys, reqProto, reqExt, accepts, resProto, resExt string, correctAccept bool) (req, res http.Header) {
	req, res = http.Header{}, http.Header{}
	fzSetLines(req, "Sec-Websocket-Key", keys)
	fzSetLines(req, "Sec-Websocket-Protocol", reqProto)
	fzSetLines(req, "Sec-Websocket-Extensions", reqExt)
	if correctAccept && len(req["Sec-Websocket-Key"]) == 1 {
		accepts = acceptKey(strings.Trim(req["Sec-Websocket-Key"][0], " \t"))
	}
	fzSetLines(res, "Sec-Websocket-Accept", accepts)
	fzSetLines(res, "Sec-Websocket-Protocol", resProto)
	fzSetLines(res, "Sec-Websocket-Extensions", resExt)
	return req, res
}

// fzTchar is RFC 9110's tchar, written out independently of isTchar.
func fzTchar(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' ||
		strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c))
}

func fzToken(s string) bool {
	if len(s) == 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !fzTchar(s[i]) {
			return false
		}
	}
	return true
}

// fzProtocolOK is token ["/" token].
func fzProtocolOK(s string) bool {
	parts := strings.Split(s, "/")
	switch len(parts) {
	case 1:
		return fzToken(parts[0])
	case 2:
		return fzToken(parts[0]) && fzToken(parts[1])
	}
	return false
}

// fzElements splits comma lists over lines, trims spaces and tabs and drops
// empty elements (RFC 9110 §5.6.1).
func fzElements(lines []string) []string {
	var out []string
	for _, l := range lines {
		for _, e := range strings.Split(l, ",") {
			if e = strings.Trim(e, " \t"); e != "" {
				out = append(out, e)
			}
		}
	}
	return out
}

// fzProtected reports whether a Connection option names Host, Origin or a
// Sec-WebSocket-* field (SPEC §3: malformed). Only a valid field name can
// name a field.
func fzProtected(opt string) bool {
	if !fzToken(opt) {
		return false
	}
	l := strings.ToLower(opt)
	return l == "host" || l == "origin" || strings.HasPrefix(l, "sec-websocket-")
}

// fzOfferOracle is SPEC §2 for an HTTP/1.x request: whether parseOffer must
// fail, and the protocols it must return otherwise.
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

func fzProtocolStrings(o offer) []string {
	var out []string
	for _, p := range o.protocols {
		out = append(out, p.String())
	}
	return out
}

func fzParseLines(t *testing.T, lines []string) offer {
	t.Helper()
	r := &http.Request{ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{
		"Connection": {"Upgrade"},
		"Upgrade":    lines,
	}}
	o, err := parseOffer(r)
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
		o, err := parseOffer(r)
		if !reflect.DeepEqual(h, before) {
			t.Fatalf("parseOffer changed the header: %q, was %q", h, before)
		}

		wantErr, want := fzOfferOracle(up, conn, m)
		if (err != nil) != wantErr {
			t.Fatalf("parseOffer(Upgrade %q, Connection %q, HTTP/1.%d): err %v, oracle wants error: %v", up, conn, m, err, wantErr)
		}
		if err != nil {
			if !errors.Is(err, errMalformedOffer) {
				t.Fatalf("error %v does not wrap errMalformedOffer", err)
			}
			if o.present() {
				t.Fatalf("an error came with an offer %v", o)
			}
			return
		}
		got := fzProtocolStrings(o)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("parseOffer(Upgrade %q, Connection %q, HTTP/1.%d) = %q, oracle %q", up, conn, m, got, want)
		}
		if o.extendedConnect {
			t.Fatalf("an HTTP/1.%d request gave an extended CONNECT offer", m)
		}
		if !o.present() {
			return
		}

		// An accepted offer: 1–16 protocols, at most 512 bytes received,
		// each token["/"token].
		if n := len(o.protocols); n < 1 || n > 16 {
			t.Fatalf("accepted offer of %d protocols", n)
		}
		size := 0
		for _, l := range up {
			size += len(l)
		}
		if size > 512 {
			t.Fatalf("accepted %d bytes of Upgrade", size)
		}
		for _, p := range o.protocols {
			if !fzToken(p.name) || (p.version != "" && !fzToken(p.version)) || !fzProtocolOK(p.String()) {
				t.Fatalf("accepted protocol %q (name %q, version %q)", p.String(), p.name, p.version)
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
		o2, err := parseOffer(r2)
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

// fzProtocols parses a comma list into protocols, keeping only the
// well-formed ones (as Validate would have refused the rest).
func fzProtocols(s string) []protocol {
	var out []protocol
	for _, e := range strings.Split(s, ",") {
		e = strings.Trim(e, " \t")
		if !fzProtocolOK(e) {
			continue
		}
		name, version, _ := strings.Cut(e, "/")
		out = append(out, protocol{name: name, version: version})
	}
	return out
}

// fzMatches is SPEC §1: names case-insensitive, versions exact; an entry
// without a version admits any version or none.
func fzMatches(entry, offered protocol) bool {
	return strings.EqualFold(entry.name, offered.name) && (entry.version == "" || entry.version == offered.version)
}

func FuzzPolicyDecide(f *testing.F) {
	f.Add("websocket, foo/2", "foo/1, WebSocket/13, foo/2", false, false, false, uint8(1))
	f.Add("websocket", "h2c", false, false, false, uint8(1))
	f.Add("websocket", "h2c", true, false, false, uint8(1))
	f.Add("websocket", "h2c", false, true, false, uint8(1))
	f.Add("websocket", "", true, false, false, uint8(2))
	f.Add("websocket, foo/2", "foo", false, false, true, uint8(2))
	f.Add("websocket, foo/2", "websocket", true, true, true, uint8(3))
	f.Add("foo/2", "FOO/2, foo/2", false, false, false, uint8(1))
	f.Add("foo/2", "foo/02", false, false, false, uint8(1))
	f.Add("FOO, websocket", "h2c, websocket, foo", false, false, false, uint8(1))
	f.Fuzz(func(t *testing.T, allowedList, offered string, require, reject, xconnect bool, major uint8) {
		p := &policy{require: require, reject: reject, allowed: fzProtocols(allowedList)}
		o := offer{protocols: fzProtocols(offered), extendedConnect: xconnect}
		if xconnect {
			// An extended CONNECT offers one bare token.
			if len(o.protocols) > 0 {
				o.protocols = []protocol{{name: o.protocols[0].name}}
			}
		}
		httpMajor := int(major%3) + 1
		if xconnect && httpMajor == 1 {
			httpMajor = 2
		}

		// The oracle: the first offered protocol, in client order, that any
		// allowed entry matches.
		var sel *protocol
		for i := range o.protocols {
			for _, a := range p.allowed {
				if fzMatches(a, o.protocols[i]) {
					sel = &o.protocols[i]
					break
				}
			}
			if sel != nil {
				break
			}
		}

		v := p.decide(o, httpMajor)
		required := http.StatusUpgradeRequired
		if httpMajor >= 2 {
			required = http.StatusBadRequest
		}
		if v.outcome == outcomeAccepted {
			if sel == nil {
				t.Fatalf("allowed %q, offered %q: accepted %q, which no allowed entry matches", p.allowed, o.protocols, v.selected)
			}
			if v.selected != *sel {
				t.Fatalf("allowed %q, offered %q: selected %q, want the first match %q", p.allowed, o.protocols, v.selected, *sel)
			}
			if !fzMatches(v.entry, v.selected) {
				t.Fatalf("entry %q does not match selected %q", v.entry, v.selected)
			}
			found := false
			for _, a := range p.allowed {
				found = found || a == v.entry
			}
			if !found {
				t.Fatalf("entry %q is not an allowed entry of %q", v.entry, p.allowed)
			}
			if xconnect && v.entry.version != "" {
				t.Fatalf("extended CONNECT matched the versioned entry %q", v.entry)
			}
			if v.status != 0 {
				t.Fatalf("accepted with status %d", v.status)
			}
			return
		}
		if sel != nil {
			t.Fatalf("allowed %q, offered %q: outcome %s, but %q is allowed", p.allowed, o.protocols, v.outcome, *sel)
		}
		// SPEC §3 table, nothing selected.
		var wantOutcome outcome
		wantStatus := 0
		switch {
		case len(o.protocols) > 0 && reject:
			wantOutcome, wantStatus = outcomeRejected, http.StatusForbidden
		case len(o.protocols) > 0 && xconnect:
			wantOutcome, wantStatus = outcomeUnsupported, http.StatusNotImplemented
		case require:
			wantOutcome, wantStatus = outcomeRequired, required
		case len(o.protocols) > 0:
			wantOutcome = outcomeIgnored
		default:
			wantOutcome = outcomeNone
		}
		if v.outcome != wantOutcome || v.status != wantStatus {
			t.Fatalf("allowed %q, offered %q (require %v, reject %v, extended CONNECT %v, HTTP/%d): %s %d, want %s %d",
				p.allowed, o.protocols, require, reject, xconnect, httpMajor, v.outcome, v.status, wantOutcome, wantStatus)
		}
		if v.selected != (protocol{}) || v.entry != (protocol{}) {
			t.Fatalf("not accepted, but selected %q entry %q", v.selected, v.entry)
		}
	})
}

// fzAcceptFor is RFC 6455 §4.2.2's Sec-WebSocket-Accept for key, computed
// here independently of the module (and of harness_test.go, so that the
// fuzz targets build without Caddy's standard modules, which slow every
// execution down by their coverage counters).
func fzAcceptFor(key string) string {
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// fzConnHasUpgrade is "Connection holds the token upgrade", independently.
func fzConnHasUpgrade(lines []string) bool {
	for _, e := range fzElements(lines) {
		if strings.EqualFold(e, "upgrade") {
			return true
		}
	}
	return false
}

func FuzzCheck101(f *testing.F) {
	// RFC 6455 §1.3's handshake, then the attack answers of
	// adversarial_test.go.
	f.Add("websocket", true, wsSampleKey, "Upgrade", "websocket", wsSampleAccept, "", "", "", "", false, true)
	f.Add("websocket", true, wsSampleKey, "Upgrade", "h2c", wsSampleAccept, "", "", "", "", false, true)
	f.Add("websocket", true, wsSampleKey, "", "websocket", wsSampleAccept, "", "", "", "", false, true)
	f.Add("websocket", true, wsSampleKey, "Upgrade", "websocket", acceptKey("not the key"), "", "", "", "", false, true)
	f.Add("websocket", true, wsSampleKey, "Upgrade", "websocket", "", "", "", "", "", false, true)
	f.Add("websocket", true, wsSampleKey, "Upgrade", "websocket", wsSampleAccept, "chat", "admin", "", "", false, true)
	f.Add("websocket", true, wsSampleKey, "Upgrade", "websocket", wsSampleAccept, "", "", "permessage-deflate", "x-evil-compress", false, true)
	f.Add("websocket", true, wsSampleKey, "keep-alive, UPGRADE", "WebSocket", " "+wsSampleAccept+"\t", "chat, superchat", "chat", "permessage-deflate; client_max_window_bits", "permessage-deflate; server_no_context_takeover", false, true)
	f.Add("websocket", true, wsSampleKey, "Upgrade", "websocket", wsSampleAccept+"\n"+wsSampleAccept, "", "", "", "", false, true)
	f.Add("websocket", true, wsSampleKey+"\n"+wsSampleKey, "Upgrade", "websocket", "", "", "", "", "", true, true)
	f.Add("websocket", true, "", "Upgrade", "websocket", "", "", "", "", "", false, false)
	f.Add("websocket", true, wsSampleKey, "Upgrade", "websocket", "", "", "", "", "", true, false)
	f.Add("foo/2", false, "", "Upgrade", "FOO/2", "", "", "", "", "", false, true)
	f.Add("foo/2", false, "", "Upgrade", "foo/2\nfoo/2", "", "", "", "", "", false, true)
	f.Add("foo/2", false, "", "Upgrade", "foo/2, h2c", "", "", "", "", "", false, true)
	f.Fuzz(func(t *testing.T, selected string, websocket bool, keys, resConn, resUpgrade, accepts, reqProto, resProto, reqExt, resExt string,
		correctAccept, checkAccept bool) {
		req, res := fzHandshake(keys, reqProto, reqExt, accepts, resProto, resExt, correctAccept)
		fzSetLines(res, "Connection", resConn)
		fzSetLines(res, "Upgrade", resUpgrade)
		e := &expectation{selected: selected, websocket: websocket, clientHeader: req}
		reason := e.check101(req, res, checkAccept)

		if reason != "" {
			// A textbook answer must pass: Connection: Upgrade, Upgrade
			// naming the selected protocol, the correct Accept for a single
			// key, and nothing chosen that was not offered.
			textbook := fzConnHasUpgrade(res["Connection"]) && len(res["Upgrade"]) == 1 &&
				strings.EqualFold(strings.Trim(res["Upgrade"][0], " \t"), selected) &&
				len(res["Sec-Websocket-Protocol"]) == 0 && len(res["Sec-Websocket-Extensions"]) == 0
			if websocket && checkAccept {
				textbook = textbook && correctAccept && len(req["Sec-Websocket-Key"]) == 1
			}
			if textbook {
				t.Fatalf("a correct 101 was refused: %q (request %q, response %q)", reason, req, res)
			}
			return
		}

		// Accepted: every rule holds, checked independently.
		if !fzConnHasUpgrade(res["Connection"]) {
			t.Fatalf("accepted a 101 without Connection: upgrade: %q", res["Connection"])
		}
		if u := res["Upgrade"]; len(u) != 1 || !strings.EqualFold(strings.Trim(u[0], " \t"), selected) {
			t.Fatalf("accepted a 101 with Upgrade %q for %q", u, selected)
		}
		if !websocket || !checkAccept {
			return
		}
		// The property: a 101 accepted for WebSocket always carries the
		// correct Accept for the key that was sent.
		k, a := req["Sec-Websocket-Key"], res["Sec-Websocket-Accept"]
		if len(k) != 1 || len(a) != 1 {
			t.Fatalf("accepted with keys %q and accepts %q", k, a)
		}
		if got, want := strings.Trim(a[0], " \t"), fzAcceptFor(strings.Trim(k[0], " \t")); got != want {
			t.Fatalf("accepted Accept %q for key %q, want %q", got, k[0], want)
		}
	})
}
