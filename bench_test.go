package upgrade

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/seedf05e/caddy-upgrade/internal/protocol"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Micro-benchmarks of the handler's hot paths. Run them with
//
//	go test -run '^$' -bench . -benchmem .
//
// and, to see what allocates,
//
//	go test -run '^$' -bench ServeHTTPNoOffer -memprofile mem.out .
//	go tool pprof -sample_index=alloc_objects -list 'Handler..ServeHTTP' upgrade.test mem.out

// benchHandler provisions and validates h the way Caddy would, with a
// logger that drops everything (logging cost depends on the operator's
// config, not on this handler).
func benchHandler(b *testing.B, h *Handler) *Handler {
	b.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	b.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		b.Fatalf("Provision: %v", err)
	}
	if err := h.Validate(); err != nil {
		b.Fatalf("Validate: %v", err)
	}
	h.logger = zap.NewNop()
	return h
}

// benchRequest is a request as Caddy's server hands it to a handler: with a
// *caddy.Replacer in its context, holding Caddy's HTTP providers.
//
// Caddy makes a replacer for each request, and the handler's work on it is
// per request (docs/behaviour.md §7's placeholders: a provider appended, see
// placeholders.go). A benchmark reusing one request therefore starts each
// call from the replacer as Caddy hands it over: `*repl = fresh`, with
// fresh a copy taken before the loop (a 48-byte copy, timed with the
// rest). Without it the replacer would keep the first call's provider, or
// grow by one provider per call.
func benchRequest(method, target string, header http.Header) (*http.Request, *caddy.Replacer) {
	r := httptest.NewRequest(method, target, nil)
	r.Header = header
	return r, caddyhttp.NewTestReplacer(r)
}

var noopNext = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// BenchmarkServeHTTPNoOffer is the common case: a GET without any upgrade
// offer passes straight to the next handler.
// Target: 0 allocs/op, <= 50 ns/op.
//
// Each call starts from a fresh replacer (see benchRequest).
//
//   - "plain": HTTP/1.1, no Connection field; the replacer is the
//     request's only context value, as in the other benchmarks here.
//   - "keep-alive": the same with Connection: keep-alive, as many clients send.
//   - "h2": HTTP/2 without :protocol (the general path, not the HTTP/1 shortcut).
//   - "caddy-ctx": "plain" with the context Caddy's server builds
//     (caddyhttp.PrepareRequest), where the replacer sits five values deep:
//     finding it costs about 20 ns more, the same for any handler that
//     uses it (BenchmarkServeHTTPNoOfferFloor/caddy-ctx: 43 ns where
//     "caddy-ctx" takes 50-52 ns, 2026-12-02).
func BenchmarkServeHTTPNoOffer(b *testing.B) {
	plain := http.Header{"Accept": {"text/html"}, "User-Agent": {"bench/1.0"}}
	for _, tc := range []struct {
		name     string
		major    int
		hdr      http.Header
		caddyCtx bool
	}{
		{"plain", 1, plain, false},
		{"keep-alive", 1, http.Header{"Accept": {"text/html"}, "User-Agent": {"bench/1.0"}, "Connection": {"keep-alive"}}, false},
		{"h2", 2, plain, false},
		{"caddy-ctx", 1, plain, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := benchHandler(b, &Handler{Protocols: []string{"websocket"}})
			w := newBenchWriter()
			r, repl := benchRequest(http.MethodGet, "http://example.com/index.html", tc.hdr)
			if tc.major == 2 {
				r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
			}
			if tc.caddyCtx {
				repl = caddy.NewReplacer()
				r = caddyhttp.PrepareRequest(r, repl, w, nil)
			}
			fresh := *repl
			b.ReportAllocs()
			for b.Loop() {
				*repl = fresh
				if err := h.ServeHTTP(w, r, noopNext); err != nil {
					b.Fatal(err)
				}
			}
			if v, _ := repl.GetString(placeholderOutcome); v != "none" {
				b.Fatalf("{%s} = %q, want none", placeholderOutcome, v)
			}
		})
	}
}

