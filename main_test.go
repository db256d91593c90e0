package upgrade

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestMain re-runs the test binary with GODEBUG=http2xconnect=1 when it is
// missing: Caddy runs inside this process, and golang.org/x/net/http2 only
// advertises RFC 8441 extended CONNECT when that setting was in the
// environment at start, so a plain `go test ./...` would otherwise fail the
// HTTP/2 WebSocket tests.
func TestMain(m *testing.M) {
	const setting = "http2xconnect=1"
	godebug := os.Getenv("GODEBUG")
	if strings.Contains(godebug, setting) {
		os.Exit(m.Run())
	}
	if godebug != "" {
		godebug += ","
	}
	cmd := exec.Command(os.Args[0], os.Args[1:]...)
	cmd.Env = append(os.Environ(), "GODEBUG="+godebug+setting)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if exit, ok := err.(*exec.ExitError); ok {
			os.Exit(exit.ExitCode())
		}
		os.Stderr.WriteString("re-running the tests with GODEBUG=" + setting + ": " + err.Error() + "\n")
		os.Exit(1)
	}
	os.Exit(0)
}
