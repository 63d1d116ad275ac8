package fasttimeout_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

// fullResponse is a handler that sets everything a response can carry.
func fullResponse(ctx *fasthttp.RequestCtx) {
	ctx.SetStatusCode(fasthttp.StatusCreated)
	ctx.Response.Header.Set("X-Handler", "yes")
	var cookie fasthttp.Cookie
	cookie.SetKey("session")
	cookie.SetValue("abc")
	ctx.Response.Header.SetCookie(&cookie)
	ctx.SetContentType("text/plain; charset=utf-8")
	ctx.SetBodyString("hello " + string(ctx.Path()))
}

func TestTimeout_fast_handler_is_unchanged(t *testing.T) {
	t.Parallel()
	bare := serve(t, fullResponse)
	want := do(t, bare, "GET", "/x")
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			s := serve(t, fasttimeout.New(fullResponse, fasttimeout.Config{Mode: mode}))
			got := do(t, s, "GET", "/x")
			assert.Equal(t, want.StatusCode(), got.StatusCode())
			assert.Equal(t, string(want.Body()), string(got.Body()))
			assert.Equal(t, "yes", string(got.Header.Peek("X-Handler")))
			assert.Equal(t, string(want.Header.ContentType()), string(got.Header.ContentType()))
			var cookie fasthttp.Cookie
			cookie.SetKey("session")
			require.True(t, got.Header.Cookie(&cookie))
			assert.Equal(t, "abc", string(cookie.Value()))
		})
	}
}

// A unit test of a user's handler often calls it on a bare RequestCtx, one
// that no server nor Init has set up. New must serve it as it serves a
// server's, in time and timed out, in both modes.
func TestTimeout_a_bare_RequestCtx_is_served(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				if string(ctx.Path()) == "/slow" {
					<-fasttimeout.Context(ctx).Done() // cooperative mode answers once it returns
					if mode == fasttimeout.Racing {
						<-release
					}
				}
				ctx.SetBodyString("own")
			}, fasttimeout.Config{Mode: mode, Timeout: 10 * time.Millisecond})

			var ctx fasthttp.RequestCtx
			h(&ctx)
			assert.Equal(t, fasthttp.StatusOK, ctx.Response.StatusCode())
			assert.Equal(t, "own", string(ctx.Response.Body()))

			var slow fasthttp.RequestCtx
			slow.Request.SetRequestURI("/slow")
			h(&slow)
			resp := slow.LastTimeoutErrorResponse()
			if mode == fasttimeout.Cooperative {
				resp = &slow.Response
			}
			require.NotNil(t, resp, "a timeout response")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
			assert.Equal(t, fasttimeout.DefaultBody, string(resp.Body()))
		})
	}
}

func TestTimeout_fast_handler_streams_its_body(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			h := func(ctx *fasthttp.RequestCtx) {
				ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
					for i := range 100 {
						fmt.Fprintf(w, "line %d\n", i)
						require.NoError(t, w.Flush())
					}
				})
			}
			s := serve(t, fasttimeout.New(h, fasttimeout.Config{Mode: mode}))
			got := do(t, s, "GET", "/")
			assert.Equal(t, 200, got.StatusCode())
			assert.Equal(t, 100, strings.Count(string(got.Body()), "\n"))
			assert.True(t, strings.HasPrefix(string(got.Body()), "line 0\nline 1\n"))
		})
	}
}

// A body stream writer and a hijack handler run after the handler has
// returned in time: unbounded, they write past the request's deadline and
// the client gets what they wrote, not the timeout response; and the
// request's context has ended by then, with the handler's return, not with
// ErrTimeout.
func TestTimeout_stream_writer_and_hijack_handler_run_unbounded_with_their_context_ended(t *testing.T) {
	t.Parallel()
	const late = "written past the deadline"
	type seen struct {
		err, cause error
		past       bool
	}
	// pastTheDeadline waits, in a stream writer or hijack handler, for the
	// request's context to end and its deadline to pass, and says what it saw.
	pastTheDeadline := func(c context.Context, deadline time.Time) seen {
		select {
		case <-c.Done():
		case <-time.After(stressBound):
		}
		v := seen{err: c.Err(), cause: context.Cause(c)}
		for time.Now().Before(deadline) {
			<-time.After(time.Until(deadline))
		}
		v.past = true
		return v
	}
	for _, mode := range allModes {
		for _, kind := range []string{"stream_writer", "hijack_handler"} {
			t.Run(kind+"/"+mode.String(), func(t *testing.T) {
				t.Parallel()
				seenc := make(chan seen, 1)
				stats := new(fasttimeout.Stats)
				h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					c := fasttimeout.Context(ctx)
					deadline, ok := c.Deadline()
					if !assert.True(t, ok, "the request has a deadline") {
						return
					}
					if kind == "stream_writer" {
						ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
							seenc <- pastTheDeadline(c, deadline)
							_, _ = w.WriteString(late)
						})
						return
					}
					ctx.HijackSetNoResponse(true)
					ctx.Hijack(func(conn net.Conn) {
						seenc <- pastTheDeadline(c, deadline)
						_, _ = fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(late), late)
					})
				}, fasttimeout.Config{Timeout: actInTime, Mode: mode, Stats: stats}) // the handler must return in time
				server := startStressLoopback(t, h)
				c, err := dialStress(server.addr)
				require.NoError(t, err)
				defer c.close()

				resp := c.get(t, "/", "S0000000000000001")
				v := receive(t, seenc, "what the "+kind+" saw")
				require.Equal(t, fasthttp.StatusOK, resp.StatusCode())
				require.Equal(t, late, string(resp.Body()))
				require.True(t, v.past)
				require.ErrorIs(t, v.err, context.Canceled, "the context ended with the handler's return")
				require.NotErrorIs(t, v.cause, fasttimeout.ErrTimeout)
				require.Zero(t, stats.Snapshot().Timeouts)
			})
		}
	}
}

