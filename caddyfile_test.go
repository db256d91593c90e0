package upgrade

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// adaptCaddyfile adapts a whole Caddyfile as `caddy adapt` does.
func adaptCaddyfile(t *testing.T, body string) ([]byte, error) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("no caddyfile adapter registered")
	}
	out, _, err := adapter.Adapt([]byte(body), nil)
	return out, err
}

// TestCaddyfileAdapt runs the golden files in testdata/caddyfile_adapt, in
// the format of Caddy's own caddytest/integration/caddyfile_adapt: the
// Caddyfile, a line "----------", then the JSON `caddy adapt` must give
// (compared semantically). Each adapted config must also pass
// caddy.Validate (provision and validate, as `caddy adapt --validate`).
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "caddyfile_adapt", "*.caddyfiletest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no golden files in testdata/caddyfile_adapt")
	}
	crlf := regexp.MustCompile(`\r?\n`)
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			parts := strings.Split(crlf.ReplaceAllString(string(data), "\n"), "----------")
			if len(parts) != 2 {
				t.Fatalf("%s: want one line of ---------- between Caddyfile and JSON, found %d parts", file, len(parts))
			}
			body, expected := strings.TrimSpace(parts[0])+"\n", strings.TrimSpace(parts[1])
			got, err := adaptCaddyfile(t, body)
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			var gotV, wantV any
			if err := json.Unmarshal(got, &gotV); err != nil {
				t.Fatalf("adapter output is not JSON: %v\n%s", err, got)
			}
			if err := json.Unmarshal([]byte(expected), &wantV); err != nil {
				t.Fatalf("expected part of %s is not JSON: %v", file, err)
			}
			if !reflect.DeepEqual(gotV, wantV) {
				t.Fatalf("adapted JSON differs from %s (- want, + got):\n%s", file, jsonDiff(wantV, gotV))
			}
			var cfg caddy.Config
			if err := json.Unmarshal(got, &cfg); err != nil {
				t.Fatalf("decoding adapted config: %v", err)
			}
			if err := caddy.Validate(&cfg); err != nil {
				t.Errorf("adapted config does not validate: %v", err)
			}
		})
	}
}

// jsonDiff is a line diff of two JSON values, indented with sorted keys.
func jsonDiff(want, got any) string {
	a := jsonLines(want)
	b := jsonLines(got)
	// Longest common subsequence, then walk it.
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var sb strings.Builder
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			sb.WriteString("  " + a[i] + "\n")
			i, j = i+1, j+1
		case j < len(b) && (i == len(a) || lcs[i][j+1] >= lcs[i+1][j]):
			sb.WriteString("+ " + b[j] + "\n")
			j++
		default:
			sb.WriteString("- " + a[i] + "\n")
			i++
		}
	}
	return sb.String()
}

func jsonLines(v any) []string {
	out, _ := json.MarshalIndent(v, "", "  ")
	return strings.Split(string(out), "\n")
}

// TestCaddyfileErrors checks that bad subdirectives are refused when the
// Caddyfile is adapted, with the line they are on.
func TestCaddyfileErrors(t *testing.T) {
	tests := []struct {
		name string
		body string
		want []string // substrings of the error
	}{
		{"on_disallowed maybe", ":8080\n\nupgrade websocket {\n\ton_disallowed maybe\n}\n",
			[]string{"Caddyfile:4", "maybe"}},
		{"on_disallowed without value", ":8080\n\nupgrade websocket {\n\trequire\n\ton_disallowed\n}\n",
			[]string{"Caddyfile:5"}},
		{"on_disallowed two values", ":8080\nupgrade websocket {\n\ton_disallowed ignore reject\n}\n",
			[]string{"Caddyfile:3"}},
		{"max_connections -1", ":8080\n\nupgrade websocket {\n\tmax_connections -1\n}\n",
			[]string{"Caddyfile:4", "-1"}},
		{"max_connections x", ":8080\n\nupgrade websocket {\n\trequire\n\n\tmax_connections x\n}\n",
			[]string{"Caddyfile:6", `"x"`}},
		{"max_connections two values", ":8080\n\nupgrade websocket {\n\tmax_connections 1 2\n}\n",
			[]string{"Caddyfile:4"}},
		{"idle_timeout forever", ":8080\n\nupgrade websocket {\n\tidle_timeout forever\n}\n",
			[]string{"Caddyfile:4", "forever"}},
		{"idle_timeout negative", ":8080\n\nupgrade websocket {\n\tidle_timeout -5s\n}\n",
			[]string{"Caddyfile:4", "-5s"}},
		{"max_duration forever", ":8080\n\nupgrade websocket {\n\tmax_duration forever\n}\n",
			[]string{"Caddyfile:4", "forever"}},
		{"max_duration without value", ":8080\n\nupgrade websocket {\n\tmax_duration\n}\n",
			[]string{"Caddyfile:4"}},
		{"require extra", ":8080\n\nupgrade websocket {\n\trequire extra\n}\n",
			[]string{"Caddyfile:4"}},
		{"require_origin extra", ":8080\n\nupgrade websocket {\n\trequire_origin yes\n}\n",
			[]string{"Caddyfile:4"}},
		{"protocols with no args", ":8080\n\nupgrade {\n\tprotocols\n}\n",
			[]string{"Caddyfile:4"}},
		{"origins with no args", ":8080\n\nupgrade websocket {\n\torigins\n}\n",
			[]string{"Caddyfile:4"}},
		{"subprotocols with no args", ":8080\n\nupgrade websocket {\n\tsubprotocols\n}\n",
			[]string{"Caddyfile:4"}},
		{"error after pass-through lines", ":8080\n\nupgrade websocket {\n\tto localhost:9000\n\tlb_policy first\n\tmax_connections many\n}\n",
			[]string{"Caddyfile:6", "many"}},
		{"pass-through error", ":8080\n\nupgrade websocket {\n\tlb_policy\n}\n",
			[]string{"Caddyfile:4"}},
		{"unknown subdirective", ":8080\n\nupgrade websocket {\n\tto localhost:9000\n\tno_such_thing 1\n}\n",
			[]string{"Caddyfile:5", "no_such_thing"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := adaptCaddyfile(t, tc.body)
			if err == nil {
				t.Fatalf("adapt succeeded: %s; want an error", out)
			}
			t.Logf("error: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("adapt error %q; want it to contain %q", err, w)
				}
			}
		})
	}
}

