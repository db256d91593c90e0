package upgrade

import (
	"net/http"
	"strings"
)

// outcome is what the handler did with a request; its name is the value of
// the {http.upgrade.outcome} placeholder and the outcome metric label
// (SPEC §7).
type outcome uint8

const (
	outcomeNone outcome = iota
	outcomeAccepted
	outcomeIgnored
	outcomeRejected
	outcomeRequired
	outcomeInvalid
	outcomeUnsupported
	outcomeLimited
	outcomeBackendInvalid
)

var outcomeNames = [...]string{
	outcomeNone:           "none",
	outcomeAccepted:       "accepted",
	outcomeIgnored:        "ignored",
	outcomeRejected:       "rejected",
	outcomeRequired:       "required",
	outcomeInvalid:        "invalid",
	outcomeUnsupported:    "unsupported",
	outcomeLimited:        "limited",
	outcomeBackendInvalid: "backend_invalid",
}

// numOutcomes is the number of outcomes, for tables indexed by outcome.
const numOutcomes = len(outcomeNames)

func (o outcome) String() string { return outcomeNames[o] }

// policy is one route's Upgrade policy: the SPEC §3 table.
type policy struct {
	allowed []protocol // configured order
	labels  []string   // lower-cased allowed names: the metric labels
	require bool
	reject  bool // on_disallowed: reject
}

// newPolicy is the policy of a route that allows the protocols allowed,
// in that order: require answers a request without an allowed offer with
// 426, and reject (on_disallowed reject) an offer of nothing allowed with
// 403.
func newPolicy(allowed []protocol, require, reject bool) policy {
	p := policy{allowed: allowed, require: require, reject: reject}
	for _, a := range allowed {
		p.labels = append(p.labels, strings.ToLower(a.name))
	}
	return p
}

// requires reports whether a request must offer an allowed protocol.
func (p *policy) requires() bool { return p.require }

// verdict is the policy's answer for one offer.
type verdict struct {
	outcome outcome
	// status is the refusal's HTTP status; 0 unless the verdict refuses.
	status int
	// selected is the protocol to switch to, as the client wrote it, and
	// entry the allowed entry that matched it; set when outcome is accepted.
	selected protocol
	entry    protocol
}

// decide applies the SPEC §3 table. httpMajor tells HTTP/2 and HTTP/3
// requests apart, where a 426 cannot be sent (its Upgrade and Connection
// fields are forbidden there) and 400 takes its place.
func (p *policy) decide(o offer, httpMajor int) verdict {
	if o.present() {
		if sel, entry, ok := p.selectProtocol(o); ok {
			return verdict{outcome: outcomeAccepted, selected: sel, entry: entry}
		}
		switch {
		case p.reject:
			return verdict{outcome: outcomeRejected, status: http.StatusForbidden}
		case o.extendedConnect:
			return verdict{outcome: outcomeUnsupported, status: http.StatusNotImplemented}
		}
	}
	if p.require {
		return verdict{outcome: outcomeRequired, status: requiredStatus(httpMajor)}
	}
	if o.present() {
		return verdict{outcome: outcomeIgnored}
	}
	return verdict{outcome: outcomeNone}
}

// requiredStatus is 426, or 400 where the 426's mandatory Upgrade field
// cannot be sent (RFC 9113 §8.2.2, RFC 9114 §4.2).
func requiredStatus(httpMajor int) int {
	if httpMajor >= 2 {
		return http.StatusBadRequest
	}
	return http.StatusUpgradeRequired
}

// selectProtocol returns the first offered protocol, in client order, that
// an allowed entry matches, and that entry.
func (p *policy) selectProtocol(o offer) (selected, entry protocol, ok bool) {
	for _, offered := range o.protocols {
		for _, allowed := range p.allowed {
			if allowed.matches(offered) {
				return offered, allowed, true
			}
		}
	}
	return protocol{}, protocol{}, false
}

// matches reports whether the allowed entry e admits the offered protocol:
// names compare case-insensitively; an entry without a version admits any
// version or none, an entry with one admits exactly that version. An
// extended CONNECT offer has no version, so only bare entries match it.
func (e protocol) matches(offered protocol) bool {
	return strings.EqualFold(e.name, offered.name) && (e.version == "" || e.version == offered.version)
}

// requiredList is the value of a 426's Upgrade field: the allowed list in
// configured order.
func (p *policy) requiredList() string {
	names := make([]string, len(p.allowed))
	for i, a := range p.allowed {
		names[i] = a.String()
	}
	return strings.Join(names, ", ")
}

// protocolLabel bounds the protocol label to the configured names: the
// first offered name the route lists, lower-cased, or "other".
func (p *policy) protocolLabel(o offer) string {
	for _, offered := range o.protocols {
		for i, allowed := range p.allowed {
			if strings.EqualFold(allowed.name, offered.name) {
				return p.labels[i]
			}
		}
	}
	return labelOther
}

// labelOther is the metric label of an offer naming no configured protocol.
const labelOther = "other"
