//go:build !linux

package upgrade

import "errors"

// Without epoll there is no shared poller: tunnels stay with Caddy's
// reverse proxy (tunnel.go falls back and says so once).

const pollerSupported = false

type poller struct{}

var sharedPoller = &poller{}

var errNoPoller = errors.New("no shared poller on this OS")

func (p *poller) add(*flow) error { return errNoPoller }
func (p *poller) arm(*flow) error { return errNoPoller }
func (p *poller) remove(*flow)    {}
