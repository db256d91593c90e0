// Package echo is a tiny backend for tests and the demo: a WebSocket echo at
// /ws (or any path ending in /ws) and a plain-text description of every other
// request.
package echo

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/gorilla/websocket"
)

// Handler returns the echo backend's handler.
//
// Paths ending in "/ws" are upgraded to WebSocket and every message is sent
// back with the same message type. If the client offers subprotocols, the
// first one is selected. Every other request gets a 200 text/plain response:
//
//	echo backend: <method> <path>
//	Upgrade: <value>
//	Connection: <value>
func Handler() http.Handler {
	up := &websocket.Upgrader{
		CheckOrigin: func(*http.Request) bool { return true },
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/ws") {
			serveWS(up, w, r)
			return
		}
		servePlain(w, r)
	})
	return mux
}

func serveWS(up *websocket.Upgrader, w http.ResponseWriter, r *http.Request) {
	var hdr http.Header
	if protos := websocket.Subprotocols(r); len(protos) > 0 {
		hdr = http.Header{"Sec-Websocket-Protocol": {protos[0]}}
	}
	conn, err := up.Upgrade(w, r, hdr)
	if err != nil {
		// Upgrade has already written an HTTP error response.
		return
	}
	defer conn.Close()
	for {
		mt, msg, err := conn.ReadMessage()
		if err != nil {
			return
		}
		if err := conn.WriteMessage(mt, msg); err != nil {
			return
		}
	}
}

func servePlain(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, "echo backend: %s %s\n", r.Method, r.URL.Path)
	fmt.Fprintf(w, "Upgrade: %s\n", strings.Join(r.Header.Values("Upgrade"), ", "))
	fmt.Fprintf(w, "Connection: %s\n", strings.Join(r.Header.Values("Connection"), ", "))
}
