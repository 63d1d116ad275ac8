package fasttimeout_test

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

// streamChunks is what a streaming handler sends.
const streamChunks = 5

func wantStream() string {
	var b strings.Builder
	for i := range streamChunks {
		fmt.Fprintf(&b, "chunk %d\n", i)
	}
	return b.String()
}

// streamingHandler prepares until past its deadline, the request's timeout
// after its arrival, then streams chunks over longer than timeout again.
// disarm says whether it switches its deadline off first.
func streamingHandler(timeout time.Duration, disarm bool) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		left, _ := fasttimeout.Remaining(ctx)
		if disarm && !fasttimeout.Disarm(ctx) {
			ctx.Error("Disarm failed", fasthttp.StatusInternalServerError)
			return
		}
		<-time.After(left + timeout/2) // slow preparation, past the deadline on purpose
		ctx.SetContentType("text/plain")
		ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
			for i := range streamChunks {
				fmt.Fprintf(w, "chunk %d\n", i)
				if w.Flush() != nil {
					return
				}
				<-time.After(timeout / 4) // the whole stream outlives the timeout too
			}
		})
	}
}

func TestDisarm(t *testing.T) {
	t.Parallel()
	const timeout = 30 * time.Millisecond

	for _, mode := range allModes {
		t.Run("a disarmed handler outlives the timeout and streams its whole body, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			stats := new(fasttimeout.Stats)
			s := serve(t, fasttimeout.New(streamingHandler(actInTime, true), fasttimeout.Config{Timeout: actInTime, Mode: mode, Stats: stats}))

			status, body, contentType := s.get(t, "/events")
			assert.Equal(t, fasthttp.StatusOK, status)
			assert.Equal(t, wantStream(), body)
			assert.Equal(t, "text/plain", contentType)
			assert.Zero(t, stats.Snapshot().Timeouts)
		})

		t.Run("without Disarm the same handler is answered with the timeout response, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			s := serve(t, fasttimeout.New(streamingHandler(timeout, false), fasttimeout.Config{Timeout: timeout, Mode: mode}))

			status, body, _ := s.get(t, "/events")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
			assert.JSONEq(t, fasttimeout.DefaultBody, body)
		})

		t.Run("switches off Remaining and the context's deadline, not the context, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			type seen struct {
				disarmed, disarmedAgain, remaining, deadline bool
				err                                          error
			}
			seenc := make(chan seen, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				c := fasttimeout.Context(ctx) // made before Disarm: it must follow
				var v seen
				v.disarmed = fasttimeout.Disarm(ctx)
				v.disarmedAgain = fasttimeout.Disarm(ctx)
				_, v.remaining = fasttimeout.Remaining(ctx)
				_, v.deadline = c.Deadline()
				v.err = c.Err()
				seenc <- v
			}, fasttimeout.Config{Timeout: time.Minute, Mode: mode}))

			s.get(t, "/")
			assert.Equal(t, seen{disarmed: true, disarmedAgain: true}, receive(t, seenc, "the handler's report"))
		})

		t.Run("reports false once the deadline has passed, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			disarmed := make(chan bool, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				<-fasttimeout.Context(ctx).Done()
				disarmed <- fasttimeout.Disarm(ctx)
			}, fasttimeout.Config{Timeout: actInTime, Mode: mode})) // the handler must run

			status, _, _ := s.get(t, "/")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
			assert.False(t, receive(t, disarmed, "the handler's Disarm"))
		})
	}

	t.Run("the context of a disarmed request ends when its handler returns, before the stream", func(t *testing.T) {
		t.Parallel()
		errs := make(chan error, 1)
		s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
			assert.True(t, fasttimeout.Disarm(ctx))
			c := fasttimeout.Context(ctx)
			// fasthttp starts the stream writer's goroutine at once, while
			// the handler still runs: wait for the context to end, which
			// only the handler's return does here (disarmed, and no
			// shutdown).
			ctx.SetBodyStreamWriter(func(w *bufio.Writer) {
				select {
				case <-c.Done():
				case <-time.After(10 * time.Second):
				}
				errs <- c.Err()
				_, _ = w.WriteString("done")
			})
		}, fasttimeout.Config{Timeout: time.Minute}))

		_, body, _ := s.get(t, "/")
		assert.Equal(t, "done", body)
		assert.ErrorIs(t, receive(t, errs, "the error"), context.Canceled, "stream writers must not rely on the request context")
	})

	t.Run("does nothing outside New", func(t *testing.T) {
		t.Parallel()
		type seen struct{ disarmed, extended, remaining bool }
		seenc := make(chan seen, 1)
		s := serve(t, func(ctx *fasthttp.RequestCtx) {
			var v seen
			v.disarmed = fasttimeout.Disarm(ctx)
			v.extended = fasttimeout.Extend(ctx, time.Second)
			_, v.remaining = fasttimeout.Remaining(ctx)
			seenc <- v
		})
		s.get(t, "/")
		assert.Equal(t, seen{}, receive(t, seenc, "the handler's report"))
		assert.False(t, fasttimeout.Disarm(nil))
		assert.False(t, fasttimeout.Extend(nil, time.Second))
	})
}

