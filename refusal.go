package upgrade

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/seedf05e/caddy-upgrade/internal/protocol"
	"go.uber.org/zap"
)

// refusal is an answer the handler gives instead of passing the request on.
type refusal struct {
	outcome protocol.Outcome
	status  int
	reason  string
	// required lists the protocols a 426 (or its HTTP/2-3 400) names.
	required string
	// wsVersion adds Sec-WebSocket-Version: 13 (RFC 6455 §4.4).
	wsVersion bool
	// quiet skips the info log where the caller already logged louder.
	quiet bool
}

// policyRefusal is the refusal for a policy verdict that is not accepted.
func (h *Handler) policyRefusal(v protocol.Verdict) refusal {
	ref := refusal{outcome: v.Outcome, status: v.Status}
	switch v.Outcome {
	case protocol.OutcomeRejected:
		ref.reason = "upgrade to a protocol this route does not allow"
	case protocol.OutcomeUnsupported:
		ref.reason = "extended CONNECT :protocol not allowed on this route"
	case protocol.OutcomeRequired:
		ref.required = h.policy.RequiredList()
		ref.reason = "upgrade required: " + ref.required
	}
	return ref
}

// refuse answers with a caddyhttp.Error carrying its headers, so that
// handle_errors routes can render it, as Caddy's basic_auth does.
func (h *Handler) refuse(w http.ResponseWriter, repl *caddy.Replacer, label string, ref refusal) error {
	h.record(repl, label, ref)
	hdr := w.Header()
	if ref.status == http.StatusUpgradeRequired {
		hdr.Set("Upgrade", ref.required)
		hdr.Set("Connection", "Upgrade")
	}
	if ref.wsVersion {
		hdr["Sec-WebSocket-Version"] = []string{"13"} //nolint:canonicalheader // RFC 6455 spelling
	}
	if ref.status == http.StatusServiceUnavailable {
		hdr.Set("Retry-After", "1")
	}
	return caddyhttp.Error(ref.status, errors.New(ref.reason))
}

// record publishes a refusal: the outcome placeholder, the metric (when
// label is not "": requests without an offer are not counted) and the log.
func (h *Handler) record(repl *caddy.Replacer, label string, ref refusal) {
	setOutcome(repl, ref.outcome)
	if label != "" {
		countRequest(label, ref.outcome)
	}
	if !ref.quiet {
		h.logger.Info("upgrade refused",
			zap.Int("status", ref.status),
			zap.Stringer("outcome", ref.outcome),
			zap.String("reason", ref.reason))
	}
}
