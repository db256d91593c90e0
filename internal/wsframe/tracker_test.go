package wsframe

// The frame tracker against the reference parser of package wsframetest,
// written from RFC 6455 §5.2 and not from the code: a table, every split of
// a stream, and a fuzz target. The root package's reload tests read
// tunnels through Caddy with the same parser.

import (
	"bytes"
	"slices"
	"testing"

	"github.com/seedf05e/caddy-upgrade/internal/wsframe/wsframetest"
)

// wfBoundaries lists the offsets of s at which no frame is partially
// passed: 0 and the end of every complete frame.
func wfBoundaries(s []byte) []int {
	frames, _ := wsframetest.Parse(s)
	b := []int{0}
	for _, f := range frames {
		b = append(b, f.End)
	}
	return b
}

// Frames from RFC 6455 §5.7, byte for byte.
var (
	wfRFCHello       = []byte{0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}
	wfRFCMaskedHello = []byte{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}
	wfRFCFragments   = []byte{0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f}
	wfRFCPing        = []byte{0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f}
	wfRFCMaskedPong  = []byte{0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}
)

func wfCat(parts ...[]byte) []byte { return slices.Concat(parts...) }

// wfFeed passes stream through tr in chunks of the given sizes (the rest
// in one last chunk) and checks, before each chunk, nextBoundary, and after
// it, atBoundary, against the reference boundaries. Each chunk with a
// boundary inside is passed in two parts split there, as the gate does.
func wfFeed(t testing.TB, stream []byte, sizes []int) {
	t.Helper()
	want := wfBoundaries(stream)
	var tr tracker
	pos := 0
	for i := 0; pos < len(stream) || i < len(sizes); i++ {
		n := len(stream) - pos
		if i < len(sizes) {
			n = min(sizes[i], n)
		}
		chunk := stream[pos : pos+n]
		wantNext := -1
		if j, _ := slices.BinarySearch(want, pos+1); j < len(want) && want[j] <= pos+n {
			wantNext = want[j] - pos
		}
		before := tr
		got := tr.nextBoundary(chunk)
		if tr != before {
			t.Fatalf("nextBoundary changed the tracker at offset %d", pos)
		}
		if got != wantNext {
			t.Fatalf("nextBoundary of %d bytes at offset %d = %d, want %d (boundaries %v)", n, pos, got, wantNext, want)
		}
		if got > 0 {
			tr.advance(chunk[:got])
			if !tr.atBoundary() {
				t.Fatalf("not at a boundary after the %d bytes nextBoundary named at offset %d", got, pos)
			}
			tr.advance(chunk[got:])
		} else {
			tr.advance(chunk)
		}
		pos += n
		_, found := slices.BinarySearch(want, pos)
		if tr.atBoundary() != found {
			t.Fatalf("atBoundary at offset %d = %v, want %v (boundaries %v)", pos, tr.atBoundary(), found, want)
		}
	}
}

// wfOnes is n chunks of one byte.
func wfOnes(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = 1
	}
	return s
}

func TestFrameTrackerTable(t *testing.T) {
	bin := func(n int) []byte { return bytes.Repeat([]byte{0xa5}, n) }
	// A 64-bit length with the top bit set, then bytes that would be
	// frames if the length were cut short.
	topBit := wfCat([]byte{0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0}, wfRFCHello, wfRFCHello)
	// 5 encoded in 64 bits: not minimal, still one frame.
	longFive := wfCat([]byte{0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 5}, bin(5))
	cases := []struct {
		name   string
		stream []byte
		want   []int
	}{
		{"empty", nil, []int{0}},
		{"7-bit", wfRFCHello, []int{0, 7}},
		{"7-bit masked", wfRFCMaskedHello, []int{0, 11}},
		{"7-bit 125", wsframetest.Append(nil, true, 2, false, bin(125)), []int{0, 127}},
		{"zero length", []byte{0x81, 0x00}, []int{0, 2}},
		{"zero length masked", []byte{0x81, 0x80, 1, 2, 3, 4}, []int{0, 6}},
		{"zero length chain", []byte{0x89, 0x00, 0x8a, 0x00, 0x81, 0x80, 1, 2, 3, 4, 0x82, 0x00}, []int{0, 2, 4, 10, 12}},
		{"16-bit 126", wsframetest.Append(nil, true, 2, false, bin(126)), []int{0, 130}},
		{"16-bit 256 RFC", wfCat([]byte{0x82, 0x7e, 0x01, 0x00}, bin(256)), []int{0, 260}},
		{"16-bit masked", wsframetest.Append(nil, true, 2, true, bin(300)), []int{0, 308}},
		{"16-bit 65535", wsframetest.Append(nil, true, 2, false, bin(65535)), []int{0, 65539}},
		{"64-bit 65536 RFC", wfCat([]byte{0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0}, bin(65536)), []int{0, 65546}},
		{"64-bit masked", wsframetest.Append(nil, true, 2, true, bin(70000)), []int{0, 70014}},
		{"64-bit non-minimal", longFive, []int{0, 15}},
		{"64-bit top bit set", topBit, []int{0}},
		{"control frames between fragments", wfCat(wfRFCFragments[:5], wfRFCPing, wfRFCMaskedPong, wsframetest.CaddyClose, wfRFCFragments[5:]), []int{0, 5, 12, 23, 27, 31}},
		{"truncated payload", wfRFCHello[:5], []int{0}},
		{"truncated header", wsframetest.Append(nil, true, 2, true, bin(300))[:5], []int{0}},
		{"then a partial frame", wfCat(wfRFCHello, wfRFCMaskedHello[:7]), []int{0, 7}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := wfBoundaries(c.stream); !slices.Equal(got, c.want) {
				t.Fatalf("reference parser: boundaries %v, want %v", got, c.want)
			}
			wfFeed(t, c.stream, nil)
			wfFeed(t, c.stream, wfOnes(len(c.stream)))
			// Every split in two for the short streams, a sample of
			// splits for the long ones.
			step := 1
			if len(c.stream) > 400 {
				step = len(c.stream)/50 + 1
			}
			for i := 0; i <= len(c.stream); i += step {
				wfFeed(t, c.stream, []int{i})
				wfFeed(t, c.stream, []int{i, 3, 1, 2, 4096})
			}
		})
	}
}

