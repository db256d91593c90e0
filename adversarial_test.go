package upgrade

// Adversarial suite: the audit of internal/audit (the catalogue `caddy
// upgrade-audit` runs) against a gateway in this process.
//
// Every HTTP/1.x attack is a raw request written on a fresh connection,
// with a second request (the "flag") to the same URL pipelined in the SAME
// write. Behind every route sits the audit's canary: a backend that answers
// 101 to anything (or the bad answer an attack asks for in its query) and
// records every byte. The invariant: the backend never receives the flag
// as raw tunnel bytes. It may receive it as a parsed, ordinary request when
// the client connection legitimately stayed HTTP. The h2c check then
// speaks HTTP/2 through the tunnel it got; the extended CONNECT checks run
// over HTTP/2 and HTTP/3.
//
// Each attack runs against three routes of one Caddy that differ only in
// front of the same canary:
//
//	/module/*  upgrade websocket { origins https://good.example; to <canary> }  then reverse_proxy <canary>
//	/policy/*  upgrade websocket { origins https://good.example }               then reverse_proxy <canary>
//	/stock/*   reverse_proxy <canary>                                           (no upgrade handler)
//
// TestAdversarial asserts the module's exact answer (delegation and
// policy-only) to every attack. TestAdversarialBaseline asserts the
// verdicts: stock Caddy lets exactly advStockLetThrough through, the module
// blocks everything; it logs the comparison as a Markdown table.
//
// Both share the one in-process Caddy (harness_test.go) and must not run in
// parallel.

import (
	"context"
	goflag "flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/seedf05e/caddy-upgrade/internal/audit"
)

// advOrigin is the origin the module's routes allow.
const advOrigin = "https://good.example"

// advStockLetThrough lists the attacks stock Caddy v2.11.9 reverse_proxy
// lets through, in catalogue order. Not in it: an Upgrade without
// Connection (Go's reverse proxy drops it as hop-by-hop), the two backend
// refusals (nothing to let through), and the HTTP/2 extended CONNECT of a
// protocol other than websocket: Caddy copies its :protocol into the
// upstream request's header, which Go's transport refuses to send (502).
// Over HTTP/3 the :protocol travels in r.Proto instead, and the CONNECT
// reaches the backend, whose 200 opens a tunnel.
var advStockLetThrough = []string{
	"h2c-settings", "h2c-upgrade-only", "h2c-upper-case", "h2c-post-body",
	"ws-post-body", "ws-chunked-body", "ws-version-1337",
	"upgrade-two-lines", "upgrade-ws-h2c", "upgrade-h2c-ws", "upgrade-folded", "upgrade-quoted", "upgrade-utf8",
	"upgrade-params", "upgrade-oversize-line", "upgrade-oversize-lines", "connection-names-key",
	"http10-websocket", "http10-h2c",
	"backend-101-h2c", "backend-101-no-connection", "backend-101-wrong-accept", "backend-101-no-accept",
	"backend-101-subprotocol", "backend-101-extension",
	"cswsh-foreign", "cswsh-null", "cswsh-look-alike", "cswsh-scheme", "cswsh-two-lines", "cswsh-list",
	"cswsh-connection-origin",
	"early-bytes",
	"h2c-internal-path", "h3-connect-protocol",
}

// advFronts are the routes an attack is run against.
var advFronts = []string{"stock", "module", "policy"}

// advRoutes is the site block of the three fronts before canary.
func advRoutes(canary string) string {
	return fmt.Sprintf(`
	handle /module/* {
		upgrade websocket {
			origins %[2]s
			to %[1]s
		}
		reverse_proxy %[1]s
	}
	handle /policy/* {
		upgrade websocket {
			origins %[2]s
		}
		reverse_proxy %[1]s
	}
	handle /stock/* {
		reverse_proxy %[1]s
	}`, canary, advOrigin)
}

