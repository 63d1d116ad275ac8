package fasttimeout_test

import (
	"context"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fasttimeout/fasttimeout"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
)

// A New inside another New's handler: only the outermost races, the inner
// one keeps the earlier deadline, and whatever the handler does (Disarm,
// Extend, its client hanging up) applies to the request as a whole.

// A New inside another New's handler, its handler ignoring its context
// and writing past both deadlines. Only the outermost New races; an inner
// one bounds its handler as cooperative mode does. Were both to race on
// the RequestCtx, the outer one would end the request (its user values,
// and Response.Reset in its late return) while the inner late handler
// still wrote: data races under -race, and a pooled body buffer shared
// with the late handler. Whatever the outer mode, the client gets one
// timeout response.
func TestNested_answers_once(t *testing.T) {
	t.Parallel()
	for _, outerMode := range allModes {
		for _, tc := range []struct {
			name         string
			inner, outer time.Duration
		}{
			// The handler must start before the deadline, for its late
			// writes to race with the answer: actInTime.
			{"inner deadline first", actInTime, time.Hour},
			{"same deadline", time.Hour, actInTime},
		} {
			t.Run(outerMode.String()+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				returned := make(chan struct{})
				inner := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					defer close(returned)
					past := func() bool { left, _ := fasttimeout.Remaining(ctx); return left < -2*shortTimeout }
					for ; !past(); time.Sleep(100 * time.Microsecond) {
						ctx.WriteString("the late handler's own body ")
						ctx.SetUserValue("k", 1)
						_ = fasttimeout.Context(ctx)
					}
				}, fasttimeout.Config{Timeout: tc.inner})
				s := serve(t, fasttimeout.New(inner, fasttimeout.Config{Timeout: tc.outer, Mode: outerMode}))
				resp := do(t, s, "GET", "/")
				receive(t, returned, "return of the handler")
				assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
				assert.Equal(t, fasttimeout.DefaultBody, string(resp.Body()))
			})
		}
	}
}

func TestNested_keeps_the_earlier_deadline(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			type seenDeadlines struct{ inner, outerAfter, outerBefore time.Time }
			seen := make(chan seenDeadlines, 1)
			var outerBefore time.Time
			inner := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				d, _ := fasttimeout.Context(ctx).Deadline()
				outerAfter, _ := time.Time{}, false
				seen <- seenDeadlines{inner: d, outerAfter: outerAfter}
			}, fasttimeout.Config{Mode: mode, Timeout: time.Hour})
			outer := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				outerBefore, _ = fasttimeout.Context(ctx).Deadline()
				inner(ctx)
				got := receive(t, seen, "the handler's report")
				got.outerBefore = outerBefore
				got.outerAfter, _ = fasttimeout.Context(ctx).Deadline()
				seen <- got
			}, fasttimeout.Config{Mode: mode, Timeout: time.Minute})
			s := serve(t, outer)
			assert.Equal(t, 200, do(t, s, "GET", "/").StatusCode())
			got := receive(t, seen, "the handler's report")
			assert.Equal(t, got.outerBefore, got.inner, "the inner middleware keeps the outer, earlier deadline")
			assert.Equal(t, got.outerBefore, got.outerAfter, "Context returns the outer context again after the inner handler")
		})
	}
}

