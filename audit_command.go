package upgrade

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/seedf05e/caddy-upgrade/internal/audit"
)

// Exit statuses of `caddy upgrade-audit`, apart from 0 (nothing let
// through) and 1 (the audit could not run).
const (
	auditExitLetThrough    = 3
	auditExitControlFailed = 4
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "upgrade-audit",
		Usage: "<url> [--backend <host:port>] [--origin <origin>] [--internal-path <path>] [--insecure] [--json] [--timeout <duration>]",
		Short: "Runs protocol-upgrade attacks against a gateway you operate",
		Long: `
Runs the catalogue of protocol-upgrade attacks of the upgrade module
(h2c smuggling, WebSocket smuggling, malformed Upgrade fields, HTTP/1.0
upgrades, bad backend 101s, cross-site WebSocket hijacking, early data,
extended CONNECT on HTTP/2 and HTTP/3) against the gateway route at <url>,
and prints one row per attack: the verdict (blocked, let through, can't
tell), the evidence, and the RFC section or write-up it comes from.

Run it only against systems you operate: it sends attack traffic. It sends
traffic to the host and port of <url> alone (TCP, and UDP for HTTP/3) and,
with --backend, to the canary's address; nothing else.

<url> should be a route that carries WebSockets: a valid handshake from
--origin must get a 101, or no "blocked" verdict is given (exit status 4).

Two modes:

Black-box (no --backend): judges only what a client sees. A tunnel, or
an HTTP/2 answer through an h2c tunnel, is "let through"; a refusal
(4xx, 5xx, reset stream) is "blocked"; anything else, and every check
of a bad backend answer, is "can't tell".

Canary (--backend): put the canary behind the route first,

  caddy upgrade-audit backend --listen 127.0.0.1:9999

point the gateway's route at it, then run

  caddy upgrade-audit --backend 127.0.0.1:9999 https://gw.example/canary

The canary answers 101 to anything, or the bad answer a check asks for,
and records every byte it receives; the auditor reads those records, so
every check is judged exactly, including what reached the backend.

--origin is the origin the route allows (default: the URL's own); the
cross-site checks send foreign origins derived from it.
--internal-path is what the h2c check asks for over HTTP/2 once it has a
tunnel: a path the gateway does not serve to this client (default /).
--insecure skips verifying the gateway's TLS certificate.
--json prints a machine-readable report instead of the table.

Exit status: 0 if nothing was let through, 3 if something was, 4 if the
control handshake failed, 1 if the audit could not run.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Args = cobra.MaximumNArgs(1)
			cmd.Flags().String("backend", "", "Address (host:port) of the canary behind the route: the canary mode")
			cmd.Flags().String("origin", "", "Origin the route allows (default: the URL's own)")
			cmd.Flags().String("internal-path", "/", "Path the h2c check requests over HTTP/2 through the tunnel")
			cmd.Flags().Bool("insecure", false, "Do not verify the gateway's TLS certificate")
			cmd.Flags().Bool("json", false, "Print the report as JSON")
			cmd.Flags().Duration("timeout", 5*time.Second, "Bound on each network wait")
			cmd.RunE = func(c *cobra.Command, args []string) error {
				var runErr error
				err := caddycmd.WrapCommandFuncForCobra(func(fs caddycmd.Flags) (int, error) {
					var status int
					status, runErr = cmdUpgradeAudit(c.Context(), fs, args, c.OutOrStdout())
					return status, runErr
				})(c, args)
				if err != nil && runErr == nil {
					// A finding, not a failure: the report already says
					// what, so no "Error: exiting with status 3" below it.
					c.SilenceErrors = true
				}
				return err
			}

			backend := &cobra.Command{
				Use:   "backend --listen <host:port>",
				Short: "Runs the canary backend for the canary mode",
				Long: `
Runs the canary backend on the given address until interrupted. It answers
101 to any upgrade (or the bad answer a check asks for in its query),
answers every other request with a plain 200, records every byte it
receives, and serves those records to the auditor under ` + audit.ControlPrefix + `.
It listens only on --listen; give a loopback or private address that the
gateway can reach, as it answers anyone who connects.
`,
				Args: cobra.NoArgs,
			}
			backend.Flags().String("listen", "", "Address to listen on (required), e.g. 127.0.0.1:9999")
			backend.RunE = func(c *cobra.Command, args []string) error {
				return caddycmd.WrapCommandFuncForCobra(func(fs caddycmd.Flags) (int, error) {
					return cmdUpgradeAuditBackend(c.Context(), fs, c.OutOrStdout())
				})(c, args)
			}
			cmd.AddCommand(backend)
		},
	})
}

// cmdUpgradeAudit runs the audit of args[0] and writes the report to out.
func cmdUpgradeAudit(ctx context.Context, fs caddycmd.Flags, args []string, out io.Writer) (int, error) {
	if len(args) != 1 {
		return 1, errors.New("the URL of a gateway route is required, e.g. caddy upgrade-audit https://gw.example/ws")
	}
	target, err := url.Parse(args[0])
	if err != nil || (target.Scheme != "http" && target.Scheme != "https") || target.Host == "" {
		return 1, fmt.Errorf("%q is not an http:// or https:// URL", args[0])
	}
	cfg := audit.Config{
		Target:       target,
		InternalPath: fs.String("internal-path"),
		Insecure:     fs.Bool("insecure"),
	}
	if o := fs.String("origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Scheme == "" || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.User != nil {
			return 1, fmt.Errorf("--origin %q is not an origin (scheme://host[:port])", o)
		}
		cfg.Origin = o
	}
	if cfg.Timeout, err = fs.GetDuration("timeout"); err != nil || cfg.Timeout <= 0 {
		return 1, fmt.Errorf("--timeout must be a positive duration")
	}
	if b := fs.String("backend"); b != "" {
		if _, _, err := net.SplitHostPort(b); err != nil {
			return 1, fmt.Errorf("--backend %q is not host:port: %v", b, err)
		}
		cfg.Canary = &audit.CanaryClient{Addr: b}
		// A canary that cannot be read would turn every check into "can't
		// tell"; better to say so at once.
		if _, err := cfg.Canary.Mark(ctx); err != nil {
			return 1, err
		}
	}
	rep, err := audit.Audit(ctx, cfg, audit.Catalogue())
	if err != nil {
		return 1, err
	}
	if fs.Bool("json") {
		err = rep.WriteJSON(out)
	} else {
		err = rep.WriteTable(out)
	}
	if err != nil {
		return 1, err
	}
	switch {
	case rep.LetThrough > 0:
		return auditExitLetThrough, nil
	case !rep.Control.OK:
		return auditExitControlFailed, nil
	}
	return 0, nil
}

// cmdUpgradeAuditBackend runs the canary until ctx ends or a signal
// arrives.
func cmdUpgradeAuditBackend(ctx context.Context, fs caddycmd.Flags, out io.Writer) (int, error) {
	addr := fs.String("listen")
	if addr == "" {
		return 1, errors.New("--listen is required: the canary listens only where told")
	}
	c, err := audit.NewCanary(addr)
	if err != nil {
		return 1, err
	}
	defer c.Close()
	fmt.Fprintf(out, "upgrade-audit canary listening on %s\nroute the gateway to it, then run: caddy upgrade-audit --backend %s <gateway URL>\n", c.Addr(), c.Addr())
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return 0, nil
}
