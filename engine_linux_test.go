package upgrade

import (
	"errors"
	"testing"
	"time"
)

// TestEndpointLazyDeadline: await moves its read deadline lazily, so on a
// loaded machine the deadline may pass between await and the next read.
// That read must say "wait again", not fail the tunnel; the next await
// moves the deadline and finds the bytes.
func TestEndpointLazyDeadline(t *testing.T) {
	a, b := tcpPair(t)
	e := connEndpoint(a)
	if e == nil {
		t.Fatal("a plain TCP connection is not an endpoint")
	}
	buf := make([]byte, 64)
	if n, err := e.read(buf, false); n != 0 || !errors.Is(err, errWouldBlock) {
		t.Fatalf("read of an empty socket: %d, %v; want errWouldBlock", n, err)
	}
	if ready, err := e.await(20 * time.Millisecond); ready || err != nil {
		t.Fatalf("await on a quiet socket: ready %v, %v; want a timeout", ready, err)
	}

	// A deadline that passed after the last await, with bytes waiting.
	e.deadline = time.Now().Add(-time.Millisecond)
	a.SetReadDeadline(e.deadline)
	if _, err := b.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if n, err := e.read(buf, true); n != 0 || !errors.Is(err, errWouldBlock) {
		t.Fatalf("read past the deadline: %d, %v; want errWouldBlock", n, err)
	}
	ready, err := e.await(time.Second)
	if !ready || err != nil {
		t.Fatalf("await with bytes waiting: ready %v, %v", ready, err)
	}
	n, err := e.read(buf, true)
	if string(buf[:n]) != "hello" {
		t.Fatalf("read after await: %q, %v; want hello", buf[:n], err)
	}
}
