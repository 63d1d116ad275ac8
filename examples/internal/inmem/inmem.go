// Package inmem serves a handler on an in-memory listener, for the tests of
// the example programs.
package inmem

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// Serve starts h on a fasthttp.Server over an in-memory listener, stopped
// when the test ends, and returns a client for it.
func Serve(t testing.TB, h fasthttp.RequestHandler) *fasthttp.Client {
	t.Helper()
	ln := fasthttputil.NewInmemoryListener()
	server := &fasthttp.Server{Handler: h}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	t.Cleanup(func() {
		require.NoError(t, server.Shutdown())
		require.NoError(t, <-served)
	})
	return &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}
}

// Get sends GET path with the header name-value pairs kv and returns the
// status and body.
func Get(t testing.TB, c *fasthttp.Client, path string, kv ...string) (int, string) {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://example.com" + path)
	for i := 0; i+1 < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	require.NoError(t, c.DoTimeout(req, resp, 10*time.Second))
	return resp.StatusCode(), string(resp.Body())
}
