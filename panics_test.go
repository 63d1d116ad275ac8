// Panics and runtime.Goexit in a handler, before and after its deadline, in
// both modes.
package fasttimeout_test

import (
	"errors"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
	"github.com/fasttimeout/fasttimeout/internal/godebugtest"
)

// panicServer serves a racing or cooperative middleware behind an outer
// recover that hands what it caught to recovered.
func panicServer(t *testing.T, h fasthttp.RequestHandler, cfg fasttimeout.Config, recovered chan<- any) *stressLoopback {
	wrapped := fasttimeout.New(h, cfg)
	return startStressLoopback(t, func(ctx *fasthttp.RequestCtx) {
		defer func() {
			if v := recover(); v != nil {
				recovered <- v
				ctx.Response.Reset()
				ctx.SetStatusCode(fasthttp.StatusInternalServerError)
				ctx.SetBodyString("recovered")
			}
		}()
		if string(ctx.Path()) == "/fast" {
			replyWithSecret(ctx, "fast", string(ctx.Request.Header.Peek("X-Secret")))
			return
		}
		wrapped(ctx)
	})
}

func TestPanics(t *testing.T) {
	for _, mode := range allModes {
		t.Run("before_the_deadline_reaches_the_outer_recover_with_its_original_value/"+mode.String(), func(t *testing.T) {
			t.Parallel()
			thrown := &secretPanic{secret: "S00000000000000aa"}
			recovered := make(chan any, 1)
			var stats fasttimeout.Stats
			server := panicServer(t, func(ctx *fasthttp.RequestCtx) {
				if string(ctx.Path()) == "/panic" {
					panic(thrown)
				}
				replyWithSecret(ctx, "served", string(ctx.Request.Header.Peek("X-Secret")))
			}, fasttimeout.Config{Timeout: 10 * time.Second, Mode: mode, Stats: &stats}, recovered)
			c, err := dialStress(server.addr)
			require.NoError(t, err)
			defer c.close()

			resp := c.get(t, "/panic", "S0000000000000001")
			require.Equal(t, fasthttp.StatusInternalServerError, resp.StatusCode())
			require.Same(t, thrown, receive(t, recovered, "the re-raised panic").(*secretPanic))
			// Counted before it is raised again, so before the answer.
			require.EqualValues(t, 1, stats.Snapshot().Panics)
			requireOwnResponse(t, c.get(t, "/served", "S0000000000000002"), "served", "S0000000000000002")
			requireOwnResponse(t, c.get(t, "/fast", "S0000000000000003"), "fast", "S0000000000000003")
			require.EqualValues(t, 1, server.ln.accepted.Load())
		})

		// A racing handler panics once the timeout response is out; a
		// cooperative one once its context has ended, and its answer
		// waits for it.
		t.Run("after_the_deadline_goes_to_OnPanic_with_value_and_stack/"+mode.String(), func(t *testing.T) {
			t.Parallel()
			thrown := &secretPanic{secret: "S00000000000000bb"}
			answered := make(chan struct{})
			type report struct {
				value any
				stack []byte
			}
			reports := make(chan report, 1)
			recovered := make(chan any, 1)
			var stats fasttimeout.Stats
			server := panicServer(t, func(ctx *fasthttp.RequestCtx) {
				if string(ctx.Path()) != "/panic" {
					replyWithSecret(ctx, "served", string(ctx.Request.Header.Peek("X-Secret")))
					return
				}
				if mode == fasttimeout.Racing {
					<-answered
				} else {
					<-fasttimeout.Context(ctx).Done()
				}
				panicAfterTheDeadline(thrown)
			}, fasttimeout.Config{Timeout: actInTime, TimeoutFunc: onlyTimingOut("/panic"), Mode: mode, Stats: &stats, // /panic must run
				OnTimeout: func(*fasthttp.RequestCtx, *fasthttp.Response) { close(answered) },
				OnPanic:   func(_ *fasthttp.RequestCtx, v any, stack []byte) { reports <- report{v, stack} },
			}, recovered)
			c, err := dialStress(server.addr)
			require.NoError(t, err)
			defer c.close()

			requireTimeoutResponse(t, c.get(t, "/panic", "S0000000000000001"))
			r := receive(t, reports, "the late panic for OnPanic")
			require.Same(t, thrown, r.value.(*secretPanic))
			require.Contains(t, string(r.stack), "panicAfterTheDeadline", "the stack of the panic")
			requireOwnResponse(t, c.get(t, "/served", "S0000000000000002"), "served", "S0000000000000002")
			requireOwnResponse(t, c.get(t, "/fast", "S0000000000000003"), "fast", "S0000000000000003")
			require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond)
			got := stats.Snapshot() // InFlight 0: the late return is counted in full
			require.Zero(t, got.LateRunning)
			require.EqualValues(t, 1, got.LateFinished)
			require.EqualValues(t, 1, got.Panics)
			require.Empty(t, recovered, "nothing re-raised on the server goroutine")
			require.EqualValues(t, 1, server.ln.accepted.Load())
		})
	}

	t.Run("Goexit_in_a_raced_handler_does_not_hang_the_request", func(t *testing.T) {
		t.Parallel()
		recovered := make(chan any, 1)
		server := panicServer(t, func(*fasthttp.RequestCtx) { runtime.Goexit() },
			fasttimeout.Config{Timeout: 10 * time.Second}, recovered)
		c, err := dialStress(server.addr)
		require.NoError(t, err)
		defer c.close()

		require.Equal(t, fasthttp.StatusInternalServerError, c.get(t, "/goexit", "S0000000000000001").StatusCode())
		require.ErrorIs(t, receive(t, recovered, "the re-raised Goexit").(error), fasttimeout.ErrHandlerGoexit)
		requireOwnResponse(t, c.get(t, "/fast", "S0000000000000002"), "fast", "S0000000000000002")
	})

	// fasthttp never closes a connection whose server goroutine called
	// Goexit: its client would wait for an answer until its own timeout,
	// and the server would hold the descriptor.
	t.Run("Goexit_in_a_cooperative_handler_closes_the_connection", func(t *testing.T) {
		t.Parallel()
		var stats fasttimeout.Stats
		recovered := make(chan any, 1)
		server := panicServer(t, func(*fasthttp.RequestCtx) { runtime.Goexit() },
			fasttimeout.Config{Timeout: 10 * time.Second, Mode: fasttimeout.Cooperative, Stats: &stats}, recovered)
		conn, err := net.DialTimeout("tcp", server.addr, stressBound)
		require.NoError(t, err)
		defer conn.Close()
		require.NoError(t, conn.SetDeadline(time.Now().Add(stressBound)))
		_, err = conn.Write([]byte("GET /goexit HTTP/1.1\r\nHost: x\r\n\r\n"))
		require.NoError(t, err)
		n, err := conn.Read(make([]byte, 512))
		require.Zero(t, n, "no answer")
		require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the connection left open: %v", err)
		require.Error(t, err)
		require.EqualValues(t, 1, stats.Snapshot().Panics)
		require.Empty(t, recovered, "nothing raised: Goexit ends the server goroutine")
	})

	// Only the outermost New closes: under a racing one, whose worker
	// took the Goexit, the request is answered as in racing mode.
	t.Run("Goexit_in_a_nested_cooperative_handler_under_a_racing_one", func(t *testing.T) {
		t.Parallel()
		var stats fasttimeout.Stats
		recovered := make(chan any, 1)
		inner := fasttimeout.New(func(*fasthttp.RequestCtx) { runtime.Goexit() },
			fasttimeout.Config{Timeout: 10 * time.Second, Mode: fasttimeout.Cooperative, Stats: &stats})
		server := panicServer(t, inner, fasttimeout.Config{Timeout: 10 * time.Second}, recovered)
		c, err := dialStress(server.addr)
		require.NoError(t, err)
		defer c.close()

		require.Equal(t, fasthttp.StatusInternalServerError, c.get(t, "/goexit", "S0000000000000001").StatusCode())
		require.ErrorIs(t, receive(t, recovered, "the Goexit re-raised").(error), fasttimeout.ErrHandlerGoexit)
		requireOwnResponse(t, c.get(t, "/fast", "S0000000000000002"), "fast", "S0000000000000002")
		require.EqualValues(t, 1, stats.Snapshot().Panics)
	})

	t.Run("Goexit_after_the_deadline_goes_to_OnPanic", func(t *testing.T) {
		t.Parallel()
		answered := make(chan struct{})
		reports := make(chan any, 1)
		var stats fasttimeout.Stats
		server := panicServer(t, func(*fasthttp.RequestCtx) {
			<-answered
			runtime.Goexit()
		}, fasttimeout.Config{Timeout: actInTime, Stats: &stats, // the handler must run
			OnTimeout: func(*fasthttp.RequestCtx, *fasthttp.Response) { close(answered) },
			OnPanic:   func(_ *fasthttp.RequestCtx, v any, _ []byte) { reports <- v },
		}, make(chan any, 1))
		c, err := dialStress(server.addr)
		require.NoError(t, err)
		defer c.close()

		requireTimeoutResponse(t, c.get(t, "/goexit", "S0000000000000001"))
		require.ErrorIs(t, receive(t, reports, "late Goexit for OnPanic").(error), fasttimeout.ErrHandlerGoexit)
		require.Eventually(t, func() bool { return stats.Snapshot().LateRunning == 0 }, stressBound, 5*time.Millisecond)
		requireOwnResponse(t, c.get(t, "/fast", "S0000000000000002"), "fast", "S0000000000000002")
	})
}

