// Command closesweep reproduces, with stock Caddy v2.11.9 and no upgrade
// module, how a config reload closes many WebSocket tunnels: the old
// reverse_proxy's closeConnections walks its map of hijacked connections
// under connectionsMu, client and backend sides in map order, and closes
// them one at a time; each Close waits (internal/poll: FD.Close waits for
// the fd's last reference) until that connection's copy goroutine has run
// and returned, and the tunnel's own teardown then blocks on the same mutex
// (deferred deleteConn) until the sweep ends. So:
//
//   - the sweep is serial, and the goroutines it wakes plus the clients'
//     reconnections fill the run queue, so it slows as it goes;
//   - a tunnel whose backend side is swept first is a black hole until the
//     sweep reaches its client side: its messages go nowhere and no close
//     reaches the client.
//
// On the 2-core VM (2026-12-02), 9,000 idle tunnels, stream_close_delay 1s:
// clients saw the close 1.0-2.5 s after the reload; with clients that
// reconnect at once (-reconnect), 1.0-5.7 s, and 4,480 tunnels were
// silent for up to 4.6 s (median 1.5 s) after their backend side had
// closed. In the soak, with every client echoing once a second, the last
// closes came 9-13 s after the reload. With stream_close_delay 0 (the
// default) the sweep runs inside the reload, so POST /load lasts as long.
//
//	cd soak && go run ./repro/closesweep -caddy ../bin/caddy -tunnels 1000,3000,9000 -delay 1s -reconnect
//
// It runs its own echo backend (in this process) and Caddy on 127.0.0.1,
// opens the tunnels through reverse_proxy, forces one reload of the same
// config, and prints how long /load took, when the clients saw their
// tunnels close, and how long after their backend side.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

func main() {
	caddy := flag.String("caddy", "bin/caddy", "a Caddy binary (stock is enough)")
	counts := flag.String("tunnels", "1000,3000,9000", "tunnel counts to try, one reload each")
	delay := flag.Duration("delay", 0, "reverse_proxy stream_close_delay")
	flag.BoolVar(&reconnect, "reconnect", false, "clients reconnect at once when closed (a reconnect storm), as browsers do")
	flag.Parse()
	raiseNofile()

	backend := startBackend()
	for _, s := range strings.Split(*counts, ",") {
		n, err := strconv.Atoi(s)
		if err != nil {
			log.Fatal(err)
		}
		if err := trial(*caddy, backend, n, *delay); err != nil {
			log.Fatal(err)
		}
	}
}

const site, admin = "127.0.0.1:18990", "127.0.0.1:18992"

var reconnect bool

// backendGone records, by tunnel id, when the backend side of a tunnel
// ended (Caddy's close frame or its close reached the backend).
var backendGone sync.Map

// trial runs Caddy, opens n tunnels, reloads once and reports.
func trial(caddyBin, backend string, n int, delay time.Duration) error {
	dir, err := os.MkdirTemp("", "closesweep-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	conf := fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n\tauto_https off\n}\nhttp://%s {\n\treverse_proxy %s {\n\t\tstream_close_delay %v\n\t}\n}\n",
		admin, site, backend, delay)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return err
	}
	cmd := exec.Command(caddyBin, "run", "--adapter", "caddyfile", "--config", path)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitListening(site)

	d := &websocket.Dialer{ReadBufferSize: 512, WriteBufferSize: 512}
	closed := make([]time.Time, n)
	var wg sync.WaitGroup
	for i := range n {
		url := fmt.Sprintf("ws://%s/?id=%d", site, i)
		conn, _, err := d.Dial(url, nil)
		if err != nil {
			return fmt.Errorf("tunnel %d: %v", i, err)
		}
		wg.Go(func() {
			defer conn.Close()
			for {
				if _, _, err := conn.ReadMessage(); err != nil {
					closed[i] = time.Now()
					break
				}
			}
			if reconnect {
				if c, _, err := d.Dial(url+"&again", nil); err == nil {
					c.Close()
				}
			}
		})
	}
	backendGone.Clear()
	time.Sleep(time.Second)

	req, _ := http.NewRequest(http.MethodPost, "http://"+admin+"/load", bytes.NewReader([]byte(conf)))
	req.Header.Set("Content-Type", "text/caddyfile")
	req.Header.Set("Cache-Control", "must-revalidate") // reload even though nothing changed
	t0 := time.Now()
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	res.Body.Close()
	took := time.Since(t0)
	wg.Wait()

	after := make([]time.Duration, n)
	for i, at := range closed {
		after[i] = at.Sub(t0)
	}
	var gaps []time.Duration
	for i, at := range closed {
		if gone, ok := backendGone.Load(strconv.Itoa(i)); ok && gone.(time.Time).Before(at) {
			gaps = append(gaps, at.Sub(gone.(time.Time)))
		}
	}
	slices.Sort(after)
	slices.Sort(gaps)
	fmt.Printf("%5d tunnels, stream_close_delay %v, reconnect %v: POST /load took %v; clients saw their tunnels close from %v to %v after it started (median %v)\n",
		n, delay, reconnect, took.Round(time.Millisecond), after[0].Round(time.Millisecond), after[n-1].Round(time.Millisecond), after[n/2].Round(time.Millisecond))
	if len(gaps) > 0 {
		fmt.Printf("      %d tunnels ended at the backend before their client heard: by up to %v (median %v)\n",
			len(gaps), gaps[len(gaps)-1].Round(time.Millisecond), gaps[len(gaps)/2].Round(time.Millisecond))
	}
	return nil
}

// startBackend runs a WebSocket echo server in this process.
func startBackend() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	up := websocket.Upgrader{ReadBufferSize: 512, WriteBufferSize: 512}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			mt, msg, err := conn.ReadMessage()
			if err != nil {
				if r.URL.Query().Has("id") && !r.URL.Query().Has("again") {
					backendGone.Store(r.URL.Query().Get("id"), time.Now())
				}
				return
			}
			conn.WriteMessage(mt, msg)
		}
	}))
	return ln.Addr().String()
}

func waitListening(addr string) {
	for range 200 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Fatalf("nothing listening on %s", addr)
}

// raiseNofile: the clients and the backend both live in this process, two
// descriptors per tunnel.
func raiseNofile() {
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil {
		rl.Cur = rl.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}
