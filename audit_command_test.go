package upgrade

// `caddy upgrade-audit`, run as Caddy runs it (the registered command, its
// flags parsed by cobra, its exit status) against the in-process Caddy of
// harness_test.go: stock reverse_proxy and the upgrade module, each before
// the canary that the command's own `backend` subcommand serves.

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/seedf05e/caddy-upgrade/internal/audit"
)

// runAuditCommand runs `caddy upgrade-audit args...` and returns what it
// printed and its exit status.
func runAuditCommand(t *testing.T, ctx context.Context, out *lockedBuffer, args ...string) int {
	t.Helper()
	return runAuditCommandErr(t, ctx, out, new(lockedBuffer), args...)
}

// runAuditCommandErr is runAuditCommand with standard error apart.
func runAuditCommandErr(t *testing.T, ctx context.Context, out, errOut *lockedBuffer, args ...string) int {
	t.Helper()
	reg, ok := caddycmd.Commands()["upgrade-audit"]
	if !ok {
		t.Fatal("upgrade-audit is not a registered Caddy command")
	}
	// What caddycmd does with a registered command when it builds its CLI
	// (its root command silences usage on errors).
	cmd := &cobra.Command{Use: reg.Name + " " + reg.Usage, Short: reg.Short, Long: reg.Long, SilenceUsage: true}
	reg.CobraFunc(cmd)
	cmd.SetOut(out)
	cmd.SetErr(errOut)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	// WrapCommandFuncForCobra carries a status above 1 in an error whose
	// text is Caddy's "exiting with status N".
	var status int
	if _, serr := fmt.Sscanf(err.Error(), "exiting with status %d", &status); serr == nil {
		return status
	}
	t.Logf("upgrade-audit %s: %v", strings.Join(args, " "), err)
	return 1
}

// startAuditBackend runs `caddy upgrade-audit backend` on a free loopback
// port until the test ends and returns its address.
func startAuditBackend(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := new(lockedBuffer)
	done := make(chan int, 1)
	go func() { done <- runAuditCommand(t, ctx, out, "backend", "--listen", "127.0.0.1:0") }()
	t.Cleanup(func() {
		cancel()
		if status := <-done; status != 0 {
			t.Errorf("upgrade-audit backend exited with %d: %s", status, out.Bytes())
		}
	})
	re := regexp.MustCompile(`listening on (127\.0\.0\.1:\d+)`)
	var addr string
	if !pollUntil(harnessIO, func() bool {
		m := re.FindSubmatch(out.Bytes())
		if m != nil {
			addr = string(m[1])
		}
		return m != nil
	}) {
		t.Fatalf("upgrade-audit backend did not say where it listens: %q", out.Bytes())
	}
	return addr
}

// auditURL is the HTTPS URL of a front of advRoutes.
func auditURL(front string) string { return "https://" + h23Authority + "/" + front + "/ws" }

func decodeReport(t *testing.T, out *lockedBuffer) *audit.Report {
	t.Helper()
	var rep audit.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, out.Bytes())
	}
	return &rep
}

func reportIDs(rep *audit.Report, v audit.Verdict) []string {
	var ids []string
	for _, r := range rep.Results {
		if r.Verdict == v {
			ids = append(ids, r.ID)
		}
	}
	return ids
}

// The canary mode judges stock Caddy exactly as TestAdversarialBaseline
// does, and finds nothing let through by the module.
func TestAuditCommandCanaryMode(t *testing.T) {
	canary := startAuditBackend(t)
	loadH23Routes(t, advRoutes(canary))
	for _, front := range advFronts {
		t.Run(front, func(t *testing.T) {
			out, errOut := new(lockedBuffer), new(lockedBuffer)
			status := runAuditCommandErr(t, context.Background(), out, errOut, "--backend", canary, "--insecure",
				"--origin", advOrigin, "--internal-path", "/admin", "--json", auditURL(front))
			if len(errOut.Bytes()) > 0 {
				t.Errorf("standard error: %q", errOut.Bytes())
			}
			rep := decodeReport(t, out)
			if rep.Mode != "canary" || !rep.Control.OK {
				t.Fatalf("mode %q, control %+v", rep.Mode, rep.Control)
			}
			if len(rep.Results) != len(audit.Catalogue()) {
				t.Fatalf("%d results, want one per attack (%d)", len(rep.Results), len(audit.Catalogue()))
			}
			if front == "stock" {
				if status != 3 {
					t.Errorf("exit status %d, want 3", status)
				}
				if got := reportIDs(rep, audit.LetThrough); !slices.Equal(got, advStockLetThrough) {
					t.Errorf("let through\n%q\nwant (TestAdversarialBaseline's)\n%q", got, advStockLetThrough)
				}
				return
			}
			if status != 0 || rep.LetThrough != 0 || rep.Blocked != len(rep.Results) {
				t.Errorf("exit status %d; let through %q; can't tell %q", status,
					reportIDs(rep, audit.LetThrough), reportIDs(rep, audit.CantTell))
			}
		})
	}
}