// panicAfterTheDeadline is a named frame for the stack OnPanic must get.
//
//go:noinline
func panicAfterTheDeadline(v any) { panic(v) }

func TestTimeout_late_panic_is_logged_by_default(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	stats := new(fasttimeout.Stats)
	logs := new(logBuffer)
	h := fasttimeout.New(func(*fasthttp.RequestCtx) {
		<-release
		panic("unwatched")
	}, fasttimeout.Config{Timeout: actInTime, Stats: stats}) // the handler must run
	s := serveLogged(t, h, logs)

	assert.Equal(t, fasthttp.StatusGatewayTimeout, do(t, s, "GET", "/").StatusCode())
	close(release)
	// The late return is counted before the panic is logged: wait for the log.
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "panic in handler after its deadline: unwatched")
	}, waitTimeout, time.Millisecond)
	assert.EqualValues(t, 1, stats.Snapshot().LateFinished)
	assert.Contains(t, logs.String(), "goroutine ")
	assert.Equal(t, int64(1), stats.Snapshot().Panics)
}

// A late panic with http.ErrAbortHandler, a response aborted on purpose (as
// httputil.ReverseProxy does behind NetHTTPHandler), is not logged by
// default, as net/http's server does not log it; any other late panic is.
func TestTimeout_late_ErrAbortHandler_is_not_logged(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			stats := new(fasttimeout.Stats)
			logs := new(logBuffer)
			h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				<-fasttimeout.Context(ctx).Done()
				panic(ctx.UserValue("value"))
			}, fasttimeout.Config{Mode: mode, Timeout: 10 * time.Millisecond, Stats: stats})
			s := serveLogged(t, func(ctx *fasthttp.RequestCtx) {
				if string(ctx.Path()) == "/abort" {
					ctx.SetUserValue("value", http.ErrAbortHandler)
				} else {
					ctx.SetUserValue("value", "unwatched")
				}
				h(ctx)
			}, logs)

			for i, path := range []string{"/abort", "/other"} {
				assert.Equal(t, fasthttp.StatusGatewayTimeout, do(t, s, "GET", path).StatusCode())
				// InFlight counts the request out once its panic is reported.
				require.Eventually(t, func() bool {
					c := stats.Snapshot()
					return c.InFlight == 0 && c.Panics == int64(i+1)
				}, waitTimeout, time.Millisecond)
				if path == "/abort" {
					assert.NotContains(t, logs.String(), "panic in handler", "ErrAbortHandler logged")
				}
			}
			assert.Contains(t, logs.String(), "panic in handler after its deadline: unwatched")
		})
	}
}

