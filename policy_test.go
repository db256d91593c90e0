package upgrade

import (
	"net/http"
	"strings"
	"testing"
)

// testPolicy builds a policy from configured protocol strings, as Provision
// does.
func testPolicy(t *testing.T, require, reject bool, allowed ...string) *policy {
	t.Helper()
	var ps []protocol
	for _, s := range allowed {
		pr, ok := parseProtocol(s)
		if !ok {
			t.Fatalf("bad protocol %q in test", s)
		}
		ps = append(ps, pr)
	}
	p := newPolicy(ps, require, reject)
	return &p
}

func h1Offer(ss ...string) offer { return offer{protocols: protos(ss...)} }

func xcOffer(name string) offer {
	return offer{protocols: []protocol{{name: name}}, extendedConnect: true}
}

// TestPolicyTable is the SPEC §3 table, row by row, for every combination
// of require and on_disallowed, on HTTP/1.1, HTTP/2 and HTTP/3.
func TestPolicyTable(t *testing.T) {
	allowed := []string{"websocket", "foo/2"}
	type row struct {
		name        string
		offer       offer
		require     bool
		reject      bool
		major       int
		wantOutcome outcome
		wantStatus  int
	}
	var rows []row
	for _, major := range []int{1, 2, 3} {
		required := http.StatusUpgradeRequired
		if major >= 2 {
			required = http.StatusBadRequest // a 426 cannot be sent on HTTP/2-3
		}
		none := offer{}
		selectable := h1Offer("websocket")
		disallowed := h1Offer("bar")
		if major >= 2 {
			selectable = xcOffer("websocket")
			disallowed = xcOffer("bar")
		}
		disallowedOutcome, disallowedStatus := outcomeIgnored, 0
		disallowedRequired, disallowedRequiredStatus := outcomeRequired, required
		if major >= 2 {
			// extended CONNECT whose :protocol is not allowed: 501, even
			// under require (selection comes before require, SPEC §3 order).
			disallowedOutcome, disallowedStatus = outcomeUnsupported, http.StatusNotImplemented
			disallowedRequired, disallowedRequiredStatus = outcomeUnsupported, http.StatusNotImplemented
		}
		rows = append(rows,
			// no offer
			row{"no offer, require off, ignore", none, false, false, major, outcomeNone, 0},
			row{"no offer, require off, reject", none, false, true, major, outcomeNone, 0},
			row{"no offer, require on, ignore", none, true, false, major, outcomeRequired, required},
			row{"no offer, require on, reject", none, true, true, major, outcomeRequired, required},
			// offer, a protocol selected
			row{"selected, require off, ignore", selectable, false, false, major, outcomeAccepted, 0},
			row{"selected, require off, reject", selectable, false, true, major, outcomeAccepted, 0},
			row{"selected, require on, ignore", selectable, true, false, major, outcomeAccepted, 0},
			row{"selected, require on, reject", selectable, true, true, major, outcomeAccepted, 0},
			// offer, nothing allowed, on_disallowed ignore
			row{"nothing allowed, require off, ignore", disallowed, false, false, major, disallowedOutcome, disallowedStatus},
			row{"nothing allowed, require on, ignore", disallowed, true, false, major, disallowedRequired, disallowedRequiredStatus},
			// offer, nothing allowed, on_disallowed reject: 403 either way
			row{"nothing allowed, require off, reject", disallowed, false, true, major, outcomeRejected, http.StatusForbidden},
			row{"nothing allowed, require on, reject", disallowed, true, true, major, outcomeRejected, http.StatusForbidden},
		)
	}
	for _, tc := range rows {
		t.Run(tc.name+", HTTP/"+string(rune('0'+tc.major)), func(t *testing.T) {
			p := testPolicy(t, tc.require, tc.reject, allowed...)
			v := p.decide(tc.offer, tc.major)
			if v.outcome != tc.wantOutcome || v.status != tc.wantStatus {
				t.Fatalf("decide(%+v, %d) = %s %d; want %s %d", tc.offer, tc.major, v.outcome, v.status, tc.wantOutcome, tc.wantStatus)
			}
			if v.outcome == outcomeAccepted {
				if v.selected.name == "" || v.entry.name == "" {
					t.Errorf("accepted verdict without selected/entry: %+v", v)
				}
			} else if v.selected != (protocol{}) || v.entry != (protocol{}) {
				t.Errorf("verdict %s carries a selection: %+v", v.outcome, v)
			}
		})
	}
}

// TestPolicyRequiredStatus checks that the 426-or-400 choice depends
// on the request's HTTP version only (SPEC §3: never 426 on HTTP/2-3).
func TestPolicyRequiredStatus(t *testing.T) {
	for major, want := range map[int]int{1: 426, 2: 400, 3: 400} {
		if got := requiredStatus(major); got != want {
			t.Errorf("requiredStatus(%d) = %d; want %d", major, got, want)
		}
	}
}

