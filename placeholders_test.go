package upgrade

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// placeholderHandler provisions h the way Caddy would.
func placeholderHandler(t *testing.T, h *Handler) *Handler {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	if err := h.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	h.logger = zap.NewNop()
	return h
}

// placeholderValues reads the three placeholders as a respond body and an
// access log would, and checks each is known and a string (log_append
// logs the typed value).
func placeholderValues(t *testing.T, repl *caddy.Replacer) string {
	t.Helper()
	for _, key := range []string{placeholderOffered, placeholderProtocol, placeholderOutcome} {
		v, ok := repl.Get(key)
		if _, isString := v.(string); !ok || !isString {
			t.Errorf("Get(%q) = %#v, %v; want a string, true", key, v, ok)
		}
	}
	return repl.ReplaceKnown("outcome={http.upgrade.outcome} protocol={http.upgrade.protocol} offered={http.upgrade.offered}", "")
}

func placeholderRequest(t *testing.T, proto int, header http.Header) (*http.Request, *caddy.Replacer) {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "http://example.com/", nil)
	r.Header = header
	if proto == 2 {
		r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
	}
	return r, caddyhttp.NewTestReplacer(r)
}

// TestPlaceholdersNoOffer: a request without an offer reads none, on the
// HTTP/1 shortcut and on the general path (docs/behaviour.md §7).
func TestPlaceholdersNoOffer(t *testing.T) {
	h := placeholderHandler(t, &Handler{Protocols: []string{"websocket"}})
	for _, tc := range []struct {
		name  string
		proto int
		hdr   http.Header
		conn  []string // Connection afterwards
	}{
		{"plain", 1, http.Header{}, nil},
		{"keep-alive", 1, http.Header{"Connection": {"keep-alive"}}, []string{"keep-alive"}},
		{"stray Connection: upgrade", 1, http.Header{"Connection": {"keep-alive, Upgrade"}}, []string{"keep-alive"}},
		{"stray Upgrade", 1, http.Header{"Upgrade": {"websocket"}}, nil},
		{"h2", 2, http.Header{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, repl := placeholderRequest(t, tc.proto, tc.hdr)
			if err := h.ServeHTTP(httptest.NewRecorder(), r, noopNext); err != nil {
				t.Fatal(err)
			}
			if got, want := placeholderValues(t, repl), "outcome=none protocol= offered="; got != want {
				t.Errorf("%q, want %q", got, want)
			}
			if got := r.Header["Connection"]; len(got) != len(tc.conn) || (len(got) > 0 && got[0] != tc.conn[0]) {
				t.Errorf("Connection %q, want %q", got, tc.conn)
			}
			if _, ok := r.Header["Upgrade"]; ok {
				t.Errorf("stray Upgrade kept")
			}
		})
	}
}

// TestPlaceholdersLatestWins: with several upgrade handlers on one request
// (nested routes, handle_errors), the placeholders hold what the latest
// one published, as they did when every request used Replacer.Set.
func TestPlaceholdersLatestWins(t *testing.T) {
	ignore := placeholderHandler(t, &Handler{Protocols: []string{"websocket"}})
	reject := placeholderHandler(t, &Handler{Protocols: []string{"websocket"}, OnDisallowed: onDisallowedReject})
	require := placeholderHandler(t, &Handler{Protocols: []string{"websocket"}, Require: true})
	offerFoo := func(r *http.Request) {
		r.Header["Connection"] = []string{"Upgrade"}
		r.Header["Upgrade"] = []string{"foo"}
	}
	type step struct {
		h      *Handler
		before func(*http.Request)
	}
	for _, tc := range []struct {
		name  string
		offer bool
		steps []step
		want  string
	}{
		{"ignored, then no offer", true, []step{{ignore, nil}, {ignore, nil}},
			"outcome=none protocol= offered="},
		{"ignored, then no offer, then no offer", true, []step{{ignore, nil}, {ignore, nil}, {ignore, nil}},
			"outcome=none protocol= offered="},
		{"no offer, then offer", false, []step{{ignore, nil}, {ignore, offerFoo}},
			"outcome=ignored protocol= offered=foo"},
		{"no offer, then offer refused", false, []step{{ignore, nil}, {reject, offerFoo}},
			"outcome=rejected protocol= offered=foo"},
		{"rejected, then ignored", true, []step{{reject, nil}, {ignore, nil}},
			"outcome=ignored protocol= offered=foo"},
		{"rejected, then ignored, then no offer", true, []step{{reject, nil}, {ignore, nil}, {ignore, nil}},
			"outcome=none protocol= offered="},
		{"ignored, then no offer, then offer", true, []step{{ignore, nil}, {ignore, nil}, {reject, offerFoo}},
			"outcome=rejected protocol= offered=foo"},
		{"ignored, then required", true, []step{{ignore, nil}, {require, nil}},
			"outcome=required protocol= offered="},
		{"required, then required", false, []step{{require, nil}, {require, nil}},
			"outcome=required protocol= offered="},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, repl := placeholderRequest(t, 1, http.Header{})
			if tc.offer {
				offerFoo(r)
			}
			for _, s := range tc.steps {
				if s.before != nil {
					s.before(r)
				}
				_ = s.h.ServeHTTP(httptest.NewRecorder(), r, noopNext) // refusals are errors; the placeholders are the point
			}
			if got := placeholderValues(t, repl); got != tc.want {
				t.Errorf("%q, want %q", got, tc.want)
			}
		})
	}
}