// TestCaddyfileValidateErrors adapts Caddyfiles that parse but are not
// valid configs: caddy.Validate (as `caddy adapt --validate` and `caddy
// run`) refuses them with the offending value named.
func TestCaddyfileValidateErrors(t *testing.T) {
	tests := []struct {
		name string
		body string
		want string
	}{
		{"no protocols", ":8080\nupgrade\n", "protocols"},
		{"h2c", ":8080\nupgrade websocket h2c\n", "h2c"},
		{"duplicate", ":8080\nupgrade websocket {\n\tprotocols WebSocket\n}\n", "WebSocket"},
		{"websocket version", ":8080\nupgrade websocket/13\n", "websocket/13"},
		{"websocket checks without websocket", ":8080\nupgrade foo {\n\tsubprotocols chat\n}\n", "websocket"},
		{"origin with path", ":8080\nupgrade websocket {\n\torigins https://a.com/path\n}\n", "https://a.com/path"},
		{"proxy buffers", ":8080\nupgrade websocket {\n\tto localhost:9000\n\trequest_buffers 1KiB\n}\n", "request_buffers"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := adaptCaddyfile(t, tc.body)
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			var cfg caddy.Config
			if err := json.Unmarshal(out, &cfg); err != nil {
				t.Fatal(err)
			}
			err = caddy.Validate(&cfg)
			if err == nil {
				t.Fatalf("config %s validated; want an error naming %q", out, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("validate error %q; want it to name %q", err, tc.want)
			}
		})
	}
}

// TestUnmarshalCaddyfile exercises Handler.UnmarshalCaddyfile directly (the
// caddyfile.Unmarshaler interface), without the httpcaddyfile helper.
func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  string // the handler's JSON
	}{
		{"inline", `upgrade websocket foo/2`,
			`{"protocols": ["websocket", "foo/2"]}`},
		{"block", `upgrade websocket {
				protocols foo/2
				require
				on_disallowed reject
				origins https://example.com
				require_origin
				subprotocols chat
				max_connections 3
				idle_timeout 1m
				max_duration 2m
			}`,
			`{"protocols": ["websocket", "foo/2"], "require": true, "on_disallowed": "reject",
			  "websocket": {"origins": ["https://example.com"], "require_origin": true, "subprotocols": ["chat"]},
			  "max_connections": 3, "idle_timeout": 60000000000, "max_duration": 120000000000}`},
		{"pass-through", `upgrade websocket {
				to localhost:9000
				require
				stream_close_delay 1m
			}`,
			`{"protocols": ["websocket"], "require": true,
			  "proxy": {"handler": "reverse_proxy", "upstreams": [{"dial": "localhost:9000"}], "stream_close_delay": 60000000000}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
				t.Fatalf("UnmarshalCaddyfile: %v", err)
			}
			got, err := json.Marshal(h)
			if err != nil {
				t.Fatal(err)
			}
			if !jsonEqual(t, got, []byte(tc.want)) {
				t.Errorf("got %s\nwant %s", got, tc.want)
			}
		})
	}
}
