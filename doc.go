// Package upgrade is a Caddy HTTP handler that applies a per-route policy to
// HTTP Upgrade requests (RFC 9110 §7.8) and extended CONNECT (RFC 8441/9220).
package upgrade
