package protocol

import (
	"strings"
	"testing"
)

func TestParseOriginPattern(t *testing.T) {
	tests := []struct {
		in      string
		want    string // normalized entry; "" when an error is expected
		wantErr string // substring of the error
	}{
		{"https://example.com", "https://example.com", ""},
		{"HTTPS://EXAMPLE.COM", "https://example.com", ""},
		{"https://Good.Example:443", "https://good.example", ""},
		{"http://localhost:8080", "http://localhost:8080", ""},
		{"http://localhost:80", "http://localhost", ""},
		{"http://localhost:443", "http://localhost:443", ""},
		{"https://localhost:80", "https://localhost:80", ""},
		{"ws://x:80", "ws://x", ""},
		{"wss://x:443", "wss://x", ""},
		{"wss://x:80", "wss://x:80", ""},
		{"https://x:0443", "https://x", ""},
		{"http://x:0", "http://x:0", ""},
		{"foo://x", "foo://x", ""},
		{"foo://x:80", "foo://x:80", ""},
		{"chrome-extension://abcdefghijklmnop", "chrome-extension://abcdefghijklmnop", ""},
		{"web+app.v2://x", "web+app.v2://x", ""},
		{"https://*.example.com", "https://*.example.com", ""},
		{"https://*.Example.COM:443", "https://*.example.com", ""},
		{"https://*.example.com:8443", "https://*.example.com:8443", ""},
		{"https://*.com", "https://*.com", ""},
		{"https://bücher.example", "https://xn--bcher-kva.example", ""},
		{"https://BÜCHER.example", "https://xn--bcher-kva.example", ""},
		{"https://XN--BCHER-KVA.example", "https://xn--bcher-kva.example", ""},
		{"https://*.bücher.example", "https://*.xn--bcher-kva.example", ""},
		{"https://straße.de", "https://xn--strae-oqa.de", ""}, // non-transitional, as browsers
		{"https://ａｂｃ.com", "https://abc.com", ""},            // full-width mapped
		{"https://my_host.example", "https://my_host.example", ""},
		{"https://example.com.", "https://example.com.", ""},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080", ""},
		{"http://[::1]:8080", "http://[::1]:8080", ""},
		{"http://[0:0::1]:80", "http://[::1]", ""},
		{"http://[2001:DB8::1]", "http://[2001:db8::1]", ""},

		{"", "", "empty"},
		{"null", "", "null"},
		{"example.com", "", "scheme://host"},
		{"//example.com", "", "scheme"},
		{"1http://x", "", "scheme"},
		{"ht tp://x", "", "scheme"},
		{"https://", "", "missing host"},
		{"https://:443", "", "missing host"},
		{"https://example.com/", "", "a path"},
		{"https://example.com/app", "", "a path"},
		{"https://example.com?x=1", "", "a query"},
		{"https://example.com#top", "", "a fragment"},
		{"https://user@example.com", "", "userinfo"},
		{"https://user:pw@example.com", "", "userinfo"},
		{"https://example.com:", "", "empty port"},
		{"https://example.com:x", "", "not a number"},
		{"https://example.com:-1", "", "not a number"},
		{"https://example.com:65536", "", "out of range"},
		{"https://example.com:1000000", "", "out of range"},
		{"https://*", "", `"*"`},
		{"https://*.", "", "empty label"},
		{"https://*example.com", "", `"*"`},
		{"https://a*.example.com", "", `"*"`},
		{"https://example.*.com", "", `"*"`},
		{"https://*.*.example.com", "", `"*"`},
		{"https://*.127.0.0.1", "", "IP address"},
		{"https://*.0x7f", "", "IP address"},
		{"https://[::1", "", "unterminated"},
		{"https://[::1]x", "", "after its IPv6"},
		{"https://[1.2.3.4]", "", "IPv6"},
		{"https://[fe80::1%25eth0]", "", "IPv6"},
		{"https://*.[::1]", "", "port"},
		{"https://::1", "", "invalid"},
		{"https://a..b", "", "empty label"},
		{"https://.example.com", "", "empty label"},
		{"https://exa mple.com", "", "invalid"},
		{"https://a!b.com", "", "invalid character"},
		{`https://a\b.com`, "", "invalid"},
		{"https://xn--abc.example", "", "invalid host"}, // bad punycode
		{"https://{http.request.host}", "", "invalid"},  // placeholders must be replaced first
	}
	for _, tt := range tests {
		p, err := parseOriginPattern(tt.in)
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseOriginPattern(%q) = %v, %v; want error with %q", tt.in, p, err, tt.wantErr)
			}
		case err != nil || p.String() != tt.want:
			t.Errorf("parseOriginPattern(%q) = %q, %v; want %q", tt.in, p.String(), err, tt.want)
		}
	}
}

