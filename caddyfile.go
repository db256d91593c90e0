package upgrade

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("upgrade", parseCaddyfile)
	// After authentication (basic_auth, forward_auth) and request_header,
	// before response wrappers (encode, intercept, templates) and every
	// handler that answers or dispatches (handle, route, respond,
	// reverse_proxy, file_server, ...), so no `order` line is needed.
	httpcaddyfile.RegisterDirectiveOrder("upgrade", httpcaddyfile.After, "request_header")
}

func parseCaddyfile(helper httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	h := new(Handler)
	proxy, err := h.unmarshal(helper.Dispenser)
	if err != nil {
		return nil, err
	}
	if proxy != nil {
		if err := proxy.FinalizeUnmarshalCaddyfile(helper); err != nil {
			return nil, err
		}
		h.ProxyRaw = caddyconfig.JSONModuleObject(proxy, "handler", "reverse_proxy", nil)
	}
	return h, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	upgrade [<matcher>] [<protocols...>] {
//		protocols <protocol...>
//		require
//		on_disallowed ignore|reject
//		origins <origin...>
//		require_origin
//		subprotocols <name...>
//		max_connections <n>
//		idle_timeout <duration>
//		max_duration <duration>
//		# any reverse_proxy subdirective (to, lb_policy, transport,
//		# header_up, stream_close_delay, ...) fills "proxy": accepted
//		# upgrades are delegated there
//		to <upstreams...>
//	}
//
// Protocols may be given inline, in the block, or both. `origins`,
// `require_origin` and `subprotocols` fill the `websocket` checks.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	proxy, err := h.unmarshal(d)
	if err != nil {
		return err
	}
	if proxy != nil {
		h.ProxyRaw = caddyconfig.JSONModuleObject(proxy, "handler", "reverse_proxy", nil)
	}
	return nil
}

// unmarshal reads the module's own subdirectives and deletes their tokens,
// then gives what is left, if anything, to reverse_proxy's own parser, the
// way php_fastcgi does.
func (h *Handler) unmarshal(d *caddyfile.Dispenser) (*reverseproxy.Handler, error) {
	if !d.Next() {
		return nil, d.EOFErr()
	}
	seg := d.NewFromNextSegment()
	seg.Next() // the directive name
	args := seg.RemainingArgs()
	h.Protocols = append(h.Protocols, args...)
	seg.DeleteN(len(args))

	passThrough := false
	for seg.NextBlock(0) {
		if seg.Nesting() != 1 {
			continue // inside a reverse_proxy subdirective's block
		}
		name := seg.Val()
		parse, own := subdirectives[name]
		if !own {
			passThrough = true
			seg.RemainingArgs() // its arguments are reverse_proxy's, whatever their names
			continue
		}
		args := seg.RemainingArgs()
		if err := parse(h, seg, args); err != nil {
			return nil, err
		}
		seg.DeleteN(len(args) + 1)
	}
	if !passThrough {
		return nil, nil
	}
	seg.Reset()
	proxy := new(reverseproxy.Handler)
	if err := proxy.UnmarshalCaddyfile(seg); err != nil {
		return nil, err
	}
	return proxy, nil
}

type subdirective func(h *Handler, d *caddyfile.Dispenser, args []string) error

var subdirectives = map[string]subdirective{
	"protocols": func(h *Handler, d *caddyfile.Dispenser, args []string) error {
		if len(args) == 0 {
			return d.ArgErr()
		}
		h.Protocols = append(h.Protocols, args...)
		return nil
	},
	"require": flag(func(h *Handler) { h.Require = true }),
	"on_disallowed": func(h *Handler, d *caddyfile.Dispenser, args []string) error {
		if len(args) != 1 {
			return d.ArgErr()
		}
		if args[0] != onDisallowedIgnore && args[0] != onDisallowedReject {
			return d.Errf("on_disallowed: %q is neither %q nor %q", args[0], onDisallowedIgnore, onDisallowedReject)
		}
		h.OnDisallowed = args[0]
		return nil
	},
	"origins": func(h *Handler, d *caddyfile.Dispenser, args []string) error {
		if len(args) == 0 {
			return d.ArgErr()
		}
		ws := h.websocketConfig()
		ws.Origins = append(ws.Origins, args...)
		return nil
	},
	"require_origin": flag(func(h *Handler) { h.websocketConfig().RequireOrigin = true }),
	"subprotocols": func(h *Handler, d *caddyfile.Dispenser, args []string) error {
		if len(args) == 0 {
			return d.ArgErr()
		}
		ws := h.websocketConfig()
		ws.Subprotocols = append(ws.Subprotocols, args...)
		return nil
	},
	"max_connections": func(h *Handler, d *caddyfile.Dispenser, args []string) error {
		if len(args) != 1 {
			return d.ArgErr()
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 0 {
			return d.Errf("max_connections: %q is not a non-negative integer", args[0])
		}
		h.MaxConnections = n
		return nil
	},
	"idle_timeout": duration("idle_timeout", func(h *Handler) *caddy.Duration { return &h.IdleTimeout }),
	"max_duration": duration("max_duration", func(h *Handler) *caddy.Duration { return &h.MaxDuration }),
}

func flag(set func(*Handler)) subdirective {
	return func(h *Handler, d *caddyfile.Dispenser, args []string) error {
		if len(args) != 0 {
			return d.ArgErr()
		}
		set(h)
		return nil
	}
}

func duration(name string, field func(*Handler) *caddy.Duration) subdirective {
	return func(h *Handler, d *caddyfile.Dispenser, args []string) error {
		if len(args) != 1 {
			return d.ArgErr()
		}
		dur, err := caddy.ParseDuration(args[0])
		if err != nil || dur < 0 {
			return d.Errf("%s: %q is not a non-negative duration", name, args[0])
		}
		*field(h) = caddy.Duration(dur)
		return nil
	}
}

func (h *Handler) websocketConfig() *WebSocketConfig {
	if h.WebSocket == nil {
		h.WebSocket = new(WebSocketConfig)
	}
	return h.WebSocket
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
