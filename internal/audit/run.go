package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Config says which gateway to audit and how.
type Config struct {
	// Target is the gateway URL the checks go to (http or https); its path
	// should be a route that carries WebSockets. No other address is sent
	// any traffic, the canary's control endpoint aside.
	Target *url.URL
	// Origin is the origin the route allows (scheme://host[:port]); the
	// CSWSH checks send foreign ones derived from it. Default: the
	// target's own origin.
	Origin string
	// InternalPath is what the h2c check asks for over HTTP/2 once it has
	// a tunnel: a path the gateway would not serve to this client.
	// Default "/".
	InternalPath string
	// Insecure skips verifying the gateway's TLS certificate.
	Insecure bool
	// Canary, if set, is the backend behind the route, queried after each
	// check: the canary mode, which judges every check exactly. Nil: the
	// black-box mode, which judges only what a client can see.
	Canary Recorder
	// RunID tags every request URI of a run (audit=<RunID>.<check>...);
	// default random.
	RunID string
	// Timeout bounds each network wait; default 5s.
	Timeout time.Duration
}

func (cfg *Config) setDefaults() error {
	if cfg.Target == nil || (cfg.Target.Scheme != "http" && cfg.Target.Scheme != "https") || cfg.Target.Host == "" {
		return errors.New("the target must be an http:// or https:// URL")
	}
	if cfg.Origin == "" {
		cfg.Origin = cfg.Target.Scheme + "://" + cfg.Target.Host
	}
	if cfg.InternalPath == "" {
		cfg.InternalPath = "/"
	}
	if !strings.HasPrefix(cfg.InternalPath, "/") {
		return fmt.Errorf("the internal path %q must start with /", cfg.InternalPath)
	}
	if cfg.RunID == "" {
		var b [4]byte
		rand.Read(b[:])
		cfg.RunID = hex.EncodeToString(b[:])
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	return nil
}

// Timing of the observation, the same for every check.
const (
	tunnelReadWait = 300 * time.Millisecond // what comes back on a tunnel the gateway opened
	settleWait     = 100 * time.Millisecond // for the canary to record what is in flight
	closeWait      = 3 * time.Second        // for a gateway to close a backend tunnel it refused
	earlyDrainWait = 3 * time.Second        // for a gateway to close after Connection: close
)

// Response is a response read off the wire, its body read in full.
type Response struct {
	*http.Response
	Body string
}

// Observation is what running one check saw, on the client and, in the
// canary mode, at the backend.
type Observation struct {
	AttackURI, FlagURI string

	DialErr  error
	Res      *Response // the first response; nil if none
	ResErr   error
	RawEarly bool // Res looks like a raw 400 written on a hijacked connection
	Got101   bool
	TunnelRx []byte // bytes that came back to the client after a 101

	FlagRes    *Response // the response to the pipelined request, if any
	FlagErr    error
	ConnClosed bool // the gateway closed the client connection

	// Internal is the HTTP/2 answer to InternalPath through an h2c tunnel.
	Internal *H2Answer
	// Unavailable says why an HTTP/2 or HTTP/3 check could not be made.
	Unavailable string
	// XConnectAdvertised: the server's SETTINGS enabled extended CONNECT.
	XConnectAdvertised bool

	Backend *BackendView // nil in the black-box mode
}

// H2Answer is an HTTP/2 response read through an h2c tunnel.
type H2Answer struct {
	Path   string
	Status int
	Body   string
	Err    error
}

// BackendView is what the canary saw of one check.
type BackendView struct {
	Err            error // the canary could not be queried
	AttackReached  bool  // the check's request URI is in the bytes the canary received
	AttackReq      *RecordedRequest
	OtherRequests  []string
	H2Requests     []string // requests served as HTTP/2 through an h2c tunnel
	SawH2C         bool     // an Upgrade line naming h2c reached the canary
	FlagRaw        int      // times the pipelined request line is in the canary's bytes
	FlagParsed     int      // times the canary parsed the pipelined request
	FlagTunneled   bool
	Switched       bool // the canary answered the check with a 101
	BackendClosed  bool // ...and that tunnel was closed by the gateway
	AttackTunnelRx []byte
}

// NewKey is a fresh random Sec-WebSocket-Key.
func NewKey() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// marker is the query parameter that tags a request of check id.
func (cfg *Config) marker(id, part string) string {
	return "audit=" + cfg.RunID + "." + id + "." + part
}

// uri is the request URI of part ("atk", "flag", ...) of check id; answer
// is added in the canary mode.
func (cfg *Config) uri(id, part string, answer Answer) string {
	v := cfg.marker(id, part)
	if cfg.Canary != nil && answer != "" && answer != AnswerNaive {
		v += "&answer=" + string(answer)
	}
	path := cfg.Target.EscapedPath()
	if path == "" {
		path = "/"
	}
	if q := cfg.Target.RawQuery; q != "" {
		return path + "?" + q + "&" + v
	}
	return path + "?" + v
}

func (cfg *Config) hostport() string {
	if cfg.Target.Port() != "" {
		return cfg.Target.Host
	}
	if cfg.Target.Scheme == "https" {
		return net.JoinHostPort(cfg.Target.Hostname(), "443")
	}
	return net.JoinHostPort(cfg.Target.Hostname(), "80")
}

func (cfg *Config) tlsConfig(alpn string) *tls.Config {
	return &tls.Config{
		ServerName:         cfg.Target.Hostname(),
		NextProtos:         []string{alpn},
		InsecureSkipVerify: cfg.Insecure,
	}
}

// dial connects to the target, over TLS with the given ALPN protocol for
// https.
func (cfg *Config) dial(ctx context.Context, alpn string) (net.Conn, error) {
	d := &net.Dialer{Timeout: cfg.Timeout}
	if cfg.Target.Scheme != "https" {
		return d.DialContext(ctx, "tcp", cfg.hostport())
	}
	td := &tls.Dialer{NetDialer: d, Config: cfg.tlsConfig(alpn)}
	return td.DialContext(ctx, "tcp", cfg.hostport())
}

// rawRequest is a request head: the request line, Host, the given lines
// verbatim, the blank line.
func rawRequest(method, uri, proto, host string, lines []string) string {
	var s strings.Builder
	fmt.Fprintf(&s, "%s %s %s\r\nHost: %s\r\n", method, uri, proto, host)
	for _, l := range lines {
		s.WriteString(l + "\r\n")
	}
	s.WriteString("\r\n")
	return s.String()
}

// readResponse reads one response and its whole body within d.
func readResponse(conn net.Conn, br *bufio.Reader, method string, d time.Duration) (*Response, error) {
	conn.SetReadDeadline(time.Now().Add(d))
	defer conn.SetReadDeadline(time.Time{})
	res, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("reading the body of %s: %w", res.Status, err)
	}
	return &Response{Response: res, Body: string(body)}, nil
}