func TestTimeout_racing_answers_at_the_deadline_while_the_handler_still_runs(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	returned := make(chan struct{})
	h := func(ctx *fasthttp.RequestCtx) {
		defer close(returned)
		<-release // ignores its context
		ctx.SetBodyString("late body")
		ctx.Response.Header.Set("X-Late", "1")
	}
	stats := new(fasttimeout.Stats)
	// actInTime: the handler must run, its budget not spent on arrival.
	s := serve(t, fasttimeout.New(h, fasttimeout.Config{Timeout: actInTime, Stats: stats}))

	start := time.Now()
	resp := do(t, s, "GET", "/")
	elapsed := time.Since(start)

	select {
	case <-returned:
		t.Fatal("the handler returned before the timeout response was sent")
	default:
	}
	assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
	assert.Equal(t, fasttimeout.DefaultBody, string(resp.Body()))
	assert.Equal(t, "application/json", string(resp.Header.ContentType()))
	assert.Empty(t, resp.Header.Peek("X-Late"))
	assert.GreaterOrEqual(t, elapsed, actInTime, "answered before the deadline")
	c := stats.Snapshot()
	assert.Equal(t, int64(1), c.Timeouts)
	assert.Equal(t, int64(1), c.LateRunning)

	close(release)
	// A late return leaves LateRunning before it is counted in
	// LateFinished (countLateReturn); it leaves InFlight last.
	require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, waitTimeout, time.Millisecond)
	c = stats.Snapshot()
	assert.Zero(t, c.LateRunning)
	assert.Equal(t, int64(1), c.LateFinished)
}

// fasthttp.CompressHandler around the middleware compresses what the
// handler returned by New leaves in ctx.Response. After a racing timeout that
// is the late handler's response, still being written: fasthttp 1.79 leaves
// a timed-out RequestCtx alone there, and the race detector catches a
// fasthttp that compresses it, racing the late handler's writes.
func TestTimeout_under_CompressHandler(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			var stop atomic.Bool
			returned := make(chan struct{})
			body := strings.Repeat("a late body that compresses well ", 64)
			h := func(ctx *fasthttp.RequestCtx) {
				defer close(returned)
				ctx.SetContentType("text/plain")
				done := fasttimeout.Context(ctx).Done()
				for !stop.Load() { // ignores its context, writing until told to stop
					ctx.SetBodyString(body)
					if mode == fasttimeout.Cooperative {
						<-done // only a returning handler can be timed out
						break
					}
					runtime.Gosched()
				}
			}
			stats := new(fasttimeout.Stats)
			s := serve(t, fasthttp.CompressHandler(fasttimeout.New(h, fasttimeout.Config{Mode: mode, Timeout: shortTimeout, Stats: stats})))
			req := fasthttp.AcquireRequest()
			defer fasthttp.ReleaseRequest(req)
			req.SetRequestURI("http://test/")
			req.Header.Set(fasthttp.HeaderAcceptEncoding, "gzip")
			var resp fasthttp.Response
			// On a loaded machine the middleware may run after the
			// request's budget is spent, and answer it at once without
			// running the handler (Stats.SpentBudgets): such a request
			// races with nothing, and is sent again.
			const maxTries = 20
			for try := 1; ; try++ {
				require.NoError(t, s.client.DoTimeout(req, &resp, waitTimeout))
				if stats.Snapshot().SpentBudgets < int64(try) {
					break
				}
				require.Less(t, try, maxTries, "the budget of every request was spent before its handler could run")
			}
			stop.Store(true)
			receive(t, returned, "return of the handler")

			got, err := resp.BodyUncompressed()
			require.NoError(t, err)
			assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
			assert.Equal(t, fasttimeout.DefaultBody, string(got))
		})
	}
}

