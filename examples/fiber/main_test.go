package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
	"github.com/fasttimeout/fasttimeout/examples/internal/inmem"
)

func TestFiberApp(t *testing.T) {
	t.Parallel()
	// A second: the routes that must answer themselves do so in time even
	// on a loaded machine; /slow waits for it.
	c := inmem.Serve(t, newHandler(time.Second))

	t.Run("a fast route answers as Fiber wrote it", func(t *testing.T) {
		status, body := inmem.Get(t, c, "/hello")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.Equal(t, "hello from fiber", body)
	})
	t.Run("c.UserContext() carries the deadline", func(t *testing.T) {
		status, body := inmem.Get(t, c, "/deadline")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.Equal(t, "has a deadline", body)
	})
	t.Run("a slow route gets the timeout response", func(t *testing.T) {
		status, body := inmem.Get(t, c, "/slow")
		assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
		assert.JSONEq(t, fasttimeout.DefaultBody, body)
	})
	t.Run("the app serves normally after a timeout", func(t *testing.T) {
		for range 3 {
			status, body := inmem.Get(t, c, "/hello")
			assert.Equal(t, fasthttp.StatusOK, status)
			assert.Equal(t, "hello from fiber", body)
		}
	})
	t.Run("a spent caller budget is answered without running the app", func(t *testing.T) {
		status, _ := inmem.Get(t, c, "/hello", "grpc-timeout", "0S")
		assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
	})
	t.Run("Fiber's own 404 passes through", func(t *testing.T) {
		status, _ := inmem.Get(t, c, "/nowhere")
		assert.Equal(t, fasthttp.StatusNotFound, status)
	})
}

// At shutdown the handler's own answer goes out (fasttimeout answers only
// at the deadline): a slow route gives 503, so that the client may retry
// elsewhere, not Fiber's 500 for an error nor an empty 200.
func TestFiberAppAtShutdown(t *testing.T) {
	t.Parallel()
	status := inmem.ShutdownDuring(t, newHandler(time.Minute), "/slow")
	assert.Equal(t, fasthttp.StatusServiceUnavailable, status)
}
