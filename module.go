package upgrade

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/seedf05e/caddy-upgrade/internal/protocol"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler applies one route's policy to HTTP protocol upgrades: the
// HTTP/1.1 `Upgrade` header (RFC 9110 §7.8) and extended CONNECT on HTTP/2
// and HTTP/3 (RFC 8441, RFC 9220).
//
// A request that offers a protocol the route allows is accepted: its
// upgrade headers are reduced to the one selected protocol and it is handed
// to the embedded reverse proxy (`proxy`) or, without one, to the next
// handler. An offer of nothing allowed is stripped to a plain request, or
// refused with 403 under `on_disallowed: reject`; with `require`, a request
// that does not upgrade gets 426 Upgrade Required. A backend's
// `101 Switching Protocols` is checked before the client sees it.
//
// Every accepted upgrade becomes an opaque tunnel that no later route,
// matcher or authentication inspects; list only the protocols a route must
// carry. `h2c` and `HTTP` are refused outright: an upgrade to HTTP/2 hands
// the client a raw connection to the backend (h2c smuggling).
type Handler struct {
	// The protocols this route allows, in the form `name` (any version or
	// none) or `name/version` (that exact version). Names compare
	// case-insensitively, versions exactly. Required. `h2c` and `HTTP` are
	// refused, and `websocket` takes no version (RFC 6455 versions travel
	// in `Sec-WebSocket-Version`).
	Protocols []string `json:"protocols,omitempty"`

	// Require an upgrade: a request that does not offer an allowed protocol
	// gets 426 Upgrade Required (400 on HTTP/2 and HTTP/3, where a 426
	// cannot carry its `Upgrade` field).
	Require bool `json:"require,omitempty"`

	// What to do with an offer of nothing allowed: `ignore` (default)
	// strips the upgrade headers and passes the request on as a plain
	// request; `reject` answers 403 Forbidden.
	OnDisallowed string `json:"on_disallowed,omitempty"`

	// Checks for WebSocket handshakes; only valid when `websocket` is an
	// allowed protocol.
	WebSocket *WebSocketConfig `json:"websocket,omitempty"`

	// The most tunnels open through this handler at once; past it, new
	// upgrades get 503 with `Retry-After`. 0 means no limit. Counted per
	// handler instance: after a config reload, tunnels kept open by
	// `stream_close_delay` count against the old instance.
	MaxConnections int `json:"max_connections,omitempty"`

	// Close a tunnel that carried no bytes in either direction for this
	// long. 0 means never.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	// Close a tunnel this long after it opened, however busy. 0 means
	// never. With the proxy's `stream_timeout`, the shorter one applies.
	MaxDuration caddy.Duration `json:"max_duration,omitempty"`

	// A `reverse_proxy` handler (`{"handler": "reverse_proxy", ...}`) to
	// which accepted upgrades are delegated; every other request goes to
	// the next handler. Its transport must be `http` and it must not
	// buffer requests or responses (tunnels cannot be buffered). Unset,
	// accepted upgrades go to the next handler too (policy-only mode,
	// usually followed by `reverse_proxy`).
	ProxyRaw json.RawMessage `json:"proxy,omitempty" caddy:"namespace=http.handlers inline_key=handler"`

	policy    protocol.Policy
	proxy     caddyhttp.MiddlewareHandler
	logger    *zap.Logger
	tunnels   *tunnelLimit
	owner     *tunnelOwner
	websocket websocketPolicy
}

