package upgrade

// Extended CONNECT end to end: real HTTP/2 (RFC 8441) and HTTP/3 (RFC 9220)
// clients against the in-process Caddy of harness_test.go.
//
//   - HTTP/2 is spoken with golang.org/x/net/http2's Framer and hpack
//     directly (h23H2Conn), so that the test writes :protocol itself, sees the
//     server's SETTINGS, and can send what a well-behaved Transport refuses
//     to (:protocol on a GET, a :protocol that is not a token). It runs over
//     TLS (ALPN h2, `tls internal`) and over h2c with prior knowledge.
//   - HTTP/3 uses github.com/quic-go/quic-go/http3: a ClientConn on a QUIC
//     connection, request streams, and a CONNECT request whose Proto is the
//     :protocol (quic-go's convention, which Caddy and the module follow).
//   - WebSocket messages are framed by hand over the tunnel (h23WSWrite,
//     h23WSRead): client frames masked, server frames unmasked.
//
// Caddy v2.11.9 serves HTTP/2 (h2 and h2c) with golang.org/x/net/http2
// (http2.ConfigureServer), which sends SETTINGS_ENABLE_CONNECT_PROTOCOL only
// when the environment of the process held GODEBUG=http2xconnect=1 at start
// (read by os.Getenv in that package's init). Caddy runs in this test
// process, so these tests need GODEBUG=http2xconnect=1 in the environment of
// `go test`, as `make test` sets it. quic-go advertises extended CONNECT on
// HTTP/3 unconditionally.
//
// Test names start with TestH2 or TestH3 (-run 'H2|H3').

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// ---------------------------------------------------------------------------
// Caddy configuration for HTTP/2 and HTTP/3

// h23GlobalOptions is harnessGlobalOptions with extra global option lines.
func h23GlobalOptions(extra string) string {
	g := strings.TrimRight(harnessGlobalOptions(), "\n")
	g = strings.TrimSuffix(g, "}")
	return g + extra + "\n}\n"
}

// h23HTTPSAddr is where clients dial Caddy's HTTPS server (TCP and UDP).
var h23HTTPSAddr = fmt.Sprintf("127.0.0.1:%d", harnessHTTPSPort)

// h23Authority is the :authority of requests to the HTTPS site.
var h23Authority = fmt.Sprintf("localhost:%d", harnessHTTPSPort)

// loadH23Routes loads routes (site directives) into two sites: the plain
// HTTP one on harnessHTTPPort (HTTP/1.1 and h2c) and `localhost` on
// harnessHTTPSPort with `tls internal` (HTTP/1.1, h2 and h3), with every
// HTTP version switched on.
func loadH23Routes(t *testing.T, routes string) {
	t.Helper()
	loadCaddyRaw(t, h23Config(routes), "caddyfile")
	waitH23Certificate(t, h23HTTPSAddr, "localhost")
}

// h23Config is the Caddyfile loadH23Routes loads.
func h23Config(routes string) string {
	return h23GlobalOptions(`
	auto_https disable_redirects
	servers {
		protocols h1 h2 h2c h3
	}`) + fmt.Sprintf(`
:%d {
%s
}

localhost:%d {
	tls internal
%s
}
`, harnessHTTPPort, routes, harnessHTTPSPort, routes)
}

// waitH23Certificate waits until Caddy completes TLS handshakes for
// serverName on addr: `tls internal` issues the certificate in the
// background after the config loads, and handshakes fail until then.
func waitH23Certificate(t testing.TB, addr, serverName string) {
	t.Helper()
	var last error
	ok := pollUntil(20*time.Second, func() bool {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, &tls.Config{
			ServerName:         serverName,
			InsecureSkipVerify: true,
		})
		if err != nil {
			last = err
			return false
		}
		c.Close()
		return true
	})
	if !ok {
		t.Fatalf("Caddy served no certificate for %s on %s within 20s: %v", serverName, addr, last)
	}
}

// h23GODEBUGHint explains a missing SETTINGS_ENABLE_CONNECT_PROTOCOL.
const h23GODEBUGHint = "Caddy v2.11.9 serves HTTP/2 with golang.org/x/net/http2, which advertises RFC 8441 " +
	"only when GODEBUG=http2xconnect=1 was in the process environment at start; Caddy runs inside " +
	"the test binary here, so run `GODEBUG=http2xconnect=1 go test ...` (make test does)"

// ---------------------------------------------------------------------------
// A raw HTTP/2 client

// h23H2Conn is one HTTP/2 connection driven frame by frame.
type h23H2Conn struct {
	t    testing.TB
	conn net.Conn
	fr   *http2.Framer

	wmu  sync.Mutex // guards fr's write side, henc and hbuf
	henc *hpack.Encoder
	hbuf bytes.Buffer

	settingsCh chan struct{} // closed on the server's first SETTINGS

	mu       sync.Mutex
	settings map[http2.SettingID]uint32
	streams  map[uint32]*h23H2Stream
	nextID   uint32
	readErr  error
}

// h23H2Stream is one request stream of an h23H2Conn.
type h23H2Stream struct {
	c       *h23H2Conn
	id      uint32
	headers chan h23H2Response // the final response head, or the reset
	gotHead bool               // guarded by c.mu
	body    h23StreamBuf
}

// h23H2Response is a response head: its status, its regular fields (names
// as on the wire, lower case) and, for a reset stream, the error.
type h23H2Response struct {
	Status int
	Header http.Header
	Fields []hpack.HeaderField
	Err    error
}

