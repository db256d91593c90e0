package upgrade

// Unit tests of wsframe.go: the frame tracker against a reference parser
// written here from RFC 6455 §5.2, not from the code (table, every split,
// fuzz), and the frame gate with real goroutines writing into one stream.
// reload_test.go reads tunnels through Caddy with the same parser.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// wfBoundaries lists the offsets of s at which no frame is partially
// passed: 0 and the end of every complete frame.
func wfBoundaries(s []byte) []int {
	frames, _ := wfParse(s)
	b := []int{0}
	for _, f := range frames {
		b = append(b, f.end)
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
	var tr frameTracker
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
		{"7-bit 125", wfAppend(nil, true, 2, false, bin(125)), []int{0, 127}},
		{"zero length", []byte{0x81, 0x00}, []int{0, 2}},
		{"zero length masked", []byte{0x81, 0x80, 1, 2, 3, 4}, []int{0, 6}},
		{"zero length chain", []byte{0x89, 0x00, 0x8a, 0x00, 0x81, 0x80, 1, 2, 3, 4, 0x82, 0x00}, []int{0, 2, 4, 10, 12}},
		{"16-bit 126", wfAppend(nil, true, 2, false, bin(126)), []int{0, 130}},
		{"16-bit 256 RFC", wfCat([]byte{0x82, 0x7e, 0x01, 0x00}, bin(256)), []int{0, 260}},
		{"16-bit masked", wfAppend(nil, true, 2, true, bin(300)), []int{0, 308}},
		{"16-bit 65535", wfAppend(nil, true, 2, false, bin(65535)), []int{0, 65539}},
		{"64-bit 65536 RFC", wfCat([]byte{0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0}, bin(65536)), []int{0, 65546}},
		{"64-bit masked", wfAppend(nil, true, 2, true, bin(70000)), []int{0, 70014}},
		{"64-bit non-minimal", longFive, []int{0, 15}},
		{"64-bit top bit set", topBit, []int{0}},
		{"control frames between fragments", wfCat(wfRFCFragments[:5], wfRFCPing, wfRFCMaskedPong, wfCaddyClose, wfRFCFragments[5:]), []int{0, 5, 12, 23, 27, 31}},
		{"truncated payload", wfRFCHello[:5], []int{0}},
		{"truncated header", wfAppend(nil, true, 2, true, bin(300))[:5], []int{0}},
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
			var tr frameTracker
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
	f.Add(wfCat(wfRFCFragments[:5], wfRFCPing, wfRFCMaskedPong, wfCaddyClose, wfRFCFragments[5:]), []byte{3, 0, 7, 2, 9})
	f.Add(wfAppend(wfAppend(nil, true, 2, false, make([]byte, 300)), true, 1, true, []byte("after")), []byte{4, 250, 1})
	// 64-bit lengths: 200 (not minimal), then the start of a 64 KiB frame.
	f.Add(wfCat([]byte{0x82, 0x7f, 0, 0, 0, 0, 0, 0, 0, 200}, make([]byte, 200), []byte{0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0}, make([]byte, 100)), []byte{10, 202, 3, 2})
	f.Add([]byte{0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x81, 0x00}, []byte{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1})
	f.Add([]byte{0x89, 0x00, 0x8a, 0x80, 1, 2, 3, 4, 0x81, 0x7e, 0x00}, []byte{0, 1, 0, 5})
	f.Fuzz(func(t *testing.T, stream, cuts []byte) {
		wfFeed(t, stream, wfFuzzSizes(cuts))
	})
}

// wfStream is a WebSocket stream of n frames: one in five large (40–64
// KiB), the rest 16 B, fragmented messages and pings among them, every
// payload byte derived from the frame's index so a misplaced byte shows.
func wfStream(rng *rand.Rand, n int, masked bool) []byte {
	var s []byte
	fragmenting := false
	for i := range n {
		size := 16
		if rng.IntN(5) == 0 {
			size = 40<<10 + rng.IntN(24<<10+1)
		}
		payload := make([]byte, size)
		for j := range payload {
			payload[j] = byte(i*7 + j)
		}
		switch r := rng.IntN(10); {
		case r == 0:
			s = wfAppend(s, true, 0x9, masked, payload[:min(size, 16)])
		case r < 3 && !fragmenting:
			fragmenting = true
			s = wfAppend(s, false, 0x2, masked, payload)
		case fragmenting:
			fragmenting = r < 6
			s = wfAppend(s, !fragmenting, 0x0, masked, payload)
		default:
			s = wfAppend(s, true, 0x1+byte(r%2), masked, payload)
		}
	}
	return s
}

// wfChunks cuts s into chunks of size bytes (0: random sizes up to 70000).
func wfChunks(rng *rand.Rand, s []byte, size int) [][]byte {
	var chunks [][]byte
	for len(s) > 0 {
		n := size
		if n == 0 {
			n = 1 + rng.IntN(70000)
		}
		n = min(n, len(s))
		chunks = append(chunks, s[:n])
		s = s[n:]
	}
	return chunks
}

// wfWriter is the stream a gate writes into: a plain buffer, so that
// -race reports two writers at once, and a check that does not need
// -race. It yields inside Write to widen the windows between goroutines.
type wfWriter struct {
	buf     []byte
	in      atomic.Bool
	overlap atomic.Bool
	written atomic.Int64
}

func (w *wfWriter) Write(p []byte) (int, error) {
	if !w.in.CompareAndSwap(false, true) {
		w.overlap.Store(true)
	}
	runtime.Gosched()
	w.buf = append(w.buf, p...)
	w.written.Add(int64(len(p)))
	w.in.Store(false)
	return len(p), nil
}

// wfCheckInserted checks that got is want with whole frames inserted
// between want's frames, and returns those frames.
func wfCheckInserted(t *testing.T, got, want []byte) []wfFrame {
	t.Helper()
	frames, rest := wfParse(got)
	if rest != len(got) {
		t.Fatalf("output ends in a partial frame: %d of %d bytes parse", rest, len(got))
	}
	wantFrames, _ := wfParse(want)
	var inserted []wfFrame
	j := 0
	for _, f := range frames {
		if j < len(wantFrames) && bytes.Equal(got[f.start:f.end], want[wantFrames[j].start:wantFrames[j].end]) {
			j++
			continue
		}
		if f.opcode < 0x8 {
			t.Fatalf("frame %d of the output (offset %d) is no frame of the loop's stream, at loop frame %d", len(inserted)+j, f.start, j)
		}
		inserted = append(inserted, f)
	}
	if j != len(wantFrames) {
		t.Fatalf("%d of the loop's %d frames came through", j, len(wantFrames))
	}
	return inserted
}

// TestFrameGateCloseBetweenFrames runs a copy loop through a gate while
// another goroutine writes a close frame at a random moment: every frame
// comes through whole, the close frame lands between two of them, and the
// loop writes nothing after it.
func TestFrameGateCloseBetweenFrames(t *testing.T) {
	for _, size := range []int{4096, 1000, 32 << 10, 0} {
		t.Run(fmt.Sprintf("chunk=%d", size), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(size), 9))
			for round := range 16 {
				masked := round%2 == 1
				stream := wfStream(rng, 60, masked)
				chunks := wfChunks(rng, stream, size)
				closeFrame := wfCaddyClose
				if masked {
					closeFrame = wfAppend(nil, true, 0x8, true, []byte{0x03, 0xe9})
				}
				g := newFrameGate(true)
				w := &wfWriter{}
				at := int64(rng.IntN(len(stream)))

				var outErr error
				var outN int
				var wg sync.WaitGroup
				wg.Go(func() {
					for w.written.Load() < at {
						runtime.Gosched()
					}
					outN, outErr = g.outsideWrite(w, closeFrame, 5*time.Second)
				})
				var loopErr error
				loopWritten := 0
				for _, c := range chunks {
					n, err := g.loopWrite(w, c)
					loopWritten += n
					if err != nil {
						loopErr = err
						break
					}
				}
				wg.Wait()

				if w.overlap.Load() {
					t.Fatal("two writes into the stream at once")
				}
				if outErr != nil || outN != len(closeFrame) {
					t.Fatalf("round %d: outsideWrite = %d, %v", round, outN, outErr)
				}
				frames, rest := wfParse(w.buf)
				if rest != len(w.buf) {
					t.Fatalf("round %d: output ends in a partial frame", round)
				}
				last := frames[len(frames)-1]
				if !bytes.Equal(w.buf[last.start:], closeFrame) {
					t.Fatalf("round %d: the close frame is not the last frame: last opcode %#x at %d", round, last.opcode, last.start)
				}
				prefix := w.buf[:last.start]
				if !bytes.Equal(prefix, stream[:len(prefix)]) {
					t.Fatalf("round %d: bytes before the close frame differ from the loop's stream", round)
				}
				if _, ok := slices.BinarySearch(wfBoundaries(stream), len(prefix)); !ok {
					t.Fatalf("round %d: close frame at offset %d, not a frame boundary of the loop's stream", round, len(prefix))
				}
				if loopWritten != len(prefix) {
					t.Fatalf("round %d: loopWrite reported %d bytes, %d went out", round, loopWritten, len(prefix))
				}
				if len(prefix) < len(stream) && !errors.Is(loopErr, errCloseFrameSent) {
					t.Fatalf("round %d: loop stopped at %d of %d bytes with %v, want errCloseFrameSent", round, len(prefix), len(stream), loopErr)
				}
			}
		})
	}
}

