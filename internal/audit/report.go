package audit

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"
)

// Result is the verdict on one check.
type Result struct {
	ID        string       `json:"id"`
	Attack    string       `json:"attack"`
	Group     string       `json:"group"`
	Verdict   Verdict      `json:"verdict"`
	Evidence  string       `json:"evidence"`
	Reference string       `json:"reference"`
	Obs       *Observation `json:"-"`
}

// Control is the check that makes "blocked" mean something: a valid
// WebSocket handshake from the allowed origin must get a tunnel (and, in
// the canary mode, reach the canary). If it does not, the URL is not a
// WebSocket route and every refusal proves nothing.
type Control struct {
	OK       bool   `json:"ok"`
	Evidence string `json:"evidence"`
}

// Report is a whole run.
type Report struct {
	Target       string    `json:"target"`
	Mode         string    `json:"mode"` // "black-box" or "canary"
	Origin       string    `json:"origin"`
	InternalPath string    `json:"internal_path"`
	Started      time.Time `json:"started"`
	Control      Control   `json:"control"`
	Results      []Result  `json:"results"`
	LetThrough   int       `json:"let_through"`
	Blocked      int       `json:"blocked"`
	CantTell     int       `json:"cant_tell"`
}

// Audit runs the control and then every attack, one after another.
func Audit(ctx context.Context, cfg Config, attacks []Attack) (*Report, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	rep := &Report{
		Target: cfg.Target.String(), Mode: "black-box", Origin: cfg.Origin,
		InternalPath: cfg.InternalPath, Started: time.Now().UTC().Truncate(time.Second),
	}
	if cfg.Canary != nil {
		rep.Mode = "canary"
	}
	rep.Control = cfg.RunControl(ctx)
	for _, a := range attacks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		r := Result{ID: a.ID, Attack: a.Name, Group: a.Group, Reference: a.Reference}
		if cfg.Canary == nil && a.NeedsCanary() {
			// Black-box: the real backend answers as it does; there is
			// nothing to learn by sending it.
			r.Verdict, r.Evidence = CantTell, "needs the canary backend (--backend) to answer "+string(a.Answer)
		} else {
			r.Obs = cfg.Run(ctx, a)
			r.Verdict, r.Evidence = Judge(a, r.Obs)
		}
		if !rep.Control.OK && r.Verdict == Blocked {
			r.Verdict, r.Evidence = CantTell, r.Evidence+" (the control failed)"
		}
		switch r.Verdict {
		case LetThrough:
			rep.LetThrough++
		case Blocked:
			rep.Blocked++
		default:
			rep.CantTell++
		}
		rep.Results = append(rep.Results, r)
	}
	return rep, nil
}

// RunControl sends a valid WebSocket handshake from the allowed origin and
// waits for the 101.
func (cfg *Config) RunControl(ctx context.Context) Control {
	if err := cfg.setDefaults(); err != nil {
		return Control{Evidence: err.Error()}
	}
	uri := cfg.uri("control", "atk", "")
	var mark int
	if cfg.Canary != nil {
		m, err := cfg.Canary.Mark(ctx)
		if err != nil {
			return Control{Evidence: "canary: " + err.Error()}
		}
		mark = m
	}
	conn, err := cfg.dial(ctx, "http/1.1")
	if err != nil {
		return Control{Evidence: "no connection: " + err.Error()}
	}
	defer conn.Close()
	key := NewKey()
	conn.SetWriteDeadline(time.Now().Add(cfg.Timeout))
	if _, err := io.WriteString(conn, rawRequest("GET", uri, "HTTP/1.1", cfg.Target.Host, WSLines(key, "Origin: "+cfg.Origin))); err != nil {
		return Control{Evidence: "write: " + err.Error()}
	}
	res, err := readResponse(conn, bufio.NewReader(conn), "GET", cfg.Timeout)
	switch {
	case err != nil:
		return Control{Evidence: "no response to a valid WebSocket handshake: " + err.Error()}
	case res.StatusCode != http.StatusSwitchingProtocols:
		return Control{Evidence: fmt.Sprintf("a valid WebSocket handshake from %s got %s, not 101: the URL is not a WebSocket route (or refuses that origin)", cfg.Origin, res.Status)}
	case res.Header.Get("Sec-WebSocket-Accept") != AcceptFor(key):
		return Control{Evidence: fmt.Sprintf("a valid WebSocket handshake got a 101 with Sec-WebSocket-Accept %q, want %q", res.Header.Get("Sec-WebSocket-Accept"), AcceptFor(key))}
	}
	if cfg.Canary != nil {
		time.Sleep(settleWait)
		recs, err := cfg.Canary.Since(ctx, mark)
		if err != nil {
			return Control{Evidence: "canary: " + err.Error()}
		}
		seen := false
		for _, r := range recs.Requests {
			seen = seen || strings.Contains(r.URI, cfg.marker("control", "atk"))
		}
		if !seen {
			return Control{Evidence: "a valid WebSocket handshake got a 101, but the canary never saw it: is the canary the upstream of this URL?"}
		}
		return Control{OK: true, Evidence: "a valid WebSocket handshake from " + cfg.Origin + " got a 101 from the canary"}
	}
	return Control{OK: true, Evidence: "a valid WebSocket handshake from " + cfg.Origin + " got a 101"}
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteTable writes the report as an aligned text table.
func (r *Report) WriteTable(w io.Writer) error {
	fmt.Fprintf(w, "upgrade-audit of %s (%s mode, allowed origin %s, internal path %s), %s\n",
		r.Target, r.Mode, r.Origin, r.InternalPath, r.Started.Format(time.RFC3339))
	ctl := "ok"
	if !r.Control.OK {
		ctl = "FAILED"
	}
	fmt.Fprintf(w, "control: %s: %s\n\n", ctl, r.Control.Evidence)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ATTACK\tVERDICT\tEVIDENCE\tREFERENCE")
	for _, res := range r.Results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", res.Attack, res.Verdict, res.Evidence, res.Reference)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%d let through, %d blocked, %d can't tell\n", r.LetThrough, r.Blocked, r.CantTell)
	return err
}

// WriteMarkdown writes the results as a Markdown table.
func (r *Report) WriteMarkdown(w io.Writer) error {
	fmt.Fprintln(w, "| attack | verdict | evidence | reference |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, res := range r.Results {
		v := string(res.Verdict)
		if res.Verdict == LetThrough {
			v = "**let through**"
		}
		if _, err := fmt.Fprintf(w, "| %s | %s | %s | %s |\n", mdEscape(res.Attack), v, mdEscape(res.Evidence), mdEscape(res.Reference)); err != nil {
			return err
		}
	}
	return nil
}

func mdEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
