// A connection is reused after a timeout and after a late handler, in both
// modes: the next request on it gets its own answer.
package fasttimeout_test

import (
	"bufio"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

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
			}, fasttimeout.Config{Timeout: 20 * time.Millisecond, TimeoutFunc: onlyTimingOut("/slow"), Mode: tc.mode, Stats: &stats,
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

			requireTimeoutResponse(t, c.get(t, "/slow", "S0000000000000001"))
			requireOwnResponse(t, c.get(t, "/fast", "S0000000000000002"), "fast", "S0000000000000002")
			receive(t, lateDone, "end of the late handler")
			requireOwnResponse(t, c.get(t, "/fast", "S0000000000000003"), "fast", "S0000000000000003")
			require.EqualValues(t, 1, server.ln.accepted.Load(), "one connection for all requests")
			require.Eventually(t, func() bool { return stats.Snapshot().LateRunning == 0 }, stressBound, 5*time.Millisecond)
		})
	}
}

func TestTimeout_keep_alive_connection_is_reused_after_a_timeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/slow" {
			<-release
		}
		ctx.SetBodyString("fast " + string(ctx.QueryArgs().Peek("n")))
	}, fasttimeout.Config{Timeout: shortTimeout, TimeoutFunc: onlyTimingOut("/slow")})

	mem := fasthttputil.NewInmemoryListener()
	ln := &countingListener{Listener: mem}
	server := &fasthttp.Server{Handler: h}
	served := make(chan error, 1)
	go func() { served <- server.Serve(ln) }()
	conn, err := mem.Dial()
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = conn.Close()
		require.NoError(t, server.Shutdown())
		require.NoError(t, <-served)
	})

	// One raw connection, so that reuse is certain: three requests in turn.
	br := bufio.NewReader(conn)
	for i, path := range []string{"/fast?n=1", "/slow", "/fast?n=2"} {
		_, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path)
		require.NoError(t, err)
		var resp fasthttp.Response
		require.NoError(t, resp.Read(br), "request %d", i)
		switch path {
		case "/slow":
			assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
			assert.False(t, resp.ConnectionClose())
		default:
			assert.Equal(t, 200, resp.StatusCode())
			assert.Equal(t, "fast "+path[len(path)-1:], string(resp.Body()))
		}
	}
	assert.Equal(t, int64(1), ln.accepted.Load())
}
