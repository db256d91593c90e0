package protocol

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// The Origin rules of docs/behaviour.md §4 (websocket.origins and
// require_origin).
//
// Placeholders. An origins entry may hold Caddy placeholders, e.g.
// same-origin "{http.request.scheme}://{http.request.hostport}". Such an
// entry can only be parsed per request:
//
//   - at Validate, call ValidateOriginEntry on each entry (it parses entries
//     without placeholders fully, and checks the literal text of the others);
//   - at Provision, NewOriginList parses the entries without placeholders
//     once (originPatternHasPlaceholders tells them apart) and keeps the
//     others as strings;
//   - per request, OriginList.Check expands the kept strings with the
//     request's replacer (e.g. repl.ReplaceAll(s, "")), calls
//     parseOriginPattern on each result and matches. An entry that does not
//     parse after expansion matches nothing for that request.
//
// Code that builds its own pattern slice per request must not hand an empty
// slice to checkOrigin when a list is configured: an empty slice means "no
// origins list", where any single well-formed Origin passes.

// origin is a normalized RFC 6454 tuple origin.
type origin struct {
	scheme string // lower-case
	host   string // lower-case ASCII (IDNs in punycode), or a bracketed IPv6 literal
	port   string // decimal without leading zeros; "" if absent or the scheme's default
}

// String serializes o as RFC 6454 does: scheme "://" host [ ":" port ].
func (o origin) String() string {
	if o.port == "" {
		return o.scheme + "://" + o.host
	}
	return o.scheme + "://" + o.host + ":" + o.port
}

// originPattern is one parsed websocket.origins entry.
type originPattern struct {
	scheme   string // as in origin
	host     string // as in origin; for a wildcard, the part after "*."
	port     string // as in origin
	wildcard bool   // the entry's first label was "*"
}

// String returns the normalized entry.
func (p originPattern) String() string {
	o := origin{scheme: p.scheme, host: p.host, port: p.port}
	if p.wildcard {
		o.host = "*." + p.host
	}
	return o.String()
}

// parseOriginPattern parses one websocket.origins entry with any
// placeholders already replaced: `scheme://host[:port]`, where host may
// start with the whole label "*" ("https://*.example.com"). Scheme and host
// are normalized as for a request's Origin (lower case, IDN to punycode,
// default port dropped), so "https://Good.Example:443" and
// "https://good.example" are the same entry. It refuses an empty entry,
// "null" (it would match nothing), a missing scheme, userinfo, a path (a lone
// trailing "/" counts as a path: an origin has none, and accepting it would
// suggest paths are compared), a query or fragment, a bad port, and a "*"
// anywhere but as the whole first label of a name with at least one more
// label.
func parseOriginPattern(s string) (originPattern, error) {
	o, wildcard, err := parseOriginString(s, true)
	if err != nil {
		return originPattern{}, err
	}
	return originPattern{scheme: o.scheme, host: o.host, port: o.port, wildcard: wildcard}, nil
}

// originPatternHasPlaceholders reports whether an origins entry holds a Caddy
// placeholder and so must be expanded and parsed per request.
func originPatternHasPlaceholders(s string) bool {
	return strings.Contains(s, "{")
}

// ValidateOriginEntry is the Validate check of one origins entry. An entry
// without placeholders must parse. For an entry with placeholders only the
// literal text around them can be checked: balanced braces, and no userinfo
// ("@"), query ("?"), fragment ("#") or path (a "/" other than those of
// "://"). "null" is refused by parsing.
func ValidateOriginEntry(s string) error {
	if !originPatternHasPlaceholders(s) {
		_, err := parseOriginPattern(s)
		return err
	}
	var lit strings.Builder
	depth := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '{':
			if depth > 0 {
				return errors.New("nested '{' in " + QuoteForLog(s))
			}
			depth++
		case c == '}':
			if depth == 0 {
				return errors.New("unbalanced '}' in " + QuoteForLog(s))
			}
			depth--
		case depth == 0:
			lit.WriteByte(c)
		}
	}
	if depth != 0 {
		return errors.New("unbalanced '{' in " + QuoteForLog(s))
	}
	rest := strings.Replace(lit.String(), "://", "", 1)
	if i := strings.IndexAny(rest, "/?#@"); i >= 0 {
		return errors.New("origin " + QuoteForLog(s) + " has " + originPartName(rest[i]) + ": an origin is scheme://host[:port]")
	}
	return nil
}

