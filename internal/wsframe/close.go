package wsframe

import "math/rand/v2"

// HasCloseFrame reports whether p, frames from a boundary on, holds the
// start of a close frame (opcode 8).
func HasCloseFrame(p []byte) bool {
	var t tracker
	for len(p) > 0 {
		if p[0]&0x0f == 0x8 {
			return true
		}
		k := t.nextBoundary(p)
		if k < 0 {
			return false
		}
		p = p[k:]
	}
	return false
}

// CloseGoingAway returns a server's close frame with status 1001, "going
// away" (RFC 6455 §7.4.1), as Caddy's reverse proxy writes it on a reload:
// unmasked, toward a client.
func CloseGoingAway() []byte { return []byte{0x88, 0x02, 1001 >> 8, 1001 & 0xff} }

// MaskedCloseGoingAway returns CloseGoingAway as a client must send it:
// masked with a fresh key (RFC 6455 §5.3).
func MaskedCloseGoingAway() []byte {
	k := rand.Uint32()
	key := [4]byte{byte(k), byte(k >> 8), byte(k >> 16), byte(k >> 24)}
	return []byte{0x88, 0x82, key[0], key[1], key[2], key[3], (1001 >> 8) ^ key[0], (1001 & 0xff) ^ key[1]}
}