// The black-box mode, with only what a client sees, flags h2c smuggling
// and cross-site WebSocket hijacking on stock Caddy, and nothing on the
// module.
func TestAuditCommandBlackBox(t *testing.T) {
	c, err := audit.NewCanary("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	loadH23Routes(t, advRoutes(c.Addr()))
	mark, _ := c.Mark(context.Background())

	out := new(lockedBuffer)
	status := runAuditCommand(t, context.Background(), out, "--insecure", "--origin", advOrigin,
		"--internal-path", "/admin", "--json", auditURL("stock"))
	rep := decodeReport(t, out)
	if status != 3 || rep.Mode != "black-box" || !rep.Control.OK {
		t.Errorf("stock: exit status %d, mode %q, control %+v", status, rep.Mode, rep.Control)
	}
	let := reportIDs(rep, audit.LetThrough)
	for _, a := range audit.Catalogue() {
		if (a.Group == "h2c" && a.ID != "h2c-no-connection") || a.Group == "CSWSH" {
			if !slices.Contains(let, a.ID) {
				t.Errorf("stock: %s not flagged (let through: %q)", a.ID, let)
			}
		}
	}
	for _, r := range rep.Results {
		if r.ID == "h2c-internal-path" && !strings.Contains(r.Evidence, "HTTP/2 GET /admin through the tunnel answered 200") {
			t.Errorf("stock: h2c evidence %q", r.Evidence)
		}
	}
	recs, err := c.Since(context.Background(), mark)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs.Requests {
		if strings.Contains(r.URI, "answer=") {
			t.Errorf("black-box mode asked the backend for an answer: %s", r.URI)
		}
	}

	for _, front := range []string{"module", "policy"} {
		t.Run(front, func(t *testing.T) {
			out := new(lockedBuffer)
			status := runAuditCommand(t, context.Background(), out, "--insecure", "--origin", advOrigin, auditURL(front))
			text := string(out.Bytes())
			if status != 0 || !strings.Contains(text, "control: ok") || !strings.Contains(text, "\n0 let through,") {
				t.Errorf("exit status %d:\n%s", status, text)
			}
			for _, want := range []string{"ATTACK", "VERDICT", "EVIDENCE", "REFERENCE", "CSWSH: Origin null", "blocked", "403; no tunnel", "RFC 6455 §10.2"} {
				if !strings.Contains(text, want) {
					t.Errorf("the table lacks %q:\n%s", want, text)
				}
			}
		})
	}
}

// Usage: the help tells who may run it, and bad invocations exit 1
// without sending anything.
func TestAuditCommandUsage(t *testing.T) {
	out := new(lockedBuffer)
	if status := runAuditCommand(t, context.Background(), out, "--help"); status != 0 {
		t.Errorf("--help exit status %d", status)
	}
	help := string(out.Bytes())
	for _, want := range []string{"Run it only against systems you operate", "--backend", "--internal-path",
		"--origin", "--json", "backend", "Exit status"} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q:\n%s", want, help)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, args := range [][]string{
		{},
		{"ftp://gw.example/ws"},
		{"--origin", "https://gw.example/path", "https://127.0.0.1:1/ws"},
		{"--backend", "no-port", "https://127.0.0.1:1/ws"},
		{"--backend", "127.0.0.1:1", "https://127.0.0.1:1/ws"}, // no canary there
		{"--timeout", "0s", "https://127.0.0.1:1/ws"},
		{"backend"}, // no --listen
	} {
		out := new(lockedBuffer)
		if status := runAuditCommand(t, ctx, out, args...); status != 1 {
			t.Errorf("upgrade-audit %q: exit status %d, want 1; output %q", args, status, out.Bytes())
		}
	}
	// A URL where nothing listens: the audit runs, but the control fails
	// and no verdict is "blocked".
	out = new(lockedBuffer)
	if status := runAuditCommand(t, ctx, out, "--json", "--timeout", "1s", "http://127.0.0.1:1/ws"); status != 4 {
		t.Errorf("nothing listening: exit status %d, want 4; %s", status, out.Bytes())
	}
	if rep := decodeReport(t, out); rep.Control.OK || rep.Blocked != 0 || rep.LetThrough != 0 {
		t.Errorf("nothing listening: control %+v, %d blocked, %d let through", rep.Control, rep.Blocked, rep.LetThrough)
	}
}