// dialH23H2 opens an HTTP/2 connection to Caddy: over TLS with ALPN h2 to
// the HTTPS port, or with prior knowledge (h2c) to the HTTP port. It
// exchanges SETTINGS before returning.
func dialH23H2(t testing.TB, useTLS bool) *h23H2Conn {
	t.Helper()
	var conn net.Conn
	var err error
	if useTLS {
		d := &net.Dialer{Timeout: harnessIO}
		var tc *tls.Conn
		tc, err = tls.DialWithDialer(d, "tcp", h23HTTPSAddr, &tls.Config{
			ServerName:         "localhost",
			InsecureSkipVerify: true, // Caddy's internal CA
			NextProtos:         []string{http2.NextProtoTLS},
		})
		if err == nil && tc.ConnectionState().NegotiatedProtocol != http2.NextProtoTLS {
			tc.Close()
			err = fmt.Errorf("ALPN negotiated %q, want h2", tc.ConnectionState().NegotiatedProtocol)
		}
		conn = tc
	} else {
		conn, err = net.DialTimeout("tcp", harnessAddr, harnessIO)
	}
	if err != nil {
		t.Fatalf("HTTP/2 dial (tls %v): %v", useTLS, err)
	}
	c := &h23H2Conn{
		t:          t,
		conn:       conn,
		fr:         http2.NewFramer(conn, conn),
		settingsCh: make(chan struct{}),
		settings:   map[http2.SettingID]uint32{},
		streams:    map[uint32]*h23H2Stream{},
		nextID:     1,
	}
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.fr.MaxHeaderListSize = 1 << 20
	c.henc = hpack.NewEncoder(&c.hbuf)
	t.Cleanup(func() { conn.Close() })

	conn.SetWriteDeadline(time.Now().Add(harnessIO))
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatalf("HTTP/2 preface: %v", err)
	}
	c.wmu.Lock()
	err = c.fr.WriteSettings()
	c.wmu.Unlock()
	if err != nil {
		t.Fatalf("HTTP/2 SETTINGS: %v", err)
	}
	go c.readLoop()
	select {
	case <-c.settingsCh:
	case <-time.After(harnessIO):
		t.Fatalf("HTTP/2: no SETTINGS from the server within %v (read error: %v)", harnessIO, c.err())
	}
	return c
}

func (c *h23H2Conn) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readErr
}

// Setting is the value of a setting in the server's first SETTINGS frame.
func (c *h23H2Conn) Setting(id http2.SettingID) (uint32, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.settings[id]
	return v, ok
}

// requireExtendedConnect fails the test unless the server advertised
// SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (RFC 8441 §3).
func (c *h23H2Conn) requireExtendedConnect() {
	c.t.Helper()
	if v, ok := c.Setting(http2.SettingEnableConnectProtocol); !ok || v != 1 {
		c.t.Fatalf("server SETTINGS have ENABLE_CONNECT_PROTOCOL = %d (sent: %v), want 1: %s", v, ok, h23GODEBUGHint)
	}
}

func (c *h23H2Conn) write(f func(fr *http2.Framer) error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.conn.SetWriteDeadline(time.Now().Add(harnessIO))
	return f(c.fr)
}

func (c *h23H2Conn) readLoop() {
	var err error
	first := true
	for {
		var f http2.Frame
		f, err = c.fr.ReadFrame()
		if err != nil {
			break
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			if first {
				c.mu.Lock()
				f.ForeachSetting(func(s http2.Setting) error {
					c.settings[s.ID] = s.Val
					return nil
				})
				c.mu.Unlock()
				first = false
				close(c.settingsCh)
			}
			c.write(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
		case *http2.PingFrame:
			if !f.IsAck() {
				c.write(func(fr *http2.Framer) error { return fr.WritePing(true, f.Data) })
			}
		case *http2.MetaHeadersFrame:
			s := c.stream(f.StreamID)
			if s == nil {
				continue
			}
			status := 0
			fmt.Sscan(f.PseudoValue("status"), &status)
			if status >= 100 && status < 200 {
				continue // interim
			}
			c.mu.Lock()
			head := !s.gotHead
			s.gotHead = true
			c.mu.Unlock()
			if head {
				res := h23H2Response{Status: status, Header: http.Header{}, Fields: f.Fields}
				for _, hf := range f.RegularFields() {
					res.Header.Add(hf.Name, hf.Value)
				}
				s.headers <- res
			}
			if f.StreamEnded() {
				s.body.close(io.EOF)
			}
		case *http2.DataFrame:
			s := c.stream(f.StreamID)
			if n := len(f.Data()); n > 0 {
				c.write(func(fr *http2.Framer) error {
					if err := fr.WriteWindowUpdate(0, uint32(n)); err != nil {
						return err
					}
					if s != nil && !f.StreamEnded() {
						return fr.WriteWindowUpdate(f.StreamID, uint32(n))
					}
					return nil
				})
			}
			if s == nil {
				continue
			}
			s.body.write(f.Data())
			if f.StreamEnded() {
				s.body.close(io.EOF)
			}
		case *http2.RSTStreamFrame:
			if s := c.stream(f.StreamID); s != nil {
				rst := fmt.Errorf("stream reset by the server: %v", f.ErrCode)
				c.mu.Lock()
				head := !s.gotHead
				s.gotHead = true
				c.mu.Unlock()
				if head {
					s.headers <- h23H2Response{Err: rst}
				}
				s.body.close(rst)
			}
		case *http2.GoAwayFrame:
			// The streams it ends are reset or finish on their own.
		}
	}
	c.mu.Lock()
	c.readErr = err
	streams := make([]*h23H2Stream, 0, len(c.streams))
	for _, s := range c.streams {
		streams = append(streams, s)
	}
	c.mu.Unlock()
	for _, s := range streams {
		c.mu.Lock()
		head := !s.gotHead
		s.gotHead = true
		c.mu.Unlock()
		if head {
			s.headers <- h23H2Response{Err: fmt.Errorf("connection ended: %w", err)}
		}
		s.body.close(err)
	}
}

func (c *h23H2Conn) stream(id uint32) *h23H2Stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

// Open sends a request head. fields are written in order, pseudo-headers
// first as given; endStream ends the request (no body).
func (c *h23H2Conn) Open(fields [][2]string, endStream bool) *h23H2Stream {
	c.t.Helper()
	c.mu.Lock()
	id := c.nextID
	c.nextID += 2
	s := &h23H2Stream{c: c, id: id, headers: make(chan h23H2Response, 1)}
	s.body.init()
	c.streams[id] = s
	c.mu.Unlock()
	err := c.write(func(fr *http2.Framer) error {
		c.hbuf.Reset()
		for _, f := range fields {
			if err := c.henc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
				return err
			}
		}
		return fr.WriteHeaders(http2.HeadersFrameParam{
			StreamID:      id,
			BlockFragment: c.hbuf.Bytes(),
			EndStream:     endStream,
			EndHeaders:    true,
		})
	})
	if err != nil {
		c.t.Fatalf("HTTP/2 HEADERS: %v", err)
	}
	return s
}