// Disarm and Extend inside nested News move every deadline that bounds the
// request: moving only the inner one and reporting true, they would leave
// the outer New to answer with its timeout response at its own deadline
// while the handler's context stayed live.
func TestNested_Disarm_and_Extend_move_every_deadline(t *testing.T) {
	t.Parallel()
	for _, outerMode := range allModes {
		for _, tc := range []struct {
			name string
			move func(*fasthttp.RequestCtx) bool
		}{
			{"Disarm", fasttimeout.Disarm},
			{"Extend", func(ctx *fasthttp.RequestCtx) bool { return fasttimeout.Extend(ctx, time.Hour) }},
		} {
			t.Run(outerMode.String()+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				type seen struct {
					moved  bool
					err    error
					leftOK bool
				}
				out := make(chan seen, 1)
				inner := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					var o seen
					left, _ := fasttimeout.Remaining(ctx) // the outer deadline's
					o.moved = tc.move(ctx)
					c := fasttimeout.Context(ctx)
					select {
					case <-c.Done():
					case <-time.After(left + shortTimeout): // past the outer deadline
					}
					o.err = c.Err()
					left, ok := fasttimeout.Remaining(ctx)
					o.leftOK = !ok || left > time.Minute
					out <- o
				}, fasttimeout.Config{Timeout: time.Hour})
				s := serve(t, fasttimeout.New(inner, fasttimeout.Config{Timeout: actInTime, Mode: outerMode}))
				resp := do(t, s, "GET", "/")
				o := receive(t, out, "the handler's report")
				assert.True(t, o.moved)
				assert.NoError(t, o.err, "the context outlives the outer deadline")
				assert.True(t, o.leftOK, "Remaining follows the move")
				assert.Equal(t, fasthttp.StatusOK, resp.StatusCode(), "no timeout response")
			})
		}
	}
}

// A hang-up is watched by the outermost New alone, and ends the contexts
// of the inner ones too: an inner one's watch would replace the outer's (a
// connection has one), and its end leave the outer request unwatched.
func TestNested_hangup_reaches_every_context(t *testing.T) {
	requireHangups(t)
	t.Parallel()
	for _, mode := range allModes {
		for _, when := range []string{"after the inner handler", "during the inner handler"} {
			t.Run(mode.String()+"/"+when, func(t *testing.T) {
				t.Parallel()
				ready := make(chan struct{}) // the moment to hang up
				innerCause := make(chan error, 1)
				outerCause := make(chan error, 1)
				during := when == "during the inner handler"
				inner := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					c := fasttimeout.Context(ctx)
					if !during {
						time.Sleep(4 * fasttimeout.HangupDelay) // long enough to be watched
						return
					}
					close(ready)
					select {
					case <-c.Done():
						innerCause <- context.Cause(c)
					case <-time.After(waitTimeout):
						innerCause <- nil
					}
				}, fasttimeout.Config{Timeout: time.Minute, Mode: fasttimeout.Cooperative})
				s := startStressLoopback(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					c := fasttimeout.Context(ctx)
					time.Sleep(2 * fasttimeout.HangupDelay) // the outer watch starts
					inner(ctx)
					if !during {
						close(ready)
					}
					select {
					case <-c.Done():
						outerCause <- context.Cause(c)
					case <-time.After(waitTimeout):
						outerCause <- nil
					}
				}, fasttimeout.Config{Timeout: time.Minute, Mode: mode}))
				conn := sendRaw(t, s.addr, rawRequest("/nested"))
				receive(t, ready, "the moment to hang up")
				require.NoError(t, conn.Close())
				if during {
					assert.ErrorIs(t, receive(t, innerCause, "the inner context's end"), fasttimeout.ErrClientGone)
				}
				assert.ErrorIs(t, receive(t, outerCause, "the outer context's end"), fasttimeout.ErrClientGone)
			})
		}
	}
}

// An outer New that ignores hang-ups (IgnoreHangups) leaves the watch to
// an inner one that does not: its client's hang-up ends the inner context
// and counts in the inner New's Stats only. Skipped because an outer New
// exists, whether it watches or not, the inner watch would leave the inner
// handler waiting for nobody.
func TestNested_inner_watches_when_the_outer_ignores_hangups(t *testing.T) {
	requireHangups(t)
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			var innerStats, outerStats fasttimeout.Stats
			started := make(chan struct{})
			innerCause := make(chan error, 1)
			inner := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				c := fasttimeout.Context(ctx)
				close(started)
				select {
				case <-c.Done():
					innerCause <- context.Cause(c)
				case <-time.After(waitTimeout):
					innerCause <- nil
				}
			}, fasttimeout.Config{Timeout: time.Minute, Mode: fasttimeout.Cooperative, Stats: &innerStats})
			s := startStressLoopback(t, fasttimeout.New(inner, fasttimeout.Config{
				Timeout: time.Minute, Mode: mode, IgnoreHangups: true, Stats: &outerStats,
			}))
			conn := sendRaw(t, s.addr, rawRequest("/nested"))
			receive(t, started, "the inner handler's start")
			require.NoError(t, conn.Close())
			assert.ErrorIs(t, receive(t, innerCause, "the inner context's end"), fasttimeout.ErrClientGone)
			require.Eventually(t, func() bool { return innerStats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond)
			assert.EqualValues(t, 1, innerStats.Snapshot().ClientGone)
			require.Eventually(t, func() bool { return outerStats.Snapshot().InFlight == 0 }, stressBound, 5*time.Millisecond)
			assert.Zero(t, outerStats.Snapshot().ClientGone, "the outer New ignores hang-ups")
		})
	}
}

