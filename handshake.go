package upgrade

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/seedf05e/caddy-upgrade/internal/protocol"
)

// websocketPolicy is the provisioned form of WebSocketConfig.
type websocketPolicy struct {
	origins       protocol.OriginList
	checkOrigins  bool // origins or require_origin set
	requireOrigin bool
	subprotocols  []string // nil: forward the client's list untouched
}

func (p *websocketPolicy) provision(c *WebSocketConfig) error {
	if c == nil {
		return nil
	}
	origins, err := protocol.NewOriginList(c.Origins)
	if err != nil {
		return err
	}
	*p = websocketPolicy{
		origins:       origins,
		checkOrigins:  len(c.Origins) > 0 || c.RequireOrigin,
		requireOrigin: c.RequireOrigin,
		subprotocols:  c.Subprotocols,
	}
	if p.subprotocols != nil && len(p.subprotocols) == 0 {
		p.subprotocols = nil
	}
	return nil
}

func (p *websocketPolicy) validate(c *WebSocketConfig) error {
	if c == nil {
		return nil
	}
	for _, o := range c.Origins {
		if err := protocol.ValidateOriginEntry(o); err != nil {
			return err
		}
	}
	for _, s := range c.Subprotocols {
		if !protocol.IsToken(s) {
			return fmt.Errorf("subprotocols: %q is not a token", s)
		}
	}
	return nil
}

// checkAccepted runs the checks that follow selection, in SPEC §3 order:
// body, WebSocket method/key/duplicates, WebSocket version, Origin.
func (h *Handler) checkAccepted(r *http.Request, o protocol.Offer, v protocol.Verdict, repl *caddy.Replacer) (refusal, bool) {
	if o.ExtendedConnect && h.proxy != nil && !v.Entry.IsWebSocket() {
		// Caddy's reverse proxy turns only a websocket extended CONNECT
		// into an HTTP/1.1 upgrade; anything else would reach the backend
		// as a plain CONNECT.
		return refusal{outcome: protocol.OutcomeUnsupported, status: http.StatusNotImplemented,
			reason: "extended CONNECT :protocol " + protocol.QuoteForLog(v.Entry.Name) + " cannot be delegated (only websocket)"}, true
	}
	if !o.ExtendedConnect && (r.ContentLength > 0 || len(r.TransferEncoding) > 0) {
		return refusal{outcome: protocol.OutcomeInvalid, status: http.StatusBadRequest,
			reason: "an upgrade request must not carry a body"}, true
	}
	if !v.Entry.IsWebSocket() {
		return refusal{}, false
	}
	if status, reason := protocol.CheckWebSocketRequest(r.Method, r.Header, o.ExtendedConnect); status != 0 {
		ref := refusal{outcome: protocol.OutcomeInvalid, status: status, reason: reason}
		if status == http.StatusUpgradeRequired {
			ref = refusal{outcome: protocol.OutcomeRequired, status: protocol.RequiredStatus(r.ProtoMajor), reason: reason,
				required: h.policy.RequiredList(), wsVersion: true}
			if r.ProtoMajor >= 2 {
				ref.reason += " (required: " + ref.required + ")"
			}
		}
		return ref, true
	}
	if h.websocket.checkOrigins {
		if ok, reason := h.websocket.origins.Check(r.Header["Origin"], replacer(repl), h.websocket.requireOrigin); !ok {
			return refusal{outcome: protocol.OutcomeRejected, status: http.StatusForbidden, reason: reason}, true
		}
	}
	if ref, refused := h.websocket.checkSubprotocols(r.Header); refused {
		return ref, true
	}
	return refusal{}, false
}

// checkSubprotocols refuses a client whose offered subprotocols are all
// outside websocket.subprotocols. A browser fails a handshake whose 101
// names none of the subprotocols it offered (RFC 6455 §4.1, point 6 of the
// client's checks), so forwarding it would only spend a backend
// connection. 403, as for an Origin: the request is well formed, the
// route's policy refuses it.
func (p *websocketPolicy) checkSubprotocols(h http.Header) (refusal, bool) {
	if p.subprotocols == nil || !protocol.OffersOnlyOtherSubprotocols(h, p.subprotocols) {
		return refusal{}, false
	}
	return refusal{outcome: protocol.OutcomeRejected, status: http.StatusForbidden,
		reason: "none of the offered subprotocols is allowed (allowed: " + strings.Join(p.subprotocols, ", ") + ")"}, true
}

func replacer(repl *caddy.Replacer) func(string) string {
	return func(s string) string { return repl.ReplaceKnown(s, "") }
}