// TestFrameGatePingsBetweenFrames has an outside writer put many frames
// that are not close frames into a running stream: the loop goes on after
// each, and all of them land between the loop's frames.
func TestFrameGatePingsBetweenFrames(t *testing.T) {
	for _, size := range []int{4096, 1000, 0} {
		t.Run(fmt.Sprintf("chunk=%d", size), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(size), 11))
			stream := wfStream(rng, 400, false)
			chunks := wfChunks(rng, stream, size)
			g := newFrameGate(true)
			w := &wfWriter{}
			const pings = 40
			var wg sync.WaitGroup
			wg.Go(func() {
				for i := range pings {
					for w.written.Load() < int64(i*len(stream)/pings) {
						runtime.Gosched()
					}
					ping := wfAppend(nil, true, 0x9, false, []byte{'p', byte(i)})
					if n, err := g.outsideWrite(w, ping, 5*time.Second); err != nil || n != len(ping) {
						t.Errorf("ping %d: outsideWrite = %d, %v", i, n, err)
					}
				}
			})
			for _, c := range chunks {
				if n, err := g.loopWrite(w, c); err != nil || n != len(c) {
					t.Fatalf("loopWrite = %d, %v", n, err)
				}
			}
			wg.Wait()
			if w.overlap.Load() {
				t.Fatal("two writes into the stream at once")
			}
			inserted := wfCheckInserted(t, w.buf, stream)
			if len(inserted) != pings {
				t.Fatalf("%d frames inserted, want %d", len(inserted), pings)
			}
			for i, f := range inserted {
				if f.opcode != 0x9 || !bytes.Equal(f.payload, []byte{'p', byte(i)}) {
					t.Fatalf("inserted frame %d: opcode %#x payload %q", i, f.opcode, f.payload)
				}
			}
		})
	}
}

