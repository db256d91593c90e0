package protocol

import (
	"crypto/sha1"
	"encoding/base64"
	"net/http"
	"strings"
)

// The WebSocket handshake rules of RFC 6455 §4 (docs/behaviour.md §4, §5),
// over header maps.

// websocketGUID is the fixed string of RFC 6455 §1.3 appended to the key.
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// CheckWebSocketRequest applies the request checks of RFC 6455 §4.2.1 to a
// handshake whose protocol has already been selected, in docs/behaviour.md §3
// order: the method, then the key (HTTP/1.1 only), then
// Sec-WebSocket-Version. It returns 0 and "" when the request passes, else
// the status to answer (400, or 426 for a well-formed but unsupported
// version) and a short reason.
//
// With extendedConnect (RFC 8441 / RFC 9220) there is no method or key rule:
// the method is CONNECT and Sec-WebSocket-Key is not used, so it is not
// looked at. The Version rule is the same. On HTTP/2 and HTTP/3 the caller
// answers 400 instead of 426 (docs/behaviour.md §3); the 426 reply carries
// "Sec-WebSocket-Version: 13" either way.
//
// Leading and trailing spaces and tabs are ignored in both values (Go's
// server has already removed them from the wire). The key must be the
// canonical base64 (standard alphabet, padded) of exactly 16 bytes.
func CheckWebSocketRequest(method string, h http.Header, extendedConnect bool) (status int, reason string) {
	if !extendedConnect {
		if method != http.MethodGet {
			return http.StatusBadRequest, "WebSocket handshake method must be GET, not " + QuoteForLog(method)
		}
		keys := wsValues(h, "Sec-WebSocket-Key")
		switch {
		case len(keys) == 0:
			return http.StatusBadRequest, "missing Sec-WebSocket-Key"
		case len(keys) > 1:
			return http.StatusBadRequest, "duplicate Sec-WebSocket-Key"
		case !validWebSocketKey(trimOWS(keys[0])):
			return http.StatusBadRequest, "Sec-WebSocket-Key is not base64 of 16 bytes"
		}
	}
	versions := wsValues(h, "Sec-WebSocket-Version")
	switch {
	case len(versions) == 0:
		return http.StatusBadRequest, "missing Sec-WebSocket-Version"
	case len(versions) > 1:
		return http.StatusBadRequest, "duplicate Sec-WebSocket-Version"
	}
	if v := trimOWS(versions[0]); v != "13" {
		return http.StatusUpgradeRequired, "unsupported Sec-WebSocket-Version " + QuoteForLog(v) + " (13 required)"
	}
	return 0, ""
}

// validWebSocketKey reports whether key is the base64 encoding of 16 bytes,
// in canonical form: 24 characters, "==" padding, zero pad bits, no line
// breaks (which encoding/base64 would otherwise skip).
func validWebSocketKey(key string) bool {
	if len(key) != 24 || strings.ContainsAny(key, "\r\n") {
		return false
	}
	b, err := base64.StdEncoding.Strict().DecodeString(key)
	return err == nil && len(b) == 16
}

// AcceptKey computes Sec-WebSocket-Accept for a Sec-WebSocket-Key value
// (RFC 6455 §4.2.2): base64(SHA-1(key + GUID)). The key is used as sent,
// without decoding; the caller trims surrounding whitespace.
func AcceptKey(key string) string {
	sum := sha1.Sum([]byte(key + websocketGUID))
	return base64.StdEncoding.EncodeToString(sum[:])
}

// filterSubprotocols keeps the offered Sec-WebSocket-Protocol values (field
// lines, each a comma-separated list, joined in order) that appear in
// allowed, compared exactly, in the client's order. It returns nil when
// nothing is left, and the caller then removes the header
// (docs/behaviour.md §4).
func filterSubprotocols(offered []string, allowed []string) []string {
	var kept []string
	for p := range ListElements(offered) {
		for _, a := range allowed {
			if p == a {
				kept = append(kept, p)
				break
			}
		}
	}
	return kept
}

// extensionName returns the extension token of one Sec-WebSocket-Extensions
// element (RFC 6455 §9.1), the part before its first ";", trimmed and
// lower-cased, or "" if that is not a token.
func extensionName(elem string) string {
	name, _, _ := strings.Cut(elem, ";")
	name = trimOWS(name)
	if !IsToken(name) {
		return ""
	}
	return strings.ToLower(name)
}