// A handler's goroutine extends the deadline again and again (a heartbeat)
// while the handler disarms it. Disarm must neither take an Extend in
// progress for a disarmed call and report true while the Extend then puts
// a deadline back (racing mode), nor lose its store to the Extend's
// (cooperative mode): a handler that disarmed to work past its timeout
// would get the timeout response.
func TestDisarm_beside_a_heartbeat_Extend(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			type result struct{ disarmed, hasDeadline bool }
			results := make(chan result, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				var stop atomic.Bool
				beating := make(chan struct{})
				heartbeat := make(chan struct{})
				go func() {
					defer close(heartbeat)
					fasttimeout.Extend(ctx, time.Millisecond)
					close(beating)
					// Bounded, so that on a loaded machine a handler kept off
					// the CPU does not keep the heartbeat spinning.
					for i := 0; i < 1000 && !stop.Load(); i++ {
						fasttimeout.Extend(ctx, time.Millisecond)
					}
				}()
				<-beating
				disarmed := fasttimeout.Disarm(ctx)
				stop.Store(true)
				<-heartbeat
				_, hasDeadline := fasttimeout.Remaining(ctx)
				results <- result{disarmed, hasDeadline}
			}, fasttimeout.Config{Timeout: time.Minute, Mode: mode, IgnoreHangups: true}))
			for range 200 {
				assert.Equal(t, fasthttp.StatusOK, do(t, s, "GET", "/").StatusCode())
				r := receive(t, results, "the handler's result")
				require.True(t, r.disarmed, "Disarm before the deadline")
				require.False(t, r.hasDeadline, "a deadline after Disarm reported true")
			}
		})
	}
}

