package protocol

import (
	"net/http"
	"strings"
	"testing"
)

// testPolicy builds a policy from configured protocol strings, as Provision
// does.
func testPolicy(t *testing.T, require, reject bool, allowed ...string) *Policy {
	t.Helper()
	var ps []Protocol
	for _, s := range allowed {
		pr, ok := ParseProtocol(s)
		if !ok {
			t.Fatalf("bad protocol %q in test", s)
		}
		ps = append(ps, pr)
	}
	p := NewPolicy(ps, require, reject)
	return &p
}

func h1Offer(ss ...string) Offer { return Offer{Protocols: protos(ss...)} }

func xcOffer(name string) Offer {
	return Offer{Protocols: []Protocol{{Name: name}}, ExtendedConnect: true}
}

// TestPolicyTable is the docs/behaviour.md §3 table, row by row, for every
// combination of require and on_disallowed, on HTTP/1.1, HTTP/2 and HTTP/3.
func TestPolicyTable(t *testing.T) {
	allowed := []string{"websocket", "foo/2"}
	type row struct {
		name        string
		offer       Offer
		require     bool
		reject      bool
		major       int
		wantOutcome Outcome
		wantStatus  int
	}
	var rows []row
	for _, major := range []int{1, 2, 3} {
		required := http.StatusUpgradeRequired
		if major >= 2 {
			required = http.StatusBadRequest // a 426 cannot be sent on HTTP/2-3
		}
		none := Offer{}
		selectable := h1Offer("websocket")
		disallowed := h1Offer("bar")
		if major >= 2 {
			selectable = xcOffer("websocket")
			disallowed = xcOffer("bar")
		}
		disallowedOutcome, disallowedStatus := OutcomeIgnored, 0
		disallowedRequired, disallowedRequiredStatus := OutcomeRequired, required
		if major >= 2 {
			// extended CONNECT whose :protocol is not allowed: 501, even
			// under require (selection comes before require,
			// docs/behaviour.md §3 order).
			disallowedOutcome, disallowedStatus = OutcomeUnsupported, http.StatusNotImplemented
			disallowedRequired, disallowedRequiredStatus = OutcomeUnsupported, http.StatusNotImplemented
		}
		rows = append(rows,
			// no offer
			row{"no offer, require off, ignore", none, false, false, major, OutcomeNone, 0},
			row{"no offer, require off, reject", none, false, true, major, OutcomeNone, 0},
			row{"no offer, require on, ignore", none, true, false, major, OutcomeRequired, required},
			row{"no offer, require on, reject", none, true, true, major, OutcomeRequired, required},
			// offer, a protocol selected
			row{"selected, require off, ignore", selectable, false, false, major, OutcomeAccepted, 0},
			row{"selected, require off, reject", selectable, false, true, major, OutcomeAccepted, 0},
			row{"selected, require on, ignore", selectable, true, false, major, OutcomeAccepted, 0},
			row{"selected, require on, reject", selectable, true, true, major, OutcomeAccepted, 0},
			// offer, nothing allowed, on_disallowed ignore
			row{"nothing allowed, require off, ignore", disallowed, false, false, major, disallowedOutcome, disallowedStatus},
			row{"nothing allowed, require on, ignore", disallowed, true, false, major, disallowedRequired, disallowedRequiredStatus},
			// offer, nothing allowed, on_disallowed reject: 403 either way
			row{"nothing allowed, require off, reject", disallowed, false, true, major, OutcomeRejected, http.StatusForbidden},
			row{"nothing allowed, require on, reject", disallowed, true, true, major, OutcomeRejected, http.StatusForbidden},
		)
	}
	for _, tc := range rows {
		t.Run(tc.name+", HTTP/"+string(rune('0'+tc.major)), func(t *testing.T) {
			p := testPolicy(t, tc.require, tc.reject, allowed...)
			v := p.Decide(tc.offer, tc.major)
			if v.Outcome != tc.wantOutcome || v.Status != tc.wantStatus {
				t.Fatalf("Decide(%+v, %d) = %s %d; want %s %d", tc.offer, tc.major, v.Outcome, v.Status, tc.wantOutcome, tc.wantStatus)
			}
			if v.Outcome == OutcomeAccepted {
				if v.Selected.Name == "" || v.Entry.Name == "" {
					t.Errorf("accepted verdict without selected/entry: %+v", v)
				}
			} else if v.Selected != (Protocol{}) || v.Entry != (Protocol{}) {
				t.Errorf("verdict %s carries a selection: %+v", v.Outcome, v)
			}
		})
	}
}

