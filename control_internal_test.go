package fasttimeout

import (
	"bufio"
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"
)

// One goroutine of a handler makes the request's context while another
// moves its deadline: Disarm or Extend runs after the context was made with
// the old deadline and before it was published, so it cannot find it. The
// context must still end up with the new deadline: with the old one, in
// cooperative mode the housekeeper would cancel it at that deadline with
// ErrTimeout while the request, extended, went on and answered 200. Not
// parallel: it sets the process's test hook.
func TestContext_made_while_the_deadline_moves_gets_the_new_one(t *testing.T) {
	const timeout = 2 * time.Second
	for _, mode := range []Mode{Racing, Cooperative} {
		for _, move := range []string{"Disarm", "Extend"} {
			t.Run(mode.String()+"/"+move, func(t *testing.T) {
				type seen struct {
					moved        bool
					callDeadline int64 // the call's deadline once moved
					oldDeadline  int64
					ctxDeadline  time.Time
					hasDeadline  bool
					expiredAtOld bool // the housekeeper's decision at the old deadline
				}
				got := make(chan seen, 1)
				getOnce(t, New(func(ctx *fasthttp.RequestCtx) {
					var s seen
					hook := func(c *call) {
						if c.ctx != ctx {
							return // another test's request
						}
						s.oldDeadline = c.deadline.Load()
						if move == "Disarm" {
							s.moved = Disarm(ctx)
						} else {
							s.moved = Extend(ctx, time.Hour)
						}
					}
					testHookContext.Store(&hook)
					cx := Context(ctx)
					testHookContext.Store(nil)
					s.callDeadline = lookup(ctx).deadline.Load()
					s.ctxDeadline, s.hasDeadline = cx.Deadline()
					s.expiredAtOld = cx.(*requestContext).expire(s.oldDeadline)
					got <- s
					ctx.SetBodyString("ok")
				}, Config{Timeout: timeout, Mode: mode}))
				s := receive(t, got, "the handler's report")

				require.True(t, s.moved, "%s before the deadline", move)
				if move == "Disarm" {
					assert.Equal(t, int64(noDeadline), s.callDeadline)
					assert.False(t, s.hasDeadline, "the context has no deadline once the call is disarmed")
				} else {
					assert.Equal(t, s.oldDeadline+int64(time.Hour), s.callDeadline)
					assert.True(t, s.hasDeadline)
					assert.Equal(t, epoch.Add(time.Duration(s.callDeadline)), s.ctxDeadline, "the context has the extended deadline")
				}
				assert.False(t, s.expiredAtOld, "the context outlives the deadline it was made with")
			})
		}
	}
}

// A racing call's timer reads the state and the deadline, then
// compare-and-swaps the state to timedOut. An Extend that runs entirely in
// between must change the state word, within the generation: left as it
// was (running -> moving -> running), the timer would time the call out
// against the deadline from before the move.
func TestExtend_changes_the_state_word(t *testing.T) {
	t.Parallel()
	type seen struct {
		before, after  uint64
		moved, wrapped bool
	}
	got := make(chan seen, 1)
	getOnce(t, New(func(ctx *fasthttp.RequestCtx) {
		c := lookup(ctx)
		var s seen
		s.before = c.state.Load()
		for i := range 300 {
			s.moved = Extend(ctx, time.Millisecond)
			if i+1 == 16 || i+1 == 256 { // where a 4-bit or an 8-bit count would wrap
				s.wrapped = s.wrapped || c.state.Load() == s.before
			}
		}
		s.after = c.state.Load()
		got <- s
	}, Config{Timeout: time.Minute}))
	s := receive(t, got, "the handler's report")

	require.True(t, s.moved)
	assert.Equal(t, callRunning, s.after&phaseMask, "running again")
	assert.Equal(t, s.before/generation, s.after/generation, "the same generation")
	assert.Equal(t, uint64(300*moveStep), (s.after-s.before)&movesMask, "three hundred moves counted")
	assert.False(t, s.wrapped, "the state word came back to what a stalled timer read")
}

