package audit

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// ControlPrefix is the path under which the canary answers the auditor's
// queries. Connections that carry such a query are left out of the records,
// so the auditor never sees its own questions as traffic.
const ControlPrefix = "/_upgrade-audit/"

// maxMarks bounds how many marks the canary remembers; a run needs one at
// a time.
const maxMarks = 256

// Canary is the backend the adversarial checks put behind a gateway: it
// answers 101 to anything (or the bad answer an attack asks for, see
// Answer), and records every byte it receives, every request it parses,
// and every byte that arrives on a tunnel after it switched.
type Canary struct {
	ln  net.Listener
	srv *http.Server

	mu       sync.Mutex
	conns    []*canaryConn
	reqs     []*canaryRequest
	marks    map[int]canaryMark
	nextMark int
	hijacked map[net.Conn]struct{}
	closed   bool
	wg       sync.WaitGroup
}

type canaryMark struct {
	lens []int // bytes received per connection
	reqs int
}

type canaryConn struct {
	net.Conn
	c       *Canary
	mu      sync.Mutex
	rx      bytes.Buffer
	control bool
}

func (cc *canaryConn) Read(p []byte) (int, error) {
	n, err := cc.Conn.Read(p)
	if n > 0 {
		cc.mu.Lock()
		cc.rx.Write(p[:n])
		cc.mu.Unlock()
	}
	return n, err
}

func (cc *canaryConn) received() []byte {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return append([]byte(nil), cc.rx.Bytes()...)
}

// canaryRequest is one parsed request and, if the canary switched, its
// tunnel.
type canaryRequest struct {
	RecordedRequest
	mu     sync.Mutex
	tunnel bytes.Buffer
	done   chan struct{} // closed when the tunnel ends
}

func (r *canaryRequest) snapshot() RecordedRequest {
	out := r.RecordedRequest
	if r.done != nil {
		r.mu.Lock()
		out.Tunnel = append([]byte(nil), r.tunnel.Bytes()...)
		r.mu.Unlock()
		select {
		case <-r.done:
			out.Closed = true
		default:
		}
	}
	return out
}

func (r *canaryRequest) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.tunnel.Write(p)
}

// RecordedRequest is a request as the canary parsed it.
type RecordedRequest struct {
	Method string      `json:"method"`
	URI    string      `json:"uri"`
	Proto  string      `json:"proto"`
	Header http.Header `json:"header"`
	Body   []byte      `json:"body,omitempty"`
	// Switched: the canary answered 101. Tunnel is what arrived on the
	// tunnel since; Closed, whether the tunnel has ended.
	Switched bool   `json:"switched,omitempty"`
	Tunnel   []byte `json:"tunnel,omitempty"`
	Closed   bool   `json:"closed,omitempty"`
}

// Records is what the canary received since a mark.
type Records struct {
	// Bytes is every byte received since the mark, connection by
	// connection (a gateway reuses pooled connections, so an attack's bytes
	// may land on an older one).
	Bytes    []byte            `json:"bytes"`
	Requests []RecordedRequest `json:"requests"`
}

// Recorder is the canary as the auditor sees it: in the same process
// (*Canary) or over its control endpoint (CanaryClient).
type Recorder interface {
	// Mark remembers how much the canary has received.
	Mark(ctx context.Context) (int, error)
	// Since returns what arrived after mark.
	Since(ctx context.Context, mark int) (*Records, error)
}

// NewCanary listens on addr and serves until Close.
func NewCanary(addr string) (*Canary, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	c := &Canary{ln: ln, marks: map[int]canaryMark{}, hijacked: map[net.Conn]struct{}{}}
	c.srv = &http.Server{
		Handler:           http.HandlerFunc(c.serve),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, conn net.Conn) context.Context {
			return context.WithValue(ctx, canaryConnKey{}, conn)
		},
		// The canary answers what gateways send, malformed or not; net/http's
		// complaints about them are noise here.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	c.wg.Go(func() { c.srv.Serve(&canaryListener{Listener: ln, c: c}) })
	return c, nil
}

type canaryConnKey struct{}

type canaryListener struct {
	net.Listener
	c *Canary
}

func (l *canaryListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	cc := &canaryConn{Conn: conn, c: l.c}
	l.c.mu.Lock()
	l.c.conns = append(l.c.conns, cc)
	l.c.mu.Unlock()
	return cc, nil
}

// Addr is the canary's host:port.
func (c *Canary) Addr() string { return c.ln.Addr().String() }

// Close stops the canary and closes every connection, tunnels too.
func (c *Canary) Close() error {
	err := c.srv.Close()
	c.mu.Lock()
	c.closed = true
	for conn := range c.hijacked {
		conn.Close()
	}
	c.mu.Unlock()
	c.wg.Wait()
	return err
}

// Mark implements Recorder.
func (c *Canary) Mark(context.Context) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := canaryMark{reqs: len(c.reqs)}
	for _, cc := range c.conns {
		cc.mu.Lock()
		m.lens = append(m.lens, cc.rx.Len())
		cc.mu.Unlock()
	}
	c.nextMark++
	c.marks[c.nextMark] = m
	delete(c.marks, c.nextMark-maxMarks)
	return c.nextMark, nil
}