// readUntilClosed reads whatever arrives until the peer closes or d
// passes; closed is false if d passed first.
func readUntilClosed(conn net.Conn, br *bufio.Reader, d time.Duration) (data []byte, closed bool) {
	conn.SetReadDeadline(time.Now().Add(d))
	defer conn.SetReadDeadline(time.Time{})
	data, err := io.ReadAll(br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return data, false
	}
	return data, true
}

// Run runs one check. The checks of a run must not overlap: the canary's
// records are read as "everything since the check started".
func (cfg *Config) Run(ctx context.Context, a Attack) *Observation {
	switch a.Kind {
	case KindH2C:
		return cfg.runH2C(ctx, a)
	case KindHTTP2:
		return cfg.runH2(ctx, a)
	case KindHTTP3:
		return cfg.runH3(ctx, a)
	default:
		return cfg.runHTTP1(ctx, a)
	}
}

func (cfg *Config) mark(ctx context.Context, o *Observation) (int, bool) {
	if cfg.Canary == nil {
		return 0, false
	}
	m, err := cfg.Canary.Mark(ctx)
	if err != nil {
		o.Backend = &BackendView{Err: err}
		return 0, false
	}
	return m, true
}

// send dials the target over HTTP/1.1 and writes wire; on failure it
// records the error in o and returns a nil conn.
func (cfg *Config) send(ctx context.Context, o *Observation, wire string) (net.Conn, *bufio.Reader) {
	conn, err := cfg.dial(ctx, "http/1.1")
	if err != nil {
		o.DialErr = err
		return nil, nil
	}
	conn.SetWriteDeadline(time.Now().Add(cfg.Timeout))
	if _, err := io.WriteString(conn, wire); err != nil {
		conn.Close()
		o.DialErr = err
		return nil, nil
	}
	return conn, bufio.NewReader(conn)
}

