package upgrade

import (
	"context"
	"maps"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/seedf05e/caddy-upgrade/internal/protocol"
	"github.com/seedf05e/caddy-upgrade/internal/wsframe"
	"go.uber.org/zap"
)

// ServeHTTP is the request's way through the route's policy
// (docs/behaviour.md §2–§5): parse the offer, decide, refuse or check the
// handshake, then pass the accepted upgrade on with its answer guarded.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !h.policy.Require() && withoutOffer(r) {
		setPlaceholders(repl, r, protocol.Offer{}, protocol.Verdict{Outcome: protocol.OutcomeNone}, false)
		return next.ServeHTTP(w, r)
	}
	o, err := protocol.ParseOffer(r)
	if err != nil {
		setPlaceholders(repl, r, protocol.Offer{}, protocol.Verdict{Outcome: protocol.OutcomeInvalid}, true)
		return h.refuse(w, repl, protocol.LabelOther, refusal{outcome: protocol.OutcomeInvalid, status: http.StatusBadRequest, reason: err.Error()})
	}
	v := h.policy.Decide(o, r.ProtoMajor)
	setPlaceholders(repl, r, o, v, false)
	label := "" // the metric label; "" for requests without an offer, which are not counted
	if o.Present() {
		label = h.policy.Label(o)
	}
	switch v.Outcome {
	case protocol.OutcomeNone:
		protocol.RemoveStrayUpgrade(r)
		return next.ServeHTTP(w, r)
	case protocol.OutcomeIgnored:
		countRequest(label, protocol.OutcomeIgnored)
		protocol.StripOffer(r.Header)
		return next.ServeHTTP(w, r)
	case protocol.OutcomeAccepted:
	default:
		return h.refuse(w, repl, label, h.policyRefusal(v))
	}
	if ref, refused := h.checkAccepted(r, o, v, repl); refused {
		return h.refuse(w, repl, label, ref)
	}
	return h.pass(w, r, next, o, v, repl, label)
}

// checkAccepted runs the checks that follow selection, in
// docs/behaviour.md §3 order: a :protocol the proxy cannot carry, body,
// WebSocket method/key/duplicates, WebSocket version, Origin, subprotocols.
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

// withoutOffer is the common case, decided with two or three header lookups:
// a request without Upgrade offers nothing (docs/behaviour.md §2) and goes on
// as it came, less a stray Connection: upgrade on HTTP/1.x, as the general
// path would leave it. On HTTP/2-3 only a request without :protocol,
// Connection (forbidden there) or the CONNECT method is one.
func withoutOffer(r *http.Request) bool {
	if _, ok := r.Header["Upgrade"]; ok {
		return false
	}
	if r.ProtoMajor < 2 {
		if protocol.ConnectionHasToken(r.Header, "upgrade") {
			protocol.RemoveConnectionToken(r.Header, "upgrade")
		}
		return true
	}
	_, hasConnection := r.Header["Connection"]
	_, hasProtocol := r.Header[":protocol"]
	return !hasConnection && !hasProtocol && r.Method != http.MethodConnect
}

// pass hands an accepted upgrade on, holding a tunnel slot, and turns an
// answer that failed its checks into a 502.
func (h *Handler) pass(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, o protocol.Offer, v protocol.Verdict, repl *caddy.Replacer, label string) error {
	if !h.tunnels.acquire() {
		return h.refuse(w, repl, label, refusal{outcome: protocol.OutcomeLimited, status: http.StatusServiceUnavailable,
			reason: "too many open tunnels (max_connections)"})
	}
	ctx, cancel := context.WithCancel(r.Context())
	ws := v.Entry.IsWebSocket()
	t := &tunnel{limit: h.tunnels, owner: h.owner, cancel: cancel, label: label,
		idle: time.Duration(h.IdleTimeout), maxLife: time.Duration(h.MaxDuration),
		up: wsframe.NewGate(ws), down: wsframe.NewGate(ws)}
	defer t.finish()

	protocol.RewriteAccepted(r, o, v, h.websocket.subprotocols)
	exp := &expectation{
		selected:        protocol.ForwardedProtocol(o, v),
		websocket:       ws,
		extendedConnect: o.ExtendedConnect,
		clientHeader:    r.Header,
		label:           label,
		tunnel:          t,
	}
	r = r.WithContext(context.WithValue(ctx, expectationKey{}, exp))
	if o.ExtendedConnect {
		r.Body = countingBody{ReadCloser: r.Body, t: t}
	}
	g := &responseGuard{ResponseWriter: w, exp: exp, tunnel: t}
	// A next handler may copy the backend's fields into w.Header() before
	// its 101 is refused; the 502 must carry none of them.
	headerBefore := w.Header().Clone()
	var err error
	if h.proxy != nil {
		err = h.proxy.ServeHTTP(g, r, next)
	} else {
		err = next.ServeHTTP(g, r)
	}
	g.finish()
	if g.earlyBytes {
		// The client has its raw 400 and its connection is closed.
		h.record(repl, label, refusal{outcome: protocol.OutcomeInvalid, status: http.StatusBadRequest, reason: errEarlyBytes.Error()})
		return nil
	}
	switch {
	case exp.invalid != "" || err != nil:
	case !g.wroteHeader:
		exp.invalid = "the handler after upgrade wrote no response"
	case g.pending101:
		exp.invalid = "the handler after upgrade wrote a 101 but never took the connection"
	}
	if exp.invalid != "" {
		h.logger.Warn("backend answer refused", zap.String("protocol", exp.selected), zap.String("reason", exp.invalid))
		hdr := w.Header()
		clear(hdr)
		maps.Copy(hdr, headerBefore)
		return h.refuse(w, repl, label, refusal{outcome: protocol.OutcomeBackendInvalid, status: http.StatusBadGateway, reason: exp.invalid, quiet: true})
	}
	exp.count()
	return err
}