func TestFrameTrackerNextBoundary(t *testing.T) {
	cases := []struct {
		name   string
		passed []byte // passed before
		p      []byte
		want   int
	}{
		{"empty at start", nil, nil, -1},
		{"empty mid-frame", wfRFCHello[:3], nil, -1},
		{"one whole frame", nil, wfRFCHello, 7},
		{"first of two", nil, wfCat(wfRFCHello, wfRFCPing), 7},
		{"second of two", wfRFCHello, wfCat(wfRFCPing, wfRFCHello), 7},
		{"rest of a payload", wfRFCHello[:4], wfCat(wfRFCHello[4:], wfRFCPing), 3},
		{"rest of a header", wfRFCMaskedHello[:3], wfRFCMaskedHello[3:], 8},
		{"last byte", wfRFCMaskedHello[:10], wfRFCMaskedHello[10:], 1},
		{"not yet", wfRFCMaskedHello[:2], wfRFCMaskedHello[2:9], -1},
		{"zero-length frame", nil, []byte{0x89, 0x00, 0x89, 0x00}, 2},
		{"second byte of zero-length", []byte{0x89}, []byte{0x00, 0x89, 0x00}, 1},
		{"no boundary in a long payload", []byte{0x82, 0x7e, 0x01, 0x00}, make([]byte, 255), -1},
		{"end of a long payload", []byte{0x82, 0x7e, 0x01, 0x00}, make([]byte, 300), 256},
		{"top bit set", nil, wfCat([]byte{0x82, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4}, make([]byte, 100)), -1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var tr tracker
			tr.advance(c.passed)
			if got := tr.nextBoundary(c.p); got != c.want {
				t.Fatalf("nextBoundary = %d, want %d", got, c.want)
			}
		})
	}
}

// wfFuzzSizes turns fuzz bytes into chunk sizes, 0 included.
func wfFuzzSizes(cuts []byte) []int {
	sizes := make([]int, len(cuts))
	for i, c := range cuts {
		switch {
		case c < 200:
			sizes[i] = int(c % 20)
		default:
			sizes[i] = int(c-200) * 97
		}
	}
	return sizes
}

func FuzzFrameTracker(f *testing.F) {
	f.Add(wfRFCHello, []byte{})
	f.Add(wfRFCMaskedHello, []byte{1, 1, 1, 1, 1, 1})
	f.Add(wfCat(wfRFCFragments[:5], wfRFCPing, wfRFCMaskedPong, wsframetest.CaddyClose, wfRFCFragments[5:]), []byte{3, 0, 7, 2, 9})
	f.Add(wsframetest.Append(wsframetest.Append(nil, true, 2, false, make([]byte, 300)), true, 1, true, []byte("after")), []byte{4, 250, 1})
	// 64-bit lengths: 200 (not minimal), then the start of a 64 KiB frame.
	f.Add(wfCat([]byte{0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 200}, make([]byte, 200), []byte{0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0}, make([]byte, 100)), []byte{10, 202, 3, 2})
	f.Add([]byte{0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x81, 0x00}, []byte{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1})
	f.Add([]byte{0x89, 0x00, 0x8a, 0x80, 1, 2, 3, 4, 0x81, 0x7e, 0x00}, []byte{0, 1, 0, 5})
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		wfFeed(t, stream, wfFuzzSizes(cuts))
	})
}