// TestPolicyRequiredStatus checks that the 426-or-400 choice depends on the
// request's HTTP version only (docs/behaviour.md §3: never 426 on HTTP/2-3).
func TestPolicyRequiredStatus(t *testing.T) {
	for major, want := range map[int]int{1: 426, 2: 400, 3: 400} {
		if got := RequiredStatus(major); got != want {
			t.Errorf("RequiredStatus(%d) = %d; want %d", major, got, want)
		}
	}
}

func TestPolicySelection(t *testing.T) {
	tests := []struct {
		name      string
		allowed   []string
		offer     Offer
		wantSel   string // "" means nothing selected
		wantEntry string
	}{
		{name: "client order wins over configured order",
			allowed: []string{"foo", "websocket"}, offer: h1Offer("websocket", "foo"),
			wantSel: "websocket", wantEntry: "websocket"},
		{name: "client order, first allowed one",
			allowed: []string{"websocket", "foo"}, offer: h1Offer("bar", "foo", "websocket"),
			wantSel: "foo", wantEntry: "foo"},
		{name: "name case-insensitive, selected as written",
			allowed: []string{"websocket"}, offer: h1Offer("WebSocket"),
			wantSel: "WebSocket", wantEntry: "websocket"},
		{name: "entry case kept",
			allowed: []string{"WEBSOCKET"}, offer: h1Offer("websocket"),
			wantSel: "websocket", wantEntry: "WEBSOCKET"},
		{name: "version exact",
			allowed: []string{"foo/2"}, offer: h1Offer("foo/2"),
			wantSel: "foo/2", wantEntry: "foo/2"},
		{name: "name case-insensitive with version",
			allowed: []string{"foo/2"}, offer: h1Offer("FOO/2"),
			wantSel: "FOO/2", wantEntry: "foo/2"},
		{name: "version compared exactly (case)",
			allowed: []string{"foo/2a"}, offer: h1Offer("foo/2A")},
		{name: "version compared exactly (2 vs 2.0)",
			allowed: []string{"foo/2"}, offer: h1Offer("foo/2.0")},
		{name: "versioned entry does not match bare offer",
			allowed: []string{"foo/2"}, offer: h1Offer("foo")},
		{name: "versioned entry does not match other version",
			allowed: []string{"foo/2"}, offer: h1Offer("foo/3")},
		{name: "versioned entry: later exact offer selected",
			allowed: []string{"foo/2"}, offer: h1Offer("foo", "foo/3", "foo/2"),
			wantSel: "foo/2", wantEntry: "foo/2"},
		{name: "bare entry matches any version",
			allowed: []string{"foo"}, offer: h1Offer("foo/3"),
			wantSel: "foo/3", wantEntry: "foo"},
		{name: "bare entry matches no version",
			allowed: []string{"foo"}, offer: h1Offer("foo"),
			wantSel: "foo", wantEntry: "foo"},
		{name: "bare entry matches another version as written",
			allowed: []string{"Foo"}, offer: h1Offer("fOO/1.0"),
			wantSel: "fOO/1.0", wantEntry: "Foo"},
		{name: "first matching entry in configured order for one offer",
			allowed: []string{"foo/2", "foo"}, offer: h1Offer("foo/2"),
			wantSel: "foo/2", wantEntry: "foo/2"},
		{name: "prefix is not a match",
			allowed: []string{"websocket"}, offer: h1Offer("websockets", "websock")},
		{name: "extended CONNECT matches a bare entry",
			allowed: []string{"websocket"}, offer: xcOffer("websocket"),
			wantSel: "websocket", wantEntry: "websocket"},
		{name: "extended CONNECT matches case-insensitively",
			allowed: []string{"websocket"}, offer: xcOffer("WebSocket"),
			wantSel: "WebSocket", wantEntry: "websocket"},
		{name: "extended CONNECT does not match a versioned entry",
			allowed: []string{"foo/2"}, offer: xcOffer("foo")},
		{name: "extended CONNECT: bare entry after a versioned one",
			allowed: []string{"foo/2", "websocket", "foo"}, offer: xcOffer("foo"),
			wantSel: "foo", wantEntry: "foo"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, major := range []int{1, 2} {
				o := tc.offer
				if o.ExtendedConnect && major == 1 {
					continue
				}
				if !o.ExtendedConnect && major == 2 {
					continue
				}
				p := testPolicy(t, false, false, tc.allowed...)
				v := p.Decide(o, major)
				if tc.wantSel == "" {
					if v.Outcome == OutcomeAccepted {
						t.Fatalf("Decide: accepted %q (entry %q); want nothing selected", v.Selected, v.Entry)
					}
					continue
				}
				if v.Outcome != OutcomeAccepted {
					t.Fatalf("Decide: %s %d; want accepted %q", v.Outcome, v.Status, tc.wantSel)
				}
				if v.Selected.String() != tc.wantSel || v.Entry.String() != tc.wantEntry {
					t.Fatalf("Decide: selected %q entry %q; want %q entry %q", v.Selected, v.Entry, tc.wantSel, tc.wantEntry)
				}
			}
		})
	}
}

