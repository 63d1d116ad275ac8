package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
	"github.com/fasttimeout/fasttimeout/examples/internal/inmem"
)

func TestFiberV3App(t *testing.T) {
	t.Parallel()
	// A second: the routes that must answer themselves do so in time even
	// on a loaded machine; /slow waits for it, and /reports/slow five times
	// that.
	const timeout = time.Second
	c := inmem.Serve(t, newHandler(timeout))

	tests := []struct {
		name       string
		path       string
		wantStatus int
		wantBody   string
	}{
		{"a_fast_route_answers_as_Fiber_wrote_it", "/hello", fasthttp.StatusOK, "hello from fiber v3"},
		{"c.Context()_carries_the_deadline", "/deadline", fasthttp.StatusOK, "has the request's deadline"},
		{"a_slow_route_gets_the_timeout_response", "/slow", fasthttp.StatusGatewayTimeout, fasttimeout.DefaultBody},
		{"TimeoutFunc_gives_a_route_its_own_timeout", "/reports/slow", fasthttp.StatusGatewayTimeout, fasttimeout.DefaultBody},
		{"Fiber's_own_404_passes_through", "/nowhere", fasthttp.StatusNotFound, "Not Found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			status, body := inmem.Get(t, c, tt.path)
			assert.Equal(t, tt.wantStatus, status)
			assert.Equal(t, tt.wantBody, body)
			if tt.path == "/reports/slow" {
				// Answered at its own deadline, not the app's: a deadline
				// cannot pass early, so this bound cannot be flaky.
				assert.GreaterOrEqual(t, time.Since(start), 5*timeout)
			}
		})
	}
	t.Run("the_app_serves_normally_after_timeouts", func(t *testing.T) {
		for range 3 {
			status, body := inmem.Get(t, c, "/hello")
			assert.Equal(t, fasthttp.StatusOK, status)
			assert.Equal(t, "hello from fiber v3", body)
		}
	})
}

// At shutdown the handler's own answer goes out (fasttimeout answers only
// at the deadline): a slow route gives 503, so that the client may retry
// elsewhere, not Fiber's 500 for an error nor an empty 200.
func TestFiberV3AppAtShutdown(t *testing.T) {
	t.Parallel()
	status := inmem.ShutdownDuring(t, newHandler(time.Minute), "/slow")
	assert.Equal(t, fasthttp.StatusServiceUnavailable, status)
}