// Response waits for the response head.
func (s *h23H2Stream) Response() h23H2Response {
	select {
	case r := <-s.headers:
		return r
	case <-time.After(harnessIO):
		return h23H2Response{Err: fmt.Errorf("no response head within %v", harnessIO)}
	}
}

// Write sends p as DATA frames (no flow control: keep it under 64 KiB).
func (s *h23H2Stream) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p
		if len(chunk) > 16384 {
			chunk = chunk[:16384]
		}
		if err := s.c.write(func(fr *http2.Framer) error { return fr.WriteData(s.id, false, chunk) }); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// Read reads DATA payloads; it gives up after harnessIO without data.
func (s *h23H2Stream) Read(p []byte) (int, error) { return s.body.Read(p) }

// ReadAll reads the body until END_STREAM.
func (s *h23H2Stream) ReadAll() (string, error) {
	b, err := io.ReadAll(s)
	return string(b), err
}

// h23StreamBuf is an unbounded buffer between the frame reader and a
// consumer, so that an unread body never blocks the connection.
type h23StreamBuf struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	err    error
	notify chan struct{}
}

func (b *h23StreamBuf) init() { b.notify = make(chan struct{}) }

func (b *h23StreamBuf) signal() {
	close(b.notify)
	b.notify = make(chan struct{})
}

func (b *h23StreamBuf) write(p []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.buf.Write(p)
		b.signal()
	}
}

func (b *h23StreamBuf) close(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		if err == nil {
			err = io.EOF
		}
		b.err = err
		b.signal()
	}
}

var errH23Timeout = errors.New("timed out waiting for stream data")

func (b *h23StreamBuf) Read(p []byte) (int, error) {
	deadline := time.NewTimer(harnessIO)
	defer deadline.Stop()
	for {
		b.mu.Lock()
		if b.buf.Len() > 0 {
			n, _ := b.buf.Read(p)
			b.mu.Unlock()
			return n, nil
		}
		if b.err != nil {
			err := b.err
			b.mu.Unlock()
			return 0, err
		}
		ch := b.notify
		b.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			return 0, errH23Timeout
		}
	}
}

// h23H2Request is the header list of an HTTP/2 request: pseudo-headers for
// method and path on the site (scheme and authority follow useTLS), then
// extra fields ("name", "value", ... lower-case names).
func h23H2Request(useTLS bool, method, path string, extra ...string) [][2]string {
	scheme, authority := "http", harnessAddr
	if useTLS {
		scheme, authority = "https", h23Authority
	}
	f := [][2]string{{":method", method}, {":scheme", scheme}, {":authority", authority}, {":path", path}}
	for i := 0; i+1 < len(extra); i += 2 {
		f = append(f, [2]string{extra[i], extra[i+1]})
	}
	return f
}

// h23H2Connect is an extended CONNECT: :protocol proto on path, then extra.
func h23H2Connect(useTLS bool, proto, path string, extra ...string) [][2]string {
	f := h23H2Request(useTLS, "CONNECT", path)
	f = append(f, [2]string{":protocol", proto})
	for i := 0; i+1 < len(extra); i += 2 {
		f = append(f, [2]string{extra[i], extra[i+1]})
	}
	return f
}

// ---------------------------------------------------------------------------
// HTTP/3 client

// dialH23H3 opens a QUIC connection to Caddy's HTTPS port and an HTTP/3
// client connection on it, and waits for the server's SETTINGS.
func dialH23H3(t testing.TB) *http3.ClientConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), harnessIO)
	defer cancel()
	qc, err := quic.DialAddr(ctx, h23HTTPSAddr, &tls.Config{
		ServerName:         "localhost",
		InsecureSkipVerify: true, // Caddy's internal CA
		NextProtos:         []string{http3.NextProtoH3},
	}, &quic.Config{MaxIdleTimeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("QUIC dial %s: %v", h23HTTPSAddr, err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	tr := &http3.Transport{DisableCompression: true}
	cc := tr.NewClientConn(qc)
	select {
	case <-cc.ReceivedSettings():
	case <-ctx.Done():
		t.Fatalf("HTTP/3: no SETTINGS from the server within %v", harnessIO)
	}
	return cc
}

// h23H3Do sends req (no body) on a new request stream of cc and reads the
// response head. For CONNECT the stream stays open for the tunnel; for
// other methods the request side is closed after the head.
func h23H3Do(t testing.TB, cc *http3.ClientConn, req *http.Request) (*http.Response, *http3.RequestStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), harnessIO)
	defer cancel()
	str, err := cc.OpenRequestStream(ctx)
	if err != nil {
		t.Fatalf("HTTP/3 open stream: %v", err)
	}
	t.Cleanup(func() { str.CancelRead(0); str.Close() })
	if err := str.SendRequestHeader(req); err != nil {
		t.Fatalf("HTTP/3 send %s %s: %v", req.Method, req.URL, err)
	}
	if req.Method != http.MethodConnect {
		str.Close()
	}
	str.SetReadDeadline(time.Now().Add(harnessIO))
	res, err := str.ReadResponse()
	if err != nil {
		t.Fatalf("HTTP/3 response to %s %s: %v", req.Method, req.URL, err)
	}
	str.SetReadDeadline(time.Time{})
	return res, str
}