// Since implements Recorder.
func (c *Canary) Since(_ context.Context, mark int) (*Records, error) {
	c.mu.Lock()
	m, ok := c.marks[mark]
	conns := append([]*canaryConn(nil), c.conns...)
	reqs := append([]*canaryRequest(nil), c.reqs...)
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("unknown mark %d", mark)
	}
	out := &Records{Requests: []RecordedRequest{}}
	for i, cc := range conns {
		cc.mu.Lock()
		control := cc.control
		cc.mu.Unlock()
		if control {
			continue
		}
		rx := cc.received()
		if i < len(m.lens) {
			rx = rx[min(m.lens[i], len(rx)):]
		}
		out.Bytes = append(out.Bytes, rx...)
	}
	for _, r := range reqs[m.reqs:] {
		out.Requests = append(out.Requests, r.snapshot())
	}
	return out, nil
}

func (c *Canary) serve(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, ControlPrefix) {
		if cc, ok := r.Context().Value(canaryConnKey{}).(*canaryConn); ok {
			cc.mu.Lock()
			cc.control = true
			cc.mu.Unlock()
		}
		c.serveControl(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	rec := &canaryRequest{RecordedRequest: RecordedRequest{
		Method: r.Method, URI: r.RequestURI, Proto: r.Proto, Header: r.Header.Clone(), Body: body,
	}}
	c.mu.Lock()
	c.reqs = append(c.reqs, rec)
	c.mu.Unlock()
	if !isUpgradeRequest(r.Header) {
		plainAnswer(w, r)
		return
	}
	key := r.Header.Get("Sec-WebSocket-Key")
	accept := AcceptFor(key)
	switch Answer(r.URL.Query().Get("answer")) {
	case AnswerRefuse426:
		w.Header().Set("Sec-WebSocket-Version", "13")
		refuse(w, http.StatusUpgradeRequired)
	case AnswerRefuse200:
		refuse(w, http.StatusOK)
	case AnswerProto101:
		c.switchProtocols(w, r, rec, "Connection: Upgrade", "Upgrade: h2c", "Sec-WebSocket-Accept: "+accept)
	case AnswerNoConnection:
		c.switchProtocols(w, r, rec, "Upgrade: websocket", "Sec-WebSocket-Accept: "+accept)
	case AnswerBadAccept101:
		c.switchProtocols(w, r, rec, "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Accept: "+AcceptFor("not the key"))
	case AnswerNoAccept101:
		c.switchProtocols(w, r, rec, "Connection: Upgrade", "Upgrade: websocket")
	case AnswerSubprotocol101:
		c.switchProtocols(w, r, rec, "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Accept: "+accept, "Sec-WebSocket-Protocol: admin")
	case AnswerExtension101:
		c.switchProtocols(w, r, rec, "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Accept: "+accept, "Sec-WebSocket-Extensions: x-evil-compress")
	default:
		lines := []string{"Connection: Upgrade", "Upgrade: " + r.Header.Get("Upgrade")}
		if key != "" {
			lines = append(lines, "Sec-WebSocket-Accept: "+accept)
		}
		c.switchProtocols(w, r, rec, lines...)
	}
}

// plainAnswer is the answer to every request that is not an upgrade (and
// to those refused with AnswerRefuse200's body aside): 200, naming the
// request, so a client can tell the canary answered.
func plainAnswer(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "backend %s %s", r.Method, r.RequestURI)
}

func refuse(w http.ResponseWriter, status int) {
	w.WriteHeader(status)
	io.WriteString(w, "refused")
}

