package upgrade

import (
	"net/http"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/seedf05e/caddy-upgrade/internal/protocol"
)

// Placeholders set for every request this handler sees (docs/behaviour.md §7).
const (
	placeholderOffered  = "http.upgrade.offered"
	placeholderProtocol = "http.upgrade.protocol"
	placeholderOutcome  = "http.upgrade.outcome"
)

// Keys under which the handler finds its own providers again in a
// request's replacer. The NUL keeps them out of any placeholder a config
// would write.
const (
	keyNoOffer = "\x00upgrade.no_offer"
	keyState   = "\x00upgrade.state"
)

// How the placeholders are published.
//
// Most requests carry no offer, and their values are constants ("", "",
// "none"). Publishing them with caddy.Replacer.Set would take the
// replacer's mutex and write its map three times per request (and the
// first write allocates the map's storage on the fresh replacer Caddy
// makes for each request). Instead a request without an offer gets the
// constant provider noOfferProvider appended to the replacer
// (Replacer.Map): no lock and no allocation, since Caddy's per-request
// replacer holds its 4 providers in a slice with room for 6 (each `map`
// handler before this one takes a place; past 6 the append allocates).
// Each pass through an upgrade handler without an offer appends one
// (handle_errors, nested routes): a few per request at most.
//
// The replacer asks its static values (Set) first, then its providers in
// the order they were added; the first that knows a key answers. For the
// latest publication on a request to win, as docs/behaviour.md §7 wants, a
// request with an offer gets one *placeholderState, registered once and
// found again through keyState, which each later publication updates:
//   - offer, then no offer (a first upgrade handler stripped the offer, a
//     later one sees none): the state remembers whether noOfferProvider
//     was registered at its latest publication; once it is, the state
//     answers the no-offer values.
//   - no offer, then offer: noOfferProvider would answer before any
//     provider added later, so the offer's values go into the static
//     values, which come before every provider.
//
// The one order this does not follow is no offer, offer, no offer on one
// request, which only a handler adding an Upgrade offer between two
// upgrade handlers could produce: the offer's values stay.

// outcomeValues holds the names already boxed as interface values: setting
// a placeholder from one then costs no allocation, which matters on the
// path of every request without an offer.
var outcomeValues = func() (v [protocol.NumOutcomes]any) {
	for i := range v {
		v[i] = protocol.Outcome(i).String()
	}
	return v
}()

// noOfferProvider answers the placeholders of a request without an offer.
// A func without captures: converting it to a provider allocates nothing.
var noOfferProvider = caddy.ReplacerFunc(noOfferValues)

func noOfferValues(key string) (any, bool) {
	switch key {
	case placeholderOffered, placeholderProtocol:
		return "", true
	case placeholderOutcome:
		return outcomeValues[protocol.OutcomeNone], true
	case keyNoOffer:
		return true, true
	}
	return nil, false
}

// hasNoOffer reports whether noOfferProvider was registered on repl.
func hasNoOffer(repl *caddy.Replacer) bool {
	_, ok := repl.Get(keyNoOffer)
	return ok
}

// placeholderState holds the placeholders of a request with an offer.
type placeholderState struct {
	repl *caddy.Replacer

	mu                sync.Mutex
	offered, protocol string // boxed when read: most requests never read them
	outcome           protocol.Outcome
	// noOfferBefore: noOfferProvider was registered at the latest publication.
	noOfferBefore bool
}

func (s *placeholderState) lookup(key string) (any, bool) {
	switch key {
	case keyState:
		return s, true
	case placeholderOffered, placeholderProtocol, placeholderOutcome:
	default:
		return nil, false
	}
	s.mu.Lock()
	offered, protocol, outcome, before := s.offered, s.protocol, s.outcome, s.noOfferBefore
	s.mu.Unlock()
	if !before && hasNoOffer(s.repl) {
		return noOfferValues(key) // a later handler saw no offer
	}
	switch key {
	case placeholderOffered:
		return offered, true
	case placeholderProtocol:
		return protocol, true
	}
	return outcomeValues[outcome], true
}

// stateOf returns the request's placeholderState, or nil.
func stateOf(repl *caddy.Replacer) *placeholderState {
	v, _ := repl.Get(keyState)
	s, _ := v.(*placeholderState)
	return s
}

// setPlaceholders publishes the offer and the verdict; outcome is updated
// again if the answer later fails (backend_invalid). A malformed offer
// (present false) is still published as received, for the access log.
func setPlaceholders(repl *caddy.Replacer, r *http.Request, o protocol.Offer, v protocol.Verdict, malformed bool) {
	if v.Outcome == protocol.OutcomeNone {
		repl.Map(noOfferProvider)
		return
	}
	offered := ""
	if o.Present() || malformed {
		offered = offeredAsReceived(r)
	}
	selected := ""
	if v.Outcome == protocol.OutcomeAccepted {
		selected = v.Selected.String()
	}
	noOffer := hasNoOffer(repl)
	s := stateOf(repl)
	if s == nil {
		if noOffer {
			repl.Set(placeholderOffered, offered)
			repl.Set(placeholderProtocol, selected)
			repl.Set(placeholderOutcome, outcomeValues[v.Outcome])
			return
		}
		s = &placeholderState{repl: repl}
		repl.Map(s.lookup)
	}
	s.mu.Lock()
	s.offered, s.protocol, s.outcome, s.noOfferBefore = offered, selected, v.Outcome, noOffer
	s.mu.Unlock()
}

// setOutcome publishes a later outcome of the request setPlaceholders
// published.
func setOutcome(repl *caddy.Replacer, out protocol.Outcome) {
	noOffer := hasNoOffer(repl)
	if s := stateOf(repl); s != nil {
		s.mu.Lock()
		s.outcome, s.noOfferBefore = out, noOffer
		s.mu.Unlock()
		return
	}
	repl.Set(placeholderOutcome, outcomeValues[out])
}

// offeredAsReceived is the raw offer: the Upgrade lines joined, or the
// extended CONNECT :protocol.
func offeredAsReceived(r *http.Request) string {
	switch r.ProtoMajor {
	case 1:
		return strings.Join(r.Header["Upgrade"], ", ")
	case 2:
		return strings.Join(r.Header[":protocol"], ", ")
	}
	return r.Proto
}
