module github.com/seedf05e/caddy-upgrade/soak

go 1.26.8

require (
	github.com/gorilla/websocket v1.5.3
	golang.org/x/sys v0.48.0
)

require github.com/seedf05e/caddy-upgrade/bench v0.0.0

// The process helpers are shared with bench/cmd/wsbench (bench/proc).
replace github.com/seedf05e/caddy-upgrade/bench => ../bench
