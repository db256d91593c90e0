// Package protocol holds the rules of the upgrade handler that need no
// Caddy: reading an offer (the Upgrade and Connection grammar, extended
// CONNECT's :protocol), the route's policy table and outcomes, the header
// rewrites of a stripped or accepted offer, the WebSocket request and 101
// checks of RFC 6455, the Origin rules, and the quoting of client values
// for logs. docs/behaviour.md is the reference these follow; the sections
// cited as §n are its sections.
//
// Everything here works on net/http values and is tested with tables and
// fuzzed on its own, without linking Caddy.
package protocol
