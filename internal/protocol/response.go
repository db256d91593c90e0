package protocol

import (
	"net/http"
	"strings"
)

// Check101 checks a backend's 101 (RFC 9110 §15.2.2, RFC 6455 §4.2.2) to
// an upgrade to selected, the one protocol the backend was asked for,
// against the request header that was forwarded to it; websocket adds the
// checks of CheckWebSocket101. checkAccept is false where Caddy made up
// the key itself (extended CONNECT) or the answer no longer carries the
// Accept. It returns "" when the answer passes, else the reason.
func Check101(selected string, websocket bool, forwarded, res http.Header, checkAccept bool) string {
	if !ConnectionHasToken(res, "upgrade") {
		return "101 without Connection: upgrade"
	}
	if got := res["Upgrade"]; len(got) != 1 || !strings.EqualFold(trimOWS(got[0]), selected) {
		return "101 switches to " + QuoteForLog(strings.Join(got, ", ")) + ", not " + QuoteForLog(selected)
	}
	if websocket {
		return CheckWebSocket101(forwarded, res, checkAccept)
	}
	return ""
}