func TestPolicyRequiredList(t *testing.T) {
	tests := []struct {
		allowed []string
		want    string
	}{
		{[]string{"websocket"}, "websocket"},
		{[]string{"websocket", "foo/2"}, "websocket, foo/2"},
		{[]string{"foo/2", "websocket"}, "foo/2, websocket"},
		{[]string{"WebSocket", "Foo/2.0", "bar"}, "WebSocket, Foo/2.0, bar"},
	}
	for _, tc := range tests {
		p := testPolicy(t, true, false, tc.allowed...)
		if got := p.RequiredList(); got != tc.want {
			t.Errorf("RequiredList(%q) = %q; want %q", tc.allowed, got, tc.want)
		}
	}
}

// fzProtocols parses a comma list into protocols, keeping only the
// well-formed ones (as Validate would have refused the rest).
func fzProtocols(s string) []Protocol {
	var out []Protocol
	for _, e := range fzElements([]string{s}) {
		if !fzProtocolOK(e) {
			continue
		}
		name, version, _ := strings.Cut(e, "/")
		out = append(out, Protocol{Name: name, Version: version})
	}
	return out
}

// fzMatches is docs/behaviour.md §1: names case-insensitive, versions exact;
// an entry without a version admits any version or none.
func fzMatches(entry, offered Protocol) bool {
	return strings.EqualFold(entry.Name, offered.Name) && (entry.Version == "" || entry.Version == offered.Version)
}

