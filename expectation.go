package upgrade

import (
	"context"
	"errors"
	"net/http"

	"github.com/seedf05e/caddy-upgrade/internal/protocol"
)

// What an accepted upgrade's answer must look like (docs/behaviour.md §5),
// shared by the two sides that check it: the transport wrapper on the
// backend side and the response guard on the client side.

// expectation is what an accepted upgrade's answer must look like
// (docs/behaviour.md §5). It travels in the request context from ServeHTTP to
// the transport wrapper and the response guard, and carries back the reason
// an answer failed.
type expectation struct {
	selected        string // the one protocol the backend was asked for
	websocket       bool
	extendedConnect bool
	// clientHeader is the request header as forwarded by this handler: its
	// subprotocols and extensions bound what the answer may choose.
	clientHeader http.Header
	// invalid is the first reason the answer failed, "" while it passes.
	invalid string
	label   string // the metric label
	counted bool
	// tunnel is the accounting the backend side of the tunnel joins.
	tunnel *tunnel
}

// count records the accepted request once, when its answer goes out.
func (e *expectation) count() {
	if !e.counted {
		e.counted = true
		countRequest(e.label, protocol.OutcomeAccepted)
	}
}

type expectationKey struct{}

func expectationFrom(ctx context.Context) *expectation {
	e, _ := ctx.Value(expectationKey{}).(*expectation)
	return e
}

// errBackendInvalid is returned up the stack where an answer failed its
// checks; ServeHTTP turns it into a 502.
var errBackendInvalid = errors.New("backend answered the upgrade incorrectly")

// check101 checks a backend's 101 against what this expectation asked
// for (docs/behaviour.md §5); "" when the answer passes.
func (e *expectation) check101(forwarded, res http.Header, checkAccept bool) string {
	return protocol.Check101(e.selected, e.websocket, forwarded, res, checkAccept)
}