// A cooperative handler that ignores its context and writes its response
// after its deadline gets the timeout response instead. (One that honours
// its context: TestKeepAlive.)
func TestTimeout_cooperative_replaces_a_late_response(t *testing.T) {
	t.Parallel()
	stats := new(fasttimeout.Stats)
	s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		time.Sleep(2 * shortTimeout) // work that ignores the context; the test needs it to end late
		ctx.SetBodyString("too late")
	}, fasttimeout.Config{Mode: fasttimeout.Cooperative, Timeout: shortTimeout, Stats: stats}))
	resp := do(t, s, "GET", "/")
	assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
	assert.Equal(t, fasttimeout.DefaultBody, string(resp.Body()))
	assert.Equal(t, int64(1), stats.Snapshot().Timeouts)
}

// In cooperative mode a request is timed out at its deadline only if its
// handler asked for its context: /asks, whose deadline comes a second after
// /never's, is timed out (its context cancelled with ErrTimeout, counted
// late) while both still run, and /never, which never called Context or Do,
// is not; it is found late when it returns. Both get the timeout response.
func TestTimeout_cooperative_times_out_at_the_deadline_only_a_handler_that_asked_for_its_context(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	defer free() // before the server's shutdown, which waits for the handlers, even on a failure
	started := make(chan string, 2)
	causes := make(chan error, 1)
	stats := new(fasttimeout.Stats)
	h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		if string(ctx.Path()) == "/asks" {
			c := fasttimeout.Context(ctx)
			started <- "/asks"
			<-c.Done()
			causes <- context.Cause(c)
		} else {
			started <- "/never"
		}
		<-release // ignores its context, or stops looking at it
		ctx.SetBodyString("too late")
	}, fasttimeout.Config{Mode: fasttimeout.Cooperative, Stats: stats,
		// Both must run: their budgets not spent on arrival. /asks, sent
		// after /never has started, has the later deadline.
		TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
			if string(ctx.Path()) == "/asks" {
				return 2 * actInTime
			}
			return actInTime
		}})
	s := serve(t, h)
	statuses := make(chan int, 2)
	go func() { statuses <- s.status(t, "/never") }()
	require.Equal(t, "/never", receive(t, started, "the start of /never"))
	go func() { statuses <- s.status(t, "/asks") }()
	require.Equal(t, "/asks", receive(t, started, "the start of /asks"))

	// /asks timed out at its deadline, past /never's.
	require.ErrorIs(t, receive(t, causes, "the end of the context of /asks"), fasttimeout.ErrTimeout)
	require.Eventually(t, func() bool { return stats.Snapshot().LateRunning >= 1 }, stressBound, time.Millisecond)
	got := stats.Snapshot()
	require.EqualValues(t, 1, got.Timeouts, "only /asks timed out at its deadline")
	require.EqualValues(t, 1, got.LateRunning, "only /asks is late while both run")
	require.Len(t, statuses, 0, "no answer before the handlers return")

	free()
	require.Equal(t, fasthttp.StatusGatewayTimeout, receive(t, statuses, "an answer"))
	require.Equal(t, fasthttp.StatusGatewayTimeout, receive(t, statuses, "the other answer"))
	require.Eventually(t, func() bool { return stats.Snapshot().InFlight == 0 }, stressBound, time.Millisecond)
	got = stats.Snapshot()
	require.EqualValues(t, 2, got.Timeouts, "/never found late when it returned")
	require.EqualValues(t, 2, got.LateFinished)
	require.Zero(t, got.LateRunning)
}

func TestTimeout_configured_response(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			release := make(chan struct{})
			t.Cleanup(func() { close(release) })
			h := func(ctx *fasthttp.RequestCtx) {
				select {
				case <-release:
				case <-fasttimeout.Context(ctx).Done():
				}
			}
			s := serve(t, fasttimeout.New(h, fasttimeout.Config{
				Mode:        mode,
				Timeout:     shortTimeout,
				StatusCode:  fasthttp.StatusServiceUnavailable,
				Body:        []byte("busy"),
				ContentType: "text/plain",
				OnTimeout: func(ctx *fasthttp.RequestCtx, resp *fasthttp.Response) {
					resp.Header.Set("X-Path", string(ctx.Path()))
				},
			}))
			resp := do(t, s, "GET", "/where")
			assert.Equal(t, fasthttp.StatusServiceUnavailable, resp.StatusCode())
			assert.Equal(t, "busy", string(resp.Body()))
			assert.Equal(t, "text/plain", string(resp.Header.ContentType()))
			assert.Equal(t, "/where", string(resp.Header.Peek("X-Path")))
		})
	}
}