// filterSubprotocolHeader keeps only allowed subprotocols, in client order
// (docs/behaviour.md §4), and drops the field when none is left.
func filterSubprotocolHeader(h http.Header, allowed []string) {
	offered, ok := h["Sec-Websocket-Protocol"]
	if !ok {
		return
	}
	kept := filterSubprotocols(offered, allowed)
	if len(kept) == 0 {
		delete(h, "Sec-Websocket-Protocol")
		return
	}
	h["Sec-Websocket-Protocol"] = []string{strings.Join(kept, ", ")}
}

// OffersOnlyOtherSubprotocols reports whether a handshake offers
// subprotocols (Sec-WebSocket-Protocol) and none of them is in allowed.
func OffersOnlyOtherSubprotocols(h http.Header, allowed []string) bool {
	offered := h["Sec-Websocket-Protocol"]
	if len(filterSubprotocols(offered, allowed)) > 0 {
		return false
	}
	for range ListElements(offered) {
		return true
	}
	return false
}

// CheckWebSocket101 checks a backend's 101 to a WebSocket handshake against
// the request that was forwarded to it (docs/behaviour.md §5); it returns ""
// when the response is acceptable, else the reason for the 502. reqHeader
// must be the header as sent to the backend (after RewriteAccepted), so that
// "a subprotocol that was forwarded" is what reqHeader lists.
//
//   - checkAccept (HTTP/1.1 towards the backend): exactly one
//     Sec-WebSocket-Accept, equal to AcceptKey of the request's single
//     Sec-WebSocket-Key (both trimmed of spaces and tabs).
//   - Sec-WebSocket-Protocol: absent, or one line holding one value that is
//     one of the request's offered subprotocols (compared exactly); if the
//     request offered none the response must have none.
//   - Sec-WebSocket-Extensions: every extension token in the response (the
//     part of each list element before ";", compared case-insensitively)
//     must be one the request offered; parameters may differ (RFC 7692).
//     Lists are split with quoted-string awareness.
//
// Connection and Upgrade are not looked at here.
func CheckWebSocket101(reqHeader, resHeader http.Header, checkAccept bool) (reason string) {
	if checkAccept {
		keys := wsValues(reqHeader, "Sec-WebSocket-Key")
		if len(keys) != 1 {
			return "request has no single Sec-WebSocket-Key to check the Accept against"
		}
		accepts := wsValues(resHeader, "Sec-WebSocket-Accept")
		switch {
		case len(accepts) == 0:
			return "missing Sec-WebSocket-Accept"
		case len(accepts) > 1:
			return "duplicate Sec-WebSocket-Accept"
		case trimOWS(accepts[0]) != AcceptKey(trimOWS(keys[0])):
			return "wrong Sec-WebSocket-Accept " + QuoteForLog(accepts[0])
		}
	}

	if protos := wsValues(resHeader, "Sec-WebSocket-Protocol"); len(protos) > 0 {
		if len(protos) > 1 {
			return "duplicate Sec-WebSocket-Protocol"
		}
		p := trimOWS(protos[0])
		if p == "" || strings.Contains(p, ",") {
			return "Sec-WebSocket-Protocol " + QuoteForLog(protos[0]) + " is not one subprotocol"
		}
		offered := false
		for o := range ListElements(wsValues(reqHeader, "Sec-WebSocket-Protocol")) {
			if o == p {
				offered = true
				break
			}
		}
		if !offered {
			return "Sec-WebSocket-Protocol " + QuoteForLog(p) + " was not offered"
		}
	}

	if exts := wsValues(resHeader, "Sec-WebSocket-Extensions"); len(exts) > 0 {
		offered := map[string]bool{}
		for _, elem := range quotedListElements(wsValues(reqHeader, "Sec-WebSocket-Extensions")) {
			if name := extensionName(elem); name != "" {
				offered[name] = true
			}
		}
		for _, elem := range quotedListElements(exts) {
			if !offered[extensionName(elem)] { // "" is never offered
				return "Sec-WebSocket-Extensions " + QuoteForLog(elem) + " was not offered"
			}
		}
	}
	return ""
}

// wsValues reads a Sec-WebSocket-* field under either spelling: Go's
// canonical one and RFC 6455's, which Caddy's reverse proxy uses when it
// re-keys the fields of a handshake it forwards.
func wsValues(h http.Header, name string) []string {
	canonical := http.CanonicalHeaderKey(name)
	v := h[canonical]
	if rfc := h[name]; len(rfc) > 0 && name != canonical {
		v = append(v[:len(v):len(v)], rfc...)
	}
	return v
}