// TestNested_context_of_an_ended_request_starts_done: an inner handler that
// asks for its context only after the outer one has ended (here by the
// server's shutdown) gets a context already done, with the outer one's
// cause, as a standard library context derived from a done parent is:
// learning of the end a goroutine later, it could start work for a request
// that had ended.
func TestNested_context_of_an_ended_request_starts_done(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			started := make(chan struct{})
			type seen struct{ err, cause error }
			seenInner := make(chan seen, 1)
			inner := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				c := fasttimeout.Context(ctx)
				seenInner <- seen{c.Err(), context.Cause(c)} // at once, no wait
			}, fasttimeout.Config{Timeout: time.Hour, Mode: fasttimeout.Cooperative})
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				outer := fasttimeout.Context(ctx)
				close(started)
				<-outer.Done()
				inner(ctx)
			}, fasttimeout.Config{Timeout: time.Hour, Mode: mode}))
			answered := make(chan error, 1)
			go func() {
				status, _, err := s.client.GetTimeout(nil, "http://test/", waitTimeout)
				if err == nil && status != fasthttp.StatusOK {
					err = fmt.Errorf("status %d, want 200", status)
				}
				answered <- err
			}()
			receive(t, started, "the outer handler's start")
			shutdown := make(chan error, 1)
			go func() { shutdown <- s.server.Shutdown() }() // ends the outer context
			got := receive(t, seenInner, "the inner handler's look at its context")
			assert.ErrorIs(t, got.err, context.Canceled, "the inner context's Err at its creation")
			assert.ErrorIs(t, got.cause, fasttimeout.ErrShutdown)
			assert.NoError(t, receive(t, answered, "the answer"))
			require.NoError(t, receive(t, shutdown, "the shutdown"))
		})
	}
}

// OnTimeout of an outer racing New, around an inner New whose handler is
// still running (late), asks for the request's context: Context finds the
// inner call, whose context must end with the outer one, before its server
// goroutine is told; following the outer one's end on a goroutine of its
// own, it would often be found not done yet (Err and Cause nil).
// Cooperative: the inner New has returned before the outer one's OnTimeout
// runs.
func TestNested_OnTimeout_sees_the_request_context_ended(t *testing.T) {
	t.Parallel()
	for _, outerMode := range allModes {
		t.Run(outerMode.String(), func(t *testing.T) {
			t.Parallel()
			type seen struct{ err, cause error }
			seenByOnTimeout := make(chan seen, 1)
			release := make(chan struct{})
			inner := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				c := fasttimeout.Context(ctx) // follows the outer context
				if outerMode == fasttimeout.Cooperative {
					<-c.Done() // the outer timeout is decided when this returns
					return
				}
				<-release // still running when the outer New answers
			}, fasttimeout.Config{Timeout: time.Hour})
			h := fasttimeout.New(inner, fasttimeout.Config{
				Timeout: shortTimeout,
				Mode:    outerMode,
				OnTimeout: func(ctx *fasthttp.RequestCtx, _ *fasthttp.Response) {
					c := fasttimeout.Context(ctx)
					seenByOnTimeout <- seen{c.Err(), context.Cause(c)}
				},
			})
			s := serve(t, h)
			assert.Equal(t, fasthttp.StatusGatewayTimeout, do(t, s, "GET", "/").StatusCode())
			got := receive(t, seenByOnTimeout, "OnTimeout")
			close(release)
			assert.ErrorIs(t, got.err, context.DeadlineExceeded)
			assert.ErrorIs(t, got.cause, fasttimeout.ErrTimeout)
		})
	}
}

