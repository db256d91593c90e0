// Command echo runs the test/demo backend: a WebSocket echo at /ws and a
// plain-text request description everywhere else.
//
//	echo -listen 127.0.0.1:9001
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/seedf05e/caddy-upgrade/internal/echo"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9001", "address to listen on")
	flag.Parse()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("echo backend listening on http://%s/ (WebSocket echo at /ws)", ln.Addr())
	srv := &http.Server{
		Handler:           echo.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
	}
	log.Fatal(srv.Serve(ln))
}
