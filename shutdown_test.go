// Server shutdown: running requests end with ErrShutdown and their
// responses go out whole; late handlers outlive the server.
package fasttimeout_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

func TestShutdown(t *testing.T) {
	for _, mode := range []fasttimeout.Mode{fasttimeout.Racing, fasttimeout.Cooperative} {
		t.Run("running_contexts_end_with_ErrShutdown_and_responses_go_out_whole/"+mode.String(), func(t *testing.T) {
			t.Parallel()
			const running = 20
			type ending struct {
				err, cause, derivedCause error
			}
			started := make(chan struct{}, running)
			endings := make(chan ending, running)
			h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				secret := string(ctx.Request.Header.Peek("X-Secret"))
				c := fasttimeout.Context(ctx)
				derived, cancel := context.WithCancel(c)
				defer cancel()
				started <- struct{}{}
				select {
				case <-derived.Done():
				case <-time.After(stressBound):
				}
				endings <- ending{c.Err(), context.Cause(c), context.Cause(derived)}
				replyWithSecret(ctx, "bye", secret)
			}, fasttimeout.Config{Timeout: time.Minute, Mode: mode})
			server := startStressLoopback(t, h)

			var clients sync.WaitGroup
			for i := range running {
				clients.Go(func() {
					c, err := dialStress(server.addr)
					if !assert.NoError(t, err) {
						return
					}
					defer c.close()
					secret := fmt.Sprintf("S%016x", i)
					if assert.NoError(t, c.do("/", secret), "no response half-written") {
						assert.Equal(t, fasthttp.StatusOK, c.resp.StatusCode())
						assert.Equal(t, ownBody("bye", secret), string(c.resp.Body()))
					}
				})
			}
			for range running {
				receive(t, started, "the handler's start")
			}
			require.NoError(t, server.shutdown(), "shutdown completes")
			clients.Wait()
			for range running {
				e := <-endings
				assert.ErrorIs(t, e.err, context.Canceled)
				assert.ErrorIs(t, e.cause, fasttimeout.ErrShutdown)
				assert.ErrorIs(t, e.derivedCause, fasttimeout.ErrShutdown)
			}
		})
	}

	t.Run("completes_while_late_handlers_still_run", func(t *testing.T) {
		t.Parallel()
		release := make(chan struct{})
		causes := make(chan error, 1)
		var stats fasttimeout.Stats
		h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			<-release
			causes <- context.Cause(fasttimeout.Context(ctx))
		}, fasttimeout.Config{Timeout: 20 * time.Millisecond, Stats: &stats})
		server := startStressLoopback(t, h)
		c, err := dialStress(server.addr)
		require.NoError(t, err)
		requireTimeoutResponse(t, c.get(t, "/late", "S0000000000000001"))
		c.close()

		require.NoError(t, server.shutdown())
		require.EqualValues(t, 1, stats.Snapshot().LateRunning, "the late handler outlives the server")
		close(release)
		require.ErrorIs(t, <-causes, fasttimeout.ErrTimeout, "a late handler's context ended with its deadline")
		require.Eventually(t, func() bool { return stats.Snapshot().LateRunning == 0 }, stressBound, 5*time.Millisecond)
	})
}