func TestNormalizeOrigin(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" means not ok
	}{
		{"https://example.com", "https://example.com"},
		{"https://Good.Example:443", "https://good.example"},
		{"http://localhost:8080", "http://localhost:8080"},
		{"ws://x:80", "ws://x"},
		{"wss://x:443", "wss://x"},
		{"foo://x:80", "foo://x:80"},
		{"https://xn--bcher-kva.example", "https://xn--bcher-kva.example"},
		{"https://bücher.example", "https://xn--bcher-kva.example"},
		{"http://[::1]:8080", "http://[::1]:8080"},

		{"null", ""},
		{"", ""},
		{"https://a.example https://b.example", ""},
		{"https://a.example,https://b.example", ""},
		{"https://a.example, https://b.example", ""},
		{" https://a.example", ""},
		{"https://a.example\t", ""},
		{"https://a.example/", ""},
		{"https://a.example/path", ""},
		{"https://user@a.example", ""},
		{"https://*.example.com", ""}, // no wildcard in an Origin
		{"https://a.example:", ""},
		{"https://a.example:99999", ""},
		{"a.example", ""},
		{"file://", ""},
		{"https://a\x00.example", ""},
		{"a://0\xa0", ""}, // not UTF-8
	}
	for _, tt := range tests {
		o, ok := normalizeOrigin(tt.in)
		if ok != (tt.want != "") || (ok && o.String() != tt.want) {
			t.Errorf("normalizeOrigin(%q) = %q, %v; want %q", tt.in, o.String(), ok, tt.want)
		}
	}
}

func TestOriginPatternMatch(t *testing.T) {
	tests := []struct {
		pattern, origin string
		want            bool
	}{
		{"https://good.example", "https://Good.Example:443", true}, // docs/behaviour.md §4 example
		{"https://good.example:443", "https://good.example", true},
		{"https://good.example", "https://good.example", true},
		{"https://good.example", "http://good.example", false},
		{"https://good.example", "https://good.example:8443", false},
		{"https://good.example:8443", "https://good.example:8443", true},
		{"https://good.example", "https://evil.example", false},
		{"https://good.example", "https://good.example.", false},
		{"https://good.example", "https://a.good.example", false},
		{"http://localhost:8080", "http://localhost", false},
		{"http://localhost", "http://localhost:80", true},
		{"ws://x", "ws://x:80", true},
		{"wss://x", "wss://x:443", true},
		{"wss://x", "wss://x:80", false},
		{"ws://x", "http://x", false},
		{"wss://x", "https://x", false},

		// Other schemes: no default port is known.
		{"foo://x", "foo://x", true},
		{"foo://x", "foo://x:80", false},
		{"foo://x:80", "foo://x", false},
		{"foo://x:1", "FOO://X:01", true},

		// Wildcards: exactly one more label.
		{"https://*.example.com", "https://a.example.com", true},
		{"https://*.example.com", "https://A.EXAMPLE.COM:443", true},
		{"https://*.example.com", "https://xn--bcher-kva.example.com", true},
		{"https://*.example.com", "https://bücher.example.com", true},
		{"https://*.example.com", "https://example.com", false},
		{"https://*.example.com", "https://a.b.example.com", false},
		{"https://*.example.com", "https://aexample.com", false},
		{"https://*.example.com", "https://a.example.com.evil.test", false},
		{"https://*.example.com", "https://a.example.com.", false},
		{"https://*.example.com", "http://a.example.com", false},
		{"https://*.example.com", "https://a.example.com:8443", false},
		{"https://*.example.com:8443", "https://a.example.com:8443", true},
		{"https://*.bücher.example", "https://a.xn--bcher-kva.example", true},

		// IDNs on either side.
		{"https://bücher.example", "https://xn--bcher-kva.example", true},
		{"https://xn--bcher-kva.example", "https://bücher.example", true},
		{"https://bücher.example", "https://bucher.example", false},

		// IP literals.
		{"http://[::1]:8080", "http://[0:0:0:0:0:0:0:1]:8080", true},
		{"http://127.0.0.1", "http://127.0.0.1:80", true},
	}
	for _, tt := range tests {
		p, err := parseOriginPattern(tt.pattern)
		if err != nil {
			t.Fatalf("parseOriginPattern(%q): %v", tt.pattern, err)
		}
		o, ok := normalizeOrigin(tt.origin)
		if !ok {
			t.Fatalf("normalizeOrigin(%q) failed", tt.origin)
		}
		if got := p.match(o); got != tt.want {
			t.Errorf("%q.match(%q) = %v, want %v", tt.pattern, tt.origin, got, tt.want)
		}
	}
}