// getOnce sends one GET to h on a fasthttp server over an in-memory
// listener; h reports what it saw on its own channel. The test's cleanup
// stops the server.
func getOnce(t *testing.T, h fasthttp.RequestHandler) {
	t.Helper()
	ln := fasthttputil.NewInmemoryListener()
	serveOn(t, &fasthttp.Server{Handler: h}, ln)
	conn, err := ln.Dial()
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() }) // before serveOn's Shutdown, which waits for it
	_, err = conn.Write([]byte("GET / HTTP/1.1\r\nHost: test\r\n\r\n"))
	require.NoError(t, err)
}

// Two moves of a cooperative call's deadline, on two goroutines of its
// handler, each swap the call's deadline (D0 -> D1, then D1 -> D2) before
// giving it to the context, and the housekeeper expires the context at D0
// in between. Both moves fail; the first one's way back (D1 -> D0) fails,
// the deadline being D2 by then, and the second one's (D2 -> D1) must leave
// the deadline the context ended at: a call left at D1 while its context
// says ErrTimeout would let the handler, returning before D1, go without a
// timeout, its response out and no timeout counted. Not parallel: it sets
// the process's test hook.
func TestExtend_beside_another_move_as_the_context_expires_times_out(t *testing.T) {
	const timeout = 100 * time.Millisecond
	for _, second := range []string{"Extend", "Disarm"} {
		t.Run(second, func(t *testing.T) {
			type seen struct {
				ready         bool // the interleaving was set up: Extend#1 started before D0
				first, second bool
				cause         error
				atD0          bool // the call's deadline is the one its context expired at
			}
			stats := new(Stats)
			got := make(chan seen, 1)
			h := New(func(ctx *fasthttp.RequestCtx) {
				var s seen
				cx := Context(ctx) // watched by the housekeeper, at D0
				c := lookup(ctx)
				d0 := c.deadline.Load()
				var moves atomic.Int32
				swapped, resume, firstDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
				hook := func(mc *call) {
					if mc.ctx != ctx {
						return // another test's request
					}
					switch moves.Add(1) {
					case 1: // Extend#1, swapped D0 -> D1
						close(swapped)
						<-resume
					case 2: // the second move, swapped D1 -> D2
						<-cx.Done() // the housekeeper expires the context at D0
						close(resume)
						<-firstDone // Extend#1 fails and goes back first
					}
				}
				testHookMove.Store(&hook)
				defer testHookMove.Store(nil)
				go func() {
					defer close(firstDone)
					s.first = Extend(ctx, time.Hour)
				}()
				select {
				case <-swapped:
				case <-firstDone: // Extend#1 came after D0: try another request
					got <- s
					return
				}
				s.ready = true
				if second == "Disarm" {
					s.second = Disarm(ctx)
				} else {
					s.second = Extend(ctx, time.Hour)
				}
				s.cause = context.Cause(cx)
				s.atD0 = c.deadline.Load() == d0
				got <- s
				ctx.SetBodyString("after ErrTimeout")
			}, Config{Timeout: timeout, Mode: Cooperative, Stats: stats})

			for range 20 {
				resp := getResponse(t, h)
				s := receive(t, got, "the handler's report")
				if !s.ready {
					continue
				}
				assert.False(t, s.first, "Extend#1 failed")
				assert.False(t, s.second, "the second move failed")
				assert.ErrorIs(t, s.cause, ErrTimeout)
				assert.True(t, s.atD0, "the call keeps the deadline its context expired at")
				assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode(), "body %q", resp.Body())
				assert.Equal(t, int64(1), stats.Snapshot().Timeouts, "the timeout is counted")
				return
			}
			t.Fatal("no handler started before its deadline")
		})
	}
}

// getResponse sends one GET to h on a fasthttp server over an in-memory
// listener and returns the response. The server is stopped before it
// returns.
func getResponse(t *testing.T, h fasthttp.RequestHandler) *fasthttp.Response {
	t.Helper()
	ln := fasthttputil.NewInmemoryListener()
	srv := &fasthttp.Server{Handler: h}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		require.NoError(t, srv.Shutdown())
		_ = ln.Close()
		<-served
	}()
	conn, err := ln.Dial()
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write([]byte("GET / HTTP/1.1\r\nHost: test\r\n\r\n"))
	require.NoError(t, err)
	resp := new(fasthttp.Response)
	require.NoError(t, resp.Read(bufio.NewReader(conn)))
	return resp
}