// runHTTP1 writes the attack and, in the same write, a second request
// (the "flag") to the same URL; then it reads what comes back and, in the
// canary mode, what reached the backend.
func (cfg *Config) runHTTP1(ctx context.Context, a Attack) *Observation {
	o := &Observation{AttackURI: cfg.uri(a.ID, "atk", a.Answer), FlagURI: cfg.uri(a.ID, "flag", "")}
	env := Env{Key: NewKey(), Origin: cfg.Origin}
	host := cfg.Target.Host
	wire := rawRequest(a.Method, o.AttackURI, a.Proto, host, a.Lines(env)) + a.Body +
		rawRequest("GET", o.FlagURI, "HTTP/1.1", host, nil)

	mark, canary := cfg.mark(ctx, o)
	conn, br := cfg.send(ctx, o, wire)
	if conn == nil {
		return o
	}
	defer conn.Close()
	o.Res, o.ResErr = readResponse(conn, br, a.Method, cfg.Timeout)
	switch {
	case o.ResErr != nil:
		_, o.ConnClosed = readUntilClosed(conn, br, 200*time.Millisecond)
	case o.Res.StatusCode == http.StatusSwitchingProtocols:
		o.Got101 = true
		o.TunnelRx, _ = readUntilClosed(conn, br, tunnelReadWait)
	default:
		o.RawEarly = o.Res.StatusCode == http.StatusBadRequest && o.Res.Header.Get("Server") == "" &&
			o.Res.Close && o.Res.ContentLength == 0
		if o.Res.Close {
			_, o.ConnClosed = readUntilClosed(conn, br, earlyDrainWait)
		} else {
			o.FlagRes, o.FlagErr = readResponse(conn, br, "GET", cfg.Timeout)
		}
	}
	// A client whose connection the gateway closed goes away; otherwise it
	// stays connected while the backend is checked, so that a backend
	// connection closed only because the client left is not taken for one
	// the gateway closed.
	if o.ConnClosed {
		conn.Close()
	}
	if canary {
		cfg.observeBackend(ctx, o, mark, a, conn)
	}
	return o
}

// upgradeH2C finds an Upgrade field line naming h2c in lower-cased bytes.
var upgradeH2C = regexp.MustCompile(`(?m)^upgrade:[^\r\n]*h2c`)

// observeBackend fills o.Backend from the canary's records since mark.
// conn, the client's connection, is closed once the backend's side of a
// refused switch has been seen.
func (cfg *Config) observeBackend(ctx context.Context, o *Observation, mark int, a Attack, conn net.Conn) {
	bv := &BackendView{}
	o.Backend = bv
	time.Sleep(settleWait)
	atk, flag := cfg.marker(a.ID, "atk"), cfg.marker(a.ID, "flag")
	recs, err := cfg.Canary.Since(ctx, mark)
	if err != nil {
		bv.Err = err
		return
	}
	find := func(recs *Records) *RecordedRequest {
		for i := range recs.Requests {
			if strings.Contains(recs.Requests[i].URI, atk) {
				return &recs.Requests[i]
			}
		}
		return nil
	}
	if r := find(recs); r != nil && r.Switched && !o.Got101 {
		deadline := time.Now().Add(closeWait)
		for !r.Closed && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
			if recs, err = cfg.Canary.Since(ctx, mark); err != nil {
				bv.Err = err
				return
			}
			r = find(recs)
		}
	}
	if conn != nil {
		conn.Close()
	}
	// The final records: what arrived while the client was still there.
	if recs, err = cfg.Canary.Since(ctx, mark); err != nil {
		bv.Err = err
		return
	}
	for i := range recs.Requests {
		r := &recs.Requests[i]
		switch {
		case strings.Contains(r.URI, atk):
			bv.AttackReq = r
		case strings.Contains(r.URI, flag):
			bv.FlagParsed++
		case r.Proto == "HTTP/2.0":
			bv.H2Requests = append(bv.H2Requests, r.Method+" "+r.URI)
		default:
			bv.OtherRequests = append(bv.OtherRequests, r.Method+" "+r.URI)
		}
		if bytes.Contains(r.Tunnel, []byte(flag)) {
			bv.FlagTunneled = true
		}
	}
	if r := bv.AttackReq; r != nil && r.Switched {
		bv.Switched = true
		bv.BackendClosed = r.Closed
		bv.AttackTunnelRx = r.Tunnel
	}
	bv.AttackReached = bytes.Contains(recs.Bytes, []byte(atk))
	bv.SawH2C = upgradeH2C.Match(bytes.ToLower(recs.Bytes))
	if o.FlagURI != "" {
		bv.FlagRaw = bytes.Count(recs.Bytes, []byte("GET "+o.FlagURI+" "))
		if bv.FlagRaw > bv.FlagParsed {
			bv.FlagTunneled = true
		}
	}
}
