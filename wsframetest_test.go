package upgrade

import (
	"bytes"
	"encoding/binary"
)

// wfFrame is one frame as the reference parser read it.
type wfFrame struct {
	fin        bool
	opcode     byte
	masked     bool
	payload    []byte // unmasked
	start, end int    // offsets of the frame in the stream
}

// wfParse reads s whole, frame after frame, and returns the complete
// frames and the offset just past the last of them (s[rest:] is a partial
// frame, or empty). A length that does not fit in what is left, the
// 64-bit ones with the top bit set included, is a partial frame.
func wfParse(s []byte) (frames []wfFrame, rest int) {
	pos := 0
	for len(s)-pos >= 2 {
		b0, b1 := s[pos], s[pos+1]
		hdr := 2
		length := uint64(b1 & 0x7f)
		switch length {
		case 126:
			hdr += 2
		case 127:
			hdr += 8
		}
		masked := b1&0x80 != 0
		if masked {
			hdr += 4
		}
		if len(s)-pos < hdr {
			break
		}
		switch length {
		case 126:
			length = uint64(binary.BigEndian.Uint16(s[pos+2:]))
		case 127:
			length = binary.BigEndian.Uint64(s[pos+2:])
		}
		if length > uint64(len(s)-pos-hdr) {
			break
		}
		f := wfFrame{fin: b0&0x80 != 0, opcode: b0 & 0x0f, masked: masked, start: pos}
		f.payload = bytes.Clone(s[pos+hdr : pos+hdr+int(length)])
		if masked {
			key := s[pos+hdr-4 : pos+hdr]
			for i := range f.payload {
				f.payload[i] ^= key[i%4]
			}
		}
		pos += hdr + int(length)
		f.end = pos
		frames = append(frames, f)
	}
	return frames, pos
}

// wfAppend appends one frame with the shortest length encoding; a masked
// frame gets the key 0x37fa213d of RFC 6455 §5.7.
func wfAppend(dst []byte, fin bool, opcode byte, masked bool, payload []byte) []byte {
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

// wfCaddyClose is the close frame Caddy's reverse proxy writes toward a
// client on a reload (its writeCloseControl): 1001, unmasked.
var wfCaddyClose = []byte{0x88, 0x02, 0x03, 0xe9}