// normalizeOrigin parses the value of a request's Origin header. It must be
// exactly one serialized origin `scheme://host[:port]` (RFC 6454 §6.2).
// "null" (an opaque origin), a list (a space or comma), an empty value and
// anything unparsable give ok == false: such an Origin matches nothing.
// Uppercase, an IDN host in Unicode and an explicit default port are
// accepted and normalized, as for entries.
func normalizeOrigin(v string) (o origin, ok bool) {
	if strings.ContainsAny(v, " \t,") {
		return origin{}, false
	}
	o, _, err := parseOriginString(v, false)
	return o, err == nil
}

// match reports whether a normalized Origin matches the entry: same scheme,
// same port (after default-port dropping, so for a scheme without a known
// default an entry without a port matches only an Origin without one), and
// the same host; for "*.example.com", a host of exactly one more label
// ("a.example.com", not "example.com" nor "a.b.example.com").
func (p originPattern) match(o origin) bool {
	if p.scheme != o.scheme || p.port != o.port {
		return false
	}
	if !p.wildcard {
		return p.host == o.host
	}
	label, ok := strings.CutSuffix(o.host, "."+p.host)
	return ok && label != "" && !strings.Contains(label, ".")
}

// checkOrigin applies docs/behaviour.md §4 to a request's Origin lines
// (r.Header["Origin"]) and is meant to be called only when websocket.origins
// or require_origin is set. No Origin passes unless requireOrigin. Several
// lines, a list, an empty or unparsable value and "null" are refused.
// Otherwise the origin must match one of patterns; if patterns is empty
// (require_origin without origins) any single well-formed origin passes, but
// "null" is still refused, as it "matches nothing".
func checkOrigin(values []string, patterns []originPattern, requireOrigin bool) (ok bool, reason string) {
	return checkOriginAgainst(values, patterns, len(patterns) > 0, requireOrigin)
}

// checkOriginAgainst is checkOrigin where restricted says whether an origins
// list is configured, so that a list with no usable entry matches nothing.
func checkOriginAgainst(values []string, patterns []originPattern, restricted, requireOrigin bool) (ok bool, reason string) {
	switch {
	case len(values) == 0:
		if requireOrigin {
			return false, "missing Origin"
		}
		return true, ""
	case len(values) > 1:
		return false, "several Origin lines"
	}
	v := values[0]
	if v == "null" {
		return false, "Origin null matches nothing"
	}
	o, ok := normalizeOrigin(v)
	if !ok {
		return false, "malformed Origin " + QuoteForLog(v)
	}
	if !restricted {
		return true, ""
	}
	for _, p := range patterns {
		if p.match(o) {
			return true, ""
		}
	}
	return false, "Origin " + QuoteForLog(v) + " is not allowed"
}

// OriginList is a websocket.origins setting ready for per-request use.
type OriginList struct {
	fixed   []originPattern // entries without placeholders, parsed once
	dynamic []string        // entries with placeholders, parsed per request
}

// NewOriginList parses the entries without placeholders and keeps the
// others for Check. It fails on the first entry ValidateOriginEntry refuses.
func NewOriginList(entries []string) (OriginList, error) {
	var l OriginList
	for _, s := range entries {
		if err := ValidateOriginEntry(s); err != nil {
			return OriginList{}, err
		}
		if originPatternHasPlaceholders(s) {
			l.dynamic = append(l.dynamic, s)
			continue
		}
		p, _ := parseOriginPattern(s) // validated above
		l.fixed = append(l.fixed, p)
	}
	return l, nil
}

