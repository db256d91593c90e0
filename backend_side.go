package upgrade

import (
	"errors"
	"io"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// The backend side of a tunnel: the transport wrapper that checks the
// backend's raw 101 before Caddy's reverse proxy sees it, and the 101's
// body, the backend connection as Caddy's copiers and the module's
// engine see it.

// guardedTransport checks the backend's raw answer to an accepted upgrade
// before Caddy's reverse proxy sees it: the proxy rewrites Connection and
// Upgrade of every 101 and, for extended CONNECT, drops the Accept, so
// this is the last place the answer is whole. Embedding the HTTP transport
// keeps the optional interfaces Caddy looks for (TLS, h2c, PROXY protocol,
// health check scheme, header ops).
type guardedTransport struct {
	*reverseproxy.HTTPTransport
}

func guardTransport(rp *reverseproxy.Handler) bool {
	t, ok := rp.Transport.(*reverseproxy.HTTPTransport)
	if ok {
		rp.Transport = &guardedTransport{t}
		// Every tunnel through this proxy gets a backendBody, and Caddy's
		// copiers hand the copy to its WriteTo or the module takes the
		// tunnel over there (engine.go, tunnel.go): the buffer a copier
		// allocates per direction first would be garbage at once. A size
		// the operator set is left alone. If Caddy's copier stopped
		// handing the copy over (caddy_internals.go), it would copy a
		// byte at a time: the wrappers' Read says so once.
		if rp.StreamBufferSize == 0 {
			rp.StreamBufferSize = 1
		}
	}
	return ok
}

func (t *guardedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := t.HTTPTransport.RoundTrip(req)
	e := expectationFrom(req.Context())
	if err != nil || e == nil {
		return res, err
	}
	var reason string
	switch {
	case res.StatusCode == http.StatusSwitchingProtocols:
		reason = e.check101(req.Header, res.Header, true)
	case e.extendedConnect && res.StatusCode < 300 && res.StatusCode >= 200:
		// Caddy would relay this 2xx as if it were a tunnel.
		reason = "backend answered " + res.Status + " instead of switching protocols"
	}
	if reason == "" {
		if rwc, ok := res.Body.(io.ReadWriteCloser); ok && res.StatusCode == http.StatusSwitchingProtocols && e.tunnel != nil {
			e.tunnel.protocol = e.selected
			if di, ok := reverseproxy.GetDialInfo(req.Context()); ok {
				e.tunnel.upstream = di.Address
				if di.Upstream != nil {
					e.tunnel.host = di.Upstream.Host
				}
			}
			res.Body = newBackendBody(rwc, e.tunnel)
		}
		return res, nil
	}
	if e.invalid == "" {
		e.invalid = reason
	}
	res.Body.Close() // for a 101 the body is the backend connection
	return nil, errBackendInvalid
}

// backendBody is the backend side of a tunnel that Caddy's reverse proxy
// got from the module's transport wrapper: net/http's 101 body, with the
// copy loops of both directions.
type backendBody struct {
	rwc io.ReadWriteCloser
	t   *tunnel
	// conn is the backend connection under rwc, where writes from outside
	// the loops go: unlike rwc it takes a write deadline.
	conn io.Writer
}

func newBackendBody(rwc io.ReadWriteCloser, t *tunnel) *backendBody {
	b := &backendBody{rwc: rwc, t: t, conn: rwc}
	if _, conn, ok := switchedBody(rwc); ok {
		b.conn = conn
	}
	t.backOut.Store(&sideWriter{b.conn})
	t.mu.Lock()
	t.backBody = rwc
	t.mu.Unlock()
	return b
}

// loopConn is what the copy loops read and write past the wrapper; its
// writes are not counted (the client side counts both directions).
func (b *backendBody) loopConn() (io.ReadWriter, bool) { return b.rwc, false }

func (b *backendBody) Read(p []byte) (int, error) {
	b.t.copierReads(len(p))
	return b.rwc.Read(p)
}

// Write is for writes from outside the copy loops: Caddy's close frame,
// and bytes a client sent right behind its request.
func (b *backendBody) Write(p []byte) (int, error) {
	if b.t.up == nil {
		return b.conn.Write(p)
	}
	return b.t.outsideWrite(b.t.up, b.conn, p, func(int) {})
}

func (b *backendBody) Close() error {
	if b.t.own.Load() != nil {
		return b.t.closeFromCaddy()
	}
	return b.t.closeSide(func(reset bool) error {
		if c, ok := b.conn.(io.Closer); ok && reset {
			closeConn(c, true) // the body's Close closes it too
		}
		return b.rwc.Close()
	})
}

// CloseWrite forwards a client's half-close to the backend.
func (b *backendBody) CloseWrite() error {
	if cw, ok := b.rwc.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// WriteTo is the backend-to-client direction, unless the module takes
// the tunnel over (tunnel.go).
func (b *backendBody) WriteTo(w io.Writer) (int64, error) {
	if b.t.takeOver() {
		return 0, errHandedOver
	}
	dst, counts := pastWrapper(w)
	if _, http1 := w.(loopSide); !http1 {
		if g := h2ClientWriter(b.t, w); g != nil {
			dst, counts = guardLoop{g}, true
		} else if b.t.down != nil && b.t.owner != nil {
			b.t.owner.warn(msgNotRecognised, "reverseproxy."+caddyH2RWCType+" not recognised: over extended CONNECT, Caddy's close frame on a reload is not held to a frame boundary")
		}
	}
	return pump(dst, sourceOf(b.rwc), b.t.down, b.t.counter(counts, false))
}

// ReadFrom is the client-to-backend direction where the client side has
// no WriteTo of its own (extended CONNECT): its request body counts the
// bytes (countingBody).
func (b *backendBody) ReadFrom(r io.Reader) (int64, error) {
	return pump(b.rwc, sourceOf(r), b.t.up, nil)
}