// Inside nested News, Extend and Disarm move the inner deadline, then the
// outer one. When the outer one cannot move, its deadline having passed in
// between (here: the test hook holds the inner move until the outer
// request has timed out), they report false and move none: an inner
// deadline left moved would have Remaining and the inner context say an
// hour is left (or no deadline) while the request timed out, and the inner
// New, its handler returning "in time", count no timeout. Not parallel: it
// sets the process's test hook.
func TestNested_move_that_fails_outside_moves_nothing_inside(t *testing.T) {
	const hookWait = 10 * time.Second // a hang detector, not a speed requirement
	for _, mode := range []Mode{Racing, Cooperative} {
		for _, move := range []string{"Extend", "Disarm"} {
			t.Run(mode.String()+"/"+move, func(t *testing.T) {
				type seen struct {
					hooked, outerEnded bool // the interleaving was set up
					moved              bool
					left               time.Duration
					hasLeft            bool
					deadline           time.Time // of the inner context, made after the move
					hasDeadline        bool
					outerDeadline      int64
					innerMoved         int64 // handlers counted as moved by the inner limit
				}
				innerStats := new(Stats)
				var s seen
				inner := New(func(ctx *fasthttp.RequestCtx) {
					s = seen{}
					c := lookup(ctx)
					hook := func(mc *call) {
						if mc != c || s.hooked {
							return // another test's request, or the outer move
						}
						s.hooked = true
						select { // the outer deadline passes, and its request times out
						case <-c.outer.context().Done():
							s.outerEnded = true
						case <-time.After(hookWait):
						}
					}
					testHookMove.Store(&hook)
					defer testHookMove.Store(nil)
					if move == "Disarm" {
						s.moved = Disarm(ctx)
					} else {
						s.moved = Extend(ctx, time.Hour)
					}
					s.left, s.hasLeft = Remaining(ctx)
					s.deadline, s.hasDeadline = Context(ctx).Deadline()
					s.outerDeadline = c.outer.deadline.Load()
					s.innerMoved = c.m.limiter.moved.Load()
				}, Config{Timeout: time.Hour, Stats: innerStats, AdaptiveConcurrency: true})
				got := make(chan seen, 1)
				outer := New(func(ctx *fasthttp.RequestCtx) {
					_ = Context(ctx) // the outer request's context, ended at its deadline
					inner(ctx)
					got <- s
				}, Config{Timeout: time.Second, Mode: mode})

				resp := getResponse(t, outer)
				r := <-got
				require.True(t, r.hooked, "the inner move started before the deadline")
				require.True(t, r.outerEnded, "the outer request timed out while the inner deadline moved")
				assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode())
				assert.False(t, r.moved, "%s reports false", move)
				assert.True(t, r.hasLeft, "the inner deadline is still on")
				assert.LessOrEqual(t, r.left, time.Duration(0), "the inner deadline has passed: it did not move")
				require.True(t, r.hasDeadline, "the inner context has a deadline")
				assert.Equal(t, epoch.Add(time.Duration(r.outerDeadline)), r.deadline, "the inner context's deadline is the outer one, unmoved")
				assert.Equal(t, int64(1), innerStats.Snapshot().Timeouts, "the inner New timed its handler out")
				assert.Zero(t, r.innerMoved, "the inner limit keeps no room for a move undone")
			})
		}
	}
}