// TestFrameGateNoBoundaryTimesOut: a loop that wrote half a frame and has
// nothing more to write keeps the stream mid-frame, so the outside write
// gives up after its wait and writes nothing; the loop is not held up.
func TestFrameGateNoBoundaryTimesOut(t *testing.T) {
	g := newFrameGate(true)
	w := &wfWriter{}
	frame := wfAppend(nil, true, 0x2, false, make([]byte, 1000))
	if _, err := g.loopWrite(w, frame[:500]); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	n, err := g.outsideWrite(w, wfCaddyClose, 100*time.Millisecond)
	if !errors.Is(err, errNoFrameBoundary) || n != 0 {
		t.Fatalf("outsideWrite mid-frame = %d, %v, want 0, errNoFrameBoundary", n, err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 2*time.Second {
		t.Fatalf("outsideWrite gave up after %v, want about 100ms", d)
	}
	if !bytes.Equal(w.buf, frame[:500]) {
		t.Fatalf("outsideWrite wrote into the stream: %d bytes, want 500", len(w.buf))
	}
	wfLoopWriteWithin(t, g, w, frame[500:])
	// Now idle at a boundary: the outside write goes at once, however long
	// it may wait.
	start = time.Now()
	if n, err := g.outsideWrite(w, wfCaddyClose, time.Hour); err != nil || n != len(wfCaddyClose) {
		t.Fatalf("outsideWrite at a boundary = %d, %v", n, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("outsideWrite at a boundary took %v", d)
	}
	if !bytes.Equal(w.buf, wfCat(frame, wfCaddyClose)) {
		t.Fatal("stream is not the frame and the close frame")
	}
	if n, err := g.loopWrite(w, wfRFCHello); n != 0 || !errors.Is(err, errCloseFrameSent) {
		t.Fatalf("loopWrite after the close frame = %d, %v, want 0, errCloseFrameSent", n, err)
	}
}

// wfLoopWriteWithin fails the test if loopWrite blocks.
func wfLoopWriteWithin(t *testing.T, g *frameGate, w io.Writer, p []byte) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := g.loopWrite(w, p)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("loopWrite: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("loopWrite blocked")
	}
}

// wfBlockingWriter blocks every Write until release is closed, like a
// connection whose peer stopped reading.
type wfBlockingWriter struct {
	wfWriter
	entered chan struct{}
	release chan struct{}
}

func (w *wfBlockingWriter) Write(p []byte) (int, error) {
	select {
	case w.entered <- struct{}{}:
	default:
	}
	<-w.release
	return w.wfWriter.Write(p)
}

// TestFrameGateStalledLoopWrite: while the loop is blocked inside a write
// (a peer that stopped reading), the outside write times out without
// writing; once the write returns, the loop and later outside writes go on.
func TestFrameGateStalledLoopWrite(t *testing.T) {
	g := newFrameGate(true)
	w := &wfBlockingWriter{entered: make(chan struct{}, 1), release: make(chan struct{})}
	frame := wfAppend(nil, true, 0x2, false, make([]byte, 1000))
	loopDone := make(chan error, 1)
	go func() {
		_, err := g.loopWrite(w, frame)
		loopDone <- err
	}()
	<-w.entered
	n, err := g.outsideWrite(w, wfCaddyClose, 100*time.Millisecond)
	if !errors.Is(err, errNoFrameBoundary) || n != 0 {
		t.Fatalf("outsideWrite during a stalled write = %d, %v, want 0, errNoFrameBoundary", n, err)
	}
	close(w.release)
	if err := <-loopDone; err != nil {
		t.Fatal(err)
	}
	wfLoopWriteWithin(t, g, w, wfRFCHello)
	if n, err := g.outsideWrite(w, wfCaddyClose, 5*time.Second); err != nil || n != len(wfCaddyClose) {
		t.Fatalf("outsideWrite after the stall = %d, %v", n, err)
	}
	wfCheckInserted(t, w.buf, wfCat(frame, wfRFCHello))
}

// TestFrameGateWaitsOutLoopWrite: an outside write that arrives while the
// loop is inside a write ending at a boundary goes out right after it.
func TestFrameGateWaitsOutLoopWrite(t *testing.T) {
	g := newFrameGate(true)
	w := &wfBlockingWriter{entered: make(chan struct{}, 1), release: make(chan struct{})}
	frame := wfAppend(nil, true, 0x2, false, make([]byte, 1000))
	loopDone := make(chan error, 1)
	go func() {
		_, err := g.loopWrite(w, frame)
		loopDone <- err
	}()
	<-w.entered
	outDone := make(chan error, 1)
	go func() {
		_, err := g.outsideWrite(w, wfCaddyClose, 5*time.Second)
		outDone <- err
	}()
	time.Sleep(50 * time.Millisecond)
	close(w.release)
	if err := <-loopDone; err != nil {
		t.Fatal(err)
	}
	if err := <-outDone; err != nil {
		t.Fatalf("outsideWrite: %v", err)
	}
	if !bytes.Equal(w.buf, wfCat(frame, wfCaddyClose)) {
		t.Fatal("stream is not the frame and the close frame")
	}
}

// TestFrameGateOutsideWriteBounded: on a connection whose peer does not
// read, the outside write at a boundary fails after its wait instead of
// blocking, and leaves no deadline behind for the loop.
func TestFrameGateOutsideWriteBounded(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	g := newFrameGate(true)
	start := time.Now()
	if _, err := g.outsideWrite(a, wfRFCPing, 100*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("outsideWrite to a peer that does not read: %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("outsideWrite took %v", d)
	}
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, len(wfRFCHello))
		io.ReadFull(b, buf)
		got <- buf
	}()
	time.Sleep(150 * time.Millisecond) // past the deadline, had it stayed
	if _, err := g.loopWrite(a, wfRFCHello); err != nil {
		t.Fatalf("loopWrite after the bounded outside write: %v", err)
	}
	if !bytes.Equal(<-got, wfRFCHello) {
		t.Fatal("peer read something else")
	}
}

// TestFrameGateDisabled: without a gate (not a WebSocket) bytes pass as
// they are and an outside write goes in at once, frame or not.
func TestFrameGateDisabled(t *testing.T) {
	if g := newFrameGate(false); g != nil {
		t.Fatal("newFrameGate(false) is not nil")
	}
	var g *frameGate
	var buf bytes.Buffer
	data := []byte("\x82\x7e\x01\x00 not a websocket at all")
	if n, err := g.loopWrite(&buf, data); err != nil || n != len(data) {
		t.Fatalf("loopWrite = %d, %v", n, err)
	}
	if n, err := g.outsideWrite(&buf, wfCaddyClose, 0); err != nil || n != len(wfCaddyClose) {
		t.Fatalf("outsideWrite = %d, %v", n, err)
	}
	if n, err := g.loopWrite(&buf, data); err != nil || n != len(data) {
		t.Fatalf("loopWrite after outsideWrite = %d, %v", n, err)
	}
	if !bytes.Equal(buf.Bytes(), wfCat(data, wfCaddyClose, data)) {
		t.Fatalf("stream changed: %q", buf.Bytes())
	}
}

// wfCopyWriter copies each write into a buffer, as a socket write copies
// into the kernel: the least a real write costs.
type wfCopyWriter struct{ buf []byte }

func (w *wfCopyWriter) Write(p []byte) (int, error) { return copy(w.buf, p), nil }

// BenchmarkFrameGateLoopWrite: the copy loop's cost of the gate, 64 KiB
// frames in 32 KiB chunks, against the same writes without it.
func BenchmarkFrameGateLoopWrite(b *testing.B) {
	var stream []byte
	for range 16 {
		stream = wfAppend(stream, true, 0x2, false, make([]byte, 64<<10))
	}
	chunks := wfChunks(nil, stream, 32<<10)
	perChunk := int64(len(stream) / len(chunks))
	writers := []struct {
		name string
		w    io.Writer
	}{
		{"discard", io.Discard},
		{"copy", &wfCopyWriter{buf: make([]byte, 32<<10)}},
	}
	for _, wr := range writers {
		b.Run(wr.name+"/plain", func(b *testing.B) {
			b.SetBytes(perChunk)
			i := 0
			for b.Loop() {
				wr.w.Write(chunks[i])
				if i++; i == len(chunks) {
					i = 0
				}
			}
		})
		b.Run(wr.name+"/gate", func(b *testing.B) {
			b.SetBytes(perChunk)
			g := newFrameGate(true)
			i := 0
			for b.Loop() {
				g.loopWrite(wr.w, chunks[i])
				if i++; i == len(chunks) {
					i = 0
				}
			}
		})
	}
}
