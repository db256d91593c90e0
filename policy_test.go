package upgrade

import (
	"net/http"
	"testing"
)

// testPolicy builds a policy from configured protocol strings, as Provision
// does.
func testPolicy(t *testing.T, require, reject bool, allowed ...string) *policy {
	t.Helper()
	p := &policy{require: require, reject: reject}
	for _, s := range allowed {
		pr, ok := parseProtocol(s)
		if !ok {
			t.Fatalf("bad protocol %q in test", s)
		}
		p.allowed = append(p.allowed, pr)
	}
	return p
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

// TestPolicyFromProvision checks that Provision builds the policy the
// table expects from the JSON fields.
func TestPolicyFromProvision(t *testing.T) {
	tests := []struct {
		h           Handler
		wantRequire bool
		wantReject  bool
		wantList    string
	}{
		{Handler{Protocols: []string{"websocket", "foo/2"}}, false, false, "websocket, foo/2"},
		{Handler{Protocols: []string{"websocket"}, Require: true}, true, false, "websocket"},
		{Handler{Protocols: []string{"websocket"}, OnDisallowed: "reject"}, false, true, "websocket"},
		{Handler{Protocols: []string{"websocket"}, OnDisallowed: "ignore"}, false, false, "websocket"},
	}
	for _, tc := range tests {
		h := tc.h
		provisionHandler(t, &h)
		if h.policy.require != tc.wantRequire || h.policy.reject != tc.wantReject || h.policy.requiredList() != tc.wantList {
			t.Errorf("%+v: policy = require %v reject %v list %q; want %v %v %q", tc.h,
				h.policy.require, h.policy.reject, h.policy.requiredList(), tc.wantRequire, tc.wantReject, tc.wantList)
		}
	}
}