// Check applies docs/behaviour.md §4 to a request's Origin lines
// (r.Header["Origin"]); call it only when websocket.origins or require_origin
// is set. No Origin passes unless requireOrigin. Several lines, a list, an
// empty or unparsable value and "null" are refused. Otherwise the origin must
// match an entry; with no entries at all (require_origin alone) any single
// well-formed origin passes. It returns the reason for a refusal.
//
// replace expands an entry's placeholders (e.g. func(s string) string {
// return repl.ReplaceAll(s, "") }). An expanded entry that does not parse
// matches nothing, and a list whose entries all fail to expand matches no
// origin. Expanded values are taken as they parse: a request-derived
// value (the Host header) could even make an entry a wildcard, but only a
// client that chooses its own Host, and such a client chooses its Origin
// too; browsers, the clients the Origin check is for, cannot.
func (l OriginList) Check(values []string, replace func(string) string, requireOrigin bool) (ok bool, reason string) {
	patterns := l.fixed
	if len(l.dynamic) > 0 && len(values) == 1 {
		patterns = append(patterns[:len(patterns):len(patterns)], l.expand(replace)...)
	}
	return checkOriginAgainst(values, patterns, len(l.fixed)+len(l.dynamic) > 0, requireOrigin)
}

// expand parses the placeholder entries for one request, skipping those
// that do not parse.
func (l OriginList) expand(replace func(string) string) []originPattern {
	var out []originPattern
	for _, s := range l.dynamic {
		if p, err := parseOriginPattern(replace(s)); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// originIDNA maps a host to ASCII as browsers do (WHATWG URL "domain to
// ASCII": UTS #46 non-transitional, CheckBidi and CheckJoiners on,
// CheckHyphens and UseSTD3ASCIIRules off, no DNS length check).
var originIDNA = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.Transitional(false),
	idna.StrictDomainName(false),
	idna.CheckHyphens(false),
)

// parseOriginString parses `scheme://host[:port]` into a normalized origin;
// wildcard reports a leading "*." label, allowed only with allowWildcard.
func parseOriginString(s string, allowWildcard bool) (o origin, wildcard bool, err error) {
	switch s {
	case "":
		return origin{}, false, errors.New("empty origin")
	case "null":
		return origin{}, false, errors.New(`origin "null" matches nothing`)
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return origin{}, false, errors.New("origin " + QuoteForLog(s) + " is not scheme://host[:port]")
	}
	if !validScheme(scheme) {
		return origin{}, false, errors.New("origin " + QuoteForLog(s) + " has an invalid scheme")
	}
	o.scheme = strings.ToLower(scheme)
	if i := strings.IndexAny(rest, "/?#@"); i >= 0 {
		return origin{}, false, errors.New("origin " + QuoteForLog(s) + " has " + originPartName(rest[i]) + ": an origin is scheme://host[:port]")
	}

	host, port, hasPort := rest, "", false
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return origin{}, false, errors.New("origin " + QuoteForLog(s) + " has an unterminated IPv6 literal")
		}
		host = rest[:end+1]
		if after := rest[end+1:]; after != "" {
			if after[0] != ':' {
				return origin{}, false, errors.New("origin " + QuoteForLog(s) + " has text after its IPv6 literal")
			}
			port, hasPort = after[1:], true
		}
	} else if i := strings.LastIndexByte(rest, ':'); i >= 0 {
		host, port, hasPort = rest[:i], rest[i+1:], true
	}

	if hasPort {
		if o.port, err = normalizePort(port); err != nil {
			return origin{}, false, errors.New("origin " + QuoteForLog(s) + ": " + err.Error())
		}
		if o.port == defaultPort(o.scheme) {
			o.port = ""
		}
	}
	if o.host, wildcard, err = normalizeOriginHost(host, allowWildcard); err != nil {
		return origin{}, false, errors.New("origin " + QuoteForLog(s) + ": " + err.Error())
	}
	return o, wildcard, nil
}