// A racing call's Extend arms the timer for the new deadline while the call
// is moving, then makes it running again. A process that runs the timer
// before that (the extending goroutine stalled, or a short Extend close to
// the deadline) finds the call moving and settles nothing; the request
// must still time out at the new deadline, else its context never ends and
// the client waits for as long as the handler runs. Here the test
// hook holds the move until the new deadline has passed and runs the timer's
// function then, as the runtime would. Not parallel: it sets the process's
// test hook.
func TestExtend_timer_during_the_move_still_times_out(t *testing.T) {
	const hangWait = 10 * time.Second // a hang detector, not a speed requirement
	type seen struct {
		hooked, extended, ended bool
		cause                   error
	}
	got := make(chan seen, 1)
	h := New(func(ctx *fasthttp.RequestCtx) {
		var s seen
		cx := Context(ctx)
		c := lookup(ctx)
		var w *worker
		for _, x := range *c.m.housekeeper.snapshot.Load() {
			if &x.call == c {
				w = x
			}
		}
		hook := func(mc *call) {
			if mc != c {
				return // another test's request
			}
			s.hooked = true
			c.timer.Stop() // it goes off below, once the new deadline has passed
			for d := c.deadline.Load() - now(); d > 0; d = c.deadline.Load() - now() {
				<-time.After(time.Duration(d))
			}
			w.fire()
		}
		testHookMoved.Store(&hook)
		s.extended = Extend(ctx, time.Millisecond)
		testHookMoved.Store(nil)
		select {
		case <-cx.Done():
			s.ended = true
		case <-time.After(hangWait):
		}
		s.cause = context.Cause(cx)
		got <- s
		ctx.SetBodyString("own")
	}, Config{Timeout: actInTime, IgnoreHangups: true})

	resp := getResponse(t, h)
	s := receive(t, got, "the handler's report")
	require.True(t, s.hooked, "the deadline moved")
	require.True(t, s.extended, "Extend before the deadline")
	assert.True(t, s.ended, "the context ends once the new deadline has passed")
	assert.ErrorIs(t, s.cause, ErrTimeout)
	assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode(), "body %q", resp.Body())
}

// TestNested_undone_Disarm_wakes_the_housekeeper: inside nested News,
// Disarm switches the inner deadline off, then the outer one; if the outer
// one cannot (its deadline passed, or its client hung up, since the inner
// one moved), the inner deadline comes back, in the inner context too. The
// inner New's housekeeper, with that context alone to watch, may have gone
// to rest meanwhile, since a disarmed context needs no tick: it must tick
// every Precision again, or it would see the deadline back up to 100 ms
// late. Here the outer move fails by the test's hand, once the housekeeper
// rests.
func TestNested_undone_Disarm_wakes_the_housekeeper(t *testing.T) {
	t.Parallel()
	housekeepers := make(chan *housekeeper, 1)
	rested, checked := make(chan struct{}), make(chan struct{})
	type seen struct {
		disarmed, hasDeadline bool
		left                  time.Duration
	}
	seenc := make(chan seen, 1)
	inner := New(func(ctx *fasthttp.RequestCtx) {
		c := lookup(ctx)
		b := Context(ctx) // watched by the inner New's housekeeper
		var s seen
		c.outer.moves.Lock() // as Disarm holds it
		defer c.outer.moves.Unlock()
		s.disarmed = c.moveNested(false, func(l *call) bool {
			if l == c {
				return l.disarm()
			}
			housekeepers <- c.m.housekeeper
			select {
			case <-rested:
			case <-b.Done(): // the test failed, and its server shuts down
			}
			return false // the outer deadline passed, say
		})
		deadline, ok := b.Deadline()
		s.hasDeadline, s.left = ok, time.Until(deadline)
		seenc <- s
		select {
		case <-checked:
		case <-b.Done(): // the test failed, and its server shuts down
		}
	}, Config{Timeout: time.Hour, Mode: Cooperative, IgnoreHangups: true})
	client := serveInMemory(t, New(inner, Config{Timeout: time.Hour, Mode: Cooperative}))
	answered := make(chan int, 1)
	go func() {
		status, _, err := client.Get(nil, "http://test/")
		assert.NoError(t, err)
		answered <- status
	}()

	h := receive(t, housekeepers, "the outer move")
	require.Eventually(t, h.resting.Load, 10*time.Second, time.Millisecond, "the housekeeper rests while the inner context has no deadline")
	close(rested)
	s := receive(t, seenc, "the inner handler's look at its deadline")
	require.False(t, s.disarmed, "Disarm reports false")
	require.True(t, s.hasDeadline, "the inner context's deadline is back")
	require.Greater(t, s.left, 59*time.Minute, "back to the inner timeout")
	require.Eventually(t, func() bool { return !h.resting.Load() }, 10*time.Second, time.Millisecond, "the deadline back wakes the housekeeper")
	close(checked)
	require.Equal(t, fasthttp.StatusOK, receive(t, answered, "the answer"))
}

