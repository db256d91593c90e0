package main

import (
	"crypto/tls"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/seedf05e/caddy-upgrade/bench/tlscert"
)

func TestGaugeValue(t *testing.T) {
	exp := []byte("# HELP go_goroutines Number of goroutines that currently exist.\n# TYPE go_goroutines gauge\n" +
		"go_goroutines_other 5\ngo_goroutines 8037\ngo_threads 12\n")
	if got, err := gaugeValue(exp, "go_goroutines"); err != nil || got != 8037 {
		t.Errorf("gaugeValue = %d, %v; want 8037", got, err)
	}
	if _, err := gaugeValue(exp, "go_memstats_stack_inuse_bytes"); err == nil {
		t.Error("a missing gauge read as a value")
	}
}

// Every instance of every target listens on its own port, and no Caddy's
// admin API shares one with anything; direct has no TLS instance.
func TestInstancesPorts(t *testing.T) {
	var keys []string
	for _, t := range allTargets {
		keys = append(keys, t.key)
	}
	ts, err := instances(keys, []bool{false, true})
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 2*len(allTargets)-1 {
		t.Fatalf("%d instances, want %d", len(ts), 2*len(allTargets)-1)
	}
	seen := map[string]string{}
	ids := map[string]bool{}
	for _, tg := range ts {
		if tg.tls && tg.kind == "direct" {
			t.Errorf("direct has a TLS instance")
		}
		if ids[tg.id()] {
			t.Errorf("id %q twice", tg.id())
		}
		ids[tg.id()] = true
		addrs := []string{tg.addr()}
		if tg.kind == "caddy" {
			addrs = append(addrs, tg.adminAddr())
		}
		for _, a := range addrs {
			if other, ok := seen[a]; ok {
				t.Errorf("%s: %s already taken by %s", tg.name(), a, other)
			}
			seen[a] = tg.name()
		}
	}
	if _, err := instances([]string{"envoy"}, []bool{false}); err == nil {
		t.Error("an unknown target was accepted")
	}
}

// echoServer is a WebSocket echo server over TLS with the run's kind of
// certificate; open counts its open connections.
func echoServer(t *testing.T, open *atomic.Int64) (wsURL string) {
	t.Helper()
	cert, err := tlscert.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(cert.CertFile, cert.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	up := websocket.Upgrader{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		open.Add(1)
		defer open.Add(-1)
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil || c.WriteMessage(mt, msg) != nil {
				return
			}
		}
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	prev := clientTLS
	clientTLS = cert.ClientConfig()
	t.Cleanup(func() { clientTLS = prev })
	return "wss://" + strings.TrimPrefix(srv.URL, "https://") + "/ws"
}

// idleRSS divides the growth of RSS and goroutines over the tunnels open
// at each step, counted from before the first: here a "process" whose RSS
// grows 6 KiB and goroutines 3 a tunnel, on top of a base of each.
func TestIdleRSSPerTunnel(t *testing.T) {
	var open atomic.Int64
	url := echoServer(t, &open)
	rss := func() (int64, error) { return 50000 + 6*open.Load(), nil }
	goroutines := func() (int, error) { return 40 + 3*int(open.Load()), nil }
	steps, err := idleRSS(url, rss, goroutines, []int{5, 12}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != 2 {
		t.Fatalf("%d steps, want 2", len(steps))
	}
	for i, s := range steps {
		if s.rssKiB != 6 || s.goroutines != 3 {
			t.Errorf("step %d: %.2f KiB and %.2f goroutines a tunnel, want 6 and 3", i, s.rssKiB, s.goroutines)
		}
	}
	steps, err = idleRSS(url, rss, nil, []int{3}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if g := steps[0].goroutines; !math.IsNaN(g) {
		t.Errorf("goroutines without a counter = %v, want NaN", g)
	}
}

// The proxy's CPU is read once before the first message and once after
// the last echo, and what latency returns divides over every message
// echoed, warm-up included: never fewer than the measured ones.
func TestLatencyCPUSpan(t *testing.T) {
	var open atomic.Int64
	url := echoServer(t, &open)
	var reads atomic.Int64
	meter := func() (uint64, bool) { return uint64(reads.Add(1)) * 1e6, true }
	lr, err := latency(url, 4, 400, 20*time.Millisecond, 50*time.Millisecond, meter)
	if err != nil {
		t.Fatal(err)
	}
	if reads.Load() != 2 || !lr.cpuOK || lr.cpuNanos != 1e6 {
		t.Errorf("%d meter reads, cpu %d ns (ok %v); want 2 reads 1e6 ns apart", reads.Load(), lr.cpuNanos, lr.cpuOK)
	}
	if len(lr.rts) == 0 || lr.echoed < int64(len(lr.rts)) {
		t.Errorf("%d messages echoed, %d measured", lr.echoed, len(lr.rts))
	}
	lr, err = latency(url, 2, 400, 0, 20*time.Millisecond, nil)
	if err != nil || lr.cpuOK {
		t.Errorf("without a meter: cpuOK %v, %v", lr.cpuOK, err)
	}
}
