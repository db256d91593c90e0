// Package audit is the catalogue of protocol-upgrade attacks on an HTTP
// gateway, the code that runs them, the canary backend that shows what
// reached the backend, and the judging of each outcome.
//
// It is shared by the `caddy upgrade-audit` command and by the module's
// adversarial test suite, so the attacks an operator runs against a gateway
// and the ones the module is tested against cannot drift apart. It imports
// nothing from Caddy.
package audit

import "strings"

// Answer selects how the canary backend answers an upgrade request. The
// auditor asks for one in the request's query (answer=...); without it the
// canary answers AnswerNaive.
type Answer string

const (
	// AnswerNaive: 101 to anything, naming the protocol asked for, with the
	// correct Sec-WebSocket-Accept when a key was sent; tunnel bytes are
	// recorded and echoed (an HTTP/2 client preface after Upgrade: h2c is
	// served as HTTP/2).
	AnswerNaive Answer = "naive"
	// AnswerRefuse426 and AnswerRefuse200: the backend declines the
	// upgrade, the setting WebSocket smuggling relies on.
	AnswerRefuse426 Answer = "r426"
	AnswerRefuse200 Answer = "r200"
	// The 101s that do not match the request.
	AnswerProto101       Answer = "proto101"     // Upgrade: h2c to a WebSocket
	AnswerNoConnection   Answer = "noconn101"    // no Connection: upgrade
	AnswerBadAccept101   Answer = "badaccept101" // an Accept for another key
	AnswerNoAccept101    Answer = "noaccept101"  // no Accept
	AnswerSubprotocol101 Answer = "subproto101"  // a subprotocol the client did not offer
	AnswerExtension101   Answer = "ext101"       // an extension the client did not offer
)

// Answers lists every answer the canary knows.
var Answers = []Answer{AnswerNaive, AnswerRefuse426, AnswerRefuse200, AnswerProto101, AnswerNoConnection,
	AnswerBadAccept101, AnswerNoAccept101, AnswerSubprotocol101, AnswerExtension101}

// What a defended gateway does with an attack's request, as seen at the
// backend.
const (
	BackendUntouched = "untouched" // refused by the gateway: no byte of it reaches the backend
	BackendPlain     = "plain"     // stripped: reaches the backend as a plain request, no upgrade fields
	BackendRefused   = "refused"   // forwarded as Upgrade: websocket; the backend answered non-101
	BackendWSClosed  = "ws-closed" // forwarded as Upgrade: websocket; the backend switched; its connection closed, no tunnel byte
)

// What becomes of the request pipelined behind the attack on a defended
// gateway.
const (
	AfterRouted = "routed" // parsed and routed as an ordinary request
	AfterClosed = "closed" // the connection closes; the request never reaches the backend
)

// Kinds of check: the transport an attack is run on.
const (
	KindHTTP1 = "http1" // raw bytes on one HTTP/1.x connection, with a request pipelined behind
	KindH2C   = "h2c"   // Upgrade: h2c, then HTTP/2 through the tunnel
	KindHTTP2 = "http2" // extended CONNECT over HTTP/2 (RFC 8441)
	KindHTTP3 = "http3" // extended CONNECT over HTTP/3 (RFC 9220)
)

// Expect is the answer of a gateway that defends against an attack: the
// `upgrade` module's answer, which its tests assert exactly.
type Expect struct {
	Status   int
	RawEarly bool // a raw 400 with Connection: close, written on the hijacked connection
	Backend  string
	After    string
	Headers  map[string]string // first values the response must carry
	Absent   []string          // fields the response must not carry
	Body     string            // the response body, if not ""
	// NoSettings: a stripped h2c offer's HTTP2-Settings (named in its
	// Connection) must not reach the backend.
	NoSettings bool
}

// Env is what an attack's request is built from.
type Env struct {
	Key    string // a fresh Sec-WebSocket-Key
	Origin string // the origin the gateway allows, scheme://host[:port]
}

// Attack is one row of the catalogue.
type Attack struct {
	ID        string // stable, short: used in request URIs and in --json
	Name      string
	Group     string
	Reference string // RFC section or write-up
	Kind      string
	Answer    Answer // the canary's answer this attack needs (AnswerNaive if "")
	Method    string // default GET
	Proto     string // default HTTP/1.1
	Lines     func(Env) []string
	Body      string
	Expect    Expect
	// Protocol is the :protocol of an extended CONNECT (KindHTTP2, KindHTTP3).
	Protocol string
	// EarlyData: the attack is the bytes sent behind a valid handshake, so
	// a 101 alone shows a client nothing; what comes back through the
	// tunnel does.
	EarlyData bool
}

