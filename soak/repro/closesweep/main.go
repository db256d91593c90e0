// Command closesweep reproduces what a config reload does to many open
// WebSocket tunnels, with stock reverse_proxy or through the upgrade
// module (-module).
//
// Caddy (stock, v2.11.9): the old reverse_proxy's closeConnections walks
// its map of hijacked connections under connectionsMu, client and backend
// sides in map order, and closes them one at a time; each Close waits
// (internal/poll: FD.Close waits for the fd's last reference) until that
// connection's copy goroutine has run and returned, and the tunnel's own
// teardown then blocks on the same mutex (deferred deleteConn) until the
// sweep ends. So the sweep is serial and slows as the goroutines it wakes
// and the clients' reconnections fill the run queue, and a tunnel whose
// backend side is swept first is a black hole until the sweep reaches its
// client side: its messages go nowhere and no close reaches the client.
// Measured on the 2-core VM (2026-12-02), stream_close_delay 1s, clients
// reconnecting at once and sending every second, Caddy at GOMAXPROCS=1:
// 7,000 tunnels closed 1.0-6.6 s after the reload, 3,540 of them silent
// for up to 5.5 s after their backend side had closed. With
// stream_close_delay 0 (the default) the sweep runs inside the reload, so
// POST /load lasts as long.
//
// The module, from commit 3e4b160 ("clean reloads") until c8ec647 fixed
// it: it writes Caddy's close
// frames in the background and closes a side only once both directions
// carried theirs, but it times that wait (2×closeFrameWait, 2 s) from the
// first side's close frame. When Caddy's sweep reaches the two sides of a
// tunnel more than 2 s apart, the tunnel is closed with a TCP reset, with
// no close frame, though every frame was complete and both peers were
// reading. Same setup with -module: 8,000 tunnels gave 124 resets (the
// two sides up to 3.4 s apart) in one run, none in another whose sides
// stayed within 1.3 s; 7,000 tunnels, none. The soak's scenario 2 (6,000
// tunnels, 10 reloads) saw 5 resets in 59,970 closes. Since c8ec647 the
// module sends both close frames at once: 8,000 tunnels, no reset, no
// side silent for more than 0.8 s.
//
//	cd soak && go run ./repro/closesweep -caddy ../bin/caddy -tunnels 8000 \
//		-delay 1s -reconnect -every 500ms -caddy-procs 1 -module
//
// It runs its own echo backend (in this process) and Caddy on 127.0.0.1,
// opens the tunnels, forces one reload of the same config, and prints how
// long /load took, when and how (close frame, FIN, reset) the clients saw
// their tunnels close, and how long after their backend side.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
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
	flag.IntVar(&procs, "caddy-procs", 0, "GOMAXPROCS for Caddy (0: its default); 1 makes the sweep slow sooner")
	flag.DurationVar(&every, "every", 0, "each client sends a 100-byte message this often (0: idle tunnels)")
	flag.BoolVar(&module, "module", false, "route through the upgrade module (upgrade websocket { to ... }) instead of a bare reverse_proxy")
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

var (
	reconnect, module bool
	every             time.Duration
	procs             int
)

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
	route := fmt.Sprintf("reverse_proxy %s {\n\t\tstream_close_delay %v\n\t}", backend, delay)
	if module {
		route = fmt.Sprintf("upgrade websocket {\n\t\tto %s\n\t\tstream_close_delay %v\n\t}", backend, delay)
	}
	conf := fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n\tauto_https off\n}\nhttp://%s {\n\t%s\n}\n", admin, site, route)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return err
	}
	cmd := exec.Command(caddyBin, "run", "--adapter", "caddyfile", "--config", path)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	if procs > 0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("GOMAXPROCS=%d", procs))
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	waitListening(site)

	d := &websocket.Dialer{ReadBufferSize: 512, WriteBufferSize: 512}
	closed := make([]time.Time, n)
	kinds := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		url := fmt.Sprintf("ws://%s/?id=%d", site, i)
		conn, _, err := d.Dial(url, nil)
		if err != nil {
			return fmt.Errorf("tunnel %d: %v", i, err)
		}
		stop := make(chan struct{})
		if every > 0 {
			go send(conn, stop)
		}
		wg.Go(func() {
			defer conn.Close()
			defer close(stop)
			for {
				if _, _, err := conn.ReadMessage(); err != nil {
					closed[i] = time.Now()
					kinds[i] = closeKind(err)
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
	log.Printf("%d tunnels open; reloading", n)
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
	if !waitTimeout(&wg, time.Minute) {
		open := 0
		for _, at := range closed {
			if at.IsZero() {
				open++
			}
		}
		return fmt.Errorf("%d of %d tunnels still open a minute after the reload", open, n)
	}

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
	count := map[string]int{}
	for _, k := range kinds {
		count[k]++
	}
	fmt.Printf("%5d tunnels, stream_close_delay %v, reconnect %v, module %v: POST /load took %v; clients saw their tunnels close from %v to %v after it started (median %v): %v\n",
		n, delay, reconnect, module, took.Round(time.Millisecond), after[0].Round(time.Millisecond), after[n-1].Round(time.Millisecond), after[n/2].Round(time.Millisecond), count)
	if len(gaps) > 0 {
		over := len(gaps) - sort.Search(len(gaps), func(i int) bool { return gaps[i] > 2*time.Second })
		fmt.Printf("      %d tunnels ended at the backend before their client heard: by up to %v (median %v; over 2 s: %d)\n",
			len(gaps), gaps[len(gaps)-1].Round(time.Millisecond), gaps[len(gaps)/2].Round(time.Millisecond), over)
	}
	return nil
}

// waitTimeout waits for wg, up to d.
func waitTimeout(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// send writes a message every interval until stop; the echoes are read
// (and dropped) by the client's reader.
func send(conn *websocket.Conn, stop <-chan struct{}) {
	msg := bytes.Repeat([]byte("m"), 100)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			if conn.WriteMessage(websocket.BinaryMessage, msg) != nil {
				return
			}
		}
	}
}

// closeKind names how a tunnel closed as its client saw it: a close frame
// with its code, a FIN alone, or a reset.
func closeKind(err error) string {
	var ce *websocket.CloseError
	switch {
	case errors.As(err, &ce) && ce.Code == websocket.CloseAbnormalClosure:
		return "fin"
	case errors.As(err, &ce):
		return fmt.Sprintf("close %d", ce.Code)
	case errors.Is(err, syscall.ECONNRESET):
		return "rst"
	default:
		return err.Error()
	}
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
