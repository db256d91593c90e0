package audit

import (
	"fmt"
	"net/http"
	"strings"
)

// Verdict is the outcome of one check.
type Verdict string

const (
	Blocked    Verdict = "blocked"
	LetThrough Verdict = "let through"
	CantTell   Verdict = "can't tell"
)

// Breaches lists what got through, judged the same way for every gateway.
// Breaches that only the backend can see are listed only when o.Backend
// holds the canary's records.
func Breaches(a Attack, o *Observation) []string {
	var out []string
	e := a.Expect
	switch a.Kind {
	case KindHTTP2, KindHTTP3:
		if o.Res != nil && o.Res.StatusCode >= 200 && o.Res.StatusCode < 300 {
			out = append(out, fmt.Sprintf("%d to :protocol %s: tunnel opened", o.Res.StatusCode, a.Protocol))
		}
	default:
		switch {
		case o.Got101 && a.EarlyData && o.Backend == nil:
			if len(o.TunnelRx) > 0 {
				out = append(out, fmt.Sprintf("101, then %d bytes back through the tunnel in answer to the early bytes", len(o.TunnelRx)))
			}
		case o.Got101:
			out = append(out, "101: tunnel opened")
		}
		if in := o.Internal; in != nil && in.Err == nil && in.Status != 0 {
			out = append(out, fmt.Sprintf("HTTP/2 GET %s through the tunnel answered %d", in.Path, in.Status))
		}
		if e.Status == http.StatusBadGateway && o.Res != nil && o.Res.StatusCode < 300 {
			out = append(out, fmt.Sprintf("bad 101 answered %d", o.Res.StatusCode))
		}
	}
	b := o.Backend
	if b == nil || b.Err != nil {
		return out
	}
	if b.SawH2C {
		out = append(out, "Upgrade: h2c reached backend")
	}
	if len(b.H2Requests) > 0 {
		out = append(out, "backend served HTTP/2 "+strings.Join(b.H2Requests, ", "))
	}
	if b.FlagTunneled {
		out = append(out, "/flag reached backend as tunnel bytes")
	}
	if len(b.AttackTunnelRx) > 0 && !b.FlagTunneled && a.Kind == KindHTTP1 {
		out = append(out, fmt.Sprintf("%d client bytes reached the backend's tunnel", len(b.AttackTunnelRx)))
	}
	if e.Backend == BackendUntouched && b.AttackReached {
		out = append(out, "upgrade forwarded to backend")
	}
	if e.Backend == BackendPlain && b.AttackReq != nil && isUpgradeRequestLoose(b.AttackReq.Header) {
		out = append(out, "upgrade forwarded to backend")
	}
	if b.Switched && !o.Got101 && !b.BackendClosed {
		out = append(out, "switched backend connection left open")
	}
	return out
}

// isUpgradeRequestLoose reports whether a request as the backend got it
// carries any upgrade field: an Upgrade line or a Connection: upgrade.
func isUpgradeRequestLoose(h http.Header) bool {
	return len(h["Upgrade"]) > 0 || connectionHas(h, "upgrade")
}

// Status is a short account of the gateway's answer.
func Status(a Attack, o *Observation) string {
	switch {
	case o.DialErr != nil:
		return "no connection: " + o.DialErr.Error()
	case o.Unavailable != "":
		return o.Unavailable
	case o.Res == nil:
		if o.ResErr != nil {
			return "no response: " + o.ResErr.Error()
		}
		return "no response"
	case o.RawEarly:
		return "raw 400, closed"
	}
	s := fmt.Sprint(o.Res.StatusCode)
	if b := o.Backend; b != nil && b.AttackReq != nil && !isUpgradeRequestLoose(b.AttackReq.Header) &&
		o.Res.StatusCode == 200 && a.Expect.Backend == BackendPlain {
		s += ", plain request"
	}
	if in := o.Internal; in != nil && in.Err != nil {
		s += "; HTTP/2 GET " + in.Path + " through the tunnel: " + in.Err.Error()
	}
	if (a.Kind == KindHTTP2 || a.Kind == KindHTTP3) && !o.XConnectAdvertised {
		s += "; extended CONNECT not advertised"
	}
	return s
}

// Judge gives the verdict on one check, and the evidence for it.
//
// With the canary's records every check is judged exactly: "let through"
// if anything got through, else "blocked". Without them (black-box), a
// check is "let through" on what a client alone sees (a tunnel, an HTTP/2
// answer through it), "blocked" when the gateway refused it (a 4xx or 5xx,
// a reset stream), and "can't tell" otherwise: a plain answer does not show
// whether the upgrade fields reached the backend, and the checks of bad
// backend answers need the canary to give them.
func Judge(a Attack, o *Observation) (Verdict, string) {
	st := Status(a, o)
	if br := Breaches(a, o); len(br) > 0 {
		ev := strings.Join(br, "; ")
		if !strings.HasPrefix(ev, st+":") {
			ev += " (" + st + ")"
		}
		return LetThrough, ev
	}
	if o.Backend != nil && o.Backend.Err != nil {
		return CantTell, st + "; canary: " + o.Backend.Err.Error()
	}
	if o.DialErr != nil || o.Unavailable != "" {
		return CantTell, st
	}
	if o.Backend != nil {
		return Blocked, st + backendSummary(a, o.Backend)
	}
	if a.NeedsCanary() {
		return CantTell, "needs the canary backend (--backend) to answer " + string(a.Answer)
	}
	switch {
	case o.Got101 && a.EarlyData:
		return CantTell, st + "; nothing came back through the tunnel: only the canary shows whether the early bytes reached the backend"
	case o.RawEarly:
		return Blocked, st
	case o.Res != nil && o.Res.StatusCode >= 400:
		return Blocked, st + "; no tunnel"
	case o.Res == nil && o.ResErr != nil && strings.HasPrefix(o.ResErr.Error(), "stream reset"):
		return Blocked, st
	case o.Res != nil:
		return CantTell, st + "; no tunnel, but only the canary shows what the backend received"
	}
	return CantTell, st
}

func backendSummary(a Attack, b *BackendView) string {
	switch {
	case b.AttackReq == nil && !b.AttackReached:
		return "; backend untouched"
	case b.Switched:
		return "; backend's 101 refused, its connection closed"
	case b.AttackReq != nil && a.Expect.Backend == BackendPlain:
		return "" // "plain request" is in the status
	case b.AttackReq != nil:
		return "; backend declined the upgrade"
	}
	return ""
}