// The same for OnHangup: the client of an outer racing New hangs up while
// an inner New's handler runs, and OnHangup's Context(ctx), the inner
// call's, must have ended with ErrClientGone.
func TestNested_OnHangup_sees_the_request_context_ended(t *testing.T) {
	requireHangups(t)
	t.Parallel()
	type seen struct{ err, cause error }
	seenByOnHangup := make(chan seen, 1)
	ready := make(chan struct{}) // the moment to hang up
	release := make(chan struct{})
	inner := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
		_ = fasttimeout.Context(ctx) // follows the outer context
		close(ready)
		<-release // still running when the outer New answers
	}, fasttimeout.Config{Timeout: time.Minute})
	s := startStressLoopback(t, fasttimeout.New(inner, fasttimeout.Config{
		Timeout: time.Minute,
		OnHangup: func(ctx *fasthttp.RequestCtx, _ time.Duration) {
			c := fasttimeout.Context(ctx)
			seenByOnHangup <- seen{c.Err(), context.Cause(c)}
		},
	}))
	conn := sendRaw(t, s.addr, rawRequest("/nested"))
	receive(t, ready, "the moment to hang up")
	require.NoError(t, conn.Close())
	got := receive(t, seenByOnHangup, "OnHangup")
	close(release)
	assert.ErrorIs(t, got.err, context.Canceled)
	assert.ErrorIs(t, got.cause, fasttimeout.ErrClientGone)
}

// A goroutine that the outer handler waits for (a heartbeat that extends
// the deadline, say) calls Extend, Remaining and Context while the outer
// handler calls an inner New over and over. The request's user value that
// these look the call up in keeps the outermost call, and an inner call is
// found through it: changed at each start and end of the inner call, it
// would be a data race under -race, and a look-up could go on with an inner
// call already ended, back in the pool for another request.
func TestNested_goroutine_of_the_outer_handler_beside_inner_News(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			inner := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				runtime.Gosched()
			}, fasttimeout.Config{Timeout: waitTimeout, Mode: mode})
			type seen struct{ looks, failed int }
			seenc := make(chan seen, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				started, stop, done := make(chan struct{}), make(chan struct{}), make(chan seen)
				go func() {
					var v seen
					defer func() { done <- v }()
					for {
						select {
						case <-stop:
							return
						default:
						}
						if v.looks++; v.looks == 2 {
							close(started)
						}
						_, bounded := fasttimeout.Remaining(ctx)
						// The inner call's context, if it runs: it ends
						// (context.Canceled) when the inner handler returns.
						c := fasttimeout.Context(ctx)
						if !fasttimeout.Extend(ctx, 0) || !bounded || c == nil {
							v.failed++
						}
					}
				}()
				<-started
				for range 50 {
					inner(ctx)
				}
				close(stop)
				seenc <- <-done
			}, fasttimeout.Config{Timeout: waitTimeout, Mode: mode}))

			assert.Equal(t, fasthttp.StatusOK, do(t, s, "GET", "/").StatusCode())
			v := receive(t, seenc, "the goroutine's report")
			assert.Zero(t, v.failed, "every look found a running call with its deadline")
		})
	}
}