// OnTimeout may log through ctx.Logger() while the late handler's panic is
// logged on its worker, by default through ctx.Logger() too: fasthttp fills
// in a RequestCtx's logger on the first call, so the two must not both be
// first (go test -race flagged them).
func TestTimeout_late_panic_is_logged_while_OnTimeout_logs(t *testing.T) {
	t.Parallel()
	answering := make(chan struct{})
	logs := new(logBuffer)
	h := fasttimeout.New(func(*fasthttp.RequestCtx) {
		<-answering
		panic("unwatched")
	}, fasttimeout.Config{Timeout: actInTime, // the handler must run
		OnTimeout: func(ctx *fasthttp.RequestCtx, _ *fasthttp.Response) {
			close(answering)
			ctx.Logger().Printf("timed out")
		},
	})
	s := serveLogged(t, h, logs)

	assert.Equal(t, fasthttp.StatusGatewayTimeout, do(t, s, "GET", "/").StatusCode())
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "panic in handler after its deadline: unwatched")
	}, waitTimeout, time.Millisecond)
	assert.Contains(t, logs.String(), "timed out")
}

// A panicking OnTimeout reaches a recover around the middleware, as any
// panic on the server goroutine does. The late handler still holds its
// RequestCtx, so the ctx must be marked timed out all the same (only then
// does fasthttp give the connection a new one), and the worker must go
// back to the pool once the late handler returns.
func TestTimeout_OnTimeout_panic_leaves_the_late_handler_its_ctx(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	lateDone := make(chan struct{})
	marked := make(chan bool, 1)
	var stats fasttimeout.Stats
	wrapped := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		<-release
		replyWithSecret(ctx, "late", "S0000000000000001")
		close(lateDone)
	}, fasttimeout.Config{
		Timeout: actInTime, Stats: &stats, // the handler must run
		OnTimeout: func(*fasthttp.RequestCtx, *fasthttp.Response) { panic("OnTimeout bug") },
	})
	server := startStressLoopback(t, func(ctx *fasthttp.RequestCtx) {
		defer func() {
			if v := recover(); v != nil {
				timedOut := ctx.LastTimeoutErrorResponse() != nil
				marked <- timedOut
				if !timedOut { // a well-behaved recover leaves a timed-out ctx alone
					ctx.Response.Reset()
					ctx.SetStatusCode(fasthttp.StatusInternalServerError)
				}
			}
		}()
		wrapped(ctx)
	})
	c, err := dialStress(server.addr)
	require.NoError(t, err)
	defer c.close()

	c.get(t, "/slow", "S0000000000000001")
	timedOut := receive(t, marked, "the recovered OnTimeout panic")
	close(release)
	receive(t, lateDone, "the late handler's return")
	require.True(t, timedOut, "the late handler's RequestCtx was left for fasthttp to reuse")
	require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, 10*time.Second, time.Millisecond,
		"the worker of the late handler never went back to the pool")
}

