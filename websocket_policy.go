package upgrade

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/seedf05e/caddy-upgrade/internal/protocol"
)

// A route's WebSocket checks as configured (websocket.origins,
// require_origin, subprotocols): validated and provisioned here, with the
// rules themselves in package protocol.

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
