package protocol

// The pieces of the fuzz targets' oracles that several targets share,
// written from docs/behaviour.md and the RFCs, not from the code, so that
// a fault in the code cannot hide in its own oracle. Multi-line header
// inputs are one string with "\n" between field lines; "" means the field
// is absent.

import (
	"net/http"
	"strings"
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
		accepts = AcceptKey(strings.Trim(req["Sec-Websocket-Key"][0], " \t"))
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