// h23H3Request is a request to the HTTPS site; for an extended CONNECT give
// the :protocol as proto ("" for other requests). extra: name, value, ...
func h23H3Request(t testing.TB, method, proto, path string, extra ...string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, "https://"+h23Authority+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Body = nil
	if proto != "" {
		req.Proto = proto // quic-go sends a CONNECT's Proto as :protocol
	}
	for i := 0; i+1 < len(extra); i += 2 {
		req.Header.Add(extra[i], extra[i+1])
	}
	return req
}

// h23H3Stream adapts a request stream to a deadline-bound io.ReadWriter.
type h23H3Stream struct{ *http3.RequestStream }

func (s h23H3Stream) Read(p []byte) (int, error) {
	s.SetReadDeadline(time.Now().Add(harnessIO))
	return s.RequestStream.Read(p)
}

func (s h23H3Stream) Write(p []byte) (int, error) {
	s.SetWriteDeadline(time.Now().Add(harnessIO))
	return s.RequestStream.Write(p)
}

// ---------------------------------------------------------------------------
// WebSocket framing over a tunnel (RFC 6455 §5)

// h23WSWrite writes one final, masked client frame.
func h23WSWrite(w io.Writer, opcode byte, payload []byte) error {
	var hdr []byte
	hdr = append(hdr, 0x80|opcode)
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n <= 0xffff:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	var mask [4]byte
	rand.Read(mask[:])
	hdr = append(hdr, mask[:]...)
	masked := make([]byte, len(payload))
	for i, b := range payload {
		masked[i] = b ^ mask[i%4]
	}
	_, err := w.Write(append(hdr, masked...))
	return err
}