// An inner New that refuses the request (its admission's 503, or the
// timeout response of a spent budget) while a goroutine of the outer
// handler looks up the request's call (a heartbeat calling Remaining and
// Extend), without a data race under -race (writing the refusal into the
// request's user values would race with that goroutine's reading them). A
// middleware around the inner New and one around the outermost both see
// the refusal, which is the request's answer.
func TestNested_inner_refusal_beside_a_goroutine_of_the_outer_handler(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		for _, tc := range []struct {
			name string
			// inner refuses the request when the outer handler calls it,
			// and calls afterRefusal right after the refusing New returns.
			inner  func(afterRefusal func()) fasthttp.RequestHandler
			header string // a Grpc-Timeout for the request, if not empty
			status int
			spent  bool
		}{
			{
				// A New with one slot inside itself: the nested call waits
				// for the slot its enclosing call holds (a tenth of its
				// budget), and is refused.
				name: "admission",
				inner: func(afterRefusal func()) fasthttp.RequestHandler {
					var depth atomic.Int32
					var limited fasthttp.RequestHandler
					limited = fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
						if depth.Add(1) == 1 {
							limited(ctx)
							afterRefusal()
						}
						depth.Add(-1)
					}, fasttimeout.Config{Mode: mode, MaxConcurrency: 1, Timeout: waitTimeout})
					return limited
				},
				status: fasthttp.StatusServiceUnavailable,
			},
			{
				// The caller's minute, less a margin of a minute.
				name: "spent budget",
				inner: func(afterRefusal func()) fasthttp.RequestHandler {
					spending := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
						ctx.SetStatusCode(fasthttp.StatusTeapot) // never runs
					}, fasttimeout.Config{Mode: mode, HonorDeadlineHeaders: true, DeadlineMargin: time.Minute})
					return func(ctx *fasthttp.RequestCtx) {
						spending(ctx)
						afterRefusal()
					}
				},
				header: "60S",
				status: fasthttp.StatusGatewayTimeout,
				spent:  true,
			},
		} {
			t.Run(mode.String()+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				type seen struct {
					reason string
					spent  bool
					status int
				}
				look := func(ctx *fasthttp.RequestCtx) seen {
					return seen{fasttimeout.RejectReason(ctx), fasttimeout.SpentBudget(ctx), ctx.Response.StatusCode()}
				}
				// The goroutine's looks so far. After the refusal the
				// handler waits for two more, one whole, before anything
				// of it could order the refusal before them (a load orders
				// nothing the other way): the race detector sees a look
				// unordered with the refusal, however the goroutines ran.
				var looks atomic.Int64
				inner := tc.inner(func() {
					for n := looks.Load() + 2; looks.Load() < n; {
						runtime.Gosched()
					}
				})
				insidec, aroundc := make(chan seen, 1), make(chan seen, 1)
				outer := fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
					started, stop, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
					go func() {
						defer close(done)
						for mine := 1; ; mine++ {
							select {
							case <-stop:
								return
							default:
							}
							fasttimeout.Remaining(ctx)
							fasttimeout.Extend(ctx, 0)
							looks.Add(1)
							if mine == 2 {
								close(started)
							}
							// Paced: each look releases locks, and a
							// goroutine that spins through thousands of
							// them makes the race detector start its
							// history afresh, forgetting the refusal's
							// write before the look it races with.
							time.Sleep(100 * time.Microsecond)
						}
					}()
					<-started
					inner(ctx)
					insidec <- look(ctx)
					close(stop)
					<-done
				}, fasttimeout.Config{Mode: mode, Timeout: waitTimeout})
				s := serve(t, func(ctx *fasthttp.RequestCtx) {
					outer(ctx)
					aroundc <- look(ctx)
				})

				req := fasthttp.AcquireRequest()
				defer fasthttp.ReleaseRequest(req)
				req.SetRequestURI("http://test/")
				if tc.header != "" {
					req.Header.Set(fasttimeout.HeaderGRPCTimeout, tc.header)
				}
				// A few requests: the race detector may still start afresh
				// between a refusal and the look after it, now and then.
				for range 3 {
					resp := new(fasthttp.Response)
					require.NoError(t, s.client.DoTimeout(req, resp, waitTimeout))
					assert.Equal(t, tc.status, resp.StatusCode())
					inside := receive(t, insidec, "the look around the inner New")
					around := receive(t, aroundc, "the look around the outer New")
					assert.Equal(t, tc.status, inside.status)
					assert.Equal(t, tc.spent, inside.spent, "SpentBudget around the inner New")
					if tc.spent {
						assert.Empty(t, inside.reason, "a spent budget is no refusal")
					} else {
						assert.NotEmpty(t, inside.reason, "RejectReason around the inner New")
					}
					assert.Equal(t, inside, around, "around the outer New as around the inner one")
				}
			})
		}
	}
}
