package protocol

import (
	"net/http"
	"strings"
)

// RemoveStrayUpgrade drops upgrade headers that are not an offer
// (docs/behaviour.md §2: Upgrade without "Connection: upgrade", or on
// HTTP/1.0), so that nothing downstream mistakes them for one. HTTP/2 and
// HTTP/3 forbid both fields (RFC 9113 §8.2.2), so there they go entirely.
func RemoveStrayUpgrade(r *http.Request) {
	_, hasUpgrade := r.Header["Upgrade"]
	_, hasConnection := r.Header["Connection"]
	if !hasUpgrade && !hasConnection {
		return
	}
	delete(r.Header, "Upgrade")
	if r.ProtoMajor >= 2 {
		delete(r.Header, "Connection")
		return
	}
	if ConnectionHasToken(r.Header, "upgrade") {
		RemoveConnectionToken(r.Header, "upgrade")
	}
}

// RemoveConnectionToken rewrites the Connection field without the option
// opt (compared case-insensitively), and deletes a field left empty.
func RemoveConnectionToken(h http.Header, opt string) {
	var kept []string
	for elem := range ListElements(h["Connection"]) {
		if !strings.EqualFold(elem, opt) {
			kept = append(kept, elem)
		}
	}
	if len(kept) == 0 {
		delete(h, "Connection")
		return
	}
	h["Connection"] = []string{strings.Join(kept, ", ")}
}

// StripOffer turns an offer of nothing allowed into a plain request
// (docs/behaviour.md §3, on_disallowed: ignore): Upgrade, HTTP2-Settings and
// every field the client named in Connection go, with Connection itself.
func StripOffer(h http.Header) {
	removeConnectionOptions(h)
	delete(h, "Upgrade")
	delete(h, "Http2-Settings")
}

// RewriteAccepted reduces an accepted offer to the selected protocol
// (docs/behaviour.md §5), and the WebSocket subprotocols to those allowed, when
// subprotocols is not nil. Caddy's reverse proxy forwards only the first Upgrade line
// and rejects a 101 naming anything else, so exactly one protocol goes on.
func RewriteAccepted(r *http.Request, o Offer, v Verdict, subprotocols []string) {
	if o.ExtendedConnect {
		name := strings.ToLower(v.Entry.Name)
		if r.ProtoMajor == 2 {
			r.Header[":protocol"] = []string{name}
		} else {
			r.Proto = name
		}
	} else {
		removeConnectionOptions(r.Header)
		r.Header["Connection"] = []string{"Upgrade"}
		r.Header["Upgrade"] = []string{v.Selected.String()}
	}
	if subprotocols != nil && v.Entry.IsWebSocket() {
		filterSubprotocolHeader(r.Header, subprotocols)
	}
}

// ForwardedProtocol is the protocol the backend is asked for, which its
// 101 must name: the selected one as written on HTTP/1.1; on extended
// CONNECT the configured name, which Caddy's reverse proxy turns into an
// HTTP/1.1 upgrade.
func ForwardedProtocol(o Offer, v Verdict) string {
	if o.ExtendedConnect {
		return strings.ToLower(v.Entry.Name)
	}
	return v.Selected.String()
}