func originMustPatterns(t testing.TB, entries ...string) []originPattern {
	t.Helper()
	var ps []originPattern
	for _, s := range entries {
		p, err := parseOriginPattern(s)
		if err != nil {
			t.Fatalf("parseOriginPattern(%q): %v", s, err)
		}
		ps = append(ps, p)
	}
	return ps
}

func TestCheckOrigin(t *testing.T) {
	list := []string{"https://a.example", "https://*.b.example"}
	tests := []struct {
		name       string
		values     []string
		patterns   []string
		require    bool
		wantOK     bool
		wantReason string
	}{
		{"no Origin passes", nil, list, false, true, ""},
		{"no Origin, require_origin", nil, list, true, false, "missing Origin"},
		{"no Origin, no list", nil, nil, false, true, ""},
		{"no Origin, require_origin, no list", nil, nil, true, false, "missing Origin"},
		{"listed", []string{"https://a.example"}, list, false, true, ""},
		{"listed, normalized", []string{"HTTPS://A.EXAMPLE:443"}, list, true, true, ""},
		{"second entry", []string{"https://x.b.example"}, list, false, true, ""},
		{"not listed", []string{"https://evil.example"}, list, false, false, "not allowed"},
		{"wildcard base not listed", []string{"https://b.example"}, list, false, false, "not allowed"},
		{"several lines", []string{"https://a.example", "https://a.example"}, list, false, false, "several Origin lines"},
		{"list", []string{"https://a.example, https://a.example"}, list, false, false, "malformed"},
		{"space list", []string{"https://a.example https://a.example"}, list, false, false, "malformed"},
		{"empty value", []string{""}, list, false, false, "malformed"},
		{"unparsable", []string{"a.example"}, list, false, false, "malformed"},
		{"with path", []string{"https://a.example/"}, list, false, false, "malformed"},
		{"null", []string{"null"}, list, false, false, "null"},
		{"null, require_origin only", []string{"null"}, nil, true, false, "null"},
		{"null, no list", []string{"null"}, nil, false, false, "null"},
		{"any origin, require_origin only", []string{"https://anything.example"}, nil, true, true, ""},
		{"malformed, require_origin only", []string{"garbage"}, nil, true, false, "malformed"},
		{"several lines, require_origin only", []string{"https://x.example", "https://y.example"}, nil, true, false, "several"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, reason := checkOrigin(tt.values, originMustPatterns(t, tt.patterns...), tt.require)
			if ok != tt.wantOK || !strings.Contains(reason, tt.wantReason) || ok != (reason == "") {
				t.Errorf("checkOrigin(%q, %q, %v) = %v, %q; want %v, %q", tt.values, tt.patterns, tt.require, ok, reason, tt.wantOK, tt.wantReason)
			}
		})
	}
}

func TestCheckOriginReasonIsShort(t *testing.T) {
	long := "https://" + strings.Repeat("a", 5000) + ".example"
	for _, v := range []string{long, long + "/"} {
		if _, reason := checkOrigin([]string{v}, originMustPatterns(t, "https://x.example"), false); len(reason) > logValueCap+64 || strings.Contains(reason, v) {
			t.Errorf("reason is %d bytes, want the value cut at %d", len(reason), logValueCap)
		}
	}
}

