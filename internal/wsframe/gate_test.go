package wsframe

// The frame gate with real goroutines writing into one stream, checked
// with the reference parser of package wsframetest.

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

	"github.com/seedf05e/caddy-upgrade/internal/wsframe/wsframetest"
)

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
			s = wsframetest.Append(s, true, 0x9, masked, payload[:min(size, 16)])
		case r < 3 && !fragmenting:
			fragmenting = true
			s = wsframetest.Append(s, false, 0x2, masked, payload)
		case fragmenting:
			fragmenting = r < 6
			s = wsframetest.Append(s, !fragmenting, 0x0, masked, payload)
		default:
			s = wsframetest.Append(s, true, 0x1+byte(r%2), masked, payload)
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
func wfCheckInserted(t *testing.T, got, want []byte) []wsframetest.Frame {
	t.Helper()
	frames, rest := wsframetest.Parse(got)
	if rest != len(got) {
		t.Fatalf("output ends in a partial frame: %d of %d bytes parse", rest, len(got))
	}
	wantFrames, _ := wsframetest.Parse(want)
	var inserted []wsframetest.Frame
	j := 0
	for _, f := range frames {
		if j < len(wantFrames) && bytes.Equal(got[f.Start:f.End], want[wantFrames[j].Start:wantFrames[j].End]) {
			j++
			continue
		}
		if f.Opcode < 0x8 {
			t.Fatalf("frame %d of the output (offset %d) is no frame of the loop's stream, at loop frame %d", len(inserted)+j, f.Start, j)
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
				closeFrame := wsframetest.CaddyClose
				if masked {
					closeFrame = wsframetest.Append(nil, true, 0x8, true, []byte{0x03, 0xe9})
				}
				g := NewGate(true)
				w := &wfWriter{}
				at := int64(rng.IntN(len(stream)))

				var outErr error
				var outN int
				var wg sync.WaitGroup
				wg.Go(func() {
					for w.written.Load() < at {
						runtime.Gosched()
					}
					outN, outErr = g.OutsideWrite(w, closeFrame, 5*time.Second)
				})
				var loopErr error
				loopWritten := 0
				for _, c := range chunks {
					n, err := g.LoopWrite(w, c)
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
					t.Fatalf("round %d: OutsideWrite = %d, %v", round, outN, outErr)
				}
				frames, rest := wsframetest.Parse(w.buf)
				if rest != len(w.buf) {
					t.Fatalf("round %d: output ends in a partial frame", round)
				}
				last := frames[len(frames)-1]
				if !bytes.Equal(w.buf[last.Start:], closeFrame) {
					t.Fatalf("round %d: the close frame is not the last frame: last opcode %#x at %d", round, last.Opcode, last.Start)
				}
				prefix := w.buf[:last.Start]
				if !bytes.Equal(prefix, stream[:len(prefix)]) {
					t.Fatalf("round %d: bytes before the close frame differ from the loop's stream", round)
				}
				if _, ok := slices.BinarySearch(wfBoundaries(stream), len(prefix)); !ok {
					t.Fatalf("round %d: close frame at offset %d, not a frame boundary of the loop's stream", round, len(prefix))
				}
				if loopWritten != len(prefix) {
					t.Fatalf("round %d: LoopWrite reported %d bytes, %d went out", round, loopWritten, len(prefix))
				}
				if len(prefix) < len(stream) && !errors.Is(loopErr, ErrCloseFrameSent) {
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
			g := NewGate(true)
			w := &wfWriter{}
			const pings = 40
			var wg sync.WaitGroup
			wg.Go(func() {
				for i := range pings {
					for w.written.Load() < int64(i*len(stream)/pings) {
						runtime.Gosched()
					}
					ping := wsframetest.Append(nil, true, 0x9, false, []byte{'p', byte(i)})
					if n, err := g.OutsideWrite(w, ping, 5*time.Second); err != nil || n != len(ping) {
						t.Errorf("ping %d: OutsideWrite = %d, %v", i, n, err)
					}
				}
			})
			for _, c := range chunks {
				if n, err := g.LoopWrite(w, c); err != nil || n != len(c) {
					t.Fatalf("LoopWrite = %d, %v", n, err)
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
				if f.Opcode != 0x9 || !bytes.Equal(f.Payload, []byte{'p', byte(i)}) {
					t.Fatalf("inserted frame %d: opcode %#x payload %q", i, f.Opcode, f.Payload)
				}
			}
		})
	}
}

// TestFrameGateNoBoundaryTimesOut: a loop that wrote half a frame and has
// nothing more to write keeps the stream mid-frame, so the outside write
// gives up after its wait and writes nothing; the loop is not held up.
func TestFrameGateNoBoundaryTimesOut(t *testing.T) {
	g := NewGate(true)
	w := &wfWriter{}
	frame := wsframetest.Append(nil, true, 0x2, false, make([]byte, 1000))
	if _, err := g.LoopWrite(w, frame[:500]); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	n, err := g.OutsideWrite(w, wsframetest.CaddyClose, 100*time.Millisecond)
	if !errors.Is(err, ErrNoFrameBoundary) || n != 0 {
		t.Fatalf("OutsideWrite mid-frame = %d, %v, want 0, errNoFrameBoundary", n, err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 2*time.Second {
		t.Fatalf("OutsideWrite gave up after %v, want about 100ms", d)
	}
	if !bytes.Equal(w.buf, frame[:500]) {
		t.Fatalf("OutsideWrite wrote into the stream: %d bytes, want 500", len(w.buf))
	}
	wfLoopWriteWithin(t, g, w, frame[500:])
	// Now idle at a boundary: the outside write goes at once, however long
	// it may wait.
	start = time.Now()
	if n, err := g.OutsideWrite(w, wsframetest.CaddyClose, time.Hour); err != nil || n != len(wsframetest.CaddyClose) {
		t.Fatalf("OutsideWrite at a boundary = %d, %v", n, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("OutsideWrite at a boundary took %v", d)
	}
	if !bytes.Equal(w.buf, wfCat(frame, wsframetest.CaddyClose)) {
		t.Fatal("stream is not the frame and the close frame")
	}
	if n, err := g.LoopWrite(w, wfRFCHello); n != 0 || !errors.Is(err, ErrCloseFrameSent) {
		t.Fatalf("LoopWrite after the close frame = %d, %v, want 0, errCloseFrameSent", n, err)
	}
}

// wfLoopWriteWithin fails the test if LoopWrite blocks.
func wfLoopWriteWithin(t *testing.T, g *Gate, w io.Writer, p []byte) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := g.LoopWrite(w, p)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("LoopWrite: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("LoopWrite blocked")
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

// wfStallLoopWrite starts a loop write of a 1000-byte frame that blocks
// inside the writer until w.release is closed; loopDone gets its error.
func wfStallLoopWrite(g *Gate) (w *wfBlockingWriter, frame []byte, loopDone chan error) {
	w = &wfBlockingWriter{entered: make(chan struct{}, 1), release: make(chan struct{})}
	frame = wsframetest.Append(nil, true, 0x2, false, make([]byte, 1000))
	loopDone = make(chan error, 1)
	go func() {
		_, err := g.LoopWrite(w, frame)
		loopDone <- err
	}()
	<-w.entered
	return w, frame, loopDone
}

// TestFrameGateStalledLoopWrite: while the loop is blocked inside a write
// (a peer that stopped reading), the outside write times out without
// writing; once the write returns, the loop and later outside writes go on.
func TestFrameGateStalledLoopWrite(t *testing.T) {
	g := NewGate(true)
	w, frame, loopDone := wfStallLoopWrite(g)
	n, err := g.OutsideWrite(w, wsframetest.CaddyClose, 100*time.Millisecond)
	if !errors.Is(err, ErrNoFrameBoundary) || n != 0 {
		t.Fatalf("OutsideWrite during a stalled write = %d, %v, want 0, errNoFrameBoundary", n, err)
	}
	close(w.release)
	if err := <-loopDone; err != nil {
		t.Fatal(err)
	}
	wfLoopWriteWithin(t, g, w, wfRFCHello)
	if n, err := g.OutsideWrite(w, wsframetest.CaddyClose, 5*time.Second); err != nil || n != len(wsframetest.CaddyClose) {
		t.Fatalf("OutsideWrite after the stall = %d, %v", n, err)
	}
	wfCheckInserted(t, w.buf, wfCat(frame, wfRFCHello))
}

// TestFrameGateWaitsOutLoopWrite: an outside write that arrives while the
// loop is inside a write ending at a boundary goes out right after it.
func TestFrameGateWaitsOutLoopWrite(t *testing.T) {
	g := NewGate(true)
	w, frame, loopDone := wfStallLoopWrite(g)
	outDone := make(chan error, 1)
	go func() {
		_, err := g.OutsideWrite(w, wsframetest.CaddyClose, 5*time.Second)
		outDone <- err
	}()
	time.Sleep(50 * time.Millisecond)
	close(w.release)
	if err := <-loopDone; err != nil {
		t.Fatal(err)
	}
	if err := <-outDone; err != nil {
		t.Fatalf("OutsideWrite: %v", err)
	}
	if !bytes.Equal(w.buf, wfCat(frame, wsframetest.CaddyClose)) {
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
	g := NewGate(true)
	start := time.Now()
	if _, err := g.OutsideWrite(a, wfRFCPing, 100*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("OutsideWrite to a peer that does not read: %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("OutsideWrite took %v", d)
	}
	got := make(chan []byte, 1)
	go func() {
		buf := make([]byte, len(wfRFCHello))
		io.ReadFull(b, buf)
		got <- buf
	}()
	time.Sleep(150 * time.Millisecond) // past the deadline, had it stayed
	if _, err := g.LoopWrite(a, wfRFCHello); err != nil {
		t.Fatalf("LoopWrite after the bounded outside write: %v", err)
	}
	if !bytes.Equal(<-got, wfRFCHello) {
		t.Fatal("peer read something else")
	}
}

// TestFrameGateDisabled: without a gate (not a WebSocket) bytes pass as
// they are and an outside write goes in at once, frame or not.
func TestFrameGateDisabled(t *testing.T) {
	if g := NewGate(false); g != nil {
		t.Fatal("NewGate(false) is not nil")
	}
	var g *Gate
	var buf bytes.Buffer
	data := []byte("\x82\x7e\x01\x00 not a websocket at all")
	if n, err := g.LoopWrite(&buf, data); err != nil || n != len(data) {
		t.Fatalf("LoopWrite = %d, %v", n, err)
	}
	if n, err := g.OutsideWrite(&buf, wsframetest.CaddyClose, 0); err != nil || n != len(wsframetest.CaddyClose) {
		t.Fatalf("OutsideWrite = %d, %v", n, err)
	}
	if n, err := g.LoopWrite(&buf, data); err != nil || n != len(data) {
		t.Fatalf("LoopWrite after OutsideWrite = %d, %v", n, err)
	}
	if !bytes.Equal(buf.Bytes(), wfCat(data, wsframetest.CaddyClose, data)) {
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
		stream = wsframetest.Append(stream, true, 0x2, false, make([]byte, 64<<10))
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
			g := NewGate(true)
			i := 0
			for b.Loop() {
				g.LoopWrite(wr.w, chunks[i])
				if i++; i == len(chunks) {
					i = 0
				}
			}
		})
	}
}