// h23WSRead reads one server frame, which must be final and unmasked.
func h23WSRead(r io.Reader) (opcode byte, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	if h[0]&0x80 == 0 {
		return 0, nil, errors.New("fragmented server frame")
	}
	if h[1]&0x80 != 0 {
		return 0, nil, errors.New("masked server frame")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err = io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err = io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > 1<<20 {
		return 0, nil, fmt.Errorf("server frame of %d bytes", n)
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(r, payload)
	return h[0] & 0x0f, payload, err
}

// h23WSEcho sends msg as a text frame over rw and fails the test unless the
// same text frame comes back.
func h23WSEcho(t testing.TB, rw io.ReadWriter, msg string) {
	t.Helper()
	if err := h23WSWrite(rw, 0x1, []byte(msg)); err != nil {
		t.Fatalf("WebSocket frame write: %v", err)
	}
	op, got, err := h23WSRead(rw)
	if err != nil {
		t.Fatalf("WebSocket frame read: %v", err)
	}
	if op != 0x1 || string(got) != msg {
		t.Fatalf("WebSocket echo: got opcode %d %.60q, want text %.60q", op, got, msg)
	}
}

// h23H1Tunnel is a raw HTTP/1.1 connection after its 101, with deadlines.
type h23H1Tunnel struct{ c *rawClient }

func (x h23H1Tunnel) Read(p []byte) (int, error) {
	x.c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
	return x.c.R.Read(p)
}

func (x h23H1Tunnel) Write(p []byte) (int, error) {
	x.c.Conn.SetWriteDeadline(time.Now().Add(harnessIO))
	return x.c.Conn.Write(p)
}

// ---------------------------------------------------------------------------
// One request over any HTTP version

// h23Transport names how a request reaches Caddy.
type h23Transport string

const (
	h23H1  h23Transport = "h1"  // HTTP/1.1, plain TCP
	h23H2  h23Transport = "h2"  // HTTP/2 over TLS
	h23H2C h23Transport = "h2c" // HTTP/2 with prior knowledge, plain TCP
	h23H3  h23Transport = "h3"  // HTTP/3 over QUIC
)

// h23Offer is what a request asks for, written the way each version writes
// it: an HTTP/1.1 Upgrade handshake or an extended CONNECT.
type h23Offer struct {
	protocol string // "" for no offer (a plain GET)
	version  string // Sec-WebSocket-Version for websocket ("13" if empty)
	origin   string
}

// h23Result is what came back, whatever the version.
type h23Result struct {
	Status int
	Header http.Header
	Body   string // read in full unless the request switched
	// Tunnel is the switched stream or connection (101 on HTTP/1.1, 2xx on
	// extended CONNECT); nil otherwise.
	Tunnel io.ReadWriter
}

// h23Do sends one request offering o on path over tr.
func h23Do(t *testing.T, tr h23Transport, path string, o h23Offer) h23Result {
	t.Helper()
	version := o.version
	if version == "" {
		version = "13"
	}
	isWS := strings.EqualFold(o.protocol, "websocket")
	switch tr {
	case h23H1:
		var lines []string
		switch {
		case isWS:
			lines = append(lines, "Connection: Upgrade", "Upgrade: "+o.protocol,
				"Sec-WebSocket-Key: "+newWebSocketKey(), "Sec-WebSocket-Version: "+version)
		case o.protocol != "":
			lines = append(lines, "Connection: Upgrade", "Upgrade: "+o.protocol)
		}
		if o.origin != "" {
			lines = append(lines, "Origin: "+o.origin)
		}
		c := dialRaw(t)
		c.Send(rawRequest("GET", path, lines...))
		c.Conn.SetReadDeadline(time.Now().Add(harnessIO))
		res, err := http.ReadResponse(c.R, nil)
		if err != nil {
			t.Fatalf("h1 %s: reading response: %v", path, err)
		}
		c.Conn.SetReadDeadline(time.Time{})
		if res.StatusCode == http.StatusSwitchingProtocols {
			return h23Result{Status: res.StatusCode, Header: res.Header, Tunnel: h23H1Tunnel{c}}
		}
		body, _ := io.ReadAll(res.Body)
		return h23Result{Status: res.StatusCode, Header: res.Header, Body: string(body)}

	case h23H2, h23H2C:
		useTLS := tr == h23H2
		c := dialH23H2(t, useTLS)
		var s *h23H2Stream
		if o.protocol == "" {
			s = c.Open(h23H2Request(useTLS, "GET", path), true)
		} else {
			c.requireExtendedConnect()
			var extra []string
			if isWS {
				extra = append(extra, "sec-websocket-version", version)
			}
			if o.origin != "" {
				extra = append(extra, "origin", o.origin)
			}
			s = c.Open(h23H2Connect(useTLS, o.protocol, path, extra...), false)
		}
		res := s.Response()
		if res.Err != nil {
			t.Fatalf("%s %s: %v", tr, path, res.Err)
		}
		if o.protocol != "" && res.Status >= 200 && res.Status < 300 {
			return h23Result{Status: res.Status, Header: res.Header, Tunnel: s}
		}
		body, err := s.ReadAll()
		if err != nil {
			t.Fatalf("%s %s: reading body of %d: %v", tr, path, res.Status, err)
		}
		return h23Result{Status: res.Status, Header: res.Header, Body: body}

	case h23H3:
		cc := dialH23H3(t)
		var req *http.Request
		if o.protocol == "" {
			req = h23H3Request(t, "GET", "", path)
		} else {
			if !cc.Settings().EnableExtendedConnect {
				t.Fatalf("HTTP/3 server SETTINGS do not enable extended CONNECT (RFC 9220)")
			}
			var extra []string
			if isWS {
				extra = append(extra, "Sec-WebSocket-Version", version)
			}
			if o.origin != "" {
				extra = append(extra, "Origin", o.origin)
			}
			req = h23H3Request(t, "CONNECT", o.protocol, path, extra...)
		}
		res, str := h23H3Do(t, cc, req)
		if o.protocol != "" && res.StatusCode >= 200 && res.StatusCode < 300 {
			return h23Result{Status: res.StatusCode, Header: res.Header, Tunnel: h23H3Stream{str}}
		}
		str.SetReadDeadline(time.Now().Add(harnessIO))
		body, err := io.ReadAll(res.Body)
		if err != nil {
			t.Fatalf("h3 %s: reading body of %d: %v", path, res.StatusCode, err)
		}
		return h23Result{Status: res.StatusCode, Header: res.Header, Body: string(body)}
	}
	t.Fatalf("unknown transport %q", tr)
	return h23Result{}
}

// h23RequireNoUpgradeFields fails if an HTTP/2-3 response carries the
// connection-specific fields of a 426 (RFC 9113 §8.2.2, RFC 9114 §4.2).
func h23RequireNoUpgradeFields(t *testing.T, res h23Result) {
	t.Helper()
	for _, name := range []string{"Upgrade", "Connection"} {
		if v, ok := res.Header[name]; ok {
			t.Errorf("response %d carries %s: %q, which HTTP/2 and HTTP/3 forbid", res.Status, name, v)
		}
	}
}

// h23RequireWSVersion13 fails unless the response names version 13.
func h23RequireWSVersion13(t *testing.T, res h23Result) {
	t.Helper()
	if got := res.Header.Values("Sec-WebSocket-Version"); len(got) != 1 || got[0] != "13" {
		t.Errorf("response %d: Sec-WebSocket-Version %q, want [\"13\"]", res.Status, got)
	}
}

// ---------------------------------------------------------------------------
// Tests

// The server advertises extended CONNECT: SETTINGS_ENABLE_CONNECT_PROTOCOL
// on h2 and h2c (with GODEBUG=http2xconnect=1), SETTINGS_ENABLE_CONNECT_PROTOCOL
// on h3 (always).
func TestH2H3ExtendedConnectAdvertised(t *testing.T) {
	loadH23Routes(t, `	respond "ok"`)
	for _, useTLS := range []bool{true, false} {
		name := map[bool]string{true: "h2", false: "h2c"}[useTLS]
		t.Run(name, func(t *testing.T) {
			c := dialH23H2(t, useTLS)
			c.requireExtendedConnect()
			s := c.Open(h23H2Request(useTLS, "GET", "/"), true)
			if res := s.Response(); res.Err != nil || res.Status != 200 {
				t.Fatalf("GET over %s: %+v", name, res)
			}
		})
	}
	t.Run("h3", func(t *testing.T) {
		cc := dialH23H3(t)
		if !cc.Settings().EnableExtendedConnect {
			t.Fatalf("HTTP/3 SETTINGS do not enable extended CONNECT")
		}
	})
}

// A WebSocket echo round trip over extended CONNECT, delegated to the
// embedded proxy and in policy-only mode before reverse_proxy, over h2,
// h2c and h3. Caddy's reverse proxy turns it into an HTTP/1.1 upgrade.
func TestH2H3WebSocketEcho(t *testing.T) {
	backend := newRecordingBackend(t, answerEcho())
	loadH23Routes(t, fmt.Sprintf(`
	handle /proxy/* {
		upgrade websocket {
			to %[1]s
		}
		respond "next handler"
	}
	handle /policy/* {
		upgrade websocket
		reverse_proxy %[1]s
	}`, backend.Addr()))

	for _, tr := range []h23Transport{h23H2, h23H2C, h23H3} {
		for _, path := range []string{"/proxy/chat", "/policy/chat"} {
			// The client's :protocol is a token compared case-insensitively;
			// the backend is asked for the configured name.
			for _, proto := range []string{"websocket", "WebSocket"} {
				t.Run(fmt.Sprintf("%s%s/%s", tr, path, proto), func(t *testing.T) {
					res := h23Do(t, tr, path, h23Offer{protocol: proto})
					if res.Status != http.StatusOK || res.Tunnel == nil {
						t.Fatalf("extended CONNECT: status %d, want 200 and a tunnel; headers %v; body %q", res.Status, res.Header, res.Body)
					}
					h23RequireNoUpgradeFields(t, res)
					if v, ok := res.Header["Sec-Websocket-Accept"]; ok {
						t.Errorf("200 carries Sec-WebSocket-Accept %q (RFC 8441 §5: none)", v)
					}
					h23WSEcho(t, res.Tunnel, "hello over "+string(tr))
					h23WSEcho(t, res.Tunnel, strings.Repeat("x", 10000))
					rec := backend.LastRequest()
					if rec.RequestURI != path || !rec.Switched || rec.Method != http.MethodGet {
						t.Errorf("backend's latest request: %s %s (switched %v), want the GET upgrade of %s", rec.Method, rec.RequestURI, rec.Switched, path)
					}
					checkForwardedUpgrade(t, rec, "websocket")
				})
			}
		}
	}
}

// A :protocol the route does not allow: 501 (RFC 8441 §4's answer for an
// unsupported protocol), 403 under on_disallowed reject; no byte reaches
// the backend.
func TestH2H3DisallowedProtocol(t *testing.T) {
	backend := newRecordingBackend(t, answerNaive())
	loadH23Routes(t, fmt.Sprintf(`
	handle /ignore/* {
		upgrade websocket {
			to %[1]s
		}
		respond "next handler"
	}
	handle /reject/* {
		upgrade websocket {
			on_disallowed reject
			to %[1]s
		}
		respond "next handler"
	}`, backend.Addr()))
	for _, tr := range []h23Transport{h23H2, h23H2C, h23H3} {
		for _, c := range []struct {
			path string
			want int
		}{{"/ignore/x", http.StatusNotImplemented}, {"/reject/x", http.StatusForbidden}} {
			t.Run(string(tr)+c.path, func(t *testing.T) {
				snap := backend.Snapshot()
				res := h23Do(t, tr, c.path, h23Offer{protocol: "foo"})
				if res.Status != c.want {
					t.Fatalf(":protocol foo on %s: status %d, want %d; headers %v; body %q", c.path, res.Status, c.want, res.Header, res.Body)
				}
				h23RequireNoUpgradeFields(t, res)
				backend.RequireUntouchedSince(snap, "disallowed :protocol")
			})
		}
	}
}

// Sec-WebSocket-Version other than 13: 400 on HTTP/2-3 (never 426), with
// Sec-WebSocket-Version: 13. A missing version is a plain 400.
func TestH2H3WebSocketVersion(t *testing.T) {
	backend := newRecordingBackend(t, answerEcho())
	loadH23Routes(t, fmt.Sprintf(`
	upgrade websocket {
		to %s
	}
	respond "next handler"`, backend.Addr()))
	for _, tr := range []h23Transport{h23H2, h23H2C, h23H3} {
		t.Run(string(tr), func(t *testing.T) {
			snap := backend.Snapshot()
			res := h23Do(t, tr, "/ws", h23Offer{protocol: "websocket", version: "8"})
			if res.Status != http.StatusBadRequest {
				t.Fatalf("version 8: status %d, want 400; headers %v; body %q", res.Status, res.Header, res.Body)
			}
			h23RequireWSVersion13(t, res)
			h23RequireNoUpgradeFields(t, res)
			backend.RequireUntouchedSince(snap, "bad Sec-WebSocket-Version")
		})
	}
	t.Run("h2 missing version", func(t *testing.T) {
		c := dialH23H2(t, true)
		c.requireExtendedConnect()
		snap := backend.Snapshot()
		res := c.Open(h23H2Connect(true, "websocket", "/ws"), false).Response()
		if res.Err != nil || res.Status != http.StatusBadRequest {
			t.Fatalf("no Sec-WebSocket-Version: %+v, want 400", res)
		}
		backend.RequireUntouchedSince(snap, "missing Sec-WebSocket-Version")
	})
}

// A foreign Origin on a route with origins: 403 over h2, h2c and h3; the
// listed origin passes.
func TestH2H3ForeignOrigin(t *testing.T) {
	backend := newRecordingBackend(t, answerEcho())
	loadH23Routes(t, fmt.Sprintf(`
	upgrade websocket {
		origins https://good.example
		to %s
	}
	respond "next handler"`, backend.Addr()))
	for _, tr := range []h23Transport{h23H2, h23H2C, h23H3} {
		t.Run(string(tr), func(t *testing.T) {
			snap := backend.Snapshot()
			res := h23Do(t, tr, "/ws", h23Offer{protocol: "websocket", origin: "https://evil.example"})
			if res.Status != http.StatusForbidden {
				t.Fatalf("foreign Origin: status %d, want 403; headers %v; body %q", res.Status, res.Header, res.Body)
			}
			backend.RequireUntouchedSince(snap, "foreign Origin")
			res = h23Do(t, tr, "/ws", h23Offer{protocol: "websocket", origin: "https://good.example"})
			if res.Status != http.StatusOK || res.Tunnel == nil {
				t.Fatalf("listed Origin: status %d, want 200; body %q", res.Status, res.Body)
			}
			h23WSEcho(t, res.Tunnel, "good origin")
		})
	}
}

// The backend refuses: its 403 reaches the client as it is; a 200 that does
// not switch protocols, or a 101 that fails the checks, becomes 502 carrying
// none of the backend's fields. Delegated to the embedded proxy (/d/...) and
// policy-only before reverse_proxy (/p/...). Policy-only, the module sees
// only what reverse_proxy writes, which on HTTP/2-3 has neither the backend's
// status nor its Accept (docs/behaviour.md §5, "Where the answer can be
// checked"): there only the 403 and the 101 naming another protocol are
// asserted.
func TestH2H3BackendRefuses(t *testing.T) {
	backends := map[string]*recordingBackend{
		"403":        newRecordingBackend(t, answerRefuse(http.StatusForbidden, "X-Backend: refused")),
		"200":        newRecordingBackend(t, answerRefuse(http.StatusOK, "X-Backend: refused")),
		"bad-accept": newRecordingBackend(t, answerSwitch(true, "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Accept: d3JvbmcK", "X-Backend: refused")),
		"other-101":  newRecordingBackend(t, answerSwitch(true, "Connection: Upgrade", "Upgrade: foo", "Sec-WebSocket-Accept: {accept}", "X-Backend: refused")),
	}
	var routes strings.Builder
	for name, b := range backends {
		fmt.Fprintf(&routes, `
	handle /d/%[1]s/* {
		upgrade websocket {
			to %[2]s
		}
		respond "next handler"
	}
	handle /p/%[1]s/* {
		upgrade websocket
		reverse_proxy %[2]s
	}`, name, b.Addr())
	}
	loadH23Routes(t, routes.String())
	for _, tr := range []h23Transport{h23H2, h23H2C, h23H3} {
		for _, mode := range []string{"d", "p"} {
			t.Run(fmt.Sprintf("%s/%s/403", tr, mode), func(t *testing.T) {
				res := h23Do(t, tr, "/"+mode+"/403/ws", h23Offer{protocol: "websocket"})
				if res.Status != http.StatusForbidden || res.Body != "refused" || res.Header.Get("X-Backend") != "refused" {
					t.Fatalf("backend 403: got %d %v %q, want the backend's 403 with body \"refused\"", res.Status, res.Header, res.Body)
				}
				if rec := backends["403"].LastRequest(); rec.Method != http.MethodGet || !h23IsUpgradeHeader(rec.Header) {
					t.Errorf("backend got %s %v, want an HTTP/1.1 WebSocket upgrade", rec.Method, rec.Header)
				}
			})
			for _, name := range []string{"200", "bad-accept", "other-101"} {
				if mode == "p" && name != "other-101" {
					continue
				}
				t.Run(fmt.Sprintf("%s/%s/%s", tr, mode, name), func(t *testing.T) {
					res := h23Do(t, tr, "/"+mode+"/"+name+"/ws", h23Offer{protocol: "websocket"})
					if res.Status != http.StatusBadGateway {
						t.Fatalf("backend %s: status %d, want 502; headers %v; body %q", name, res.Status, res.Header, res.Body)
					}
					if res.Header.Get("X-Backend") != "" || strings.Contains(res.Body, "refused") {
						t.Errorf("502 carries the backend's answer: %v %q", res.Header, res.Body)
					}
				})
			}
		}
	}
}

// With proxy, only websocket can be delegated over extended CONNECT
// (Caddy's reverse proxy converts only that one): another allowed
// :protocol gets 501 and never reaches the backend.
func TestH2H3DelegateOnlyWebSocket(t *testing.T) {
	backend := newRecordingBackend(t, answerNaive())
	loadH23Routes(t, fmt.Sprintf(`
	upgrade websocket foo {
		to %s
	}
	respond "next handler"`, backend.Addr()))
	for _, tr := range []h23Transport{h23H2, h23H2C, h23H3} {
		t.Run(string(tr), func(t *testing.T) {
			snap := backend.Snapshot()
			res := h23Do(t, tr, "/x", h23Offer{protocol: "foo"})
			if res.Status != http.StatusNotImplemented {
				t.Fatalf(":protocol foo delegated: status %d, want 501; headers %v; body %q", res.Status, res.Header, res.Body)
			}
			backend.RequireUntouchedSince(snap, "delegated :protocol foo")
		})
	}
}

func h23IsUpgradeHeader(h http.Header) bool {
	return isUpgradeRequest(&http.Request{Header: h})
}

// A require route and a request without any offer: 400 on HTTP/2-3, never
// 426 and never an Upgrade field (the 426 of HTTP/1.1 cannot be sent).
func TestH2H3RequireWithoutOffer(t *testing.T) {
	loadH23Routes(t, `
	upgrade websocket {
		require
	}
	respond "must not be reached"`)
	for _, tr := range []h23Transport{h23H2, h23H2C, h23H3} {
		t.Run(string(tr), func(t *testing.T) {
			res := h23Do(t, tr, "/plain", h23Offer{})
			if res.Status != http.StatusBadRequest {
				t.Fatalf("require, no offer: status %d, want 400; headers %v; body %q", res.Status, res.Header, res.Body)
			}
			h23RequireNoUpgradeFields(t, res)
		})
	}
}

// Malformed extended CONNECT on HTTP/2: a :protocol on a GET, or one that
// is not a token, gets 400 and never reaches the backend. (quic-go refuses
// both itself on HTTP/3, before any handler.)
func TestH2MalformedProtocol(t *testing.T) {
	backend := newRecordingBackend(t, answerNaive())
	loadH23Routes(t, fmt.Sprintf(`
	upgrade websocket {
		to %s
	}
	respond "next handler"`, backend.Addr()))
	for _, useTLS := range []bool{true, false} {
		name := map[bool]string{true: "h2", false: "h2c"}[useTLS]
		cases := map[string][][2]string{
			":protocol on GET": append(h23H2Request(useTLS, "GET", "/ws"),
				[2]string{":protocol", "websocket"}, [2]string{"sec-websocket-version", "13"}),
			":protocol not a token":  h23H2Connect(useTLS, "web socket", "/ws", "sec-websocket-version", "13"),
			":protocol websocket/13": h23H2Connect(useTLS, "websocket/13", "/ws", "sec-websocket-version", "13"),
		}
		for what, fields := range cases {
			t.Run(name+"/"+what, func(t *testing.T) {
				c := dialH23H2(t, useTLS)
				c.requireExtendedConnect()
				snap := backend.Snapshot()
				s := c.Open(fields, strings.Contains(what, "GET"))
				res := s.Response()
				if res.Err != nil {
					t.Fatalf("%s: %v", what, res.Err)
				}
				if res.Status != http.StatusBadRequest {
					body, _ := s.ReadAll()
					t.Fatalf("%s: status %d, want 400; headers %v; body %q", what, res.Status, res.Header, body)
				}
				backend.RequireUntouchedSince(snap, what)
			})
		}
	}
}

// One table: each docs/behaviour.md §3 row (and the handshake refusals that
// differ by version) over HTTP/1.1, h2, h2c and h3, with the same decision on
// every version up to what docs/behaviour.md §3 itself maps: 426 on HTTP/1.1
// ↔ 400 on HTTP/2-3 (never 426, never an Upgrade field); an offer of nothing
// allowed is stripped on HTTP/1.1 (426 under require) ↔ 501 for an extended
// CONNECT, which has nothing to strip and is answered before require; 501
// nowhere else; 403 and accepted alike. Refusals never reach the backend.
func TestH2H3PolicyTable(t *testing.T) {
	backend := newRecordingBackend(t, answerEcho())
	loadH23Routes(t, fmt.Sprintf(`
	handle /open/* {
		upgrade websocket {
			to %[1]s
		}
		respond "next handler"
	}
	handle /require/* {
		upgrade websocket {
			require
			to %[1]s
		}
		respond "next handler"
	}
	handle /reject/* {
		upgrade websocket {
			on_disallowed reject
			to %[1]s
		}
		respond "next handler"
	}
	handle /require-reject/* {
		upgrade websocket {
			require
			on_disallowed reject
			to %[1]s
		}
		respond "next handler"
	}
	handle /origin/* {
		upgrade websocket {
			origins https://good.example
			to %[1]s
		}
		respond "next handler"
	}`, backend.Addr()))

	// decision is what the policy does. Where HTTP/1.1 and HTTP/2-3
	// differ, the difference is docs/behaviour.md §3's: a 426 cannot be sent on
	// HTTP/2-3 (400 instead), and an extended CONNECT whose :protocol is
	// not allowed has nothing to strip and gets 501, before require.
	type decision string
	const (
		pass        decision = "pass"        // no offer: next handler
		accept      decision = "accept"      // switched: 101 / 2xx tunnel
		strip       decision = "strip"       // HTTP/1.1: offer stripped, next handler
		unsupported decision = "unsupported" // HTTP/2-3: 501 for a disallowed :protocol
		required    decision = "required"    // HTTP/1.1: 426 + Upgrade; HTTP/2-3: 400
		reject      decision = "reject"      // 403
		badVersion  decision = "bad-version" // HTTP/1.1: 426 + Sec-WebSocket-Version; HTTP/2-3: 400 + it
	)
	ws := h23Offer{protocol: "websocket"}
	foo := h23Offer{protocol: "foo"}
	rows := []struct {
		name  string
		route string
		offer h23Offer
		h1    decision // HTTP/1.1
		h23   decision // h2, h2c, h3
	}{
		{"no offer", "open", h23Offer{}, pass, pass},
		{"no offer, require", "require", h23Offer{}, required, required},
		{"no offer, reject", "reject", h23Offer{}, pass, pass},
		{"no offer, require+reject", "require-reject", h23Offer{}, required, required},
		{"selected", "open", ws, accept, accept},
		{"selected, require", "require", ws, accept, accept},
		{"selected, reject", "reject", ws, accept, accept},
		{"nothing allowed, ignore", "open", foo, strip, unsupported},
		{"nothing allowed, ignore+require", "require", foo, required, unsupported},
		{"nothing allowed, reject", "reject", foo, reject, reject},
		{"nothing allowed, reject+require", "require-reject", foo, reject, reject},
		{"websocket version 8", "open", h23Offer{protocol: "websocket", version: "8"}, badVersion, badVersion},
		{"foreign origin", "origin", h23Offer{protocol: "websocket", origin: "https://evil.example"}, reject, reject},
		{"listed origin", "origin", h23Offer{protocol: "websocket", origin: "https://good.example"}, accept, accept},
	}
	transports := []h23Transport{h23H1, h23H2, h23H2C, h23H3}
	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			got := map[h23Transport]decision{}
			for _, tr := range transports {
				path := "/" + row.route + "/x"
				snap := backend.Snapshot()
				res := h23Do(t, tr, path, row.offer)
				h1 := tr == h23H1
				var d decision
				switch {
				case res.Tunnel != nil:
					d = accept
					h23WSEcho(t, res.Tunnel, "table "+row.name+" over "+string(tr))
				case res.Status == http.StatusOK && res.Body == "next handler":
					if row.offer.protocol == "" {
						d = pass
					} else if h1 {
						d = strip
					}
				case res.Status == http.StatusNotImplemented && !h1 && row.offer.protocol != "":
					d = unsupported
				case res.Status == http.StatusUpgradeRequired && h1 && res.Header.Get("Sec-WebSocket-Version") == "":
					if res.Header.Get("Upgrade") != "websocket" || !strings.EqualFold(res.Header.Get("Connection"), "upgrade") {
						t.Errorf("%s: 426 with Upgrade %q, Connection %q; want websocket, Upgrade", tr, res.Header.Get("Upgrade"), res.Header.Get("Connection"))
					}
					d = required
				case res.Status == http.StatusUpgradeRequired && h1:
					h23RequireWSVersion13(t, res)
					if res.Header.Get("Upgrade") != "websocket" {
						t.Errorf("%s: 426 with Upgrade %q, want websocket", tr, res.Header.Get("Upgrade"))
					}
					d = badVersion
				case res.Status == http.StatusBadRequest && !h1 && res.Header.Get("Sec-WebSocket-Version") == "":
					d = required
				case res.Status == http.StatusBadRequest && !h1:
					h23RequireWSVersion13(t, res)
					d = badVersion
				case res.Status == http.StatusForbidden:
					d = reject
				}
				if !h1 {
					h23RequireNoUpgradeFields(t, res)
					if res.Status == http.StatusUpgradeRequired {
						t.Errorf("%s answered 426, which HTTP/2 and HTTP/3 cannot carry", tr)
					}
				}
				if d != accept {
					// Refused, stripped or passed: the backend saw nothing.
					backend.RequireUntouchedSince(snap, string(tr)+" "+row.name)
				} else if rec := backend.LastRequest(); !rec.Switched || rec.RequestURI != path {
					t.Errorf("%s: accepted, but the backend's latest request is %s (switched %v)", tr, rec.RequestURI, rec.Switched)
				}
				if d == "" {
					d = decision(fmt.Sprintf("unexpected %d %v %.80q", res.Status, res.Header, res.Body))
				}
				got[tr] = d
			}
			for _, tr := range transports {
				want := row.h23
				if tr == h23H1 {
					want = row.h1
				}
				if got[tr] != want {
					t.Errorf("%s: decision %q, want %q (all: %v)", tr, got[tr], want, got)
				}
			}
		})
	}
}
