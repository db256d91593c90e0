package protocol

import (
	"iter"
	"strconv"
	"strings"
)

// ListElements yields the elements of a comma-separated list field
// (RFC 9110 §5.6.1) given as its field lines: lines join in order, spaces
// and tabs around each element are removed, and empty elements are
// skipped. It does not validate the elements and knows nothing of quoted
// strings (like Go's httpguts and Caddy's reverse proxy, which read
// Connection and Upgrade the same way): it is for lists of tokens, and
// Sec-WebSocket-Extensions, whose parameters may be quoted, is split apart
// from it. It allocates nothing, so that the check of every request's
// Connection field costs no garbage.
func ListElements(lines []string) iter.Seq[string] {
	return func(yield func(string) bool) {
		for _, line := range lines {
			for elem := range strings.SplitSeq(line, ",") {
				if elem = trimOWS(elem); elem != "" && !yield(elem) {
					return
				}
			}
		}
	}
}

// quotedListElements splits lists whose elements may hold quoted strings
// (RFC 9110 §5.6.4), such as Sec-WebSocket-Extensions parameters: a comma
// inside double quotes does not split, and a backslash inside quotes
// escapes the next byte. An unterminated quote runs to the end of its line
// (each line is parsed on its own). Lines join, and elements are trimmed
// and skipped when empty, as with ListElements.
func quotedListElements(values []string) []string {
	var out []string
	add := func(elem string) {
		if elem = trimOWS(elem); elem != "" {
			out = append(out, elem)
		}
	}
	for _, line := range values {
		start, quoted := 0, false
		for i := 0; i < len(line); i++ {
			switch c := line[i]; {
			case quoted && c == '\\':
				i++ // quoted-pair: skip the escaped byte
			case c == '"':
				quoted = !quoted
			case !quoted && c == ',':
				add(line[start:i])
				start = i + 1
			}
		}
		add(line[start:])
	}
	return out
}

func trimOWS(s string) string { return strings.Trim(s, " \t") }

// IsToken reports whether s is an RFC 9110 token (1*tchar).
func IsToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

func isTchar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// logValueCap is where client-supplied values are cut in messages and logs,
// so a hostile header cannot flood them (docs/behaviour.md §7).
const logValueCap = 256

// QuoteForLog quotes a client-supplied value for messages and logs, cut at
// logValueCap (256) bytes.
func QuoteForLog(s string) string {
	if len(s) > logValueCap {
		s = s[:logValueCap] + "…"
	}
	return strconv.Quote(s)
}
