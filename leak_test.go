package upgrade

import (
	"net/http"
	"testing"

	"go.uber.org/goleak"
)

// guardLeaks fails t if goroutines started from here on outlive it: a
// tunnel that ends must take its copies, timers and close-frame writers
// with it. Call it after the test's Caddy config and backends are up;
// goroutines already running (Caddy's, the backends') are not counted,
// nor idle keep-alive connections of other HTTP clients than the default
// one, which outlive tests by design.
func guardLeaks(t *testing.T) {
	t.Helper()
	opts := []goleak.Option{
		goleak.IgnoreCurrent(),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		// Caddy's storage lock, taken by its own maintenance at any time.
		goleak.IgnoreAnyFunction("github.com/caddyserver/certmagic.keepLockfileFresh"),
	}
	t.Cleanup(func() {
		// The test's own keep-alive connections, and the server
		// goroutines that wait on them, go first.
		http.DefaultClient.CloseIdleConnections()
		goleak.VerifyNone(t, opts...)
	})
}
