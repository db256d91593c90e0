// Command caddy is a development build of Caddy with this module plugged in,
// the same binary xcaddy would build.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/seedf05e/caddy-upgrade"
)

func main() {
	caddycmd.Main()
}