// BenchmarkServeHTTPNoOfferFloor is the least any handler can do on the
// path of BenchmarkServeHTTPNoOffer/plain and /caddy-ctx: find its
// replacer, look up the two header fields the answer depends on (Upgrade,
// and Connection for a stray "upgrade" option) and call the next handler.
// The difference to the same case of BenchmarkServeHTTPNoOffer is the
// handler's own overhead (8 ns in both on 2026-12-02: 21 -> 29 ns,
// 43 -> 51 ns); on a loaded machine compare the two rather than either
// against the 50 ns target.
func BenchmarkServeHTTPNoOfferFloor(b *testing.B) {
	for _, caddyCtx := range []bool{false, true} {
		name := "plain"
		if caddyCtx {
			name = "caddy-ctx"
		}
		b.Run(name, func(b *testing.B) {
			r, _ := benchRequest(http.MethodGet, "http://example.com/index.html",
				http.Header{"Accept": {"text/html"}, "User-Agent": {"bench/1.0"}})
			w := newBenchWriter()
			if caddyCtx {
				r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, nil)
			}
			var sink int
			b.ReportAllocs()
			for b.Loop() {
				repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
				up, conn := r.Header["Upgrade"], r.Header["Connection"]
				sink += len(up) + len(conn)
				if repl == nil || noopNext.ServeHTTP(w, r) != nil {
					b.Fatal()
				}
			}
			_ = sink
		})
	}
}

// BenchmarkReplacerSetFloor is what publishing the no-offer placeholders
// (docs/behaviour.md §7) with three repl.Set calls costs, on one reused
// replacer whose map already holds the keys (on a request's fresh replacer
// the first Set also allocates the map's storage). Caddy's Replacer takes a
// mutex and writes a map each time; the handler no longer does this for
// requests without an offer (see placeholders.go).
func BenchmarkReplacerSetFloor(b *testing.B) {
	_, repl := benchRequest(http.MethodGet, "http://example.com/", http.Header{})
	b.ReportAllocs()
	for b.Loop() {
		repl.Set(placeholderOffered, "")
		repl.Set(placeholderProtocol, "")
		repl.Set(placeholderOutcome, "none")
	}
}

// BenchmarkServeHTTPAccepted runs an accepted WebSocket handshake through
// the whole handler in policy-only mode: parse, select, checks, rewrite,
// the tunnel slot, and a next handler that answers like Caddy's reverse
// proxy does (a correct 101, Hijack, then the tunnel closes at once). The
// 101 goes out on the fake hijacked connection. The request's headers are
// put back in place each iteration without allocating, and the replacer
// is a fresh one each call (see benchRequest).
//
// "policy" makes 35 allocations (about 2.3 KB) per handshake
// (go test -run '^$' -bench ServeHTTPAccepted/policy -memprofile ...):
//
//   - 1 protocol.ParseOffer: the offer's protocol list.
//   - 2 setPlaceholders: the request's placeholderState and its provider
//     func (once per request; see placeholders.go).
//   - 11 pass, per tunnel: context.WithCancel (2), the tunnel, the
//     expectation, the responseGuard, context.WithValue and
//     Request.WithContext (the request the next handler sees), the
//     tunnelConn wrapping the hijacked connection and its close-frame
//     writer (sideWriter), the func its Close hands to closeSide, and the
//     tunnel's metric handles (newTunnelMetrics).
//   - 8 the two frame gates (wsframe.NewGate: a gate and its three
//     channels, each).
//   - 2 protocol.RewriteAccepted: the new Connection and Upgrade lines.
//   - 3 the WebSocket checks' own work: base64 decoding the key, and
//     protocol.AcceptKey's key+GUID string and base64 result.
//   - 8 http.CanonicalHeaderKey of a name that is not already canonical:
//     6 where package protocol reads a Sec-WebSocket-* field under both
//     spellings (wsValues: "Sec-WebSocket-Key" -> "Sec-Websocket-Key": 2
//     in the request check, 4 in the 101 check), and 2 for this request's
//     "Connection: keep-alive" option (checked, then removed as a
//     connection option). These are the ones worth removing (constant
//     canonical names; no canonicalizing of "keep-alive").
//
// "origins+subprotocols" adds 7: the Origin's host split (1), the
// subprotocol filter's kept list in the check and again in the rewrite (2
// each, growing from 1 to 2), and the joined string and new header line
// (2).
func BenchmarkServeHTTPAccepted(b *testing.B) {
	for _, tc := range []struct {
		name string
		h    *Handler
	}{
		{"policy", &Handler{Protocols: []string{"websocket"}}},
		{"origins+subprotocols", &Handler{Protocols: []string{"websocket"}, WebSocket: &WebSocketConfig{
			Origins:      []string{"https://example.com", "https://*.example.com"},
			Subprotocols: []string{"chat", "superchat"},
		}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := benchHandler(b, tc.h)
			const key = "dGhlIHNhbXBsZSBub25jZQ=="
			accept := protocol.AcceptKey(key)
			conn := []string{"keep-alive, Upgrade"}
			up := []string{"websocket"}
			hdr := http.Header{
				"Connection":             conn,
				"Upgrade":                up,
				"Sec-Websocket-Key":      {key},
				"Sec-Websocket-Version":  {"13"},
				"Origin":                 {"https://a.example.com"},
				"Sec-Websocket-Protocol": {"chat, superchat"},
				"User-Agent":             {"bench/1.0"},
			}
			proto := hdr["Sec-Websocket-Protocol"]
			r, repl := benchRequest(http.MethodGet, "http://example.com/ws", hdr)
			fresh := *repl
			w := newBenchWriter()
			acceptLine := []string{accept}
			upgradeLine := []string{"websocket"}
			connLine := []string{"Upgrade"}
			next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
				rh := w.Header()
				rh["Upgrade"] = upgradeLine
				rh["Connection"] = connLine
				rh["Sec-Websocket-Accept"] = acceptLine
				w.WriteHeader(http.StatusSwitchingProtocols)
				c, _, err := http.NewResponseController(w).Hijack()
				if err != nil {
					return err
				}
				return c.Close()
			})
			b.ReportAllocs()
			for b.Loop() {
				hdr["Connection"] = conn
				hdr["Upgrade"] = up
				hdr["Sec-Websocket-Protocol"] = proto
				*repl = fresh
				clear(w.h)
				w.hijacked = false
				if err := h.ServeHTTP(w, r, next); err != nil {
					b.Fatal(err)
				}
				if !w.hijacked {
					b.Fatal("no 101 went out")
				}
			}
		})
	}
}