// A panicking OnPanic reaches a recover around a cooperative middleware, as
// a panicking OnTimeout does; the late return it reports is counted all the
// same: counted only after OnPanic, LateRunning would stay up for good
// and, with MaxLateHandlers, every later request be shed.
func TestPanics_cooperative_OnPanic_panic_still_counts_the_late_return(t *testing.T) {
	t.Parallel()
	recovered := make(chan any, 1)
	var stats fasttimeout.Stats
	server := panicServer(t, func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/panic" {
			<-fasttimeout.Context(ctx).Done()
			panic("after the deadline")
		}
		replyWithSecret(ctx, "served", string(ctx.Request.Header.Peek("X-Secret")))
	}, fasttimeout.Config{Timeout: actInTime, TimeoutFunc: onlyTimingOut("/panic"), Mode: fasttimeout.Cooperative, // /panic must run
		Stats: &stats, MaxLateHandlers: 1, OnPanic: func(*fasthttp.RequestCtx, any, []byte) { panic("OnPanic bug") }}, recovered)
	c, err := dialStress(server.addr)
	require.NoError(t, err)
	defer c.close()

	require.Equal(t, fasthttp.StatusInternalServerError, c.get(t, "/panic", "S0000000000000001").StatusCode())
	require.Equal(t, "OnPanic bug", receive(t, recovered, "the OnPanic panic"))
	got := stats.Snapshot() // all counted on the server goroutine before the answer
	assert.Zero(t, got.InFlight)
	assert.Zero(t, got.LateRunning, "the late handler has returned")
	assert.EqualValues(t, 1, got.LateFinished)
	assert.EqualValues(t, 1, got.Panics)
	assert.EqualValues(t, 1, got.Timeouts)
	assert.EqualValues(t, 1, stats.AnswerLateness().Count, "the timeout's lateness")
	requireOwnResponse(t, c.get(t, "/served", "S0000000000000002"), "served", "S0000000000000002")
	assert.Zero(t, stats.Snapshot().Shed)
}