func TestExtend(t *testing.T) {
	t.Parallel()
	const timeout = 50 * time.Millisecond

	for _, mode := range allModes {
		t.Run("moves the deadline and the context's deadline later, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			type seen struct {
				extended           bool
				before, after      time.Time
				leftBefore, leftAt time.Duration
				between            time.Duration // at most, between the two Remaining
			}
			seenc := make(chan seen, 1)
			stats := new(fasttimeout.Stats)
			const extension = time.Minute
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				var v seen
				c := fasttimeout.Context(ctx)
				v.before, _ = c.Deadline()
				start := time.Now()
				v.leftBefore, _ = fasttimeout.Remaining(ctx)
				v.extended = fasttimeout.Extend(ctx, extension)
				v.after, _ = c.Deadline()
				v.leftAt, _ = fasttimeout.Remaining(ctx)
				v.between = time.Since(start)
				seenc <- v
				<-time.After(time.Until(v.before) + 2*timeout) // past the first deadline on purpose
				ctx.SetBodyString("finished")
			}, fasttimeout.Config{Timeout: actInTime, Mode: mode, Stats: stats}))

			status, body, _ := s.get(t, "/")
			assert.Equal(t, fasthttp.StatusOK, status)
			assert.Equal(t, "finished", body)
			v := receive(t, seenc, "the handler's report")
			assert.True(t, v.extended)
			assert.Equal(t, extension, v.after.Sub(v.before), "the context's deadline moved by exactly the extension")
			// Remaining moved by the extension, less the time that passed
			// between its two reads, however long a loaded machine made it.
			assert.LessOrEqual(t, v.leftAt, v.leftBefore+extension)
			assert.GreaterOrEqual(t, v.leftAt, v.leftBefore+extension-v.between)
			assert.Zero(t, stats.Snapshot().Timeouts)
		})

		t.Run("an extended handler still times out at its new deadline, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			causes := make(chan error, 1)
			extended := make(chan bool, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				c := fasttimeout.Context(ctx)
				extended <- fasttimeout.Extend(ctx, timeout)
				<-c.Done()
				causes <- context.Cause(c)
			}, fasttimeout.Config{Timeout: actInTime, Mode: mode}))

			start := time.Now()
			status, _, _ := s.get(t, "/")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
			assert.True(t, receive(t, extended, "the handler's Extend"))
			assert.GreaterOrEqual(t, time.Since(start), actInTime+timeout)
			assert.ErrorIs(t, receive(t, causes, "the context's cause"), fasttimeout.ErrTimeout)
		})

		t.Run("reports false after Disarm, after the deadline and for a negative extension, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			type seen struct{ negative, disarmed, late bool }
			seenc := make(chan seen, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				var v seen
				v.negative = fasttimeout.Extend(ctx, -time.Second)
				if string(ctx.Path()) == "/disarmed" {
					fasttimeout.Disarm(ctx)
					v.disarmed = fasttimeout.Extend(ctx, time.Second)
				} else {
					<-fasttimeout.Context(ctx).Done()
					v.late = fasttimeout.Extend(ctx, time.Second)
				}
				seenc <- v
			}, fasttimeout.Config{Timeout: actInTime, Mode: mode})) // the handler must run

			s.get(t, "/disarmed")
			assert.Equal(t, seen{}, receive(t, seenc, "the handler's report"))
			s.get(t, "/late")
			assert.Equal(t, seen{}, receive(t, seenc, "the handler's report"))
		})

		// The caveat of Disarm's doc and the README: the standard library
		// turns a WithTimeout later than its parent's deadline into a plain
		// child, which follows the parent's deadline when it moves. If a Go
		// release keeps the child's own, this fails, and the doc is wrong.
		t.Run("a context derived earlier with a later deadline follows the moved one, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			type seen struct {
				own, extended, disarmed bool
				moved                   time.Duration // of the child's deadline, by Extend
			}
			seenc := make(chan seen, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				var v seen
				c := fasttimeout.Context(ctx)
				child, cancel := context.WithTimeout(c, 2*actInTime) // later than the request's
				defer cancel()
				before, _ := child.Deadline()
				request, _ := c.Deadline()
				v.own = !before.Equal(request)
				v.extended = fasttimeout.Extend(ctx, time.Hour)
				after, _ := child.Deadline()
				v.moved = after.Sub(before)
				fasttimeout.Disarm(ctx)
				_, has := child.Deadline()
				v.disarmed = !has
				seenc <- v
			}, fasttimeout.Config{Timeout: actInTime, Mode: mode})) // the handler must run

			s.get(t, "/")
			assert.Equal(t, seen{extended: true, moved: time.Hour, disarmed: true}, receive(t, seenc, "the handler's report"),
				"the child had the request's deadline, not its own, and lost it with the request's")
		})

		t.Run("a zero extension moves nothing and reports whether the deadline can move, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			type seen struct {
				running, disarmed, late bool
				moved                   time.Duration // of the context's deadline, by the first Extend
			}
			seenc := make(chan seen, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				var v seen
				c := fasttimeout.Context(ctx)
				before, _ := c.Deadline()
				v.running = fasttimeout.Extend(ctx, 0)
				after, _ := c.Deadline()
				v.moved = after.Sub(before)
				if string(ctx.Path()) == "/disarmed" {
					fasttimeout.Disarm(ctx)
					v.disarmed = fasttimeout.Extend(ctx, 0)
				} else {
					<-c.Done()
					v.late = fasttimeout.Extend(ctx, 0)
				}
				seenc <- v
			}, fasttimeout.Config{Timeout: actInTime, Mode: mode})) // the handler must run

			s.get(t, "/disarmed")
			assert.Equal(t, seen{running: true}, receive(t, seenc, "the handler's report"))
			status, _, _ := s.get(t, "/late")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, status, "the zero extension kept the deadline")
			assert.Equal(t, seen{running: true}, receive(t, seenc, "the handler's report"))
		})
	}
}

func TestRemaining(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run("decreases from the timeout and turns negative at the deadline, "+mode.String(), func(t *testing.T) {
			t.Parallel()
			const timeout = actInTime // the handler must run, its budget not spent on arrival
			lefts := make(chan [3]time.Duration, 1)
			s := serve(t, fasttimeout.New(func(ctx *fasthttp.RequestCtx) {
				var v [3]time.Duration
				v[0], _ = fasttimeout.Remaining(ctx)
				<-time.After(5 * time.Millisecond)
				v[1], _ = fasttimeout.Remaining(ctx)
				<-fasttimeout.Context(ctx).Done()
				v[2], _ = fasttimeout.Remaining(ctx)
				lefts <- v
			}, fasttimeout.Config{Timeout: timeout, Mode: mode}))

			status, _, _ := s.get(t, "/")
			assert.Equal(t, fasthttp.StatusGatewayTimeout, status)
			v := receive(t, lefts, "the handler's report")
			assert.LessOrEqual(t, v[0], timeout)
			assert.LessOrEqual(t, v[1], v[0]-5*time.Millisecond)
			assert.LessOrEqual(t, v[2], time.Duration(0))
		})
	}
}
