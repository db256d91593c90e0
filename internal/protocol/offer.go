package protocol

import (
	"errors"
	"net/http"
	"strings"
)

// Limits on what a client may offer (docs/behaviour.md §2). Real clients
// offer one or two protocols; anything near these limits is an attack or a
// bug.
const (
	maxOfferedProtocols = 16
	maxUpgradeBytes     = 512
)

// Protocol is one element of an Upgrade list, "name" or "name/version", or
// an entry of a route's allowed list, kept as the client (or the operator)
// wrote it.
type Protocol struct {
	Name    string
	Version string
}

// String is the protocol as written: "name" or "name/version".
func (p Protocol) String() string {
	if p.Version == "" {
		return p.Name
	}
	return p.Name + "/" + p.Version
}

// IsWebSocket reports whether p names WebSocket (RFC 6455 §4.1: the name
// compares case-insensitively).
func (p Protocol) IsWebSocket() bool { return strings.EqualFold(p.Name, "websocket") }

// Matches reports whether the allowed entry e admits the offered protocol:
// names compare case-insensitively; an entry without a version admits any
// version or none, an entry with one admits exactly that version. An
// extended CONNECT offer has no version, so only bare entries match it.
func (e Protocol) Matches(offered Protocol) bool {
	return strings.EqualFold(e.Name, offered.Name) && (e.Version == "" || e.Version == offered.Version)
}

// ParseProtocol parses `token ["/" token]` (RFC 9110 §7.8).
func ParseProtocol(s string) (Protocol, bool) {
	name, version, hasSlash := strings.Cut(s, "/")
	if !IsToken(name) || (hasSlash && !IsToken(version)) {
		return Protocol{}, false
	}
	return Protocol{Name: name, Version: version}, true
}

// Offer is what a request asks to switch to, in the client's order of
// preference (docs/behaviour.md §1).
type Offer struct {
	Protocols []Protocol
	// ExtendedConnect marks an HTTP/2 or HTTP/3 CONNECT with :protocol
	// (RFC 8441, RFC 9220); Protocols then holds that one bare token.
	ExtendedConnect bool
}

// Present reports whether the request offers anything.
func (o Offer) Present() bool { return len(o.Protocols) > 0 }

// ErrMalformedOffer is wrapped by every error of ParseOffer: the handler
// answers them all with 400.
var ErrMalformedOffer = errors.New("malformed upgrade offer")

func malformed(reason string) error {
	return &offerError{reason: reason}
}

type offerError struct{ reason string }

func (e *offerError) Error() string { return "malformed upgrade offer: " + e.reason }
func (e *offerError) Unwrap() error { return ErrMalformedOffer }

// ParseOffer reads the offer of r as docs/behaviour.md §2 defines it. It
// returns an empty offer (Present() == false) when r offers nothing,
// including a stray Upgrade header without "Connection: upgrade" and any
// Upgrade on HTTP/1.0. It reads r and never changes it.
func ParseOffer(r *http.Request) (Offer, error) {
	if r.ProtoMajor >= 2 {
		return parseExtendedConnect(r)
	}
	upgrade, ok := r.Header["Upgrade"]
	if !ok || r.ProtoMinor == 0 || !ConnectionHasToken(r.Header, "upgrade") {
		return Offer{}, nil
	}
	if err := checkConnectionOptions(r.Header); err != nil {
		return Offer{}, err
	}
	return parseUpgradeLines(upgrade)
}

// parseUpgradeLines parses the Upgrade field lines of an HTTP/1.1 request:
// lines join in order, empty list elements are skipped, and optional
// whitespace around elements is ignored (RFC 9110 §5.6.1).
func parseUpgradeLines(lines []string) (Offer, error) {
	size := 0
	for _, line := range lines {
		size += len(line)
	}
	if size > maxUpgradeBytes {
		return Offer{}, malformed("Upgrade header exceeds 512 bytes")
	}
	var o Offer
	for elem := range ListElements(lines) {
		p, ok := ParseProtocol(elem)
		if !ok {
			return Offer{}, malformed("Upgrade element " + QuoteForLog(elem) + " is not token[/token]")
		}
		if len(o.Protocols) == maxOfferedProtocols {
			return Offer{}, malformed("more than 16 protocols offered")
		}
		o.Protocols = append(o.Protocols, p)
	}
	return o, nil
}

// parseExtendedConnect reads the :protocol of an HTTP/2 or HTTP/3 request.
// Caddy exposes it as the pseudo-header ":protocol" on HTTP/2 and, through
// quic-go, as r.Proto on HTTP/3 (where r.Proto is otherwise "HTTP/3.0").
func parseExtendedConnect(r *http.Request) (Offer, error) {
	var proto string
	var has bool
	if r.ProtoMajor == 2 {
		var values []string
		values, has = r.Header[":protocol"]
		if has {
			if len(values) != 1 {
				return Offer{}, malformed("more than one :protocol")
			}
			proto = values[0]
		}
	} else if r.Method == http.MethodConnect && r.Proto != "HTTP/3.0" && r.Proto != "" {
		proto, has = r.Proto, true
	}
	if !has {
		return Offer{}, nil
	}
	if r.Method != http.MethodConnect {
		return Offer{}, malformed(":protocol on a " + r.Method + " request")
	}
	if !IsToken(proto) {
		return Offer{}, malformed(":protocol " + QuoteForLog(proto) + " is not a token")
	}
	return Offer{Protocols: []Protocol{{Name: proto}}, ExtendedConnect: true}, nil
}

// ConnectionHasToken reports whether any Connection line lists opt
// (case-insensitively).
func ConnectionHasToken(h http.Header, opt string) bool {
	for elem := range ListElements(h["Connection"]) {
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
	for elem := range ListElements(h["Connection"]) {
		name := http.CanonicalHeaderKey(elem)
		if name == "Host" || name == "Origin" || strings.HasPrefix(name, "Sec-Websocket-") {
			return malformed("Connection names the protected field " + QuoteForLog(name))
		}
	}
	return nil
}

// removeConnectionOptions deletes every field named by a Connection option
// (RFC 9110 §7.6.1) and the Connection header itself.
func removeConnectionOptions(h http.Header) {
	for name := range ListElements(h["Connection"]) {
		h.Del(name)
	}
	delete(h, "Connection")
}