func TestPolicySelection(t *testing.T) {
	tests := []struct {
		name      string
		allowed   []string
		offer     offer
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
				if o.extendedConnect && major == 1 {
					continue
				}
				if !o.extendedConnect && major == 2 {
					continue
				}
				p := testPolicy(t, false, false, tc.allowed...)
				v := p.decide(o, major)
				if tc.wantSel == "" {
					if v.outcome == outcomeAccepted {
						t.Fatalf("decide: accepted %q (entry %q); want nothing selected", v.selected, v.entry)
					}
					continue
				}
				if v.outcome != outcomeAccepted {
					t.Fatalf("decide: %s %d; want accepted %q", v.outcome, v.status, tc.wantSel)
				}
				if v.selected.String() != tc.wantSel || v.entry.String() != tc.wantEntry {
					t.Fatalf("decide: selected %q entry %q; want %q entry %q", v.selected, v.entry, tc.wantSel, tc.wantEntry)
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
		if got := p.requiredList(); got != tc.want {
			t.Errorf("requiredList(%q) = %q; want %q", tc.allowed, got, tc.want)
		}
	}
}

// fzProtocols parses a comma list into protocols, keeping only the
// well-formed ones (as Validate would have refused the rest).
func fzProtocols(s string) []protocol {
	var out []protocol
	for _, e := range fzElements([]string{s}) {
		if !fzProtocolOK(e) {
			continue
		}
		name, version, _ := strings.Cut(e, "/")
		out = append(out, protocol{name: name, version: version})
	}
	return out
}

// fzMatches is SPEC §1: names case-insensitive, versions exact; an entry
// without a version admits any version or none.
func fzMatches(entry, offered protocol) bool {
	return strings.EqualFold(entry.name, offered.name) && (entry.version == "" || entry.version == offered.version)
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
		p := newPolicy(fzProtocols(allowedList), require, reject)
		o := offer{protocols: fzProtocols(offered), extendedConnect: xconnect}
		if xconnect {
			// An extended CONNECT offers one bare token.
			if len(o.protocols) > 0 {
				o.protocols = []protocol{{name: o.protocols[0].name}}
			}
		}
		httpMajor := int(major%3) + 1
		if xconnect && httpMajor == 1 {
			httpMajor = 2
		}

		// The oracle: the first offered protocol, in client order, that any
		// allowed entry matches.
		var sel *protocol
		for i := range o.protocols {
			for _, a := range p.allowed {
				if fzMatches(a, o.protocols[i]) {
					sel = &o.protocols[i]
					break
				}
			}
			if sel != nil {
				break
			}
		}

		v := p.decide(o, httpMajor)
		required := http.StatusUpgradeRequired
		if httpMajor >= 2 {
			required = http.StatusBadRequest
		}
		if v.outcome == outcomeAccepted {
			if sel == nil {
				t.Fatalf("allowed %q, offered %q: accepted %q, which no allowed entry matches", p.allowed, o.protocols, v.selected)
			}
			if v.selected != *sel {
				t.Fatalf("allowed %q, offered %q: selected %q, want the first match %q", p.allowed, o.protocols, v.selected, *sel)
			}
			if !fzMatches(v.entry, v.selected) {
				t.Fatalf("entry %q does not match selected %q", v.entry, v.selected)
			}
			found := false
			for _, a := range p.allowed {
				found = found || a == v.entry
			}
			if !found {
				t.Fatalf("entry %q is not an allowed entry of %q", v.entry, p.allowed)
			}
			if xconnect && v.entry.version != "" {
				t.Fatalf("extended CONNECT matched the versioned entry %q", v.entry)
			}
			if v.status != 0 {
				t.Fatalf("accepted with status %d", v.status)
			}
			return
		}
		if sel != nil {
			t.Fatalf("allowed %q, offered %q: outcome %s, but %q is allowed", p.allowed, o.protocols, v.outcome, *sel)
		}
		// SPEC §3 table, nothing selected.
		var wantOutcome outcome
		wantStatus := 0
		switch {
		case len(o.protocols) > 0 && reject:
			wantOutcome, wantStatus = outcomeRejected, http.StatusForbidden
		case len(o.protocols) > 0 && xconnect:
			wantOutcome, wantStatus = outcomeUnsupported, http.StatusNotImplemented
		case require:
			wantOutcome, wantStatus = outcomeRequired, required
		case len(o.protocols) > 0:
			wantOutcome = outcomeIgnored
		default:
			wantOutcome = outcomeNone
		}
		if v.outcome != wantOutcome || v.status != wantStatus {
			t.Fatalf("allowed %q, offered %q (require %v, reject %v, extended CONNECT %v, HTTP/%d): %s %d, want %s %d",
				p.allowed, o.protocols, require, reject, xconnect, httpMajor, v.outcome, v.status, wantOutcome, wantStatus)
		}
		if v.selected != (protocol{}) || v.entry != (protocol{}) {
			t.Fatalf("not accepted, but selected %q entry %q", v.selected, v.entry)
		}
	})
}