// NeedsCanary reports whether the attack only means something against the
// canary backend, because it depends on how the backend answers.
func (a Attack) NeedsCanary() bool {
	return a.Answer != "" && a.Answer != AnswerNaive
}

// H2CSettings is the HTTP2-Settings value h2csmuggler sends.
const H2CSettings = "AAMAAABkAARAAAAAAAIAAAAA"

// UnknownProtocol is the :protocol of the extended CONNECT checks: a
// registered-looking token that no gateway has a reason to allow.
const UnknownProtocol = "x-upgrade-audit"

// WSLines are the header lines of a valid WebSocket handshake with key,
// followed by extra.
func WSLines(key string, extra ...string) []string {
	return append([]string{
		"Connection: Upgrade",
		"Upgrade: websocket",
		"Sec-WebSocket-Key: " + key,
		"Sec-WebSocket-Version: 13",
	}, extra...)
}

// wsWithUpgrade is a WebSocket handshake whose Upgrade lines are given.
func wsWithUpgrade(key string, upgrade ...string) []string {
	lines := []string{"Connection: Upgrade"}
	for _, u := range upgrade {
		lines = append(lines, "Upgrade: "+u)
	}
	return append(lines, "Sec-WebSocket-Key: "+key, "Sec-WebSocket-Version: 13")
}

// wsWithVersion is a WebSocket handshake with the given version, with or
// without Connection: Upgrade.
func wsWithVersion(key, version string, connection bool) []string {
	var lines []string
	if connection {
		lines = append(lines, "Connection: Upgrade")
	}
	return append(lines, "Upgrade: websocket", "Sec-WebSocket-Key: "+key, "Sec-WebSocket-Version: "+version)
}

// Foreign origins derived from the allowed one, so that the checks mean the
// same against any gateway: a look-alike host under another registrable
// domain, and the same host under the other scheme.
func lookAlikeOrigin(origin string) string { return origin + ".evil.example" }

func otherSchemeOrigin(origin string) string {
	if rest, ok := strings.CutPrefix(origin, "https://"); ok {
		return "http://" + rest
	}
	if rest, ok := strings.CutPrefix(origin, "http://"); ok {
		return "https://" + rest
	}
	return "http://" + origin
}

// EvilOrigin is the foreign origin of the CSWSH checks.
const EvilOrigin = "https://evil.example"

// References, cited once each.
const (
	refH2C        = "RFC 7540 §3.2 (h2c upgrade; dropped by RFC 9113 §3.1); Bishop Fox, \"h2c Smuggling\" (2020)"
	refWSSmuggle  = "RFC 6455 §4.1; Mikhail Egorov (0ang3el), \"WebSocket smuggling\" (2019)"
	refBody       = "RFC 9110 §7.8; RFC 9112 §6.3; 0ang3el, \"WebSocket smuggling\" (2019)"
	refVersion    = "RFC 6455 §4.2.2 (426 with Sec-WebSocket-Version: 13); 0ang3el, \"WebSocket smuggling\" (2019)"
	refUpgradeLst = "RFC 9110 §7.8, §5.3 (field lines join into one list)"
	refFold       = "RFC 9112 §5.2 (obs-fold)"
	refToken      = "RFC 9110 §7.8, §5.6.2 (protocol-name and -version are tokens)"
	refHopByHop   = "RFC 9110 §7.6.1 (Connection options are hop-by-hop)"
	refHTTP10     = "RFC 9110 §7.8 (Upgrade in an HTTP/1.0 request must be ignored)"
	refBad101     = "RFC 9110 §15.2.2, §7.8; RFC 6455 §4.1 (a client fails such a 101)"
	refCSWSH      = "RFC 6455 §10.2; RFC 6454 §7; Christian Schneider, \"Cross-Site WebSocket Hijacking\" (2013)"
	refEarly      = "RFC 6455 §4.1 (the client waits for the 101); RFC 9112 §9.3"
	refXConnect2  = "RFC 8441 §4, RFC 9110 §9.3.6"
	refXConnect3  = "RFC 9220 §3, RFC 8441 §4"
)

