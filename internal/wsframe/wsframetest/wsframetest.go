// Package wsframetest reads and writes WebSocket frames (RFC 6455 §5.2)
// for tests. It is written from the RFC apart from package wsframe, so that
// tests can check wsframe, and the streams that pass through a tunnel,
// against it rather than against the code under test.
package wsframetest

import (
	"bytes"
	"encoding/binary"
)

// Frame is one frame as Parse read it.
type Frame struct {
	Fin        bool
	Opcode     byte
	Masked     bool
	Payload    []byte // unmasked
	Start, End int    // offsets of the frame in the stream
}

// Header reads the frame header at the start of p: its size, and the
// payload length it announces; ok is false when p does not hold all of it.
func Header(p []byte) (size int, length uint64, ok bool) {
	if len(p) < 2 {
		return 0, 0, false
	}
	size, length = 2, uint64(p[1]&0x7f)
	switch length {
	case 126:
		size += 2
	case 127:
		size += 8
	}
	if p[1]&0x80 != 0 {
		size += 4 // masking key
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

// Parse reads s whole, frame after frame, and returns the complete frames
// and the offset just past the last of them (s[rest:] is a partial frame,
// or empty). A length that does not fit in what is left, the 64-bit ones
// with the top bit set included, is a partial frame.
func Parse(s []byte) (frames []Frame, rest int) {
	pos := 0
	for {
		hdr, length, ok := Header(s[pos:])
		if !ok || length > uint64(len(s)-pos-hdr) {
			return frames, pos
		}
		b0, masked := s[pos], s[pos+1]&0x80 != 0
		f := Frame{Fin: b0&0x80 != 0, Opcode: b0 & 0x0f, Masked: masked, Start: pos}
		f.Payload = bytes.Clone(s[pos+hdr : pos+hdr+int(length)])
		if masked {
			key := s[pos+hdr-4 : pos+hdr]
			for i := range f.Payload {
				f.Payload[i] ^= key[i%4]
			}
		}
		pos += hdr + int(length)
		f.End = pos
		frames = append(frames, f)
	}
}

// Append appends one frame with the shortest length encoding; a masked
// frame gets the key 0x37fa213d of RFC 6455 §5.7.
func Append(dst []byte, fin bool, opcode byte, masked bool, payload []byte) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	var b1 byte
	if masked {
		b1 = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, b0, b1|byte(n))
	case n <= 0xffff:
		dst = append(dst, b0, b1|126)
		dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	default:
		dst = append(dst, b0, b1|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	if !masked {
		return append(dst, payload...)
	}
	key := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	dst = append(dst, key[:]...)
	for i, c := range payload {
		dst = append(dst, c^key[i%4])
	}
	return dst
}

// CaddyClose is the close frame Caddy's reverse proxy writes toward a
// client on a reload (its writeCloseControl): 1001, unmasked.
var CaddyClose = []byte{0x88, 0x02, 0x03, 0xe9}