// switchProtocols writes a raw 101 with the given header lines, then
// records and echoes every tunnel byte. After `Upgrade: h2c`, a tunnel
// that starts with the HTTP/2 client preface is served as HTTP/2, so the
// auditor can show what an h2c client reaches.
func (c *Canary) switchProtocols(w http.ResponseWriter, r *http.Request, rec *canaryRequest, lines ...string) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		conn.Close()
		return
	}
	c.hijacked[conn] = struct{}{}
	rec.Switched = true
	rec.done = make(chan struct{})
	c.wg.Add(1)
	c.mu.Unlock()

	var head strings.Builder
	head.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
	for _, l := range lines {
		head.WriteString(l + "\r\n")
	}
	head.WriteString("\r\n")
	brw.WriteString(head.String())
	brw.Flush()
	h2c := strings.EqualFold(strings.TrimSpace(r.Header.Get("Upgrade")), "h2c")
	go func() {
		defer c.wg.Done()
		defer close(rec.done)
		defer func() {
			conn.Close()
			c.mu.Lock()
			delete(c.hijacked, conn)
			c.mu.Unlock()
		}()
		var pending []byte
		buf := make([]byte, 4096)
		for {
			n, err := brw.Read(buf)
			if n > 0 {
				rec.Write(buf[:n])
				if h2c {
					pending = append(pending, buf[:n]...)
					if bytes.HasPrefix(pending, []byte(http2.ClientPreface)) {
						c.serveH2(conn, io.MultiReader(bytes.NewReader(pending), io.TeeReader(brw, rec)))
						return
					}
					if bytes.HasPrefix([]byte(http2.ClientPreface), pending) {
						continue
					}
					h2c = false
					if _, werr := conn.Write(pending); werr != nil {
						return
					}
				} else if _, werr := conn.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
}

// serveH2 serves HTTP/2 with prior knowledge on a tunnel whose first
// bytes are in r, until the tunnel ends.
func (c *Canary) serveH2(conn net.Conn, r io.Reader) {
	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols: &protocols,
		ErrorLog:  log.New(io.Discard, "", 0),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			body, _ := io.ReadAll(req.Body)
			rec := &canaryRequest{RecordedRequest: RecordedRequest{
				Method: req.Method, URI: req.RequestURI, Proto: req.Proto, Header: req.Header.Clone(), Body: body,
			}}
			c.mu.Lock()
			c.reqs = append(c.reqs, rec)
			c.mu.Unlock()
			plainAnswer(w, req)
		}),
	}
	ln := &oneConnListener{conn: &readerConn{Conn: conn, r: r}, done: make(chan struct{})}
	srv.Serve(ln)
}

// oneConnListener hands out one connection, then waits until that
// connection is closed: http.Server serves a single tunnel this way.
type oneConnListener struct {
	conn   *readerConn
	given  bool
	done   chan struct{}
	closed sync.Once
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.given {
		l.given = true
		l.conn.onClose = func() { l.Close() }
		return l.conn, nil
	}
	<-l.done
	return nil, net.ErrClosed
}

func (l *oneConnListener) Close() error {
	l.closed.Do(func() { close(l.done) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.conn.LocalAddr() }

type readerConn struct {
	net.Conn
	r       io.Reader
	onClose func()
}

func (rc *readerConn) Close() error {
	err := rc.Conn.Close()
	if rc.onClose != nil {
		rc.onClose()
	}
	return err
}

func (rc *readerConn) Read(p []byte) (int, error) { return rc.r.Read(p) }

func (c *Canary) serveControl(w http.ResponseWriter, r *http.Request) {
	var v any
	var err error
	switch strings.TrimPrefix(r.URL.Path, ControlPrefix) {
	case "mark":
		var m int
		m, err = c.Mark(r.Context())
		v = map[string]int{"mark": m}
	case "since":
		var m int
		if m, err = strconv.Atoi(r.URL.Query().Get("mark")); err == nil {
			v, err = c.Since(r.Context(), m)
		}
	default:
		http.NotFound(w, r)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// CanaryClient queries a canary's control endpoint over HTTP.
type CanaryClient struct {
	Addr string // host:port of the canary

	once sync.Once
	hc   *http.Client
}

func (cl *CanaryClient) get(ctx context.Context, path string, v any) error {
	// A transport of its own: the canary leaves out of its records every
	// connection that carried a query, so a connection shared with other
	// traffic would hide that traffic.
	cl.once.Do(func() {
		cl.hc = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1}}
	})
	hc := cl.hc
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+cl.Addr+ControlPrefix+path, nil)
	if err != nil {
		return err
	}
	res, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("canary %s: %w", cl.Addr, err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(res.Body, 512))
		return fmt.Errorf("canary %s: %s: %s", cl.Addr, res.Status, bytes.TrimSpace(msg))
	}
	return json.NewDecoder(res.Body).Decode(v)
}

// Mark implements Recorder.
func (cl *CanaryClient) Mark(ctx context.Context) (int, error) {
	var v struct {
		Mark *int `json:"mark"`
	}
	if err := cl.get(ctx, "mark", &v); err != nil {
		return 0, err
	}
	if v.Mark == nil {
		return 0, errors.New("canary " + cl.Addr + ": no mark in its answer; is it an upgrade-audit backend?")
	}
	return *v.Mark, nil
}

// Since implements Recorder.
func (cl *CanaryClient) Since(ctx context.Context, mark int) (*Records, error) {
	var rec Records
	if err := cl.get(ctx, "since?mark="+url.QueryEscape(strconv.Itoa(mark)), &rec); err != nil {
		return nil, err
	}
	return &rec, nil
}

// isUpgradeRequest reports whether a request asks to upgrade: Connection:
// upgrade and an Upgrade field.
func isUpgradeRequest(h http.Header) bool {
	return len(h["Upgrade"]) > 0 && connectionHas(h, "upgrade")
}

// connectionHas reports whether a Connection line lists opt.
func connectionHas(h http.Header, opt string) bool {
	for _, v := range h["Connection"] {
		for e := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(e), opt) {
				return true
			}
		}
	}
	return false
}

// AcceptFor is RFC 6455 §4.2.2's Sec-WebSocket-Accept for key.
func AcceptFor(key string) string {
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	return base64.StdEncoding.EncodeToString(sum[:])
}
