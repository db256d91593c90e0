package upgrade

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// BenchmarkTunnelEcho is echo throughput through an in-process Caddy, 8
// tunnels each echoing 64 KiB writes, for Caddy's bare reverse_proxy and
// for the module's proxy with the copy loops' buffer at several sizes
// (copyBufSize is chosen from it). Client, Caddy and backend share the
// machine, so compare only the ratios of one run:
//
//	go test -run '^$' -bench TunnelEcho -count 3 .
func BenchmarkTunnelEcho(b *testing.B) {
	backend := newSwitchBackend(b)
	loadBenchCaddyfile(b, site(fmt.Sprintf(`
	handle /bare/* {
		reverse_proxy %[1]s
	}
	handle /proxy/* {
		upgrade foo {
			to %[1]s
		}
	}`, backend.addr())))
	b.Run("bare", func(b *testing.B) { echoThroughput(b, "/bare/x") })
	defer func(size int) { copyBufSize = size }(copyBufSize)
	for _, size := range []int{4 << 10, 16 << 10, 32 << 10, 64 << 10} {
		copyBufSize = size
		b.Run(fmt.Sprintf("upgrade-buf=%dK", size>>10), func(b *testing.B) { echoThroughput(b, "/proxy/x") })
	}
}

// echoThroughput moves b.N 64 KiB messages through 8 tunnels on path and
// back.
func echoThroughput(b *testing.B, path string) {
	const conns, size = 8, 64 << 10
	cs := make([]net.Conn, conns)
	for i := range cs {
		cs[i] = openBenchTunnel(b, path)
	}
	msg := make([]byte, size)
	b.SetBytes(size)
	b.ResetTimer()
	var wg sync.WaitGroup
	per := b.N/conns + 1
	for _, c := range cs {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range per {
				if _, err := c.Write(msg); err != nil {
					b.Error(err)
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			if _, err := io.CopyN(io.Discard, c, int64(per*size)); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	for _, c := range cs {
		c.Close()
	}
}

// openBenchTunnel opens a foo tunnel through the benchmark's Caddy and
// reads switchBackend's greeting.
func openBenchTunnel(b *testing.B, path string) net.Conn {
	c, err := net.DialTimeout("tcp", harnessAddr, harnessIO)
	if err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n", path)
	c.SetReadDeadline(time.Now().Add(harnessIO))
	// The 101's head and the greeting, byte by byte so nothing after
	// them is read.
	want := "\r\n\r\n" + greeting
	var got []byte
	one := make([]byte, 1)
	for !endsWith(got, want) {
		if _, err := c.Read(one); err != nil {
			b.Fatalf("switch on %s: %v after %q", path, err, got)
		}
		got = append(got, one[0])
	}
	if len(got) < 12 || string(got[9:12]) != "101" {
		b.Fatalf("switch on %s: %q", path, got)
	}
	c.SetReadDeadline(time.Time{})
	return c
}

func endsWith(p []byte, s string) bool {
	return len(p) >= len(s) && string(p[len(p)-len(s):]) == s
}

// loadBenchCaddyfile runs Caddy in the benchmark's process with the
// harness's global options; caddytest needs a *testing.T, so the config
// goes to caddy.Load directly.
func loadBenchCaddyfile(b *testing.B, sites string) {
	b.Helper()
	skipEndToEnd(b)
	lockCaddytest(b)
	cfg, warn, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfileConfig(sites)), nil)
	if err != nil {
		b.Fatalf("adapting: %v (%v)", err, warn)
	}
	if err := caddy.Load(cfg, true); err != nil {
		b.Fatalf("loading: %v", err)
	}
	b.Cleanup(func() { caddy.Stop() })
	if !pollUntil(harnessIO, func() bool {
		res, err := http.Get(caddyURL("/"))
		if err == nil {
			res.Body.Close()
		}
		return err == nil
	}) {
		b.Fatal("Caddy does not answer")
	}
}
