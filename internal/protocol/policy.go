package protocol

import (
	"net/http"
	"strings"
)

// Outcome is what the handler did with a request; its name is the value of
// the {http.upgrade.outcome} placeholder and the outcome metric label
// (docs/behaviour.md §7).
type Outcome uint8

// The outcomes, in the order of docs/behaviour.md §7's table.
const (
	OutcomeNone Outcome = iota
	OutcomeAccepted
	OutcomeIgnored
	OutcomeRejected
	OutcomeRequired
	OutcomeInvalid
	OutcomeUnsupported
	OutcomeLimited
	OutcomeBackendInvalid
)

var outcomeNames = [...]string{
	OutcomeNone:           "none",
	OutcomeAccepted:       "accepted",
	OutcomeIgnored:        "ignored",
	OutcomeRejected:       "rejected",
	OutcomeRequired:       "required",
	OutcomeInvalid:        "invalid",
	OutcomeUnsupported:    "unsupported",
	OutcomeLimited:        "limited",
	OutcomeBackendInvalid: "backend_invalid",
}

// NumOutcomes is the number of outcomes, for tables indexed by Outcome.
const NumOutcomes = len(outcomeNames)

// String is the outcome's name in placeholders, metrics and logs.
func (o Outcome) String() string { return outcomeNames[o] }

// Policy is one route's Upgrade policy: the docs/behaviour.md §3 table. Build
// it with NewPolicy.
type Policy struct {
	allowed []Protocol // configured order
	labels  []string   // lower-cased allowed names: the metric labels
	require bool
	reject  bool // on_disallowed: reject
}

// NewPolicy is the policy of a route that allows the protocols allowed,
// in that order: require answers a request without an allowed offer with
// 426, and reject (on_disallowed reject) an offer of nothing allowed with
// 403.
func NewPolicy(allowed []Protocol, require, reject bool) Policy {
	p := Policy{allowed: allowed, require: require, reject: reject}
	for _, a := range allowed {
		p.labels = append(p.labels, strings.ToLower(a.Name))
	}
	return p
}

// Require reports whether a request must offer an allowed protocol.
func (p *Policy) Require() bool { return p.require }

// Verdict is the policy's answer for one offer.
type Verdict struct {
	Outcome Outcome
	// Status is the refusal's HTTP status; 0 unless the verdict refuses.
	Status int
	// Selected is the protocol to switch to, as the client wrote it, and
	// Entry the allowed entry that matched it; set when Outcome is
	// OutcomeAccepted.
	Selected Protocol
	Entry    Protocol
}

// Decide applies the docs/behaviour.md §3 table. httpMajor tells HTTP/2 and
// HTTP/3 requests apart, where a 426 cannot be sent (its Upgrade and
// Connection fields are forbidden there) and 400 takes its place.
func (p *Policy) Decide(o Offer, httpMajor int) Verdict {
	if o.Present() {
		if sel, entry, ok := p.selectProtocol(o); ok {
			return Verdict{Outcome: OutcomeAccepted, Selected: sel, Entry: entry}
		}
		switch {
		case p.reject:
			return Verdict{Outcome: OutcomeRejected, Status: http.StatusForbidden}
		case o.ExtendedConnect:
			return Verdict{Outcome: OutcomeUnsupported, Status: http.StatusNotImplemented}
		}
	}
	if p.require {
		return Verdict{Outcome: OutcomeRequired, Status: RequiredStatus(httpMajor)}
	}
	if o.Present() {
		return Verdict{Outcome: OutcomeIgnored}
	}
	return Verdict{Outcome: OutcomeNone}
}

// RequiredStatus is 426, or 400 where the 426's mandatory Upgrade field
// cannot be sent (RFC 9113 §8.2.2, RFC 9114 §4.2).
func RequiredStatus(httpMajor int) int {
	if httpMajor >= 2 {
		return http.StatusBadRequest
	}
	return http.StatusUpgradeRequired
}

// selectProtocol returns the first offered protocol, in client order, that
// an allowed entry matches, and that entry.
func (p *Policy) selectProtocol(o Offer) (selected, entry Protocol, ok bool) {
	for _, offered := range o.Protocols {
		for _, allowed := range p.allowed {
			if allowed.Matches(offered) {
				return offered, allowed, true
			}
		}
	}
	return Protocol{}, Protocol{}, false
}

// RequiredList is the value of a 426's Upgrade field: the allowed list in
// configured order.
func (p *Policy) RequiredList() string {
	names := make([]string, len(p.allowed))
	for i, a := range p.allowed {
		names[i] = a.String()
	}
	return strings.Join(names, ", ")
}

// Label is the metric label of an offer: the first offered name the route
// lists, lower-cased, or LabelOther, so that the label set is bounded by
// the config whatever clients send.
func (p *Policy) Label(o Offer) string {
	for _, offered := range o.Protocols {
		for i, allowed := range p.allowed {
			if strings.EqualFold(allowed.Name, offered.Name) {
				return p.labels[i]
			}
		}
	}
	return LabelOther
}

// LabelOther is the metric label of an offer naming no configured protocol.
const LabelOther = "other"