// WebSocketConfig holds the checks for WebSocket handshakes (RFC 6455).
type WebSocketConfig struct {
	// Origins allowed to open a WebSocket, as `scheme://host[:port]`.
	// A first label `*` matches exactly one label (`https://*.example.com`
	// matches `https://a.example.com`, not `https://example.com`). Entries
	// may use placeholders; same-origin is
	// `{http.request.scheme}://{http.request.hostport}`. A request without
	// `Origin` passes unless `require_origin` is set.
	Origins []string `json:"origins,omitempty"`

	// Refuse WebSocket handshakes that carry no `Origin` (browsers always
	// send one; other clients usually do not).
	RequireOrigin bool `json:"require_origin,omitempty"`

	// Subprotocols the backend may be offered; the client's
	// `Sec-WebSocket-Protocol` list is filtered to these, in client order.
	Subprotocols []string `json:"subprotocols,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.upgrade",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision builds the policy from the config and loads the embedded proxy.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	var allowed []protocol.Protocol
	for _, s := range h.Protocols {
		if p, ok := protocol.ParseProtocol(s); ok {
			allowed = append(allowed, p)
		}
	}
	h.policy = protocol.NewPolicy(allowed, h.Require, h.OnDisallowed == onDisallowedReject)
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %v", err)
	}
	h.tunnels = newTunnelLimit(h.MaxConnections)
	h.owner = &tunnelOwner{logger: h.logger, registry: newTunnelRegistry()}
	if err := h.websocket.provision(h.WebSocket); err != nil {
		return err
	}
	if h.ProxyRaw != nil {
		mod, err := ctx.LoadModule(h, "ProxyRaw")
		if err != nil {
			return fmt.Errorf("loading proxy: %v", err)
		}
		h.proxy = mod.(caddyhttp.MiddlewareHandler)
		if rp, ok := mod.(*reverseproxy.Handler); ok && guardTransport(rp) {
			h.owner.delegating = true
			h.owner.streamTimeout = time.Duration(rp.StreamTimeout)
		}
	}
	return nil
}

// Cleanup closes the tunnels this instance took over from its proxy, as
// the proxy's own Cleanup closes its tunnels: after its
// stream_close_delay, with close frames.
func (h *Handler) Cleanup() error {
	if h.owner == nil {
		return nil
	}
	var delay time.Duration
	if rp, ok := h.proxy.(*reverseproxy.Handler); ok {
		delay = time.Duration(rp.StreamCloseDelay)
	}
	h.owner.registry.cleanup(delay)
	return nil
}

const (
	onDisallowedIgnore = "ignore"
	onDisallowedReject = "reject"
)

// Validate refuses a config that cannot work or would open a hole.
func (h *Handler) Validate() error {
	if len(h.Protocols) == 0 {
		return fmt.Errorf("protocols: at least one protocol is required")
	}
	for i, s := range h.Protocols {
		if err := validateProtocol(s); err != nil {
			return fmt.Errorf("protocols: %v", err)
		}
		if j := overlapping(h.Protocols[:i], s); j >= 0 {
			return fmt.Errorf("protocols: %q duplicates %q (names compare case-insensitively; a bare name covers every version)", s, h.Protocols[j])
		}
	}
	switch h.OnDisallowed {
	case "", onDisallowedIgnore, onDisallowedReject:
	default:
		return fmt.Errorf("on_disallowed: %q is neither %q nor %q", h.OnDisallowed, onDisallowedIgnore, onDisallowedReject)
	}
	if h.MaxConnections < 0 {
		return fmt.Errorf("max_connections: %d is negative", h.MaxConnections)
	}
	if h.IdleTimeout < 0 {
		return fmt.Errorf("idle_timeout: %v is negative", time.Duration(h.IdleTimeout))
	}
	if h.MaxDuration < 0 {
		return fmt.Errorf("max_duration: %v is negative", time.Duration(h.MaxDuration))
	}
	if h.WebSocket != nil && overlapping(h.Protocols, "websocket") < 0 {
		return fmt.Errorf("websocket: checks are configured but websocket is not in protocols")
	}
	if err := h.websocket.validate(h.WebSocket); err != nil {
		return fmt.Errorf("websocket: %v", err)
	}
	if h.proxy != nil { // ctx.LoadModule has cleared ProxyRaw by now
		if err := validateProxy(h.proxy); err != nil {
			return fmt.Errorf("proxy: %v", err)
		}
	}
	return nil
}

// overlapping returns the index of the first entry of list that admits
// everything s admits or the reverse (the same name with the same version,
// or either without one), or -1. `foo/1` and `foo/2` may stand together.
func overlapping(list []string, s string) int {
	p, _ := protocol.ParseProtocol(s)
	for i, other := range list {
		o, _ := protocol.ParseProtocol(other)
		if strings.EqualFold(o.Name, p.Name) && (o.Version == p.Version || o.Version == "" || p.Version == "") {
			return i
		}
	}
	return -1
}

// validateProtocol refuses what docs/behaviour.md §6 refuses in the protocols
// list.
func validateProtocol(s string) error {
	p, ok := protocol.ParseProtocol(s)
	if !ok {
		return fmt.Errorf("%q is not a protocol (token or token/token)", s)
	}
	switch strings.ToLower(p.Name) {
	case "h2c", "http":
		return fmt.Errorf("%q is refused: an upgrade to HTTP hands the client a raw connection to the backend past every route, matcher and authentication (h2c smuggling)", s)
	case "websocket":
		if p.Version != "" {
			return fmt.Errorf("%q: websocket takes no version (RFC 6455 versions travel in Sec-WebSocket-Version)", s)
		}
	}
	return nil
}

// validateProxy refuses a delegate that cannot carry tunnels.
func validateProxy(proxy caddyhttp.MiddlewareHandler) error {
	rp, ok := proxy.(*reverseproxy.Handler)
	if !ok {
		return fmt.Errorf("must be a reverse_proxy handler, not %T", proxy)
	}
	if _, ok := rp.Transport.(*guardedTransport); !ok {
		return fmt.Errorf("transport must be http, not %T", rp.Transport)
	}
	if rp.RequestBuffers != 0 || rp.ResponseBuffers != 0 {
		return fmt.Errorf("request_buffers and response_buffers must be 0: a tunnel cannot be buffered")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
