package upgrade

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
)

// offerRequest builds a request as Caddy's server would hand it to the
// handler: proto version and header lines set directly, so that tests can
// send what net/http's client would never write (several lines, odd case).
func offerRequest(method string, major, minor int, hdr http.Header) *http.Request {
	r := httptest.NewRequest(method, "http://example.com/ws", nil)
	r.ProtoMajor, r.ProtoMinor = major, minor
	r.Proto = "HTTP/" + strconv.Itoa(major) + "." + strconv.Itoa(minor)
	r.Header = hdr
	if r.Header == nil {
		r.Header = http.Header{}
	}
	return r
}

// numberedProtocols returns "p0, p1, ..." with n elements.
func numberedProtocols(n int) string {
	ps := make([]string, n)
	for i := range ps {
		ps[i] = "p" + strconv.Itoa(i)
	}
	return strings.Join(ps, ", ")
}
