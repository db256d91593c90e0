// Package wsframe follows WebSocket frames (RFC 6455 §5.2) in a stream it
// does not own, so that frames from outside a tunnel's copy loop, the close
// frames of a config reload, go in between two frames and never into one.
//
// A tracker reads frame headers as bytes pass and knows where the next
// boundary is; a Gate orders one direction's writes between the copy loop
// (LoopWrite) and an outside writer (OutsideWrite), which waits for a
// boundary; HasCloseFrame, CloseGoingAway and MaskedCloseGoingAway are the
// close frames themselves. The package imports nothing from Caddy.
package wsframe