func TestTimeout_head_request_gets_no_body(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	s := serve(t, fasttimeout.New(func(*fasthttp.RequestCtx) { <-release }, fasttimeout.Config{Timeout: shortTimeout}))
	resp := do(t, s, "HEAD", "/")
	assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
	assert.Empty(t, resp.Body())
}

// logBuffer is a fasthttp.Logger that keeps what it is given.
type logBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (l *logBuffer) Printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func TestTimeout_OnLateReturn_says_how_late(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	lateBy := make(chan time.Duration, 1)
	h := fasttimeout.New(func(*fasthttp.RequestCtx) { <-release }, fasttimeout.Config{
		Timeout:      actInTime, // the handler must run: its budget not spent on arrival
		OnLateReturn: func(_ *fasthttp.RequestCtx, late time.Duration) { lateBy <- late },
	})
	s := serve(t, h)
	assert.Equal(t, fasthttp.StatusGatewayTimeout, do(t, s, "GET", "/").StatusCode())
	answered := time.Now()
	time.Sleep(10 * time.Millisecond) // not a synchronisation: makes the lateness worth measuring
	released := time.Now()
	close(release)
	select {
	case late := <-lateBy:
		// The deadline passed before the answer; the handler returned after
		// its release.
		assert.GreaterOrEqual(t, late, released.Sub(answered))
	case <-time.After(waitTimeout):
		t.Fatal("OnLateReturn was not called")
	}
}

func TestNew_copies_the_configured_body(t *testing.T) {
	t.Parallel()
	body := []byte("first")
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	h := fasttimeout.New(func(*fasthttp.RequestCtx) { <-release }, fasttimeout.Config{Timeout: shortTimeout, Body: body})
	copy(body, "xxxxx")
	s := serve(t, h)
	assert.Equal(t, "first", string(do(t, s, "GET", "/").Body()))
}

// A handler that honours its context returns as soon as its context is
// cancelled at the deadline, which happens before the server goroutine is
// signalled. The late handler may then hand its worker back to the pool,
// and another request take it: that request's server goroutine must not
// receive the stale timeout signal, or it treats its own call as finished
// while the worker runs it (a data race on call.ctx, a timed-out request
// answered with the late handler's response, a crash).
func TestTimeout_stale_signal_never_reaches_a_recycled_worker(t *testing.T) {
	var wrong atomic.Int64
	h := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		<-fasttimeout.Context(ctx).Done()
		ctx.SetBodyString("late")
	}, fasttimeout.Config{Timeout: 2 * time.Millisecond})
	server := startStressLoopback(t, h)
	var wg sync.WaitGroup
	for range 320 { // more than the pool's 256 per-connection slots: IDs share slots
		wg.Go(func() {
			c, err := dialStress(server.addr)
			if !assert.NoError(t, err) { // not require: not the test's goroutine
				return
			}
			defer c.close()
			for range 50 {
				if err := c.do("/", "S0000000000000000"); err != nil {
					wrong.Add(1)
					return
				}
				if c.resp.StatusCode() != fasttimeout.DefaultStatusCode {
					wrong.Add(1)
				}
			}
		})
	}
	wg.Wait()
	assert.Zero(t, wrong.Load(), "requests not answered with the timeout response")
}

// Racing mode hands the request to a worker goroutine; cooperative mode
// runs the handler inline, on the server goroutine that called the
// middleware.
func TestTimeout_where_the_handler_runs(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			type seen struct{ server, handler string }
			seenc := make(chan seen, 1)
			var handler string
			h := fasttimeout.New(func(*fasthttp.RequestCtx) { handler = goroutineID() },
				fasttimeout.Config{Timeout: waitTimeout, Mode: mode}) // answered by the handler
			s := serve(t, func(ctx *fasthttp.RequestCtx) {
				server := goroutineID()
				h(ctx)
				seenc <- seen{server, handler} // the handler has returned: its write is seen
			})
			assert.Equal(t, fasthttp.StatusOK, do(t, s, "GET", "/").StatusCode())
			got := receive(t, seenc, "the goroutines of the server and the handler")
			require.NotEmpty(t, got.server)
			require.NotEmpty(t, got.handler)
			if mode == fasttimeout.Cooperative {
				require.Equal(t, got.server, got.handler, "the cooperative handler runs on the server goroutine")
			} else {
				require.NotEqual(t, got.server, got.handler, "the racing handler runs on a worker goroutine")
			}
		})
	}
}
