package audit

// These tests need no Caddy: the canary is a real server on 127.0.0.1, and
// "no gateway" (the auditor talking to the canary directly) is the worst
// gateway there is, one that forwards every byte as it came. The tests
// against real gateways (stock Caddy, Caddy with the upgrade module, nginx,
// HAProxy) live in the module's root package.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

func newCanary(t *testing.T) *Canary {
	t.Helper()
	c, err := NewCanary("127.0.0.1:0")
	if err != nil {
		t.Fatalf("canary: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// handshake sends a WebSocket handshake for uri straight to addr and
// reads the response head.
func handshake(t *testing.T, addr, uri string, extra ...string) (*http.Response, string, net.Conn) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	key := NewKey()
	io.WriteString(conn, rawRequest("GET", uri, "HTTP/1.1", addr, WSLines(key, extra...)))
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: "GET"})
	if err != nil {
		t.Fatalf("response to %s: %v", uri, err)
	}
	return res, key, conn
}

// The canary gives each answer the catalogue asks of it, and records the
// request and its tunnel.
func TestCanaryAnswers(t *testing.T) {
	c := newCanary(t)
	type want struct {
		status                        int
		upgrade, connection, protocol string
		accept                        string // "ok", "wrong" or ""
		extensions                    string
	}
	cases := map[Answer]want{
		AnswerNaive:          {status: 101, upgrade: "websocket", connection: "Upgrade", accept: "ok"},
		AnswerRefuse426:      {status: 426},
		AnswerRefuse200:      {status: 200},
		AnswerProto101:       {status: 101, upgrade: "h2c", connection: "Upgrade", accept: "ok"},
		AnswerNoConnection:   {status: 101, upgrade: "websocket", accept: "ok"},
		AnswerBadAccept101:   {status: 101, upgrade: "websocket", connection: "Upgrade", accept: "wrong"},
		AnswerNoAccept101:    {status: 101, upgrade: "websocket", connection: "Upgrade"},
		AnswerSubprotocol101: {status: 101, upgrade: "websocket", connection: "Upgrade", accept: "ok", protocol: "admin"},
		AnswerExtension101:   {status: 101, upgrade: "websocket", connection: "Upgrade", accept: "ok", extensions: "x-evil-compress"},
	}
	if len(cases) != len(Answers) {
		t.Fatalf("%d answers tested, %d known", len(cases), len(Answers))
	}
	for _, ans := range Answers {
		t.Run(string(ans), func(t *testing.T) {
			w := cases[ans]
			mark, _ := c.Mark(context.Background())
			uri := "/ws?answer=" + string(ans)
			res, key, conn := handshake(t, c.Addr(), uri)
			if res.StatusCode != w.status {
				t.Fatalf("status %d, want %d", res.StatusCode, w.status)
			}
			h := res.Header
			if h.Get("Upgrade") != w.upgrade || h.Get("Connection") != w.connection ||
				h.Get("Sec-WebSocket-Protocol") != w.protocol || h.Get("Sec-WebSocket-Extensions") != w.extensions {
				t.Errorf("101 headers %v, want %+v", h, w)
			}
			switch acc := h.Get("Sec-WebSocket-Accept"); w.accept {
			case "ok":
				if acc != AcceptFor(key) {
					t.Errorf("Accept %q, want %q", acc, AcceptFor(key))
				}
			case "wrong":
				if acc == "" || acc == AcceptFor(key) {
					t.Errorf("Accept %q, want a wrong one", acc)
				}
			default:
				if acc != "" {
					t.Errorf("Accept %q, want none", acc)
				}
			}
			if w.status == 101 {
				io.WriteString(conn, "tunnel bytes")
				echo := make([]byte, len("tunnel bytes"))
				if _, err := io.ReadFull(conn, echo); err != nil || string(echo) != "tunnel bytes" {
					t.Errorf("echo %q, %v", echo, err)
				}
			}
			conn.Close()
			var got RecordedRequest
			ok := poll(func() bool {
				recs, err := c.Since(context.Background(), mark)
				if err != nil || len(recs.Requests) != 1 {
					return false
				}
				got = recs.Requests[0]
				return w.status != 101 || got.Closed
			})
			if !ok {
				t.Fatalf("the canary did not record the request and the tunnel's end: %+v", got)
			}
			if got.URI != uri || got.Switched != (w.status == 101) {
				t.Errorf("recorded %+v", got)
			}
			if w.status == 101 && string(got.Tunnel) != "tunnel bytes" {
				t.Errorf("recorded tunnel %q", got.Tunnel)
			}
		})
	}
}

