package protocol

// FuzzCheck101 checks check101, the check of a backend's 101, against an
// oracle written from docs/behaviour.md §5 and RFC 6455 §4.2.2, not from
// the code.

import (
	"crypto/sha1"
	"encoding/base64"
	"strings"
	"testing"
)

// fzAcceptFor is RFC 6455 §4.2.2's Sec-WebSocket-Accept for key, computed
// here apart from AcceptKey, which the target uses.
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
	f.Add("websocket", true, wsSampleKey, "Upgrade", "websocket", AcceptKey("not the key"), "", "", "", "", false, true)
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
		reason := Check101(selected, websocket, req, res, checkAccept)

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