// OnLateReturn and OnPanic run on the worker of a racing handler. One that
// calls runtime.Goexit (t.FailNow in a test's callback, say) ends that
// goroutine: the request must still be counted out and the worker
// forgotten, or InFlight stays up for good and the middleware's
// housekeeping goroutine, which waits for its workers, never exits.
func TestPanics_Goexit_in_a_late_callback_on_a_worker(t *testing.T) {
	for _, callback := range []string{"OnLateReturn", "OnPanic"} {
		t.Run(callback, func(t *testing.T) {
			t.Parallel()
			answered := make(chan struct{})
			called := make(chan struct{})
			var stats fasttimeout.Stats
			cfg := fasttimeout.Config{Timeout: actInTime, TimeoutFunc: onlyTimingOut("/late"), Stats: &stats, // /late must run
				OnTimeout: func(*fasthttp.RequestCtx, *fasthttp.Response) { close(answered) },
			}
			goexit := func() {
				close(called)
				runtime.Goexit()
			}
			if callback == "OnLateReturn" {
				cfg.OnLateReturn = func(*fasthttp.RequestCtx, time.Duration) { goexit() }
			} else {
				cfg.OnPanic = func(*fasthttp.RequestCtx, any, []byte) { goexit() }
			}
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				if string(ctx.Path()) != "/late" {
					ctx.SetBodyString("served")
					return
				}
				<-answered
				if callback == "OnPanic" {
					panic("late")
				}
			}, cfg))

			require.Equal(t, fasttimeout.DefaultStatusCode, do(t, s, "GET", "/late").StatusCode())
			receive(t, called, callback)
			require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond,
				"the late request was never counted out")
			got := stats.Snapshot()
			assert.Zero(t, got.LateRunning)
			assert.EqualValues(t, 1, got.LateFinished)
			for range 3 { // the pool still hands out working workers
				resp := do(t, s, "GET", "/served")
				require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
				require.Equal(t, "served", string(resp.Body()))
			}
			require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond)
		})
	}
}