// originPartName names what the byte c introduces after "scheme://".
func originPartName(c byte) string {
	switch c {
	case '/':
		return "a path"
	case '?':
		return "a query"
	case '#':
		return "a fragment"
	default:
		return "userinfo"
	}
}

// validScheme reports whether s is an RFC 3986 scheme:
// ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
func validScheme(s string) bool {
	if s == "" || !isASCIILetter(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !isASCIILetter(c) && !('0' <= c && c <= '9') && c != '+' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

func isASCIILetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

// defaultPort is the port an origin of scheme omits, or "" if unknown.
func defaultPort(scheme string) string {
	switch scheme {
	case "http", "ws":
		return "80"
	case "https", "wss":
		return "443"
	}
	return ""
}

// normalizePort checks a decimal port (0-65535) and drops leading zeros.
func normalizePort(p string) (string, error) {
	if p == "" {
		return "", errors.New("empty port")
	}
	for i := 0; i < len(p); i++ {
		if p[i] < '0' || p[i] > '9' {
			return "", errors.New("port is not a number")
		}
	}
	p = strings.TrimLeft(p, "0")
	if p == "" {
		return "0", nil
	}
	if n, err := strconv.Atoi(p); err != nil || len(p) > 5 || n > 65535 {
		return "", errors.New("port out of range")
	}
	return p, nil
}

// normalizeOriginHost lower-cases a host and maps an IDN to punycode. A
// bracketed IPv6 literal is put in canonical form (RFC 5952; zones are
// refused). With allowWildcard, a leading "*." is cut off and reported. The
// result holds only a-z, 0-9, '-', '_' and '.', with no empty label but an
// optional trailing root dot: stricter than browsers, which allow a few more
// symbols in hosts that no DNS name uses.
func normalizeOriginHost(host string, allowWildcard bool) (string, bool, error) {
	if host == "" {
		return "", false, errors.New("missing host")
	}
	if host[0] == '[' {
		a, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !a.Is6() || a.Zone() != "" {
			return "", false, errors.New("invalid IPv6 literal")
		}
		return "[" + a.String() + "]", false, nil
	}
	wildcard := false
	if allowWildcard {
		host, wildcard = strings.CutPrefix(host, "*.")
	}
	if strings.Contains(host, "*") {
		return "", false, errors.New(`"*" may only be the whole first label, followed by a domain`)
	}
	if !utf8.ValidString(host) {
		return "", false, errors.New("host name is not UTF-8")
	}
	ascii, err := originIDNA.ToASCII(host)
	if err != nil {
		return "", false, errors.New("invalid host name")
	}
	labels := strings.Split(strings.TrimSuffix(ascii, "."), ".")
	for _, l := range labels {
		if l == "" {
			return "", false, errors.New("empty label in host name")
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !('a' <= c && c <= 'z') && !('0' <= c && c <= '9') && c != '-' && c != '_' {
				return "", false, errors.New("invalid character in host name")
			}
		}
	}
	if wildcard && isNumericLabel(labels[len(labels)-1]) {
		// A name ending in a number is an IPv4 address to a browser; a
		// wildcard over one makes no sense.
		return "", false, errors.New(`"*." cannot precede an IP address`)
	}
	return ascii, wildcard, nil
}

// isNumericLabel reports whether a label is a number (decimal or 0x hex), so
// that a host ending in it parses as IPv4 in a browser (WHATWG URL).
func isNumericLabel(l string) bool {
	if h, ok := strings.CutPrefix(l, "0x"); ok {
		l = h
		for i := 0; i < len(l); i++ {
			if !strings.ContainsRune("0123456789abcdef", rune(l[i])) {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(l); i++ {
		if l[i] < '0' || l[i] > '9' {
			return false
		}
	}
	return l != ""
}
