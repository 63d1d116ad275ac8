// Server shutdown: running requests end with ErrShutdown and their
// responses go out whole; late handlers outlive the server.
package fasttimeout_test

import (
	"context"
	"errors"
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
				e := receive(t, endings, "the end of a handler's context")
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
		}, fasttimeout.Config{Timeout: actInTime, Stats: &stats}) // the handler must run: its budget not spent on arrival
		server := startStressLoopback(t, h)
		c, err := dialStress(server.addr)
		require.NoError(t, err)
		requireTimeoutResponse(t, c.get(t, "/late", "S0000000000000001"))
		c.close()

		require.NoError(t, server.shutdown())
		require.EqualValues(t, 1, stats.Snapshot().LateRunning, "the late handler outlives the server")
		close(release)
		require.ErrorIs(t, receive(t, causes, "the context's cause"), fasttimeout.ErrTimeout, "a late handler's context ended with its deadline")
		require.Eventually(t, func() bool { return stats.Snapshot().LateRunning == 0 }, stressBound, 5*time.Millisecond)
	})
}

// TestShutdown_disarm_and_extend_after_shutdown: a server shutting down
// ends the contexts of running requests, not their deadlines. A handler
// that learns of the shutdown and then disarms its deadline, to finish its
// work, answers itself in both modes: cooperative mode must not take the
// context's end for a deadline that had passed, refuse the Disarm and
// answer 504.
func TestShutdown_disarm_and_extend_after_shutdown(t *testing.T) {
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			type result struct {
				cause            error
				extended, disarm bool
				remainingOK      bool
			}
			started := make(chan struct{}, 1)
			results := make(chan result, 1)
			h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				c := fasttimeout.Context(ctx)
				deadline, _ := c.Deadline()
				started <- struct{}{}
				<-c.Done()
				var r result
				r.cause = context.Cause(c)
				r.extended = fasttimeout.Extend(ctx, time.Millisecond)
				r.disarm = fasttimeout.Disarm(ctx)
				_, r.remainingOK = fasttimeout.Remaining(ctx)
				results <- r
				// Finish past the original deadline, on purpose.
				for time.Now().Before(deadline) {
					<-time.After(time.Until(deadline))
				}
				replyWithSecret(ctx, "bye", string(ctx.Request.Header.Peek("X-Secret")))
				// 3 s: time enough for the shutdown to reach the context
				// first on a loaded machine.
			}, fasttimeout.Config{Timeout: 3 * time.Second, Mode: mode})
			server := startStressLoopback(t, h)
			c, err := dialStress(server.addr)
			require.NoError(t, err)
			defer c.close()
			answered := make(chan error, 1)
			go func() { answered <- c.do("/", "S0000000000000001") }()
			receive(t, started, "the handler's start")
			shutdown := make(chan error, 1)
			go func() { shutdown <- server.shutdown() }()

			r := receive(t, results, "the handler's look at its deadline")
			require.ErrorIs(t, r.cause, fasttimeout.ErrShutdown)
			assert.True(t, r.extended, "Extend after shutdown, before the deadline")
			assert.True(t, r.disarm, "Disarm after shutdown, before the deadline")
			assert.False(t, r.remainingOK, "no deadline once disarmed")
			require.NoError(t, receive(t, answered, "the answer"))
			requireOwnResponse(t, &c.resp, "bye", "S0000000000000001")
			require.NoError(t, receive(t, shutdown, "the shutdown"))
		})
	}
}

// TestShutdown_reaches_racing_contexts_whatever_the_Precision: racing
// requests do not depend on Config.Precision (see its doc): with only
// racing requests in flight the housekeeping goroutine rests, waking every
// 100 ms to watch for shutdown, whatever the Precision: waiting a whole
// Precision before its first look, a racing context would learn of the
// shutdown only then (here an hour later), and idle workers outlive it too.
func TestShutdown_reaches_racing_contexts_whatever_the_Precision(t *testing.T) {
	for _, precision := range []time.Duration{fasttimeout.DefaultPrecision, time.Hour} {
		t.Run(precision.String(), func(t *testing.T) {
			t.Parallel()
			resp := answerAtShutdown(t, fasttimeout.Config{Timeout: time.Hour, Precision: precision}, func(ctx *fasthttp.RequestCtx, _ error) {
				replyWithSecret(ctx, "bye", string(ctx.Request.Header.Peek("X-Secret")))
			})
			requireOwnResponse(t, resp, "bye", "S0000000000000001")
		})
	}
}

// A handler whose context ends with ErrShutdown answers for itself, in both
// modes: one that returns without writing sends an empty 200, since the
// middleware answers only timeouts; one that answers 503 itself, as the
// README advises, sends its 503.
func TestShutdown_a_handler_that_writes_nothing_sends_an_empty_200(t *testing.T) {
	for _, mode := range allModes {
		for _, tc := range []struct {
			name       string
			answer503  bool
			wantStatus int
			wantBody   string
		}{
			{"returns_without_writing", false, fasthttp.StatusOK, ""},
			{"answers_503_itself", true, fasthttp.StatusServiceUnavailable, "shutting down"},
		} {
			t.Run(tc.name+"/"+mode.String(), func(t *testing.T) {
				t.Parallel()
				resp := answerAtShutdown(t, fasttimeout.Config{Timeout: time.Minute, Mode: mode}, func(ctx *fasthttp.RequestCtx, cause error) {
					if tc.answer503 && errors.Is(cause, fasttimeout.ErrShutdown) {
						ctx.Error("shutting down", fasthttp.StatusServiceUnavailable)
					}
				})
				require.Equal(t, tc.wantStatus, resp.StatusCode())
				require.Equal(t, tc.wantBody, string(resp.Body()))
			})
		}
	}
}

// answerAtShutdown serves over TCP a handler, wrapped by New with cfg, that
// waits for its context to end and then calls answer with its cause. It
// sends the handler one request and shuts the server down once the handler
// has started; it checks that the context ended with ErrShutdown and that
// the shutdown and the request succeeded, and returns the response.
func answerAtShutdown(t *testing.T, cfg fasttimeout.Config, answer func(ctx *fasthttp.RequestCtx, cause error)) *fasthttp.Response {
	t.Helper()
	started := make(chan struct{}, 1)
	causes := make(chan error, 1)
	h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		c := fasttimeout.Context(ctx)
		started <- struct{}{}
		select {
		case <-c.Done():
		case <-time.After(stressBound):
		}
		causes <- context.Cause(c)
		answer(ctx, context.Cause(c))
	}, cfg)
	server := startStressLoopback(t, h)
	c, err := dialStress(server.addr)
	require.NoError(t, err)
	t.Cleanup(c.close) // before the server's shutdown, as a defer in the test would
	answered := make(chan error, 1)
	go func() { answered <- c.do("/", "S0000000000000001") }()
	receive(t, started, "the handler's start")
	shutdown := make(chan error, 1)
	go func() { shutdown <- server.shutdown() }()

	require.ErrorIs(t, receive(t, causes, "the context's end"), fasttimeout.ErrShutdown)
	require.NoError(t, receive(t, answered, "the answer"))
	require.NoError(t, receive(t, shutdown, "the shutdown"))
	return &c.resp
}
