package upgrade

import (
	"fmt"
	"net/http"
	"reflect"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types/ref"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/seedf05e/caddy-upgrade/internal/protocol"
)

func init() {
	caddy.RegisterModule(MatchUpgrade{})
}

// MatchUpgrade matches requests that offer an upgrade to one of the listed
// protocols, read exactly as the `upgrade` handler reads an offer: an
// HTTP/1.1 `Upgrade` with `Connection: upgrade`, or an HTTP/2-3 extended
// CONNECT `:protocol`. Entries are `name` (any version) or `name/version`.
// An `Upgrade` without `Connection: upgrade`, or a malformed offer, does
// not match.
//
// Caddyfile: `@ws upgrade websocket foo/2`; CEL: `upgrade('websocket', 'foo/2')`.
type MatchUpgrade []string

// CaddyModule returns the Caddy module information.
func (MatchUpgrade) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.matchers.upgrade",
		New: func() caddy.Module { return new(MatchUpgrade) },
	}
}

// UnmarshalCaddyfile sets up the matcher. Syntax:
//
//	upgrade <protocols...>
func (m *MatchUpgrade) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for d.Next() { // several upgrade matchers in one set merge
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		*m = append(*m, args...)
		if d.NextBlock(0) {
			return d.Err("malformed upgrade matcher: blocks are not supported")
		}
	}
	return nil
}

// Validate refuses entries that are not `token["/"token]`.
func (m MatchUpgrade) Validate() error {
	if len(m) == 0 {
		return fmt.Errorf("upgrade matcher: at least one protocol is required")
	}
	for _, s := range m {
		if _, ok := protocol.ParseProtocol(s); !ok {
			return fmt.Errorf("upgrade matcher: %q is not a protocol (token or token/token)", s)
		}
	}
	return nil
}

// Match returns true if r offers a listed protocol.
func (m MatchUpgrade) Match(r *http.Request) bool {
	match, _ := m.MatchWithError(r)
	return match
}

// MatchWithError returns true if r offers a listed protocol; a malformed
// offer is no match rather than an error, so that the handler can answer
// it with its 400.
func (m MatchUpgrade) MatchWithError(r *http.Request) (bool, error) {
	o, err := protocol.ParseOffer(r)
	if err != nil || !o.Present() {
		return false, nil
	}
	for _, s := range m {
		entry, ok := protocol.ParseProtocol(s)
		if !ok {
			continue
		}
		for _, offered := range o.Protocols {
			if entry.Matches(offered) {
				return true, nil
			}
		}
	}
	return false, nil
}

// CELLibrary makes the matcher usable in `expression` matchers.
func (MatchUpgrade) CELLibrary(_ caddy.Context) (cel.Library, error) {
	return caddyhttp.CELMatcherImpl(
		"upgrade",
		"upgrade_request_list",
		[]*cel.Type{cel.ListType(cel.StringType)},
		func(data ref.Val) (caddyhttp.RequestMatcherWithError, error) {
			list, err := data.ConvertToNative(reflect.TypeOf([]string{}))
			if err != nil {
				return nil, err
			}
			return MatchUpgrade(list.([]string)), nil
		},
	)
}

// Interface guards
var (
	_ caddyhttp.RequestMatcherWithError = (*MatchUpgrade)(nil)
	_ caddyhttp.CELLibraryProducer      = (*MatchUpgrade)(nil)
	_ caddyfile.Unmarshaler             = (*MatchUpgrade)(nil)
	_ caddy.Validator                   = (*MatchUpgrade)(nil)
)