// Catalogue returns every attack, in report order. The HTTP/1.x rows come
// first; then the checks over h2c, HTTP/2 and HTTP/3.
func Catalogue() []Attack {
	h2cSettings := func(Env) []string {
		return []string{"Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: " + H2CSettings}
	}
	h2cOnly := func(Env) []string { return []string{"Connection: Upgrade", "Upgrade: h2c"} }
	ws := func(extra ...string) func(Env) []string {
		return func(e Env) []string { return WSLines(e.Key, extra...) }
	}
	wsOrigin := func(origins func(allowed string) []string) func(Env) []string {
		return func(e Env) []string {
			var lines []string
			for _, o := range origins(e.Origin) {
				lines = append(lines, "Origin: "+o)
			}
			return WSLines(e.Key, lines...)
		}
	}
	plain := Expect{Status: 200, Backend: BackendPlain, After: AfterRouted}
	h2cStripped := Expect{Status: 200, Backend: BackendPlain, After: AfterRouted, NoSettings: true}
	plainClosed := Expect{Status: 200, Backend: BackendPlain, After: AfterClosed}
	bad400 := Expect{Status: 400, Backend: BackendUntouched, After: AfterRouted}
	early := Expect{Status: 400, RawEarly: true, Backend: BackendWSClosed, After: AfterClosed}
	bad101 := Expect{Status: 502, Backend: BackendWSClosed, After: AfterRouted,
		Absent: []string{"Upgrade", "Sec-Websocket-Accept", "Sec-Websocket-Protocol", "Sec-Websocket-Extensions"}}
	forbidden := Expect{Status: 403, Backend: BackendUntouched, After: AfterRouted}
	const body5 = "hello"

	atks := []Attack{
		// h2c smuggling (h2csmuggler's two forms, and variants).
		{ID: "h2c-settings", Name: "h2c: Connection: Upgrade, HTTP2-Settings", Group: "h2c", Reference: refH2C, Lines: h2cSettings, Expect: h2cStripped},
		{ID: "h2c-upgrade-only", Name: "h2c: Connection: Upgrade only", Group: "h2c", Reference: refH2C, Lines: h2cOnly, Expect: plain},
		{ID: "h2c-upper-case", Name: "h2c: upper case H2C / UPGRADE", Group: "h2c", Reference: refH2C, Lines: func(Env) []string {
			return []string{"Connection: UPGRADE", "Upgrade: H2C"}
		}, Expect: plain},
		{ID: "h2c-post-body", Name: "h2c: POST with body (curl --http2 -d)", Group: "h2c", Reference: refH2C, Method: "POST", Body: body5,
			Lines: func(e Env) []string {
				return append(h2cSettings(e), "Content-Length: 5", "Content-Type: text/plain")
			}, Expect: h2cStripped},
		{ID: "h2c-no-connection", Name: "h2c: Upgrade without Connection", Group: "h2c", Reference: refH2C, Lines: func(Env) []string {
			return []string{"Upgrade: h2c", "HTTP2-Settings: " + H2CSettings}
		}, Expect: plain},

		// WebSocket smuggling after 0ang3el.
		{ID: "ws-backend-426", Name: "ws smuggling: backend answers 426", Group: "ws smuggling", Reference: refWSSmuggle,
			Answer: AnswerRefuse426, Lines: ws(), Expect: Expect{Status: 426, Backend: BackendRefused, After: AfterRouted, Body: "refused"}},
		{ID: "ws-backend-200", Name: "ws smuggling: backend answers 200", Group: "ws smuggling", Reference: refWSSmuggle,
			Answer: AnswerRefuse200, Lines: ws(), Expect: Expect{Status: 200, Backend: BackendRefused, After: AfterRouted, Body: "refused"}},
		{ID: "ws-post-body", Name: "ws smuggling: upgrade on POST with body", Group: "ws smuggling", Reference: refBody,
			Method: "POST", Body: body5, Lines: ws("Content-Length: 5"), Expect: bad400},
		{ID: "ws-chunked-body", Name: "ws smuggling: upgrade on GET with chunked body", Group: "ws smuggling", Reference: refBody,
			Body: "5\r\nhello\r\n0\r\n\r\n", Lines: ws("Transfer-Encoding: chunked"), Expect: bad400},
		{ID: "ws-version-1337", Name: "ws smuggling: Sec-WebSocket-Version 1337", Group: "ws smuggling", Reference: refVersion,
			Lines: func(e Env) []string { return wsWithVersion(e.Key, "1337", true) },
			Expect: Expect{Status: 426, Backend: BackendUntouched, After: AfterRouted,
				Headers: map[string]string{"Sec-Websocket-Version": "13", "Upgrade": "websocket", "Connection": "Upgrade"}}},
		{ID: "ws-version-1337-no-connection", Name: "ws smuggling: Sec-WebSocket-Version 1337 without Connection", Group: "ws smuggling", Reference: refVersion,
			Lines: func(e Env) []string { return wsWithVersion(e.Key, "1337", false) }, Expect: plain},

		// Tricky Upgrade fields.
		{ID: "upgrade-two-lines", Name: "Upgrade: h2c and Upgrade: websocket on two lines", Group: "Upgrade field", Reference: refUpgradeLst,
			Lines: func(e Env) []string { return wsWithUpgrade(e.Key, "h2c", "websocket") }, Expect: early},
		{ID: "upgrade-ws-h2c", Name: "Upgrade: websocket, h2c", Group: "Upgrade field", Reference: refUpgradeLst,
			Lines: func(e Env) []string { return wsWithUpgrade(e.Key, "websocket, h2c") }, Expect: early},
		{ID: "upgrade-h2c-ws", Name: "Upgrade: h2c, websocket", Group: "Upgrade field", Reference: refUpgradeLst,
			Lines: func(e Env) []string { return wsWithUpgrade(e.Key, "h2c, websocket") }, Expect: early},
		{ID: "upgrade-folded", Name: "obsolete folded Upgrade line", Group: "Upgrade field", Reference: refFold,
			Lines: func(e Env) []string { return wsWithUpgrade(e.Key, "h2c\r\n websocket") }, Expect: bad400},
		{ID: "upgrade-quoted", Name: "non-token Upgrade: quoted", Group: "Upgrade field", Reference: refToken,
			Lines: func(e Env) []string { return wsWithUpgrade(e.Key, `"websocket"`) }, Expect: bad400},
		{ID: "upgrade-utf8", Name: "non-token Upgrade: UTF-8 look-alike", Group: "Upgrade field", Reference: refToken,
			Lines: func(e Env) []string { return wsWithUpgrade(e.Key, "web\u0455ocket") }, Expect: bad400},
		{ID: "upgrade-params", Name: "non-token Upgrade: parameters", Group: "Upgrade field", Reference: refToken,
			Lines: func(e Env) []string { return wsWithUpgrade(e.Key, "websocket;q=1") }, Expect: bad400},
		{ID: "upgrade-oversize-line", Name: "oversize Upgrade: 600 bytes in one line", Group: "Upgrade field", Reference: refToken,
			Lines: func(e Env) []string { return wsWithUpgrade(e.Key, "websocket, "+strings.Repeat("a", 589)) }, Expect: bad400},
		{ID: "upgrade-oversize-lines", Name: "oversize Upgrade: 3 lines of 200 bytes", Group: "Upgrade field", Reference: refToken,
			Lines: func(e Env) []string {
				return wsWithUpgrade(e.Key, "websocket, "+strings.Repeat("a", 189), strings.Repeat("b", 200), strings.Repeat("c", 200))
			}, Expect: bad400},
		{ID: "connection-names-key", Name: "Connection names Sec-WebSocket-Key (hop-by-hop)", Group: "Upgrade field", Reference: refHopByHop,
			Lines: ws("Connection: Sec-WebSocket-Key"), Expect: bad400},
		{ID: "http10-websocket", Name: "HTTP/1.0 WebSocket handshake", Group: "HTTP/1.0", Reference: refHTTP10,
			Proto: "HTTP/1.0", Lines: ws(), Expect: plainClosed},
		{ID: "http10-h2c", Name: "HTTP/1.0 h2c", Group: "HTTP/1.0", Reference: refHTTP10, Proto: "HTTP/1.0", Lines: h2cSettings, Expect: plainClosed},

		// The backend's 101 does not match the request.
		{ID: "backend-101-h2c", Name: "backend 101: Upgrade: h2c to a WebSocket", Group: "backend 101", Reference: refBad101,
			Answer: AnswerProto101, Lines: ws(), Expect: bad101},
		{ID: "backend-101-no-connection", Name: "backend 101: no Connection", Group: "backend 101", Reference: refBad101,
			Answer: AnswerNoConnection, Lines: ws(), Expect: bad101},
		{ID: "backend-101-wrong-accept", Name: "backend 101: wrong Accept", Group: "backend 101", Reference: refBad101,
			Answer: AnswerBadAccept101, Lines: ws(), Expect: bad101},
		{ID: "backend-101-no-accept", Name: "backend 101: missing Accept", Group: "backend 101", Reference: refBad101,
			Answer: AnswerNoAccept101, Lines: ws(), Expect: bad101},
		{ID: "backend-101-subprotocol", Name: "backend 101: unoffered subprotocol", Group: "backend 101", Reference: refBad101,
			Answer: AnswerSubprotocol101, Lines: ws("Sec-WebSocket-Protocol: chat"), Expect: bad101},
		{ID: "backend-101-extension", Name: "backend 101: unoffered extension", Group: "backend 101", Reference: refBad101,
			Answer: AnswerExtension101, Lines: ws("Sec-WebSocket-Extensions: permessage-deflate"), Expect: bad101},

		// Cross-site WebSocket hijacking: the allowed origin is Env.Origin.
		{ID: "cswsh-foreign", Name: "CSWSH: Origin https://evil.example", Group: "CSWSH", Reference: refCSWSH,
			Lines: wsOrigin(func(string) []string { return []string{EvilOrigin} }), Expect: forbidden},
		{ID: "cswsh-null", Name: "CSWSH: Origin null", Group: "CSWSH", Reference: refCSWSH,
			Lines: wsOrigin(func(string) []string { return []string{"null"} }), Expect: forbidden},
		{ID: "cswsh-look-alike", Name: "CSWSH: Origin <allowed>.evil.example", Group: "CSWSH", Reference: refCSWSH,
			Lines: wsOrigin(func(o string) []string { return []string{lookAlikeOrigin(o)} }), Expect: forbidden},
		{ID: "cswsh-scheme", Name: "CSWSH: allowed host, other scheme", Group: "CSWSH", Reference: refCSWSH,
			Lines: wsOrigin(func(o string) []string { return []string{otherSchemeOrigin(o)} }), Expect: forbidden},
		{ID: "cswsh-two-lines", Name: "CSWSH: two Origin lines, allowed first", Group: "CSWSH", Reference: refCSWSH,
			Lines: wsOrigin(func(o string) []string { return []string{o, EvilOrigin} }), Expect: forbidden},
		{ID: "cswsh-list", Name: "CSWSH: Origin list", Group: "CSWSH", Reference: refCSWSH,
			Lines: wsOrigin(func(o string) []string { return []string{o + ", " + EvilOrigin} }), Expect: forbidden},
		{ID: "cswsh-connection-origin", Name: "CSWSH: Connection names Origin", Group: "CSWSH", Reference: refHopByHop,
			Lines: ws("Connection: Origin", "Origin: "+EvilOrigin), Expect: bad400},

		// Client data in the same write as a valid handshake.
		{ID: "early-bytes", Name: "pipelined GET /flag in the handshake's write", Group: "early data", Reference: refEarly,
			Lines: ws(), Expect: early, EarlyData: true},

		// Beyond HTTP/1.x.
		{ID: "h2c-internal-path", Name: "h2c: HTTP/2 request for the internal path through the tunnel", Group: "h2c", Reference: refH2C,
			Kind: KindH2C, Lines: h2cSettings, Expect: Expect{Status: 200, Backend: BackendPlain, NoSettings: true}},
		{ID: "h2-connect-protocol", Name: "HTTP/2 extended CONNECT, disallowed :protocol", Group: "extended CONNECT", Reference: refXConnect2,
			Kind: KindHTTP2, Protocol: UnknownProtocol, Expect: Expect{Status: 501, Backend: BackendUntouched}},
		{ID: "h3-connect-protocol", Name: "HTTP/3 extended CONNECT, disallowed :protocol", Group: "extended CONNECT", Reference: refXConnect3,
			Kind: KindHTTP3, Protocol: UnknownProtocol, Expect: Expect{Status: 501, Backend: BackendUntouched}},
	}
	for i := range atks {
		if atks[i].Kind == "" {
			atks[i].Kind = KindHTTP1
		}
		if atks[i].Answer == "" {
			atks[i].Answer = AnswerNaive
		}
		if atks[i].Method == "" {
			atks[i].Method = "GET"
		}
		if atks[i].Proto == "" {
			atks[i].Proto = "HTTP/1.1"
		}
	}
	return atks
}
