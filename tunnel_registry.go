package upgrade

import (
	"sync"
	"sync/atomic"
	"time"
)

// The tunnels of one handler instance: how many may be open
// (max_connections), and which ones the module owns, so that a config
// reload or shutdown closes them as Caddy's reverse proxy closes its own.

// tunnelLimit counts the tunnels open through one handler instance
// (max_connections, docs/behaviour.md §5).
type tunnelLimit struct {
	max  int64 // 0: unlimited
	open atomic.Int64
}

func newTunnelLimit(max int) *tunnelLimit { return &tunnelLimit{max: int64(max)} }

// acquire reserves a slot, or reports that none is free.
func (l *tunnelLimit) acquire() bool {
	for {
		n := l.open.Load()
		if l.max > 0 && n >= l.max {
			return false
		}
		if l.open.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (l *tunnelLimit) release() { l.open.Add(-1) }

// tunnelRegistry holds the tunnels a handler instance has taken over
// (tunnel.go). Caddy's reverse proxy no longer knows them, so when the
// instance is cleaned up (a config reload, or shutdown) the registry does
// what the proxy's Cleanup does for its tunnels: after stream_close_delay
// (at once without one), close frames at a frame boundary, then close.
// A tunnel taken over after that moment joins the same deadline.
type tunnelRegistry struct {
	mu      sync.Mutex
	open    map[ownedTunnel]struct{}
	closeAt time.Time // zero until cleanup
	timer   *time.Timer
}

// ownedTunnel is what the registry needs of a tunnel (tunnel.go).
type ownedTunnel interface {
	// goAway closes the tunnel as a reload or shutdown does.
	goAway()
	// addTimer keeps timer to be stopped when the tunnel closes.
	addTimer(timer *time.Timer)
}

func newTunnelRegistry() *tunnelRegistry {
	return &tunnelRegistry{open: make(map[ownedTunnel]struct{})}
}

func (r *tunnelRegistry) add(t ownedTunnel) {
	r.mu.Lock()
	r.open[t] = struct{}{}
	closeAt := r.closeAt
	r.mu.Unlock()
	if !closeAt.IsZero() {
		if wait := time.Until(closeAt); wait > 0 {
			t.addTimer(time.AfterFunc(wait, t.goAway))
		} else {
			go t.goAway()
		}
	}
}

func (r *tunnelRegistry) remove(t ownedTunnel) {
	r.mu.Lock()
	delete(r.open, t)
	r.mu.Unlock()
}

// cleanup closes every owned tunnel after delay.
func (r *tunnelRegistry) cleanup(delay time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closeAt.IsZero() {
		return
	}
	r.closeAt = time.Now().Add(delay)
	if delay <= 0 {
		r.goAwayLocked()
		return
	}
	r.timer = time.AfterFunc(delay, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.goAwayLocked()
	})
}

// goAwayLocked starts closing every tunnel; each closes in the
// background (close frames wait for a frame boundary), so one slow peer
// holds up no other.
func (r *tunnelRegistry) goAwayLocked() {
	for t := range r.open {
		go t.goAway()
	}
}
