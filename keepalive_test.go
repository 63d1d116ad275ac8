// A connection is reused after a timeout and after a late handler, in both
// modes: the next request on it gets its own answer.
package fasttimeout_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

func TestKeepAlive(t *testing.T) {
	for _, tc := range []struct {
		name string
		mode fasttimeout.Mode
		slow func(ctx *fasthttp.RequestCtx, answered <-chan struct{})
	}{
		{"racing_handler_ignoring_its_context", fasttimeout.Racing, func(_ *fasthttp.RequestCtx, answered <-chan struct{}) { <-answered }},
		{"racing_handler_honouring_its_context", fasttimeout.Racing, func(ctx *fasthttp.RequestCtx, answered <-chan struct{}) {
			<-fasttimeout.Context(ctx).Done()
			<-answered
		}},
		{"cooperative_handler_honouring_its_context", fasttimeout.Cooperative, func(ctx *fasthttp.RequestCtx, _ <-chan struct{}) {
			<-fasttimeout.Context(ctx).Done()
		}},
	} {
		t.Run("the_next_request_after_a_timeout_is_served_on_the_same_connection/"+tc.name, func(t *testing.T) {
			t.Parallel()
			answered := make(chan struct{}, 1)
			lateDone := make(chan struct{}, 1)
			var stats fasttimeout.Stats
			h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				secret := string(ctx.Request.Header.Peek("X-Secret"))
				if string(ctx.Path()) == "/slow" {
					tc.slow(ctx, answered)
					replyWithSecret(ctx, "late", secret) // must reach nobody
					lateDone <- struct{}{}
					return
				}
				replyWithSecret(ctx, "fast", secret)
			}, fasttimeout.Config{Timeout: actInTime, TimeoutFunc: onlyTimingOut("/slow"), Mode: tc.mode, Stats: &stats, // /slow must run
				OnTimeout: func(*fasthttp.RequestCtx, *fasthttp.Response) {
					select {
					case answered <- struct{}{}:
					default:
					}
				}})
			server := startStressLoopback(t, h)
			c, err := dialStress(server.addr)
			require.NoError(t, err)
			defer c.close()

			resp := c.get(t, "/slow", "S0000000000000001")
			requireTimeoutResponse(t, resp)
			require.False(t, resp.ConnectionClose(), "the timeout response keeps the connection")
			requireOwnResponse(t, c.get(t, "/fast", "S0000000000000002"), "fast", "S0000000000000002")
			receive(t, lateDone, "end of the late handler")
			requireOwnResponse(t, c.get(t, "/fast", "S0000000000000003"), "fast", "S0000000000000003")
			require.EqualValues(t, 1, server.ln.accepted.Load(), "one connection for all requests")
			require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond)
			got := stats.Snapshot() // InFlight 0: the late return is counted in full
			require.Zero(t, got.LateRunning)
			require.EqualValues(t, 1, got.Timeouts)
			require.EqualValues(t, 1, got.LateFinished)
		})
	}
}