// Skip and TimeoutFunc run before the request has any outcome in Stats. One
// that panics is counted as a panic, and its panic goes up the server
// goroutine as a handler's in time does, so that Stats do not show the
// failure as a success (counted in Requests and nowhere else).
func TestPanics_in_Skip_or_TimeoutFunc_count_as_panics(t *testing.T) {
	for _, mode := range allModes {
		for _, callback := range []string{"Skip", "TimeoutFunc"} {
			t.Run(callback+"/"+mode.String(), func(t *testing.T) {
				t.Parallel()
				var stats fasttimeout.Stats
				cfg := fasttimeout.Config{Timeout: 10 * time.Second, Mode: mode, Stats: &stats}
				bug := func(ctx *fasthttp.RequestCtx) {
					if string(ctx.Path()) == "/bug" {
						panic(callback + " bug")
					}
				}
				if callback == "Skip" {
					cfg.Skip = func(ctx *fasthttp.RequestCtx) bool { bug(ctx); return false }
				} else {
					cfg.TimeoutFunc = func(ctx *fasthttp.RequestCtx) time.Duration { bug(ctx); return 0 }
				}
				recovered := make(chan any, 1)
				server := panicServer(t, func(ctx *fasthttp.RequestCtx) {
					replyWithSecret(ctx, "served", string(ctx.Request.Header.Peek("X-Secret")))
				}, cfg, recovered)
				c, err := dialStress(server.addr)
				require.NoError(t, err)
				defer c.close()

				require.Equal(t, fasthttp.StatusInternalServerError, c.get(t, "/bug", "S0000000000000001").StatusCode())
				require.Equal(t, callback+" bug", receive(t, recovered, "the panic"))
				got := stats.Snapshot()
				assert.EqualValues(t, 1, got.Requests)
				assert.EqualValues(t, 1, got.Panics, "the request's only outcome")
				assert.Zero(t, got.InFlight)
				requireOwnResponse(t, c.get(t, "/served", "S0000000000000002"), "served", "S0000000000000002")
				assert.EqualValues(t, 1, stats.Snapshot().Panics)
			})
		}
	}
}

// A Config callback that calls runtime.Goexit (t.FailNow in a test's
// callback, say) on the server goroutine ends it, after which fasthttp
// neither answers the request nor closes its connection: its client would
// wait for an answer until its own timeout (one that had hung up, for
// good), and the server hold the descriptor. The connection is closed, as
// after a cooperative handler's Goexit, and the request is counted out.
func TestPanics_Goexit_in_a_callback_on_the_server_goroutine_closes_the_connection(t *testing.T) {
	type goexitCase struct {
		callback string
		mode     fasttimeout.Mode
		request  string // as the client writes it
		hangUp   bool   // the client half-closes once the handler has started
		panics   int64  // Stats.Panics: Skip and TimeoutFunc have no other outcome
	}
	spent := "GET /late HTTP/1.1\r\nHost: goexit.test\r\nGrpc-Timeout: 0m\r\n\r\n"
	var cases []goexitCase
	for _, mode := range allModes {
		cases = append(cases,
			goexitCase{callback: "Skip", mode: mode, request: rawRequest("/late"), panics: 1},
			goexitCase{callback: "TimeoutFunc", mode: mode, request: rawRequest("/late"), panics: 1},
			goexitCase{callback: "OnTimeout", mode: mode, request: rawRequest("/late")},
			goexitCase{callback: "OnTimeout-spent", mode: mode, request: spent},
			goexitCase{callback: "OnHangup", mode: mode, request: rawRequest("/late"), hangUp: true},
		)
	}
	// In racing mode they run on the worker (TestPanics_Goexit_in_a_late_callback_on_a_worker).
	cases = append(cases,
		goexitCase{callback: "OnLateReturn", mode: fasttimeout.Cooperative, request: rawRequest("/late")},
		goexitCase{callback: "OnPanic", mode: fasttimeout.Cooperative, request: rawRequest("/late"), panics: 1}, // the handler's
	)
	for _, tc := range cases {
		t.Run(tc.callback+"/"+tc.mode.String(), func(t *testing.T) {
			if tc.hangUp {
				requireHangups(t)
			}
			t.Parallel()
			called := make(chan struct{})
			goexit := func() {
				close(called)
				runtime.Goexit()
			}
			started := make(chan struct{}, 1)
			var stats fasttimeout.Stats
			cfg := fasttimeout.Config{Mode: tc.mode, Stats: &stats, HonorDeadlineHeaders: true}
			switch tc.callback {
			case "Skip":
				cfg.Skip = func(*fasthttp.RequestCtx) bool { goexit(); return false }
			case "TimeoutFunc":
				cfg.TimeoutFunc = func(*fasthttp.RequestCtx) time.Duration { goexit(); return 0 }
			case "OnTimeout", "OnTimeout-spent":
				cfg.Timeout = 10 * time.Millisecond // the handler waits for its context
				cfg.OnTimeout = func(*fasthttp.RequestCtx, *fasthttp.Response) { goexit() }
			case "OnHangup":
				cfg.Timeout = time.Minute
				cfg.OnHangup = func(*fasthttp.RequestCtx, time.Duration) { goexit() }
			case "OnLateReturn":
				cfg.Timeout = 10 * time.Millisecond
				cfg.OnLateReturn = func(*fasthttp.RequestCtx, time.Duration) { goexit() }
			case "OnPanic":
				cfg.Timeout = 10 * time.Millisecond
				cfg.OnPanic = func(*fasthttp.RequestCtx, any, []byte) { goexit() }
			}
			server := startStressLoopback(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				started <- struct{}{}
				<-fasttimeout.Context(ctx).Done()
				if tc.callback == "OnPanic" {
					panic("late")
				}
			}, cfg))
			conn := sendRaw(t, server.addr, tc.request)
			if tc.hangUp {
				receive(t, started, "the handler's start")
				require.NoError(t, conn.CloseWrite())
			}
			receive(t, called, tc.callback)

			require.NoError(t, conn.SetReadDeadline(time.Now().Add(stressBound)))
			n, err := conn.Read(make([]byte, 512))
			require.Zero(t, n, "no answer")
			require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the connection left open: %v", err)
			require.Error(t, err)
			require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond,
				"the request was never counted out")
			assert.Equal(t, tc.panics, stats.Snapshot().Panics)
		})
	}
}

