package wsframe

import "encoding/binary"

// tracker follows RFC 6455 §5.2 frame boundaries in one direction of a
// WebSocket stream, so that a frame written from outside the copy loop (the
// close frame Caddy's reverse proxy sends on a config reload) can go in
// between two frames instead of into the middle of one. It reads headers
// only: payloads are skipped by count, never copied or unmasked, so the copy
// loop pays a few arithmetic steps per chunk, and bytes may arrive split
// anywhere, a header one byte at a time included.
//
// The zero value is a stream at its start, which is a boundary. Extensions
// (RSV bits), opcodes and the rules on control frames are not checked: the
// endpoints do that, and a tracker that refused a frame would only stop
// tracking. A 64-bit length with its top bit set (a protocol error) is taken
// as the uint64 it is; such a stream never reaches a boundary again, which
// only means nothing can be written into it from outside.
type tracker struct {
	payload uint64 // payload bytes of the current frame still to pass
	length  uint64 // payload length being read from the header
	hdrSeen uint8  // header bytes of the current frame passed so far
	hdrLen  uint8  // full header length, known once byte 1 has passed
	lenEnd  uint8  // header offset just past the extended length
}

// atBoundary reports whether no frame is partially passed.
func (t *tracker) atBoundary() bool { return t.hdrSeen == 0 && t.payload == 0 }

// advance accounts for p having passed.
func (t *tracker) advance(p []byte) {
	for len(p) > 0 {
		p = p[t.step(p):]
	}
}

// nextBoundary returns how many leading bytes of p must pass, if p passes
// next, for the stream to be at a boundary for the first time (1..len(p)),
// or -1 if that does not happen within p. It leaves t unchanged.
func (t *tracker) nextBoundary(p []byte) int {
	c := *t
	n := c.step(p)
	if n > 0 && c.atBoundary() {
		return n
	}
	return -1
}

// step passes bytes of p until the stream reaches a boundary or p runs out,
// and returns how many it passed: at least one when p is not empty.
func (t *tracker) step(p []byte) int {
	n := 0
	for n < len(p) {
		if t.hdrSeen == 0 {
			if t.payload > 0 {
				if left := uint64(len(p) - n); t.payload > left {
					t.payload -= left
					return len(p)
				}
				n += int(t.payload)
				t.payload = 0
				return n
			}
			// The usual case, a whole header at hand, at once.
			if h, length, ok := frameHeader(p[n:]); ok {
				n += h
				if t.payload = length; length == 0 {
					return n
				}
				continue
			}
		}
		b := p[n]
		n++
		t.hdrSeen++
		switch {
		case t.hdrSeen == 1:
			// FIN, RSV and opcode: nothing the boundary depends on.
			continue
		case t.hdrSeen == 2:
			t.hdrLen, t.lenEnd = 2, 2
			switch l := uint64(b & 0x7f); l {
			case 126:
				t.lenEnd += 2
			case 127:
				t.lenEnd += 8
			default:
				t.length = l
			}
			t.hdrLen = t.lenEnd
			if b&0x80 != 0 {
				t.hdrLen += 4 // masking key
			}
		case t.hdrSeen <= t.lenEnd:
			t.length = t.length<<8 | uint64(b)
		}
		if t.hdrSeen == t.hdrLen {
			t.payload, t.length, t.hdrSeen = t.length, 0, 0
			if t.payload == 0 {
				return n
			}
		}
	}
	return n
}

// frameHeader reads the header at the start of p: its size and the payload
// length, or ok false if p does not hold all of it.
func frameHeader(p []byte) (size int, length uint64, ok bool) {
	if len(p) < 2 {
		return 0, 0, false
	}
	size, length = 2, uint64(p[1]&0x7f)
	switch length {
	case 126:
		size = 4
	case 127:
		size = 10
	}
	if p[1]&0x80 != 0 {
		size += 4
	}
	if len(p) < size {
		return 0, 0, false
	}
	switch length {
	case 126:
		length = uint64(binary.BigEndian.Uint16(p[2:]))
	case 127:
		length = binary.BigEndian.Uint64(p[2:])
	}
	return size, length, true
}