func poll(cond func() bool) bool {
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// The control endpoint, over HTTP, reports what the in-process canary
// does, and the auditor's own queries never show up as traffic.
func TestCanaryClientMatchesCanary(t *testing.T) {
	c := newCanary(t)
	cl := &CanaryClient{Addr: c.Addr()}
	ctx := context.Background()
	mark, err := cl.Mark(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.Get("http://" + c.Addr() + "/plain?x=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if string(body) != "backend GET /plain?x=1" {
		t.Errorf("plain answer %q", body)
	}
	remote, err := cl.Since(ctx, mark)
	if err != nil {
		t.Fatal(err)
	}
	local, err := c.Since(ctx, mark)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(remote.Bytes, local.Bytes) || len(remote.Requests) != 1 || len(local.Requests) != 1 ||
		remote.Requests[0].URI != local.Requests[0].URI {
		t.Errorf("over HTTP %+v\nin process %+v", remote, local)
	}
	if !bytes.Contains(remote.Bytes, []byte("GET /plain?x=1 HTTP/1.1\r\n")) {
		t.Errorf("bytes %q lack the request", remote.Bytes)
	}
	if bytes.Contains(remote.Bytes, []byte(ControlPrefix)) {
		t.Errorf("the auditor's own queries are in the records: %q", remote.Bytes)
	}
	if _, err := cl.Since(ctx, mark+1000); err == nil || !strings.Contains(err.Error(), "unknown mark") {
		t.Errorf("unknown mark: %v", err)
	}
	notCanary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "{}") }))
	defer notCanary.Close()
	if _, err := (&CanaryClient{Addr: strings.TrimPrefix(notCanary.URL, "http://")}).Mark(ctx); err == nil {
		t.Errorf("a server that is not a canary was taken for one")
	}
}

// verdicts maps check IDs to verdicts.
func verdicts(rep *Report) map[string]Verdict {
	m := map[string]Verdict{}
	for _, r := range rep.Results {
		m[r.ID] = r.Verdict
	}
	return m
}

func idsWith(rep *Report, v Verdict) []string {
	var out []string
	for _, r := range rep.Results {
		if r.Verdict == v {
			out = append(out, r.ID)
		}
	}
	return out
}

// Without a gateway every attack reaches the canary as sent: the canary
// mode must call every one of them let through, except the two where the
// backend itself declines (nothing to let through) and the HTTP/2 and
// HTTP/3 checks, which a plain-HTTP canary cannot answer.
func TestAuditWithoutGatewayCanaryMode(t *testing.T) {
	t.Parallel()
	c := newCanary(t)
	rep, err := Audit(context.Background(), Config{
		Target: mustURL(t, "http://"+c.Addr()+"/ws"), InternalPath: "/admin",
		Canary: &CanaryClient{Addr: c.Addr()},
	}, Catalogue())
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Control.OK {
		t.Fatalf("control failed: %s", rep.Control.Evidence)
	}
	if got, want := idsWith(rep, Blocked), []string{"ws-backend-426", "ws-backend-200"}; !slices.Equal(got, want) {
		t.Errorf("blocked %q, want %q", got, want)
	}
	if got, want := idsWith(rep, CantTell), []string{"h2-connect-protocol", "h3-connect-protocol"}; !slices.Equal(got, want) {
		t.Errorf("can't tell %q, want %q", got, want)
	}
	if rep.LetThrough != len(Catalogue())-4 {
		t.Errorf("%d let through, want %d", rep.LetThrough, len(Catalogue())-4)
	}
	for _, r := range rep.Results {
		if r.ID == "h2c-internal-path" && !strings.Contains(r.Evidence, "HTTP/2 GET /admin through the tunnel answered 200") ||
			r.ID == "h2c-internal-path" && !strings.Contains(r.Evidence, "backend served HTTP/2 GET /admin") {
			t.Errorf("h2c evidence %q", r.Evidence)
		}
		if r.ID == "early-bytes" && r.Evidence != "101: tunnel opened; /flag reached backend as tunnel bytes" {
			t.Errorf("early-bytes evidence %q", r.Evidence)
		}
	}
}