func TestOriginPatternHasPlaceholders(t *testing.T) {
	for s, want := range map[string]bool{
		"https://example.com":                             false,
		"{http.request.scheme}://{http.request.hostport}": true,
		"https://{http.vars.host}":                        true,
	} {
		if got := originPatternHasPlaceholders(s); got != want {
			t.Errorf("originPatternHasPlaceholders(%q) = %v", s, got)
		}
	}
}

func TestValidateOriginEntry(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string // "" means valid
	}{
		{"https://example.com", ""},
		{"https://*.example.com", ""},
		{"{http.request.scheme}://{http.request.hostport}", ""},
		{"https://{http.request.host}:8443", ""},
		{"https://*.{http.vars.domain}", ""},
		{"{http.vars.origin}", ""},
		{"null", "null"},
		{"", "empty"},
		{"https://example.com/", "a path"},
		{"https://user@example.com", "userinfo"},
		{"https://{http.request.host}/", "a path"},
		{"{http.request.scheme}://{http.request.hostport}/app", "a path"},
		{"https://{http.request.host}?x", "a query"},
		{"https://{http.request.host}#x", "a fragment"},
		{"https://me@{http.request.host}", "userinfo"},
		{"https://{http.request.host", "unbalanced"},
		{"https://{a{b}}", "nested"},
		{"https://a}.example", "invalid"},
		{"https://{a}}", "unbalanced"},
	}
	for _, tt := range tests {
		err := ValidateOriginEntry(tt.in)
		if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("ValidateOriginEntry(%q) = %v, want error %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestOriginList(t *testing.T) {
	// A stand-in for Caddy's replacer: known placeholders are replaced,
	// unknown ones become empty (repl.ReplaceAll(s, "")).
	replacer := func(vars map[string]string) func(string) string {
		return func(s string) string {
			var b strings.Builder
			for {
				i := strings.IndexByte(s, '{')
				j := strings.IndexByte(s, '}')
				if i < 0 || j < i {
					b.WriteString(s)
					return b.String()
				}
				b.WriteString(s[:i])
				b.WriteString(vars[s[i+1:j]])
				s = s[j+1:]
			}
		}
	}
	same := replacer(map[string]string{"http.request.scheme": "https", "http.request.hostport": "App.Example:443"})

	if _, err := NewOriginList([]string{"https://ok.example", "https://bad.example/"}); err == nil {
		t.Error("NewOriginList accepted an entry with a path")
	}

	l, err := NewOriginList([]string{"https://static.example", "{http.request.scheme}://{http.request.hostport}"})
	if err != nil {
		t.Fatal(err)
	}
	if len(l.fixed) != 1 || len(l.dynamic) != 1 {
		t.Fatalf("NewOriginList = %+v, want one fixed and one dynamic entry", l)
	}
	tests := []struct {
		values  []string
		replace func(string) string
		require bool
		want    bool
	}{
		{[]string{"https://app.example"}, same, false, true}, // same-origin
		{[]string{"https://static.example"}, same, false, true},
		{[]string{"https://evil.example"}, same, false, false},
		{[]string{"http://app.example"}, same, false, false},
		{nil, same, false, true},
		{nil, same, true, false},
		// The placeholder entry expands to something unparsable: it matches
		// nothing, and the list does not turn into "any origin".
		{[]string{"https://app.example"}, replacer(nil), false, false},
		{[]string{"https://static.example"}, replacer(nil), false, true},
	}
	for _, tt := range tests {
		if ok, reason := l.Check(tt.values, tt.replace, tt.require); ok != tt.want {
			t.Errorf("check(%q, require=%v) = %v, %q; want %v", tt.values, tt.require, ok, reason, tt.want)
		}
	}

	// Only placeholder entries, none usable for this request: refused.
	dyn, err := NewOriginList([]string{"{http.request.scheme}://{http.request.hostport}"})
	if err != nil {
		t.Fatal(err)
	}
	if ok, _ := dyn.Check([]string{"https://anything.example"}, replacer(nil), false); ok {
		t.Error("a list whose entries all failed to expand accepted an Origin")
	}
	if ok, _ := dyn.Check([]string{"https://app.example"}, same, false); !ok {
		t.Error("same-origin entry did not match")
	}

	// An empty list is require_origin alone.
	var none OriginList
	if ok, _ := none.Check([]string{"https://anything.example"}, same, true); !ok {
		t.Error("empty list refused a well-formed Origin")
	}
	if ok, _ := none.Check(nil, same, true); ok {
		t.Error("empty list with require_origin accepted a missing Origin")
	}

	// check must not grow the fixed slice shared between requests.
	l.fixed = append(make([]originPattern, 0, 8), l.fixed...)
	l.Check([]string{"https://x.example"}, same, false)
	if got := l.fixed[:cap(l.fixed)][1]; got != (originPattern{}) {
		t.Errorf("check wrote %v into the fixed slice's spare capacity", got)
	}
}

func FuzzOrigin(f *testing.F) {
	for _, s := range []string{
		"https://example.com", "https://Good.Example:443", "https://*.example.com", "http://[::1]:8080",
		"https://bücher.example", "https://xn--bcher-kva.example", "foo://x:080", "null", "", "https://a.example/",
		"wss://x:443", "https://a, https://b", "https://u@h", "http://[::ffff:1.2.3.4]", "https://straße.de",
	} {
		f.Add(s, "https://*.example.com")
		f.Add("https://a.example.com", s)
	}
	f.Fuzz(func(t *testing.T, value, entry string) {
		o, ok := normalizeOrigin(value)
		if ok {
			s := o.String()
			if o2, ok2 := normalizeOrigin(s); !ok2 || o2 != o {
				t.Fatalf("normalizeOrigin(%q) = %q, which re-parses to %q, %v", value, s, o2.String(), ok2)
			}
			if strings.ToLower(s) != s || strings.ContainsAny(s, " \t,?#@") || strings.Count(s, "/") != 2 || !strings.HasPrefix(s, o.scheme+"://") {
				t.Fatalf("normalizeOrigin(%q) = %q is not a lower-case serialized origin", value, s)
			}
			for i := 0; i < len(s); i++ {
				if s[i] >= 0x80 || s[i] <= ' ' {
					t.Fatalf("normalizeOrigin(%q) = %q is not printable ASCII", value, s)
				}
			}
			self, err := parseOriginPattern(s)
			if err != nil || self.wildcard || !self.match(o) {
				t.Fatalf("origin %q as an entry: %v, %v", s, self, err)
			}
			if ok, reason := checkOrigin([]string{value}, nil, true); !ok {
				t.Fatalf("checkOrigin refused well-formed %q: %s", value, reason)
			}
		} else if ok, _ := checkOrigin([]string{value}, nil, false); ok {
			t.Fatalf("checkOrigin accepted malformed %q", value)
		}

		p, err := parseOriginPattern(entry)
		if (err == nil) != (ValidateOriginEntry(entry) == nil) && !originPatternHasPlaceholders(entry) {
			t.Fatalf("ValidateOriginEntry and parseOriginPattern disagree on %q", entry)
		}
		if err != nil {
			return
		}
		if p2, err := parseOriginPattern(p.String()); err != nil || p2 != p {
			t.Fatalf("parseOriginPattern(%q) = %q, which re-parses to %q, %v", entry, p.String(), p2.String(), err)
		}
		if !ok {
			return
		}
		m := p.match(o)
		if m {
			if o.scheme != p.scheme || o.port != p.port {
				t.Fatalf("%q matched %q across scheme or port", p.String(), o.String())
			}
			if p.wildcard {
				label, found := strings.CutSuffix(o.host, "."+p.host)
				if !found || label == "" || strings.Contains(label, ".") {
					t.Fatalf("%q matched %q, not exactly one more label", p.String(), o.String())
				}
			} else if o.host != p.host {
				t.Fatalf("%q matched %q", p.String(), o.String())
			}
		}
		if got, _ := checkOrigin([]string{value}, []originPattern{p}, false); got != m {
			t.Fatalf("checkOrigin(%q, [%q]) = %v, match = %v", value, p.String(), got, m)
		}
	})
}