// TestPanics_panic_nil_under_panicnil runs itself again in a child process
// with GODEBUG=panicnil=1, where a handler's panic(nil) recovers as nil,
// as a runtime.Goexit does. The raced handler's worker must not take it for
// a Goexit and forget itself while its goroutine lives on, waiting for work
// that never comes: one goroutine leaked per such panic. The server
// goroutine re-raises it as a Goexit, the only value it can tell apart. The
// child's TestMain fails it if a goroutine outlives its test.
func TestPanics_panic_nil_under_panicnil(t *testing.T) {
	t.Parallel()
	if !godebugtest.Child(t, "panicnil=1") {
		return
	}
	h := fasttimeout.New(func(*fasthttp.RequestCtx) { panic(nil) }, fasttimeout.Config{Timeout: 10 * time.Second})
	var req fasthttp.Request
	req.SetRequestURI("http://panicnil/")
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, nil, testLogger{t})
	recovered := func() (v any) {
		defer func() { v = recover() }()
		h(&ctx)
		return nil
	}()
	require.ErrorIs(t, recovered.(error), fasttimeout.ErrHandlerGoexit)
}

// TestPanics_OnTimeout_panic_in_racing_mode_still_answers_with_resp: a
// panic in OnTimeout goes up the server goroutine with its value, as a
// handler's would, and in racing mode the request is answered all the
// same with resp, as OnTimeout left it (see Config.OnTimeout).
func TestPanics_OnTimeout_panic_in_racing_mode_still_answers_with_resp(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	recovered := make(chan any, 1)
	wrapped := fasttimeout.New(func(*fasthttp.RequestCtx) { <-release }, fasttimeout.Config{
		Timeout: actInTime, // the handler must run: a racing timeout, not a spent budget
		OnTimeout: func(_ *fasthttp.RequestCtx, resp *fasthttp.Response) {
			resp.Header.Set("X-Request-Id", "r-1")
			panic("OnTimeout bug")
		},
	})
	s := serve(t, func(ctx *fasthttp.RequestCtx) {
		defer func() { recovered <- recover() }() // and leaves ctx alone
		wrapped(ctx)
	})
	t.Cleanup(func() { close(release) }) // before the server's shutdown

	resp := do(t, s, "GET", "/")
	assert.Equal(t, "OnTimeout bug", receive(t, recovered, "the recovered panic"))
	assert.Equal(t, fasttimeout.DefaultStatusCode, resp.StatusCode())
	assert.Equal(t, fasttimeout.DefaultBody, string(resp.Body()))
	assert.Equal(t, "r-1", string(resp.Header.Peek("X-Request-Id")), "what OnTimeout set before it panicked")
}
