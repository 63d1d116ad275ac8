package main

import (
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/fasttimeout/fasttimeout"
)

func get(t *testing.T, c *fasthttp.Client, path string, kv ...string) (int, string) {
	t.Helper()
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI("http://example.com" + path)
	for i := 0; i < len(kv); i += 2 {
		req.Header.Set(kv[i], kv[i+1])
	}
	require.NoError(t, c.DoTimeout(req, resp, 10*time.Second))
	return resp.StatusCode(), string(resp.Body())
}

func TestFiberApp(t *testing.T) {
	t.Parallel()
	ln := fasthttputil.NewInmemoryListener()
	server := &fasthttp.Server{Handler: newHandler(50 * time.Millisecond)}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	t.Cleanup(func() {
		require.NoError(t, server.Shutdown())
		require.NoError(t, <-served)
	})
	c := &fasthttp.Client{Dial: func(string) (net.Conn, error) { return ln.Dial() }}

	t.Run("a fast route answers as Fiber wrote it", func(t *testing.T) {
		status, body := get(t, c, "/hello")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.Equal(t, "hello from fiber", body)
	})
	t.Run("c.UserContext() carries the deadline", func(t *testing.T) {
		status, body := get(t, c, "/deadline")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.Equal(t, "has a deadline", body)
	})
	t.Run("a slow route gets the timeout response", func(t *testing.T) {
		status, body := get(t, c, "/slow")
		assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
		assert.JSONEq(t, fasttimeout.DefaultBody, body)
	})
	t.Run("the app serves normally after a timeout", func(t *testing.T) {
		for range 3 {
			status, body := get(t, c, "/hello")
			assert.Equal(t, fasthttp.StatusOK, status)
			assert.Equal(t, "hello from fiber", body)
		}
	})
	t.Run("a spent caller budget is answered without running the app", func(t *testing.T) {
		status, _ := get(t, c, "/hello", "grpc-timeout", "0S")
		assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
	})
	t.Run("Fiber's own 404 passes through", func(t *testing.T) {
		status, _ := get(t, c, "/nowhere")
		assert.Equal(t, fasthttp.StatusNotFound, status)
	})
}