// The black-box mode judges only what a client sees: tunnels are let
// through, plain answers can't be told apart, the bad-101 checks are not
// sent.
func TestAuditWithoutGatewayBlackBox(t *testing.T) {
	t.Parallel()
	c := newCanary(t)
	mark, _ := c.Mark(context.Background())
	rep, err := Audit(context.Background(), Config{Target: mustURL(t, "http://"+c.Addr()+"/ws")}, Catalogue())
	if err != nil {
		t.Fatal(err)
	}
	v := verdicts(rep)
	for _, id := range []string{"h2c-settings", "h2c-upgrade-only", "h2c-internal-path", "ws-version-1337",
		"http10-websocket", "cswsh-foreign", "cswsh-null", "early-bytes"} {
		if v[id] != LetThrough {
			t.Errorf("%s: %s, want let through", id, v[id])
		}
	}
	for _, a := range Catalogue() {
		if a.NeedsCanary() && v[a.ID] != CantTell {
			t.Errorf("%s: %s, want can't tell", a.ID, v[a.ID])
		}
	}
	for _, id := range []string{"h2c-no-connection", "ws-version-1337-no-connection"} {
		if v[id] != CantTell {
			t.Errorf("%s (plain 200): %s, want can't tell", id, v[id])
		}
	}
	recs, _ := c.Since(context.Background(), mark)
	for _, r := range recs.Requests {
		if strings.Contains(r.URI, "answer=") {
			t.Errorf("the black-box mode asked the backend for an answer: %s", r.URI)
		}
	}
}

// A URL that is no WebSocket route fails the control, and then no refusal
// counts as "blocked".
func TestAuditControlFails(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "nothing here", http.StatusNotFound)
	}))
	defer srv.Close()
	rep, err := Audit(context.Background(), Config{Target: mustURL(t, srv.URL+"/nowhere")}, Catalogue())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Control.OK || !strings.Contains(rep.Control.Evidence, "404") {
		t.Errorf("control %+v", rep.Control)
	}
	if rep.Blocked != 0 || rep.LetThrough != 0 || rep.CantTell != len(Catalogue()) {
		t.Errorf("%d blocked, %d let through, %d can't tell; want all %d can't tell",
			rep.Blocked, rep.LetThrough, rep.CantTell, len(Catalogue()))
	}
}

// The black-box rules on a gateway that carries only a textbook WebSocket
// handshake from its own origin (answering the 101 itself) and refuses
// every other upgrade: refusals are blocked, a 101 given to early bytes
// with nothing coming back is can't tell, and so are the checks that need
// the canary or HTTP/2-3.
func TestAuditBlackBoxRefusals(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header
		if len(h["Upgrade"]) == 0 && len(h["Connection"]) == 0 {
			io.WriteString(w, "plain")
			return
		}
		if o := h["Origin"]; len(o) > 0 && o[0] != "http://"+r.Host {
			http.Error(w, "cross-origin", http.StatusForbidden)
			return
		}
		textbook := r.Method == "GET" && r.ProtoAtLeast(1, 1) && r.ContentLength == 0 && len(r.TransferEncoding) == 0 &&
			slices.Equal(h["Upgrade"], []string{"websocket"}) && slices.Equal(h["Connection"], []string{"Upgrade"}) &&
			len(h["Origin"]) <= 1 && slices.Equal(h["Sec-Websocket-Version"], []string{"13"}) && len(h["Sec-Websocket-Key"]) == 1
		if !textbook {
			http.Error(w, "not a WebSocket handshake", http.StatusBadRequest)
			return
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
			"Sec-WebSocket-Accept: "+AcceptFor(h.Get("Sec-Websocket-Key"))+"\r\n\r\n")
		conn.Close()
	}))
	defer srv.Close()
	rep, err := Audit(context.Background(), Config{Target: mustURL(t, srv.URL+"/ws")}, Catalogue())
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Control.OK {
		t.Fatalf("control: %s", rep.Control.Evidence)
	}
	want := []string{"early-bytes", "h2-connect-protocol", "h3-connect-protocol"}
	for _, a := range Catalogue() {
		if a.NeedsCanary() {
			want = append(want, a.ID)
		}
	}
	got := idsWith(rep, CantTell)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("can't tell %q, want %q", got, want)
	}
	if rep.LetThrough != 0 || rep.Blocked != len(Catalogue())-len(want) {
		t.Errorf("%d let through %q, %d blocked", rep.LetThrough, idsWith(rep, LetThrough), rep.Blocked)
	}
	var buf bytes.Buffer
	if err := rep.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatalf("JSON report does not parse: %v", err)
	}
	if len(back.Results) != len(Catalogue()) || !back.Control.OK || back.Blocked != rep.Blocked || back.Mode != "black-box" {
		t.Errorf("JSON report: %d results, control %+v, %d blocked, mode %q", len(back.Results), back.Control, back.Blocked, back.Mode)
	}
	buf.Reset()
	if err := rep.WriteTable(&buf); err != nil {
		t.Fatal(err)
	}
	for _, a := range Catalogue() {
		if !strings.Contains(buf.String(), a.Name) {
			t.Errorf("the table lacks %q", a.Name)
		}
	}
}