// advLoad starts a canary and loads the three fronts before it into Caddy,
// on the plain HTTP site and on the HTTPS one (h1, h2, h2c and h3).
func advLoad(t *testing.T) *audit.Canary {
	t.Helper()
	c, err := audit.NewCanary("127.0.0.1:0")
	if err != nil {
		t.Fatalf("canary: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	loadH23Routes(t, advRoutes(c.Addr()))
	return c
}

// advConfig is the audit of front over HTTPS, with the canary in process.
func advConfig(t *testing.T, c *audit.Canary, front, runID string) *audit.Config {
	t.Helper()
	u, err := url.Parse("https://" + h23Authority + "/" + front + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	return &audit.Config{Target: u, Origin: advOrigin, InternalPath: "/admin", Insecure: true, Canary: c, RunID: runID, Timeout: harnessIO}
}

// advRun runs attack a against cfg.
func advRun(t *testing.T, cfg *audit.Config, a audit.Attack) *audit.Observation {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o := cfg.Run(ctx, a)
	if o.DialErr != nil {
		t.Fatalf("%s: %v", a.Name, o.DialErr)
	}
	if o.Backend == nil || o.Backend.Err != nil {
		t.Fatalf("%s: the canary's records: %+v", a.Name, o.Backend)
	}
	return o
}

func isUpgradeHeader(h http.Header) bool {
	return len(h["Upgrade"]) > 0 || connectionHas(h, "upgrade")
}

func connectionHas(h http.Header, tok string) bool {
	return slices.Contains(connectionTokens(h), tok)
}

// advCheckModule asserts the module's exact answer to attack a.
func advCheckModule(t *testing.T, a audit.Attack, o *audit.Observation) {
	t.Helper()
	e := a.Expect
	b := o.Backend
	if br := audit.Breaches(a, o); len(br) > 0 {
		t.Errorf("attack got through: %s", strings.Join(br, "; "))
	}
	if o.Res == nil {
		t.Fatalf("no response: %v (%s)", o.ResErr, o.Unavailable)
	}
	if o.Res.StatusCode != e.Status {
		t.Errorf("status %d, want %d; headers %v; body %q", o.Res.StatusCode, e.Status, o.Res.Header, o.Res.Body)
	}
	if o.RawEarly != e.RawEarly {
		t.Errorf("raw early-bytes 400: got %v, want %v (headers %v)", o.RawEarly, e.RawEarly, o.Res.Header)
	}
	if e.RawEarly {
		// http.ReadResponse consumes "Connection: close" into Close.
		if !o.Res.Close {
			t.Errorf("raw 400 without Connection: close")
		}
		if got := o.Res.Header.Get("Content-Length"); got != "0" {
			t.Errorf("raw 400 Content-Length %q, want 0", got)
		}
	}
	for name, want := range e.Headers {
		if got := o.Res.Header[http.CanonicalHeaderKey(name)]; len(got) == 0 || got[0] != want {
			t.Errorf("response %s %q, want %q (headers %v)", name, got, want, o.Res.Header)
		}
	}
	for _, name := range e.Absent {
		if got, ok := o.Res.Header[http.CanonicalHeaderKey(name)]; ok {
			t.Errorf("response carries %s %q (headers %v)", name, got, o.Res.Header)
		}
	}
	if e.Body != "" && o.Res.Body != e.Body {
		t.Errorf("response body %q, want %q", o.Res.Body, e.Body)
	}
	if len(b.OtherRequests) > 0 || len(b.H2Requests) > 0 {
		t.Errorf("backend parsed unexpected requests %q %q", b.OtherRequests, b.H2Requests)
	}

	switch e.Backend {
	case audit.BackendUntouched:
		if b.AttackReached || b.AttackReq != nil {
			t.Errorf("the refused request reached the backend (parsed: %v)", b.AttackReq != nil)
		}
	case audit.BackendPlain:
		r := b.AttackReq
		switch {
		case r == nil:
			t.Fatalf("the stripped request did not reach the backend")
		case isUpgradeHeader(r.Header):
			t.Errorf("backend received upgrade fields: Connection %q Upgrade %q", r.Header["Connection"], r.Header["Upgrade"])
		case e.NoSettings && len(r.Header["Http2-Settings"]) > 0:
			t.Errorf("backend received HTTP2-Settings %q of a stripped h2c offer", r.Header["Http2-Settings"])
		case r.Switched:
			t.Errorf("backend switched protocols for a stripped request")
		case a.Body != "" && string(r.Body) != a.Body:
			t.Errorf("stripped request's body %q at the backend, want %q", r.Body, a.Body)
		}
		if want := "backend " + r.Method + " " + o.AttackURI; r.Method != a.Method || o.Res.Body != want {
			t.Errorf("response body %q from a %s, want the backend's %q to a %s", o.Res.Body, r.Method, want, a.Method)
		}
	case audit.BackendRefused, audit.BackendWSClosed:
		r := b.AttackReq
		if r == nil {
			t.Fatalf("the upgrade did not reach the backend")
		}
		if got := r.Header["Upgrade"]; !reflect.DeepEqual(got, []string{"websocket"}) {
			t.Errorf("backend received Upgrade %q, want exactly [websocket]", got)
		}
		if e.Backend == audit.BackendRefused {
			if r.Switched {
				t.Errorf("backend switched")
			}
			break
		}
		if !r.Switched {
			t.Errorf("backend did not switch (test setup)")
		}
		if !b.BackendClosed {
			t.Errorf("backend connection still open 3s after the refused switch")
		}
		if len(b.AttackTunnelRx) > 0 {
			t.Errorf("backend tunnel received %q", b.AttackTunnelRx)
		}
	}

	switch e.After {
	case audit.AfterRouted:
		if o.FlagRes == nil {
			t.Fatalf("no response to the pipelined flag request: %v (connection closed: %v)", o.FlagErr, o.ConnClosed)
		}
		if want := "backend GET " + o.FlagURI; o.FlagRes.StatusCode != 200 || o.FlagRes.Body != want {
			t.Errorf("pipelined flag: %s %q, want 200 %q", o.FlagRes.Status, o.FlagRes.Body, want)
		}
		if b.FlagParsed != 1 {
			t.Errorf("backend parsed the flag request %d times, want 1", b.FlagParsed)
		}
	case audit.AfterClosed:
		if !o.ConnClosed {
			t.Errorf("client connection not closed")
		}
		if b.FlagRaw != 0 || b.FlagParsed != 0 {
			t.Errorf("backend received the flag (%d times raw, %d parsed)", b.FlagRaw, b.FlagParsed)
		}
	}
}

// TestAdversarial runs every attack against the module, in delegation and
// in policy-only mode, and asserts its exact answer.
func TestAdversarial(t *testing.T) {
	c := advLoad(t)
	for _, front := range []string{"module", "policy"} {
		t.Run(front, func(t *testing.T) {
			cfg := advConfig(t, c, front, "adv-"+front)
			for _, a := range audit.Catalogue() {
				t.Run(a.Name, func(t *testing.T) {
					advCheckModule(t, a, advRun(t, cfg, a))
				})
			}
		})
	}

	// Controls: each front carries a WebSocket from its own origin, whose
	// client waited for the 101, so the refusals above are the guards at
	// work and not broken routes.
	for _, front := range []string{"module", "policy"} {
		t.Run(front+"/control: good Origin, client waits for the 101", func(t *testing.T) {
			mark, _ := c.Mark(context.Background())
			path := "/" + front + "/control"
			raw := dialRaw(t)
			req, key := wsHandshake(path, "Origin: https://Good.Example:443")
			res := raw.Do(req)
			requireStatus(t, res, http.StatusSwitchingProtocols)
			if got := res.Header.Get("Sec-WebSocket-Accept"); got != audit.AcceptFor(key) {
				t.Errorf("101 Accept %q", got)
			}
			raw.Send("ping")
			buf := make([]byte, 4)
			raw.Conn.SetReadDeadline(time.Now().Add(harnessIO))
			if _, err := io.ReadFull(raw.R, buf); err != nil || string(buf) != "ping" {
				t.Errorf("tunnel echo %q, %v", buf, err)
			}
			recs, err := c.Since(context.Background(), mark)
			if err != nil || len(recs.Requests) != 1 || recs.Requests[0].URI != path || !recs.Requests[0].Switched {
				t.Errorf("canary's requests since the control began: %+v, %v", recs, err)
			}
			cfg := advConfig(t, c, front, "ctl-"+front)
			if ctl := cfg.RunControl(context.Background()); !ctl.OK {
				t.Errorf("the audit's control failed: %s", ctl.Evidence)
			}
		})
	}
}

// TestAdversarialBaseline runs the catalogue against stock Caddy
// (reverse_proxy, no upgrade handler) and against the module, and asserts
// the verdicts: stock Caddy lets exactly advStockLetThrough through, the
// module lets nothing through. The comparison is logged as a Markdown
// table.
func TestAdversarialBaseline(t *testing.T) {
	c := advLoad(t)
	var table strings.Builder
	table.WriteString("| attack | stock `reverse_proxy` | with `upgrade` (delegation) | with `upgrade` (policy-only) |\n")
	table.WriteString("|---|---|---|---|\n")
	var stockLet []string
	for _, a := range audit.Catalogue() {
		row := map[string]string{}
		for _, front := range advFronts {
			t.Run(front+"/"+a.Name, func(t *testing.T) {
				o := advRun(t, advConfig(t, c, front, "base-"+front), a)
				v, evidence := audit.Judge(a, o)
				row[front] = string(v) + ": " + evidence
				if v == audit.LetThrough {
					row[front] = "**let through**: " + evidence
				}
				switch {
				case front == "stock" && v == audit.LetThrough:
					stockLet = append(stockLet, a.ID)
				case front != "stock" && v != audit.Blocked:
					t.Errorf("%s: %s: %s", front, v, evidence)
				}
			})
		}
		fmt.Fprintf(&table, "| %s | %s | %s | %s |\n", strings.ReplaceAll(a.Name, "|", `\|`),
			row["stock"], row["module"], row["policy"])
	}
	t.Logf("adversarial baseline (stock Caddy v2.11.9 vs the upgrade module):\n\n%s", table.String())
	if !slices.Equal(stockLet, advStockLetThrough) {
		t.Errorf("stock Caddy let through\n%q\nwant\n%q", stockLet, advStockLetThrough)
	}
	if !t.Failed() {
		checkAttacksDoc(t, table.String())
	}
}

var updateAttacks = goflag.Bool("update-attacks", false, "rewrite the table of docs/attacks.md from TestAdversarialBaseline's run")

// The generated part of docs/attacks.md.
const (
	attacksDoc        = "docs/attacks.md"
	attacksTableBegin = "<!-- BEGIN TABLE: generated by TestAdversarialBaseline; go test -run '^TestAdversarialBaseline$' -update-attacks . -->\n"
	attacksTableEnd   = "<!-- END TABLE -->\n"
)

// checkAttacksDoc fails unless docs/attacks.md holds exactly the table
// this run produced, so the published table cannot drift from the test;
// with -update-attacks it writes the table instead.
func checkAttacksDoc(t *testing.T, table string) {
	t.Helper()
	data, err := os.ReadFile(attacksDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	i, j := strings.Index(doc, attacksTableBegin), strings.Index(doc, attacksTableEnd)
	if i < 0 || j < i {
		t.Fatalf("%s has no generated table between %q and %q", attacksDoc, attacksTableBegin, attacksTableEnd)
	}
	i += len(attacksTableBegin)
	if doc[i:j] == table {
		return
	}
	if *updateAttacks {
		if err := os.WriteFile(attacksDoc, []byte(doc[:i]+table+doc[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s's table differs from this run's; rewrite it with go test -run '^TestAdversarialBaseline$' -update-attacks . (this run's table is logged above)", attacksDoc)
}