// Inside nested News, a goroutine that the outer handler waits for (a
// heartbeat, say) calls Extend while the outer handler calls an inner New,
// whose call ends between the goroutine's look-up and its move. The move
// must find the call the request has then, the outer one: acting on the
// inner call, ended and back in the pool (where another connection's
// request may take it), Extend would report true while the request's
// deadline, the outer one, had not moved, and the request would time out
// at it. Not parallel: it sets the process's test hook.
func TestNested_Extend_from_a_goroutine_as_the_inner_New_ends(t *testing.T) {
	const timeout = 2 * time.Second
	for _, mode := range []Mode{Racing, Cooperative} {
		t.Run(mode.String(), func(t *testing.T) {
			type seen struct {
				extended bool
				left     time.Duration // of the outer deadline, once the inner New has returned
			}
			got := make(chan seen, 1)
			innerRunning, paused, resume := make(chan struct{}), make(chan struct{}), make(chan struct{})
			inner := New(func(ctx *fasthttp.RequestCtx) {
				close(innerRunning)
				select {
				case <-paused: // the goroutine has looked up this call
				case <-time.After(30 * time.Second): // a hang detector: the test fails below
				}
			}, Config{Timeout: time.Hour, Mode: Cooperative})
			getOnce(t, New(func(ctx *fasthttp.RequestCtx) {
				var armed atomic.Bool
				hook := func(looked *fasthttp.RequestCtx) {
					if looked == ctx && armed.CompareAndSwap(true, false) {
						close(paused)
						<-resume
					}
				}
				testHookLookup.Store(&hook)
				defer testHookLookup.Store(nil)
				extended := make(chan bool, 1)
				go func() {
					<-innerRunning
					armed.Store(true)
					extended <- Extend(ctx, time.Hour)
				}()
				inner(ctx)
				close(resume)
				var s seen
				s.extended = <-extended
				s.left, _ = Remaining(ctx)
				got <- s
			}, Config{Timeout: timeout, Mode: mode}))
			s := receive(t, got, "the handler's report")

			require.True(t, s.extended)
			assert.Greater(t, s.left, time.Hour, "the request's deadline moved")
		})
	}
}

// Inside nested News, a goroutine that the outer handler waits for moves
// the deadline (Disarm, Extend) while the outer handler calls an inner New,
// which starts between the goroutine's look-up of the call, the outer one
// then, and its move. The move must find the call the request has then,
// the inner one, and move every deadline: acting on the outer call alone,
// it would report true while the inner call had already taken the outer's
// old deadline as its own, and the request would still time out at that
// deadline, in the inner New. Not parallel: it sets the process's test
// hook.
func TestNested_move_from_a_goroutine_as_an_inner_New_starts(t *testing.T) {
	for _, mode := range []Mode{Racing, Cooperative} {
		for _, tc := range []struct {
			name  string
			move  func(*fasthttp.RequestCtx) bool
			moved func(left time.Duration, bounded bool) bool // as the inner handler sees its deadline
		}{
			{"Disarm", Disarm, func(_ time.Duration, bounded bool) bool { return !bounded }},
			{"Extend", func(ctx *fasthttp.RequestCtx) bool { return Extend(ctx, time.Hour) },
				func(left time.Duration, bounded bool) bool { return bounded && left > time.Hour }},
		} {
			t.Run(tc.name+" "+mode.String(), func(t *testing.T) {
				type seen struct {
					moved   bool // what the move reported
					left    time.Duration
					bounded bool
				}
				got := make(chan seen, 1)
				looked, resume := make(chan struct{}), make(chan struct{})
				movedc := make(chan bool, 1)
				inner := New(func(ctx *fasthttp.RequestCtx) {
					close(resume) // begun: the goroutine's move goes on
					var s seen
					select {
					case s.moved = <-movedc:
					case <-time.After(30 * time.Second): // a hang detector: the test fails below
					}
					s.left, s.bounded = Remaining(ctx)
					got <- s
				}, Config{Timeout: 10 * time.Hour, Mode: Cooperative})
				getOnce(t, New(func(ctx *fasthttp.RequestCtx) {
					var armed atomic.Bool
					armed.Store(true)
					hook := func(at *fasthttp.RequestCtx) {
						if at == ctx && armed.CompareAndSwap(true, false) {
							close(looked)
							<-resume
						}
					}
					testHookLookup.Store(&hook)
					defer testHookLookup.Store(nil)
					go func() { movedc <- tc.move(ctx) }()
					select {
					case <-looked: // the goroutine has looked up the outer call
					case <-time.After(30 * time.Second):
						close(resume)
					}
					inner(ctx)
				}, Config{Timeout: time.Minute, Mode: mode}))
				s := receive(t, got, "the inner handler's report")

				require.True(t, s.moved)
				assert.True(t, tc.moved(s.left, s.bounded), "the inner call's deadline moved too: %v left (bounded %v)", s.left, s.bounded)
			})
		}
	}
}

