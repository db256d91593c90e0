package upgrade

// The contract with Caddy's and Go's internals. Every place where the
// module recognises a type or field that Caddy or the Go standard library
// does not export is here, each with what is lost when it is not
// recognised. Checked against Caddy v2.11.9 and Go 1.26; the canary tests
// (caddy_internals_test.go) open real tunnels and fail when a recognition
// stops working, and `make canary` runs them against the newest Caddy
// release. At run time a failed recognition falls back to a slower or
// less careful path and logs a warning once (tunnelOwner.warn).

import (
	"io"
	"net"
	"reflect"
	"sync/atomic"
	"unsafe"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

const (
	caddyHTTPPkg     = "github.com/caddyserver/caddy/v2/modules/caddyhttp"
	caddyProxyPkg    = "github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	caddyHijackType  = "hijackedConn"      // caddyhttp's wrapper of a hijacked connection
	caddyH2RWCType   = "h2ReadWriteCloser" // reverseproxy's client side of an extended CONNECT tunnel
	caddyHostCounter = "numRequests"       // reverseproxy.Host's count of active requests
	goHTTPPkg        = "net/http"
	goSwitchedBody   = "readWriteCloserBody" // net/http's body of a 101 response
)

// caddyHijackedConn recognises the wrapper Caddy puts around a hijacked
// connection when it records responses (access logs, metrics): its Read
// counts the bytes for the log, so the loop must read through it, but it
// may wait on the connection inside.
func caddyHijackedConn(src io.Reader) (net.Conn, bool) {
	conn, ok := embeddedIn(src, caddyHTTPPkg, caddyHijackType, "Conn").(net.Conn)
	return conn, ok
}

// embeddedIn returns the embedded field of x when x is the struct, or a
// pointer to the struct, pkg.typeName: wrappers that Caddy and net/http do
// not export, read with reflection. A release that renames one only costs
// the path that needs it (a buffer held while waiting, an ungated close
// frame), which the tunnel tests would show. nil if x is not one.
func embeddedIn(x any, pkg, typeName, field string) any {
	v := reflect.ValueOf(x)
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return nil
	}
	t := v.Type()
	if t.PkgPath() != pkg || t.Name() != typeName {
		return nil
	}
	f, ok := t.FieldByName(field)
	if !ok || !f.Anonymous || len(f.Index) != 1 {
		return nil
	}
	return v.Field(f.Index[0]).Interface()
}

// switchedBody recognises net/http's body of a 101 response (its
// unexported readWriteCloserBody): bytes the transport read past the 101
// sit in its field br until read, then reads go to its embedded
// connection. Reading the two fields needs reflection; a Go release that
// changes the type only costs the fallback path (a buffer held while
// waiting), which TestLeanTunnelHoldsNoBuffer would show.
func switchedBody(src io.Reader) (body reflect.Value, conn io.ReadWriteCloser, ok bool) {
	v := reflect.ValueOf(src)
	if v.Kind() != reflect.Pointer {
		return reflect.Value{}, nil, false
	}
	v = v.Elem()
	t := v.Type()
	if t.Kind() != reflect.Struct || t.PkgPath() != goHTTPPkg || t.Name() != goSwitchedBody {
		return reflect.Value{}, nil, false
	}
	br, hasBr := t.FieldByName("br")
	rwc, hasRWC := t.FieldByName("ReadWriteCloser")
	if !hasBr || br.Type.Kind() != reflect.Pointer || !hasRWC || !rwc.Anonymous ||
		len(br.Index) != 1 || len(rwc.Index) != 1 {
		return reflect.Value{}, nil, false
	}
	conn, ok = v.Field(rwc.Index[0]).Interface().(io.ReadWriteCloser)
	return v.Field(br.Index[0]), conn, ok
}

// caddyH2StreamWriter recognises the client side Caddy's reverse proxy
// hands its copier for a WebSocket over extended CONNECT (its
// h2ReadWriteCloser) and returns the ResponseWriter in it. Unrecognised,
// the copy loop writes through the module's response guard, which can no
// longer tell Caddy's close frame on a reload from the loop's data: that
// frame is then not gated to a frame boundary.
func caddyH2StreamWriter(dst io.Writer) any {
	return embeddedIn(dst, caddyProxyPkg, caddyH2RWCType, "ResponseWriter")
}

// upstreamRequests returns the counter of active requests of an upstream
// host, which Caddy's load balancing (least_conn), max_requests and the
// admin API read, and which Caddy's reverse proxy holds at +1 for a
// tunnel's whole life. Caddy offers no exported way to move it, so the
// field is found by reflection and moved atomically, as Caddy does. nil
// when not recognised: an owned tunnel then stops counting on its
// upstream when Caddy's handler returns.
func upstreamRequests(host *reverseproxy.Host) *atomic.Int64 {
	if host == nil {
		return nil
	}
	v := reflect.ValueOf(host).Elem()
	f, ok := v.Type().FieldByName(caddyHostCounter)
	if !ok || f.Type != reflect.TypeFor[atomic.Int64]() || len(f.Index) != 1 {
		return nil
	}
	return (*atomic.Int64)(unsafe.Pointer(v.Field(f.Index[0]).UnsafeAddr()))
}