func FuzzPolicyDecide(f *testing.F) {
	f.Add("websocket, foo/2", "foo/1, WebSocket/13, foo/2", false, false, false, uint8(1))
	f.Add("websocket", "h2c", false, false, false, uint8(1))
	f.Add("websocket", "h2c", true, false, false, uint8(1))
	f.Add("websocket", "h2c", false, true, false, uint8(1))
	f.Add("websocket", "", true, false, false, uint8(2))
	f.Add("websocket, foo/2", "foo", false, false, true, uint8(2))
	f.Add("websocket, foo/2", "websocket", true, true, true, uint8(3))
	f.Add("foo/2", "FOO/2, foo/2", false, false, false, uint8(1))
	f.Add("foo/2", "foo/02", false, false, false, uint8(1))
	f.Add("FOO, websocket", "h2c, websocket, foo", false, false, false, uint8(1))
	f.Fuzz(func(t *testing.T, allowedList, offered string, require, reject, xconnect bool, major uint8) {
		p := NewPolicy(fzProtocols(allowedList), require, reject)
		o := Offer{Protocols: fzProtocols(offered), ExtendedConnect: xconnect}
		if xconnect {
			// An extended CONNECT offers one bare token.
			if len(o.Protocols) > 0 {
				o.Protocols = []Protocol{{Name: o.Protocols[0].Name}}
			}
		}
		httpMajor := int(major%3) + 1
		if xconnect && httpMajor == 1 {
			httpMajor = 2
		}

		// The oracle: the first offered protocol, in client order, that any
		// allowed entry matches.
		var sel *Protocol
		for i := range o.Protocols {
			for _, a := range p.allowed {
				if fzMatches(a, o.Protocols[i]) {
					sel = &o.Protocols[i]
					break
				}
			}
			if sel != nil {
				break
			}
		}

		v := p.Decide(o, httpMajor)
		required := http.StatusUpgradeRequired
		if httpMajor >= 2 {
			required = http.StatusBadRequest
		}
		if v.Outcome == OutcomeAccepted {
			if sel == nil {
				t.Fatalf("allowed %q, offered %q: accepted %q, which no allowed entry matches", p.allowed, o.Protocols, v.Selected)
			}
			if v.Selected != *sel {
				t.Fatalf("allowed %q, offered %q: selected %q, want the first match %q", p.allowed, o.Protocols, v.Selected, *sel)
			}
			if !fzMatches(v.Entry, v.Selected) {
				t.Fatalf("entry %q does not match selected %q", v.Entry, v.Selected)
			}
			found := false
			for _, a := range p.allowed {
				found = found || a == v.Entry
			}
			if !found {
				t.Fatalf("entry %q is not an allowed entry of %q", v.Entry, p.allowed)
			}
			if xconnect && v.Entry.Version != "" {
				t.Fatalf("extended CONNECT matched the versioned entry %q", v.Entry)
			}
			if v.Status != 0 {
				t.Fatalf("accepted with status %d", v.Status)
			}
			return
		}
		if sel != nil {
			t.Fatalf("allowed %q, offered %q: outcome %s, but %q is allowed", p.allowed, o.Protocols, v.Outcome, *sel)
		}
		// docs/behaviour.md §3 table, nothing selected.
		var wantOutcome Outcome
		wantStatus := 0
		switch {
		case len(o.Protocols) > 0 && reject:
			wantOutcome, wantStatus = OutcomeRejected, http.StatusForbidden
		case len(o.Protocols) > 0 && xconnect:
			wantOutcome, wantStatus = OutcomeUnsupported, http.StatusNotImplemented
		case require:
			wantOutcome, wantStatus = OutcomeRequired, required
		case len(o.Protocols) > 0:
			wantOutcome = OutcomeIgnored
		default:
			wantOutcome = OutcomeNone
		}
		if v.Outcome != wantOutcome || v.Status != wantStatus {
			t.Fatalf("allowed %q, offered %q (require %v, reject %v, extended CONNECT %v, HTTP/%d): %s %d, want %s %d",
				p.allowed, o.Protocols, require, reject, xconnect, httpMajor, v.Outcome, v.Status, wantOutcome, wantStatus)
		}
		if v.Selected != (Protocol{}) || v.Entry != (Protocol{}) {
			t.Fatalf("not accepted, but selected %q entry %q", v.Selected, v.Entry)
		}
	})
}
