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
	_, c := start(t, h)
	return c
}

// ShutdownDuring serves h as Serve does, sends it GET path, shuts the
// server down once the request has reached h, and returns the status the
// request got.
func ShutdownDuring(t testing.TB, h fasthttp.RequestHandler, path string) int {
	t.Helper()
	entered := make(chan struct{}, 1)
	server, c := start(t, func(ctx *fasthttp.RequestCtx) {
		entered <- struct{}{}
		h(ctx)
	})
	answered := make(chan int, 1)
	go func() {
		status, _, err := c.GetTimeout(nil, "http://example.com"+path, time.Minute)
		if err != nil {
			status = 0
		}
		answered <- status
	}()
	select {
	case <-entered:
	case status := <-answered:
		t.Fatalf("GET %s answered %d before it reached the handler", path, status)
	case <-time.After(10 * time.Second):
		t.Fatalf("GET %s did not reach the handler within 10 s", path)
	}
	require.NoError(t, server.Shutdown()) // waits for the request's answer
	select {
	case status := <-answered:
		return status
	case <-time.After(10 * time.Second):
		t.Fatalf("GET %s had no answer within 10 s of the shutdown", path)
		return 0
	}
}

// start is Serve, returning the server too (a second Shutdown, when the
// test ends, does nothing).
func start(t testing.TB, h fasthttp.RequestHandler) (*fasthttp.Server, *fasthttp.Client) {
	t.Helper()
	ln := fasthttputil.NewInmemoryListener()
	server := &fasthttp.Server{Handler: h}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	t.Cleanup(func() {
		require.NoError(t, server.Shutdown())
		require.NoError(t, <-served)
	})
	return server, &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}
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
