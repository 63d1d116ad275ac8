package main

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
	"github.com/fasttimeout/fasttimeout/examples/internal/inmem"
)

func serveRouter(t *testing.T, stats *fasttimeout.Stats) *fasthttp.Client {
	t.Helper()
	return inmem.Serve(t, newRouter(stats).Handler)
}

func TestRouter(t *testing.T) {
	t.Parallel()
	stats := new(fasttimeout.Stats)
	c := serveRouter(t, stats)

	t.Run("a route answers within its bound", func(t *testing.T) {
		status, body := inmem.Get(t, c, "/search")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.Equal(t, "results", body)
	})
	t.Run("a route slower than its bound gets 504", func(t *testing.T) {
		status, body := inmem.Get(t, c, "/search?slow")
		assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
		assert.JSONEq(t, fasttimeout.DefaultBody, body)
	})
	t.Run("each route has its own bound, and route parameters still work", func(t *testing.T) {
		status, body := inmem.Get(t, c, "/reports/42")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.Equal(t, "report 42, within 2s: true", body)
	})
	t.Run("the caller's deadline applies per route", func(t *testing.T) {
		status, _ := inmem.Get(t, c, "/reports/42", "grpc-timeout", "0S")
		assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
	})
	t.Run("an unbounded streaming route streams", func(t *testing.T) {
		status, body := inmem.Get(t, c, "/events")
		assert.Equal(t, fasthttp.StatusOK, status)
		assert.Equal(t, "data: 0\n\ndata: 1\n\ndata: 2\n\n", body)
	})
	t.Run("unknown routes are the router's 404", func(t *testing.T) {
		status, _ := inmem.Get(t, c, "/nowhere")
		assert.Equal(t, fasthttp.StatusNotFound, status)
	})
	t.Run("the routes share their counters, which /stats shows", func(t *testing.T) {
		c := stats.Snapshot()
		assert.Equal(t, int64(4), c.Requests) // the stream and the 404 are not bounded
		assert.Equal(t, int64(2), c.Timeouts)
		status, body := inmem.Get(t, serveRouter(t, stats), "/stats")
		assert.Equal(t, fasthttp.StatusOK, status)
		var shown fasttimeout.Counters
		require.NoError(t, json.Unmarshal([]byte(body), &shown))
		assert.Equal(t, c.Requests, shown.Requests)
		assert.Equal(t, c.Timeouts, shown.Timeouts)
	})
}

// At shutdown the handler's own answer goes out (fasttimeout answers only
// at the deadline): a slow search gives 503, so that the client may retry
// elsewhere, not an empty 200.
func TestRouterAtShutdown(t *testing.T) {
	t.Parallel()
	status := inmem.ShutdownDuring(t, newRouter(new(fasttimeout.Stats)).Handler, "/search?slow")
	assert.Equal(t, fasthttp.StatusServiceUnavailable, status)
}