// BenchmarkServeHTTPRefused is a plain GET on a `require` route: 426 with
// its Upgrade and Connection headers, returned as a caddyhttp.Error. The
// "nop-log" case drops the info log line; "json-log" encodes it as Caddy's
// JSON logger would (to io.Discard).
func BenchmarkServeHTTPRefused(b *testing.B) {
	for _, tc := range []struct {
		name   string
		logger *zap.Logger
	}{
		{"nop-log", zap.NewNop()},
		{"json-log", zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
			zapcore.AddSync(io.Discard), zapcore.InfoLevel)).Named("http.handlers.upgrade")},
	} {
		b.Run(tc.name, func(b *testing.B) {
			h := benchHandler(b, &Handler{Protocols: []string{"websocket"}, Require: true})
			h.logger = tc.logger
			r, repl := benchRequest(http.MethodGet, "http://example.com/ws", http.Header{"User-Agent": {"bench/1.0"}})
			fresh := *repl
			w := newBenchWriter()
			b.ReportAllocs()
			for b.Loop() {
				*repl = fresh
				clear(w.h)
				err := h.ServeHTTP(w, r, noopNext)
				if he, ok := err.(caddyhttp.HandlerError); !ok || he.StatusCode != http.StatusUpgradeRequired {
					b.Fatalf("got %v, want a 426 HandlerError", err)
				}
			}
		})
	}
}

// benchWriter is a ResponseWriter that records and can be hijacked onto a
// connection that discards what is written; none of it allocates per use.
type benchWriter struct {
	h        http.Header
	status   int
	hijacked bool
	conn     benchConn
	brw      *bufio.ReadWriter
}

func newBenchWriter() *benchWriter {
	return &benchWriter{
		h:   make(http.Header),
		brw: bufio.NewReadWriter(bufio.NewReader(strings.NewReader("")), bufio.NewWriter(io.Discard)),
	}
}

func (w *benchWriter) Header() http.Header         { return w.h }
func (w *benchWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *benchWriter) WriteHeader(code int)        { w.status = code }

func (w *benchWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.hijacked = true
	return &w.conn, w.brw, nil
}

// benchConn is a connection that is never read and swallows writes.
type benchConn struct{}

func (*benchConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (*benchConn) Write(p []byte) (int, error)      { return len(p), nil }
func (*benchConn) Close() error                     { return nil }
func (*benchConn) LocalAddr() net.Addr              { return benchAddr{} }
func (*benchConn) RemoteAddr() net.Addr             { return benchAddr{} }
func (*benchConn) SetDeadline(time.Time) error      { return nil }
func (*benchConn) SetReadDeadline(time.Time) error  { return nil }
func (*benchConn) SetWriteDeadline(time.Time) error { return nil }

type benchAddr struct{}

func (benchAddr) Network() string { return "tcp" }
func (benchAddr) String() string  { return "127.0.0.1:1" }