// A cooperative handler's Extend swaps the call's deadline before the
// deadline, then stalls; the housekeeper, at the deadline, finds the
// context's deadline (the old one: the move has not given it the new one
// yet) passed and times the call out; the move then gives the context its
// new deadline before the timeout has ended it. The move must fail, as it
// does when it finds the context ended: the request timed out. Without the
// move's look at the call's state, Extend would report true and leave the
// call and its context an hour more while the request was answered 504.
// Not parallel: it sets the process's test hooks.
func TestExtend_as_the_housekeeper_times_the_call_out_fails(t *testing.T) {
	const hookWait = 10 * time.Second // a hang detector, not a speed requirement
	type seen struct {
		ready, moved bool
		cause        error
		deadline     time.Time // the context's, once the move is over
		old          int64
	}
	stats := new(Stats)
	got := make(chan seen, 1)
	h := New(func(ctx *fasthttp.RequestCtx) {
		var s seen
		cx := Context(ctx) // watched by the housekeeper
		c := lookup(ctx)
		s.old = c.deadline.Load()
		swapped, timedOut, moved := make(chan struct{}), make(chan struct{}), make(chan struct{})
		move := func(mc *call) {
			if mc == c {
				close(swapped)
				select { // the housekeeper times the call out
				case <-timedOut:
				case <-time.After(hookWait):
				}
			}
		}
		settled := func(sc *call, outcome uint64) {
			if sc == c && outcome == callTimedOut {
				close(timedOut)
				select { // the move is over before the timeout ends the context
				case <-moved:
				case <-time.After(hookWait):
				}
			}
		}
		testHookMove.Store(&move)
		testHookSettled.Store(&settled)
		defer testHookMove.Store(nil)
		defer testHookSettled.Store(nil)
		go func() {
			defer close(moved)
			s.moved = Extend(ctx, time.Hour)
		}()
		select {
		case <-swapped:
			s.ready = true
		case <-moved: // Extend came after the deadline: try another request
		}
		<-moved
		<-cx.Done()
		s.cause = context.Cause(cx)
		s.deadline, _ = cx.Deadline()
		got <- s
		ctx.SetBodyString("after ErrTimeout")
	}, Config{Timeout: 100 * time.Millisecond, Mode: Cooperative, Stats: stats})

	for range 20 {
		resp := getResponse(t, h)
		s := receive(t, got, "the handler's report")
		if !s.ready {
			continue
		}
		assert.False(t, s.moved, "Extend failed: the request timed out")
		assert.ErrorIs(t, s.cause, ErrTimeout)
		assert.Equal(t, epoch.Add(time.Duration(s.old)), s.deadline, "the context keeps the deadline it timed out at")
		assert.Equal(t, fasthttp.StatusGatewayTimeout, resp.StatusCode(), "body %q", resp.Body())
		assert.Equal(t, int64(1), stats.Snapshot().Timeouts)
		return
	}
	t.Fatal("no handler started before its deadline")
}
