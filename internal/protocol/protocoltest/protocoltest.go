// Package protocoltest builds requests for the tests of package protocol
// and of the handler and matcher that use it.
package protocoltest

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
)

// Request builds a request as Caddy's server would hand it to the
// handler: proto version and header lines set directly, so that tests can
// send what net/http's client would never write (several lines, odd case).
func Request(method string, major, minor int, hdr http.Header) *http.Request {
	r := httptest.NewRequest(method, "http://example.com/ws", nil)
	r.ProtoMajor, r.ProtoMinor = major, minor
	r.Proto = "HTTP/" + strconv.Itoa(major) + "." + strconv.Itoa(minor)
	r.Header = hdr
	if r.Header == nil {
		r.Header = http.Header{}
	}
	return r
}

// NumberedProtocols returns "p0, p1, ..." with n elements.
func NumberedProtocols(n int) string {
	ps := make([]string, n)
	for i := range ps {
		ps[i] = "p" + strconv.Itoa(i)
	}
	return strings.Join(ps, ", ")
}
