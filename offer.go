package upgrade

import (
	"errors"
	"net/http"
	"strings"
)

// Limits on what a client may offer (SPEC §2). Real clients offer one or two
// protocols; anything near these limits is an attack or a bug.
const (
	maxOfferedProtocols = 16
	maxUpgradeBytes     = 512
)

// protocol is one element of an Upgrade list: "name" or "name/version",
// kept as the client (or the operator) wrote it.
type protocol struct {
	name    string
	version string
}

func (p protocol) String() string {
	if p.version == "" {
		return p.name
	}
	return p.name + "/" + p.version
}

func (p protocol) isWebSocket() bool { return strings.EqualFold(p.name, "websocket") }

// parseProtocol parses `token ["/" token]` (RFC 9110 §7.8).
func parseProtocol(s string) (protocol, bool) {
	name, version, hasSlash := strings.Cut(s, "/")
	if !isToken(name) || (hasSlash && !isToken(version)) {
		return protocol{}, false
	}
	return protocol{name: name, version: version}, true
}

// offer is what a request asks to switch to, in the client's order of
// preference (SPEC §1).
type offer struct {
	protocols []protocol
	// extendedConnect marks an HTTP/2 or HTTP/3 CONNECT with :protocol
	// (RFC 8441, RFC 9220); protocols then holds that one bare token.
	extendedConnect bool
}

func (o offer) present() bool { return len(o.protocols) > 0 }

// errMalformedOffer wraps every reason parseOffer refuses a request; the
// handler answers them all with 400.
var errMalformedOffer = errors.New("malformed upgrade offer")

func malformed(reason string) error {
	return &offerError{reason: reason}
}

type offerError struct{ reason string }

func (e *offerError) Error() string { return "malformed upgrade offer: " + e.reason }
func (e *offerError) Unwrap() error { return errMalformedOffer }

// parseOffer reads the offer of r as SPEC §2 defines it. It returns an empty
// offer (present() == false) when r offers nothing, including a stray
// Upgrade header without "Connection: upgrade" and any Upgrade on HTTP/1.0.
// It reads r and never changes it.
func parseOffer(r *http.Request) (offer, error) {
	if r.ProtoMajor >= 2 {
		return parseExtendedConnect(r)
	}
	upgrade, ok := r.Header["Upgrade"]
	if !ok || r.ProtoMinor == 0 || !connectionHasToken(r.Header, "upgrade") {
		return offer{}, nil
	}
	if err := checkConnectionOptions(r.Header); err != nil {
		return offer{}, err
	}
	return parseUpgradeLines(upgrade)
}

// parseUpgradeLines parses the Upgrade field lines of an HTTP/1.1 request:
// lines join in order, empty list elements are skipped, and optional
// whitespace around elements is ignored (RFC 9110 §5.6.1).
func parseUpgradeLines(lines []string) (offer, error) {
	size := 0
	for _, line := range lines {
		size += len(line)
	}
	if size > maxUpgradeBytes {
		return offer{}, malformed("Upgrade header exceeds 512 bytes")
	}
	var o offer
	for elem := range headerElements(lines) {
		p, ok := parseProtocol(elem)
		if !ok {
			return offer{}, malformed("Upgrade element " + quoteForLog(elem) + " is not token[/token]")
		}
		if len(o.protocols) == maxOfferedProtocols {
			return offer{}, malformed("more than 16 protocols offered")
		}
		o.protocols = append(o.protocols, p)
	}
	return o, nil
}

// parseExtendedConnect reads the :protocol of an HTTP/2 or HTTP/3 request.
// Caddy exposes it as the pseudo-header ":protocol" on HTTP/2 and, through
// quic-go, as r.Proto on HTTP/3 (where r.Proto is otherwise "HTTP/3.0").
func parseExtendedConnect(r *http.Request) (offer, error) {
	var proto string
	var has bool
	if r.ProtoMajor == 2 {
		var values []string
		values, has = r.Header[":protocol"]
		if has {
			if len(values) != 1 {
				return offer{}, malformed("more than one :protocol")
			}
			proto = values[0]
		}
	} else if r.Method == http.MethodConnect && r.Proto != "HTTP/3.0" && r.Proto != "" {
		proto, has = r.Proto, true
	}
	if !has {
		return offer{}, nil
	}
	if r.Method != http.MethodConnect {
		return offer{}, malformed(":protocol on a " + r.Method + " request")
	}
	if !isToken(proto) {
		return offer{}, malformed(":protocol " + quoteForLog(proto) + " is not a token")
	}
	return offer{protocols: []protocol{{name: proto}}, extendedConnect: true}, nil
}

// connectionHasToken reports whether any Connection line lists opt
// (case-insensitively).
func connectionHasToken(h http.Header, opt string) bool {
	for elem := range headerElements(h["Connection"]) {
		if strings.EqualFold(elem, opt) {
			return true
		}
	}
	return false
}

// checkConnectionOptions refuses Connection options that would make a proxy
// drop a field the gateway relies on (RFC 9110 §7.6.1 lets a client name any
// field as hop-by-hop; naming Host, Origin or a Sec-WebSocket-* field is a
// way to smuggle a handshake past the checks).
func checkConnectionOptions(h http.Header) error {
	for elem := range headerElements(h["Connection"]) {
		name := http.CanonicalHeaderKey(elem)
		if name == "Host" || name == "Origin" || strings.HasPrefix(name, "Sec-Websocket-") {
			return malformed("Connection names the protected field " + quoteForLog(name))
		}
	}
	return nil
}

// removeConnectionOptions deletes every field named by a Connection option
// (RFC 9110 §7.6.1) and the Connection header itself.
func removeConnectionOptions(h http.Header) {
	for name := range headerElements(h["Connection"]) {
		h.Del(name)
	}
	delete(h, "Connection")
}
